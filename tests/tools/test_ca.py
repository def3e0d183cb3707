"""The pool's CA and CSR checks (protocol.md §5, §7, §12), checked with cryptography's webpki verifier."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.pool.ca import PoolCA, thumbprint
from tools.pool.certpolicy import CertPolicy, check_csr
from tools.pool.errors import ConfigError, PoolError

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POOL = "pool.lab.test"
POLICY = CertPolicy()
SHA1_RSA = bytes.fromhex("300d06092a864886f70d0101050500")
SHA256_RSA = bytes.fromhex("300d06092a864886f70d01010b0500")
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SMALL_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)


# -- CSR construction (a tiny DER writer, so tests can write what cryptography refuses to) -----------------


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _seq(body: bytes) -> bytes:
    return b"\x30" + _len(len(body)) + body


def _header_len(der: bytes) -> int:
    return 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)


def csr_der(
    *, version: int = 0, sha1: bool = False, key: rsa.RSAPrivateKey = KEY, resign: bool = True
) -> bytes:
    """A CSR for CN=alice@lab.test with the given version INTEGER, signed over what it carries."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice@lab.test")])
    base = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    info = base.tbs_certrequest_bytes
    body = info[_header_len(info) :]
    assert body[:3] == b"\x02\x01\x00"
    patched = _seq(b"\x02\x01" + bytes([version]) + body[3:])
    hash_ = hashes.SHA1() if sha1 else hashes.SHA256()
    signature = key.sign(patched if resign else info, padding.PKCS1v15(), hash_)
    bits = b"\x03" + _len(len(signature) + 1) + b"\x00" + signature
    return _seq(patched + (SHA1_RSA if sha1 else SHA256_RSA) + bits)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PoolCA:
    state = tmp_path_factory.mktemp("ca") / "state"
    return PoolCA.load_or_create(state, POOL, web_names=["127.0.0.1", "web.lab.test"], at=AT)


def _verifier(ca: PoolCA, at: datetime = AT + timedelta(hours=1)) -> verification.PolicyBuilder:
    return verification.PolicyBuilder().store(verification.Store([ca.root])).time(at)


# -- policy ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"default_validity_hours": 7},
        {"default_validity_hours": 8761},
        {"min_validity_hours": 4321},
        {"max_validity_hours": 7},
        {"min_csr_key_bits": 512},
        {"max_csr_key_bits": 32768},
        {"min_csr_key_bits": 4096, "max_csr_key_bits": 2048},
        {"min_validity_hours": 100, "default_validity_hours": 50},
        {"default_validity_hours": True},
    ],
)
def test_cert_policy_ranges(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        CertPolicy(**kwargs)  # type: ignore[arg-type]


def test_validity_clamp() -> None:
    assert POLICY.validity_hours(None) == 4320
    assert POLICY.validity_hours(1) == 8
    assert POLICY.validity_hours(100.5) == 100.5
    assert POLICY.validity_hours(10_000) == 8760
    assert POLICY.validity_hours(float("inf")) == 8760
    assert (
        CertPolicy(min_validity_hours=24, max_validity_hours=48, default_validity_hours=24).validity_hours(72)
        == 48
    )
    with pytest.raises(PoolError) as err:
        POLICY.validity_hours(float("nan"))
    assert err.value.code == "3003"


# -- hierarchy ---------------------------------------------------------------------------------------------


def test_hierarchy_names_and_chain(ca: PoolCA) -> None:
    assert ca.root.subject.rfc4514_string() == f"CN=phoneprov Lab Root CA,O={POOL}"
    assert ca.issuing.subject.rfc4514_string() == "CN=Communications Server"
    assert ca.rootchain() == [ca.issuing, ca.root]
    ca.issuing.verify_directly_issued_by(ca.root)
    ca.web_cert.verify_directly_issued_by(ca.issuing)
    assert ca.web_cert.not_valid_after_utc - ca.web_cert.not_valid_before_utc >= timedelta(days=2 * 365)
    usage = ca.issuing.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign


def test_web_cert_passes_webpki_for_each_name(ca: PoolCA) -> None:
    for name in (
        x509.DNSName(POOL),
        x509.DNSName("web.lab.test"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        chain = _verifier(ca).build_server_verifier(name).verify(ca.web_cert, [ca.issuing])
        assert chain[-1] == ca.root
    with pytest.raises(verification.VerificationError):
        _verifier(ca).build_server_verifier(x509.DNSName("other.lab.test")).verify(ca.web_cert, [ca.issuing])
    with pytest.raises(verification.VerificationError):  # the phone has only the root: chain incomplete
        _verifier(ca).build_server_verifier(x509.DNSName(POOL)).verify(ca.web_cert, [])


def test_tls_files_hold_leaf_issuing_and_matching_key(ca: PoolCA) -> None:
    chain = x509.load_pem_x509_certificates(ca.tls_cert_chain_pem_path.read_bytes())
    assert chain == [ca.web_cert, ca.issuing]
    key = serialization.load_pem_private_key(ca.tls_key_path.read_bytes(), password=None)
    assert key.public_key() == ca.web_cert.public_key()


def _snapshot(state: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in sorted(state.iterdir())}


def test_load_or_create_twice_keeps_keys_files_and_modes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = PoolCA.load_or_create(state, POOL, at=AT)
    before = _snapshot(state)
    assert sorted(before) == [
        "issuing.key",
        "issuing.pem",
        "root.key",
        "root.pem",
        "web-chain.pem",
        "web.key",
        "web.pem",
    ]
    assert {name: mode for name, (_, mode) in before.items() if name.endswith(".key")} == {
        "issuing.key": 0o600,
        "root.key": 0o600,
        "web.key": 0o600,
    }
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    again = PoolCA.load_or_create(state, POOL, at=AT + timedelta(days=100))
    assert _snapshot(state) == before
    assert (again.root, again.issuing, again.web_cert) == (first.root, first.issuing, first.web_cert)
    assert not [p for p in state.iterdir() if p.name.startswith(".")]  # no temp files left behind

    renamed = PoolCA.load_or_create(state, POOL, web_names=["127.0.0.1"], at=AT + timedelta(days=100))
    assert (renamed.root, renamed.issuing) == (first.root, first.issuing)
    assert renamed.web_cert != first.web_cert
    san = renamed.web_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    after = _snapshot(state)
    assert {k for k in after if after[k] != before[k]} == {"web.key", "web.pem", "web-chain.pem"}

    near_expiry = AT + timedelta(days=100 + 2 * 365 - 10)  # within 30 days of its expiry
    renewed = PoolCA.load_or_create(state, POOL, web_names=["127.0.0.1"], at=near_expiry)
    assert renewed.web_cert != renamed.web_cert and renewed.root == first.root


def test_missing_or_mismatched_level_is_recreated_below_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = PoolCA.load_or_create(state, POOL, at=AT)
    (state / "issuing.pem").unlink()
    second = PoolCA.load_or_create(state, POOL, at=AT)
    assert second.root == first.root and second.issuing != first.issuing
    second.web_cert.verify_directly_issued_by(second.issuing)
    # A key written without its certificate (power cut between the two renames): that level is re-issued.
    (state / "web.key").write_bytes((state / "root.key").read_bytes())
    third = PoolCA.load_or_create(state, POOL, at=AT)
    assert third.web_cert != second.web_cert and third.issuing == second.issuing


def test_unreadable_files_and_bad_settings_are_config_errors(tmp_path: Path) -> None:
    state = tmp_path / "state"
    PoolCA.load_or_create(state, POOL, at=AT)
    (state / "root.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=r"root\.pem/root\.key"):
        PoolCA.load_or_create(state, POOL, at=AT)
    with pytest.raises(ConfigError, match=r"2048\.\.16384"):
        PoolCA.load_or_create(tmp_path / "x", POOL, ca_key_bits=1024, at=AT)
    for names in (["bad name!"], ["-lead.lab.test"]):
        with pytest.raises(ConfigError, match="neither a DNS name"):
            PoolCA.load_or_create(tmp_path / "y", POOL, web_names=names, at=AT)
    with pytest.raises(ConfigError, match="must be a DNS name"):
        PoolCA.load_or_create(tmp_path / "z", "10.0.0.1", at=AT)


# -- user certificates -------------------------------------------------------------------------------------


def test_issued_user_cert_fields(ca: PoolCA) -> None:
    csr = check_csr(csr_der(), POLICY)
    cert = ca.issue_user_cert(csr, "sip:Alice@lab.test", 8, AT)
    cert.verify_directly_issued_by(ca.issuing)
    assert cert.issuer == ca.issuing.subject
    assert cert.subject.rfc4514_string() == "CN=alice@lab.test"
    assert cert.public_key() == KEY.public_key()
    assert cert.not_valid_before_utc == AT - timedelta(minutes=5)
    assert cert.not_valid_after_utc == AT + timedelta(hours=8)
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_SHA256
    assert 2**120 <= cert.serial_number < 2**127  # 16 bytes, positive
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    ) == ["sip:alice@lab.test"]
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == ca.issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    result = _verifier(ca).build_client_verifier().verify(cert, [ca.issuing])
    assert result.subjects == [x509.UniformResourceIdentifier("sip:alice@lab.test")]
    other = ca.issue_user_cert(csr, "alice@lab.test", 8, AT)
    assert other.serial_number != cert.serial_number


def test_thumbprint_is_sha1_upper_hex(ca: PoolCA) -> None:
    thumb = thumbprint(ca.root)
    assert len(thumb) == 40 and thumb == thumb.upper()
    assert thumb == ca.root.fingerprint(hashes.SHA1()).hex().upper()


# -- CSR checks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 2])
@pytest.mark.parametrize("sha1", [False, True])
def test_check_csr_accepts_any_version_and_sha1(version: int, sha1: bool, ca: PoolCA) -> None:
    csr = check_csr(csr_der(version=version, sha1=sha1), POLICY)
    assert csr.public_key() == KEY.public_key()
    assert csr.subject.rfc4514_string() == "CN=alice@lab.test"
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA1 if sha1 else hashes.SHA256)
    ca.issue_user_cert(csr, "sip:alice@lab.test", 8, AT).verify_directly_issued_by(ca.issuing)


def test_cryptography_refuses_what_check_csr_must_accept() -> None:
    """The library facts check_csr works around (cryptography 50): keep this test to notice a change."""
    with pytest.raises(x509.InvalidVersion, match="not a valid CSR version"):
        x509.load_der_x509_csr(csr_der(version=2))
    assert x509.load_der_x509_csr(csr_der(sha1=True)).is_signature_valid is False


@pytest.mark.parametrize("version", [0, 2])
def test_signature_must_cover_the_original_bytes(version: int) -> None:
    """Patching the version without re-signing breaks the signature over what was received."""
    der = csr_der(version=version, resign=False)
    if version == 0:
        der = der[:-1] + bytes([der[-1] ^ 1])
    with pytest.raises(PoolError) as err:
        check_csr(der, POLICY)
    assert err.value.code == "3003" and "does not verify" in err.value.detail


def test_key_size_limits() -> None:
    with pytest.raises(PoolError) as err:
        check_csr(csr_der(key=SMALL_KEY), CertPolicy(min_csr_key_bits=2048))
    assert err.value.code == "3004" and "1024 bits" in err.value.detail
    with pytest.raises(PoolError) as err:
        check_csr(csr_der(), CertPolicy(max_csr_key_bits=1024))
    assert err.value.code == "3004"
    check_csr(csr_der(key=SMALL_KEY), POLICY)


def test_non_rsa_key_is_rejected() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice@lab.test")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    with pytest.raises(PoolError) as err:
        check_csr(csr.public_bytes(serialization.Encoding.DER), POLICY)
    assert err.value.code == "3004" and "only RSA" in err.value.detail


@pytest.mark.parametrize(
    ("der", "fragment"),
    [
        (b"", "empty"),
        (b"\x31\x00", "not a DER SEQUENCE"),
        (b"\x30\x05\x30\x00", "truncated"),
        (b"\x30\x84\xff\xff\xff\xff", "truncated"),
        (b"\x30\x80\x00\x00", "bad length"),
        (_seq(_seq(b"\x04\x01\x00")), "version is not an INTEGER"),
        (csr_der() + b"\x00", "trailing bytes"),
        (csr_der()[:11] + b"\x04" + csr_der()[12:], "not a valid PKCS#10"),  # subject is no SEQUENCE
        (b"\x30" + b"\x82\xff\xff" + b"\x00" * 70_000, "limit"),
    ],
)
def test_corrupted_csr_is_bad_request_in_one_line(der: bytes, fragment: str) -> None:
    with pytest.raises(PoolError) as err:
        check_csr(der, POLICY)
    assert err.value.code == "3003" and fragment in str(err.value) and "\n" not in str(err.value)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_pool_error(der: bytes) -> None:
    with pytest.raises(PoolError):
        check_csr(der, POLICY)


VALID = csr_der(version=2, sha1=True)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.integers(1, 255))
def test_mutated_csr_is_accepted_or_bad_request(index: int, flip: int) -> None:
    der = VALID[:index] + bytes([VALID[index] ^ flip]) + VALID[index + 1 :]
    try:
        check_csr(der, POLICY)
    except PoolError as exc:
        assert exc.code in ("3003", "3004") and "\n" not in str(exc)
