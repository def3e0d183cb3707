"""SIP messages (RFC 3261) for stage REGISTER, both sides: the agent's REGISTERs and the registrar's answers
(protocol.md §8).

Sans-IO: bytes in, :class:`SipMessage` out, and back; :class:`SipStreamParser` frames messages on the TLS
stream by Content-Length. Parsing is strict where a mistake would desynchronise the stream or let a peer make
us buffer without bound (Content-Length, size limits, header syntax) and lenient where real peers differ
harmlessly (LF-only lines, obsolete folding, keep-alive CRLFs). Values stay text; the grammar inside values
(name-addr, CSeq, Expires, auth headers, ms-diagnostics) is :mod:`agent.wire.sipauth`; all but the auth
ones are re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from agent.stages import WireError
from agent.wire.sipauth import (
    NameAddr,
    cseq,
    expires,
    format_name_addr,
    has_control,
    is_token,
    is_uri,
    parse_name_addr,
    sip_error,
    snip,
    split_list,
)

__all__ = [
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "MAX_BODY_BYTES",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "NameAddr",
    "SipMessage",
    "SipStreamParser",
    "build_request",
    "build_response",
    "canonical_name",
    "cseq",
    "decode",
    "encode",
    "expires",
    "format_name_addr",
    "parse_name_addr",
]

MAX_HEAD_BYTES = 16 * 1024  # start line + headers + the empty line
MAX_BODY_BYTES = 64 * 1024
MAX_HEADERS = 100
SIP_VERSION = "SIP/2.0"

#: RFC 3261 §7.3.3 compact forms → canonical (lower-case) names.
COMPACT_FORMS = {
    "c": "content-type",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "s": "subject",
    "t": "to",
    "v": "via",
}
#: Headers whose grammar is a comma-separated list (RFC 3261 §25.1), so one line may carry several values.
#: Auth headers are absent on purpose: their *parameters* are comma-separated.
# fmt: off
LIST_HEADERS = frozenset({
    "accept", "accept-encoding", "accept-language", "alert-info", "allow", "allow-events", "call-info",
    "contact", "content-encoding", "content-language", "error-info", "in-reply-to", "p-asserted-identity",
    "p-preferred-identity", "proxy-require", "record-route", "require", "route", "supported", "unsupported",
    "via", "warning",
})
# fmt: on
_DIGITS_RE = re.compile(r"[0-9]{1,10}")
_STATUS_RE = re.compile(r"[1-6][0-9][0-9]")
_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
_WS = " \t"


def canonical_name(name: str) -> str:
    """Lower-case header name with compact forms expanded, for case-insensitive comparison."""
    lower = name.lower()
    return COMPACT_FORMS.get(lower, lower)


# --- messages -------------------------------------------------------------------------------------------


def _check_header(name: str, value: str) -> None:
    if not is_token(name):
        raise ValueError(f"SIP header name {snip(name)} is not a token")
    if has_control(value) or value != value.strip(_WS):
        raise ValueError(f"SIP header {name} value {snip(value)} has a control character or edge blanks")


@dataclass(frozen=True)
class SipMessage:
    """One SIP message: a request (``method``, ``uri``) or a response (``status``, ``reason``).

    ``headers`` are in wire order with names as received; values are unfolded and trimmed, which is all the
    wire keeps (RFC 3261 §7.3.1), so :func:`decode` ∘ :func:`encode` is the identity up to Content-Length.
    Invalid field values raise ValueError: they are a caller's bug, never a peer's.
    """

    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", tuple((n, v) for n, v in self.headers))
        object.__setattr__(self, "body", bytes(self.body))
        if self.method is not None:
            if self.status is not None or self.reason:
                raise ValueError("a SIP request has no status or reason")
            if not is_token(self.method):
                raise ValueError(f"SIP method {snip(self.method)} is not a token")
            if not is_uri(self.uri or ""):
                raise ValueError(f"SIP request URI {snip(self.uri or '')} is empty or has blanks")
        elif self.status is None or self.uri is not None:
            raise ValueError("a SIP message is a request (method, uri) or a response (status, reason)")
        elif isinstance(self.status, bool) or not 100 <= self.status <= 699:
            raise ValueError(f"SIP status {self.status} is not in 100..699")
        elif has_control(self.reason):
            raise ValueError(f"SIP reason phrase {snip(self.reason)} has a control character")
        for name, value in self.headers:
            _check_header(name, value)
        if len(self.body) > MAX_BODY_BYTES:
            raise ValueError(f"SIP body of {len(self.body)} bytes is over {MAX_BODY_BYTES}")

    @property
    def is_request(self) -> bool:
        return self.method is not None

    @property
    def start_line(self) -> str:
        if self.method is not None:
            return f"{self.method} {self.uri} {SIP_VERSION}"
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def header(self, name: str) -> str | None:
        """First value of ``name`` (case-insensitive, compact forms too): for :data:`LIST_HEADERS` the first
        list item (the topmost Via), else the first line's value; None when absent."""
        values = self.header_values(name)
        if values:
            return values[0]
        key = canonical_name(name)
        return "" if any(canonical_name(n) == key for n, _ in self.headers) else None

    def header_values(self, name: str) -> list[str]:
        """All values of ``name``: repeated lines, and for :data:`LIST_HEADERS` each comma-separated item."""
        key = canonical_name(name)
        lines = [v for n, v in self.headers if canonical_name(n) == key]
        if key not in LIST_HEADERS:
            return lines
        return [item for line in lines for item in split_list(line)]

    def with_header(self, name: str, value: str) -> SipMessage:
        """A copy with one more header line at the end."""
        return replace(self, headers=(*self.headers, (name, value)))

    def replace_header(self, name: str, value: str) -> SipMessage:
        """A copy where the first ``name`` line becomes ``name: value`` and later ones are dropped;
        appended when absent."""
        key, out, done = canonical_name(name), [], False
        for n, v in self.headers:
            if canonical_name(n) != key:
                out.append((n, v))
            elif not done:
                out.append((name, value))
                done = True
        if not done:
            out.append((name, value))
        return replace(self, headers=tuple(out))

    def without_header(self, name: str) -> SipMessage:
        key = canonical_name(name)
        return replace(self, headers=tuple((n, v) for n, v in self.headers if canonical_name(n) != key))


def encode(msg: SipMessage) -> bytes:
    """Wire bytes with CRLF line ends; Content-Length always set to the body's length (in place if given)."""
    msg = msg.replace_header("Content-Length", str(len(msg.body)))
    lines = [msg.start_line, *(f"{n}: {v}" if v else f"{n}:" for n, v in msg.headers), "", ""]
    return "\r\n".join(lines).encode("utf-8") + msg.body


# --- decoding -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Head:
    method: str | None
    uri: str | None
    status: int | None
    reason: str
    headers: tuple[tuple[str, str], ...]


def _parse_start_line(line: str) -> tuple[str | None, str | None, int | None, str]:
    if line[:4].upper() == "SIP/":
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if version.upper() != SIP_VERSION:
            raise sip_error(f"unsupported SIP version {snip(version)}")
        if not _STATUS_RE.fullmatch(code):
            raise sip_error(f"bad SIP status code {snip(code)}")
        if has_control(reason):
            raise sip_error(f"SIP reason phrase has a control character: {snip(reason)}")
        return None, None, int(code), reason
    parts = line.split(" ")
    if len(parts) != 3 or parts[2].upper() != SIP_VERSION:
        raise sip_error(f"bad SIP start line {snip(line)}")
    method, uri, _ = parts
    if not is_token(method) or not is_uri(uri):
        raise sip_error(f"bad SIP request line {snip(line)}")
    return method, uri, None, ""


def _parse_head(head: bytes) -> _Head:
    """Start line and header fields of a header section (without its empty line)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise sip_error(f"SIP header section is not UTF-8 (byte {exc.start})") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    start = _parse_start_line(lines[0])
    fields: list[list[str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):  # obsolete line folding (RFC 3261 §7.3.1)
            if not fields:
                raise sip_error("SIP continuation line before the first header")
            fields[-1][1] = f"{fields[-1][1]} {line.strip(_WS)}".strip(_WS)
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(_WS)
        if not colon or not is_token(name):
            raise sip_error(f"bad SIP header line {snip(line)}")
        fields.append([name, value.strip(_WS)])
        if len(fields) > MAX_HEADERS:
            raise sip_error(f"SIP message has more than {MAX_HEADERS} headers")
    for name, value in fields:
        if has_control(value):
            raise sip_error(f"SIP header {name} has a control character: {snip(value)}")
    return _Head(*start, headers=tuple((n, v) for n, v in fields))


def _content_length(headers: Sequence[tuple[str, str]]) -> int | None:
    values = {v for n, v in headers if canonical_name(n) == "content-length"}
    for value in values:
        if not _DIGITS_RE.fullmatch(value):
            raise sip_error(f"bad Content-Length {snip(value)}")
    lengths = {int(v) for v in values}
    if len(lengths) > 1:
        raise sip_error(f"conflicting Content-Length values {sorted(lengths)}")
    length = lengths.pop() if lengths else None
    if length is not None and length > MAX_BODY_BYTES:
        raise sip_error(f"SIP body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
    return length


def _message(head: _Head, body: bytes) -> SipMessage:
    try:
        return SipMessage(head.method, head.uri, head.status, head.reason, head.headers, body)
    except ValueError as exc:  # decode checks the same rules; this only guards against drift
        raise sip_error(str(exc)) from None


def _skip_crlf(data: bytes | bytearray) -> int:
    i = 0
    while i < len(data) and data[i] in b"\r\n":
        i += 1
    return i


def _head_too_big(size: int) -> WireError:
    return sip_error(f"SIP header section is over {MAX_HEAD_BYTES} bytes ({size} without an end)")


def decode(data: bytes) -> SipMessage:
    """Exactly one complete message. Without Content-Length the body must be empty (we only speak TLS)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise sip_error(f"SIP message must be bytes, got {type(data).__name__}")
    data = bytes(data)
    start = _skip_crlf(data)  # RFC 3261 §7.5: CRLFs before the start line are ignored
    if start == len(data):
        raise sip_error("SIP message is empty")
    end = _HEAD_END_RE.search(data, start)
    if end is None:
        if len(data) - start > MAX_HEAD_BYTES:
            raise _head_too_big(len(data) - start)
        raise sip_error("SIP message has no empty line after its headers")
    if end.end() - start > MAX_HEAD_BYTES:
        raise _head_too_big(end.end() - start)
    head = _parse_head(data[start : end.start()])
    length = _content_length(head.headers)
    body = data[end.end() :]
    if length is None and body:
        raise sip_error(f"SIP message has a {len(body)}-byte body but no Content-Length")
    if length is not None and len(body) != length:
        raise sip_error(f"SIP Content-Length is {length} but the body has {len(body)} bytes")
    return _message(head, body)


class SipStreamParser:
    """Frames SIP messages on a stream (RFC 3261 §18.3): Content-Length is required, CRLF keep-alives
    (RFC 5626 §3.5.1) between messages are skipped, partial data is kept.

    Limits hold while data is incomplete, so the buffer never grows past one header section or one body
    plus one chunk. After a WireError the stream is out of sync: the parser stays dead and re-raises it.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already searched for the end of the header section
        self._pending: tuple[int, _Head, int] | None = None  # head end, head, Content-Length
        self._error: WireError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[SipMessage]:
        """Add received bytes; return the messages they complete, in order."""
        if self._error is not None:
            raise self._error
        self._buf += data
        messages = []
        try:
            while (msg := self._next()) is not None:
                messages.append(msg)
        except WireError as exc:
            self._error = exc
            self._buf = bytearray()
            raise
        return messages

    def _next(self) -> SipMessage | None:
        buf = self._buf
        if self._pending is None:
            skip = _skip_crlf(buf)
            del buf[:skip]
            self._scanned = max(0, self._scanned - skip)
            if not buf:
                return None
            end = _HEAD_END_RE.search(buf, max(0, self._scanned - 3))
            if end is None:
                if len(buf) > MAX_HEAD_BYTES:
                    raise _head_too_big(len(buf))
                self._scanned = len(buf)
                return None
            if end.end() > MAX_HEAD_BYTES:
                raise _head_too_big(end.end())
            head = _parse_head(bytes(buf[: end.start()]))
            length = _content_length(head.headers)
            if length is None:
                raise sip_error("SIP message on a stream has no Content-Length")
            self._pending = (end.end(), head, length)
        head_end, head, length = self._pending
        if len(buf) < head_end + length:
            return None
        body = bytes(buf[head_end : head_end + length])
        del buf[: head_end + length]
        self._pending, self._scanned = None, 0
        return _message(head, body)


# --- builders -------------------------------------------------------------------------------------------


def build_request(method: str, uri: str, headers: Sequence[tuple[str, str]], body: bytes = b"") -> SipMessage:
    """A request with ``headers`` in the given order and a Content-Length matching ``body``."""
    msg = SipMessage(method=method, uri=uri, headers=tuple(headers), body=body)
    return msg.replace_header("Content-Length", str(len(body)))


def build_response(
    request: SipMessage,
    status: int,
    reason: str,
    extra_headers: Sequence[tuple[str, str]] = (),
    to_tag: str | None = None,
    body: bytes = b"",
) -> SipMessage:
    """A response per RFC 3261 §8.2.6.2: every Via in order, From, To (plus ``;tag=`` if given and absent),
    Call-ID and CSeq copied from ``request``, then ``extra_headers`` and Content-Length."""
    if not request.is_request:
        raise ValueError("build_response needs a request")
    if to_tag is not None and not is_token(to_tag):
        raise ValueError(f"To tag {snip(to_tag)} is not a token")
    vias = [("Via", v) for n, v in request.headers if canonical_name(n) == "via"]
    if not vias:
        raise sip_error("SIP request has no Via")
    copied = []
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = request.header(name)
        if value is None:
            raise sip_error(f"SIP request has no {name}")
        if name == "To" and to_tag is not None and parse_name_addr(value).tag is None:
            value = f"{value};tag={to_tag}"
        copied.append((name, value))
    msg = SipMessage(status=status, reason=reason, headers=(*vias, *copied, *extra_headers), body=body)
    return msg.replace_header("Content-Length", str(len(body)))
