"""Stage REGISTER without sockets: the phone's RegisterFlow against the registrar's RegistrarConnection
(protocol.md §8.2–8.5), every message through the SIP codec, real TLS-DSK handshakes in memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.enroll import generate_key
from agent.stages import StageError
from agent.wire.regflow import Redirect, Registered, RegisterFlow
from agent.wire.regmsg import REALM, add_auth_header, credentials, signed_fields
from agent.wire.sip import SipMessage, build_response, parse_name_addr
from agent.wire.sipauth import format_auth_params, parse_ms_diagnostics
from tests.agent.regpki import ALICE, BOB, POOL, STS, Pki, T, exchange, make_pki, phone, registrar, wire
from tools.pool.ca import thumbprint
from tools.pool.regcore import RegistrarConnection
from tools.pool.regtypes import Handled
from tools.pool.store.contract import PublishedCert
from tools.pool.store.sqlite import SqliteStore


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    pki = make_pki(tmp_path_factory.mktemp("regflow"))
    yield pki
    pki.store.close()


def signed_in(pki: Pki, expires_s: int = 600) -> tuple[RegisterFlow, RegistrarConnection, Registered]:
    flow, conn = phone(pki, expires_s=expires_s), registrar(pki)
    done = exchange(flow, conn, flow.start(), T)
    assert isinstance(done, Registered)
    return flow, conn, done


def refused(pki: Pki, flow: RegisterFlow, conn: RegistrarConnection | None = None) -> StageError:
    with pytest.raises(StageError) as caught:
        exchange(flow, conn or registrar(pki), flow.start(), T)
    return caught.value


# --- success --------------------------------------------------------------------------------------


def test_sign_in_runs_a_to_d_and_records_the_binding(pki: Pki) -> None:
    flow, conn = phone(pki), registrar(pki)
    log: list[Handled] = []
    done = exchange(flow, conn, flow.start(), T, log=log)
    assert isinstance(done, Registered)
    assert [h.messages[0].status for h in log] == [401, 401, 401, 200]
    assert (done.aor, done.registrar, done.expires_s, done.tls_version) == (ALICE, POOL, 600, "TLSv1.2")
    challenge = credentials(log[0].messages[0], "WWW-Authenticate")
    assert challenge is not None and challenge.params == {
        "realm": REALM,
        "targetname": POOL,
        "version": "4",
        "sts-uri": STS,
    }
    (event,) = log[-1].events
    assert event.aor == ALICE and event.thumbprint == thumbprint(pki.alice)
    assert event.contact == "sip:alice@192.0.2.7;transport=tls"
    assert event.expires_at == T + timedelta(seconds=600) and not event.unregister
    assert log[-1].outcome is not None and log[-1].outcome.code == "200"
    # Both ends hold the same SA; the phone's ends 5 min before the registrar's (§8.5).
    (server_sa,) = conn.security_associations
    assert flow.sa is not None and flow.sa.sa_id == server_sa.sa_id
    assert done.sa_expires_at == T + timedelta(hours=8) - timedelta(minutes=5)
    assert server_sa.expires_at == T + timedelta(hours=8)


def test_requests_are_one_call_with_rising_cseq(pki: Pki) -> None:
    flow, conn = phone(pki), registrar(pki)
    sent: list[SipMessage] = []
    msg: SipMessage | None = flow.start()
    while isinstance(msg, SipMessage):
        sent.append(msg)
        (answer,) = conn.handle(wire(msg), T).messages
        step = flow.receive(wire(answer), T)
        msg = step if isinstance(step, SipMessage) else None
    assert [m.header("CSeq") for m in sent] == [f"{n} REGISTER" for n in (1, 2, 3, 4)]
    assert len({m.header("Call-ID") for m in sent}) == 1
    assert len({m.header("From") for m in sent}) == 1
    assert len({m.header("Via") for m in sent}) == 4  # a new branch per request
    assert all((m.header("Via") or "").startswith("SIP/2.0/TLS 192.0.2.7;branch=z9hG4bK") for m in sent)
    assert sent[0].header("Authorization") is None
    d = credentials(sent[3], "Authorization")
    assert d is not None and set(d.params) >= {"opaque", "crand", "cnum", "response"}
    assert d.params["cnum"] == "1" and "gssapi-data" not in d.params


@pytest.mark.parametrize(("asked", "granted"), [(100, 300), (5000, 900), (600, 600), (300, 300)])
def test_expires_is_clamped_to_the_policy(pki: Pki, asked: int, granted: int) -> None:
    _, _, done = signed_in(pki, expires_s=asked)
    assert done.expires_s == granted


def test_refresh_is_signed_within_the_sa(pki: Pki) -> None:
    flow, conn, first = signed_in(pki)
    later = first.refresh_at
    assert later == T + timedelta(seconds=570)
    log: list[Handled] = []
    again = exchange(flow, conn, flow.refresh(later), later, log=log)
    assert isinstance(again, Registered) and again.registered_at == later
    assert len(log) == 1 and log[0].messages[0].status == 200  # no new handshake
    auth = credentials(log[0].messages[0], "Authentication-Info")
    assert auth is not None and auth.params["snum"] == "2"
    assert flow.sa is not None and flow.sa.peer_last == 2


def test_unregister_with_expires_zero(pki: Pki) -> None:
    flow, conn, _ = signed_in(pki)
    log: list[Handled] = []
    done = exchange(flow, conn, flow.refresh(T, expires_s=0), T, log=log)
    assert isinstance(done, Registered) and done.expires_s == 0
    (event,) = log[0].events
    assert event.unregister


def test_redirect_names_the_home_pool(pki: Pki) -> None:
    flow = phone(pki)
    step = exchange(flow, registrar(pki, redirect_to=("home.lab.test", 5071)), flow.start(), T)
    assert step == Redirect("home.lab.test", 5071, "sip:home.lab.test:5071;transport=tls", 301)


# --- signatures -----------------------------------------------------------------------------------


def _flip_rspauth(msg: SipMessage) -> SipMessage:
    info = credentials(msg, "Authentication-Info")
    if info is None:
        return msg
    sig = info.params["rspauth"]
    params = {**info.params, "rspauth": ("0" if sig[0] != "0" else "1") + sig[1:]}
    return msg.replace_header("Authentication-Info", format_auth_params(info.scheme, params))


def test_tampered_rspauth_is_bad_signature(pki: Pki) -> None:
    flow = phone(pki)
    with pytest.raises(StageError) as caught:
        exchange(flow, registrar(pki), flow.start(), T, tamper=_flip_rspauth)
    assert caught.value.code == "BAD_SIGNATURE"


def test_tampered_granted_expiry_is_bad_signature(pki: Pki) -> None:
    flow = phone(pki)

    def longer(msg: SipMessage) -> SipMessage:
        return msg.replace_header("Expires", "86400") if msg.status == 200 else msg

    with pytest.raises(StageError) as caught:
        exchange(flow, registrar(pki), flow.start(), T, tamper=longer)
    assert caught.value.code == "BAD_SIGNATURE"


def test_unsigned_200_is_refused(pki: Pki) -> None:
    flow = phone(pki)

    def strip(msg: SipMessage) -> SipMessage:
        return msg.without_header("Authentication-Info")

    with pytest.raises(StageError) as caught:
        exchange(flow, registrar(pki), flow.start(), T, tamper=strip)
    assert caught.value.code == "BAD_SIGNATURE"


def test_replayed_refresh_is_refused_and_the_sa_survives(pki: Pki) -> None:
    flow, conn, _ = signed_in(pki)
    refresh = flow.refresh(T)
    assert isinstance(exchange(flow, conn, refresh, T), Registered)
    replay = conn.handle(wire(refresh), T)
    assert replay.messages[0].status == 401 and not replay.events
    assert replay.outcome is not None and replay.outcome.code == "REPLAY"
    assert isinstance(exchange(flow, conn, flow.refresh(T), T), Registered)


def test_out_of_order_cnum_is_refused(pki: Pki) -> None:
    flow, conn, _ = signed_in(pki)
    older, newer = flow.refresh(T), flow.refresh(T)  # cnum 2, then 3
    assert isinstance(exchange(flow, conn, newer, T), Registered)
    late = conn.handle(wire(older), T)
    assert late.messages[0].status == 401
    assert late.outcome is not None and late.outcome.code == "REPLAY"


def test_forged_request_signature_gets_a_new_challenge(pki: Pki) -> None:
    flow, conn, _ = signed_in(pki)
    forged = flow.refresh(T).replace_header("Expires", "900")  # not what was signed
    answer = conn.handle(wire(forged), T)
    assert answer.messages[0].status == 401 and not answer.events
    assert answer.outcome is not None and answer.outcome.code == "BAD_SIGNATURE"


def test_signed_register_for_another_aor_is_4103(pki: Pki) -> None:
    flow, conn, _ = signed_in(pki)
    assert flow.sa is not None
    request = flow.refresh(T).without_header("Authorization").replace_header("From", f"<{BOB}>;tag=x1")
    crand, cnum, response = flow.sa.sign_outgoing(signed_fields(request, REALM, POOL))
    auth = credentials(flow.refresh(T), "Authorization")
    assert auth is not None
    params = {**auth.params, "crand": crand, "cnum": cnum, "response": response}
    answer = conn.handle(
        wire(add_auth_header(request, "Authorization", format_auth_params("TLS-DSK", params))), T
    )
    assert answer.messages[0].status == 403 and not answer.events
    diag = answer.messages[0].header("ms-diagnostics")
    assert diag is not None and parse_ms_diagnostics(diag).code == 4103
    assert credentials(answer.messages[0], "Authentication-Info") is not None  # signed: after D


# --- SA lifetime ----------------------------------------------------------------------------------


def test_phone_wants_a_new_sa_five_minutes_before_the_registrar_drops_it(pki: Pki) -> None:
    flow, conn, done = signed_in(pki)
    assert not flow.needs_new_sa(done.sa_expires_at - timedelta(seconds=1))
    assert flow.needs_new_sa(done.sa_expires_at)
    with pytest.raises(ValueError, match="reauthenticate"):
        flow.refresh(done.sa_expires_at)
    later = done.sa_expires_at
    log: list[Handled] = []
    again = exchange(flow, conn, flow.reauthenticate(later), later, log=log)
    assert isinstance(again, Registered) and again.sa_expires_at == later + timedelta(hours=8, minutes=-5)
    assert [h.messages[0].status for h in log] == [401, 401, 200]  # B, C, D: no A
    assert len(conn.security_associations) == 2


def test_expired_sa_at_the_registrar_leads_to_a_new_handshake(pki: Pki) -> None:
    flow, conn, _ = signed_in(pki)
    old = flow.sa
    phone_now = T + timedelta(hours=7, minutes=50)  # the phone still trusts its SA ...
    server_now = T + timedelta(hours=8, seconds=1)  # ... the registrar's has ended
    log: list[Handled] = []
    again = exchange(flow, conn, flow.refresh(phone_now), phone_now, server_now=server_now, log=log)
    assert isinstance(again, Registered)
    assert log[0].outcome is not None and log[0].outcome.code == "SA_EXPIRED"
    assert flow.sa is not None and old is not None and flow.sa.sa_id != old.sa_id
    assert [sa.sa_id for sa in conn.security_associations] == [flow.sa.sa_id]


def test_sa_is_cut_short_by_the_certificate(pki: Pki) -> None:
    at = pki.expired.not_valid_after_utc - timedelta(hours=2)
    flow, conn = phone(pki, cert=pki.expired), registrar(pki)
    done = exchange(flow, conn, flow.start(), at)
    assert isinstance(done, Registered)
    assert done.sa_expires_at == at + timedelta(hours=2, minutes=-5)


# --- certificate refusals (§8.3) ------------------------------------------------------------------


def test_certificate_of_another_user_is_4103(pki: Pki) -> None:
    error = refused(pki, phone(pki, cert=pki.bob))
    assert error.code == "4103" and "bob@lab.test" in error.detail


def test_unpublished_certificate_is_4101(pki: Pki) -> None:
    error = refused(pki, phone(pki, cert=pki.unpublished))
    assert error.code == "4101" and "not published" in error.detail


def test_revoked_certificate_is_4101(pki: Pki) -> None:
    error = refused(pki, phone(pki, cert=pki.revoked))
    assert error.code == "4101" and "revoked" in error.detail


def test_expired_certificate_is_4102(pki: Pki) -> None:
    """The registrar's clock is past the certificate, the phone's (1 h behind it) not yet."""
    flow = phone(pki, cert=pki.expired)
    phone_now = pki.expired.not_valid_after_utc - timedelta(hours=1)
    with pytest.raises(StageError) as caught:
        exchange(flow, registrar(pki), flow.start(), phone_now, server_now=T)
    assert caught.value.code == "4102"


def test_store_down_is_4104(pki: Pki, tmp_path: Path) -> None:
    down = SqliteStore(tmp_path / "down.sqlite")
    down.close()
    error = refused(pki, phone(pki), registrar(pki, store=down))
    assert error.code == "4104"


def test_refusal_drops_the_handshake(pki: Pki) -> None:
    flow, conn = phone(pki, cert=pki.unpublished), registrar(pki)
    with pytest.raises(StageError):
        exchange(flow, conn, flow.start(), T)
    assert conn.security_associations == ()


# --- the phone against odd registrars -------------------------------------------------------------


def _answer(request: SipMessage, status: int, reason: str, *headers: tuple[str, str]) -> SipMessage:
    return wire(build_response(request, status, reason, list(headers), to_tag="t1"))


def test_401_without_tls_dsk(pki: Pki) -> None:
    flow = phone(pki)
    a = flow.start()
    with pytest.raises(StageError) as caught:
        flow.receive(_answer(a, 401, "Unauthorized", ("WWW-Authenticate", 'NTLM realm="x"')), T)
    assert caught.value.code == "NO_TLS_DSK" and "NTLM" in caught.value.detail


def test_endless_challenges_are_a_401_loop(pki: Pki) -> None:
    flow = phone(pki)
    challenge = ("WWW-Authenticate", f'TLS-DSK realm="{REALM}", targetname="{POOL}", version=4')
    msg = flow.start()
    with pytest.raises(StageError) as caught:
        for _ in range(5):
            step = flow.receive(_answer(msg, 401, "Unauthorized", challenge), T)
            assert isinstance(step, SipMessage)
            msg = step
    assert caught.value.code == "401_LOOP"


@pytest.mark.parametrize(
    ("status", "reason", "headers", "code"),
    [
        (403, "Forbidden", [("ms-diagnostics", '4101;reason="CertUnknown"')], "4101"),
        (503, "Service Unavailable", [("ms-diagnostics", '4105;reason="Registrar unhealthy"')], "4105"),
        (500, "Server Internal Error", [], "UNEXPECTED"),
        (403, "Forbidden", [], "UNEXPECTED"),
    ],
)
def test_final_refusals(
    pki: Pki, status: int, reason: str, headers: list[tuple[str, str]], code: str
) -> None:
    flow = phone(pki)
    with pytest.raises(StageError) as caught:
        flow.receive(_answer(flow.start(), status, reason, *headers), T)
    assert caught.value.code == code
    if code == "UNEXPECTED":
        assert f"{status} {reason}" in caught.value.detail


def test_provisional_and_stray_responses_are_ignored(pki: Pki) -> None:
    flow = phone(pki)
    a = flow.start()
    assert flow.receive(_answer(a, 100, "Trying"), T) is None
    assert flow.receive(_answer(a.replace_header("CSeq", "7 REGISTER"), 401, "Unauthorized"), T) is None
    assert flow.receive(_answer(a.replace_header("Call-ID", "other"), 401, "Unauthorized"), T) is None


def test_garbage_flight_from_the_registrar_is_tls_dsk(pki: Pki) -> None:
    flow = phone(pki)
    b = flow.receive(_answer(flow.start(), 401, "Unauthorized", ("WWW-Authenticate", 'TLS-DSK realm="r"')), T)
    assert isinstance(b, SipMessage)
    flight = ("WWW-Authenticate", 'TLS-DSK opaque="AB", gssapi-data="FgMBAAUBAAAB", version=4')
    with pytest.raises(StageError) as caught:
        flow.receive(_answer(b, 401, "Unauthorized", flight), T)
    assert caught.value.code == "TLS_DSK"


def test_registrar_with_an_untrusted_certificate_is_refused_inside_tls_dsk(pki: Pki) -> None:
    flow = RegisterFlow(ALICE, POOL, 5061, pki.alice, pki.key, lambda chain: False, contact_host="::1")
    with pytest.raises(StageError) as caught:
        exchange(flow, registrar(pki), flow.start(), T)
    assert caught.value.code == "TLS_DSK" and "SERVER_CERT_REFUSED" in caught.value.detail


def test_ipv6_contact_is_bracketed(pki: Pki) -> None:
    flow = RegisterFlow(ALICE, POOL, 5061, pki.alice, pki.key, lambda chain: True, contact_host="::1")
    a = flow.start()
    assert a.header("Contact") == "<sip:alice@[::1];transport=tls>"
    assert a.uri == "sip:lab.test"


# --- regressions: expiry is the signed Expires header (both ends) ---------------------------------


def _contact_expires(value: int) -> Callable[[SipMessage], SipMessage]:
    """Give the 200's Contact (not covered by rspauth) an ``expires`` parameter."""

    def tamper(msg: SipMessage) -> SipMessage:
        contact = msg.header("Contact")
        if msg.status != 200 or contact is None:
            return msg
        return msg.replace_header("Contact", f"<{parse_name_addr(contact).uri}>;expires={value}")

    return tamper


@pytest.mark.parametrize("value", [86400, 0, 900])
def test_contact_expires_in_a_200_is_an_unsigned_expiry(pki: Pki, value: int) -> None:
    flow = phone(pki)
    with pytest.raises(StageError) as caught:
        exchange(flow, registrar(pki), flow.start(), T, tamper=_contact_expires(value))
    assert caught.value.code == "BAD_SIGNATURE" and "unsigned expiry" in caught.value.detail


def test_contact_expires_agreeing_with_the_signed_header_is_fine(pki: Pki) -> None:
    flow = phone(pki)
    done = exchange(flow, registrar(pki), flow.start(), T, tamper=_contact_expires(600))
    assert isinstance(done, Registered) and done.expires_s == 600


def test_registrar_states_the_grant_in_the_signed_header_only(pki: Pki) -> None:
    flow, conn = phone(pki), registrar(pki)
    log: list[Handled] = []
    exchange(flow, conn, flow.start(), T, log=log)
    ok = log[-1].messages[0]
    assert ok.status == 200 and ok.header("Expires") == "600"
    contact = ok.header("Contact")
    assert contact is not None and "expires" not in parse_name_addr(contact).params


@pytest.mark.parametrize("param", ["0", "86400"])
def test_signed_refresh_with_a_contradicting_contact_expires_is_400(pki: Pki, param: str) -> None:
    """The Contact is not signed: ``;expires=0`` on a signed ``Expires: 600`` must not unbind."""
    flow, conn, _ = signed_in(pki)
    refresh = flow.refresh(T)
    contact = refresh.header("Contact") or ""
    tampered = refresh.replace_header("Contact", f"{contact};expires={param}")
    handled = conn.handle(wire(tampered), T)
    assert [m.status for m in handled.messages] == [400] and not handled.events
    assert handled.outcome is not None and "unsigned expiry" in handled.outcome.detail
    assert credentials(handled.messages[0], "Authentication-Info") is not None  # signed: the SA is named


# --- regressions: every answer to a signed request is signed (§8.4) -------------------------------


def _resign(conn: RegistrarConnection, msg: SipMessage) -> SipMessage:
    """``msg`` signed anew by the registrar's SA, as a registrar that meant it would send it."""
    (sa,) = conn.security_associations
    unsigned = msg.without_header("Authentication-Info")
    srand, snum, rspauth = sa.sign_outgoing(signed_fields(unsigned, REALM, POOL))
    params = {"qop": "auth", "opaque": sa.sa_id, "srand": srand, "snum": snum, "rspauth": rspauth}
    return add_auth_header(unsigned, "Authentication-Info", format_auth_params("TLS-DSK", params))


def _refusal(request: SipMessage, status: int, code: int) -> SipMessage:
    reason = {403: "Forbidden", 503: "Service Unavailable", 400: "Bad Request"}[status]
    extra = [("ms-diagnostics", f'{code};reason="test"')] if code else []
    return wire(build_response(request, status, reason, extra, to_tag="t1"))


@pytest.mark.parametrize(("status", "code"), [(403, 4101), (503, 4105), (400, 0)])
def test_unsigned_refusal_of_a_signed_refresh_is_bad_signature(pki: Pki, status: int, code: int) -> None:
    flow, _, _ = signed_in(pki)
    with pytest.raises(StageError) as caught:
        flow.receive(_refusal(flow.refresh(T), status, code), T)
    assert caught.value.code == "BAD_SIGNATURE" and f"{status} " in caught.value.detail


@pytest.mark.parametrize(("status", "code", "expected"), [(403, 4101, "4101"), (503, 4105, "4105")])
def test_signed_refusal_of_a_refresh_is_taken(pki: Pki, status: int, code: int, expected: str) -> None:
    flow, conn, _ = signed_in(pki)
    answer = wire(_resign(conn, _refusal(flow.refresh(T), status, code)))
    with pytest.raises(StageError) as caught:
        flow.receive(answer, T)
    assert caught.value.code == expected
    assert (flow.sa is None) is (status == 403)  # §8.3: a 403 after D ends the SA; a 503 does not


def test_badly_signed_refusal_is_bad_signature(pki: Pki) -> None:
    flow, conn, _ = signed_in(pki)
    answer = _flip_rspauth(_resign(conn, _refusal(flow.refresh(T), 403, 4101)))
    with pytest.raises(StageError) as caught:
        flow.receive(wire(answer), T)
    assert caught.value.code == "BAD_SIGNATURE" and flow.sa is not None


def test_unsigned_challenge_to_a_signed_refresh_starts_a_new_handshake(pki: Pki) -> None:
    flow, _, _ = signed_in(pki)
    challenge = ("WWW-Authenticate", f'TLS-DSK realm="{REALM}", targetname="{POOL}", version=4')
    step = flow.receive(wire(build_response(flow.refresh(T), 401, "Unauthorized", [challenge], "t1")), T)
    assert isinstance(step, SipMessage) and flow.state == "B"


# --- regressions: revocation is re-checked on every signed REGISTER -------------------------------


def test_revocation_takes_effect_at_the_next_refresh(pki: Pki) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice@lab.test")]))
        .sign(pki.key, hashes.SHA256())
    )
    cert = pki.ca.issue_user_cert(csr, ALICE, 4320, T - timedelta(hours=1))
    pki.store.publish(
        PublishedCert(
            ALICE, "dev-revoke-later", thumbprint(cert), f"{cert.serial_number:x}",
            cert.not_valid_before_utc, cert.not_valid_after_utc, T, cert.public_bytes(Encoding.DER),
        )
    )  # fmt: skip
    flow, conn = phone(pki, cert=cert), registrar(pki)
    assert isinstance(exchange(flow, conn, flow.start(), T), Registered)
    pki.store.revoke(thumbprint(cert))
    log: list[Handled] = []
    with pytest.raises(StageError) as caught:
        exchange(flow, conn, flow.refresh(T), T, log=log)
    assert caught.value.code == "4101" and "revoked" in caught.value.detail
    assert not log[0].events and log[0].outcome is not None and log[0].outcome.code == "4101"
    assert conn.security_associations == () and flow.sa is None  # both ends dropped the SA


# --- regressions: certificates near their end, stray responses, odd answers -----------------------


def test_certificate_with_under_5_min_left_is_cert_expiring(pki: Pki) -> None:
    at = pki.expired.not_valid_after_utc - timedelta(minutes=4)
    flow, conn = phone(pki, cert=pki.expired), registrar(pki)
    log: list[Handled] = []
    with pytest.raises(StageError) as caught:
        exchange(flow, conn, flow.start(), at, log=log)
    assert caught.value.code == "CERT_EXPIRING" and "re-provision" in caught.value.remedy.lower()
    assert len(log) == 1  # only A went out: no TLS-DSK was started


def test_reauthentication_with_an_expiring_certificate_is_cert_expiring(pki: Pki) -> None:
    at = pki.expired.not_valid_after_utc - timedelta(hours=2)
    flow, conn = phone(pki, cert=pki.expired), registrar(pki)
    done = exchange(flow, conn, flow.start(), at)
    assert isinstance(done, Registered)
    with pytest.raises(StageError) as caught:
        flow.reauthenticate(done.sa_expires_at)
    assert caught.value.code == "CERT_EXPIRING"


def test_response_without_cseq_is_ignored(pki: Pki) -> None:
    flow = phone(pki)
    a = flow.start()
    stray = wire(build_response(a, 401, "Unauthorized", [], to_tag="t1").without_header("CSeq"))
    assert flow.receive(stray, T) is None
    assert flow.state == "A"


def test_certificate_from_a_foreign_ca_is_4101(pki: Pki) -> None:
    rogue_key = generate_key(2048)
    rogue = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rogue Root")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice@lab.test")]))
        .issuer_name(rogue)
        .public_key(pki.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T - timedelta(days=1))
        .not_valid_after(T + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ALICE)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(rogue_key, hashes.SHA256())
    )
    error = refused(pki, phone(pki, cert=cert))
    assert error.code == "4101" and "not issued by the pool CA" in error.detail


def test_200_to_an_unauthenticated_register_is_unexpected(pki: Pki) -> None:
    flow = phone(pki)
    ok = _answer(flow.start(), 200, "OK", ("Expires", "600"))
    with pytest.raises(StageError) as caught:
        flow.receive(ok, T)
    assert caught.value.code == "UNEXPECTED" and "unauthenticated" in caught.value.detail


def test_a_grant_of_0_s_is_unexpected(pki: Pki) -> None:
    flow, conn, _ = signed_in(pki)
    refresh = flow.refresh(T)
    (ok,) = conn.handle(wire(refresh), T).messages
    zero = _resign(conn, ok.without_header("Contact").replace_header("Expires", "0"))
    with pytest.raises(StageError) as caught:
        flow.receive(wire(zero), T)
    assert caught.value.code == "UNEXPECTED" and "0 s" in caught.value.detail
