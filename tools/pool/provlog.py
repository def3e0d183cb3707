"""Per-node logs an engineer collects from every server of the pool (nobody knows which one the phone hit).

``provisioning.log``: the CertProv/Web Ticket/registrar log, one line per request::

    2024-05-01T12:00:00.123Z node=fe1 user=alice@lab.test device={…} stage=CERT_PUBLISH result=ok code=-
        request=… ms=42 detail="published serial 4f…"

(one line; ``ms`` — the request's duration — is optional: lines written before it existed still parse).
Times are UTC. Fields that come from a client are percent-encoded and the free-text detail is a JSON string,
so no value can add a line or a field; an empty field is written ``-``. :func:`parse_line` reads a line back
into a :class:`ProvLine` (what ``phoneprov logs collect`` merges); observers of :class:`ProvisioningLog` get
exactly that parsed line, so metrics fed from them can never disagree with the file.

``requests.log``: an IIS-style (W3C extended) request log. Neither log ever contains a PIN, a key or a proof
key: only the fields above are written.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from tools.pool.errors import PoolError

_SAFE = "/.:@{}_-~,;()"
W3C_FIELDS = "date time s-ip cs-method cs-uri-stem s-port c-ip cs(User-Agent) sc-status time-taken x-detail"
MAX_LINE_CHARS = 64 * 1024
FIELDS = ("node", "user", "device", "stage", "result", "code", "request")
_TOKEN = r"[A-Za-z0-9%/.:@{}_\-~,;()]+"
_LINE = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d))"
    + "".join(rf" {name}=(?P<{name}>{_TOKEN})" for name in FIELDS)
    + r"(?: ms=(?P<ms>\d{1,10}))?"
    + r' detail=(?P<detail>"(?:[^"\\\x00-\x1f]|\\.)*")',
    re.ASCII,
)
log = logging.getLogger("phoneprov.pool.provlog")


class ProvLogError(PoolError):
    """A line that is not a provisioning-log line (truncated, foreign, corrupted)."""

    def __init__(self, detail: str) -> None:
        super().__init__("LOG_LINE", f"not a provisioning log line: {detail}")


@dataclass(frozen=True)
class ProvRecord:
    """What a service reports about one request; the log adds the time and the node."""

    user: str
    device: str
    stage: str
    result: str
    code: str
    request_id: str = "-"
    detail: str = ""
    duration_ms: int | None = None


@dataclass(frozen=True)
class ProvLine:
    """One provisioning-log line as read back: ``time`` is aware; text fields are decoded."""

    time: datetime
    node: str
    user: str
    device: str
    stage: str
    result: str
    code: str
    request: str
    detail: str
    duration_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of ``phoneprov logs collect --json``."""
        return {
            "time": iso_utc(self.time),
            "node": self.node,
            "user": self.user,
            "device": self.device,
            "stage": self.stage,
            "result": self.result,
            "code": self.code,
            "request": self.request,
            "ms": self.duration_ms,
            "detail": self.detail,
        }


def user_key(user: str) -> str:
    """How users compare in filters: case-insensitive, with or without ``sip:``."""
    text = user.strip()
    return (text[4:] if text[:4].lower() == "sip:" else text).lower()


def iso_utc(at: datetime) -> str:
    """Milliseconds, UTC, ``Z``: the log's time format (lines from every node sort as text and as time)."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _token(text: str) -> str:
    """A value that cannot break the line's fields: client-supplied text is percent-encoded, never trusted."""
    return quote(text, safe=_SAFE, errors="backslashreplace") or "-"


def _quoted(text: str) -> str:
    """Free text in double quotes with JSON escapes: no newline or quote in it can forge a line or a field."""
    return json.dumps(" ".join(text.split()), ensure_ascii=True)


def format_line(line: ProvLine) -> str:
    """The line as written (without the newline); :func:`parse_line` reads it back."""
    tokens = (line.node, line.user, line.device, line.stage, line.result, line.code, line.request)
    fields = " ".join(f"{name}={_token(value)}" for name, value in zip(FIELDS, tokens, strict=True))
    ms = "" if line.duration_ms is None else f" ms={line.duration_ms}"
    return f"{iso_utc(line.time)} {fields}{ms} detail={_quoted(line.detail)}"


def parse_line(raw: str | bytes) -> ProvLine:
    """A log line (with or without its newline) → :class:`ProvLine`; anything else → ProvLogError."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProvLogError("not UTF-8") from None
    text = raw[:-1] if raw.endswith("\n") else raw
    if len(text) > MAX_LINE_CHARS:
        raise ProvLogError(f"longer than {MAX_LINE_CHARS} characters")
    match = _LINE.fullmatch(text)
    if match is None:
        raise ProvLogError(_what_is_wrong(text))
    try:
        at = datetime.fromisoformat(match["time"])
        detail = json.loads(match["detail"])
        values = {name: unquote(match[name], errors="strict") for name in FIELDS}
    except (ValueError, UnicodeDecodeError):
        raise ProvLogError("a time, field or detail does not decode") from None
    ms = match["ms"]
    return ProvLine(at, **values, detail=detail, duration_ms=None if ms is None else int(ms))


def _what_is_wrong(text: str) -> str:
    """The first thing missing, for a one-line error that helps someone looking at a corrupted file."""
    if "\n" in text or "\r" in text:
        return "contains a line break"
    if not re.match(r"\d{4}-\d\d-\d\dT", text):
        return "no timestamp at the start"
    for name in (*FIELDS, "detail"):
        if f" {name}=" not in text:
            return f"no {name}= field"
    return "a field has characters the log never writes"


class _LineFile:
    """Appends whole lines under a lock; the file is opened per write so rotation by logrotate just works."""

    def __init__(self, path: Path, header: str | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if header and not path.exists():
            self._append(header)

    def _append(self, line: str) -> None:
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")


Observer = Callable[[ProvLine], None]


class ProvisioningLog(_LineFile):
    """The provisioning log of one node; :meth:`observe` feeds the same lines to metrics."""

    def __init__(
        self, path: Path, node: str, now: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        super().__init__(path)
        self.node, self.now = node, now
        self._observers: list[Observer] = []

    def observe(self, observer: Observer) -> None:
        """Call ``observer`` with every line written from now on (after it is in the file)."""
        self._observers.append(observer)

    def record(self, rec: ProvRecord) -> str:
        line = ProvLine(
            self.now(),
            self.node,
            rec.user,
            rec.device,
            rec.stage,
            rec.result,
            rec.code,
            rec.request_id,
            rec.detail,
            rec.duration_ms,
        )
        text = format_line(line)
        self._append(text)
        if self._observers:
            self._notify(parse_line(text))  # what any reader of the file sees, field for field
        return text

    def _notify(self, written: ProvLine) -> None:
        for observer in self._observers:
            try:
                observer(written)
            except Exception:  # a metrics bug must not fail the phone's request
                log.exception("provisioning log observer %r failed", observer)


class RequestLog(_LineFile):
    def __init__(self, path: Path, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        super().__init__(path, f"#Software: phoneprov pool\n#Version: 1.0\n#Fields: {W3C_FIELDS}")
        self.now = now

    def record(
        self,
        s_ip: str,
        method: str,
        path: str,
        port: int,
        c_ip: str,
        agent: str,
        status: int,
        ms: int,
        detail: str,
    ) -> None:
        now = self.now()
        agent = (
            quote(" ".join(agent.split()), safe=_SAFE + " ", errors="backslashreplace").replace(" ", "+")
            or "-"
        )  # IIS writes + for space
        self._append(
            f"{now:%Y-%m-%d} {now:%H:%M:%S} {_token(s_ip)} {_token(method)} {_token(path)} {port} "
            f"{_token(c_ip)} {agent} {status} {ms} {_quoted(detail)}"
        )

    def record_wsgi(
        self, environ: Mapping[str, Any], port: int, status: int, started: float, detail: str
    ) -> None:
        """One line for a WSGI request; ``started`` is its ``time.monotonic()`` at arrival."""
        self.record(
            str(environ.get("SERVER_NAME", "-")),
            str(environ.get("REQUEST_METHOD", "GET")),
            str(environ.get("PATH_INFO", "/")),
            port,
            str(environ.get("REMOTE_ADDR", "-")),
            str(environ.get("HTTP_USER_AGENT", "-")),
            status,
            int((time.monotonic() - started) * 1000),
            detail,
        )
