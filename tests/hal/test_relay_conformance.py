"""The PowerSwitch contract, run against every board kind (real driver ↔ its twin), the GPIO driver on a fake
gpiod, and the in-memory MemorySwitch — so neither a driver nor the twin higher layers test with can drift.

Each rig opens switches through ``open_switch(BoardSpec(...))`` exactly as the rig config will, and reads the
*twin's* relay register to check what really happened on the wire.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hal.emulators.gpiochip import FakeGpiod
from hal.emulators.relays import (
    BoardModel,
    DevantechModel,
    KmtronicModel,
    LcusModel,
    NumatoModel,
    PtyEmulator,
)
from hal.emulators.usbrelay import DcttechModel, FakeUsbDevice, FakeUsbRelayBackend
from hal.errors import HalError
from hal.power import serialboard
from hal.power.boards import BoardSpec, ManagedSwitch, Seams, board_kinds, open_switch
from hal.power.memory import MemorySwitch

OFF_S = 2.5
TIMEOUT_S = 0.5
GPIO_LINES = {1: "GPIO17", 2: "GPIO27"}


@dataclass
class Rig:
    """A board kind wired to its twin: open channels, read the twin's register, pull the plug."""

    kind: str
    channels: int
    observes: bool
    open_channel: Callable[[int], ManagedSwitch]
    register: Callable[[int], bool | None]
    unplug: Callable[[], None]
    opened: list[ManagedSwitch] = field(default_factory=list)
    teardown: list[Callable[[], None]] = field(default_factory=list)

    def open(self, channel: int) -> ManagedSwitch:
        switch = self.open_channel(channel)
        self.opened.append(switch)
        return switch

    def settles(self, channel: int, on: bool, timeout: float = 1.0) -> bool:
        """True once the twin's relay reads ``on`` (no-ack boards: the bytes may still be in flight)."""
        deadline = time.monotonic() + timeout
        while self.register(channel) is not on:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True


def serial_model(kind: str) -> BoardModel:
    family, _, size = kind.partition("/")[0].rpartition("-")
    n = int(size)
    if family == "lcus":
        return LcusModel(n, "bytes" if kind.endswith("/bytes") else "lines")
    models: dict[str, Callable[[int], BoardModel]] = {
        "kmtronic": KmtronicModel,
        "numato": NumatoModel,
        "devantech": DevantechModel,
    }
    return models[family](n)


def serial_rig(kind: str) -> Rig:
    emulator = PtyEmulator(serial_model(kind)).start()
    board = kind.partition("/")[0]
    rig = Rig(
        kind=kind,
        channels=len(emulator.model.relays),
        observes=board != "lcus-1",
        open_channel=lambda ch: open_switch(
            BoardSpec(board, ch, port=emulator.port, off_s=OFF_S, timeout_s=TIMEOUT_S)
        ),
        register=lambda ch: emulator.relays()[ch - 1],
        unplug=emulator.unplug,
    )
    rig.teardown.append(emulator.stop)
    return rig


def dcttech_rig() -> Rig:
    device = FakeUsbDevice(DcttechModel("RIG01", 2))
    seams = Seams(usb_backend=FakeUsbRelayBackend(device))

    def unplug() -> None:
        device.unplugged = True

    return Rig(
        kind="dcttech",
        channels=2,
        observes=True,
        open_channel=lambda ch: open_switch(
            BoardSpec("dcttech", ch, serial_number="RIG01", off_s=OFF_S, timeout_s=TIMEOUT_S), seams
        ),
        register=lambda ch: device.model.relays[ch - 1],
        unplug=unplug,
    )


def gpio_rig(kind: str, tmp_path: Path) -> Rig:
    (tmp_path / "gpiochip0").touch()
    chip = str(tmp_path / "gpiochip0")
    gpiod = FakeGpiod({chip: list(GPIO_LINES.values())})
    seams = Seams(gpiod=gpiod, gpio_dev_dir=str(tmp_path))
    active_low = kind == "gpio"
    return Rig(
        kind=kind,
        channels=2,
        observes=True,
        open_channel=lambda ch: open_switch(BoardSpec(kind, GPIO_LINES[ch], off_s=OFF_S), seams),
        register=lambda ch: gpiod.level(chip, GPIO_LINES[ch]) == (0 if active_low else 1),
        unplug=lambda: gpiod.unplug(chip),
    )


def memory_rig() -> Rig:
    switches: dict[int, MemorySwitch] = {}

    def open_channel(channel: int) -> ManagedSwitch:
        switch = open_switch(BoardSpec("memory", channel, off_s=OFF_S))
        assert isinstance(switch, MemorySwitch)
        switches[channel] = switch
        return switch

    def unplug() -> None:
        for switch in switches.values():
            switch.unplugged = True

    return Rig("memory", 2, True, open_channel, lambda ch: switches[ch].powered, unplug)


# Every registered kind, plus the second LCUS firmware (one status byte per channel).
RIG_KINDS = [*board_kinds(), "lcus-2/bytes", "lcus-8/bytes"]
MULTI_CHANNEL = [k for k in RIG_KINDS if not k.endswith("-1")]


def build_rig(kind: str, tmp_path: Path) -> Rig:
    if kind == "dcttech":
        return dcttech_rig()
    if kind.startswith("gpio"):
        return gpio_rig(kind, tmp_path)
    if kind == "memory":
        return memory_rig()
    return serial_rig(kind)


@pytest.fixture
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    built = build_rig(request.param, tmp_path)
    yield built
    for switch in built.opened:
        switch.close()
    for step in built.teardown:
        step()
    assert not serialboard._OPEN, "a serial board was left open"


def expected_knowledge(rig: Rig) -> str:
    return "observed" if rig.observes else "commanded"


def test_every_registered_kind_has_a_rig() -> None:
    for kind in board_kinds():
        assert kind in RIG_KINDS
    assert {"lcus-4", "kmtronic-8", "numato-32", "devantech-8", "dcttech", "gpio", "memory"} <= set(RIG_KINDS)


@pytest.mark.parametrize("rig", RIG_KINDS, indirect=True)
def test_off_then_state_is_off(rig: Rig) -> None:
    switch = rig.open(1)
    switch.on()
    after = switch.off()
    assert after.on is False and after.knowledge == expected_knowledge(rig)
    state = switch.state()
    assert state.on is False and state.knowledge == expected_knowledge(rig)
    assert rig.settles(1, False)


@pytest.mark.parametrize("rig", RIG_KINDS, indirect=True)
def test_on_then_state_is_on(rig: Rig) -> None:
    switch = rig.open(1)
    switch.off()
    after = switch.on()
    assert after.on is True and after.knowledge == expected_knowledge(rig)
    state = switch.state()
    assert state.on is True and state.knowledge == expected_knowledge(rig)
    assert rig.settles(1, True)


@pytest.mark.parametrize("rig", RIG_KINDS, indirect=True)
def test_cycle_sleeps_off_s_once_while_the_relay_is_off(rig: Rig) -> None:
    switch = rig.open(1)
    switch.on()
    assert rig.settles(1, True)
    slept: list[tuple[float, bool]] = []
    final = switch.cycle(sleep=lambda seconds: slept.append((seconds, rig.settles(1, False))))
    assert switch.off_s == OFF_S
    assert slept == [(OFF_S, True)]
    assert final.on is True and final.knowledge == expected_knowledge(rig)
    assert rig.settles(1, True)


@pytest.mark.parametrize("rig", MULTI_CHANNEL, indirect=True)
def test_two_channels_on_one_board_are_independent(rig: Rig) -> None:
    first, second = rig.open(1), rig.open(2)
    first.on()
    second.off()
    assert (first.state().on, second.state().on) == (True, False)
    assert rig.settles(1, True) and rig.settles(2, False)
    second.on()
    first.off()
    assert (first.state().on, second.state().on) == (False, True)
    assert rig.settles(1, False) and rig.settles(2, True)


@pytest.mark.parametrize("rig", RIG_KINDS, indirect=True)
def test_unplugged_board_gives_hal_error_not_a_hang(rig: Rig) -> None:
    switch = rig.open(1)
    switch.on()
    rig.unplug()
    started = time.monotonic()
    with pytest.raises(HalError) as caught:
        switch.off()
    assert time.monotonic() - started < 1.0
    assert caught.value.device and str(caught.value).startswith(caught.value.device)
    if rig.observes:
        with pytest.raises(HalError):
            switch.state()
    else:  # a no-status board never claims to have seen the relay
        assert switch.state().knowledge != "observed"
