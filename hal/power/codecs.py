"""Shapes every relay codec shares (sans-IO): an exchange is request bytes plus a rule saying when its reply
is complete, so one serial transport can drive every board family without knowing any of their bytes.

Board families live in their own modules (lcus, kmtronic, numato, devantech, hidrelay); each codec is a frozen
dataclass that turns (channel, on/off) into bytes and reply bytes into relay states, raising
:class:`FrameError` for anything it does not recognise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hal.errors import FrameError, HalError


class ReplyFrame(Protocol):
    """How a transport knows it has read a whole reply (it never parses it)."""

    @property
    def max_len(self) -> int: ...

    def complete(self, buf: bytes) -> bool: ...


@dataclass(frozen=True)
class NoReply:
    """The board sends nothing back (LCUS, KMTronic and Devantech switching commands)."""

    max_len: int = 0

    def complete(self, buf: bytes) -> bool:
        return True


@dataclass(frozen=True)
class FixedReply:
    """Exactly ``length`` bytes come back (KMTronic status, Devantech bitmask)."""

    length: int

    @property
    def max_len(self) -> int:
        return self.length

    def complete(self, buf: bytes) -> bool:
        return len(buf) >= self.length


@dataclass(frozen=True)
class PromptReply:
    """Text that ends with a prompt (Numato's ``>``)."""

    prompt: bytes
    max_len: int = 256

    def complete(self, buf: bytes) -> bool:
        return buf.endswith(self.prompt)


@dataclass(frozen=True)
class Exchange:
    """One request and the shape of its reply."""

    request: bytes
    reply: ReplyFrame


class RelayCodec(Protocol):
    """The bytes of one board family; ``observes`` says whether the board can report its relays."""

    @property
    def kind(self) -> str: ...

    @property
    def channels(self) -> int: ...

    @property
    def observes(self) -> bool: ...

    def hello(self) -> Exchange | None:
        """What to send once after opening the port to get the board in sync (None: nothing)."""
        ...

    def switch(self, channel: int, on: bool) -> Exchange: ...

    def check_ack(self, channel: int, on: bool, reply: bytes) -> None:
        """Raise FrameError if the reply to :meth:`switch` is not what the board sends."""
        ...

    def query(self, channel: int) -> Exchange | None:
        """The status request for ``channel`` (None: the board has none, state is only commanded)."""
        ...

    def decode_state(self, channel: int, reply: bytes) -> bool: ...


def hexstr(data: bytes, limit: int = 24) -> str:
    """Bytes as ``A0 01 01 A2`` for one-line error messages (long replies are cut, with the count)."""
    if not data:
        return "nothing"
    shown = " ".join(f"{b:02X}" for b in data[:limit])
    return shown if len(data) <= limit else f"{shown} … ({len(data)} bytes)"


def check_channel(kind: str, channel: int, channels: int) -> None:
    """A channel outside 1..channels is a caller bug: refuse it before any byte is sent."""
    if not 1 <= channel <= channels:
        raise HalError(kind, "BAD_CHANNEL", f"channel {channel} is not in 1..{channels}")


def check_count(kind: str, channels: int, allowed: tuple[int, ...]) -> None:
    """Boards come in fixed sizes; anything else is a configuration mistake."""
    if channels not in allowed:
        sizes = "/".join(str(n) for n in allowed)
        raise HalError(kind, "BAD_BOARD", f"{channels}-channel board does not exist (sizes: {sizes})")


def bits_state(kind: str, channel: int, reply: bytes, length: int) -> bool:
    """State of ``channel`` in a reply of one 00/01 byte per relay (KMTronic 4/8, LCUS binary firmware)."""
    if len(reply) != length:
        raise FrameError(kind, f"status reply should be {length} bytes, got {hexstr(reply)}")
    if any(b not in (0, 1) for b in reply):
        raise FrameError(kind, f"status reply bytes must be 00/01, got {hexstr(reply)}")
    return reply[channel - 1] == 1
