"""KMTronic USB relay boards (9600 8N1): ``FF ch 01`` on, ``FF ch 00`` off, no acknowledgement.

The status query differs by size: 1/2-relay boards answer ``FF ch 03`` with ``FF ch 00/01``; 4/8-relay boards
answer ``FF 09 00`` with one 00/01 byte per relay, relay 1 first.
"""

from __future__ import annotations

from dataclasses import dataclass

from hal.errors import FrameError
from hal.power.codecs import Exchange, FixedReply, NoReply, bits_state, check_channel, check_count, hexstr

SIZES = (1, 2, 4, 8)
HEAD = 0xFF
ASK_ONE = 0x03
ASK_ALL = bytes((HEAD, 0x09, 0x00))


@dataclass(frozen=True)
class KmtronicCodec:
    channels: int

    def __post_init__(self) -> None:
        check_count(self.kind, self.channels, SIZES)

    @property
    def kind(self) -> str:
        return f"kmtronic-{self.channels}"

    @property
    def observes(self) -> bool:
        return True

    @property
    def per_relay_status(self) -> bool:
        """1/2-relay boards are asked relay by relay; 4/8-relay boards all at once."""
        return self.channels <= 2

    def hello(self) -> Exchange | None:
        return None

    def switch(self, channel: int, on: bool) -> Exchange:
        check_channel(self.kind, channel, self.channels)
        return Exchange(bytes((HEAD, channel, 1 if on else 0)), NoReply())

    def check_ack(self, channel: int, on: bool, reply: bytes) -> None:
        return None

    def query(self, channel: int) -> Exchange | None:
        check_channel(self.kind, channel, self.channels)
        if self.per_relay_status:
            return Exchange(bytes((HEAD, channel, ASK_ONE)), FixedReply(3))
        return Exchange(ASK_ALL, FixedReply(self.channels))

    def decode_state(self, channel: int, reply: bytes) -> bool:
        check_channel(self.kind, channel, self.channels)
        if not self.per_relay_status:
            return bits_state(self.kind, channel, reply, self.channels)
        if len(reply) != 3 or reply[0] != HEAD or reply[1] != channel or reply[2] not in (0, 1):
            raise FrameError(
                self.kind, f"status of relay {channel} should be FF {channel:02X} 00/01, got {hexstr(reply)}"
            )
        return reply[2] == 1
