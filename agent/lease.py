"""The options of the lease the OS already holds: the phone's fallback when no server answers its INFORM.

Two formats are read: dhcpcd's lease file (the raw DHCPACK, decoded by our own codec) and ISC dhclient's
text leases (the newest ``lease { … }`` block; option 43 and 120 as colon hex, since dhclient writes options it
has no name for — ``unknown-120`` — or declared ``string`` options that way).
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from pathlib import Path

from agent.stages import Stage, WireError
from agent.wire import dhcp

DEFAULT_LEASE_FILES = (
    "/var/lib/dhcpcd/{ifname}.lease",
    "/var/lib/dhcp/dhclient.{ifname}.leases",
    "/var/lib/dhclient/dhclient-{ifname}.leases",
)
MAX_LEASE_BYTES = 256 * 1024
_BLOCK = re.compile(r"lease\s*\{(.*?)\}", re.S)
_OPTION = re.compile(r"^\s*option\s+([\w-]+)\s+(.+?);\s*$", re.M)
_NAMES = {
    "vendor-encapsulated-options": 43,
    "unknown-43": 43,
    "unknown-120": 120,
    "uc-sip-server": 120,
    "sip-server": 120,
    "ntp-servers": 42,
    "domain-name-servers": 6,
    "domain-name": 15,
    "routers": 3,
    "dhcp-server-identifier": 54,
}


def lease_files(ifname: str) -> list[Path]:
    return [Path(p.format(ifname=ifname)) for p in DEFAULT_LEASE_FILES]


def read_lease(path: Path) -> dhcp.InformAnswer:
    """The options of the lease in ``path``; WireError (stage DHCP_INFORM) naming the file when unusable."""
    try:
        data = path.read_bytes()[: MAX_LEASE_BYTES + 1]
    except OSError as exc:
        raise WireError(f"lease {path}: {exc.strerror}", Stage.DHCP_INFORM) from None
    if len(data) > MAX_LEASE_BYTES:
        raise WireError(f"lease {path} is larger than {MAX_LEASE_BYTES} bytes", Stage.DHCP_INFORM)
    try:
        if len(data) >= 240 and data[236:240] == dhcp.MAGIC_COOKIE:
            return dhcp.parse_inform_answer(dhcp.decode(data))
        return dhcp.parse_inform_answer(_dhclient_message(data.decode("utf-8", "replace")))
    except WireError as exc:
        raise WireError(f"lease {path}: {exc.detail}", Stage.DHCP_INFORM) from None


def _dhclient_message(text: str) -> dhcp.DhcpMessage:
    blocks = _BLOCK.findall(text)
    if not blocks:
        raise WireError("no lease { … } block (neither a dhcpcd nor a dhclient lease)", Stage.DHCP_INFORM)
    options: list[tuple[int, bytes]] = []
    for name, value in _OPTION.findall(blocks[-1]):
        code = _NAMES.get(name)
        if code is not None:
            options.append((code, _value(code, value.strip())))
    return dhcp.DhcpMessage(op=2, options=tuple(options))


def _value(code: int, text: str) -> bytes:
    """dhclient's rendering back to option bytes: colon hex, quoted text, or an address list."""
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1].encode("ascii", "replace")
    if code in (3, 6, 42, 54):
        try:
            return b"".join(IPv4Address(a.strip()).packed for a in text.split(","))
        except ValueError:
            raise WireError(
                f"option {code} is not an address list: {text[:60]!r}", Stage.DHCP_INFORM
            ) from None
    try:
        return bytes(int(part, 16) for part in text.split(":"))
    except ValueError:
        raise WireError(f"option {code} is not colon hex: {text[:60]!r}", Stage.DHCP_INFORM) from None
