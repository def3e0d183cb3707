"""The phone's side of stage REGISTER as a sans-IO state machine (protocol.md §8.2–8.5).

:class:`RegisterFlow` writes REGISTERs A–D and the signed refreshes, and reads the registrar's answers;
the caller moves the bytes (``agent.register``). Time comes in as ``now`` arguments; randomness (Call-ID,
tags, branches, crand) comes from :mod:`secrets`.

Exchange: A (no credentials) → 401 challenge → B (ClientHello) → 401 opaque + server flight → C (client
flight) → 401 Finished → D (signed) → 200 with ``rspauth``. A 401 *challenge* (no ``gssapi-data``) at any
point starts a fresh handshake at B; at most :data:`MAX_HANDSHAKES` per registration, then ``401_LOOP``.

Signatures (§8.4): every final answer to a signed request (D, refreshes) must carry a valid ``rspauth``
under the SA — 200 and refusals alike (403, 503, 400) — or it is ``BAD_SIGNATURE``; a 401 challenge is the
exception (it starts a new handshake). Answers to the unsigned handshake requests A–C are taken unsigned,
since the registrar can sign only under an SA the request names. A signed 403 ends the SA (§8.3). The
binding's length is the signed ``Expires`` header (:func:`agent.wire.regmsg.signed_expiry`). A certificate
with less than 5 min left would give an empty SA, so B is refused with ``CERT_EXPIRING`` (re-provision).

Two decisions of ours: the SA this side keeps ends at ``min(cert expiry, 8 h) − 5 min`` (§8.5), which is
when :meth:`RegisterFlow.needs_new_sa` turns true; the registrar keeps its SA until ``min(cert expiry, 8 h)``,
so a re-authentication at that moment never races the registrar's expiry. A response is judged under the
SA at the time its request was signed, so a 200 arriving just after the SA ends is not refused.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.stages import Stage, StageError, WireError, one_line
from agent.wire.regmsg import (
    REALM,
    UNSIGNED_EXPIRY,
    VERSION,
    add_auth_header,
    credentials,
    signed_expiry,
    signed_fields,
    sip_target,
)
from agent.wire.sip import SipMessage, build_request, cseq, parse_name_addr
from agent.wire.sipauth import AuthChallenge, format_auth_params, parse_ms_diagnostics
from agent.wire.sipsig import SCHEME, SecurityAssociation, sa_lifetime
from agent.wire.tlsdsk import TlsDskClient, TlsDskError, gssapi_decode, gssapi_encode

__all__ = ["MAX_HANDSHAKES", "REFRESH_LEAD", "Redirect", "RegisterFlow", "Registered", "Step", "failed"]

#: TLS-DSK handshakes (B–D) allowed between two 200s before the flow gives up with 401_LOOP.
MAX_HANDSHAKES = 2
#: Re-register this long before the binding expires (§8.5).
REFRESH_LEAD = timedelta(seconds=30)
USER_AGENT = "phoneprov"


@dataclass(frozen=True)
class Redirect:
    """A 3xx naming another registrar (the user's home pool): reconnect there and restart at A."""

    host: str
    port: int
    contact: str
    status: int


@dataclass(frozen=True)
class Registered:
    """A binding the registrar confirmed with a verified ``rspauth``.

    ``expires_s`` is what the registrar granted (it clamps the request to its own range); ``sa_expires_at``
    is when this phone's SA ends and B–D must be redone; ``tls_version`` is the TLS inside TLS-DSK;
    ``redirected_from`` is ``host:port`` of the registrar that sent the phone here, if one did.
    """

    aor: str
    registrar: str
    port: int
    expires_s: int
    registered_at: datetime
    sa_expires_at: datetime
    tls_version: str
    redirected_from: str | None = None

    @property
    def expires_at(self) -> datetime:
        return self.registered_at + timedelta(seconds=self.expires_s)

    @property
    def refresh_at(self) -> datetime:
        """30 s before the binding expires, or half-way for a binding shorter than a minute."""
        lead = min(REFRESH_LEAD, timedelta(seconds=self.expires_s / 2))
        return self.expires_at - lead


#: What :meth:`RegisterFlow.receive` asks of the caller: send this request, follow a redirect, done, or
#: nothing (a provisional or stray response: keep reading).
Step = SipMessage | Redirect | Registered | None


@dataclass(frozen=True)
class _Outstanding:
    """The REGISTER awaiting its answer: its CSeq, when it was signed (None if unsigned), its Expires."""

    cseq: int
    signed_at: datetime | None
    expires_s: int


def failed(code: str, detail: str, remedy: str = "") -> StageError:
    """Stage REGISTER failed with ``code``: the one constructor both the flow and its I/O layer use."""
    return StageError(Stage.REGISTER, code, one_line(detail), remedy)


def _host_in_uri(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class RegisterFlow:
    """One registration: one Call-ID and From tag, CSeq +1 per REGISTER, one SA at a time."""

    def __init__(
        self,
        aor: str,
        registrar: str,
        port: int,
        cert: x509.Certificate,
        key: rsa.RSAPrivateKey,
        verify_server_cert: Callable[[list[x509.Certificate]], bool],
        *,
        contact_host: str,
        expires_s: int = 600,
        allow_tls10: bool = True,
    ) -> None:
        user, at, domain = aor.removeprefix("sip:").partition("@")
        if not aor.startswith("sip:") or not user or not at or not domain:
            raise ValueError(f"AOR {aor!r} is not sip:user@domain")
        if not 0 <= expires_s < 2**31:
            raise ValueError(f"expires_s {expires_s} is out of range")
        self.aor, self.registrar, self.port = aor, registrar, port
        self.cert, self._key, self._verify = cert, key, verify_server_cert
        self.expires_s, self._allow_tls10 = expires_s, allow_tls10
        self._request_uri = f"sip:{domain}"
        self._contact = f"sip:{user}@{_host_in_uri(contact_host)};transport=tls"
        self._via_host = _host_in_uri(contact_host)
        self.call_id = secrets.token_hex(16)
        self._tag = secrets.token_hex(5)
        self._cseq = 0
        self._state = "new"
        self._outstanding: _Outstanding | None = None
        self._handshakes = 0
        self._tls: TlsDskClient | None = None
        self._realm, self._target = REALM, registrar
        self._opaque: str | None = None
        self._sa: SecurityAssociation | None = None
        self._registered: Registered | None = None

    # -- what the caller reads -----------------------------------------------------------------------

    @property
    def state(self) -> str:
        """new, A, B, C, D, refresh, registered, redirected."""
        return self._state

    @property
    def sa(self) -> SecurityAssociation | None:
        return self._sa

    @property
    def registered(self) -> Registered | None:
        return self._registered

    def needs_new_sa(self, now: datetime) -> bool:
        """True once this phone's SA has ended (or never existed): redo B–D with :meth:`reauthenticate`."""
        return self._sa is None or self._sa.is_expired(now)

    # -- requests ------------------------------------------------------------------------------------

    def start(self) -> SipMessage:
        """REGISTER A: no credentials; the registrar answers with its TLS-DSK challenge."""
        if self._state != "new":
            raise ValueError("start() is for a new flow")
        return self._send("A", None)

    def refresh(self, now: datetime, expires_s: int | None = None) -> SipMessage:
        """A re-REGISTER signed within the current SA (``expires_s=0`` unregisters). Also allowed while a
        refresh is unanswered: the new one supersedes it (only its answer is taken)."""
        if self._state not in ("registered", "refresh") or self._sa is None:
            raise ValueError("refresh() needs a registration")
        if self._sa.is_expired(now):
            raise ValueError("the SA has ended; reauthenticate() instead")
        return self._signed_request("refresh", now, expires_s)

    def reauthenticate(self, now: datetime) -> SipMessage:
        """REGISTER B with a new ClientHello: a new SA for an existing registration (§8.5)."""
        if self._state != "registered":
            raise ValueError("reauthenticate() needs a registration")
        return self._flight_b(now)

    def _send(self, state: str, auth: str | None) -> SipMessage:
        self._cseq += 1
        self._state = state
        self._outstanding = _Outstanding(self._cseq, None, self.expires_s)
        return self._request(auth, self.expires_s)

    def _request(self, auth: str | None, expires_s: int) -> SipMessage:
        headers = [
            ("Via", f"SIP/2.0/TLS {self._via_host};branch=z9hG4bK{secrets.token_hex(8)}"),
            ("Max-Forwards", "70"),
            ("From", f"<{self.aor}>;tag={self._tag}"),
            ("To", f"<{self.aor}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self._cseq} REGISTER"),
            ("Contact", f"<{self._contact}>"),
            ("Expires", str(expires_s)),
            ("User-Agent", USER_AGENT),
        ]
        if auth is not None:
            headers.append(("Authorization", auth))
        return build_request("REGISTER", self._request_uri, headers)

    def _auth(self, **params: str) -> str:
        base = {"qop": "auth", "opaque": self._opaque or "", "realm": self._realm, "targetname": self._target}
        if self._opaque is None:
            del base["opaque"]
        return format_auth_params(SCHEME, {**base, **params})

    def _flight_b(self, now: datetime) -> SipMessage:
        not_after = self.cert.not_valid_after_utc
        if sa_lifetime(not_after, now) <= timedelta(0):
            raise failed(
                "CERT_EXPIRING",
                f"the certificate ends {not_after:%Y-%m-%d %H:%M:%S}Z, under 5 min from now: no SA possible",
                "Re-provision the phone's certificate (stages WEB_TICKET to CERT_PUBLISH, protocol.md §8.5): "
                "power-cycle the phone or sign in again with the PIN.",
            )
        if self._handshakes >= MAX_HANDSHAKES:
            raise failed("401_LOOP", f"the registrar asked for TLS-DSK {self._handshakes + 1} times in a row")
        self._handshakes += 1
        self._opaque = None
        try:
            self._tls = TlsDskClient(self.cert, self._key, self._verify, self._allow_tls10)
            hello = self._tls.hello()
        except TlsDskError as exc:
            raise failed("TLS_DSK", f"{exc.code}: {exc.detail}") from None
        return self._send("B", self._auth(**{"gssapi-data": gssapi_encode(hello), "version": VERSION}))

    def _signed_request(self, state: str, now: datetime, expires_s: int | None) -> SipMessage:
        assert self._sa is not None and self._opaque is not None
        exp = self.expires_s if expires_s is None else expires_s
        self._cseq += 1
        unsigned = self._request(None, exp)
        crand, cnum, response = self._sa.sign_outgoing(signed_fields(unsigned, self._realm, self._target))
        self._state, self._outstanding = state, _Outstanding(self._cseq, now, exp)
        auth = self._auth(crand=crand, cnum=cnum, response=response)
        return add_auth_header(unsigned, "Authorization", auth)

    # -- responses -----------------------------------------------------------------------------------

    def receive(self, msg: SipMessage, now: datetime) -> Step:
        """Consume one message from the registrar; StageError(REGISTER) when sign-in cannot go on."""
        sent = self._outstanding
        try:
            if msg.is_request or sent is None or not self._answers(msg, sent):
                return None
            assert msg.status is not None
            if msg.status < 200:
                return None
            if msg.status == 401:
                return self._on_401(msg, now)
            if sent.signed_at is not None:
                self._verify_rspauth(msg, sent.signed_at)
            if msg.status == 200:
                return self._on_200(msg, now)
            if msg.status in (301, 302):
                return self._on_redirect(msg)
            return self._on_failure(msg, signed=sent.signed_at is not None)
        except WireError as exc:
            if exc.code == UNSIGNED_EXPIRY:
                raise failed("BAD_SIGNATURE", exc.detail) from None
            raise failed("MALFORMED", f"registrar sent a bad SIP response: {exc.detail}") from None

    def _answers(self, msg: SipMessage, sent: _Outstanding) -> bool:
        """Whether ``msg`` answers the outstanding REGISTER; one without a usable CSeq answers nothing."""
        if msg.header("Call-ID") != self.call_id:
            return False
        try:
            return cseq(msg) == (sent.cseq, "REGISTER")
        except WireError:
            return False

    def _on_401(self, msg: SipMessage, now: datetime) -> SipMessage:
        challenge = credentials(msg, "WWW-Authenticate")
        if challenge is None:
            offered = ", ".join(v.split(" ", 1)[0] for v in msg.header_values("WWW-Authenticate")) or "none"
            raise failed("NO_TLS_DSK", f"401 without a TLS-DSK challenge (schemes offered: {offered})")
        params = challenge.params
        flight = params.get("gssapi-data")
        if flight is None:
            self._realm = params.get("realm", REALM)
            self._target = params.get("targetname", self.registrar)
            return self._flight_b(now)
        try:
            if self._state == "B":
                return self._flight_c(challenge, flight)
            if self._state == "C":
                return self._flight_d(challenge, flight, now)
        except TlsDskError as exc:
            raise failed("TLS_DSK", f"{exc.code}: {exc.detail}") from None
        raise failed("TLS_DSK", f"the registrar sent a handshake flight in answer to REGISTER {self._state}")

    def _flight_c(self, challenge: AuthChallenge, flight: str) -> SipMessage:
        assert self._tls is not None
        opaque = challenge.params.get("opaque")
        if not opaque:
            raise failed("MALFORMED", "the 401 to REGISTER B has gssapi-data but no opaque (SA id)")
        records = self._tls.step(gssapi_decode(flight))
        self._opaque = opaque
        return self._send("C", self._auth(**{"gssapi-data": gssapi_encode(records), "version": VERSION}))

    def _flight_d(self, challenge: AuthChallenge, flight: str, now: datetime) -> SipMessage:
        assert self._tls is not None and self._opaque is not None
        if challenge.params.get("opaque") != self._opaque:
            raise failed("TLS_DSK", "the registrar's Finished flight names another SA (opaque changed)")
        keys = self._tls.finish(gssapi_decode(flight))
        lifetime = sa_lifetime(self.cert.not_valid_after_utc, now)
        self._sa = SecurityAssociation(keys, self._opaque, "client", now, lifetime)
        return self._signed_request("D", now, None)

    def _on_200(self, msg: SipMessage, now: datetime) -> Registered:
        sent = self._outstanding
        if self._state not in ("D", "refresh") or self._sa is None or sent is None or sent.signed_at is None:
            raise failed("UNEXPECTED", f"200 OK to an unauthenticated REGISTER {self._state}")
        requested = sent.expires_s
        granted = signed_expiry(msg, self._contact)
        granted = requested if granted is None else granted
        if granted == 0 and requested != 0:
            raise failed("UNEXPECTED", "the registrar granted 0 s for a registration")
        tls_version = self._sa.keys.protocol
        self._handshakes, self._state, self._outstanding = 0, "registered", None
        self._registered = Registered(
            self.aor, self.registrar, self.port, granted, now, self._sa.expires_at, tls_version
        )
        return self._registered

    def _verify_rspauth(self, msg: SipMessage, signed_at: datetime) -> None:
        """The answer to a signed request is signed under the SA that request was signed in (§8.4)."""
        what = f"{msg.status} {msg.reason}".strip()
        if self._sa is None:
            raise failed("BAD_SIGNATURE", f"{what} answers a signed REGISTER but the SA is gone")
        info = credentials(msg, "Authentication-Info")
        if info is None:
            raise failed("BAD_SIGNATURE", f"{what} without a TLS-DSK Authentication-Info (rspauth)")
        p = info.params
        if p.get("opaque") != self._sa.sa_id or not p.get("rspauth") or not p.get("snum"):
            raise failed("BAD_SIGNATURE", "Authentication-Info lacks rspauth/snum or names another SA")
        fields = signed_fields(msg, self._realm, self._target, p.get("srand", ""), p["snum"])
        try:
            self._sa.verify_incoming(fields, p["rspauth"], signed_at)
        except StageError as exc:
            raise failed("BAD_SIGNATURE", f"rspauth refused ({exc.code}): {exc.detail}") from None

    def _on_redirect(self, msg: SipMessage) -> Redirect:
        contact = msg.header("Contact")
        if not contact:
            raise failed("MALFORMED", f"{msg.status} redirect without a Contact")
        uri = parse_name_addr(contact).uri
        target = sip_target(uri)
        self._state, self._outstanding = "redirected", None
        assert msg.status is not None
        return Redirect(target.host, target.port, uri, msg.status)

    def _on_failure(self, msg: SipMessage, signed: bool) -> SipMessage:
        if signed and msg.status == 403:  # §8.3: a refusal after D ends the SA
            self._sa, self._opaque = None, None
        diagnostics = msg.header("ms-diagnostics")
        what = f"{msg.status} {msg.reason}".strip()
        if diagnostics and msg.status in (403, 503):
            diag = parse_ms_diagnostics(diagnostics)
            raise failed(str(diag.code), f"{what}: {diag.reason or 'no reason given'}")
        raise failed("UNEXPECTED", f"registrar answered REGISTER {self._state} with {what}")
