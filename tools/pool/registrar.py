"""The lab registrar: SIP over TLS (stdlib ``ssl``, TLS 1.2+, the pool's web certificate), one thread per
connection, the TLS-DSK logic in :class:`tools.pool.regcore.RegistrarConnection` (protocol.md §8).

What a phone sends can close its own connection, never the registrar: unparseable bytes, an oversized
header section or a bad flight end that connection (after a 400 when the message itself parsed). What idle,
slow or numerous peers can hold is bounded (all constructor parameters):

- ``max_connections`` live connections, ``max_per_ip`` of them from one address. A connection over either
  cap is closed at once, before TLS, with one warning line (no SIP answer: that would need the TLS
  handshake the cap exists to avoid);
- ``handshake_timeout_s`` for the TLS handshake, and ``setup_timeout_s`` from accept until the connection
  holds its first TLS-DSK SA (keep-alives do not extend it); after that ``idle_timeout_s`` between reads;
- ``header_timeout_s`` from a message's first byte until it is complete, so trickled bytes cannot pin it.

Every REGISTER outcome (not the handshake's intermediate 401s) is one provisioning-log line: stage
REGISTER, result, code, AOR. ``unhealthy`` is the lab's failure 2: every REGISTER gets ``503`` with
ms-diagnostics 4105 (ours), signed when the request names an SA of its connection.
``redirect_to`` makes this registrar a first-contact pool that sends phones to their home pool (301).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.stages import Stage, WireError, one_line
from agent.wire.sip import SipMessage, SipStreamParser, encode, parse_name_addr
from agent.wire.sipauth import format_ms_diagnostics
from tools.pool.ca import PoolCA
from tools.pool.errors import ConfigError, PoolError, StoreUnavailable
from tools.pool.provlog import ProvisioningLog, ProvRecord
from tools.pool.regcheck import client_checker
from tools.pool.regcore import RegistrarConnection
from tools.pool.regtypes import (
    CERT_UNKNOWN,
    DATA_STORE_UNAVAILABLE,
    REGISTRAR_UNHEALTHY,
    ExpiryPolicy,
    Handled,
    Outcome,
    RegistrationEvent,
)
from tools.pool.store.contract import Registration, Store

__all__ = ["Registrar"]

log = logging.getLogger("phoneprov.pool.registrar")
_ACCEPT_POLL_S = 0.2


class Registrar:
    """A TLS listener on ``bind`` (port 0: any free port); :meth:`start` / :meth:`stop` like the UDP parts."""

    def __init__(
        self,
        bind: tuple[str, int],
        fqdn: str,
        sts_uri: Callable[[], str],
        ca: PoolCA,
        store: Store,
        node: str,
        now: Callable[[], datetime],
        log: ProvisioningLog,
        *,
        redirect_to: tuple[str, int] | None = None,
        policy: ExpiryPolicy | None = None,
        max_connections: int = 64,
        max_per_ip: int = 8,
        idle_timeout_s: float = 960.0,
        handshake_timeout_s: float = 10.0,
        setup_timeout_s: float = 30.0,
        header_timeout_s: float = 10.0,
    ) -> None:
        self.fqdn, self.sts_uri, self.ca, self.store, self.node = fqdn, sts_uri, ca, store, node
        self.now, self.provlog = now, log
        self.redirect_to, self.policy = redirect_to, policy or ExpiryPolicy()
        self.max_connections, self.max_per_ip = max_connections, max_per_ip
        self.idle_timeout_s, self.handshake_timeout_s = idle_timeout_s, handshake_timeout_s
        self.setup_timeout_s, self.header_timeout_s = setup_timeout_s, header_timeout_s
        self.unhealthy = False
        self._tls_chain, self._tls_key = _load_identity(ca)
        self._check = client_checker(ca.root, [ca.issuing], store)
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._ctx.load_cert_chain(str(ca.tls_cert_chain_pem_path), str(ca.tls_key_path))
        self._sock = socket.create_server(bind, backlog=max_connections)
        self._sock.settimeout(_ACCEPT_POLL_S)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._live: set[_Peer] = set()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="pool-registrar", daemon=True)
        self.refused_connections = 0

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._live)

    def start(self) -> Registrar:
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut every live connection, and wait for their threads."""
        self._stop.set()
        if self._accept_thread.is_alive():
            self._accept_thread.join(timeout=5)
        self._sock.close()
        with self._lock:
            live = list(self._live)
        for peer in live:
            peer.cut()
        for peer in live:
            peer.thread.join(timeout=5)

    # -- connections --------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                raw, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            peer = _Peer(raw, str(addr[0]), f"{addr[0]}:{addr[1]}", self._serve)
            with self._lock:
                why = self._over_cap(peer.ip)
                if why is None:
                    self._live.add(peer)
            if why is not None:
                self.refused_connections += 1
                log.warning("registrar: refusing %s: %s", peer.name, why)
                with contextlib.suppress(OSError):
                    raw.close()
                continue
            peer.thread.start()

    def _over_cap(self, ip: str) -> str | None:
        """Why a new connection from ``ip`` is one too many (caller holds the lock), or None."""
        if len(self._live) >= self.max_connections:
            return f"{self.max_connections} connections open"
        if sum(1 for p in self._live if p.ip == ip) >= self.max_per_ip:
            return f"{self.max_per_ip} connections from {ip} open"
        return None

    def _serve(self, peer: _Peer) -> None:
        setup_deadline = time.monotonic() + self.setup_timeout_s
        try:
            peer.sock.settimeout(min(self.handshake_timeout_s, self.setup_timeout_s))
            tls = self._ctx.wrap_socket(peer.sock, server_side=True, do_handshake_on_connect=False)
            peer.sock = tls
            if self._stop.is_set():
                return
            try:
                tls.do_handshake()
            except (OSError, ssl.SSLError) as exc:
                log.info("registrar: TLS handshake with %s failed: %s", peer.name, one_line(exc))
                return
            self._converse(tls, peer.name, setup_deadline)
        except Exception:  # a bug must end this connection only, and be seen
            log.exception("registrar: connection %s failed", peer.name)
        finally:
            with self._lock:
                self._live.discard(peer)
            with contextlib.suppress(OSError):
                peer.sock.close()

    def _converse(self, tls: ssl.SSLSocket, peer: str, setup_deadline: float) -> None:
        core = RegistrarConnection(
            self.fqdn,
            self.sts_uri(),
            self._tls_chain,
            self._tls_key,
            self._check,
            policy=self.policy,
            redirect_to=self.redirect_to,
        )
        parser = SipStreamParser()
        timer = _Deadlines(self, setup_deadline)
        while not self._stop.is_set():
            timer.established = timer.established or bool(core.security_associations)
            left, why = timer.next()
            try:
                if left <= 0:
                    raise TimeoutError
                tls.settimeout(left)
                data = tls.recv(65536)
            except TimeoutError:
                log.info("registrar: closing %s: %s", peer, why)
                return
            except (OSError, ssl.SSLError):
                return
            if not data:
                return
            try:
                messages = parser.feed(data)
            except WireError as exc:
                log.info("registrar: closing %s: %s", peer, exc.detail)
                return
            timer.fed(parser.buffered > 0, bool(messages))
            for msg in messages:
                handled = self._handle(core, msg)
                try:
                    for answer in handled.messages:
                        tls.sendall(encode(answer))
                except (OSError, ssl.SSLError):
                    return
                if handled.close:
                    return

    # -- one request --------------------------------------------------------------------------------

    def _handle(self, core: RegistrarConnection, msg: SipMessage) -> Handled:
        now = self.now()
        if self.unhealthy and msg.method == "REGISTER":
            return self._unavailable(core, msg)
        handled = core.handle(msg, now)
        if handled.events:
            handled = self._store(core, msg, handled)
        if handled.outcome is not None:
            self._log(msg, handled.outcome)
        return handled

    def _store(self, core: RegistrarConnection, msg: SipMessage, handled: Handled) -> Handled:
        """Write the bindings before the 200 leaves; a store that refuses turns it into a 403 4104."""
        try:
            for event in handled.events:
                self._write(event)
        except StoreUnavailable as exc:
            code, reason, detail = (
                DATA_STORE_UNAVAILABLE,
                "DataStoreUnavailable: cannot record it",
                exc.detail,
            )
        except PoolError as exc:  # the user vanished between the certificate check and the write
            code, reason, detail = CERT_UNKNOWN, f"CertUnknown: {exc.detail}", exc.detail
        else:
            return handled
        aor = handled.outcome.aor if handled.outcome else "-"
        outcome = Outcome("failed", str(code), aor, one_line(detail))
        return Handled((core.refuse(msg, code, reason),), (), outcome)

    def _write(self, event: RegistrationEvent) -> None:
        if event.unregister:
            self.store.unregister(event.aor, event.contact)
            return
        self.store.register(
            Registration(event.aor, event.contact, event.thumbprint, self.node, event.at, event.expires_at)
        )

    def _unavailable(self, core: RegistrarConnection, msg: SipMessage) -> Handled:
        diag = ("ms-diagnostics", format_ms_diagnostics(REGISTRAR_UNHEALTHY, "Registrar unhealthy"))
        aor = _from_uri(msg)
        outcome = Outcome("failed", str(REGISTRAR_UNHEALTHY), aor, "registrar marked unhealthy")
        self._log(msg, outcome)
        answer = core.answer(msg, 503, "Service Unavailable", [diag])
        if answer is None:
            return Handled((), (), outcome, close=True)
        return Handled((answer,), (), outcome)

    def _log(self, msg: SipMessage, outcome: Outcome) -> None:
        call_id = msg.header("Call-ID") or "-"
        self.provlog.record(
            ProvRecord(
                outcome.aor or "-", "-", Stage.REGISTER, outcome.result, outcome.code, call_id, outcome.detail
            )
        )


class _Deadlines:
    """Which deadline a connection's next read must meet: setup (no SA yet), message (one half-received),
    idle; and why, for the log line when it passes. Monotonic time: these bound real waits."""

    def __init__(self, registrar: Registrar, setup_deadline: float) -> None:
        self._r, self._setup = registrar, setup_deadline
        self.established = False
        self._partial_since: float | None = None

    def next(self) -> tuple[float, str]:
        """Seconds left until the nearest deadline, and what passing it means."""
        now, r = time.monotonic(), self._r
        options = [(now + r.idle_timeout_s, f"idle for {r.idle_timeout_s:g} s")]
        if not self.established:
            options.append((self._setup, f"no TLS-DSK SA within {r.setup_timeout_s:g} s of accept"))
        if self._partial_since is not None:
            late = self._partial_since + r.header_timeout_s
            options.append((late, f"message incomplete {r.header_timeout_s:g} s after its first byte"))
        deadline, why = min(options)
        return deadline - now, why

    def fed(self, partial: bool, completed: bool) -> None:
        """After data came in: is a message half-received, and did this data complete any?"""
        if not partial:
            self._partial_since = None
        elif completed or self._partial_since is None:
            self._partial_since = time.monotonic()


class _Peer:
    """One accepted connection: its address, its socket (replaced by the TLS one once wrapped), its thread."""

    def __init__(self, sock: socket.socket, ip: str, name: str, serve: Callable[[_Peer], None]) -> None:
        self.sock, self.ip, self.name = sock, ip, name
        self.thread = threading.Thread(target=serve, args=(self,), name=f"registrar-{name}", daemon=True)

    def cut(self) -> None:
        """Unblock the connection's thread: shut the descriptor down under whatever is reading it."""
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)


def _load_identity(ca: PoolCA) -> tuple[list[x509.Certificate], rsa.RSAPrivateKey]:
    """The registrar's TLS-DSK identity is the pool's web certificate (same FQDN), with its issuing CA."""
    try:
        key = serialization.load_pem_private_key(ca.tls_key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"registrar key {ca.tls_key_path}: {one_line(exc)}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"registrar key {ca.tls_key_path} is not an RSA key")
    return [ca.web_cert, ca.issuing], key


def _from_uri(msg: SipMessage) -> str:
    try:
        return parse_name_addr(msg.header("From") or "").uri
    except WireError:
        return "-"
