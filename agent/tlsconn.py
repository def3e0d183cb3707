"""A TLS client connection whose server chain is judged by the phone's TrustStore (cryptography's path
builder at the phone's synchronised time) from inside OpenSSL's verify callback: verification is never off,
and a refusal names the missing issuer. Stage ROOT_CHAIN uses it once; stage REGISTER keeps it for SIP.

Every wait has one deadline per call (handshake, send, recv), not per socket read, so a peer trickling
bytes cannot stretch it; a certificate cryptography cannot parse is a refusal, not an exception out of
OpenSSL; and the socket is closed on every path that does not return a channel.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from OpenSSL import SSL

from agent.net import Resolver
from agent.stages import X509_ERRORS, AgentError, Stage, StageError, one_line
from agent.truststore import TrustStore, ValidatedChain

#: Bound on one send() when the caller gives none.
SEND_TIMEOUT_S = 10.0


@dataclass
class TlsChannel:
    """A verified TLS connection (blocking reads with a timeout; the socket is non-blocking underneath)."""

    conn: SSL.Connection
    sock: socket.socket
    chain: ValidatedChain
    host: str
    port: int

    def send(self, data: bytes, timeout_s: float = SEND_TIMEOUT_S) -> None:
        """All of ``data`` within ``timeout_s`` overall; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        view = memoryview(data)
        while view:
            try:
                sent = self.conn.send(view)
            except SSL.WantWriteError:
                _wait(self.sock, write=True, deadline=deadline)
                continue
            except SSL.WantReadError:
                _wait(self.sock, write=False, deadline=deadline)
                continue
            view = view[sent:]

    def recv(self, timeout_s: float, size: int = 65536) -> bytes:
        """Up to ``size`` bytes; b"" when the peer closed; TimeoutError when nothing came within
        ``timeout_s`` overall (a TLS record trickled in byte by byte counts from the start)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.conn.recv(size)
            except SSL.WantReadError:
                _wait(self.sock, write=False, deadline=deadline)
            except SSL.WantWriteError:
                _wait(self.sock, write=True, deadline=deadline)
            except SSL.ZeroReturnError:
                return b""
            except SSL.SysCallError as exc:
                if exc.args and exc.args[0] in (-1, 0):  # unexpected EOF
                    return b""
                raise

    def close(self) -> None:
        _close(self.conn, self.sock)


def tls_connect(
    store: TrustStore,
    resolver: Resolver,
    host: str,
    port: int,
    extra_intermediates: tuple[x509.Certificate, ...],
    at: datetime,
    timeout_s: float,
    stage: Stage,
) -> TlsChannel:
    """Connect and handshake; a chain the store refuses fails ``stage`` with the store's code and detail."""
    verdict = _Verdict(store, host, extra_intermediates, at)
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_verify(SSL.VERIFY_PEER, verdict.callback)
    try:
        address = resolver.resolve(host)
        sock = socket.create_connection((address, port), timeout=timeout_s)
    except OSError as exc:
        raise StageError(stage, "UNREACHABLE", f"cannot reach {host}:{port}: {exc}") from None
    conn: SSL.Connection | None = None
    try:
        conn = SSL.Connection(ctx, sock)
        conn.set_tlsext_host_name(host.encode("idna"))
        conn.set_connect_state()
        _handshake(conn, sock, timeout_s)
    except BaseException as exc:
        _close(conn, sock)
        if not isinstance(exc, Exception):
            raise
        if verdict.error is not None:
            raise _for_stage(verdict.error, stage) from None
        why = (
            one_line(exc)
            if isinstance(exc, SSL.Error | OSError)
            else f"{type(exc).__name__}: {one_line(exc)}"
        )
        raise StageError(stage, "TLS", f"TLS handshake with {host}:{port} failed: {why}") from None
    if verdict.chain is None:
        _close(conn, sock)
        raise _for_stage(
            verdict.error or StageError(stage, "TLS", f"{host}:{port} presented no certificate"), stage
        )
    return TlsChannel(conn, sock, verdict.chain, host, port)


def _for_stage(error: AgentError, stage: Stage) -> AgentError:
    if error.stage is stage:
        return error
    return StageError(stage, error.code, error.detail, error.remedy)


class _Verdict:
    """Decides once per handshake (OpenSSL calls back once per depth) and remembers why. Nothing raised
    here may escape into OpenSSL: pyOpenSSL would re-raise it from ``do_handshake`` as a foreign error."""

    def __init__(
        self, store: TrustStore, host: str, extra: tuple[x509.Certificate, ...], at: datetime
    ) -> None:
        self.store, self.host, self.extra, self.at = store, host, extra, at
        self.chain: ValidatedChain | None = None
        self.error: AgentError | None = None
        self._decided = False

    def callback(self, conn: SSL.Connection, _cert: object, _errno: int, _depth: int, _ok: int) -> bool:
        if not self._decided:
            self._decided = True
            try:
                self._decide(conn)
            except X509_ERRORS as exc:
                detail = f"{self.host} presented a malformed certificate: {one_line(exc, 120)}"
                self.error = StageError(Stage.ROOT_CHAIN, "CHAIN_INVALID", detail)
            except Exception as exc:  # a failing check refuses; it never accepts
                detail = f"checking {self.host}'s certificate failed: {type(exc).__name__}: {one_line(exc)}"
                self.error = StageError(Stage.ROOT_CHAIN, "CHAIN_INVALID", detail)
        return self.chain is not None

    def _decide(self, conn: SSL.Connection) -> None:
        presented = conn.get_peer_cert_chain(as_cryptography=True) or []
        if not presented:
            self.error = StageError(Stage.ROOT_CHAIN, "TLS", f"{self.host} presented no certificate")
            return
        try:
            pool = (*presented[1:], *self.extra)
            self.chain = self.store.verify_server(presented[0], pool, self.host, self.at)
        except AgentError as exc:
            self.error = exc


def _handshake(conn: SSL.Connection, sock: socket.socket, timeout_s: float) -> None:
    """Drive the handshake on the (non-blocking, since it has a timeout) socket within ``timeout_s``
    overall: a silent or trickling server is a TimeoutError, not a hang."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.do_handshake()
            return
        except SSL.WantReadError:
            _wait(sock, write=False, deadline=deadline)
        except SSL.WantWriteError:
            _wait(sock, write=True, deadline=deadline)


def _wait(sock: socket.socket, write: bool, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no TLS progress before the deadline")
    ready = select.select([], [sock], [], left)[1] if write else select.select([sock], [], [], left)[0]
    if not ready:
        raise TimeoutError(f"no TLS data within {left:.3g} s")


def _close(conn: SSL.Connection | None, sock: socket.socket) -> None:
    if conn is not None:
        with contextlib.suppress(SSL.Error, OSError):
            conn.shutdown()
    with contextlib.suppress(OSError):
        sock.close()
