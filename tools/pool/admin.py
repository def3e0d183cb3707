"""The admin listener of a pool node: HTTPS on its own port (``[ports] admin``), the pool's web certificate.

``GET /metrics``: Prometheus text (or OpenMetrics, by ``Accept``), **unauthenticated**. The metrics name no
user or device (labels are node, stage, result, code), and a scraper given a token would hold the very
secret that opens the logs, which do name users and devices; so scraping needs no secret, reading logs does.

``GET /admin/logs/provisioning?since=ISO8601&user=sip:…``: the node's provisioning-log lines (current file
and logrotate's rotated ones, ``.gz`` included), as written, oldest first; ``Authorization: Bearer <token>``
required. ``since`` needs a UTC offset (``Z``); ``user`` matches case-insensitively, with or without
``sip:``. At most ``MAX_RESPONSE_BYTES`` of lines are returned — the newest; the number of older matching
lines left out is in ``X-Phoneprov-Omitted`` — so a huge log cannot exhaust the node's memory.
"""

from __future__ import annotations

import gzip
import hmac
import logging
import re
import secrets
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from io import BufferedReader
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from prometheus_client.exposition import choose_encoder

from agent.atomic import atomic_write
from tools.pool.errors import ConfigError, PoolError
from tools.pool.metrics import PoolMetrics
from tools.pool.provlog import MAX_LINE_CHARS, ProvLine, ProvLogError, RequestLog, parse_line, user_key

METRICS_PATH = "/metrics"
LOGS_PATH = "/admin/logs/provisioning"
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
TOKEN_MIN_CHARS = 16
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")
_ROTATED = re.compile(r"^[.-]\d+(\.gz)?$")
log = logging.getLogger("phoneprov.pool.admin")
StartResponse = Callable[..., Any]


class AdminRequestError(PoolError):
    """A bad query of the admin endpoint: answered 400 with this one line."""

    def __init__(self, detail: str) -> None:
        super().__init__("400", detail)


# -- the token ------------------------------------------------------------------------------------------


def read_token(path: Path) -> str:
    """The bearer token in ``path``: a private file (no group/other access) of printable ASCII."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(f"admin token file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"admin token file {path} is unreadable: {exc}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(f"admin token file {path} is open to group or others: chmod 600 {path}")
    if len(text) < TOKEN_MIN_CHARS or not _TOKEN_CHARS.match(text):
        raise ConfigError(f"admin token in {path} must be at least {TOKEN_MIN_CHARS} printable characters")
    return text


def load_or_create_token(path: Path, create: bool) -> str:
    """Read the token; with ``create`` (the default file in state_dir) make one first if there is none."""
    if create and not path.exists():
        atomic_write(path, (secrets.token_urlsafe(32) + "\n").encode(), 0o600)
        log.info("admin token created in %s (copy it to every node of the pool)", path)
    return read_token(path)


# -- selecting lines ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogQuery:
    since: datetime | None = None
    user: str | None = None

    def matches(self, line: ProvLine) -> bool:
        if self.since is not None and line.time < self.since:
            return False
        return self.user is None or user_key(line.user) == user_key(self.user)


def parse_query(query_string: str) -> LogQuery:
    """``since`` and ``user`` from a query string; anything else is an AdminRequestError."""
    try:
        params = parse_qs(query_string, keep_blank_values=True, strict_parsing=False, max_num_fields=8)
    except ValueError as exc:
        raise AdminRequestError(f"bad query string: {exc}") from None
    unknown = sorted(set(params) - {"since", "user"})
    if unknown:
        raise AdminRequestError(f"unknown parameter {unknown[0]!r}; known: since, user")
    if any(len(values) > 1 for values in params.values()):
        raise AdminRequestError("each parameter may be given once")
    since, user = params.get("since", [None])[0], params.get("user", [None])[0]
    if user is not None and not 0 < len(user_key(user)) <= 256:
        raise AdminRequestError("user must be a SIP URI such as sip:alice@lab.test")
    return LogQuery(None if since is None else parse_iso_since(since), user)


def parse_iso_since(text: str) -> datetime:
    """An ISO 8601 time with a UTC offset; without one a node and the collector could read it differently.

    An unencoded ``+02:00`` in a query string arrives as `` 02:00`` (``+`` means space there): put it back.
    """
    try:
        at = datetime.fromisoformat(re.sub(r" (\d\d:?\d\d)$", r"+\1", text.strip()))
    except ValueError:
        raise AdminRequestError(f"since {text[:40]!r} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise AdminRequestError(f"since {text[:40]!r} needs a UTC offset, e.g. 2024-05-01T12:00:00Z")
    return at


@dataclass(frozen=True)
class Selection:
    lines: list[str]
    omitted: int
    unreadable: int


def log_files(current: Path) -> list[Path]:
    """logrotate's files of ``current`` (``.1``, ``.2.gz``, ``-20240501``…) oldest first, then ``current``."""
    rotated = [
        p
        for p in current.parent.glob(current.name + "*")
        if p != current and _ROTATED.match(p.name[len(current.name) :])
    ]
    rotated.sort(key=lambda p: p.stat().st_mtime)
    return [*rotated, current] if current.exists() else rotated


def select_lines(current: Path, query: LogQuery, budget: int = MAX_RESPONSE_BYTES) -> Selection:
    """The newest matching lines that fit in ``budget`` bytes; memory never holds more than that."""
    kept: deque[str] = deque()
    size = omitted = unreadable = 0
    for path in log_files(current):
        for raw in _raw_lines(path):
            try:
                line = None if raw is None else parse_line(raw)
            except ProvLogError:
                line = None
            if line is None or raw is None:
                unreadable += 1
                continue
            if not query.matches(line):
                continue
            text = raw.decode("utf-8").rstrip("\n") + "\n"
            kept.append(text)
            size += len(text.encode())
            while size > budget:
                size -= len(kept.popleft().encode())
                omitted += 1
    return Selection(list(kept), omitted, unreadable)


def _raw_lines(path: Path) -> Iterator[bytes | None]:
    """The file's lines as bytes; None for a line longer than the log ever writes (skipped, not held)."""
    limit = MAX_LINE_CHARS + 1  # the log writes ASCII only: characters = bytes
    try:
        fh = _open(path)
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc.strerror)
        return
    with fh:
        try:
            while raw := fh.readline(limit):
                if len(raw) == limit and not raw.endswith(b"\n"):
                    while (rest := fh.readline(limit)) and not rest.endswith(b"\n"):
                        pass
                    yield None
                else:
                    yield raw
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            log.warning("reading %s stopped: %s", path, exc)


def _open(path: Path) -> gzip.GzipFile | BufferedReader:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


# -- the WSGI application -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    status: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    detail: str


def _text(status: str, message: str, *headers: tuple[str, str]) -> _Answer:
    body = (message + "\n").encode()
    return _Answer(status, body, (("Content-Type", "text/plain; charset=utf-8"), *headers), message)


class AdminSite:
    """``/metrics`` and ``/admin/logs/provisioning`` of one node (see the module docstring)."""

    def __init__(
        self,
        node: str,
        metrics: PoolMetrics,
        provlog_path: Path,
        token: str,
        request_log: RequestLog,
        port: Callable[[], int],
    ) -> None:
        self.node, self.metrics, self.provlog_path = node, metrics, provlog_path
        self._token = token.encode()
        self.request_log, self.port = request_log, port

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        method = str(environ.get("REQUEST_METHOD", "GET"))
        path = str(environ.get("PATH_INFO", "/"))
        try:
            answer = self._dispatch(method, path, environ)
        except Exception as exc:  # a bug must cost this request only
            log.exception("admin %s %s failed", method, path)
            answer = _text("500 Internal Server Error", f"internal error: {type(exc).__name__}")
        headers = [*answer.headers, ("Content-Length", str(len(answer.body)))]
        start_response(answer.status, headers)
        self.request_log.record_wsgi(environ, self.port(), int(answer.status[:3]), started, answer.detail)
        return [answer.body]

    def _dispatch(self, method: str, path: str, environ: dict[str, Any]) -> _Answer:
        if path not in (METRICS_PATH, LOGS_PATH):
            return _text("404 Not Found", f"no such path {path}")
        if method != "GET":
            return _text("405 Method Not Allowed", f"{method} not allowed on {path}", ("Allow", "GET"))
        if path == METRICS_PATH:
            encoder, content_type = choose_encoder(str(environ.get("HTTP_ACCEPT", "")))
            body = encoder(self.metrics.registry)
            return _Answer("200 OK", body, (("Content-Type", content_type),), "metrics")
        refusal = self._authenticate(environ.get("HTTP_AUTHORIZATION"))
        if refusal is not None:
            return refusal
        try:
            query = parse_query(str(environ.get("QUERY_STRING", "")))
        except AdminRequestError as exc:
            return _text("400 Bad Request", exc.detail)
        return self._logs(query)

    def _authenticate(self, header: object) -> _Answer | None:
        challenge = ("WWW-Authenticate", 'Bearer realm="phoneprov admin"')
        if not isinstance(header, str) or header[:7].lower() != "bearer ":
            return _text("401 Unauthorized", "admin token required (Authorization: Bearer …)", challenge)
        if not hmac.compare_digest(header[7:].strip().encode("utf-8", "replace"), self._token):
            log.warning("admin: log request with a wrong token refused")
            return _text("401 Unauthorized", "admin token rejected", challenge)
        return None

    def _logs(self, query: LogQuery) -> _Answer:
        picked = select_lines(self.provlog_path, query)
        if picked.unreadable:
            log.warning("admin: %d unreadable lines in %s skipped", picked.unreadable, self.provlog_path)
        headers = (
            ("Content-Type", "text/plain; charset=utf-8"),
            ("X-Phoneprov-Omitted", str(picked.omitted)),
            ("X-Phoneprov-Unreadable", str(picked.unreadable)),
        )
        body = "".join(picked.lines).encode()
        return _Answer("200 OK", body, headers, f"{len(picked.lines)} lines, {picked.omitted} omitted")
