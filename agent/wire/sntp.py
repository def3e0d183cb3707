"""SNTPv4 (RFC 4330) packets for stage TIME: the phone's request/reply check and the lab pool's answer.

Sans-IO: every time is a parameter (unix seconds as float), nothing reads a clock. NTP timestamps are kept
as 64-bit ints (32.32 fixed point) so they compare exactly: the reply's originate timestamp must equal the
transmit timestamp we sent, bit for bit.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from agent.stages import Stage, WireError

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
_ERA = 1 << 32
_PACKET = struct.Struct("!BBbbII4sQQQQ")  # 48 bytes; poll and precision are signed log2 seconds
PACKET_SIZE = _PACKET.size
MODE_CLIENT, MODE_SERVER, MODE_BROADCAST = 3, 4, 5
SERVER_PRECISION = -20  # about 1 µs, what a Linux host with a TSC clock reports
# RFC 4330 §3: seconds with the top bit clear belong to era 1 (2036-2104), so the mapping covers 1968-2104.
_MIN_UNIX = (1 << 31) - NTP_UNIX_OFFSET
_MAX_UNIX = (1 << 31) + _ERA - NTP_UNIX_OFFSET


def _error(detail: str, code: str = "MALFORMED") -> WireError:
    return WireError(detail, stage=Stage.TIME, code=code)


def to_ntp(unix_seconds: float) -> int:
    """Unix seconds → NTP 64-bit timestamp, valid 1968-2104 (eras 0 and 1 per RFC 4330 §3)."""
    if not _MIN_UNIX <= unix_seconds < _MAX_UNIX:
        raise ValueError(f"unix time {unix_seconds} is outside the NTP range 1968-2104")
    whole = math.floor(unix_seconds)
    frac = round((unix_seconds - whole) * _ERA)
    if frac == _ERA:  # rounding carried into the next second
        whole, frac = whole + 1, 0
        if whole >= _MAX_UNIX:
            raise ValueError(f"unix time {unix_seconds} is outside the NTP range 1968-2104")
    return (((whole + NTP_UNIX_OFFSET) % _ERA) << 32) | frac


def from_ntp(ts: int) -> float:
    """NTP 64-bit timestamp → unix seconds (inverse of :func:`to_ntp`)."""
    seconds, frac = ts >> 32, ts & (_ERA - 1)
    if not seconds & 0x8000_0000:
        seconds += _ERA  # era 1: after 2036-02-07
    return seconds - NTP_UNIX_OFFSET + frac / _ERA


@dataclass(frozen=True)
class SntpPacket:
    """The 48-byte NTP header; root delay/dispersion stay raw 16.16 ints, timestamps raw 32.32 ints."""

    leap: int
    version: int
    mode: int
    stratum: int
    poll: int
    precision: int
    root_delay: int
    root_dispersion: int
    ref_id: bytes
    ref_ts: int
    orig_ts: int
    recv_ts: int
    tx_ts: int

    def __post_init__(self) -> None:
        checks = (
            ("leap", self.leap, 0, 3),
            ("version", self.version, 0, 7),
            ("mode", self.mode, 0, 7),
            ("stratum", self.stratum, 0, 255),
            ("poll", self.poll, -128, 127),
            ("precision", self.precision, -128, 127),
            ("root_delay", self.root_delay, 0, _ERA - 1),
            ("root_dispersion", self.root_dispersion, 0, _ERA - 1),
            ("ref_ts", self.ref_ts, 0, (1 << 64) - 1),
            ("orig_ts", self.orig_ts, 0, (1 << 64) - 1),
            ("recv_ts", self.recv_ts, 0, (1 << 64) - 1),
            ("tx_ts", self.tx_ts, 0, (1 << 64) - 1),
        )
        for name, value, low, high in checks:
            if not low <= value <= high:
                raise ValueError(f"SNTP {name} {value} is outside {low}..{high}")
        if len(self.ref_id) != 4:
            raise ValueError(f"SNTP ref_id must be 4 bytes, got {len(self.ref_id)}")

    @property
    def kiss_code(self) -> str:
        """The reference id as text: the Kiss-o'-Death code when stratum is 0 (RFC 4330 §8)."""
        return self.ref_id.decode("ascii", "replace").rstrip("\x00")


def encode(pkt: SntpPacket) -> bytes:
    return _PACKET.pack(
        (pkt.leap << 6) | (pkt.version << 3) | pkt.mode,
        pkt.stratum,
        pkt.poll,
        pkt.precision,
        pkt.root_delay,
        pkt.root_dispersion,
        pkt.ref_id,
        pkt.ref_ts,
        pkt.orig_ts,
        pkt.recv_ts,
        pkt.tx_ts,
    )


def decode(data: bytes) -> SntpPacket:
    """Parse the 48-byte header; anything after it (extension fields, a MAC) is ignored."""
    if len(data) < PACKET_SIZE:
        raise _error(f"SNTP packet too short: {len(data)} bytes, need 48")
    first, stratum, poll, precision, delay, disp, ref_id, ref, orig, recv, tx = _PACKET.unpack_from(data)
    return SntpPacket(
        first >> 6,
        (first >> 3) & 7,
        first & 7,
        stratum,
        poll,
        precision,
        delay,
        disp,
        ref_id,
        ref,
        orig,
        recv,
        tx,
    )


def build_request(tx_unix: float) -> bytes:
    """A client request (mode 3, version 4) stamped with ``tx_unix``; the caller keeps ``to_ntp(tx_unix)``
    (or ``decode(request).tx_ts``) to match the reply."""
    return encode(SntpPacket(0, 4, MODE_CLIENT, 0, 0, 0, 0, 0, bytes(4), 0, 0, 0, to_ntp(tx_unix)))


def parse_reply(data: bytes, sent_tx_ntp: int) -> SntpPacket:
    """Accept a server reply only if it answers *our* request and comes from a synchronised server
    (RFC 4330 §5). The originate check comes first so a spoofed Kiss-o'-Death cannot silence us."""
    pkt = decode(data)
    if pkt.mode not in (MODE_SERVER, MODE_BROADCAST):
        raise _error(f"SNTP reply has mode {pkt.mode}, expected 4 (server) or 5 (broadcast)")
    if not 1 <= pkt.version <= 4:
        raise _error(f"SNTP reply has version {pkt.version}, expected 1-4")
    if pkt.orig_ts != sent_tx_ntp:
        raise _error(
            f"reply does not match our request: originate {pkt.orig_ts:#018x}, we sent {sent_tx_ntp:#018x}",
            code="MISMATCH",
        )
    if pkt.stratum == 0:
        raise _error(f"server sent Kiss-o'-Death {pkt.kiss_code!r}; stop asking it", code="KOD")
    if pkt.stratum > 15:
        raise _error(f"server is unsynchronised (stratum {pkt.stratum})", code="UNSYNCHRONISED")
    if pkt.leap == 3:
        raise _error("server clock is unsynchronised (leap indicator 3)", code="UNSYNCHRONISED")
    if pkt.tx_ts == 0:
        raise _error("SNTP reply has a zero transmit timestamp")
    return pkt


def offset_delay(t1: float, t2: float, t3: float, t4: float) -> tuple[float, float]:
    """RFC 4330 §5: t1 client send, t2 server receive, t3 server send, t4 client receive → (offset, delay).
    Add the offset to the local clock to get server time."""
    return ((t2 - t1) + (t3 - t4)) / 2, (t4 - t1) - (t3 - t2)


def build_reply(
    request: bytes,
    recv_unix: float,
    tx_unix: float,
    stratum: int = 2,
    ref_id: bytes = b"LOCL",
    ref_unix: float | None = None,
) -> bytes:
    """The pool's answer (RFC 4330 §5, server side): version and poll echoed, the request's transmit
    timestamp copied into originate. ``ref_unix`` (when the clock was last set) defaults to ``recv_unix``."""
    if not 1 <= stratum <= 15:
        raise ValueError(f"a serving stratum is 1-15, got {stratum}")
    if len(ref_id) != 4:
        raise ValueError(f"ref_id must be 4 bytes, got {len(ref_id)}")
    req = decode(request)
    if req.mode != MODE_CLIENT:
        raise _error(f"SNTP request has mode {req.mode}, expected 3 (client)")
    if not 1 <= req.version <= 4:
        raise _error(f"SNTP request has version {req.version}, expected 1-4")
    reply = SntpPacket(
        leap=0,
        version=req.version,
        mode=MODE_SERVER,
        stratum=stratum,
        poll=req.poll,
        precision=SERVER_PRECISION,
        root_delay=0,
        root_dispersion=0,
        ref_id=ref_id,
        ref_ts=to_ntp(recv_unix if ref_unix is None else ref_unix),
        orig_ts=req.tx_ts,
        recv_ts=to_ntp(recv_unix),
        tx_ts=to_ntp(tx_unix),
    )
    return encode(reply)
