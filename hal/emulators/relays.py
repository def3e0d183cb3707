"""Byte-exact twins of the USB-serial relay boards, for tests and demos without hardware.

Each ``*Model`` is a sans-IO board: a relay register plus ``feed(bytes) -> reply bytes``, speaking exactly
what the real board speaks (and ignoring what it ignores). :class:`PtyEmulator` runs a model on the master end
of a pty in a thread, so the real driver opens the slave path with pyserial exactly as it would open
/dev/ttyACM0. ``unplug()`` closes the master (the driver then sees an I/O error, as when a USB cable is
pulled); ``muted`` makes the board swallow requests silently; ``reply_filter`` corrupts replies for negative
tests.
"""

from __future__ import annotations

import os
import pty
import select
import threading
import time
import tty
from collections.abc import Callable
from types import TracebackType
from typing import ClassVar, Literal, Protocol

from hal.power.numato import relay_index


class BoardModel(Protocol):
    relays: list[bool]

    def feed(self, data: bytes) -> bytes: ...


class LcusModel:
    """LCUS-N: ``A0 ch op sum`` frames (bad checksum/channel: ignored); ``FF`` → status if multi-channel.

    ``status_form`` picks the firmware: ``"lines"`` answers ``CH1: ON \\r\\n`` / ``CH2: OFF\\r\\n``,
    ``"bytes"`` one 00/01 byte per channel.
    """

    def __init__(self, channels: int, status_form: Literal["lines", "bytes"] = "lines") -> None:
        self.channels, self.status_form = channels, status_form
        self.relays = [False] * channels
        self._buf = b""

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = b""
        while self._buf:
            if self._buf[0] == 0xFF:
                self._buf = self._buf[1:]
                out += self.status() if self.channels > 1 else b""
            elif self._buf[0] == 0xA0:
                if len(self._buf) < 4:
                    break
                _, ch, op, total = self._buf[:4]
                self._buf = self._buf[4:]
                if 1 <= ch <= self.channels and op in (0, 1) and total == (0xA0 + ch + op) & 0xFF:
                    self.relays[ch - 1] = op == 1
            else:
                self._buf = self._buf[1:]
        return out

    def status(self) -> bytes:
        if self.status_form == "bytes":
            return bytes(int(on) for on in self.relays)
        return b"".join(
            f"CH{n}: {'ON ' if on else 'OFF'}\r\n".encode() for n, on in enumerate(self.relays, 1)
        )


class KmtronicModel:
    """KMTronic: ``FF ch 00/01`` switch; ``FF ch 03`` → ``FF ch xx`` (1/2 relays); ``FF 09 00`` → bytes."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.relays = [False] * channels
        self._buf = b""

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = b""
        while self._buf:
            if self._buf[0] != 0xFF:
                self._buf = self._buf[1:]
                continue
            if len(self._buf) < 3:
                break
            _, ch, op = self._buf[:3]
            self._buf = self._buf[3:]
            if 1 <= ch <= self.channels and op in (0, 1):
                self.relays[ch - 1] = op == 1
            elif 1 <= ch <= self.channels and op == 3 and self.channels <= 2:
                out += bytes((0xFF, ch, int(self.relays[ch - 1])))
            elif (ch, op) == (9, 0) and self.channels >= 4:
                out += bytes(int(on) for on in self.relays)
        return out


class NumatoModel:
    """Numato console: echoes what is typed; on CR answers ``\\n\\r`` [reply ``\\n\\r``] ``>``."""

    def __init__(self, channels: int, version: str = "00000008", ident: str = "00000000") -> None:
        self.channels, self.version, self.ident = channels, version, ident
        self.relays = [False] * channels
        self._line = b""
        self._names = {relay_index(ch, channels).upper(): ch for ch in range(1, channels + 1)}

    def feed(self, data: bytes) -> bytes:
        out = b""
        for byte in data:
            if byte == 0x0D:
                reply = self.execute(self._line.decode("ascii", "replace").strip())
                out += b"\n\r" + (reply.encode() + b"\n\r" if reply else b"") + b">"
                self._line = b""
            elif byte != 0x0A and len(self._line) < 64:
                self._line += bytes((byte,))
                out += bytes((byte,))
        return out

    def execute(self, command: str) -> str:
        words = command.split()
        digits = max(2, self.channels // 4)
        if words == ["ver"]:
            return self.version
        if words == ["id", "get"]:
            return self.ident
        if words == ["relay", "readall"]:
            return f"{self.mask():0{digits}X}"
        if len(words) == 3 and words[:2] == ["relay", "writeall"]:
            self.write_mask(words[2])
            return ""
        if len(words) != 3 or words[0] != "relay" or words[2].upper() not in self._names:
            return ""
        ch = self._names[words[2].upper()]
        if words[1] in ("on", "off"):
            self.relays[ch - 1] = words[1] == "on"
        elif words[1] == "read":
            return "on" if self.relays[ch - 1] else "off"
        return ""

    def mask(self) -> int:
        return sum(1 << i for i, on in enumerate(self.relays) if on)

    def write_mask(self, text: str) -> None:
        try:
            mask = int(text, 16)
        except ValueError:
            return
        self.relays = [bool(mask >> i & 1) for i in range(self.channels)]


class DevantechModel:
    """USB-RLY02/08: single-byte commands; ``5B`` → bitmask, ``5A`` → module id + firmware, ``5C m`` → set."""

    MODULE_IDS: ClassVar[dict[int, int]] = {2: 10, 8: 8}

    def __init__(self, channels: int, firmware: int = 3) -> None:
        self.channels, self.firmware = channels, firmware
        self.relays = [False] * channels
        self._set_all_next = False

    def feed(self, data: bytes) -> bytes:
        out = b""
        for byte in data:
            if self._set_all_next:
                self._set_all_next = False
                self.relays = [bool(byte >> i & 1) for i in range(self.channels)]
            elif byte == 0x5A:
                out += bytes((self.MODULE_IDS.get(self.channels, 0), self.firmware))
            elif byte == 0x5B:
                out += bytes((sum(1 << i for i, on in enumerate(self.relays) if on),))
            elif byte == 0x5C:
                self._set_all_next = True
            elif byte in (0x64, 0x6E):
                self.relays = [byte == 0x64] * self.channels
            elif 0x65 <= byte < 0x65 + self.channels:
                self.relays[byte - 0x65] = True
            elif 0x6F <= byte < 0x6F + self.channels:
                self.relays[byte - 0x6F] = False
        return out


class PtyEmulator:
    """Runs a board model on the master end of a pty; the driver opens :attr:`port`, the slave."""

    def __init__(self, model: BoardModel, *, poll_s: float = 0.01) -> None:
        self.model = model
        self.muted = False
        self.reply_filter: Callable[[bytes], bytes] | None = None
        self.received = bytearray()
        self.lock = threading.Lock()
        self._poll_s = poll_s
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)  # no echo, no CR/LF translation before the driver configures the port
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"relay emulator {self.port}", daemon=True)
        self._closed = False

    def start(self) -> PtyEmulator:
        self._thread.start()
        return self

    def __enter__(self) -> PtyEmulator:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def relays(self) -> list[bool]:
        with self.lock:
            return list(self.model.relays)

    def wait_for(self, predicate: Callable[[list[bool]], bool], timeout: float = 1.0) -> bool:
        """Poll the register (no-ack boards: the bytes may still be in flight when the driver returns)."""
        deadline = time.monotonic() + timeout
        while not predicate(self.relays()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(self._poll_s)
        return True

    def unplug(self) -> None:
        """The board vanishes: the master end closes, so the driver's reads and writes fail."""
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
        if not self._closed:
            self._closed = True
            os.close(self._master)
            os.close(self._slave)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], self._poll_s)
                if not ready:
                    continue
                data = os.read(self._master, 1024)
            except (OSError, ValueError):
                return
            with self.lock:
                self.received += data
                reply = self.model.feed(data)
                if self.reply_filter is not None:
                    reply = self.reply_filter(reply)
                if self.muted:
                    reply = b""
            if reply:
                try:
                    os.write(self._master, reply)
                except OSError:
                    return
