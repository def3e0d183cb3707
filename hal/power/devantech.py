"""Devantech USB-RLY02/08B/16/16L/82 (CDC, settings unused): one byte per command, no acknowledgement.

On is ``65``..``6C`` for relays 1..8, off ``6F``..``76``; ``5B`` answers one byte, bit n-1 set = relay n on.
Bits above the board's relay count are ignored (the 2-relay boards share the 8-relay firmware).
"""

from __future__ import annotations

from dataclasses import dataclass

from hal.errors import FrameError
from hal.power.codecs import Exchange, FixedReply, NoReply, check_channel, check_count, hexstr

SIZES = (2, 8)
ON_BASE = 0x65
OFF_BASE = 0x6F
GET_STATES = b"\x5b"


@dataclass(frozen=True)
class DevantechCodec:
    channels: int

    def __post_init__(self) -> None:
        check_count(self.kind, self.channels, SIZES)

    @property
    def kind(self) -> str:
        return f"devantech-{self.channels}"

    @property
    def observes(self) -> bool:
        return True

    def hello(self) -> Exchange | None:
        return None

    def switch(self, channel: int, on: bool) -> Exchange:
        check_channel(self.kind, channel, self.channels)
        return Exchange(bytes(((ON_BASE if on else OFF_BASE) + channel - 1,)), NoReply())

    def check_ack(self, channel: int, on: bool, reply: bytes) -> None:
        return None

    def query(self, channel: int) -> Exchange | None:
        check_channel(self.kind, channel, self.channels)
        return Exchange(GET_STATES, FixedReply(1))

    def decode_state(self, channel: int, reply: bytes) -> bool:
        check_channel(self.kind, channel, self.channels)
        if len(reply) != 1:
            raise FrameError(self.kind, f"relay-states reply should be 1 byte, got {hexstr(reply)}")
        return bool(reply[0] >> (channel - 1) & 1)
