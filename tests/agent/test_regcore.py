"""The registrar core against hostile or odd requests (never an exception out of handle()), and the small
helpers both ends share (agent/wire/regmsg.py)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.stages import Stage, StageError, WireError
from agent.wire.regflow import Redirect, Registered
from agent.wire.regmsg import REALM, SipTarget, aor_key, credentials, sip_target
from agent.wire.sip import SipMessage, build_response
from agent.wire.sipauth import format_auth_params
from tests.agent.regpki import POOL, Pki, T, exchange, make_pki, phone, registrar, wire
from tools.pool.regcore import ExpiryPolicy, Handled, RegistrarConnection, server_sa_lifetime


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


def test_other_methods_are_405_signed_once_an_sa_exists(pki: Pki) -> None:
    flow, conn = phone(pki), registrar(pki)
    a = flow.start()
    options = SipMessage(method="OPTIONS", uri="sip:lab.test", headers=a.headers)
    (before,) = conn.handle(wire(options), T).messages
    assert before.status == 405 and before.header("Allow") == "REGISTER"
    assert credentials(before, "Authentication-Info") is None
    assert isinstance(exchange(flow, conn, a, T), Registered)
    (after,) = conn.handle(wire(options), T).messages
    assert after.status == 405 and credentials(after, "Authentication-Info") is not None
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
