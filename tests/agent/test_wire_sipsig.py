"""TLS-DSK signatures and the security association (agent/wire/sipsig.py, protocol.md §8.4–8.5)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.stages import Stage, StageError, WireError
from agent.wire.sipsig import (
    SecurityAssociation,
    SignedFields,
    sa_lifetime,
    sign,
    signature_string,
    verify,
)
from agent.wire.tlsdsk import DskKeys

T0 = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)
CLIENT_KEY = bytes(range(64, 96))
SERVER_KEY = bytes(range(96, 128))
KEYS = DskKeys(CLIENT_KEY, SERVER_KEY, "AES128-SHA", "TLSv1.2")
REALM = "SIP Communications Service"
CALL_ID = "f81d4fae7dec11d0a76500a0c91e6bf6"

# REGISTER D of §8.2, as the phone sends it (values the SIP codec would extract):
#   Authorization: TLS-DSK qop="auth", opaque="3A1F0C2B", realm="SIP Communications Service",
#                  targetname="pool.lab.test", crand="5b0ea1c7", cnum="1", response="…"
#   Call-ID: f81d4fae7dec11d0a76500a0c91e6bf6      CSeq: 4 REGISTER
#   From: <sip:alice@lab.test>;tag=9fxced76sl;epid=01010101     To: <sip:alice@lab.test>
#   Expires: 600
REGISTER_D = SignedFields(
    realm=REALM,
    targetname="pool.lab.test",
    call_id=CALL_ID,
    cseq_num="4",
    cseq_method="REGISTER",
    from_uri="sip:alice@lab.test",
    from_tag="9fxced76sl",
    to_uri="sip:alice@lab.test",
    expires="600",
    rand="5b0ea1c7",
    num="1",
)
REGISTER_D_STRING = (
    b"<TLS-DSK><5b0ea1c7><1><SIP Communications Service><pool.lab.test>"
    b"<f81d4fae7dec11d0a76500a0c91e6bf6><4><REGISTER><sip:alice@lab.test><9fxced76sl>"
    b"<sip:alice@lab.test><><><><600>"
)
# Its 200 OK: Authentication-Info: TLS-DSK qop="auth", opaque="3A1F0C2B", srand="0c9d44e2", snum="1",
#   rspauth="…", targetname="pool.lab.test", realm="…", version=4; To gets the registrar's tag;
#   P-Asserted-Identity: <sip:alice@lab.test>, <tel:+14255551219>; Expires: 600.
OK_200 = replace(
    REGISTER_D,
    to_tag="5d2c1f00",
    pai_sip="sip:alice@lab.test",
    pai_tel="tel:+14255551219",
    status="200",
    rand="0c9d44e2",
    num="1",
)
OK_200_STRING = (
    b"<TLS-DSK><0c9d44e2><1><SIP Communications Service><pool.lab.test>"
    b"<f81d4fae7dec11d0a76500a0c91e6bf6><4><REGISTER><sip:alice@lab.test><9fxced76sl>"
    b"<sip:alice@lab.test><5d2c1f00><sip:alice@lab.test><tel:+14255551219><600><200>"
)


def _hmac_hex(key: bytes, data: bytes, algorithm: str = "sha1") -> str:
    return hmac.new(key, data, getattr(hashlib, algorithm)).hexdigest()


# --- the signed string and the MAC ----------------------------------------------------------------


def test_register_string_matches_the_documented_layout() -> None:
    assert signature_string(REGISTER_D) == REGISTER_D_STRING


def test_response_string_appends_the_status_code() -> None:
    assert signature_string(OK_200) == OK_200_STRING


def test_register_signature_vector() -> None:
    expected = _hmac_hex(CLIENT_KEY, REGISTER_D_STRING)
    assert sign(CLIENT_KEY, REGISTER_D) == expected
    assert len(expected) == 40


def test_response_signature_vector() -> None:
    assert sign(SERVER_KEY, OK_200) == _hmac_hex(SERVER_KEY, OK_200_STRING)


def test_md5_signature_vector() -> None:
    signature = sign(CLIENT_KEY, REGISTER_D, mac="md5")
    assert signature == _hmac_hex(CLIENT_KEY, REGISTER_D_STRING, "md5")
    assert len(signature) == 32


def test_empty_string_and_none_are_both_absent() -> None:
    assert signature_string(replace(REGISTER_D, expires="")) == signature_string(
        replace(REGISTER_D, expires=None)
    )
    assert signature_string(replace(REGISTER_D, expires=None)).endswith(b"<><><><>")


def test_unknown_mac_is_refused() -> None:
    with pytest.raises(ValueError, match="sha1 or md5"):
        sign(CLIENT_KEY, REGISTER_D, mac="sha256")  # type: ignore[arg-type]


def test_verify_is_case_insensitive_and_exact() -> None:
    signature = sign(CLIENT_KEY, REGISTER_D)
    assert verify(CLIENT_KEY, REGISTER_D, signature)
    assert verify(CLIENT_KEY, REGISTER_D, signature.upper())
    assert not verify(SERVER_KEY, REGISTER_D, signature)
    assert not verify(CLIENT_KEY, REGISTER_D, signature[:-1])
    assert not verify(CLIENT_KEY, replace(REGISTER_D, expires="900"), signature)
    assert not verify(CLIENT_KEY, REGISTER_D, "")
    assert not verify(CLIENT_KEY, REGISTER_D, "é" * 40)


@pytest.mark.parametrize("field", ["from_uri", "to_tag", "call_id", "realm", "pai_tel"])
@pytest.mark.parametrize("bad", ["a>b", "a<b", "a\r\nb"])
def test_values_that_would_shift_the_layout_are_refused(field: str, bad: str) -> None:
    fields = replace(REGISTER_D, **{field: bad})
    with pytest.raises(WireError, match=field) as caught:
        signature_string(fields)
    assert caught.value.stage is Stage.REGISTER
    assert not verify(CLIENT_KEY, fields, "00" * 20)


def test_boundary_shift_is_not_a_valid_signature() -> None:
    """Without the refusal, To URI "x><y" + To tag "" would sign like To URI "x" + To tag "y><"."""
    shifted = replace(REGISTER_D, to_uri="sip:alice@lab.test><5d2c1f00", to_tag="")
    assert not verify(CLIENT_KEY, shifted, sign(CLIENT_KEY, replace(REGISTER_D, to_tag="5d2c1f00")))


@pytest.mark.parametrize("status", ["20", "2000", "OK ", "٢٠٠"])
def test_status_must_be_a_response_code(status: str) -> None:
    with pytest.raises(WireError, match="response code"):
        signature_string(replace(OK_200, status=status))


_text = st.text(st.characters(exclude_characters="<>\r\n", exclude_categories=["Cs"]), max_size=30)


@given(realm=_text, call_id=_text, tag=st.none() | _text, num=_text, status=st.none() | st.just("401"))
def test_sign_verify_round_trip(
    realm: str, call_id: str, tag: str | None, num: str, status: str | None
) -> None:
    fields = replace(REGISTER_D, realm=realm, call_id=call_id, from_tag=tag, num=num, status=status)
    assert verify(SERVER_KEY, fields, sign(SERVER_KEY, fields))


@given(value=st.text(max_size=40), signature=st.text(max_size=60))
def test_verify_never_raises(value: str, signature: str) -> None:
    assert verify(CLIENT_KEY, replace(REGISTER_D, to_tag=value, call_id=value), signature) in (True, False)


# --- SA lifetime ----------------------------------------------------------------------------------


def test_lifetime_is_capped_at_eight_hours_minus_margin() -> None:
    assert sa_lifetime(T0 + timedelta(days=180), T0) == timedelta(hours=7, minutes=55)


def test_lifetime_follows_a_certificate_expiring_sooner() -> None:
    assert sa_lifetime(T0 + timedelta(hours=2), T0) == timedelta(hours=1, minutes=55)


def test_lifetime_is_never_negative() -> None:
    assert sa_lifetime(T0 + timedelta(minutes=3), T0) == timedelta(0)
    assert sa_lifetime(T0 - timedelta(days=1), T0) == timedelta(0)


def test_lifetime_needs_aware_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sa_lifetime(datetime(2027, 1, 1), T0)


# --- security association -------------------------------------------------------------------------


def _pair(keys: DskKeys = KEYS) -> tuple[SecurityAssociation, SecurityAssociation]:
    lifetime = sa_lifetime(T0 + timedelta(days=180), T0)
    return (
        SecurityAssociation(keys, "3A1F0C2B", "client", T0, lifetime),
        SecurityAssociation(keys, "3A1F0C2B", "server", T0, lifetime),
    )


def _signed_by(sa: SecurityAssociation, fields: SignedFields) -> tuple[SignedFields, str]:
    rand, num, signature = sa.sign_outgoing(fields)
    return replace(fields, rand=rand, num=num), signature


def test_client_numbers_from_one_and_server_verifies() -> None:
    client, server = _pair()
    later = T0 + timedelta(minutes=1)
    for expected in (1, 2, 3):
        fields, signature = _signed_by(client, replace(REGISTER_D, cseq_num=str(3 + expected)))
        assert fields.num == str(expected)
        assert len(fields.rand) == 8 and int(fields.rand, 16) >= 0
        assert signature == _hmac_hex(CLIENT_KEY, signature_string(fields))
        server.verify_incoming(fields, signature, later)
    assert server.peer_last == 3


def test_server_signs_responses_with_its_own_key() -> None:
    client, server = _pair()
    fields, signature = _signed_by(server, OK_200)
    assert fields.num == "1"
    assert signature == _hmac_hex(SERVER_KEY, signature_string(fields))
    client.verify_incoming(fields, signature, T0)


def test_own_signature_does_not_verify_as_the_peers() -> None:
    client, _ = _pair()
    fields, signature = _signed_by(client, REGISTER_D)
    with pytest.raises(StageError) as caught:
        client.verify_incoming(fields, signature, T0)
    assert (caught.value.stage, caught.value.code) == (Stage.REGISTER, "BAD_SIGNATURE")


def test_replay_is_refused() -> None:
    client, server = _pair()
    fields, signature = _signed_by(client, REGISTER_D)
    server.verify_incoming(fields, signature, T0)
    with pytest.raises(StageError) as caught:
        server.verify_incoming(fields, signature, T0)
    assert caught.value.code == "REPLAY"


def test_out_of_order_is_refused() -> None:
    client, server = _pair()
    first = _signed_by(client, REGISTER_D)
    second = _signed_by(client, replace(REGISTER_D, cseq_num="5"))
    server.verify_incoming(*second, T0)
    with pytest.raises(StageError) as caught:
        server.verify_incoming(*first, T0)
    assert caught.value.code == "REPLAY"
    assert server.peer_last == 2


def test_gaps_in_numbering_are_accepted() -> None:
    client, server = _pair()
    client.next_cnum()
    server.verify_incoming(*_signed_by(client, REGISTER_D), T0)
    assert server.peer_last == 2


@pytest.mark.parametrize(
    "change", [{"cseq_num": "5"}, {"expires": "0"}, {"from_tag": "x"}, {"num": "7"}, {"status": "200"}]
)
def test_tampering_is_refused_and_does_not_move_the_counter(change: dict[str, str]) -> None:
    client, server = _pair()
    fields, signature = _signed_by(client, REGISTER_D)
    with pytest.raises(StageError) as caught:
        server.verify_incoming(replace(fields, **change), signature, T0)
    assert caught.value.code == "BAD_SIGNATURE"
    assert server.peer_last == 0
    server.verify_incoming(fields, signature, T0)


def test_signed_but_non_numeric_number_is_refused() -> None:
    _, server = _pair()
    fields = replace(REGISTER_D, rand="00000000", num="one")
    with pytest.raises(StageError) as caught:
        server.verify_incoming(fields, sign(CLIENT_KEY, fields), T0)
    assert caught.value.code == "BAD_SIGNATURE"


def test_expired_sa_is_refused() -> None:
    client, server = _pair()
    assert server.expires_at == T0 + timedelta(hours=7, minutes=55)
    fields, signature = _signed_by(client, REGISTER_D)
    server.verify_incoming(fields, signature, server.expires_at - timedelta(seconds=1))
    fields, signature = _signed_by(client, REGISTER_D)
    assert server.is_expired(server.expires_at)
    with pytest.raises(StageError) as caught:
        server.verify_incoming(fields, signature, server.expires_at)
    assert caught.value.code == "SA_EXPIRED"


def test_naive_time_is_refused() -> None:
    client, server = _pair()
    with pytest.raises(ValueError, match="timezone-aware"):
        server.verify_incoming(*_signed_by(client, REGISTER_D), datetime(2026, 11, 26, 14, 0))


def test_md5_suite_signs_with_hmac_md5() -> None:
    client, server = _pair(DskKeys(CLIENT_KEY, SERVER_KEY, "RC4-MD5", "TLSv1"))
    fields, signature = _signed_by(client, REGISTER_D)
    assert signature == _hmac_hex(CLIENT_KEY, signature_string(fields), "md5")
    server.verify_incoming(fields, signature, T0)


def test_numbering_helpers_match_the_role() -> None:
    client, server = _pair()
    assert (client.next_cnum(), client.next_cnum(), server.next_snum()) == (1, 2, 1)
    with pytest.raises(ValueError):
        client.next_snum()
    with pytest.raises(ValueError):
        server.next_cnum()
    with pytest.raises(ValueError):
        SecurityAssociation(KEYS, "x", "proxy", T0, timedelta(hours=1))  # type: ignore[arg-type]


def test_repr_hides_keys() -> None:
    client, _ = _pair()
    for text in (repr(client), repr(KEYS)):
        assert CLIENT_KEY.hex() not in text and SERVER_KEY.hex() not in text
        assert str(CLIENT_KEY) not in text
