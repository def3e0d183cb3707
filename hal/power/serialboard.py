"""The one serial transport every USB-serial relay board uses: find the port, talk codec exchanges, read back.

- Boards are found by USB serial number or USB port path (``location``, for CH340 boards without a serial)
  through ``serial.tools.list_ports``; a tty path is used only when given explicitly.
- One :class:`SerialBoard` per physical port, shared by every channel on it and guarded by one lock; the port
  is opened ``exclusive`` so a second process cannot interleave bytes either.
- Every exchange has one deadline computed up front; no reply → HalError, a bad reply → FrameError, both
  naming the board and the bytes received. Nothing is retried here: retries belong to the caller.
- Boards without an acknowledgement are read back after switching when they have a status query
  (``observed``); otherwise the state is only ``commanded``, and says so.
"""

from __future__ import annotations

import contextlib
import os
import termios
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import serial  # type: ignore[import-untyped, unused-ignore]
import serial.tools.list_ports  # type: ignore[import-untyped, unused-ignore]

from hal.errors import FrameError, HalError
from hal.power.codecs import Exchange, RelayCodec, check_channel, hexstr
from hal.power.protocol import PowerState
from hal.power.protocol import cycle as power_cycle

BAUDRATE = 9600
IO_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError, termios.error)
OPEN_ERRORS: tuple[type[BaseException], ...] = (*IO_ERRORS, ValueError)
_T = TypeVar("_T")
UNPLUGGED = "is the board plugged in, and is the user in group dialout?"
BUSY_WAIT_S = 15.0  # longer than a power cycle's off time (3 s by default), which holds the board


class PortInfo(Protocol):
    """The fields of pyserial's ListPortInfo that identify a board."""

    device: str
    serial_number: str | None
    location: str | None


Comports = Callable[[], Iterable[PortInfo]]


def _system_comports() -> Iterable[PortInfo]:
    return cast("Iterable[PortInfo]", serial.tools.list_ports.comports())


def find_port(
    *,
    port: str | None = None,
    serial_number: str | None = None,
    usb_path: str | None = None,
    comports: Comports | None = None,
    label: str = "relay board",
) -> str:
    """The tty of the board named by exactly one of: explicit ``port``, USB ``serial_number`` or ``usb_path``.

    ``usb_path`` is the USB port path (``1-1.2``, udev ID_PATH's USB part), matched against pyserial's
    ``location`` without its ``:1.0`` interface suffix.
    """
    given = [value for value in (port, serial_number, usb_path) if value]
    if len(given) != 1:
        raise HalError(label, "BAD_SPEC", "give exactly one of port, serial_number, usb_path")
    if port:
        return port
    listing = list((comports or _system_comports)())
    if serial_number:
        what = f"USB serial number {serial_number!r}"
        hits = [p for p in listing if p.serial_number == serial_number]
    else:
        what = f"USB path {usb_path!r}"
        hits = [p for p in listing if p.location and p.location.split(":")[0] == usb_path]
    if len(hits) == 1:
        return hits[0].device
    present = (
        ", ".join(f"{p.device} (serial {p.serial_number}, path {p.location})" for p in listing) or "none"
    )
    if not hits:
        raise HalError(label, "NOT_FOUND", f"no serial port with {what}; present: {present}", UNPLUGGED)
    raise HalError(label, "AMBIGUOUS", f"{len(hits)} serial ports match {what}; bind by USB path instead")


def io_reason(exc: BaseException) -> str:
    """termios.error carries (errno, text) in args, not in ``str``; say it the way OSError would."""
    if isinstance(exc, termios.error) and len(exc.args) == 2:
        return f"[Errno {exc.args[0]}] {exc.args[1]}"
    return str(exc) or type(exc).__name__


def check_switched(board: str, channel: int, on: bool, state: PowerState) -> PowerState:
    """A read-back that disagrees with the command is a failure, never a silent success."""
    if state.knowledge == "observed" and state.on is not on:
        raise HalError(
            board,
            "NOT_SWITCHED",
            f"channel {channel} reads {state.describe()} after switching it {'on' if on else 'off'}",
            "relay stuck, or the board kind/channel in the rig config is wrong",
        )
    return state


class SerialBoard:
    """One physical board: its open port, its codec and the lock every channel on it shares."""

    def __init__(
        self,
        codec: RelayCodec,
        path: str,
        *,
        timeout_s: float = 1.0,
        opener: Callable[..., Any] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        busy_wait_s: float = BUSY_WAIT_S,
    ) -> None:
        self.codec, self.path, self.timeout_s = codec, path, timeout_s
        self.name = f"{codec.kind} at {path}"
        self.lock = threading.RLock()
        self.commanded: dict[int, bool] = {}
        self._monotonic = monotonic
        self._synced = False
        self._closed = False
        self._port: Any = self._open(opener or serial.Serial, busy_wait_s)

    def _open(self, opener: Callable[..., Any], busy_wait_s: float) -> Any:
        """Open with an exclusive lock; while another process (another ``phoneprov rig`` command in the middle
        of a power cycle) holds the board, wait for it up to ``busy_wait_s`` instead of failing at once."""
        deadline = self._monotonic() + busy_wait_s
        while True:
            try:
                return opener(
                    self.path,
                    baudrate=BAUDRATE,
                    timeout=self.timeout_s,
                    write_timeout=self.timeout_s,
                    exclusive=True,
                )
            except OPEN_ERRORS as exc:
                if "exclusively lock" not in str(exc):
                    raise HalError(
                        self.name, "OPEN_FAILED", f"cannot open the port: {exc}", UNPLUGGED
                    ) from exc
                if self._monotonic() >= deadline:
                    raise HalError(
                        self.name,
                        "BUSY",
                        f"another process has held the board for more than {busy_wait_s:g} s",
                        "another phoneprov rig command (or a terminal program) has the port open",
                    ) from exc
            time.sleep(0.05)

    def switch(self, channel: int, on: bool) -> PowerState:
        """Switch one relay and read it back where the board can tell; a relay that did not move is an error.

        The read-back happens under the same lock, so no other channel's command can slip in between.
        """
        exchange = self.codec.switch(channel, on)
        with self.lock:
            self._check_open()
            self.commanded.pop(channel, None)  # a failed command leaves the relay unknown, not as it was
            self._sync()
            reply = self.transact(exchange)
            self._decoded(lambda: self.codec.check_ack(channel, on, reply))
            self.commanded[channel] = on
            state = self._observe(channel)
        return check_switched(self.name, channel, on, state)

    def read(self, channel: int) -> PowerState:
        """The relay's state: observed if the board has a status query, else what was last commanded."""
        check_channel(self.codec.kind, channel, self.codec.channels)
        with self.lock:
            self._check_open()
            return self._observe(channel)

    def transact(self, exchange: Exchange) -> bytes:
        """Send one request and read its whole reply before one deadline. The caller holds ``lock``."""
        deadline = self._monotonic() + self.timeout_s
        try:
            self._port.reset_input_buffer()
            self._port.write(exchange.request)
            self._port.flush()
            return self._read_reply(exchange, deadline)
        except IO_ERRORS as exc:
            self._synced = False
            raise HalError(self.name, "IO", f"port I/O failed: {io_reason(exc)}", UNPLUGGED) from exc

    def close(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(*IO_ERRORS):  # an unplugged board cannot be closed any further
                self._port.close()

    def _read_reply(self, exchange: Exchange, deadline: float) -> bytes:
        frame, buf = exchange.reply, b""
        while not frame.complete(buf):
            left = deadline - self._monotonic()
            if left <= 0:
                self._synced = False
                if buf:
                    raise FrameError(
                        self.name, f"incomplete reply to {hexstr(exchange.request)}: got {hexstr(buf)}"
                    )
                raise HalError(
                    self.name,
                    "NO_REPLY",
                    f"no reply to {hexstr(exchange.request)} within {self.timeout_s:g} s",
                    "check the board kind in the rig config and that the board is powered",
                )
            self._port.timeout = left
            want = max(1, min(int(self._port.in_waiting), frame.max_len - len(buf)))
            buf += bytes(self._port.read(want))
            if len(buf) > frame.max_len:
                self._synced = False
                raise FrameError(self.name, f"reply longer than {frame.max_len} bytes: {hexstr(buf)}")
        return buf

    def _sync(self) -> None:
        """Run the codec's hello once after opening and again after any error (Numato prompt resync)."""
        if self._synced:
            return
        hello = self.codec.hello()
        if hello is not None:
            self.transact(hello)
        self._synced = True

    def _observe(self, channel: int) -> PowerState:
        query = self.codec.query(channel)
        if query is None:
            known = self.commanded.get(channel)
            return PowerState(known, "unknown" if known is None else "commanded")
        self._sync()
        reply = self.transact(query)
        return PowerState(self._decoded(lambda: self.codec.decode_state(channel, reply)), "observed")

    def _decoded(self, decode: Callable[[], _T]) -> _T:
        """Codec errors name the board family; re-raise them naming this board, and resync next time."""
        try:
            return decode()
        except FrameError as exc:
            self._synced = False
            raise FrameError(self.name, exc.detail) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise HalError(self.name, "CLOSED", "board was closed; open the switch again")


@dataclass
class _Entry:
    board: SerialBoard
    users: int


_OPEN: dict[str, _Entry] = {}
_OPEN_LOCK = threading.Lock()


def acquire_board(
    codec: RelayCodec, path: str, *, timeout_s: float = 1.0, opener: Callable[..., Any] | None = None
) -> SerialBoard:
    """The shared board at ``path`` (opened on first use): every channel of a board gets the same lock."""
    key = os.path.realpath(path)
    with _OPEN_LOCK:
        entry = _OPEN.get(key)
        if entry is None:
            entry = _OPEN[key] = _Entry(SerialBoard(codec, path, timeout_s=timeout_s, opener=opener), 0)
        elif entry.board.codec != codec:
            raise HalError(path, "CONFLICT", f"already open as {entry.board.codec.kind}, not {codec.kind}")
        entry.users += 1
        return entry.board


def release_board(board: SerialBoard) -> None:
    """One channel is done with ``board``; the port closes when the last one is."""
    key = os.path.realpath(board.path)
    with _OPEN_LOCK:
        entry = _OPEN.get(key)
        if entry is not None and entry.board is board:
            entry.users -= 1
            if entry.users > 0:
                return
            del _OPEN[key]
    board.close()


class RelayBoard(Protocol):
    """What a channel needs from its board (serial or HID): switch and read one relay under the board lock."""

    @property
    def name(self) -> str: ...

    def switch(self, channel: int, on: bool) -> PowerState: ...

    def read(self, channel: int) -> PowerState: ...


class RelayChannel:
    """One channel of a relay board, as a PowerSwitch (plus ``off_s``, ``cycle`` and ``close``)."""

    def __init__(
        self,
        board: RelayBoard,
        channel: int,
        *,
        release: Callable[[], None],
        name: str | None = None,
        off_s: float = 5.0,
    ) -> None:
        self.board, self.channel, self.off_s = board, channel, off_s
        self.name = name or f"{board.name} ch{channel}"
        self._release = release
        self._closed = False

    def on(self) -> PowerState:
        self._check_open()
        return self.board.switch(self.channel, True)

    def off(self) -> PowerState:
        self._check_open()
        return self.board.switch(self.channel, False)

    def state(self) -> PowerState:
        self._check_open()
        return self.board.read(self.channel)

    def cycle(self, sleep: Callable[[float], None] = time.sleep) -> PowerState:
        """Off, ``sleep(off_s)``, on: the state after switching on."""
        return power_cycle(self, self.off_s, sleep)

    def close(self) -> None:
        """Let go of the board; its port closes when its last channel is closed."""
        if not self._closed:
            self._closed = True
            self._release()

    def _check_open(self) -> None:
        if self._closed:
            raise HalError(self.name, "CLOSED", "switch was closed; open it again")


def open_serial_relay(
    codec: RelayCodec,
    channel: int,
    path: str,
    *,
    timeout_s: float = 1.0,
    off_s: float = 5.0,
    name: str | None = None,
    opener: Callable[..., Any] | None = None,
) -> RelayChannel:
    """A switch for ``channel`` of the ``codec`` board at tty ``path`` (see :func:`find_port`)."""
    check_channel(codec.kind, channel, codec.channels)
    board = acquire_board(codec, path, timeout_s=timeout_s, opener=opener)
    return RelayChannel(board, channel, release=lambda: release_board(board), name=name, off_s=off_s)
