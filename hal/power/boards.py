"""Where a phone's power comes from (a :class:`BoardSpec`) → a live switch: the registry of board kinds.

The rig config names a kind, a channel and how to find the board; :func:`open_switch` turns that into a
:class:`ManagedSwitch`. Kinds: ``lcus-1/2/4/8``, ``kmtronic-1/2/4/8``, ``numato-1/2/4/8/16/32/64``,
``devantech-2/8``, ``dcttech`` (USBRelayN HID; size read from the board), ``gpio`` (active-low relay module
on a Pi line; channel = line name, port = optional chip path), ``gpio-active-high`` and ``memory`` (dry runs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hal.errors import HalError
from hal.power.codecs import RelayCodec
from hal.power.devantech import DevantechCodec
from hal.power.gpio import GpioSwitch
from hal.power.hidrelay import open_hid_relay
from hal.power.kmtronic import KmtronicCodec
from hal.power.lcus import LcusCodec
from hal.power.memory import MemorySwitch
from hal.power.numato import NumatoCodec
from hal.power.protocol import PowerState, PowerSwitch
from hal.power.serialboard import Comports, find_port, open_serial_relay

DEFAULT_OFF_S = 5.0  # pdudaemon's default; long enough for a PoE-less phone's supply to drain


@dataclass(frozen=True)
class BoardSpec:
    """One outlet: board ``kind``, ``channel`` (1-based relay, or GPIO line name) and where the board is.

    Serial boards take exactly one of ``serial_number`` (USB serial), ``usb_path`` (USB port path such as
    ``1-1.2``, for CH340 boards without a serial) or ``port`` (an explicit tty path). ``timeout_s`` bounds
    every exchange with the board; ``off_s`` is how long a power cycle leaves the phone off.
    """

    kind: str
    channel: int | str
    serial_number: str | None = None
    port: str | None = None
    usb_path: str | None = None
    off_s: float = DEFAULT_OFF_S
    timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.off_s) and 0 <= self.off_s <= 600):
            raise HalError(self.kind, "BAD_SPEC", f"off_s {self.off_s} is not in 0..600 s")
        if not (math.isfinite(self.timeout_s) and 0 < self.timeout_s <= 30):
            raise HalError(self.kind, "BAD_SPEC", f"timeout_s {self.timeout_s} is not in (0, 30] s")

    def describe(self) -> str:
        where = self.port or ""
        if self.serial_number:
            where = f"serial {self.serial_number}"
        elif self.usb_path:
            where = f"usb {self.usb_path}"
        return " ".join(part for part in (self.kind, where, f"ch{self.channel}") if part)

    def relay_channel(self) -> int:
        if isinstance(self.channel, bool) or not isinstance(self.channel, int) or self.channel < 1:
            raise HalError(
                self.describe(), "BAD_SPEC", f"channel must be a relay number >= 1, not {self.channel!r}"
            )
        return self.channel


@dataclass(frozen=True)
class Seams:
    """Where tests (and unusual hosts) plug in: port listing, pyusb backend, gpiod module, /dev directory."""

    comports: Comports | None = None
    usb_backend: Any = None
    gpiod: Any = None
    gpio_dev_dir: str = "/dev"


class ManagedSwitch(PowerSwitch, Protocol):
    """What :func:`open_switch` returns: a PowerSwitch that also knows its cycle time and can be closed."""

    off_s: float

    def cycle(self, sleep: Callable[[float], None] = time.sleep) -> PowerState: ...

    def close(self) -> None: ...


SwitchFactory = Callable[[BoardSpec, Seams], ManagedSwitch]


def serial_factory(codec: RelayCodec) -> SwitchFactory:
    """A factory for one USB-serial board family and size."""

    def open_serial(spec: BoardSpec, seams: Seams) -> ManagedSwitch:
        channel = spec.relay_channel()
        path = find_port(
            port=spec.port,
            serial_number=spec.serial_number,
            usb_path=spec.usb_path,
            comports=seams.comports,
            label=spec.describe(),
        )
        return open_serial_relay(
            codec, channel, path, timeout_s=spec.timeout_s, off_s=spec.off_s, name=spec.describe()
        )

    return open_serial


def _open_dcttech(spec: BoardSpec, seams: Seams) -> ManagedSwitch:
    if spec.port:
        raise HalError(
            spec.describe(), "BAD_SPEC", "a HID relay is found by serial_number or usb_path, not port"
        )
    return open_hid_relay(
        spec.relay_channel(),
        serial_number=spec.serial_number,
        usb_path=spec.usb_path,
        backend=seams.usb_backend,
        timeout_s=spec.timeout_s,
        off_s=spec.off_s,
        name=spec.describe(),
    )


def gpio_factory(active_low: bool) -> SwitchFactory:
    def open_gpio(spec: BoardSpec, seams: Seams) -> ManagedSwitch:
        if not isinstance(spec.channel, str) or not spec.channel:
            raise HalError(spec.describe(), "BAD_SPEC", "a GPIO channel is a line name such as 'GPIO17'")
        return GpioSwitch(
            spec.channel,
            chip=spec.port,
            active_low=active_low,
            off_s=spec.off_s,
            gpiod=seams.gpiod,
            dev_dir=seams.gpio_dev_dir,
        )

    return open_gpio


def _open_memory(spec: BoardSpec, seams: Seams) -> ManagedSwitch:
    return MemorySwitch(spec.describe(), off_s=spec.off_s)


BOARDS: dict[str, SwitchFactory] = {
    **{f"lcus-{n}": serial_factory(LcusCodec(n)) for n in (1, 2, 4, 8)},
    **{f"kmtronic-{n}": serial_factory(KmtronicCodec(n)) for n in (1, 2, 4, 8)},
    **{f"numato-{n}": serial_factory(NumatoCodec(n)) for n in (1, 2, 4, 8, 16, 32, 64)},
    **{f"devantech-{n}": serial_factory(DevantechCodec(n)) for n in (2, 8)},
    "dcttech": _open_dcttech,
    "gpio": gpio_factory(active_low=True),
    "gpio-active-high": gpio_factory(active_low=False),
    "memory": _open_memory,
}


def board_kinds() -> list[str]:
    return sorted(BOARDS)


def open_switch(spec: BoardSpec, seams: Seams | None = None) -> ManagedSwitch:
    """The live switch for ``spec``; close it when done (the board's port closes with its last channel)."""
    factory = BOARDS.get(spec.kind)
    if factory is None:
        raise HalError(spec.kind, "UNKNOWN_KIND", f"unknown board kind; known: {', '.join(board_kinds())}")
    return factory(spec, seams or Seams())
