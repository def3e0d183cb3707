"""The certs-only PKCS#7 root-chain body: round trips, and every malformed body is one WireError line."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from agent.stages import Stage, WireError
from agent.wire.pkcs7 import CONTENT_TYPE, MAX_BYTES, decode_certs_only, encode_certs_only

_START = datetime(2026, 1, 1, tzinfo=UTC)
# SignedData { version 1, digestAlgorithms {}, contentInfo data, signerInfos {} } without certificates.
EMPTY_SIGNED_DATA = bytes.fromhex(
    "302306092a864886f70d010702a01630140201013100300b06092a864886f70d0107013100"
)


def _self_signed(cn: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_START)
        .not_valid_after(_START + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


CERTS = tuple(_self_signed(f"CA {i}") for i in range(3))
BODY = encode_certs_only(CERTS)


def decode_error(body: bytes, **kw: int) -> WireError:
    with pytest.raises(WireError) as info:
        decode_certs_only(body, **kw)
    error = info.value
    assert (error.stage, error.code) == (Stage.ROOT_CHAIN, "ROOT_CHAIN_DOWNLOAD")
    assert error.detail and "\n" not in error.detail
    return error


def test_content_type_is_the_certs_only_mime_type() -> None:
    assert CONTENT_TYPE == "application/pkcs7-mime; smime-type=certs-only"


def _der_sorted(certs: Sequence[x509.Certificate]) -> list[bytes]:
    return sorted(cert.public_bytes(Encoding.DER) for cert in certs)


def test_round_trip_is_a_set_in_der_order() -> None:
    """``certificates`` is a SET OF: DER sorts it, so the sender's order is not kept (paths don't need it)."""
    assert [c.public_bytes(Encoding.DER) for c in decode_certs_only(BODY)] == _der_sorted(CERTS)
    assert encode_certs_only(CERTS[::-1]) == BODY


@given(st.lists(st.sampled_from(CERTS), min_size=1, max_size=6))
def test_round_trip_property(certs: list[x509.Certificate]) -> None:
    assert _der_sorted(decode_certs_only(encode_certs_only(certs))) == _der_sorted(certs)


def test_encode_needs_a_certificate() -> None:
    with pytest.raises(ValueError, match="at least one certificate"):
        encode_certs_only([])


def test_empty_body() -> None:
    assert decode_error(b"").detail == "root chain body is empty"


def test_oversize_body() -> None:
    assert "at most 100 are accepted" in decode_error(BODY, max_bytes=100).detail
    assert MAX_BYTES == 256 * 1024


def test_trailing_bytes_are_refused() -> None:
    assert "length mismatch" in decode_error(BODY + b"junk").detail


def test_indefinite_length_is_not_der() -> None:
    assert "indefinite length" in decode_error(b"\x30\x80" + BODY[4:] + b"\x00\x00").detail


def test_pem_body_is_not_der() -> None:
    pem = b"-----BEGIN PKCS7-----\n" + BODY + b"\n-----END PKCS7-----\n"
    assert "not a DER SEQUENCE" in decode_error(pem).detail


def test_a_bare_certificate_is_not_pkcs7() -> None:
    assert "not a DER PKCS#7" in decode_error(CERTS[0].public_bytes(Encoding.DER)).detail


def test_signed_data_without_certificates() -> None:
    assert "no certificate" in decode_error(EMPTY_SIGNED_DATA).detail


def test_other_content_type_is_refused() -> None:
    data_oid = bytes.fromhex("06092a864886f70d010701")
    body = b"\x30" + bytes([len(data_oid) + 4]) + data_oid + b"\xa0\x02\x04\x00"
    assert "not a DER PKCS#7" in decode_error(body).detail


def _tlv(tag: int, body: bytes, long_form: bool = False) -> bytes:
    size = len(body)
    if size < 0x80 and not long_form:
        return bytes([tag, size]) + body
    octets = size.to_bytes(max(1, (size.bit_length() + 7) // 8), "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + body


def test_ber_inside_is_refused_not_silently_accepted() -> None:
    """cryptography falls back to BER with only a warning; a non-minimal length inside must be refused."""
    signed_data = _tlv(
        0x30,
        _tlv(0x02, b"\x01", long_form=True)  # version 1 with a long-form length: BER, not DER
        + _tlv(0x31, b"")
        + _tlv(0x30, bytes.fromhex("06092a864886f70d010701"))
        + _tlv(0xA0, CERTS[0].public_bytes(Encoding.DER))
        + _tlv(0x31, b""),
    )
    body = _tlv(0x30, bytes.fromhex("06092a864886f70d010702") + _tlv(0xA0, signed_data))
    assert decode_error(body).detail == "root chain body is BER, not DER, PKCS#7"


def test_truncated_body() -> None:
    assert decode_error(BODY[: len(BODY) // 2]).detail.startswith("root chain body length mismatch")


@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_wire_error(body: bytes) -> None:
    try:
        certs = decode_certs_only(body)
    except WireError as error:
        assert error.code == "ROOT_CHAIN_DOWNLOAD" and "\n" not in error.detail
    else:
        assert certs and all(isinstance(cert, x509.Certificate) for cert in certs)


@given(st.integers(min_value=0, max_value=len(BODY) - 1), st.integers(min_value=1, max_value=255))
def test_corrupted_body_only_raises_wire_error(offset: int, flip: int) -> None:
    body = bytearray(BODY)
    body[offset] ^= flip
    try:
        certs = decode_certs_only(bytes(body))
    except WireError as error:
        assert error.code == "ROOT_CHAIN_DOWNLOAD"
    else:
        assert all(isinstance(cert, x509.Certificate) for cert in certs)
