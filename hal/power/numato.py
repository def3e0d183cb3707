"""Numato Lab USB relay modules (CDC-ACM, rate not significant): a text console ending every reply with ``>``.

Commands end with CR; the board echoes the command, answers on the next line and prints ``>``
(``relay read 0\\r`` → ``relay read 0\\n\\ron\\n\\r>``). Relays are **0-based** on the wire: one character
0-9 then A-F (up to 16 relays) or A-V (32 relays); 64-relay boards use two digits 00-63. A CR sent first
flushes whatever was half-typed and resyncs us to the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from hal.errors import FrameError
from hal.power.codecs import Exchange, PromptReply, check_channel, check_count, hexstr

SIZES = (1, 2, 4, 8, 16, 32, 64)
PROMPT = b">"
_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUV"


def relay_index(channel: int, channels: int) -> str:
    """The wire name of 1-based ``channel`` on a ``channels``-relay board."""
    if channels == 64:
        return f"{channel - 1:02d}"
    return _DIGITS[channel - 1]


def reply_lines(kind: str, reply: bytes) -> list[str]:
    """The non-empty lines before the prompt (echo included); FrameError unless ASCII ending in ``>``."""
    try:
        text = reply.decode("ascii")
    except UnicodeDecodeError:
        raise FrameError(kind, f"console reply is not ASCII: {hexstr(reply)}") from None
    if not text.endswith(">"):
        raise FrameError(kind, f"console reply does not end with the '>' prompt: {hexstr(reply)}")
    return [line.strip() for line in text[:-1].replace("\r", "\n").split("\n") if line.strip()]


@dataclass(frozen=True)
class NumatoCodec:
    channels: int

    def __post_init__(self) -> None:
        check_count(self.kind, self.channels, SIZES)

    @property
    def kind(self) -> str:
        return f"numato-{self.channels}"

    @property
    def observes(self) -> bool:
        return True

    def command(self, verb: str, channel: int) -> str:
        check_channel(self.kind, channel, self.channels)
        return f"relay {verb} {relay_index(channel, self.channels)}"

    def hello(self) -> Exchange | None:
        return Exchange(b"\r", PromptReply(PROMPT))

    def switch(self, channel: int, on: bool) -> Exchange:
        return Exchange(f"{self.command('on' if on else 'off', channel)}\r".encode(), PromptReply(PROMPT))

    def check_ack(self, channel: int, on: bool, reply: bytes) -> None:
        sent = self.command("on" if on else "off", channel)
        lines = reply_lines(self.kind, reply)
        if sent.lower() not in (line.lower() for line in lines):
            raise FrameError(self.kind, f"board did not echo {sent!r}: {hexstr(reply)}")

    def query(self, channel: int) -> Exchange | None:
        return Exchange(f"{self.command('read', channel)}\r".encode(), PromptReply(PROMPT))

    def decode_state(self, channel: int, reply: bytes) -> bool:
        sent = self.command("read", channel).lower()
        answer = [line.lower() for line in reply_lines(self.kind, reply) if line.lower() != sent]
        if answer not in (["on"], ["off"]):
            raise FrameError(self.kind, f"'relay read' answer should be on/off, got {hexstr(reply)}")
        return answer == ["on"]
