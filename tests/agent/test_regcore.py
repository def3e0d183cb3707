"""The registrar core against hostile or odd requests (never an exception out of handle()), and the small
helpers both ends share (agent/wire/regmsg.py)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.enroll import generate_key
from agent.stages import Stage, StageError, WireError
from agent.wire.regflow import Redirect, Registered, RegisterFlow
from agent.wire.regmsg import REALM, SipTarget, aor_key, credentials, sip_target
from agent.wire.sip import SipMessage, build_response
from agent.wire.sipauth import format_auth_params
from tests.agent.regpki import ALICE, POOL, Pki, T, exchange, make_pki, phone, registrar, wire
from tools.pool.ca import thumbprint
from tools.pool.regcheck import certificate_aors, client_checker
from tools.pool.regcore import RegistrarConnection
from tools.pool.regtypes import ExpiryPolicy, Handled, server_sa_lifetime
from tools.pool.store.contract import PublishedCert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    pki = make_pki(tmp_path_factory.mktemp("regcore"))
    yield pki
    pki.store.close()


def _with_auth(request: SipMessage, **params: str) -> SipMessage:
    return request.replace_header("Authorization", format_auth_params("TLS-DSK", params, quoted=params))


def _b(pki: Pki) -> SipMessage:
    """A REGISTER B as a real phone sends it (after A's challenge)."""
    flow = phone(pki)
    (challenge,) = registrar(pki).handle(wire(flow.start()), T).messages
    b = flow.receive(wire(challenge), T)
    assert isinstance(b, SipMessage)
    return b


@pytest.mark.parametrize(
    "flight",
    [
        "not base64 at all!",
        "",
        base64.b64encode(b"\x16\x03\x01\x00\x40" + b"\x01" * 10).decode(),  # truncated record
        base64.b64encode(b"GET / HTTP/1.1\r\n\r\n").decode(),
        base64.b64encode(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00").decode(),  # a record, not a hello
    ],
)
def test_garbage_gssapi_data_is_400_and_close(pki: Pki, flight: str) -> None:
    handled = registrar(pki).handle(wire(_with_auth(_b(pki), qop="auth", **{"gssapi-data": flight})), T)
    assert [m.status for m in handled.messages] == [400] and handled.close
    assert handled.outcome is not None and handled.outcome.code == "400"


def _c(pki: Pki) -> tuple[RegistrarConnection, SipMessage]:
    """A registrar half-way through a handshake and the phone's REGISTER C for it."""
    flow, conn = phone(pki), registrar(pki)
    msg = flow.start()
    for _ in range(2):
        (answer,) = conn.handle(wire(msg), T).messages
        step = flow.receive(wire(answer), T)
        assert isinstance(step, SipMessage)
        msg = step
    return conn, msg


def test_truncated_client_flight_c_is_400(pki: Pki) -> None:
    conn, c = _c(pki)
    auth = credentials(c, "Authorization")
    assert auth is not None
    data = base64.b64decode(auth.params["gssapi-data"])
    cut = {**auth.params, "gssapi-data": base64.b64encode(data[: len(data) // 2]).decode()}
    handled = conn.handle(wire(_with_auth(c, **cut)), T)
    assert [m.status for m in handled.messages] == [400] and handled.close


def test_credentials_without_flight_or_response_are_400(pki: Pki) -> None:
    handled = registrar(pki).handle(wire(_with_auth(_b(pki), qop="auth", realm=REALM)), T)
    assert [m.status for m in handled.messages] == [400]


def test_unknown_opaque_gets_a_new_challenge(pki: Pki) -> None:
    b = _b(pki)
    auth = credentials(b, "Authorization")
    assert auth is not None
    handled = registrar(pki).handle(wire(_with_auth(b, **{**auth.params, "opaque": "DEADBEEF"})), T)
    assert [m.status for m in handled.messages] == [401]
    challenge = credentials(handled.messages[0], "WWW-Authenticate")
    assert challenge is not None and "gssapi-data" not in challenge.params


def test_other_methods_are_405_signed_when_they_name_an_sa(pki: Pki) -> None:
    flow, conn = phone(pki), registrar(pki)
    a = flow.start()
    options = SipMessage(method="OPTIONS", uri="sip:lab.test", headers=a.headers)
    (before,) = conn.handle(wire(options), T).messages
    assert before.status == 405 and before.header("Allow") == "REGISTER"
    assert credentials(before, "Authentication-Info") is None
    assert isinstance(exchange(flow, conn, a, T), Registered)
    assert flow.sa is not None
    named = _with_auth(options, qop="auth", opaque=flow.sa.sa_id, crand="0", cnum="9", response="00")
    (after,) = conn.handle(wire(named), T).messages
    assert after.status == 405
    info = credentials(after, "Authentication-Info")
    assert info is not None and info.params["opaque"] == flow.sa.sa_id
    (anonymous,) = conn.handle(wire(options), T).messages  # names no SA: nothing to sign under
    assert credentials(anonymous, "Authentication-Info") is None
    ack = SipMessage(method="ACK", uri="sip:lab.test", headers=options.headers)
    assert conn.handle(wire(ack), T) == Handled()


def test_request_without_via_closes_without_an_answer(pki: Pki) -> None:
    handled = registrar(pki).handle(_b(pki).without_header("Via"), T)
    assert handled.messages == () and handled.close


_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    params=st.dictionaries(
        st.sampled_from(["gssapi-data", "opaque", "response", "crand", "cnum", "qop", "version"]),
        _VALUE,
        max_size=5,
    ),
    expires=st.one_of(st.none(), _VALUE),
)
def test_handle_never_raises(pki: Pki, params: dict[str, str], expires: str | None) -> None:
    request = _b(pki)
    if params:
        request = _with_auth(request, **params)
    if expires is not None and expires.strip(" \t") == expires:
        request = request.replace_header("Expires", expires)
    handled = registrar(pki).handle(request, T)
    assert len(handled.messages) <= 1
    assert all(m.status in (400, 401, 403) for m in handled.messages)
    assert not handled.events


# --- policy and helpers ---------------------------------------------------------------------------


def test_expiry_policy() -> None:
    policy = ExpiryPolicy()
    assert [policy.grant(v) for v in (None, 0, 1, 299, 300, 600, 900, 901, 2**32 - 1)] == [
        600, 0, 300, 300, 300, 600, 900, 900, 900,
    ]  # fmt: skip
    with pytest.raises(ValueError):
        ExpiryPolicy(min_s=600, default_s=300)


def test_server_sa_lifetime() -> None:
    assert server_sa_lifetime(T + timedelta(days=180), T) == timedelta(hours=8)
    assert server_sa_lifetime(T + timedelta(hours=1), T) == timedelta(hours=1)
    assert server_sa_lifetime(T - timedelta(hours=1), T) == timedelta(0)


@pytest.mark.parametrize(
    ("uri", "target"),
    [
        ("sip:home.lab.test:5071;transport=tls", SipTarget("home.lab.test", 5071)),
        ("sip:Home.Lab.Test", SipTarget("home.lab.test", 5061)),
        ("sips:alice@pool2.lab.test:5062", SipTarget("pool2.lab.test", 5062)),
        ("sip:[2001:db8::1]:5063;transport=tls", SipTarget("2001:db8::1", 5063)),
        ("sip:[2001:db8::1]", SipTarget("2001:db8::1", 5061)),
    ],
)
def test_sip_target(uri: str, target: SipTarget) -> None:
    assert sip_target(uri) == target


@pytest.mark.parametrize(
    "uri", ["http://x", "sip:", "sip:host:0", "sip:host:99999", "sip:host:5o61", "sip:[::1", "sip:[::1]x"]
)
def test_bad_sip_target(uri: str) -> None:
    with pytest.raises(WireError):
        sip_target(uri)


@given(st.text(max_size=80))
def test_sip_target_raises_only_wire_error(text: str) -> None:
    try:
        target = sip_target(text)
    except WireError:
        return
    assert target.host and 0 < target.port < 65536


def test_aor_key() -> None:
    assert aor_key("sip:Alice@Lab.Test") == aor_key("alice@lab.test") == "alice@lab.test"
    assert aor_key(f"SIP:bob@{POOL}") == f"bob@{POOL}"


def test_from_changed_between_b_and_c_is_4103(pki: Pki) -> None:
    conn, c = _c(pki)
    handled = conn.handle(wire(c.replace_header("From", "<sip:bob@lab.test>;tag=b0")), T)
    assert [m.status for m in handled.messages] == [403]
    diag = handled.messages[0].header("ms-diagnostics") or ""
    assert diag.startswith("4103;") and conn.security_associations == ()


_HEADER = st.sampled_from(["WWW-Authenticate", "Authentication-Info", "Contact", "ms-diagnostics", "Expires"])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    status=st.integers(100, 699),
    headers=st.lists(st.tuples(_HEADER, _VALUE.map(lambda v: v.strip(" \t"))), max_size=4),
)
def test_phone_takes_any_answer_without_crashing(
    pki: Pki, status: int, headers: list[tuple[str, str]]
) -> None:
    flow = phone(pki)
    answer = wire(build_response(flow.start(), status, "Whatever", headers, to_tag="t9"))
    try:
        step = flow.receive(answer, T)
    except StageError as exc:
        assert exc.stage is Stage.REGISTER and "\n" not in exc.detail
        return
    assert step is None or isinstance(step, SipMessage | Redirect)


# --- regressions ------------------------------------------------------------------------------------


def _signed_in(pki: Pki) -> tuple[RegisterFlow, RegistrarConnection]:
    flow, conn = phone(pki), registrar(pki)
    assert isinstance(exchange(flow, conn, flow.start(), T), Registered)
    return flow, conn


def test_400_to_a_request_naming_an_sa_is_signed(pki: Pki) -> None:
    flow, conn = _signed_in(pki)
    wildcard = flow.refresh(T).replace_header("Contact", "*")  # the Contact is not signed
    handled = conn.handle(wire(wildcard), T)
    assert [m.status for m in handled.messages] == [400] and handled.close
    info = credentials(handled.messages[0], "Authentication-Info")
    assert flow.sa is not None and info is not None and info.params["opaque"] == flow.sa.sa_id


def test_store_refusal_403_is_signed_and_ends_the_sa(pki: Pki) -> None:
    flow, conn = _signed_in(pki)
    refresh = flow.refresh(T)
    conn.handle(wire(refresh), T)
    msg = conn.refuse(wire(refresh), 4104, "DataStoreUnavailable: cannot record it")
    assert msg.status == 403 and credentials(msg, "Authentication-Info") is not None
    assert conn.security_associations == ()
    with pytest.raises(StageError) as caught:
        flow.receive(wire(msg), T)
    assert caught.value.code == "4104" and flow.sa is None


def test_answer_is_signed_only_under_the_sa_the_request_names(pki: Pki) -> None:
    flow, conn = _signed_in(pki)
    unavailable = [("ms-diagnostics", '4105;reason="Registrar unhealthy"')]
    signed = conn.answer(wire(flow.refresh(T)), 503, "Service Unavailable", unavailable)
    assert signed is not None and credentials(signed, "Authentication-Info") is not None
    with pytest.raises(StageError) as caught:
        flow.receive(wire(signed), T)
    assert caught.value.code == "4105"
    unsigned = conn.answer(wire(phone(pki).start()), 503, "Service Unavailable", unavailable)
    assert unsigned is not None and credentials(unsigned, "Authentication-Info") is None
    assert conn.answer(wire(flow.refresh(T)).without_header("Via"), 503, "Service Unavailable") is None


class _Rows:
    """A store whose certificate rows are given (two rows for one thumbprint, as two devices publish)."""

    def __init__(self, rows: list[PublishedCert]) -> None:
        self.rows = rows

    def certificates(self, sip_uri: str) -> list[PublishedCert]:
        return self.rows


def test_a_thumbprint_with_any_revoked_row_is_revoked(pki: Pki) -> None:
    cert = pki.alice
    row = PublishedCert(
        ALICE, "dev-a", thumbprint(cert), f"{cert.serial_number:x}",
        cert.not_valid_before_utc, cert.not_valid_after_utc, T, cert.public_bytes(Encoding.DER),
    )  # fmt: skip
    rows = [row, replace(row, device_id="dev-b", revoked=True)]
    check = client_checker(pki.ca.root, [pki.ca.issuing], _Rows(rows))
    refusal = check([cert], ALICE, T)
    assert refusal is not None and refusal[0] == 4101 and "revoked" in refusal[1]
    assert client_checker(pki.ca.root, [pki.ca.issuing], _Rows([row]))([cert], ALICE, T) is None


def test_certificate_aors_fall_back_to_the_cn(pki: Pki) -> None:
    key = generate_key(2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Alice@Lab.Test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(T)
        .not_valid_after(T + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    assert certificate_aors(cert) == {"alice@lab.test"}
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier("sip:bob@lab.test")])
    both = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(8)
        .not_valid_before(T)
        .not_valid_after(T + timedelta(days=1))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    assert certificate_aors(both) == {"bob@lab.test"}  # a SAN URI wins: the CN is not consulted
