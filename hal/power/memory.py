"""An in-memory power switch: the twin higher layers (rig, boot, CLI) test against instead of a relay board.

It passes the same conformance test as the real drivers, so it cannot drift from them: ``observes=False``
makes it behave like a no-status board (LCUS-1), ``unplugged=True`` like a board that has gone away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from hal.errors import HalError
from hal.power.protocol import PowerState
from hal.power.protocol import cycle as power_cycle


class MemorySwitch:
    """A relay that lives in memory: ``powered`` is its contact, ``switched`` every command it obeyed."""

    def __init__(
        self, name: str = "memory", *, on: bool | None = True, observes: bool = True, off_s: float = 0.0
    ) -> None:
        self.name, self.observes, self.off_s = name, observes, off_s
        self.powered: bool | None = on
        self.switched: list[bool] = []
        self.unplugged = False
        self._commanded: bool | None = None
        self._closed = False
        self._lock = threading.Lock()

    def on(self) -> PowerState:
        return self._set(True)

    def off(self) -> PowerState:
        return self._set(False)

    def state(self) -> PowerState:
        with self._lock:
            self._check()
            if self.observes:
                return PowerState(self.powered, "observed" if self.powered is not None else "unknown")
            return PowerState(self._commanded, "commanded" if self._commanded is not None else "unknown")

    def cycle(self, sleep: Callable[[float], None] = time.sleep) -> PowerState:
        """Off, ``sleep(off_s)``, on: the state after switching on."""
        return power_cycle(self, self.off_s, sleep)

    def close(self) -> None:
        self._closed = True

    def _set(self, on: bool) -> PowerState:
        with self._lock:
            self._check()
            self.powered = self._commanded = on
            self.switched.append(on)
            return PowerState(on, "observed" if self.observes else "commanded")

    def _check(self) -> None:
        if self._closed:
            raise HalError(self.name, "CLOSED", "switch was closed; open it again")
        if self.unplugged:
            raise HalError(
                self.name, "IO", "memory switch is unplugged", "plug it back in (set unplugged=False)"
            )
