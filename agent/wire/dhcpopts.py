"""Payload codecs for the DHCP options a Lync phone lives on: 43 (MS-UC-Client vendor info), 120 (SIP
servers, RFC 3361) and the IPv4 address lists (3, 6, 42).

Decoders take the option payload *after* RFC 3396 concatenation (see :meth:`DhcpMessage.option`) and raise
:class:`WireError` at stage ``DHCP_INFORM``; encoders raise :class:`ValueError` for arguments that could
never go on the wire, since that is a caller's bug, not a peer's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from agent.stages import Stage, WireError

UC_IDENTIFIER = "MS-UC-Client"
CERTPROV_REL_PATH = "/CertProv/CertProvisioningService.svc"

_SUBOPTION_NAMES = {
    1: "UCIdentifier",
    2: "URLScheme",
    3: "WebServerFqdn",
    4: "WebServerPort",
    5: "CertProvRelPath",
}
_MAX_NAME_WIRE = 255  # RFC 1035 §3.1: a name is at most 255 octets on the wire, terminator included
_MAX_LABEL = 63


def wire_error(detail: str, code: str = "MALFORMED") -> WireError:
    """A DHCP-stage WireError; one place so every DHCP message names the same stage."""
    return WireError(detail, stage=Stage.DHCP_INFORM, code=code)


# --- option 43 -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UcVendorInfo:
    """The five MS-UC-Client sub-options of option 43, as text exactly as they travel (port included)."""

    uc_identifier: str
    url_scheme: str
    web_server_fqdn: str
    web_server_port: str
    certprov_rel_path: str

    @classmethod
    def for_pool(
        cls, fqdn: str, port: int = 443, scheme: str = "https", path: str = CERTPROV_REL_PATH
    ) -> UcVendorInfo:
        """The usual values for a pool, so servers and config generators need not spell them out."""
        return cls(UC_IDENTIFIER, scheme, fqdn, str(port), path)

    @property
    def certprov_url(self) -> str:
        """The CertProv base URL the phone builds (protocol.md §3), port always explicit as Lync does."""
        return f"{self.url_scheme}://{self.web_server_fqdn}:{self.web_server_port}{self.certprov_rel_path}"

    def _values(self) -> tuple[str, str, str, str, str]:
        return (
            self.uc_identifier,
            self.url_scheme,
            self.web_server_fqdn,
            self.web_server_port,
            self.certprov_rel_path,
        )


def _vendor_problem(info: UcVendorInfo) -> str | None:
    """Why these values cannot form a usable CertProv URL, or None; shared by encoder and decoder."""
    for code, value in enumerate(info._values(), start=1):
        name = f"sub-option {code} ({_SUBOPTION_NAMES[code]})"
        if not value:
            return f"option 43 {name} is empty"
        if not all(0x21 <= ord(ch) <= 0x7E for ch in value):
            return f"option 43 {name} is not printable ASCII: {value!r}"
        if len(value) > 255:
            return f"option 43 {name} is longer than 255 bytes"
    scheme = info.url_scheme
    if not (scheme[0].isalpha() and all(ch.isalnum() or ch in "+-." for ch in scheme)):
        return f"option 43 URLScheme {scheme!r} is not a URL scheme"
    if any(ch in "/?#@" for ch in info.web_server_fqdn):
        return f"option 43 WebServerFqdn {info.web_server_fqdn!r} is not a host name"
    port = info.web_server_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"option 43 WebServerPort {port!r} is not a decimal port 1-65535"
    if not info.certprov_rel_path.startswith("/"):
        return f"option 43 CertProvRelPath {info.certprov_rel_path!r} does not start with '/'"
    return None


def encode_option43(info: UcVendorInfo) -> bytes:
    """Sub-options 1..5 in order, no terminator (the canonical bytes Kea sends). May exceed 255 bytes:
    put it into a message with :func:`agent.wire.dhcp.with_option`, which splits per RFC 3396."""
    problem = _vendor_problem(info)
    if problem:
        raise ValueError(problem)
    out = bytearray()
    for code, value in enumerate(info._values(), start=1):
        raw = value.encode("ascii")
        out += bytes((code, len(raw))) + raw
    return bytes(out)


def _suboptions(data: bytes) -> dict[int, bytes]:
    """TLV walk of option 43: PAD skipped, END stops (dnsmasq appends one), repeats concatenated."""
    subs: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == 0:
            i += 1
            continue
        if code == 0xFF:
            break
        if i + 1 >= len(data):
            raise wire_error(f"option 43 sub-option {code} at offset {i} has no length byte")
        start, end = i + 2, i + 2 + data[i + 1]
        if end > len(data):
            raise wire_error(
                f"option 43 sub-option {code} at offset {i} claims {data[i + 1]} bytes "
                f"but only {len(data) - start} remain"
            )
        subs[code] = subs.get(code, b"") + data[start:end]
        i = end
    return subs


def decode_option43(data: bytes) -> UcVendorInfo | None:
    """The MS-UC-Client vendor info, in any sub-option order; None when the option is another vendor's
    (sub-option 1 missing or not exactly ``MS-UC-Client``), which Lync ignores rather than fails on."""
    subs = _suboptions(data)
    if subs.get(1) != UC_IDENTIFIER.encode("ascii"):
        return None
    missing = [f"{code} ({_SUBOPTION_NAMES[code]})" for code in range(2, 6) if code not in subs]
    if missing:
        raise wire_error(f"option 43 for MS-UC-Client lacks sub-option {', '.join(missing)}")
    try:
        values = [subs[code].decode("ascii") for code in range(1, 6)]
    except UnicodeDecodeError as exc:
        raise wire_error(
            f"option 43 has a non-ASCII sub-option value: {exc.object[exc.start : exc.end]!r}"
        ) from None
    info = UcVendorInfo(*values)
    problem = _vendor_problem(info)
    if problem:
        raise wire_error(problem)
    return info


# --- option 120 ----------------------------------------------------------------------------------------


VLAN_SUBOPTION = 10


def encode_vlan_option43(vlan: int) -> bytes:
    """Option 43 for vendor class CPE-OCPHONE: sub-option 10 = voice VLAN, 2 bytes big-endian [ours]."""
    if not 1 <= vlan <= 4094:
        raise ValueError(f"VLAN {vlan} outside 1..4094")
    return bytes([VLAN_SUBOPTION, 2]) + vlan.to_bytes(2, "big")


def decode_vlan_option43(data: bytes) -> int | None:
    """The voice VLAN from a CPE-OCPHONE answer's option 43 (sub-option 10), None when absent."""
    value = _suboptions(data).get(VLAN_SUBOPTION)
    if value is None:
        return None
    if len(value) != 2 or not 1 <= int.from_bytes(value, "big") <= 4094:
        raise wire_error(
            f"option 43 sub-option 10 (VLAN) must be 2 bytes 1..4094, got {value.hex() or 'empty'}"
        )
    return int.from_bytes(value, "big")


def _encode_name(name: str) -> bytes:
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    out = bytearray()
    for label in labels:
        raw = label.encode("ascii", "replace")
        if not raw or len(raw) > _MAX_LABEL or not all(0x21 <= b <= 0x7E for b in raw) or not label.isascii():
            raise ValueError(f"option 120 name {name!r} has an empty, over-long or non-ASCII label")
        out += bytes((len(raw),)) + raw
    out.append(0)
    if len(out) > _MAX_NAME_WIRE:
        raise ValueError(f"option 120 name {name!r} is longer than 255 bytes on the wire")
    return bytes(out)


def encode_option120(names: Sequence[str]) -> bytes:
    """Encoding 0 (names), RFC 1035 labels each ending in a zero byte; no compression (every reader copes)."""
    if isinstance(names, str):
        raise ValueError("encode_option120 takes a sequence of names, not one string")
    if not names:
        raise ValueError("option 120 needs at least one name")
    return b"\x00" + b"".join(_encode_name(n) for n in names)


def _read_name(buf: bytes, start: int) -> tuple[str, int]:
    """One RFC 1035 name at ``start``; returns it and where the next name begins.

    Pointer offsets count from the first name (the byte after the encoding byte), as busybox udhcpc reads
    them. A pointer target seen twice is a loop; the 255-byte name limit bounds everything else.
    """
    labels: list[str] = []
    pos, resume, wire_len = start, -1, 1
    targets: set[int] = set()
    while pos < len(buf):  # running off the end = the tolerated missing final zero
        length = buf[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(buf):
                raise wire_error(f"option 120 compression pointer at offset {pos} is cut short")
            target = ((length & 0x3F) << 8) | buf[pos + 1]
            if resume < 0:
                resume = pos + 2
            if target >= len(buf):
                raise wire_error(f"option 120 compression pointer at offset {pos} points past the end")
            if target in targets:
                raise wire_error(f"option 120 compression pointers loop (offset {target} reached twice)")
            targets.add(target)
            pos = target
            continue
        if length & 0xC0:
            raise wire_error(f"option 120 label at offset {pos} has reserved type bits ({length:#04x})")
        end = pos + 1 + length
        if end > len(buf):
            raise wire_error(f"option 120 label at offset {pos} runs past the end of the option")
        label = buf[pos + 1 : end]
        if not all(0x21 <= b <= 0x7E and b != 0x2E for b in label):
            raise wire_error(f"option 120 label at offset {pos} is not printable ASCII: {label!r}")
        wire_len += length + 1
        if wire_len > _MAX_NAME_WIRE:
            raise wire_error(f"option 120 name at offset {start} is longer than 255 bytes")
        labels.append(label.decode("ascii"))
        pos = end
    if not labels:
        raise wire_error(f"option 120 has an empty name at offset {start}")
    return ".".join(labels), (resume if resume >= 0 else pos)


def decode_option120(data: bytes) -> tuple[str, ...]:
    """Registrar names from option 120 (encoding 0). Encoding 1 (addresses) is refused on purpose: Lync
    needs a name for TLS and the registrar certificate, never an IP."""
    if not data:
        raise wire_error("option 120 is empty (no encoding byte)")
    if data[0] == 1:
        raise wire_error(
            "option 120 carries IPv4 addresses (encoding 1); Lync needs the registrar's name (encoding 0)",
            code="OPT120_ADDRESSES",
        )
    if data[0] != 0:
        raise wire_error(f"option 120 has unknown encoding {data[0]} (expected 0, domain names)")
    body = data[1:]
    names: list[str] = []
    pos = 0
    while pos < len(body):
        name, pos = _read_name(body, pos)
        names.append(name)
    if not names:
        raise wire_error("option 120 (encoding 0) carries no name")
    return tuple(names)


# --- address lists and text ----------------------------------------------------------------------------


def encode_ip_list(addrs: Iterable[IPv4Address | str]) -> bytes:
    """Options 3, 6, 42, 54 …: 4 bytes per address."""
    return b"".join(IPv4Address(a).packed for a in addrs)


def decode_ip_list(data: bytes, code: int) -> tuple[IPv4Address, ...]:
    """A non-empty list of 4-byte addresses; any other length means the server is broken, so say so."""
    if not data or len(data) % 4:
        raise wire_error(f"option {code} is {len(data)} bytes, not a non-empty multiple of 4 (IPv4 list)")
    return tuple(IPv4Address(data[i : i + 4]) for i in range(0, len(data), 4))


def decode_domain(data: bytes) -> str | None:
    """Option 15 as text; some servers NUL-terminate it or add the root dot, both are dropped."""
    text = data.rstrip(b"\x00")
    if not all(0x21 <= b <= 0x7E for b in text):
        raise wire_error(f"option 15 (domain name) is not printable ASCII: {data!r}")
    name = text.decode("ascii").rstrip(".")
    return name or None
