"""DHCPv4 messages (RFC 2131/2132) for the DHCPINFORM exchange of stage DHCP_INFORM, both sides.

Sans-IO: bytes in, :class:`DhcpMessage` out, and back. Decoding keeps everything needed to re-encode a
packet byte for byte (PAD options, a missing END, the bytes after END), so captures from real servers are
test vectors and the lab pool can answer exactly like them. Option payload codecs live in
:mod:`agent.wire.dhcpopts` and are re-exported here.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv4Address

from agent.stages import WireError
from agent.wire.dhcpopts import (
    UcVendorInfo,
    decode_domain,
    decode_ip_list,
    decode_option43,
    decode_option120,
    decode_vlan_option43,
    encode_ip_list,
    encode_option43,
    encode_option120,
    encode_vlan_option43,
    wire_error,
)

__all__ = [
    "BOOTP_MIN_SIZE",
    "DEFAULT_PARAMS",
    "MAGIC_COOKIE",
    "VENDOR_CLASS",
    "VLAN_VENDOR_CLASS",
    "DhcpMessage",
    "InformAnswer",
    "MessageType",
    "Option",
    "UcVendorInfo",
    "build_inform",
    "build_inform_ack",
    "decode",
    "decode_ip_list",
    "decode_option43",
    "decode_option120",
    "decode_vlan_option43",
    "encode",
    "encode_ip_list",
    "encode_option43",
    "encode_option120",
    "encode_vlan_option43",
    "is_uc_inform",
    "parse_inform_answer",
    "with_option",
]


class MessageType(IntEnum):
    """Option 53 values (RFC 2132 §9.6)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


VENDOR_CLASS = b"MS-UC-Client"
VLAN_VENDOR_CLASS = b"CPE-OCPHONE"
OPT_MAX_MESSAGE_SIZE = 57
MAX_MESSAGE_SIZE = 1500  # the second INFORM: asks for the voice VLAN (option 43 sub-option 10)
DEFAULT_PARAMS = (1, 3, 6, 15, 42, 43, 120, 2)
MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTP_MIN_SIZE = 300  # RFC 1542 §2.1: relays and old servers drop shorter BOOTP messages

PAD, END = 0, 255
OPT_OVERLOAD, OPT_MESSAGE_TYPE, OPT_SERVER_ID = 52, 53, 54
OPT_PARAMS, OPT_VENDOR_CLASS, OPT_CLIENT_ID = 55, 60, 61
_LEASE_OPTIONS = frozenset({50, 51, 58, 59})  # never in an answer to INFORM (RFC 2131 §4.3.5)

Option = tuple[int, bytes]
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # 236 bytes, then the magic cookie
_ZERO = IPv4Address(0)


@dataclass(frozen=True)
class DhcpMessage:
    """One DHCP message. ``options`` are in wire order; repeated codes stay separate entries (RFC 3396) and
    PAD bytes inside the option area appear as ``(0, b"")`` so re-encoding is exact.

    ``end``: the option area closed with END. ``padding``: bytes after END as received; None means
    "not given": :func:`encode` then pads with zeros to the 300-byte BOOTP minimum.
    """

    op: int
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    xid: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = _ZERO
    yiaddr: IPv4Address = _ZERO
    siaddr: IPv4Address = _ZERO
    giaddr: IPv4Address = _ZERO
    chaddr: bytes = bytes(16)
    sname: bytes = bytes(64)
    file: bytes = bytes(128)
    options: tuple[Option, ...] = ()
    end: bool = True
    padding: bytes | None = field(default=None)

    def __post_init__(self) -> None:
        for name, number, bits in (
            ("op", self.op, 8),
            ("htype", self.htype, 8),
            ("hlen", self.hlen, 8),
            ("hops", self.hops, 8),
            ("xid", self.xid, 32),
            ("secs", self.secs, 16),
            ("flags", self.flags, 16),
        ):
            if not 0 <= number < 1 << bits:
                raise ValueError(f"DHCP {name} {number} does not fit in {bits} bits")
        for name, raw, size in (
            ("chaddr", self.chaddr, 16),
            ("sname", self.sname, 64),
            ("file", self.file, 128),
        ):
            if len(raw) != size:
                raise ValueError(f"DHCP {name} must be exactly {size} bytes, got {len(raw)}")
        for code, value in self.options:
            if not 0 <= code < END or len(value) > 255 or (code == PAD and value):
                raise ValueError(f"DHCP option {code} with {len(value)} bytes cannot be encoded")
        if not self.end and self.padding:
            raise ValueError("DHCP padding without END would be read back as options")

    def option(self, code: int) -> bytes | None:
        """The value of ``code``: all instances concatenated in RFC 3396 order (options field, then file,
        then sname when option 52 overloads them); None when absent."""
        parts = [value for c, value in self.all_options() if c == code and c not in (PAD, END)]
        return b"".join(parts) if parts else None

    def all_options(self) -> tuple[Option, ...]:
        """Options of the options field followed by those carried in file/sname under option 52."""
        overload = [value for c, value in self.options if c == OPT_OVERLOAD]
        if not overload:
            return self.options
        if len(overload) > 1 or len(overload[0]) != 1 or overload[0][0] not in (1, 2, 3):
            raise wire_error(f"DHCP option 52 (overload) is malformed: {b''.join(overload).hex()}")
        extra: list[Option] = []
        if overload[0][0] & 1:
            extra += _parse_options(self.file, 0, "file field")[0]
        if overload[0][0] & 2:
            extra += _parse_options(self.sname, 0, "sname field")[0]
        return self.options + tuple(extra)

    @property
    def message_type(self) -> MessageType | None:
        value = self.option(OPT_MESSAGE_TYPE)
        if value is None or len(value) != 1 or value[0] not in MessageType._value2member_map_:
            return None
        return MessageType(value[0])


def _parse_options(buf: bytes, start: int, where: str) -> tuple[list[Option], bool, bytes]:
    """Walk code/len/value from ``start``: (options, END seen, bytes after END)."""
    options: list[Option] = []
    i = start
    while i < len(buf):
        code = buf[i]
        if code == PAD:
            options.append((PAD, b""))
            i += 1
            continue
        if code == END:
            return options, True, buf[i + 1 :]
        if i + 1 >= len(buf):
            raise wire_error(f"DHCP option {code} at offset {i} of the {where} has no length byte")
        length = buf[i + 1]
        if i + 2 + length > len(buf):
            raise wire_error(
                f"DHCP option {code} at offset {i} of the {where} claims {length} bytes "
                f"but only {len(buf) - i - 2} remain"
            )
        options.append((code, buf[i + 2 : i + 2 + length]))
        i += 2 + length
    return options, False, b""


def decode(data: bytes) -> DhcpMessage:
    """Parse one UDP payload. A missing END is tolerated (``end=False``); anything cut short is not."""
    if len(data) < _HEADER.size + len(MAGIC_COOKIE):
        raise wire_error(f"DHCP packet too short: {len(data)} bytes, need at least 240")
    op, htype, hlen, hops, xid, secs, flags, ci, yi, si, gi, chaddr, sname, file = _HEADER.unpack_from(data)
    cookie = data[_HEADER.size : _HEADER.size + 4]
    if cookie != MAGIC_COOKIE:
        raise wire_error(f"DHCP magic cookie is {cookie.hex()}, expected 63825363 (not a DHCP packet)")
    options, end, padding = _parse_options(data, _HEADER.size + 4, "options field")
    msg = DhcpMessage(
        op,
        htype,
        hlen,
        hops,
        xid,
        secs,
        flags,
        IPv4Address(ci),
        IPv4Address(yi),
        IPv4Address(si),
        IPv4Address(gi),
        chaddr,
        sname,
        file,
        tuple(options),
        end,
        padding,
    )
    msg.all_options()  # surface a malformed overload now, not at the first option() call
    return msg


def encode(msg: DhcpMessage) -> bytes:
    """Serialise; with ``padding=None`` the result is zero-padded to the 300-byte BOOTP minimum."""
    out = bytearray(
        _HEADER.pack(
            msg.op,
            msg.htype,
            msg.hlen,
            msg.hops,
            msg.xid,
            msg.secs,
            msg.flags,
            msg.ciaddr.packed,
            msg.yiaddr.packed,
            msg.siaddr.packed,
            msg.giaddr.packed,
            msg.chaddr,
            msg.sname,
            msg.file,
        )
    )
    out += MAGIC_COOKIE
    for code, value in msg.options:
        out += bytes((PAD,)) if code == PAD else bytes((code, len(value))) + value
    if msg.end:
        out.append(END)
    if msg.padding is None:
        out += bytes(max(0, BOOTP_MIN_SIZE - len(out)))
    else:
        out += msg.padding
    return bytes(out)


def with_option(options: Sequence[Option], code: int, value: bytes) -> tuple[Option, ...]:
    """``options`` plus ``code``=``value``, split into 255-byte instances when longer (RFC 3396)."""
    if not 0 < code < END:
        raise ValueError(f"DHCP option code {code} is not 1-254")
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [b""]
    return (*options, *((code, chunk) for chunk in chunks))


def build_inform(
    xid: int,
    ciaddr: IPv4Address | str,
    chaddr: bytes,
    vendor_class: bytes = VENDOR_CLASS,
    params: Sequence[int] = DEFAULT_PARAMS,
    client_id: bytes | None = None,
) -> DhcpMessage:
    """The phone's DHCPINFORM (protocol.md §3): 53=8, 57, 60, 55 and optionally 61; ``chaddr`` is the MAC.

    Option 57 (maximum message size 1500) matters: without it dnsmasq and ISC dhcpd silently drop option 43
    once the reply would pass 576 bytes, instead of splitting it (RFC 3396) as they do with it.
    """
    if not 1 <= len(chaddr) <= 16:
        raise ValueError(f"chaddr must be 1-16 bytes, got {len(chaddr)}")
    if not params or not all(0 < p < END for p in params):
        raise ValueError(f"parameter request list {tuple(params)} must be codes 1-254")
    options: tuple[Option, ...] = ((OPT_MESSAGE_TYPE, bytes((MessageType.INFORM,))),)
    options = with_option(options, OPT_MAX_MESSAGE_SIZE, MAX_MESSAGE_SIZE.to_bytes(2, "big"))
    options = with_option(options, OPT_VENDOR_CLASS, vendor_class)
    options = with_option(options, OPT_PARAMS, bytes(params))
    if client_id is not None:
        options = with_option(options, OPT_CLIENT_ID, client_id)
    return DhcpMessage(
        op=1,
        htype=1,
        hlen=len(chaddr),
        xid=xid,
        ciaddr=IPv4Address(ciaddr),
        chaddr=chaddr.ljust(16, b"\x00"),
        options=options,
    )


def build_inform_ack(request: DhcpMessage, options: Sequence[Option], server_id: IPv4Address) -> DhcpMessage:
    """The pool's DHCPACK to an INFORM (RFC 2131 §4.3.5): yiaddr 0, 53=5, 54, then ``options`` (values over
    255 bytes split per RFC 3396). Lease options and a second 53/54 are refused: INFORM grants no lease."""
    if request.op != 1:
        raise ValueError("build_inform_ack answers a BOOTREQUEST (op 1)")
    body: tuple[Option, ...] = (
        (OPT_MESSAGE_TYPE, bytes((MessageType.ACK,))),
        (OPT_SERVER_ID, IPv4Address(server_id).packed),
    )
    for code, value in options:
        if code in _LEASE_OPTIONS or code in (OPT_MESSAGE_TYPE, OPT_SERVER_ID):
            raise ValueError(f"option {code} does not belong in a DHCPACK to an INFORM")
        body = with_option(body, code, value)
    return DhcpMessage(
        op=2,
        htype=request.htype,
        hlen=request.hlen,
        xid=request.xid,
        flags=request.flags,
        ciaddr=request.ciaddr,
        giaddr=request.giaddr,
        chaddr=request.chaddr,
        options=body,
    )


def is_uc_inform(msg: DhcpMessage) -> bool:
    """Whether the pool answers: an INFORM from an MS-UC-Client asking for option 43 (protocol.md §3)."""
    try:
        params = msg.option(OPT_PARAMS) or b""
        return (
            msg.op == 1
            and msg.message_type is MessageType.INFORM
            and msg.option(OPT_VENDOR_CLASS) == VENDOR_CLASS
            and 43 in params
        )
    except WireError:  # a malformed overload in a hand-built message: not one of ours
        return False


@dataclass(frozen=True)
class InformAnswer:
    """What a DHCPACK tells the phone; empty tuples/None for options the server left out."""

    vendor: UcVendorInfo | None
    registrars: tuple[str, ...]
    ntp_servers: tuple[IPv4Address, ...]
    dns_servers: tuple[IPv4Address, ...]
    domain: str | None
    routers: tuple[IPv4Address, ...]
    server_id: IPv4Address | None


def parse_inform_answer(msg: DhcpMessage) -> InformAnswer:
    """Decode the options the agent uses. Checking that ``msg`` is an ACK for our xid is the caller's job."""
    opt43, opt120, opt15, opt54 = (msg.option(c) for c in (43, 120, 15, OPT_SERVER_ID))
    if opt54 is not None and len(opt54) != 4:
        raise wire_error(f"option 54 (server identifier) is {len(opt54)} bytes, expected 4")

    def addresses(code: int) -> tuple[IPv4Address, ...]:
        value = msg.option(code)
        return () if value is None else decode_ip_list(value, code)

    return InformAnswer(
        vendor=None if opt43 is None else decode_option43(opt43),
        registrars=() if opt120 is None else decode_option120(opt120),
        ntp_servers=addresses(42),
        dns_servers=addresses(6),
        domain=None if opt15 is None else decode_domain(opt15),
        routers=addresses(3),
        server_id=None if opt54 is None else IPv4Address(opt54),
    )
