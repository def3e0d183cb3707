"""WSGI front of the Web Services: the anonymous HTTP site (root chain) and the HTTPS site (CertProv, Web
Ticket). Routing, body limits and the IIS-style request log live here; the services decide everything else.

Bad input never takes the pool down: a handler that raises is logged as 500 and the server keeps serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agent.wire import mex, pkcs7
from tools.pool.config import CERTPROV_PATH, WEBTICKET_PATH
from tools.pool.provlog import RequestLog
from tools.pool.reply import Reply

MAX_REQUEST_BYTES = 256 * 1024
MAX_DRAIN_BYTES = 4 * 1024 * 1024
log = logging.getLogger("phoneprov.pool.web")

Handler = Callable[[bytes], Reply]
AuthHandler = Callable[[bytes, str | None], Reply]  # body, Authorization header
StartResponse = Callable[..., Any]


def _text(status: int, message: str) -> Reply:
    return Reply(status, (message + "\n").encode(), (("Content-Type", "text/plain; charset=utf-8"),), message)


class Site:
    """A tiny router: (method, path) → handler(body) → Reply; everything else is a plain-text error."""

    def __init__(
        self,
        routes: Mapping[tuple[str, str], Handler | AuthHandler],
        request_log: RequestLog,
        port: Callable[[], int],
        authenticated: frozenset[tuple[str, str]] = frozenset(),
    ):
        self.routes = {(m, p.lower()): h for (m, p), h in routes.items()}
        self.authenticated = {(m, p.lower()) for m, p in authenticated}  # these handlers see Authorization
        self.request_log, self.port = request_log, port

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        method = str(environ.get("REQUEST_METHOD", "GET"))
        path = str(environ.get("PATH_INFO", "/"))
        reply = self._dispatch(method, path, environ)
        reasons = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            411: "Length Required",
            413: "Payload Too Large",
            500: "Internal Server Error",
        }
        headers = [*reply.headers, ("Content-Length", str(len(reply.body)))]
        start_response(f"{reply.status} {reasons.get(reply.status, 'Status')}", headers)
        self.request_log.record_wsgi(environ, self.port(), reply.status, started, reply.detail)
        return [reply.body]

    def _dispatch(self, method: str, path: str, environ: dict[str, Any]) -> Reply:
        handler = self.routes.get((method, path.lower()))
        if handler is None:
            known = any(p == path.lower() for _, p in self.routes)
            return (
                _text(405, f"{method} not allowed on {path}") if known else _text(404, f"no such path {path}")
            )
        body = b""
        if method == "POST":
            body_or_error = _read_body(environ)
            if isinstance(body_or_error, Reply):
                return body_or_error
            body = body_or_error
        try:
            if (method, path.lower()) in self.authenticated:
                return handler(body, environ.get("HTTP_AUTHORIZATION"))  # type: ignore[call-arg]
            return handler(body)  # type: ignore[call-arg]
        except Exception as exc:  # the pool must survive any handler bug; the log says what happened
            log.exception("handler for %s %s failed", method, path)
            return _text(500, f"internal error: {type(exc).__name__}")


def _read_body(environ: dict[str, Any]) -> bytes | Reply:
    raw = environ.get("CONTENT_LENGTH") or ""
    if not str(raw).isdigit():
        return _text(411, "Content-Length required")
    length = int(raw)
    if length > MAX_REQUEST_BYTES:
        _drain(
            environ["wsgi.input"], min(length, MAX_DRAIN_BYTES)
        )  # so the client reads the 413, not a reset
        return _text(413, f"request body of {length} bytes exceeds {MAX_REQUEST_BYTES}")
    data: bytes = environ["wsgi.input"].read(length)
    return data


def _drain(stream: Any, length: int) -> None:
    while length > 0:
        chunk = stream.read(min(length, 64 * 1024))
        if not chunk:
            return
        length -= len(chunk)


def anonymous_site(rootchain: Callable[[], bytes], request_log: RequestLog, port: Callable[[], int]) -> Site:
    """Plain HTTP: the certificate chain a phone downloads before it can check HTTPS (protocol.md §5)."""

    def chain(_: bytes) -> Reply:
        return Reply(200, rootchain(), (("Content-Type", pkcs7.CONTENT_TYPE),), "root chain")

    return Site({("GET", CERTPROV_PATH + "/rootchain"): chain}, request_log, port)


def secure_site(
    base_https: Callable[[], str],
    pin: Handler,
    negotiate: AuthHandler,
    get_and_publish: Handler,
    request_log: RequestLog,
    port: Callable[[], int],
) -> Site:
    """HTTPS: metadata documents and the two SOAP endpoints (protocol.md §6.1, §6.2, §7.2)."""
    xml = (("Content-Type", "text/xml; charset=utf-8"),)

    def certprov_mex(_: bytes) -> Reply:
        base = base_https()
        return Reply(200, mex.build_certprov_mex(base + CERTPROV_PATH, base + WEBTICKET_PATH), xml, "mex")

    def webticket_mex(_: bytes) -> Reply:
        return Reply(200, mex.build_webticket_mex(base_https() + WEBTICKET_PATH), xml, "mex")

    routes: dict[tuple[str, str], Handler | AuthHandler] = {
        ("POST", WEBTICKET_PATH): negotiate,
        ("GET", CERTPROV_PATH + "/mex"): certprov_mex,
        ("POST", CERTPROV_PATH + "/WebTicket_Proof"): get_and_publish,
        ("GET", WEBTICKET_PATH + "/mex"): webticket_mex,
        ("POST", WEBTICKET_PATH + "/Pin"): pin,
    }
    return Site(routes, request_log, port, frozenset({("POST", WEBTICKET_PATH)}))
