"""SIP auth headers (TLS-DSK as in protocol.md §8.2, NTLM/Kerberos as real pools offer them) and
ms-diagnostics (§8.3): exact §8.2 spellings, scheme selection among several challenges, escapes, errors,
and property tests (format/parse round trips; arbitrary text raises only WireError)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.stages import Stage, WireError
from agent.wire.sip import SipMessage, decode
from agent.wire.sipauth import (
    AuthChallenge,
    MsDiagnostics,
    challenges,
    find_challenge,
    format_auth_params,
    format_ms_diagnostics,
    parse_auth_params,
    parse_ms_diagnostics,
    scan_params,
    split_list,
)
from tests.agent.test_wire_sip import A_401, B_401, CLIENT_HELLO, D_200, FORBIDDEN, RSPAUTH_SIG, STS, B, C, D

REALM = "SIP Communications Service"
TARGET = "pool.lab.test"
CHALLENGE_A = f'TLS-DSK realm="{REALM}", targetname="{TARGET}", version=4, sts-uri="{STS}"'


def _wire_error(call: object, *args: object) -> WireError:
    assert callable(call)
    with pytest.raises(WireError) as info:
        call(*args)
    assert info.value.stage is Stage.REGISTER
    assert "\n" not in str(info.value)
    return info.value


# --- protocol.md §8.2 -----------------------------------------------------------------------------------


def test_challenge_a() -> None:
    (challenge,) = challenges(decode(A_401), "WWW-Authenticate")
    assert challenge == AuthChallenge(
        "TLS-DSK", {"realm": REALM, "targetname": TARGET, "version": "4", "sts-uri": STS}
    )
    assert challenge.format() == CHALLENGE_A


def test_exchange_headers_parse() -> None:
    b = parse_auth_params(decode(B).header("Authorization") or "")
    assert b.params == {
        "qop": "auth",
        "realm": REALM,
        "targetname": TARGET,
        "gssapi-data": CLIENT_HELLO.decode(),
        "version": "4",
    }
    b401 = find_challenge(decode(B_401), "www-authenticate", "tls-dsk")
    assert b401 is not None and b401.params["opaque"] == "A1B2C3D4" and "gssapi-data" in b401.params
    c = parse_auth_params(decode(C).header("Authorization") or "")
    assert list(c.params) == ["qop", "opaque", "realm", "targetname", "gssapi-data", "version"]
    d = parse_auth_params(decode(D).header("Authorization") or "")
    assert (d.params["crand"], d.params["cnum"]) == ("1a2b3c4d", "1")
    info = parse_auth_params(decode(D_200).header("Authentication-Info") or "")
    assert info.params["rspauth"] == RSPAUTH_SIG and info.params["snum"] == "1"


def test_format_reproduces_section_8_2_spelling() -> None:
    d = {
        "qop": "auth",
        "opaque": "A1B2C3D4",
        "realm": REALM,
        "targetname": TARGET,
        "crand": "1a2b3c4d",
        "cnum": "1",
        "response": "00ff",
    }
    assert format_auth_params("TLS-DSK", d) == (
        f'TLS-DSK qop="auth", opaque="A1B2C3D4", realm="{REALM}", targetname="{TARGET}", '
        'crand="1a2b3c4d", cnum="1", response="00ff"'
    )
    for raw in (B, C, D):
        value = decode(raw).header("Authorization") or ""
        parsed = parse_auth_params(value)
        assert format_auth_params(parsed.scheme, parsed.params) == value
    info = decode(D_200).header("Authentication-Info") or ""
    assert parse_auth_params(info).format() == info
    # pidgin-sipe's first NTLM/TLS-DSK message carries an empty gssapi-data
    assert (
        format_auth_params("TLS-DSK", {"gssapi-data": "", "version": "4"})
        == 'TLS-DSK gssapi-data="", version=4'
    )


def test_explicit_quoting_and_bare_scheme() -> None:
    params = {"realm": "x y", "algorithm": "MD5", "Stale": "FALSE"}
    assert (
        format_auth_params("Digest", params, quoted={"REALM"})
        == 'Digest realm="x y", algorithm=MD5, Stale=FALSE'
    )
    assert format_auth_params("Negotiate", {}) == "Negotiate"
    assert parse_auth_params("Negotiate") == AuthChallenge("Negotiate", {})
    with pytest.raises(ValueError, match="must be quoted"):
        format_auth_params("Digest", {"realm": "x y"}, quoted=())
    with pytest.raises(ValueError):
        format_auth_params("TLS DSK", {})
    with pytest.raises(ValueError):
        format_auth_params("TLS-DSK", {"bad name": "1"})
    with pytest.raises(ValueError):
        format_auth_params("TLS-DSK", {"opaque": "a\r\nInjected: 1"})


def test_several_schemes_selectable() -> None:
    msg = SipMessage(
        status=401,
        reason="Unauthorized",
        headers=(
            ("WWW-Authenticate", f'NTLM realm="{REALM}", targetname="{TARGET}", version=4'),
            ("WWW-Authenticate", f'Kerberos realm="{REALM}", targetname="sip/{TARGET}", version=4'),
            ("www-authenticate", CHALLENGE_A),
        ),
    )
    assert [c.scheme for c in challenges(msg, "WWW-Authenticate")] == ["NTLM", "Kerberos", "TLS-DSK"]
    kerberos = find_challenge(msg, "WWW-Authenticate", "KERBEROS")
    assert kerberos is not None and kerberos.params["targetname"] == f"sip/{TARGET}"
    tls = find_challenge(msg, "WWW-Authenticate", "TLS-DSK")
    assert tls is not None and tls.is_scheme("tls-dsk") and tls.params["sts-uri"] == STS
    assert find_challenge(msg, "WWW-Authenticate", "Digest") is None
    assert find_challenge(msg, "WWW-Authenticate", "TLS") is None
    assert challenges(msg, "Proxy-Authenticate") == []
    broken = msg.replace_header("WWW-Authenticate", 'NTLM realm="unterminated').with_header(
        "WWW-Authenticate", CHALLENGE_A
    )
    assert find_challenge(broken, "WWW-Authenticate", "TLS-DSK") is not None
    _wire_error(challenges, broken, "WWW-Authenticate")


def test_quoted_escapes_case_and_blanks() -> None:
    parsed = parse_auth_params(
        'tls-dsk  Realm = "a \\"quoted\\" \\\\ name, with comma" ,TargetName=x,VERSION=4'
    )
    assert parsed.scheme == "tls-dsk"
    assert parsed.params == {"realm": 'a "quoted" \\ name, with comma', "targetname": "x", "version": "4"}
    assert parse_auth_params(parsed.format()) == parsed


@pytest.mark.parametrize(
    "value",
    [
        "",
        '"TLS-DSK" realm="x"',
        'TLS-DSK,realm="x"',
        'TLS-DSK realm="x',
        'TLS-DSK realm="x", realm="y"',
        'TLS-DSK realm="x",',
        'TLS-DSK realm="x" targetname="y"',
        "TLS-DSK realm=",
        "TLS-DSK =x",
        'TLS-DSK realm="a\x00b"',
    ],
)
def test_parse_auth_params_errors(value: str) -> None:
    _wire_error(parse_auth_params, value)


# --- ms-diagnostics -------------------------------------------------------------------------------------


def test_ms_diagnostics() -> None:
    diag = parse_ms_diagnostics(decode(FORBIDDEN).header("ms-diagnostics") or "")
    assert diag == MsDiagnostics(4101, "Certificate unknown", {"source": "pool.lab.test"})
    assert format_ms_diagnostics(4101, "Certificate unknown", source="pool.lab.test") == (
        '4101;reason="Certificate unknown";source="pool.lab.test"'
    )
    assert parse_ms_diagnostics("4104") == MsDiagnostics(4104, "", {})
    assert parse_ms_diagnostics(' 4103 ; REASON="AOR \\"mismatch\\"";Source=x ') == MsDiagnostics(
        4103, 'AOR "mismatch"', {"source": "x"}
    )
    for bad in ["", "reason=x", "41a1;reason=x", "4101;reason", '4101;reason="x', "4101 reason=x", "-1"]:
        if bad == "4101;reason":  # a valueless parameter is grammatical: reason ""
            assert parse_ms_diagnostics(bad).reason == ""
            continue
        _wire_error(parse_ms_diagnostics, bad)
    with pytest.raises(ValueError):
        format_ms_diagnostics(-1, "x")
    with pytest.raises(ValueError):
        format_ms_diagnostics(1, "line\nbreak")
    with pytest.raises(ValueError):
        format_ms_diagnostics(1, "x", REASON="y")
    assert format_ms_diagnostics(1, "x", code="2") == '1;reason="x";code="2"'


# --- property tests -------------------------------------------------------------------------------------

_name = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-._"), min_size=1, max_size=12)
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")) | st.just("\t"), max_size=60)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["TLS-DSK", "NTLM", "Kerberos"]), st.dictionaries(_name, _text, max_size=8))
def test_auth_round_trip(scheme: str, params: dict[str, str]) -> None:
    params.pop("version", None)  # the one bare parameter must be a token
    assert parse_auth_params(format_auth_params(scheme, params)) == AuthChallenge(scheme, params)
    # also valid inside a SIP message
    msg = SipMessage(status=401, headers=(("WWW-Authenticate", format_auth_params(scheme, params)),))
    assert challenges(msg, "WWW-Authenticate") == [AuthChallenge(scheme, params)]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 10**9 - 1),
    _text,
    st.dictionaries(_name.filter(lambda n: n != "reason"), _text, max_size=4),
)
def test_ms_diagnostics_round_trip(code: int, reason: str, params: dict[str, str]) -> None:
    assert parse_ms_diagnostics(format_ms_diagnostics(code, reason, **params)) == MsDiagnostics(
        code, reason, params
    )


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_raises_only_wire_error(text: str) -> None:
    for parse in (parse_auth_params, parse_ms_diagnostics):
        try:
            parse(text)
        except WireError as exc:
            assert exc.stage is Stage.REGISTER


def test_scanner_pieces() -> None:
    assert split_list(' a , "b,c" ,, <d,e>;x="f,g" ') == ["a", '"b,c"', '<d,e>;x="f,g"']
    assert scan_params(";lr;ttl=1", ";", "test", leading=True) == {"lr": "", "ttl": "1"}
    assert scan_params("", ",", "test", leading=False) == {}
    with pytest.raises(WireError, match="test: expected ';'"):
        scan_params("lr", ";", "test", leading=True)
