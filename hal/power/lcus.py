"""LC Technology LCUS-1/2/4/8 (CH340 USB-serial, 9600 8N1): frames and the two forms of the status reply.

Switching is ``A0 ch op sum`` with no acknowledgement. Multi-channel boards answer ``FF`` with their relays,
but firmware differs: some send ASCII lines (``CH1: ON \\r\\n`` / ``CH2: OFF\\r\\n``), others one 00/01 byte
per channel. Both are parsed; anything else is a FrameError. LCUS-1 has no status, so its state is only
commanded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hal.errors import FrameError
from hal.power.codecs import Exchange, NoReply, bits_state, check_channel, check_count, hexstr

SIZES = (1, 2, 4, 8)
START = 0xA0
STATUS = b"\xff"
_LINE = re.compile(r"CH\s*(\d{1,2})\s*:\s*(ON|OFF)", re.IGNORECASE)


def frame(channel: int, on: bool) -> bytes:
    """``A0 ch op sum`` with sum = (A0 + ch + op) & FF, e.g. ``A0 01 01 A2``."""
    op = 1 if on else 0
    return bytes((START, channel, op, (START + channel + op) & 0xFF))


def parse_status(kind: str, reply: bytes, channels: int) -> tuple[bool, ...]:
    """Relay states (channel 1 first) from either firmware's status reply."""
    if not reply:
        raise FrameError(kind, "empty status reply")
    if reply[0] in (0, 1):
        return tuple(bits_state(kind, ch, reply, channels) for ch in range(1, channels + 1))
    try:
        text = reply.decode("ascii")
    except UnicodeDecodeError:
        raise FrameError(
            kind, f"status reply is neither ASCII lines nor 00/01 bytes: {hexstr(reply)}"
        ) from None
    seen: dict[int, bool] = {}
    for line in text.replace("\r", "\n").split("\n"):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line.strip())
        if match is None:
            raise FrameError(
                kind, f"status line {line.strip()[:20]!r} is not 'CHn: ON/OFF' in {hexstr(reply)}"
            )
        number = int(match.group(1))
        if number in seen or not 1 <= number <= channels:
            raise FrameError(kind, f"status names channel {number} twice or out of 1..{channels}")
        seen[number] = match.group(2).upper() == "ON"
    if len(seen) != channels:
        raise FrameError(kind, f"status reply covers {len(seen)} of {channels} channels: {hexstr(reply)}")
    return tuple(seen[ch] for ch in range(1, channels + 1))


@dataclass(frozen=True)
class LcusStatusReply:
    """Complete when ``channels`` bytes (binary firmware) or ``channels`` lines (ASCII firmware) are in."""

    channels: int

    @property
    def max_len(self) -> int:
        return 16 * self.channels

    def complete(self, buf: bytes) -> bool:
        if not buf:
            return False
        if buf[0] in (0, 1):
            return len(buf) >= self.channels
        if buf[:1] in (b"C", b"c"):
            return buf.count(b"\n") >= self.channels
        return True  # garbage: stop reading and let parse_status say what it was


@dataclass(frozen=True)
class LcusCodec:
    channels: int

    def __post_init__(self) -> None:
        check_count(self.kind, self.channels, SIZES)

    @property
    def kind(self) -> str:
        return f"lcus-{self.channels}"

    @property
    def observes(self) -> bool:
        return self.channels > 1

    def hello(self) -> Exchange | None:
        return None

    def switch(self, channel: int, on: bool) -> Exchange:
        check_channel(self.kind, channel, self.channels)
        return Exchange(frame(channel, on), NoReply())

    def check_ack(self, channel: int, on: bool, reply: bytes) -> None:
        return None

    def query(self, channel: int) -> Exchange | None:
        check_channel(self.kind, channel, self.channels)
        return Exchange(STATUS, LcusStatusReply(self.channels)) if self.observes else None

    def decode_state(self, channel: int, reply: bytes) -> bool:
        check_channel(self.kind, channel, self.channels)
        if not self.observes:
            raise FrameError(self.kind, "LCUS-1 has no status reply")
        return parse_status(self.kind, reply, self.channels)[channel - 1]
