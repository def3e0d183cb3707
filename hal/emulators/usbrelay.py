"""A fake pyusb backend holding dcttech "USBRelayN" HID boards, so the real pyusb driver runs without a bus.

The backend answers exactly what the driver and pyusb ask: enumeration, device descriptors, open/close,
kernel-driver detach, claim/release, string descriptors (GET_DESCRIPTOR) and the board's class requests:
SET_REPORT (feature) ``FF ch`` / ``FD ch`` (also ``FE`` all on, ``FC`` all off) and GET_REPORT (feature,
8 bytes: serial in bytes 0-4, relay bitmask in byte 7). Anything else stalls (EPIPE), as a real device would.
"""

from __future__ import annotations

import array
import errno
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import usb.backend  # type: ignore[import-untyped, unused-ignore]
import usb.core  # type: ignore[import-untyped, unused-ignore]

from hal.power.hidrelay import (
    FEATURE_REPORT_0,
    GET_REPORT,
    IN_CLASS_DEVICE,
    OUT_CLASS_DEVICE,
    PID,
    SET_REPORT,
    VID,
)

GET_DESCRIPTOR, STRING_DESCRIPTOR, STANDARD_IN = 0x06, 0x03, 0x80
LANGID_EN_US = 0x0409


class DcttechModel:
    """The board: a relay register, a 5-character serial and its feature report."""

    def __init__(self, serial: str = "PHNP1", channels: int = 2) -> None:
        self.serial, self.channels = serial, channels
        self.relays = [False] * channels

    @property
    def product(self) -> str:
        return f"USBRelay{self.channels}"

    def set_report(self, payload: bytes) -> None:
        if len(payload) < 2:
            return
        cmd, ch = payload[0], payload[1]
        if cmd in (0xFF, 0xFD) and 1 <= ch <= self.channels:
            self.relays[ch - 1] = cmd == 0xFF
        elif cmd in (0xFE, 0xFC):
            self.relays = [cmd == 0xFE] * self.channels

    def get_report(self) -> bytes:
        mask = sum(1 << i for i, on in enumerate(self.relays) if on)
        return self.serial.encode("ascii")[:5].ljust(5, b"\x00") + b"\x00\x00" + bytes((mask,))


@dataclass(eq=False)
class FakeUsbDevice:
    """One board on the fake bus; ``unplugged`` makes every request fail with ENODEV."""

    model: DcttechModel
    bus: int = 1
    address: int = 5
    port_numbers: tuple[int, ...] = (1, 2)
    kernel_driver: bool = True
    unplugged: bool = False
    claimed: set[int] = field(default_factory=set)
    strings: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.strings = {1: "www.dcttech.com", 2: self.model.product}


def _string_descriptor(text: str) -> bytes:
    body = text.encode("utf-16-le")
    return bytes((2 + len(body), STRING_DESCRIPTOR)) + body


def _fill(buffer: Any, payload: bytes) -> int:
    n = min(len(buffer), len(payload))
    buffer[:n] = array.array("B", payload[:n])
    return n


class FakeUsbRelayBackend(usb.backend.IBackend):  # type: ignore[misc, unused-ignore]
    """Pass as ``usb.core.find(backend=...)`` (or ``Seams(usb_backend=...)``)."""

    def __init__(self, *devices: FakeUsbDevice) -> None:
        self.devices = list(devices)

    def enumerate_devices(self) -> Iterator[FakeUsbDevice]:
        yield from (d for d in self.devices if not d.unplugged)

    def get_device_descriptor(self, dev: FakeUsbDevice) -> SimpleNamespace:
        return SimpleNamespace(
            bLength=18, bDescriptorType=1, bcdUSB=0x0110, bDeviceClass=0, bDeviceSubClass=0,
            bDeviceProtocol=0, bMaxPacketSize0=8, idVendor=VID, idProduct=PID, bcdDevice=0x0100,
            iManufacturer=1, iProduct=2, iSerialNumber=0, bNumConfigurations=1, address=dev.address,
            bus=dev.bus, port_number=dev.port_numbers[-1], port_numbers=dev.port_numbers, speed=1,
        )  # fmt: skip

    def get_parent(self, dev: FakeUsbDevice) -> None:
        return None

    def open_device(self, dev: FakeUsbDevice) -> FakeUsbDevice:
        self._present(dev)
        return dev

    def close_device(self, dev_handle: FakeUsbDevice) -> None:
        return None

    def get_configuration(self, dev_handle: FakeUsbDevice) -> int:
        return 1

    def set_configuration(self, dev_handle: FakeUsbDevice, config_value: int) -> None:
        self._present(dev_handle)

    def is_kernel_driver_active(self, dev_handle: FakeUsbDevice, intf: int) -> bool:
        self._present(dev_handle)
        return dev_handle.kernel_driver

    def detach_kernel_driver(self, dev_handle: FakeUsbDevice, intf: int) -> None:
        self._present(dev_handle)
        dev_handle.kernel_driver = False

    def attach_kernel_driver(self, dev_handle: FakeUsbDevice, intf: int) -> None:
        dev_handle.kernel_driver = True

    def claim_interface(self, dev_handle: FakeUsbDevice, intf: int) -> None:
        self._present(dev_handle)
        if dev_handle.kernel_driver or intf in dev_handle.claimed:
            raise usb.core.USBError("Resource busy", errno=errno.EBUSY)
        dev_handle.claimed.add(intf)

    def release_interface(self, dev_handle: FakeUsbDevice, intf: int) -> None:
        dev_handle.claimed.discard(intf)

    def ctrl_transfer(
        self, dev_handle: FakeUsbDevice, bmRequestType: int, bRequest: int, wValue: int, wIndex: int,
        data: Any, timeout: int,
    ) -> int:  # fmt: skip
        self._present(dev_handle)
        model = dev_handle.model
        if (bmRequestType, bRequest) == (STANDARD_IN, GET_DESCRIPTOR) and wValue >> 8 == STRING_DESCRIPTOR:
            index = wValue & 0xFF
            if index == 0:
                return _fill(data, bytes((4, STRING_DESCRIPTOR)) + LANGID_EN_US.to_bytes(2, "little"))
            if index in dev_handle.strings:
                return _fill(data, _string_descriptor(dev_handle.strings[index]))
        elif (bmRequestType, bRequest, wValue) == (IN_CLASS_DEVICE, GET_REPORT, FEATURE_REPORT_0):
            return _fill(data, model.get_report())
        elif (bmRequestType, bRequest, wValue) == (OUT_CLASS_DEVICE, SET_REPORT, FEATURE_REPORT_0):
            model.set_report(bytes(data))
            return len(data)
        raise usb.core.USBError("Pipe error", errno=errno.EPIPE)

    @staticmethod
    def _present(dev: FakeUsbDevice) -> None:
        if dev.unplugged:
            raise usb.core.USBError("No such device (it may have been disconnected)", errno=errno.ENODEV)
