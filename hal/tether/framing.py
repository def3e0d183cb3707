"""The tether's wire format (sans-IO): frames and the six typed messages that travel in them.

A frame is ``magic(2) version(1) type(1) length(4, big-endian) payload CRC-32(4, big-endian)``; the CRC
covers header and payload. A serial line has no packet boundaries and may carry noise (a ModemManager AT
probe, a half-written frame from a pulled cable), so :class:`FrameDecoder` resynchronises on the magic,
refuses an oversized length as soon as the header arrives (it never buffers more than one capped frame),
and refuses a bad CRC; every refusal is a one-line :class:`~hal.errors.FrameError`.

Messages are frozen dataclasses with ``to_payload``/``from_payload``; :func:`decode_message` turns a frame
into one. Nothing here touches a port, a file or the clock (the h11 model: bytes in, events out).
"""

from __future__ import annotations

import enum
import re
import struct
import zlib
from dataclasses import dataclass
from typing import ClassVar

from hal.errors import FrameError

MAGIC = b"\xa5\x5a"
FRAME_VERSION = 1
PROTOCOL_VERSION = 1
MAX_PAYLOAD = 64 * 1024
HEADER = struct.Struct(">2sBBI")
CRC = struct.Struct(">I")
MAX_CERTS = 16
DEVICE = "tether"

_CODE = re.compile(r"[A-Za-z0-9_]{1,32}")
_THUMBPRINT = re.compile(r"[0-9A-F]{40}")


class MsgType(enum.IntEnum):
    HELLO = 1
    CSR_REQUEST = 2
    CSR = 3
    CERTIFICATE = 4
    ACK = 5
    ERROR = 6


@dataclass(frozen=True)
class Frame:
    type: int
    payload: bytes

    def encode(self) -> bytes:
        return encode_frame(self.type, self.payload)


def encode_frame(msg_type: int, payload: bytes) -> bytes:
    """One frame; a payload over :data:`MAX_PAYLOAD` is our own bug, hence ValueError."""
    if not 0 <= msg_type <= 0xFF or len(payload) > MAX_PAYLOAD:
        raise ValueError(f"cannot frame type {msg_type} with {len(payload)} bytes (cap {MAX_PAYLOAD})")
    body = HEADER.pack(MAGIC, FRAME_VERSION, msg_type, len(payload)) + payload
    return body + CRC.pack(zlib.crc32(body))


class FrameDecoder:
    """Streaming decoder: ``feed`` bytes as they arrive, get whole frames back.

    Bytes before a magic are noise and skipped (counted in :attr:`skipped`). A refused frame raises
    :class:`FrameError` once and is then gone: the decoder resumes one byte past its magic, so a damaged
    length cannot swallow the frames behind it. Frames decoded before a refused one are returned first and
    the refusal is raised by the next call (its bytes are still buffered); :meth:`events` does both at once.
    """

    def __init__(self, device: str = DEVICE, max_payload: int = MAX_PAYLOAD) -> None:
        self.device = device
        self.max_payload = max_payload
        self.skipped = 0
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def in_frame(self) -> bool:
        """True while part of a frame is buffered (a link lost now cuts a frame short)."""
        return self._buf.startswith(MAGIC)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            if not self._sync():
                return frames
            if len(self._buf) < HEADER.size:
                return frames
            _, version, msg_type, length = HEADER.unpack_from(self._buf)
            problem = self._header_problem(version, length)
            end = HEADER.size + length
            if problem is None and len(self._buf) < end + CRC.size:
                return frames
            if problem is None and CRC.unpack_from(self._buf, end)[0] != zlib.crc32(self._buf[:end]):
                problem = f"bad CRC on a {_type_name(msg_type)} frame of {length} bytes; dropped"
            if problem is not None:
                if frames:
                    return frames  # the refusal comes with the next call, after these frames
                del self._buf[:1]
                raise FrameError(self.device, problem)
            frames.append(Frame(msg_type, bytes(self._buf[HEADER.size : end])))
            del self._buf[: end + CRC.size]

    def events(self, data: bytes) -> list[Frame | FrameError]:
        """Everything ``data`` completes, in order: frames and refusals; never raises."""
        out: list[Frame | FrameError] = []
        while True:
            try:
                frames = self.feed(data)
            except FrameError as exc:
                out.append(exc)
                data = b""
                continue
            out.extend(frames)
            if not frames:
                return out
            data = b""

    def _sync(self) -> bool:
        """Drop noise up to the next magic; False when no (possible) magic is buffered."""
        start = self._buf.find(MAGIC)
        if start < 0:
            keep = 1 if self._buf.endswith(MAGIC[:1]) else 0
            self.skipped += len(self._buf) - keep
            del self._buf[: len(self._buf) - keep]
            return False
        self.skipped += start
        del self._buf[:start]
        return True

    def _header_problem(self, version: int, length: int) -> str | None:
        if version != FRAME_VERSION:
            return f"frame version {version} is not supported (this side speaks {FRAME_VERSION})"
        if length > self.max_payload:
            return f"frame of {length} bytes refused (cap {self.max_payload})"
        return None


def _type_name(msg_type: int) -> str:
    try:
        return MsgType(msg_type).name
    except ValueError:
        return f"type-{msg_type}"


# -- payload fields: bounded, and every shortfall is a FrameError --------------------------------------


class _Reader:
    def __init__(self, payload: bytes, what: str, device: str) -> None:
        self.data, self.pos, self.what, self.device = payload, 0, what, device

    def fail(self, detail: str) -> FrameError:
        return FrameError(self.device, f"{self.what}: {detail}")

    def take(self, n: int, field: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail(f"{field} needs {n} bytes, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def text(self, field: str, limit: int) -> str:
        raw = self.take(self.uint(2, field), field)
        if len(raw) > limit:
            raise self.fail(f"{field} is {len(raw)} bytes (at most {limit})")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{field} is not UTF-8") from None
        if not value.isprintable():
            raise self.fail(f"{field} holds control characters")
        return value

    def done(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} trailing bytes")


def _text(value: str, field: str, limit: int) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > limit or not value.isprintable():
        raise ValueError(f"{field} must be printable and at most {limit} bytes")
    return len(raw).to_bytes(2, "big") + raw


# -- messages ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Both ways: the PC opens with its protocol version (ids empty); the phone answers with its own, its
    device id ("{GUID}", what CertProv records) and its serial number (what the PC sees over USB)."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    protocol_version: int
    device_id: str = ""
    phone_serial: str = ""

    def to_payload(self) -> bytes:
        if not 0 <= self.protocol_version <= 0xFFFF:
            raise ValueError(f"protocol version {self.protocol_version} does not fit 16 bits")
        return (
            self.protocol_version.to_bytes(2, "big")
            + _text(self.device_id, "device id", 128)
            + _text(self.phone_serial, "phone serial", 128)
        )

    @classmethod
    def from_payload(cls, payload: bytes, device: str = DEVICE) -> Hello:
        r = _Reader(payload, "HELLO", device)
        msg = cls(r.uint(2, "version"), r.text("device id", 128), r.text("phone serial", 128))
        r.done()
        return msg


@dataclass(frozen=True)
class CsrRequest:
    """PC → phone: make a key and a CSR for this SIP URI."""

    TYPE: ClassVar[MsgType] = MsgType.CSR_REQUEST
    sip_uri: str

    def to_payload(self) -> bytes:
        return _text(self.sip_uri, "SIP URI", 256)

    @classmethod
    def from_payload(cls, payload: bytes, device: str = DEVICE) -> CsrRequest:
        r = _Reader(payload, "CSR_REQUEST", device)
        msg = cls(r.text("SIP URI", 256))
        r.done()
        return msg


@dataclass(frozen=True)
class Csr:
    """Phone → PC: the PKCS#10 (DER). The key it was made with stays on the phone."""

    TYPE: ClassVar[MsgType] = MsgType.CSR
    der: bytes

    def to_payload(self) -> bytes:
        if not self.der:
            raise ValueError("empty CSR")
        return self.der

    @classmethod
    def from_payload(cls, payload: bytes, device: str = DEVICE) -> Csr:
        if not payload:
            raise FrameError(device, "CSR: empty payload")
        return cls(payload)


@dataclass(frozen=True)
class IssuedCertificate:
    """PC → phone: the issued leaf and the intermediates up to the pool's root, DER each.

    Payload: count(1) then, per certificate, length(4) + DER; the leaf first."""

    TYPE: ClassVar[MsgType] = MsgType.CERTIFICATE
    leaf_der: bytes
    intermediates_der: tuple[bytes, ...] = ()

    def to_payload(self) -> bytes:
        certs = (self.leaf_der, *self.intermediates_der)
        if len(certs) > MAX_CERTS or not all(certs):
            raise ValueError(f"1..{MAX_CERTS} non-empty certificates, not {len(certs)}")
        return bytes([len(certs)]) + b"".join(len(c).to_bytes(4, "big") + c for c in certs)

    @classmethod
    def from_payload(cls, payload: bytes, device: str = DEVICE) -> IssuedCertificate:
        r = _Reader(payload, "CERTIFICATE", device)
        count = r.uint(1, "count")
        if not 1 <= count <= MAX_CERTS:
            raise r.fail(f"{count} certificates (1..{MAX_CERTS} allowed)")
        certs = []
        for index in range(count):
            size = r.uint(4, f"certificate {index} length")
            if size == 0:
                raise r.fail(f"certificate {index} is empty")
            certs.append(r.take(size, f"certificate {index}"))
        r.done()
        return cls(certs[0], tuple(certs[1:]))


@dataclass(frozen=True)
class Ack:
    """Phone → PC: installed; the SHA-1 thumbprint (upper-case hex) of the certificate now in use."""

    TYPE: ClassVar[MsgType] = MsgType.ACK
    thumbprint: str

    def to_payload(self) -> bytes:
        if not _THUMBPRINT.fullmatch(self.thumbprint):
            raise ValueError("a thumbprint is 40 upper-case hex digits")
        return _text(self.thumbprint, "thumbprint", 40)

    @classmethod
    def from_payload(cls, payload: bytes, device: str = DEVICE) -> Ack:
        r = _Reader(payload, "ACK", device)
        thumb = r.text("thumbprint", 40)
        r.done()
        if not _THUMBPRINT.fullmatch(thumb):
            raise r.fail("thumbprint is not 40 upper-case hex digits")
        return cls(thumb)


@dataclass(frozen=True)
class ErrorMsg:
    """Either way: a refusal or an abort. ``code`` is a symbol (FRAME, STATE, BadCertificate, ...),
    ``reason`` one line for a person."""

    TYPE: ClassVar[MsgType] = MsgType.ERROR
    code: str
    reason: str

    def to_payload(self) -> bytes:
        if not _CODE.fullmatch(self.code):
            raise ValueError(f"error code {self.code!r} is not 1-32 of [A-Za-z0-9_]")
        flat = "".join(ch if ch.isprintable() else "?" for ch in " ".join(self.reason.split()))
        reason = flat.encode("utf-8")[:400].decode("utf-8", "ignore")
        return _text(self.code, "code", 32) + _text(reason, "reason", 400)

    @classmethod
    def from_payload(cls, payload: bytes, device: str = DEVICE) -> ErrorMsg:
        r = _Reader(payload, "ERROR", device)
        code, reason = r.text("code", 32), r.text("reason", 400)
        r.done()
        if not _CODE.fullmatch(code):
            raise r.fail("code is not 1-32 of [A-Za-z0-9_]")
        return cls(code, reason)


Message = Hello | CsrRequest | Csr | IssuedCertificate | Ack | ErrorMsg
_BY_TYPE: dict[int, type[Message]] = {
    cls.TYPE: cls for cls in (Hello, CsrRequest, Csr, IssuedCertificate, Ack, ErrorMsg)
}


def encode_message(msg: Message) -> bytes:
    """The whole frame for ``msg``."""
    return encode_frame(msg.TYPE, msg.to_payload())


def decode_message(frame: Frame, device: str = DEVICE) -> Message:
    """The typed message a frame carries; an unknown type or a malformed payload is a FrameError."""
    cls = _BY_TYPE.get(frame.type)
    if cls is None:
        raise FrameError(device, f"unknown message type {frame.type}")
    return cls.from_payload(frame.payload, device)
