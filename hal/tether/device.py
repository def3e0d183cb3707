"""The phone's side of the tether: a sans-IO state machine and the thin loop that runs it on a link.

The PC asks for a CSR; the phone makes the key (or takes one it was given) and answers with the CSR only —
the private key never goes into a frame. The certificate that comes back is checked exactly as stage
CERT_REQUEST checks one from CertProv (our public key, our SIP URI, a path to a shipped root through the
intermediates sent, at the phone's clock) before anything is written; only then does the runner call
``install`` (``StateStore.save_identity`` on a real phone: atomic files, key 0600). A pulled cable or a
damaged frame therefore leaves either the old identity or the new one, never half of one.

States (transition table :data:`_TABLE`): IDLE -HELLO-> READY -CSR_REQUEST-> AWAIT_CERT
-CERTIFICATE-> INSTALLING -installed-> DONE. HELLO restarts a session from any state; an ERROR from the PC
aborts it (the pending key is dropped); a repeated CSR_REQUEST or CERTIFICATE gets the same answer again,
so the PC may resend after a damaged frame.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from agent import enroll
from agent.clocks import Clock
from agent.phone import StoredIdentity
from agent.stages import X509_ERRORS, AgentError, one_line
from agent.truststore import TrustStore
from hal.errors import FrameError, HalError
from hal.tether.framing import (
    PROTOCOL_VERSION,
    Ack,
    Csr,
    CsrRequest,
    ErrorMsg,
    Frame,
    FrameDecoder,
    Hello,
    IssuedCertificate,
    Message,
    MsgType,
    decode_message,
    encode_message,
)
from hal.tether.link import Link, LinkClosed

log = logging.getLogger(__name__)


class State(enum.Enum):
    IDLE = "idle"
    READY = "ready"
    AWAIT_CERT = "awaiting certificate"
    INSTALLING = "installing"
    DONE = "installed"


@dataclass(frozen=True)
class Install:
    """The machine's request to its runner: persist this identity, then call ``installed`` or
    ``install_failed``."""

    identity: StoredIdentity
    thumbprint: str


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 of the DER, upper-case hex (the pool's and Windows' thumbprint)."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()


class PhoneTether:
    """Sans-IO: messages in (with the phone's time), replies or an :class:`Install` out."""

    def __init__(
        self,
        device_id: str,
        phone_serial: str,
        trust: TrustStore,
        key_source: Callable[[], rsa.RSAPrivateKey] = enroll.generate_key,
    ) -> None:
        self.device_id, self.phone_serial, self.trust = device_id, phone_serial, trust
        self.key_source = key_source
        self.state = State.IDLE
        self._key: rsa.RSAPrivateKey | None = None
        self._sip_uri = ""
        self._csr = b""
        self._pending: Install | None = None
        self._installed: str | None = None

    @property
    def in_session(self) -> bool:
        """True while a key waits for its certificate (what a session timeout must drop)."""
        return self.state in (State.AWAIT_CERT, State.INSTALLING)

    @property
    def installed_thumbprint(self) -> str | None:
        """The certificate this session installed, if any."""
        return self._installed

    def receive(self, msg: Message, now: datetime) -> Message | Install | None:
        if isinstance(msg, ErrorMsg):
            log.warning("tether: the PC aborted: %s %s", msg.code, msg.reason)
            self.reset()
            return None
        if (self.state, msg.TYPE) not in _TABLE:
            return ErrorMsg("STATE", f"{msg.TYPE.name} is not expected while {self.state.value}")
        if isinstance(msg, Hello):
            return self._hello(msg)
        if isinstance(msg, CsrRequest):
            return self._csr_request(msg)
        if isinstance(msg, IssuedCertificate) and self.state is State.AWAIT_CERT:
            return self._certificate(msg, now)
        if isinstance(msg, IssuedCertificate):
            return self._repeat(msg)
        raise AssertionError(f"transition table admits {msg.TYPE.name} without a handler")

    def refuse(self, error: FrameError) -> ErrorMsg:
        """A frame that failed its checks: the PC may resend it."""
        return ErrorMsg("FRAME", error.detail)

    def installed(self) -> Ack:
        if self._pending is None:
            raise RuntimeError("installed() without a pending install")
        self._installed = self._pending.thumbprint
        self._drop()
        self.state = State.DONE
        return Ack(self._installed)

    def install_failed(self, reason: str) -> ErrorMsg:
        self._drop()
        self.state = State.READY
        return ErrorMsg("INSTALL", f"the phone could not store the identity: {reason}")

    def reset(self) -> None:
        """Forget the session (link lost, PC aborted, timeout): drop a key waiting for its certificate."""
        self._drop()
        if self.state is not State.IDLE:
            self.state = State.DONE if self._installed else State.READY

    def _drop(self) -> None:
        self._key, self._sip_uri, self._csr, self._pending = None, "", b"", None

    def _hello(self, msg: Hello) -> Message:
        if msg.protocol_version != PROTOCOL_VERSION:
            return ErrorMsg(
                "VERSION",
                f"the phone speaks tether protocol {PROTOCOL_VERSION}, the PC {msg.protocol_version}",
            )
        self._drop()
        self.state = State.READY
        return Hello(PROTOCOL_VERSION, self.device_id, self.phone_serial)

    def _csr_request(self, msg: CsrRequest) -> Message:
        sip = msg.sip_uri
        if not sip.lower().startswith("sip:") or "@" not in sip:
            return ErrorMsg("MALFORMED", f"{sip!r} is not a sip:user@domain URI")
        if self.state is State.AWAIT_CERT and sip == self._sip_uri:
            return Csr(self._csr)  # a resend: same key, same CSR
        key = self.key_source()
        self._key, self._sip_uri, self._csr = key, sip, enroll.build_csr(key, sip)
        self.state = State.AWAIT_CERT
        return Csr(self._csr)

    def _certificate(self, msg: IssuedCertificate, now: datetime) -> Message | Install:
        if self._key is None:
            raise RuntimeError("AWAIT_CERT without a key")
        try:
            chain = tuple(x509.load_der_x509_certificate(der) for der in msg.intermediates_der)
        except X509_ERRORS as exc:
            return ErrorMsg("BadCertificate", f"an intermediate is not a DER certificate: {one_line(exc)}")
        try:
            cert = enroll.check_issued(msg.leaf_der, self._key, self._sip_uri, self.trust, chain, now)
            path = self.trust.verify_client(cert, chain, now)
        except AgentError as exc:
            return ErrorMsg("BadCertificate", exc.detail)
        self._pending = Install(StoredIdentity(self._key, cert, path.intermediates), thumbprint(cert))
        self.state = State.INSTALLING
        return self._pending

    def _repeat(self, msg: IssuedCertificate) -> Message:
        try:
            again = thumbprint(x509.load_der_x509_certificate(msg.leaf_der))
        except X509_ERRORS:
            again = ""
        if again == self._installed:
            return Ack(again)
        return ErrorMsg("STATE", "a certificate is already installed; send HELLO to start a new session")


# The transition table: which message each state accepts (ERROR is accepted everywhere: an abort).
_TABLE: frozenset[tuple[State, MsgType]] = frozenset(
    {(s, MsgType.HELLO) for s in State if s is not State.INSTALLING}
    | {
        (State.READY, MsgType.CSR_REQUEST),
        (State.AWAIT_CERT, MsgType.CSR_REQUEST),
        (State.AWAIT_CERT, MsgType.CERTIFICATE),
        (State.DONE, MsgType.CERTIFICATE),  # a resend after a lost ACK
    }
)


# -- the runner ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeOutcome:
    """How a tether session ended: the thumbprint installed (None: nothing was) and why it ended."""

    thumbprint: str | None
    detail: str

    @property
    def ok(self) -> bool:
        return self.thumbprint is not None


def serve(
    link: Link,
    tether: PhoneTether,
    install: Callable[[StoredIdentity], None],
    clock: Clock,
    *,
    session_timeout_s: float = 300.0,
    linger_s: float = 2.0,
    poll_s: float = 0.25,
    stop: threading.Event | None = None,
) -> ServeOutcome:
    """Answer the PC until an identity is installed (then ``linger_s`` more of quiet, to repeat a lost ACK),
    the link goes down, or ``stop`` is set. A session silent for ``session_timeout_s`` is dropped."""
    decoder = FrameDecoder(link.name)
    last = clock.monotonic()
    while not (stop is not None and stop.is_set()):
        try:
            data = link.recv(4096, poll_s)
        except LinkClosed as exc:
            return _lost(tether, decoder, exc)
        now = clock.monotonic()
        if data:
            last = now
        elif tether.state is State.DONE and now - last >= linger_s:
            return ServeOutcome(tether.installed_thumbprint, "installed")
        elif tether.in_session and now - last >= session_timeout_s:
            log.warning("tether: no word from the PC for %.0f s; session dropped", session_timeout_s)
            tether.reset()
        try:
            for event in decoder.events(data):
                reply = _step(event, tether, install, clock, link.name)
                if reply is not None:
                    link.send(encode_message(reply))
        except HalError as exc:
            return _lost(tether, decoder, exc)
    return ServeOutcome(tether.installed_thumbprint, "stopped")


def _step(
    event: Frame | FrameError,
    tether: PhoneTether,
    install: Callable[[StoredIdentity], None],
    clock: Clock,
    name: str,
) -> Message | None:
    if isinstance(event, FrameError):
        log.warning("tether: refused: %s", event.detail)
        return tether.refuse(event)
    try:
        msg = decode_message(event, name)
    except FrameError as exc:
        log.warning("tether: refused: %s", exc.detail)
        return ErrorMsg("MALFORMED", exc.detail)
    out = tether.receive(msg, clock.now())
    if not isinstance(out, Install):
        if isinstance(out, ErrorMsg):
            log.warning("tether: %s answered with %s: %s", msg.TYPE.name, out.code, out.reason)
        return out
    try:
        install(out.identity)
    except Exception as exc:  # the PC must hear why, whatever the storage raised
        log.error("tether: install failed: %s", one_line(exc))
        return tether.install_failed(one_line(exc))
    log.info("tether: installed certificate %s", out.thumbprint)
    return tether.installed()


def _lost(tether: PhoneTether, decoder: FrameDecoder, exc: HalError) -> ServeOutcome:
    cut = f"; {decoder.buffered} bytes of an unfinished frame discarded" if decoder.in_frame else ""
    was = tether.state
    tether.reset()
    if tether.installed_thumbprint:
        return ServeOutcome(tether.installed_thumbprint, f"installed; then the link was lost ({exc.detail})")
    detail = f"link lost while {was.value} ({exc.detail}){cut}; nothing installed"
    log.warning("tether: %s", detail)
    return ServeOutcome(None, detail)
