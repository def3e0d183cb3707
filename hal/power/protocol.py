"""The verbs every power switch offers (labgrid's protocol idea): on, off, cycle, state.

A relay board either reports its relays (``observed``) or only takes commands (``commanded``): the state a
driver returns says which, so nobody mistakes "we sent OFF" for "it is off".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from hal.errors import HalError

LEFT_OFF = "LEFT_OFF"  # a cycle whose off went through and whose on did not

Knowledge = Literal["observed", "commanded", "unknown"]


@dataclass(frozen=True)
class PowerState:
    on: bool | None
    knowledge: Knowledge

    def describe(self) -> str:
        word = {True: "on", False: "off", None: "unknown"}[self.on]
        return word if self.knowledge == "observed" else f"{word} ({self.knowledge})"


class PowerSwitch(Protocol):
    """One outlet: a relay channel or a GPIO line feeding one phone."""

    name: str

    def on(self) -> PowerState: ...

    def off(self) -> PowerState: ...

    def state(self) -> PowerState: ...


def cycle(switch: PowerSwitch, off_s: float, sleep: Callable[[float], None]) -> PowerState:
    """Off, wait ``off_s`` (injected sleep: tests do not wait), on. The state after switching on.

    A failure of the 'on' is ``LEFT_OFF``: the phone is now without power, which its operator must hear."""
    switch.off()
    sleep(off_s)
    try:
        return switch.on()
    except HalError as exc:
        raise HalError(exc.device, LEFT_OFF, f"{exc.detail} (after switching off)", exc.remedy) from exc
