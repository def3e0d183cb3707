"""dcttech "USBRelayN" V-USB HID relay boards (16c0:05df): codec and pyusb driver.

Switching is a class SET_REPORT (feature, report 0) whose payload starts ``FF ch`` (on) or ``FD ch`` (off);
the board does not acknowledge, so every switch is read back with GET_REPORT (feature, 8 bytes): bytes 0-4 are
the board's ASCII serial, byte 7 the relay bitmask (bit n-1 = relay n). The relay count is the digit in the
product string (``USBRelay2``). pyusb is the optional ``lab`` extra, so it is imported only when a board is
opened.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hal.errors import FrameError, HalError
from hal.power.codecs import check_channel, check_count, hexstr
from hal.power.protocol import PowerState
from hal.power.serialboard import RelayChannel, check_switched

VID, PID = 0x16C0, 0x05DF
SIZES = (1, 2, 4, 8)
PRODUCT_PREFIX = "USBRelay"
SET_REPORT, GET_REPORT = 0x09, 0x01
FEATURE_REPORT_0 = 3 << 8  # wValue: report type feature, report id 0
OUT_CLASS_DEVICE, IN_CLASS_DEVICE = 0x20, 0xA0  # bmRequestType: class request to the device, out / in
REPORT_LEN = 8
ON_CMD, OFF_CMD = 0xFF, 0xFD
KIND = "dcttech"


@dataclass(frozen=True)
class HidReport:
    """The board's feature report: its serial and the relay bitmask."""

    serial: str
    relays: int


def parse_report(reply: bytes) -> HidReport:
    if len(reply) != REPORT_LEN:
        raise FrameError(KIND, f"feature report should be {REPORT_LEN} bytes, got {hexstr(reply)}")
    raw = reply[:5].rstrip(b"\x00")
    if not raw or any(not 0x20 <= b < 0x7F for b in raw):
        raise FrameError(KIND, f"feature report serial is not printable ASCII: {hexstr(reply)}")
    return HidReport(raw.decode("ascii"), reply[7])


def channels_from_product(product: str | None) -> int:
    """``USBRelay4`` → 4; anything else is not one of these boards."""
    digits = (product or "")[len(PRODUCT_PREFIX) :]
    if not (product or "").startswith(PRODUCT_PREFIX) or not digits.isdigit() or int(digits) not in SIZES:
        raise FrameError(KIND, f"product string {product!r} is not USBRelay1/2/4/8")
    return int(digits)


@dataclass(frozen=True)
class DcttechCodec:
    channels: int

    def __post_init__(self) -> None:
        check_count(self.kind, self.channels, SIZES)

    @property
    def kind(self) -> str:
        return f"{KIND}-{self.channels}"

    def set_report(self, channel: int, on: bool) -> bytes:
        """The 8-byte feature report payload (the descriptor's report size; the board reads bytes 0-1)."""
        check_channel(self.kind, channel, self.channels)
        return bytes((ON_CMD if on else OFF_CMD, channel)) + bytes(REPORT_LEN - 2)

    def decode_state(self, channel: int, reply: bytes) -> bool:
        check_channel(self.kind, channel, self.channels)
        return bool(parse_report(reply).relays >> (channel - 1) & 1)


def _pyusb() -> tuple[Any, Any]:
    try:
        import usb.core  # type: ignore[import-untyped, unused-ignore]
        import usb.util  # type: ignore[import-untyped, unused-ignore]
    except ImportError as exc:
        raise HalError(
            KIND, "PYUSB_MISSING", "pyusb is not installed", "pip install 'phoneprov[lab]'"
        ) from exc
    return usb.core, usb.util


def _usb_errors(core: Any) -> tuple[type[BaseException], ...]:
    return (core.USBError, core.NoBackendError, ValueError, NotImplementedError, OSError)


def usb_path_of(dev: Any) -> str:
    """``bus-port.port`` (the USB part of udev's ID_PATH), or "" when the backend does not know it."""
    ports = getattr(dev, "port_numbers", None)
    return f"{dev.bus}-{'.'.join(str(p) for p in ports)}" if ports else ""


def read_report(dev: Any, timeout_ms: int) -> bytes:
    """GET_REPORT to the device itself: needs no claimed interface, so boards can be identified unclaimed."""
    return bytes(dev.ctrl_transfer(IN_CLASS_DEVICE, GET_REPORT, FEATURE_REPORT_0, 0, REPORT_LEN, timeout_ms))


class _UsbGuard:
    """Turns any pyusb failure inside a ``with`` into one HalError naming the board and the request."""

    def __init__(self, board: str, what: str, errors: tuple[type[BaseException], ...]) -> None:
        self.board, self.what, self.errors = board, what, errors

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None and isinstance(exc, self.errors):
            raise HalError(
                self.board, "IO", f"{self.what} failed: {exc}", "board unplugged, or no udev rule"
            ) from exc


class HidBoard:
    """One dcttech board: the claimed pyusb device, its codec and the lock its channels share."""

    def __init__(self, dev: Any, codec: DcttechCodec, serial: str, *, timeout_s: float = 1.0) -> None:
        self.core, self.util = _pyusb()
        self.dev, self.codec, self.serial = dev, codec, serial
        self.name = f"{codec.kind} {serial}"
        self.lock = threading.RLock()
        self.timeout_ms = max(1, int(timeout_s * 1000))
        with self._io("claim the interface"):
            if dev.is_kernel_driver_active(0):
                dev.detach_kernel_driver(0)
            self.util.claim_interface(dev, 0)

    def switch(self, channel: int, on: bool) -> PowerState:
        payload = self.codec.set_report(channel, on)
        with self.lock:
            with self._io("SET_REPORT"):
                self.dev.ctrl_transfer(
                    OUT_CLASS_DEVICE, SET_REPORT, FEATURE_REPORT_0, 0, payload, self.timeout_ms
                )
            state = self.read(channel)  # under the same lock: no other channel's command slips in between
        return check_switched(self.name, channel, on, state)

    def read(self, channel: int) -> PowerState:
        check_channel(self.codec.kind, channel, self.codec.channels)
        with self.lock, self._io("GET_REPORT"):
            reply = read_report(self.dev, self.timeout_ms)
        try:
            return PowerState(self.codec.decode_state(channel, reply), "observed")
        except FrameError as exc:
            raise FrameError(self.name, exc.detail) from exc

    def close(self) -> None:
        try:
            self.util.release_interface(self.dev, 0)
        except _usb_errors(self.core):
            pass  # an unplugged board has nothing left to release
        dispose(self.dev)

    def _io(self, what: str) -> _UsbGuard:
        return _UsbGuard(self.name, what, _usb_errors(self.core))


def dispose(dev: Any) -> None:
    core, util = _pyusb()
    try:
        util.dispose_resources(dev)
    except _usb_errors(core):
        pass


@dataclass(frozen=True)
class Found:
    """A board identified on the bus but not yet claimed."""

    dev: Any
    codec: DcttechCodec
    serial: str


def find_hid_board(
    *,
    serial_number: str | None = None,
    usb_path: str | None = None,
    backend: Any = None,
    timeout_s: float = 1.0,
) -> Found:
    """The one USBRelayN board with this report serial or USB path (exactly one of them must be given)."""
    if (serial_number is None) == (usb_path is None):
        raise HalError(KIND, "BAD_SPEC", "give exactly one of serial_number, usb_path")
    core, _ = _pyusb()
    try:
        devices = list(core.find(find_all=True, idVendor=VID, idProduct=PID, backend=backend))
    except _usb_errors(core) as exc:
        raise HalError(KIND, "IO", f"USB enumeration failed: {exc}", "is libusb installed?") from exc
    hits: list[Found] = []
    seen: list[str] = []
    skip: tuple[type[BaseException], ...] = (HalError, *_usb_errors(core))
    for dev in devices:
        where = usb_path_of(dev) or "?"
        try:
            found = Found(
                dev,
                DcttechCodec(channels_from_product(dev.product)),
                parse_report(read_report(dev, max(1, int(timeout_s * 1000)))).serial,
            )
        except skip as exc:
            seen.append(f"{where} unreadable ({exc})")
            dispose(dev)
            continue
        seen.append(f"{where} serial {found.serial}")
        if found.serial == serial_number or (usb_path is not None and where == usb_path):
            hits.append(found)
        else:
            dispose(dev)
    if len(hits) == 1:
        return hits[0]
    for found in hits:
        dispose(found.dev)
    wanted = f"serial {serial_number!r}" if serial_number else f"USB path {usb_path!r}"
    if not hits:
        present = "; ".join(seen) or "none"
        raise HalError(
            KIND, "NOT_FOUND", f"no USBRelay board with {wanted}; present: {present}", "plug it in"
        )
    raise HalError(KIND, "AMBIGUOUS", f"{len(hits)} USBRelay boards match {wanted}; bind by USB path")


@dataclass
class _Entry:
    board: HidBoard
    users: int


_OPEN: dict[tuple[object, object], _Entry] = {}
_OPEN_LOCK = threading.Lock()


def open_hid_relay(
    channel: int,
    *,
    serial_number: str | None = None,
    usb_path: str | None = None,
    backend: Any = None,
    timeout_s: float = 1.0,
    off_s: float = 5.0,
    name: str | None = None,
) -> RelayChannel:
    """A switch for ``channel`` of one USBRelayN board; channels of one board share its lock and handle."""
    found = find_hid_board(
        serial_number=serial_number, usb_path=usb_path, backend=backend, timeout_s=timeout_s
    )
    key = (found.dev.bus, found.dev.address)
    try:
        check_channel(found.codec.kind, channel, found.codec.channels)
    except HalError:
        dispose(found.dev)
        raise
    with _OPEN_LOCK:
        entry = _OPEN.get(key)
        if entry is None:
            try:
                board = HidBoard(found.dev, found.codec, found.serial, timeout_s=timeout_s)
            except HalError:
                dispose(found.dev)
                raise
            entry = _OPEN[key] = _Entry(board, 0)
        else:
            dispose(found.dev)
        entry.users += 1
        board = entry.board
    return RelayChannel(board, channel, release=_releaser(key, board), name=name, off_s=off_s)


def _releaser(key: tuple[object, object], board: HidBoard) -> Callable[[], None]:
    def release() -> None:
        with _OPEN_LOCK:
            entry = _OPEN.get(key)
            if entry is None or entry.board is not board:
                return
            entry.users -= 1
            if entry.users > 0:
                return
            del _OPEN[key]
        board.close()

    return release
