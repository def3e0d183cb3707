"""Byte transports for the tether: a serial port (pyserial, path or URL), a raw fd (a pty master) and an
in-memory pair, all with one contract so a conformance test can hold each to it.

Contract (:class:`Link`): ``send`` writes every byte or raises; ``recv(max_bytes, timeout_s)`` returns what
arrived (at least one byte), or ``b""`` when nothing came within the timeout; once either end is closed
``recv`` raises :class:`LinkClosed` (after bytes already delivered to this end), and so does ``send`` on an
end closed locally. What the peer had sent but this end had not yet received when the link went down may be
lost, exactly as on a pulled USB cable.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
import tty
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import serial

from hal.errors import FrameError, HalError
from hal.tether.framing import (
    Ack,
    Csr,
    ErrorMsg,
    FrameDecoder,
    Hello,
    Message,
    decode_message,
    encode_message,
)

M = TypeVar("M", Hello, Csr, Ack)
LOST_REMEDY = "Check the USB cable and that the phone's tether service is running, then retry."


class LinkClosed(HalError):
    """The other end went away (cable pulled, port closed) or this end was closed."""

    def __init__(self, device: str, detail: str) -> None:
        super().__init__(device, "LINK_LOST", detail, LOST_REMEDY)


class Link(Protocol):
    name: str

    def send(self, data: bytes) -> None: ...

    def recv(self, max_bytes: int, timeout_s: float) -> bytes: ...

    def close(self) -> None: ...


class SerialLink:
    """A pyserial port: ``/dev/ttyACM0`` on the PC, ``/dev/ttyGS0`` on the phone, or any pyserial URL."""

    def __init__(self, port: Any, name: str | None = None, write_timeout_s: float = 5.0) -> None:
        self._port = port
        self.name = name or str(port.name or port.port)
        self._port.write_timeout = write_timeout_s

    @classmethod
    def open(cls, path_or_url: str, baudrate: int = 115200, write_timeout_s: float = 5.0) -> SerialLink:
        """Open exclusively (flock), so a second tool on the same port fails instead of stealing bytes."""
        try:
            port = serial.serial_for_url(path_or_url, baudrate=baudrate, timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            number = getattr(
                exc, "errno", None
            )  # pyserial wraps the OSError's text twice over; keep its errno
            why = os.strerror(number) if isinstance(number, int) else _why(exc)
            raise HalError(path_or_url, "NO_PORT", f"cannot open: {why}") from None
        return cls(port, path_or_url, write_timeout_s)

    def send(self, data: bytes) -> None:
        try:
            self._port.write(data)
        except serial.SerialTimeoutException:
            raise HalError(self.name, "TIMEOUT", "the peer stopped reading (write timed out)") from None
        except (serial.SerialException, OSError) as exc:
            raise LinkClosed(self.name, f"write failed: {_why(exc)}") from None

    def recv(self, max_bytes: int, timeout_s: float) -> bytes:
        """One blocking byte (up to the timeout), then whatever else is already waiting."""
        try:
            self._port.timeout = max(timeout_s, 0.0)
            first = bytes(self._port.read(1))
            if not first:
                return b""
            waiting = int(self._port.in_waiting)
            rest = bytes(self._port.read(min(waiting, max_bytes - 1))) if waiting and max_bytes > 1 else b""
        except (serial.SerialException, OSError) as exc:
            raise LinkClosed(self.name, f"read failed: {_why(exc)}") from None
        return first + rest

    def close(self) -> None:
        self._port.close()


class FdLink:
    """A raw file descriptor, e.g. the master side of a pty standing in for the USB gadget."""

    def __init__(self, fd: int, name: str, write_timeout_s: float = 5.0) -> None:
        self._fd: int | None = fd
        self.name = name
        self.write_timeout_s = write_timeout_s

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + self.write_timeout_s
        while view:
            fd = self._open_fd()
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise HalError(self.name, "TIMEOUT", "the peer stopped reading (write timed out)")
            try:
                view = view[os.write(fd, view) :]
            except OSError as exc:
                raise LinkClosed(self.name, f"write failed: {exc.strerror}") from None

    def recv(self, max_bytes: int, timeout_s: float) -> bytes:
        fd = self._open_fd()
        if not select.select([fd], [], [], max(timeout_s, 0.0))[0]:
            return b""
        try:
            data = os.read(fd, max_bytes)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return b""
            raise LinkClosed(self.name, f"the peer hung up ({exc.strerror})") from None
        if not data:
            raise LinkClosed(self.name, "the peer hung up (end of file)")
        return data

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _open_fd(self) -> int:
        if self._fd is None:
            raise LinkClosed(self.name, "this end is closed")
        return self._fd


def pty_pair(write_timeout_s: float = 5.0) -> tuple[FdLink, SerialLink]:
    """(pty master as an FdLink, the slave opened with pyserial like a real ttyACM): a cable in a box.

    The slave is raw before anything is written, so no byte is echoed or translated."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        host = SerialLink.open(os.ttyname(slave), write_timeout_s=write_timeout_s)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # the pyserial fd keeps the slave open; closing it is then a hang-up
    return FdLink(master, f"pty-master:{host.name}", write_timeout_s), host


class _Shared:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.closed = False


class MemoryLink:
    """One end of an in-memory cable (:func:`memory_pair`); blocks like a port, never sleeps needlessly."""

    def __init__(self, name: str, shared: _Shared) -> None:
        self.name = name
        self._shared = shared
        self._inbox = bytearray()
        self._closed_here = False
        self.peer: MemoryLink | None = None

    def send(self, data: bytes) -> None:
        with self._shared.cond:
            if self._shared.closed or self.peer is None:
                raise LinkClosed(self.name, "the link is closed")
            self.peer._inbox += data
            self._shared.cond.notify_all()

    def recv(self, max_bytes: int, timeout_s: float) -> bytes:
        with self._shared.cond:
            if self._closed_here:
                raise LinkClosed(self.name, "this end is closed")
            self._shared.cond.wait_for(lambda: self._inbox or self._shared.closed, max(timeout_s, 0.0))
            if self._inbox:
                data = bytes(self._inbox[:max_bytes])
                del self._inbox[:max_bytes]
                return data
            if self._shared.closed:
                raise LinkClosed(self.name, "the peer hung up")
            return b""

    def close(self) -> None:
        with self._shared.cond:
            self._closed_here = self._shared.closed = True
            self._shared.cond.notify_all()


def memory_pair(a: str = "memory-a", b: str = "memory-b") -> tuple[MemoryLink, MemoryLink]:
    shared = _Shared()
    first, second = MemoryLink(a, shared), MemoryLink(b, shared)
    first.peer, second.peer = second, first
    return first, second


def _why(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class Refused(HalError):
    """The peer answered a request with ERROR; ``peer_code`` is its code (FRAME, BadCertificate, ...)."""

    def __init__(self, device: str, request: str, error: ErrorMsg) -> None:
        super().__init__(device, "REFUSED", f"the peer refused {request}: {error.reason} ({error.code})")
        self.peer_code = error.code


class Requester:
    """Request/response over a link with one deadline per request. A damaged frame either way (the peer's
    ERROR FRAME, or a refused frame here) gets the request sent once more; answers of another type are
    late duplicates of earlier ones and are skipped.

    Raises :class:`LinkClosed`, HalError "TIMEOUT" (no answer), "DAMAGED" (damaged again), FrameError
    (a malformed answer) or :class:`Refused`."""

    def __init__(self, link: Link, timeout_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.link, self.timeout_s, self.monotonic = link, timeout_s, monotonic
        self.decoder = FrameDecoder(link.name)

    def send(self, msg: Message) -> None:
        try:
            self.link.send(encode_message(msg))
        except LinkClosed as exc:
            raise LinkClosed(self.link.name, f"lost while sending {msg.TYPE.name}: {exc.detail}") from None

    def request(self, msg: Message, want: type[M], timeout_s: float | None = None) -> M:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        self.send(msg)
        resends, skipped = 1, list[str]()
        deadline = self.monotonic() + timeout_s
        while True:
            left = deadline - self.monotonic()
            if left <= 0:
                extra = f" (skipped: {', '.join(skipped)})" if skipped else ""
                detail = f"no {want.TYPE.name} answered {msg.TYPE.name} within {timeout_s:g} s{extra}"
                raise HalError(self.link.name, "TIMEOUT", detail)
            try:
                data = self.link.recv(4096, min(left, 0.5))
            except LinkClosed as exc:
                raise LinkClosed(self.link.name, f"lost waiting for {want.TYPE.name}: {exc.detail}") from None
            for event in self.decoder.events(data):
                reply = (
                    ErrorMsg("FRAME", event.detail)
                    if isinstance(event, FrameError)
                    else decode_message(event, self.link.name)
                )
                if isinstance(reply, want):
                    return reply
                if isinstance(reply, ErrorMsg) and reply.code == "FRAME":
                    if not resends:
                        detail = f"{msg.TYPE.name} damaged twice: {reply.reason}"
                        raise HalError(self.link.name, "DAMAGED", detail)
                    resends -= 1
                    self.send(msg)
                    deadline = self.monotonic() + timeout_s
                elif isinstance(reply, ErrorMsg):
                    raise Refused(self.link.name, msg.TYPE.name, reply)
                else:
                    skipped.append(reply.TYPE.name)
