"""Stage DHCP_INFORM: find the CertProv URL (option 43) and the registrar (option 120) with a DHCPINFORM.

The INFORM goes to a configured server address (loopback lab, relay-less test) or broadcast to
255.255.255.255:67 on the phone's interface. Three INFORMs, 4 s apart, then the stage fails (protocol.md §3).
A configured CertProv URL / registrar FQDN (like the cmdlets' -TargetUri / -TargetFqdn) bypasses DHCP.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from agent.clocks import Clock
from agent.net import UdpEndpoint, require_https
from agent.stages import Stage, StageError, WireError
from agent.wire import dhcp


@dataclass(frozen=True)
class DiscoveryConfig:
    """Where to ask, and what to skip asking for."""

    ciaddr: IPv4Address = field(default_factory=lambda: IPv4Address("0.0.0.0"))
    chaddr: bytes = b"\x02\x00\x00\x00\x00\x01"
    server: tuple[str, int] = ("255.255.255.255", 67)
    bind: tuple[str, int] = ("0.0.0.0", 68)
    tries: int = 3
    interval_s: float = 4.0
    certprov_url: str | None = None
    registrar_fqdn: str | None = None
    ntp_servers: tuple[str, ...] = ()
    domain: str | None = None


@dataclass(frozen=True)
class Discovery:
    """What the phone learned about the pool, and where each item came from."""

    certprov_url: str
    registrar_fqdn: str | None
    ntp_servers: tuple[str, ...] = ()
    dns_servers: tuple[str, ...] = ()
    domain: str | None = None
    source: str = "dhcp"
    answered_by: str | None = None
    informs_sent: int = 0
    extra: dict[str, str] = field(default_factory=dict)


def discover(
    cfg: DiscoveryConfig,
    clock: Clock,
    new_xid: Callable[[], int],
    endpoint: Callable[[DiscoveryConfig], UdpEndpoint] | None = None,
) -> Discovery:
    """Run stage DHCP_INFORM; raises StageError(DHCP_INFORM, NO_ANSWER | NO_OPTION_43 | ...)."""
    if cfg.certprov_url and cfg.registrar_fqdn:
        require_https(cfg.certprov_url, Stage.DHCP_INFORM, "the configured CertProv URL")
        return Discovery(
            cfg.certprov_url,
            cfg.registrar_fqdn,
            cfg.ntp_servers,
            (),
            cfg.domain,
            source="config",
            informs_sent=0,
        )
    make = endpoint or _default_endpoint
    with make(cfg) as ep:
        answer, sender, sent = _exchange(cfg, ep, clock, new_xid())
    return _merge(cfg, answer, sender, sent)


def _default_endpoint(cfg: DiscoveryConfig) -> UdpEndpoint:
    return UdpEndpoint(cfg.bind, broadcast=cfg.server[0] == "255.255.255.255")


def _exchange(
    cfg: DiscoveryConfig, ep: UdpEndpoint, clock: Clock, xid: int
) -> tuple[dhcp.InformAnswer, str, int]:
    request = dhcp.encode(dhcp.build_inform(xid, cfg.ciaddr, cfg.chaddr))
    ignored: list[str] = []
    for attempt in range(1, cfg.tries + 1):
        ep.send(request, cfg.server)
        deadline = clock.monotonic() + cfg.interval_s
        while (left := deadline - clock.monotonic()) > 0:
            got = ep.recv(left)
            if got is None:
                break
            answer = _accept(got[0], xid, ignored)
            if answer is not None:
                return answer, got[1][0], attempt
    why = f"; ignored: {ignored[-1]}" if ignored else ""
    raise StageError(
        Stage.DHCP_INFORM,
        "NO_ANSWER",
        f"Unable to locate Lync Certificate Web service: no DHCPACK from {cfg.server[0]}:{cfg.server[1]} "
        f"after {cfg.tries} INFORMs{why}",
    )


def _accept(data: bytes, xid: int, ignored: list[str]) -> dhcp.InformAnswer | None:
    """Our ACK decoded, or None (recording why) for anything else on the port."""
    try:
        msg = dhcp.decode(data)
    except WireError as exc:
        ignored.append(f"malformed reply ({exc.detail})")
        return None
    if msg.op != 2 or msg.xid != xid or msg.message_type is not dhcp.MessageType.ACK:
        ignored.append(f"reply xid {msg.xid:#x} type {msg.message_type}")
        return None
    try:
        return dhcp.parse_inform_answer(msg)
    except WireError as exc:
        raise StageError(Stage.DHCP_INFORM, exc.code, f"DHCPACK is malformed: {exc.detail}") from None


def _merge(cfg: DiscoveryConfig, ans: dhcp.InformAnswer, sender: str, sent: int) -> Discovery:
    certprov = cfg.certprov_url or (ans.vendor.certprov_url if ans.vendor else None)
    if certprov is None:
        raise StageError(
            Stage.DHCP_INFORM,
            "NO_OPTION_43",
            f"Unable to locate Lync Certificate Web service: DHCPACK from {sender} has no option 43 "
            "for vendor class MS-UC-Client",
        )
    require_https(certprov, Stage.DHCP_INFORM, "the CertProv URL")
    registrar = cfg.registrar_fqdn or (ans.registrars[0] if ans.registrars else None)
    ntp = cfg.ntp_servers or tuple(str(a) for a in ans.ntp_servers)
    server = str(ans.server_id) if ans.server_id else sender
    return Discovery(
        certprov_url=certprov,
        registrar_fqdn=registrar,
        ntp_servers=ntp,
        dns_servers=tuple(str(a) for a in ans.dns_servers),
        domain=cfg.domain or ans.domain,
        source="dhcp" if not (cfg.certprov_url or cfg.registrar_fqdn) else "dhcp+config",
        answered_by=server,
        informs_sent=sent,
    )


def random_mac(seed: bytes) -> bytes:
    """A stable locally-administered MAC derived from a device id (emulated phones have no NIC of their own)."""
    digest = hashlib.sha256(seed).digest()
    return bytes([(digest[0] | 0x02) & 0xFE]) + digest[1:6]


def parse_server(text: str, default_port: int = 67) -> tuple[str, int]:
    """'192.0.2.1' or '127.0.0.1:6767' → (address, port); a clear ValueError otherwise."""
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        ipaddress.IPv4Address(host)
        return host, int(port) if port else default_port
    except ValueError:
        raise ValueError(f"DHCP server must be IPv4[:port], got {text!r}") from None
