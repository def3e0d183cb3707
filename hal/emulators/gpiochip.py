"""A stand-in for the ``gpiod`` v2 python module: named lines on fake chips with physical levels.

It implements the slice of the API the GPIO driver uses (``is_gpiochip_device``, ``Chip`` with
``line_offset_from_id``, ``request_lines`` with ``LineSettings``, ``LineRequest.set_value/get_value/release``,
``line.Value``/``line.Direction``) with the kernel's semantics: a requested line is busy for everyone else,
``active_low`` inverts between logical value and physical level, a released request refuses further use, and
an unplugged chip fails with ENODEV. Tests read :meth:`FakeGpiod.level` to check the wire, not a call log.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass, field
from types import SimpleNamespace, TracebackType


class Value(enum.Enum):
    INACTIVE = 0
    ACTIVE = 1


class Direction(enum.Enum):
    AS_IS = 1
    INPUT = 2
    OUTPUT = 3


@dataclass(frozen=True)
class LineSettings:
    direction: Direction = Direction.AS_IS
    output_value: Value = Value.INACTIVE
    active_low: bool = False


class RequestReleasedError(Exception):
    """gpiod raises this (not an OSError) for a released request."""


class ChipClosedError(Exception):
    """gpiod raises this (not an OSError) for a closed chip."""


@dataclass
class _ChipState:
    names: list[str]
    levels: dict[int, int] = field(default_factory=dict)
    owners: dict[int, str] = field(default_factory=dict)
    present: bool = True


class FakeChip:
    def __init__(self, gpiod: FakeGpiod, path: str) -> None:
        self._gpiod, self.path = gpiod, path
        self._state: _ChipState | None = gpiod.chip_state(path)

    def __enter__(self) -> FakeChip:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._state is None:
            raise ChipClosedError()
        self._state = None

    def line_offset_from_id(self, line: str | int) -> int:
        if self._state is None:
            raise ChipClosedError()
        if isinstance(line, int):
            return line
        if line not in self._state.names:
            raise OSError(errno.ENOENT, f"no line named {line!r}")
        return self._state.names.index(line)


class FakeLineRequest:
    def __init__(self, state: _ChipState, lines: dict[str, tuple[int, LineSettings]]) -> None:
        self._state, self._lines, self._released = state, lines, False

    def set_value(self, line: str, value: Value) -> None:
        offset, settings = self._line(line)
        self._state.levels[offset] = int((value is Value.ACTIVE) != settings.active_low)

    def get_value(self, line: str) -> Value:
        offset, settings = self._line(line)
        return (
            Value.ACTIVE if bool(self._state.levels.get(offset, 0)) != settings.active_low else Value.INACTIVE
        )

    def release(self) -> None:
        if self._released:
            raise RequestReleasedError()
        self._released = True
        for offset, _ in self._lines.values():
            self._state.owners.pop(offset, None)

    def _line(self, line: str) -> tuple[int, LineSettings]:
        if self._released:
            raise RequestReleasedError()
        if not self._state.present:
            raise OSError(errno.ENODEV, "No such device")
        if line not in self._lines:
            raise ValueError(f"line {line!r} is not part of this request")
        return self._lines[line]


class FakeGpiod:
    """Pass as ``GpioSwitch(gpiod=...)`` / ``Seams(gpiod=...)``; ``chips`` maps chip path → line names."""

    def __init__(self, chips: dict[str, list[str]]) -> None:
        self.LineSettings = LineSettings
        self.RequestReleasedError = RequestReleasedError
        self.ChipClosedError = ChipClosedError
        self.line = SimpleNamespace(Value=Value, Direction=Direction)
        self._chips = {path: _ChipState(list(names)) for path, names in chips.items()}

    def is_gpiochip_device(self, path: str) -> bool:
        return path in self._chips and self._chips[path].present

    def Chip(self, path: str) -> FakeChip:  # the gpiod class name
        return FakeChip(self, path)

    def request_lines(
        self, path: str, consumer: str | None = None, config: dict[str, LineSettings | None] | None = None
    ) -> FakeLineRequest:
        state = self.chip_state(path)
        lines: dict[str, tuple[int, LineSettings]] = {}
        for name, settings in (config or {}).items():
            offset = FakeChip(self, path).line_offset_from_id(name)
            if offset in state.owners:
                raise OSError(errno.EBUSY, f"line {name!r} is in use by {state.owners[offset]}")
            lines[name] = (offset, settings or LineSettings())
        for offset, settings in lines.values():
            state.owners[offset] = consumer or "?"
            if settings.direction is Direction.OUTPUT:
                state.levels[offset] = int((settings.output_value is Value.ACTIVE) != settings.active_low)
        return FakeLineRequest(state, lines)

    def chip_state(self, path: str) -> _ChipState:
        state = self._chips.get(path)
        if state is None or not state.present:
            raise OSError(errno.ENOENT, f"{path}: no such gpiochip")
        return state

    def level(self, path: str, name: str) -> int:
        """The physical level (0/1) of line ``name``: what the relay module's input pin sees."""
        state = self._chips[path]
        return state.levels.get(state.names.index(name), 0)

    def owner(self, path: str, name: str) -> str | None:
        state = self._chips[path]
        return state.owners.get(state.names.index(name))

    def unplug(self, path: str) -> None:
        self._chips[path].present = False
