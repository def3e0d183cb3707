"""A relay on a Raspberry Pi GPIO line, via libgpiod's python binding v2 (PyPI ``gpiod`` >= 2, ``pi`` extra).

- The line is found by name ("GPIO17") on whichever gpiochip has it: the header moved from gpiochip4 to
  gpiochip0 between Pi 5 kernels, so no chip path is hard-coded (one may be given).
- It is requested once, as an output with an explicit initial value, and held until :meth:`close`: releasing
  it hands the line back and its level becomes undefined.
- Active-low relay modules are handled by the kernel (``active_low``), the one place inversion happens; this
  class deals in logical on/off only. The state is read back with ``get_value`` (observed).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from hal.errors import HalError
from hal.power.protocol import PowerState
from hal.power.protocol import cycle as power_cycle

CONSUMER = "phoneprov"
GPIOD_REMEDY = "pip install 'phoneprov[pi]' (PyPI gpiod >= 2.0.2; needs python3-dev to build)"


def load_gpiod(module: Any = None) -> Any:
    """The gpiod v2 module (or the given stand-in); a clear HalError when it is missing or the v1 API."""
    if module is None:
        try:
            module = importlib.import_module("gpiod")
        except ImportError as exc:
            raise HalError(
                "gpio", "GPIOD_MISSING", "python package gpiod is not installed", GPIOD_REMEDY
            ) from exc
    if not hasattr(module, "request_lines") or not hasattr(module, "LineSettings"):
        raise HalError("gpio", "GPIOD_TOO_OLD", "gpiod < 2 has a different, incompatible API", GPIOD_REMEDY)
    return module


def gpiod_errors(gpiod: Any) -> tuple[type[BaseException], ...]:
    """What gpiod raises for a vanished chip or a released request (its own classes are not OSErrors)."""
    extra = (getattr(gpiod, n, None) for n in ("RequestReleasedError", "ChipClosedError"))
    return (OSError, ValueError, *(e for e in extra if isinstance(e, type) and issubclass(e, BaseException)))


def chip_paths(dev_dir: str) -> list[str]:
    """``gpiochipN`` character devices under ``dev_dir``, in N order (gpiochip10 after gpiochip2)."""
    try:
        names = [n for n in os.listdir(dev_dir) if re.fullmatch(r"gpiochip\d+", n)]
    except OSError:
        return []
    return [os.path.join(dev_dir, n) for n in sorted(names, key=lambda n: int(n[len("gpiochip") :]))]


def find_chip(gpiod: Any, line: str, dev_dir: str = "/dev") -> str:
    """The chip that has a line called ``line``."""
    for path in chip_paths(dev_dir):
        if not gpiod.is_gpiochip_device(path):
            continue
        try:
            with gpiod.Chip(path) as chip:
                chip.line_offset_from_id(line)
                return path
        except (OSError, ValueError):
            continue
    raise HalError(f"gpio {line}", "LINE_NOT_FOUND", f"no gpiochip under {dev_dir} has a line named {line!r}")


class GpioSwitch:
    """One GPIO line driving one relay, as a PowerSwitch (plus ``off_s``, ``cycle`` and ``close``)."""

    def __init__(
        self,
        line: str,
        *,
        chip: str | None = None,
        active_low: bool = True,
        initial_on: bool = True,
        off_s: float = 5.0,
        gpiod: Any = None,
        dev_dir: str = "/dev",
    ) -> None:
        self._gpiod = load_gpiod(gpiod)
        self._errors = gpiod_errors(self._gpiod)
        self.line, self.active_low, self.off_s = line, active_low, off_s
        self.chip = chip or find_chip(self._gpiod, line, dev_dir)
        self.name = f"gpio {line} on {self.chip}"
        self._lock = threading.Lock()
        value = self._gpiod.line.Value
        settings = self._gpiod.LineSettings(
            direction=self._gpiod.line.Direction.OUTPUT,
            output_value=value.ACTIVE if initial_on else value.INACTIVE,
            active_low=active_low,
        )
        try:
            self._request: Any = self._gpiod.request_lines(
                self.chip, consumer=CONSUMER, config={line: settings}
            )
        except (OSError, ValueError) as exc:
            raise HalError(
                self.name, "LINE_BUSY", f"cannot request the line: {exc}", "is another process using it?"
            ) from exc

    def on(self) -> PowerState:
        return self._set(True)

    def off(self) -> PowerState:
        return self._set(False)

    def state(self) -> PowerState:
        with self._lock:
            return PowerState(self._get(), "observed")

    def cycle(self, sleep: Callable[[float], None] = time.sleep) -> PowerState:
        """Off, ``sleep(off_s)``, on: the state after switching on."""
        return power_cycle(self, self.off_s, sleep)

    def close(self) -> None:
        """Release the line (its level is undefined afterwards: only at agent shutdown)."""
        with self._lock:
            if self._request is None:
                return
            request, self._request = self._request, None
            with contextlib.suppress(*self._errors):  # the chip went away: nothing left to release
                request.release()

    def _set(self, on: bool) -> PowerState:
        value = self._gpiod.line.Value
        with self._lock:
            self._io(lambda req: req.set_value(self.line, value.ACTIVE if on else value.INACTIVE))
            now = self._get()
        if now is not on:
            raise HalError(self.name, "NOT_SWITCHED", f"line reads {'on' if now else 'off'} after set_value")
        return PowerState(now, "observed")

    def _get(self) -> bool:
        return bool(self._io(lambda req: req.get_value(self.line)) == self._gpiod.line.Value.ACTIVE)

    def _io(self, action: Callable[[Any], Any]) -> Any:
        if self._request is None:
            raise HalError(self.name, "CLOSED", "line was released; open the switch again")
        try:
            return action(self._request)
        except self._errors as exc:
            raise HalError(
                self.name, "IO", f"gpio request failed: {exc}", "is the chip still there?"
            ) from exc
