"""Stage REGISTER (protocol.md §8): sign in to the registrar with TLS-DSK over a verified TLS connection,
then keep the registration alive (stage SIGNED_IN's timers, §8.5).

The TLS connection is judged like the Web Services' (shipped roots + the intermediates stage ROOT_CHAIN
validated, at the phone's clock); the registrar's certificate inside TLS-DSK is judged the same way. The SIP
logic is :class:`agent.wire.regflow.RegisterFlow`; this module only moves its messages and keeps time.

Each request/answer exchange has one deadline (``timeout_s``, real monotonic time) covering the send and
every read until its final answer, so a registrar trickling bytes or strays cannot hold the phone in
REGISTER; at most :data:`MAX_IGNORED` messages that answer nothing are read per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL

from agent import trace
from agent.clocks import Clock
from agent.net import Resolver
from agent.stages import AgentError, Stage, WireError
from agent.tlsconn import TlsChannel, tls_connect
from agent.truststore import TrustStore
from agent.wire.regflow import Redirect, Registered, RegisterFlow, failed
from agent.wire.sip import SipMessage, SipStreamParser, encode

__all__ = ["RegisterConfig", "RegistrarSession", "sign_in"]

#: Provisional or stray messages tolerated while waiting for one answer (a bound, not a protocol value).
MAX_IGNORED = 16


@dataclass(frozen=True)
class RegisterConfig:
    registrar_fqdn: str
    port: int = 5061
    expires_s: int = 600
    timeout_s: float = 10.0
    max_redirects: int = 2


def _sip_summary(msg: SipMessage) -> str:
    """Start line, CSeq and the auth step — never the gssapi-data or the signature itself."""
    start = f"{msg.method} {msg.uri}" if msg.method else f"{msg.status} {msg.reason}"
    cseq = msg.header("CSeq") or ""
    auth = msg.header("Authorization") or msg.header("WWW-Authenticate") or msg.header("Authentication-Info")
    step = f", {auth.split()[0]} {'with gssapi-data' if 'gssapi-data' in auth else ''}" if auth else ""
    diag = msg.header("ms-diagnostics")
    return f"{start} (CSeq {cseq}){step}" + (f", ms-diagnostics {diag.split(';')[0]}" if diag else "")


class _Link:
    """SIP messages over one TLS channel, with the stage's error codes for every way the wire fails."""

    def __init__(
        self, channel: TlsChannel, timeout_s: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.channel, self.timeout_s, self._monotonic = channel, timeout_s, monotonic
        self._parser = SipStreamParser()
        self._queue: list[SipMessage] = []

    def _left(self, deadline: float) -> float:
        left = deadline - self._monotonic()
        if left <= 0:
            raise failed("TIMEOUT", f"no answer from {self._peer} within {self.timeout_s:g} s")
        return left

    def send(self, msg: SipMessage, deadline: float) -> None:
        if trace.active():
            trace.emit(Stage.REGISTER, "sent", self._peer, _sip_summary(msg), len(msg.body) or None)
        try:
            self.channel.send(encode(msg), self._left(deadline))
        except TimeoutError:
            raise failed("TIMEOUT", f"{self._peer} took no request within {self.timeout_s:g} s") from None
        except (OSError, SSL.Error) as exc:
            raise failed("CONNECTION_LOST", f"sending to {self._peer}: {exc}") from None

    def receive(self, deadline: float) -> SipMessage:
        """The next message, read before ``deadline`` (monotonic seconds) or TIMEOUT."""
        while not self._queue:
            try:
                data = self.channel.recv(self._left(deadline))
            except TimeoutError:
                raise failed("TIMEOUT", f"no answer from {self._peer} within {self.timeout_s:g} s") from None
            except (OSError, SSL.Error) as exc:
                raise failed("CONNECTION_LOST", f"reading from {self._peer}: {exc}") from None
            if not data:
                raise failed("CONNECTION_LOST", f"{self._peer} closed the connection")
            try:
                self._queue.extend(self._parser.feed(data))
            except WireError as exc:
                raise failed("MALFORMED", f"{self._peer}: {exc.detail}") from None
        msg = self._queue.pop(0)
        if trace.active():
            trace.emit(Stage.REGISTER, "received", self._peer, _sip_summary(msg), len(msg.body) or None)
        return msg

    def exchange(self, flow: RegisterFlow, first: SipMessage, clock: Clock) -> Registered | Redirect:
        """Send ``first`` and whatever the flow asks next until it is registered or redirected; each
        request gets ``timeout_s`` overall for its sending and its final answer."""
        deadline = self._monotonic() + self.timeout_s
        self.send(first, deadline)
        ignored = 0
        while True:
            step = flow.receive(self.receive(deadline), clock.now())
            if isinstance(step, SipMessage):
                deadline = self._monotonic() + self.timeout_s
                self.send(step, deadline)
                ignored = 0
            elif step is not None:
                return step
            else:
                ignored += 1
                if ignored > MAX_IGNORED:
                    raise failed("UNEXPECTED", f"{self._peer} sent {ignored} messages that answer nothing")

    @property
    def _peer(self) -> str:
        return f"{self.channel.host}:{self.channel.port}"

    def close(self) -> None:
        self.channel.close()


class RegistrarSession:
    """A signed-in phone: the TLS connection, the flow (Call-ID, SA) and the timers of §8.5."""

    def __init__(self, link: _Link, flow: RegisterFlow, registered: Registered, clock: Clock) -> None:
        self._link, self._flow, self._clock = link, flow, clock
        self.registered = registered
        self._unregistered = False

    @property
    def channel(self) -> TlsChannel:
        return self._link.channel

    @property
    def flow(self) -> RegisterFlow:
        return self._flow

    def next_due(self) -> datetime:
        """The earlier of the refresh (30 s before the binding ends) and the end of the phone's SA; never,
        once unregistered."""
        if self._unregistered:
            return datetime.max.replace(tzinfo=UTC)
        return min(self.registered.refresh_at, self.registered.sa_expires_at)

    def tick(self, now: datetime) -> str:
        """Do what is due at ``now``: "idle", "refreshed" (signed re-REGISTER) or "reauthenticated" (B–D)."""
        if self._unregistered:
            return "idle"
        before = self._flow.sa.sa_id if self._flow.sa else None
        if self._flow.needs_new_sa(now):
            self._exchange(self._flow.reauthenticate(now))
        elif now >= self.registered.refresh_at:
            self._exchange(self._flow.refresh(now))
        else:
            return "idle"
        after = self._flow.sa.sa_id if self._flow.sa else None
        return "reauthenticated" if after != before else "refreshed"

    def unregister(self) -> Registered:
        """Remove this phone's binding: a signed REGISTER with ``Expires: 0`` (after B–D if the SA has
        ended), confirmed by the registrar's signed 200. Afterwards the timers stop; close() still applies.
        Lets a synthetic transaction leave the store as it found it."""
        now = self._clock.now()
        if self._flow.needs_new_sa(now):
            self._exchange(self._flow.reauthenticate(now))
            now = self._clock.now()
        done = self._exchange(self._flow.refresh(now, expires_s=0))
        self._unregistered = True
        return done

    def _exchange(self, first: SipMessage) -> Registered:
        step = self._link.exchange(self._flow, first, self._clock)
        if isinstance(step, Redirect):
            raise failed("UNEXPECTED", f"registrar redirected a live registration to {step.host}:{step.port}")
        self.registered = replace(step, redirected_from=self.registered.redirected_from)
        return self.registered

    def run(self, clock: Clock, until: datetime, max_ticks: int) -> list[tuple[datetime, str]]:
        """Keep the registration alive until ``until``, sleeping on ``clock`` between due times; at most
        ``max_ticks`` ticks. Returns (time, result) of every tick."""
        done: list[tuple[datetime, str]] = []
        for _ in range(2 * max_ticks + 1):  # each pass ticks or sleeps; a clock that does not move ends it
            now = clock.now()
            if now >= until or len(done) >= max_ticks:
                break
            due = self.next_due()
            if due > now:
                clock.sleep((min(due, until) - now).total_seconds())
                continue
            done.append((now, self.tick(now)))
        return done

    def close(self) -> None:
        self._link.close()


def _server_check(
    trust: TrustStore, host: str, intermediates: tuple[x509.Certificate, ...], clock: Clock
) -> Callable[[list[x509.Certificate]], bool]:
    """The TLS-DSK server check: the chain the registrar presents inside SIP, judged like the TLS one."""

    def check(chain: list[x509.Certificate]) -> bool:
        try:
            trust.verify_server(chain[0], (*chain[1:], *intermediates), host, clock.now())
        except AgentError:
            return False
        return True

    return check


def sign_in(
    cfg: RegisterConfig,
    trust: TrustStore,
    resolver: Resolver,
    intermediates: Sequence[x509.Certificate],
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey,
    aor: str,
    clock: Clock,
) -> RegistrarSession:
    """Run stage REGISTER: connect, TLS-DSK, follow at most ``max_redirects`` home-pool redirects."""
    host, port = cfg.registrar_fqdn, cfg.port
    first_hop: str | None = None
    extra = tuple(intermediates)
    for _ in range(cfg.max_redirects + 1):
        channel = tls_connect(
            trust, resolver, host, port, extra, clock.now(), cfg.timeout_s, stage=Stage.REGISTER
        )
        link = _Link(channel, cfg.timeout_s)
        try:
            flow = RegisterFlow(
                aor,
                host,
                port,
                cert,
                key,
                _server_check(trust, host, extra, clock),
                contact_host=str(channel.sock.getsockname()[0]),
                expires_s=cfg.expires_s,
            )
            step = link.exchange(flow, flow.start(), clock)
        except BaseException:
            link.close()
            raise
        if isinstance(step, Registered):
            return RegistrarSession(link, flow, replace(step, redirected_from=first_hop), clock)
        link.close()
        first_hop = first_hop or f"{host}:{port}"
        host, port = step.host, step.port
    raise failed(
        "REDIRECT_LOOP", f"more than {cfg.max_redirects} redirects (last to {host}:{port}, from {first_hop})"
    )
