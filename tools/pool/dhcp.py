"""The pool's DHCP responder: answers only DHCPINFORMs with vendor class ``MS-UC-Client`` that ask for option 43
(protocol.md §3), with a DHCPACK carrying options 43, 120, 42 and 15 — and, when a voice VLAN is configured,
INFORMs with vendor class ``CPE-OCPHONE`` with sub-option 10. Everything else is ignored, as Lync's DHCP Server
does.

The ACK goes to ``ciaddr``:68 (RFC 2131 §4.3.5). A client not on port 68 (a test phone on loopback without
privileges) is answered at its source address and port instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from agent.stages import WireError
from agent.wire import dhcp
from tools.pool.config import CERTPROV_PATH

CLIENT_PORT = 68
log = logging.getLogger("phoneprov.pool.dhcp")


@dataclass(frozen=True)
class UcOptions:
    """What the lab hands out: the CertProv web server and the registrar."""

    web_fqdn: str
    web_port: int
    registrar: str
    ntp_server: IPv4Address | None
    domain: str | None
    server_id: IPv4Address
    voice_vlan: int | None = None

    def options(self) -> list[tuple[int, bytes]]:
        info = dhcp.UcVendorInfo("MS-UC-Client", "https", self.web_fqdn, str(self.web_port), CERTPROV_PATH)
        opts: list[tuple[int, bytes]] = []
        for code, value in (
            (43, dhcp.encode_option43(info)),
            (120, dhcp.encode_option120([self.registrar])),
            (42, dhcp.encode_ip_list([self.ntp_server]) if self.ntp_server else b""),
            (15, self.domain.encode("ascii") if self.domain else b""),
        ):
            if value:
                opts = list(dhcp.with_option(tuple(opts), code, value))
        return opts


def inform_handler(
    current: Callable[[], UcOptions],
) -> Callable[[bytes, tuple[str, int]], tuple[bytes, tuple[str, int]] | None]:
    """A UDP handler answering MS-UC-Client INFORMs with the options ``current()`` describes."""

    def handle(data: bytes, source: tuple[str, int]) -> tuple[bytes, tuple[str, int]] | None:
        try:
            msg = dhcp.decode(data)
        except WireError as exc:
            log.info("DHCP: malformed packet from %s: %s", source[0], exc.detail)
            return None
        if msg.op != 1:
            return None
        uc = current()
        if dhcp.is_uc_inform(msg):
            ack = dhcp.build_inform_ack(msg, uc.options(), uc.server_id)
        elif _is_vlan_inform(msg) and uc.voice_vlan is not None:
            ack = dhcp.build_inform_ack(msg, [(43, dhcp.encode_vlan_option43(uc.voice_vlan))], uc.server_id)
        else:
            return None
        if source[1] == CLIENT_PORT and msg.ciaddr != IPv4Address("0.0.0.0"):
            dest = (str(msg.ciaddr), CLIENT_PORT)
        else:
            dest = source
        return dhcp.encode(ack), dest

    return handle


def _is_vlan_inform(msg: dhcp.DhcpMessage) -> bool:
    """The phone's second INFORM: vendor class CPE-OCPHONE asking for option 43 (the voice VLAN)."""
    params = msg.option(55) or b""
    return (
        msg.message_type is dhcp.MessageType.INFORM
        and msg.option(60) == dhcp.VLAN_VENDOR_CLASS
        and 43 in params
    )
