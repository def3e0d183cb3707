"""The lab registrar's side of TLS-DSK sign-in for one TLS connection, sans-IO (protocol.md §8.2–8.5).

:meth:`RegistrarConnection.handle` takes one request and the time and returns what to send, the binding
changes for the store and the outcome for the provisioning log; ``tools.pool.registrar`` moves the bytes.
Nothing a phone sends makes it raise: malformed requests and TLS garbage get ``400`` and ``close``.

Decisions of ours where §8 is silent:

- A signed REGISTER that fails verification (``BAD_SIGNATURE``, ``REPLAY``, ``SA_EXPIRED``, unknown
  opaque) gets ``401`` with a fresh challenge, as MS-SIPAE does for a lost SA: the phone can recover by
  redoing B–D, whereas a ``403`` would end its sign-in. An expired SA is dropped; a bad signature or a
  replay leaves the SA alone (only the TLS peer can send on this connection, and the counter only moves on
  accepted messages). Certificate refusals (§8.3) are ``403`` + ``ms-diagnostics`` and drop the handshake.
- The SA lives ``min(client cert expiry, 8 h)``; the phone redoes B–D 5 min earlier (see regflow).
- An SA is bound to the From AOR the certificate was judged for; a signed REGISTER whose From or To names
  another AOR is ``403`` 4103. Every signed REGISTER re-runs the certificate check (store: published, not
  revoked), so a revocation takes effect at the next refresh, not at the next handshake.
- After D every answer is signed (§8.4): 200, and 400/403/405/503 when the request names an SA of this
  connection (a 401 challenge never is). A 403 under an SA ends that SA (§8.3).
- Only the signed ``Expires`` header counts (``agent.wire.regmsg.signed_expiry``): a Contact ``expires``
  parameter that contradicts it is a ``400`` (and close), the 200 states the grant in the header only.
  ``Expires: 0`` unbinds the Contact; other values are clamped to the policy.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.stages import StageError, WireError, one_line
from agent.wire.regmsg import (
    REALM,
    VERSION,
    add_auth_header,
    aor_key,
    credentials,
    signed_expiry,
    signed_fields,
)
from agent.wire.sip import SipMessage, build_response, parse_name_addr
from agent.wire.sipauth import format_auth_params, format_ms_diagnostics, has_control
from agent.wire.sipsig import SCHEME, SecurityAssociation
from agent.wire.tlsdsk import TlsDskError, TlsDskServer, gssapi_decode, gssapi_encode
from tools.pool.regtypes import (
    AOR_MISMATCH,
    CERT_UNKNOWN,
    REDIRECT_REASON,
    ClientCheck,
    ExpiryPolicy,
    Handled,
    Outcome,
    RegistrationEvent,
    server_sa_lifetime,
)

__all__ = ["RegistrarConnection"]

MAX_PENDING = 2  # handshakes between B and C per connection
MAX_SAS = 4


@dataclass
class _Handshake:
    """One TLS-DSK handshake between B and C, bound to B's From AOR (C must not change it, and the SA
    belongs to it, whichever flight carried the certificate); the check reads aor/at, leaves its verdict."""

    aor: str
    at: datetime
    server: TlsDskServer | None = None
    refusal: tuple[int, str] | None = None


@dataclass
class _Sa:
    """An established SA, the AOR key it authenticated and the chain judged for it (re-judged per refresh)."""

    sa: SecurityAssociation
    aor: str
    thumbprint: str
    chain: tuple[x509.Certificate, ...]


@dataclass
class _Config:
    fqdn: str
    realm: str
    sts_uri: str
    tls_chain: Sequence[x509.Certificate]
    tls_key: rsa.RSAPrivateKey
    verify_client: ClientCheck
    policy: ExpiryPolicy
    sa_lifetime: Callable[[datetime, datetime], timedelta]
    redirect_to: tuple[str, int] | None
    allow_tls10: bool
    tag: str = field(default_factory=lambda: secrets.token_hex(5))


class _Refuse(Exception):
    """Internal: answer 403 with this ms-diagnostics (signed under ``held`` if given), log it as failed."""

    def __init__(self, diag: tuple[int, str], held: _Sa | None = None) -> None:
        super().__init__(diag[1])
        self.diag, self.held = diag, held


class RegistrarConnection:
    """The registrar's state for one TLS connection: handshakes in progress and established SAs."""

    def __init__(
        self,
        fqdn: str,
        sts_uri: str,
        tls_chain: Sequence[x509.Certificate],
        tls_key: rsa.RSAPrivateKey,
        verify_client: ClientCheck,
        *,
        realm: str = REALM,
        policy: ExpiryPolicy | None = None,
        sa_lifetime: Callable[[datetime, datetime], timedelta] = server_sa_lifetime,
        redirect_to: tuple[str, int] | None = None,
        allow_tls10: bool = True,
    ) -> None:
        self._cfg = _Config(
            fqdn,
            realm,
            sts_uri,
            tuple(tls_chain),
            tls_key,
            verify_client,
            policy or ExpiryPolicy(),
            sa_lifetime,
            redirect_to,
            allow_tls10,
        )
        self._pending: OrderedDict[str, _Handshake] = OrderedDict()
        self._sas: OrderedDict[str, _Sa] = OrderedDict()

    @property
    def security_associations(self) -> tuple[SecurityAssociation, ...]:
        return tuple(s.sa for s in self._sas.values())

    def handle(self, request: SipMessage, now: datetime) -> Handled:
        """Answer one message from the phone. Responses from the phone and ACKs get no answer."""
        if not request.is_request or request.method == "ACK":
            return Handled()
        aor = ""
        try:
            aor = _aor(request)
            if request.method != "REGISTER":
                return Handled((self._not_allowed(request),))
            if self._cfg.redirect_to is not None:
                return self._redirect(request, aor)
            return self._register(request, aor, now)
        except _Refuse as refusal:
            return self._refused(request, aor, refusal)
        except (WireError, TlsDskError) as exc:
            return self._bad_request(request, aor, exc.detail)

    def refuse(self, request: SipMessage, code: int, reason: str) -> SipMessage:
        """A 403 with ms-diagnostics for ``request``, signed under the SA it names (which it ends); for the
        I/O layer when the store refuses the binding this core granted."""
        held = self._sa_of(request)
        msg = self._respond(request, 403, "Forbidden", [("ms-diagnostics", _diagnostics(code, reason))], held)
        self._drop(held)
        return msg

    def answer(
        self, request: SipMessage, status: int, reason: str, extra: Sequence[tuple[str, str]] = ()
    ) -> SipMessage | None:
        """A response signed under the SA ``request`` names (unsigned when it names none); None when the
        request is too broken to answer. For the I/O layer's own answers (503 when unhealthy)."""
        held = self._sa_of(request)
        try:
            return self._respond(request, status, reason, extra, held)
        except WireError:
            pass
        try:
            return self._respond(request, status, reason, extra)
        except WireError:
            return None

    # -- REGISTER -----------------------------------------------------------------------------------

    def _register(self, request: SipMessage, aor: str, now: datetime) -> Handled:
        cred = credentials(request, "Authorization")
        if cred is None:
            return Handled((self._challenge(request),))
        params = cred.params
        flight, opaque = params.get("gssapi-data"), params.get("opaque")
        if flight is not None and opaque is None:
            return Handled((self._flight_b(request, aor, flight, now),))
        if flight is not None:
            return self._flight_c(request, aor, opaque or "", flight, now)
        if params.get("response") is not None:
            return self._signed(request, aor, params, now)
        raise WireError("TLS-DSK credentials carry neither gssapi-data nor response")

    def _flight_b(self, request: SipMessage, aor: str, flight: str, now: datetime) -> SipMessage:
        records = gssapi_decode(flight)
        hs = _Handshake(aor, now)
        hs.server = TlsDskServer(
            self._cfg.tls_chain, self._cfg.tls_key, self._checker(hs), allow_tls10=self._cfg.allow_tls10
        )
        out = hs.server.step(records)
        opaque = self._new_opaque()
        self._pending[opaque] = hs
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
        return self._flight_response(request, opaque, out)

    def _checker(self, hs: _Handshake) -> Callable[[list[x509.Certificate]], str | None]:
        def decide(chain: list[x509.Certificate]) -> str | None:
            hs.refusal = self._judge(chain, hs.aor, hs.at)
            return None if hs.refusal is None else f"{hs.refusal[0]} {hs.refusal[1]}"

        return decide

    def _judge(self, chain: Sequence[x509.Certificate], aor: str, at: datetime) -> tuple[int, str] | None:
        try:
            return self._cfg.verify_client(list(chain), aor, at)
        except Exception as exc:  # the check must not raise; if it does, refuse rather than crash
            return CERT_UNKNOWN, f"CertUnknown: certificate check failed: {one_line(exc)}"

    def _flight_c(self, request: SipMessage, aor: str, opaque: str, flight: str, now: datetime) -> Handled:
        hs = self._pending.pop(opaque, None)
        if hs is None or hs.server is None:
            return self._rechallenge(request, aor, "UNKNOWN_SA", f"no handshake in progress for SA {opaque}")
        records = gssapi_decode(flight)
        if aor_key(aor) != aor_key(hs.aor):
            raise _Refuse((AOR_MISMATCH, f"AorMismatch: the handshake began for {hs.aor}, not {aor}"))
        hs.at = now
        try:
            out = hs.server.step(records)
        except TlsDskError as exc:
            if exc.code != "CLIENT_CERT_REFUSED":
                raise
            why = exc.reason or "client certificate refused"  # e.g. a certificate cryptography cannot parse
            raise _Refuse(hs.refusal or (CERT_UNKNOWN, f"CertUnknown: {why}")) from None
        chain = hs.server.client_chain
        lifetime = self._cfg.sa_lifetime(chain[0].not_valid_after_utc, now)
        sa = SecurityAssociation(hs.server.keys, opaque, "server", now, lifetime)
        thumb = chain[0].fingerprint(hashes.SHA1()).hex().upper()
        self._sas[opaque] = _Sa(sa, aor_key(hs.aor), thumb, chain)
        while len(self._sas) > MAX_SAS:
            self._sas.popitem(last=False)
        return Handled((self._flight_response(request, opaque, out),))

    def _signed(self, request: SipMessage, aor: str, params: dict[str, str], now: datetime) -> Handled:
        opaque = params.get("opaque", "")
        held = self._sas.get(opaque)
        if held is None:
            return self._rechallenge(request, aor, "UNKNOWN_SA", f"no security association {opaque!r}")
        cfg = self._cfg
        fields = signed_fields(request, cfg.realm, cfg.fqdn, params.get("crand", ""), params.get("cnum", ""))
        try:
            held.sa.verify_incoming(fields, params["response"], now)
        except StageError as exc:
            if exc.code == "SA_EXPIRED":
                del self._sas[opaque]
            return self._rechallenge(request, aor, exc.code, exc.detail)
        to_header = request.header("To") or ""
        if aor_key(aor) != held.aor or aor_key(parse_name_addr(to_header).uri) != held.aor:
            raise _Refuse((AOR_MISMATCH, f"AorMismatch: this SA authenticated sip:{held.aor}"), held)
        refusal = self._judge(held.chain, aor, now)  # revoked or unpublished since the handshake
        if refusal is not None:
            raise _Refuse(refusal, held)
        return self._bind(request, held, now)

    def _bind(self, request: SipMessage, held: _Sa, now: datetime) -> Handled:
        contacts = request.header_values("Contact")
        if len(contacts) != 1 or contacts[0] == "*":
            raise WireError("a REGISTER here binds exactly one Contact (no wildcard)")
        contact = parse_name_addr(contacts[0]).uri
        granted = self._cfg.policy.grant(signed_expiry(request, contact))
        extra = [("Expires", str(granted))]
        if granted:
            extra.insert(0, ("Contact", f"<{contact}>"))  # the grant is the signed Expires, not a parameter
        ok = self._respond(request, 200, "OK", extra, held)
        event = RegistrationEvent(
            f"sip:{held.aor}", contact, now, now + timedelta(seconds=granted), held.thumbprint
        )
        what = f"bound {contact} for {granted} s" if granted else f"unbound {contact}"
        outcome = Outcome(
            "ok", "200", f"sip:{held.aor}", f"{what} (SA {held.sa.sa_id}, cert {held.thumbprint})"
        )
        return Handled((ok,), (event,), outcome)

    # -- responses ----------------------------------------------------------------------------------

    def _respond(
        self,
        request: SipMessage,
        status: int,
        reason: str,
        extra: Sequence[tuple[str, str]] = (),
        held: _Sa | None = None,
    ) -> SipMessage:
        """A response with our To tag, signed (Authentication-Info, §8.4 incl. the status) under ``held``."""
        msg = build_response(
            request, status, reason, [("Server", "phoneprov-registrar"), *extra], self._cfg.tag
        )
        if held is None:
            return msg
        cfg = self._cfg
        srand, snum, rspauth = held.sa.sign_outgoing(signed_fields(msg, cfg.realm, cfg.fqdn))
        info = {
            "qop": "auth",
            "opaque": held.sa.sa_id,
            "srand": srand,
            "snum": snum,
            "rspauth": rspauth,
            "targetname": cfg.fqdn,
            "realm": cfg.realm,
            "version": VERSION,
        }
        return add_auth_header(msg, "Authentication-Info", format_auth_params(SCHEME, info))

    def _challenge(self, request: SipMessage) -> SipMessage:
        cfg = self._cfg
        params = {"realm": cfg.realm, "targetname": cfg.fqdn, "version": VERSION, "sts-uri": cfg.sts_uri}
        header = ("WWW-Authenticate", format_auth_params(SCHEME, params))
        return self._respond(request, 401, "Unauthorized", [header])

    def _rechallenge(self, request: SipMessage, aor: str, code: str, detail: str) -> Handled:
        return Handled((self._challenge(request),), (), Outcome("failed", code, aor, one_line(detail)))

    def _flight_response(self, request: SipMessage, opaque: str, records: bytes) -> SipMessage:
        cfg = self._cfg
        params = {
            "opaque": opaque,
            "gssapi-data": gssapi_encode(records),
            "targetname": cfg.fqdn,
            "realm": cfg.realm,
            "version": VERSION,
        }
        return self._respond(
            request, 401, "Unauthorized", [("WWW-Authenticate", format_auth_params(SCHEME, params))]
        )

    def _redirect(self, request: SipMessage, aor: str) -> Handled:
        assert self._cfg.redirect_to is not None
        host, port = self._cfg.redirect_to
        where = f"[{host}]" if ":" in host else host
        contact = ("Contact", f"<sip:{where}:{port};transport=tls>")
        msg = self._respond(request, 301, REDIRECT_REASON, [contact])
        return Handled((msg,), (), Outcome("redirected", "301", aor, f"to home pool {where}:{port}"))

    def _not_allowed(self, request: SipMessage) -> SipMessage:
        return self._respond(
            request, 405, "Method Not Allowed", [("Allow", "REGISTER")], self._sa_of(request)
        )

    def _refused(self, request: SipMessage, aor: str, refusal: _Refuse) -> Handled:
        code, reason = refusal.diag
        extra = [("ms-diagnostics", _diagnostics(code, reason))]
        try:
            msg = self._respond(request, 403, "Forbidden", extra, refusal.held)
        except WireError as exc:
            return self._bad_request(request, aor, exc.detail)
        finally:
            self._drop(refusal.held)
        return Handled((msg,), (), Outcome("failed", str(code), aor, one_line(reason)))

    def _bad_request(self, request: SipMessage, aor: str, detail: str) -> Handled:
        outcome = Outcome("failed", "400", aor, one_line(detail))
        msg = self.answer(request, 400, "Bad Request")
        return Handled(() if msg is None else (msg,), (), outcome, close=True)

    # -- helpers ------------------------------------------------------------------------------------

    def _sa_of(self, request: SipMessage) -> _Sa | None:
        """The established SA ``request`` names by its opaque, else None (the answer goes unsigned)."""
        try:
            cred = credentials(request, "Authorization")
        except WireError:
            cred = None
        opaque = cred.params.get("opaque") if cred else None
        return self._sas.get(opaque) if opaque else None

    def _drop(self, held: _Sa | None) -> None:
        if held is not None:
            self._sas.pop(held.sa.sa_id, None)

    def _new_opaque(self) -> str:
        while True:
            opaque = secrets.token_hex(4).upper()
            if opaque not in self._pending and opaque not in self._sas:
                return opaque


def _diagnostics(code: int, reason: str) -> str:
    """ms-diagnostics whose reason may quote a hostile certificate's names: control characters become '?'."""
    return format_ms_diagnostics(code, "".join("?" if has_control(c) else c for c in reason))


def _aor(request: SipMessage) -> str:
    """The From URI: whose certificate the registrar judges (§8.3)."""
    sender = request.header("From")
    if sender is None:
        raise WireError("REGISTER without From")
    return parse_name_addr(sender).uri
