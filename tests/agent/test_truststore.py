"""The phone's trust store: shipped anchors only, diagnosis of missing issuers, hostile-chain caps.

Hierarchies are built per test from keys generated once per module (an RSA-2048 lab root, EC for the rest).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.stages import Stage, StageError
from agent.truststore import TrustStore, ValidatedChain, first_missing_issuer

NOW = datetime(2026, 6, 1, tzinfo=UTC)
HOST = "pool.lab.test"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def dn(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "phoneprov lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def ca_cert(
    subject: x509.Name,
    key: PrivateKey,
    issuer: x509.Name | None = None,
    issuer_key: PrivateKey | None = None,
    *,
    serial: int = 1,
    not_before: datetime = NOW - timedelta(days=365),
    not_after: datetime = NOW + timedelta(days=3650),
) -> x509.Certificate:
    """A CA certificate; self-signed unless an issuer (name and key) is given."""
    signer = issuer_key or key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_key is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def ee_cert(
    key: PrivateKey,
    issuer: x509.Name,
    issuer_key: PrivateKey,
    *,
    sans: Sequence[x509.GeneralName] = (x509.DNSName(HOST),),
    eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
    subject: str = HOST,
    not_before: datetime = NOW - timedelta(days=30),
    not_after: datetime = NOW + timedelta(days=365),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Keys:
    root: rsa.RSAPrivateKey
    inter: ec.EllipticCurvePrivateKey
    leaf: ec.EllipticCurvePrivateKey
    other: ec.EllipticCurvePrivateKey
    evil: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pki:
    """Lab root (shipped) → issuing CA (downloaded) → Web Services certificate."""

    keys: Keys
    root: x509.Certificate
    inter: x509.Certificate
    leaf: x509.Certificate
    mozilla_like: x509.Certificate  # an unrelated shipped root


@pytest.fixture(scope="module")
def keys() -> Keys:
    def ec_key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    return Keys(rsa.generate_private_key(65537, 2048), ec_key(), ec_key(), ec_key(), ec_key())


@pytest.fixture(scope="module")
def pki(keys: Keys) -> Pki:
    root = ca_cert(dn("Lab Root CA"), keys.root)
    inter = ca_cert(dn("Lab Issuing CA"), keys.inter, root.subject, keys.root, serial=2)
    leaf = ee_cert(keys.leaf, inter.subject, keys.inter)
    return Pki(keys, root, inter, leaf, ca_cert(dn("Some Public Root"), keys.other))


def refused(
    store: TrustStore,
    leaf: x509.Certificate,
    pool: Sequence[x509.Certificate],
    hostname: str = HOST,
    at: datetime = NOW,
) -> StageError:
    with pytest.raises(StageError) as info:
        store.verify_server(leaf, pool, hostname, at)
    assert "\n" not in info.value.detail
    return info.value


# --- success --------------------------------------------------------------------------------------------


def test_chain_through_downloaded_intermediate(pki: Pki) -> None:
    store = TrustStore([pki.mozilla_like, pki.root])
    chain = store.verify_server(pki.leaf, [pki.inter, pki.root], HOST, NOW)
    assert isinstance(chain, ValidatedChain)
    assert chain.path == (pki.leaf, pki.inter, pki.root)
    assert chain.intermediates == (pki.inter,)
    assert chain.anchor == pki.root


def test_repeated_intermediate_is_deduplicated_before_the_cap(pki: Pki) -> None:
    store = TrustStore([pki.root], max_intermediates=1)
    assert store.verify_server(pki.leaf, [pki.inter] * 50, HOST, NOW).anchor == pki.root


def test_ip_literal_hostname(pki: Pki) -> None:
    ip = ipaddress.ip_address("192.0.2.10")
    leaf = ee_cert(pki.keys.leaf, pki.inter.subject, pki.keys.inter, sans=[x509.IPAddress(ip)])
    store = TrustStore([pki.root])
    assert store.verify_server(leaf, [pki.inter], "192.0.2.10", NOW).leaf == leaf
    assert refused(store, leaf, [pki.inter], hostname="192.0.2.11").code == "CHAIN_INVALID"


def test_validation_uses_the_given_time_not_the_wall_clock(pki: Pki) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    leaf = ee_cert(
        pki.keys.leaf,
        pki.inter.subject,
        pki.keys.inter,
        not_before=start,
        not_after=start + timedelta(days=365),
    )
    root = ca_cert(dn("Lab Root CA"), pki.keys.root, not_before=start, not_after=start + timedelta(days=3650))
    inter = ca_cert(
        dn("Lab Issuing CA"),
        pki.keys.inter,
        root.subject,
        pki.keys.root,
        not_before=start,
        not_after=root.not_valid_after_utc,
    )
    store = TrustStore([root])
    assert store.verify_server(leaf, [inter], HOST, datetime(2030, 6, 1, tzinfo=UTC)).anchor == root
    assert refused(store, leaf, [inter], at=NOW).code == "CHAIN_INVALID"


# --- diagnosis: CHAIN_INCOMPLETE ----------------------------------------------------------------------------


def test_missing_intermediate_names_its_dn(pki: Pki) -> None:
    error = refused(TrustStore([pki.root]), pki.leaf, [])
    assert (error.stage, error.code) == (Stage.ROOT_CHAIN, "CHAIN_INCOMPLETE")
    assert (
        error.detail
        == "no path to a shipped root: missing issuer CN=Lab Issuing CA,O=phoneprov lab (of CN=pool.lab.test)"
    )
    assert first_missing_issuer(pki.leaf, [], [pki.root]) == pki.inter.subject


def test_unshipped_root_is_named_even_when_downloaded(pki: Pki) -> None:
    """The download's self-signed top is available but is not an anchor: it is the missing shipped root."""
    store = TrustStore([pki.mozilla_like])
    error = refused(store, pki.leaf, [pki.inter, pki.root])
    assert error.code == "CHAIN_INCOMPLETE"
    assert "missing issuer CN=Lab Root CA,O=phoneprov lab" in error.detail
    assert "not a shipped root" in error.detail
    assert first_missing_issuer(pki.leaf, [pki.inter, pki.root], store.anchors) == pki.root.subject


def test_unshipped_root_not_downloaded_is_named_as_missing_issuer(pki: Pki) -> None:
    error = refused(TrustStore([pki.mozilla_like]), pki.leaf, [pki.inter])
    assert error.detail.endswith(
        "missing issuer CN=Lab Root CA,O=phoneprov lab (of CN=Lab Issuing CA,O=phoneprov lab)"
    )


def test_self_signed_server_certificate_is_its_own_missing_root(pki: Pki) -> None:
    key = pki.keys.leaf
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    leaf = ee_cert(key, name, key)
    error = refused(TrustStore([pki.root]), leaf, [])
    assert error.code == "CHAIN_INCOMPLETE"
    assert (
        "missing issuer CN=pool.lab.test (of CN=pool.lab.test: self-issued, not a shipped root)"
        in error.detail
    )


def test_downloaded_root_impersonating_a_shipped_root_is_never_an_anchor(pki: Pki) -> None:
    """Same DN as the shipped root, attacker's key: a path exists by name, so the failure is CHAIN_INVALID."""
    fake_root = ca_cert(pki.root.subject, pki.keys.evil)
    fake_inter = ca_cert(pki.inter.subject, pki.keys.inter, fake_root.subject, pki.keys.evil, serial=3)
    error = refused(TrustStore([pki.root]), pki.leaf, [fake_inter, fake_root])
    assert error.code == "CHAIN_INVALID"
    assert first_missing_issuer(pki.leaf, [fake_inter, fake_root], [pki.root]) is None


def test_first_missing_issuer_is_none_when_an_anchor_is_reachable_by_name(pki: Pki) -> None:
    assert first_missing_issuer(pki.leaf, [pki.inter], [pki.root]) is None
    assert first_missing_issuer(pki.leaf, [pki.inter], [pki.root], max_depth=1) is None


# --- CHAIN_INVALID --------------------------------------------------------------------------------------


def test_expired_leaf(pki: Pki) -> None:
    leaf = ee_cert(
        pki.keys.leaf,
        pki.inter.subject,
        pki.keys.inter,
        not_before=NOW - timedelta(days=400),
        not_after=NOW - timedelta(days=1),
    )
    error = refused(TrustStore([pki.root]), leaf, [pki.inter])
    assert error.code == "CHAIN_INVALID"
    assert "not valid at validation time" in error.detail
    assert "CN=pool.lab.test" in error.detail


def test_wrong_hostname(pki: Pki) -> None:
    error = refused(TrustStore([pki.root]), pki.leaf, [pki.inter], hostname="other.lab.test")
    assert error.code == "CHAIN_INVALID"
    assert "subjectAltName" in error.detail


def test_client_only_certificate_is_not_a_server(pki: Pki) -> None:
    leaf = ee_cert(pki.keys.leaf, pki.inter.subject, pki.keys.inter, eku=ExtendedKeyUsageOID.CLIENT_AUTH)
    assert refused(TrustStore([pki.root]), leaf, [pki.inter]).code == "CHAIN_INVALID"


def test_chain_deeper_than_allowed(pki: Pki) -> None:
    sub = ca_cert(dn("Lab Sub CA"), pki.keys.other, pki.inter.subject, pki.keys.inter, serial=4)
    leaf = ee_cert(pki.keys.leaf, sub.subject, pki.keys.other)
    assert TrustStore([pki.root]).verify_server(leaf, [sub, pki.inter], HOST, NOW).intermediates == (
        sub,
        pki.inter,
    )
    assert refused(TrustStore([pki.root], max_chain_depth=1), leaf, [sub, pki.inter]).code == "CHAIN_INVALID"


def test_bad_hostname_is_a_clear_error(pki: Pki) -> None:
    error = refused(TrustStore([pki.root]), pki.leaf, [pki.inter], hostname="not a host!")
    assert error.code == "CHAIN_INVALID"
    assert "not a valid DNS name or IP address" in error.detail


def test_naive_time_is_a_programming_error(pki: Pki, certprov: x509.Certificate) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        TrustStore([pki.root]).verify_server(pki.leaf, [pki.inter], HOST, NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="timezone-aware"):
        TrustStore([certprov]).verify_client(pki.leaf, [], NOW.replace(tzinfo=None))


# --- hostile chains -------------------------------------------------------------------------------------


def same_subject_same_key(keys: Keys, count: int) -> list[x509.Certificate]:
    """``count`` CA certificates all named and keyed alike, each claiming to be issued by that same name."""
    evil = dn("Evil CA")
    return [ca_cert(evil, keys.evil, evil, keys.evil, serial=100 + i) for i in range(count)]


def test_too_many_intermediates_refused_without_path_building(pki: Pki) -> None:
    pool = same_subject_same_key(pki.keys, 100)
    leaf = ee_cert(pki.keys.leaf, pool[0].subject, pki.keys.evil)
    error = refused(TrustStore([pki.root]), leaf, pool)
    assert (error.stage, error.code) == (Stage.ROOT_CHAIN, "CHAIN_REFUSED")
    assert error.detail == "the server offers 100 intermediates; at most 10 are considered"


def test_hostile_chain_at_the_cap_fails_fast(pki: Pki) -> None:
    """DoS regression: 10 self-issued look-alikes make a naive path search exponential.

    cryptography>=50 (setup.cfg) bounds path construction by a signature-check budget; before it, 48.0.0
    spent minutes on such input. The one timing guard of this suite.
    """
    pool = same_subject_same_key(pki.keys, 10)
    leaf = ee_cert(pki.keys.leaf, pool[0].subject, pki.keys.evil)
    store = TrustStore([pki.root])
    started = time.process_time()
    error = refused(store, leaf, pool)
    assert time.process_time() - started < 5.0
    assert error.stage is Stage.ROOT_CHAIN
    assert error.code == "CHAIN_INCOMPLETE"
    assert "missing issuer CN=Evil CA,O=phoneprov lab" in error.detail


def test_eleven_distinct_intermediates_are_refused(pki: Pki) -> None:
    pool = [
        ca_cert(dn(f"CA {i}"), pki.keys.other, pki.root.subject, pki.keys.root, serial=10 + i)
        for i in range(10)
    ]
    error = refused(TrustStore([pki.root]), pki.leaf, [pki.inter, *pool])
    assert error.code == "CHAIN_REFUSED"
    assert "offers 11 intermediates; at most 10" in error.detail


# --- client certificates (CERT_REQUEST) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def certprov(keys: Keys) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Communications Server")])
    return ca_cert(name, keys.other)


SIP_SAN = (x509.UniformResourceIdentifier("sip:user@lab.test"),)


def user_cert(
    keys: Keys,
    ca: x509.Certificate,
    sans: Sequence[x509.GeneralName] = SIP_SAN,
    not_after: datetime = NOW + timedelta(hours=8),
) -> x509.Certificate:
    """What the pool's CertProv CA issues (protocol.md §7.3): SAN URI sip:..., EKU clientAuth."""
    return ee_cert(
        keys.leaf,
        ca.subject,
        keys.other,
        sans=sans,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        subject="user@lab.test",
        not_after=not_after,
    )


def test_user_certificate_with_uri_only_san_is_accepted(keys: Keys, certprov: x509.Certificate) -> None:
    cert = user_cert(keys, certprov)
    chain = TrustStore([certprov]).verify_client(cert, [], NOW)
    assert chain.path == (cert, certprov)


def test_user_certificate_without_san_is_refused(keys: Keys, certprov: x509.Certificate) -> None:
    """cryptography's client verifier demands a SAN (any type); the pool always sets the SIP URI."""
    with pytest.raises(StageError) as info:
        TrustStore([certprov]).verify_client(user_cert(keys, certprov, sans=[]), [], NOW)
    assert (info.value.stage, info.value.code) == (Stage.CERT_REQUEST, "BadCertificate")


def test_user_certificate_from_another_ca_names_the_missing_issuer(
    keys: Keys, certprov: x509.Certificate, pki: Pki
) -> None:
    with pytest.raises(StageError) as info:
        TrustStore([pki.root]).verify_client(user_cert(keys, certprov), [], NOW)
    assert info.value.code == "BadCertificate"
    assert info.value.detail == (
        "no path to the CertProv CA: missing issuer CN=Communications Server (of CN=user@lab.test)"
    )


def test_expired_user_certificate(keys: Keys, certprov: x509.Certificate) -> None:
    cert = user_cert(keys, certprov, not_after=NOW - timedelta(minutes=1))
    with pytest.raises(StageError, match="not valid at validation time") as info:
        TrustStore([certprov]).verify_client(cert, [], NOW)
    assert info.value.stage is Stage.CERT_REQUEST


def test_client_intermediate_cap(keys: Keys, certprov: x509.Certificate) -> None:
    pool = same_subject_same_key(keys, 3)
    with pytest.raises(StageError, match="offers 3 intermediates; at most 2") as info:
        TrustStore([certprov], max_intermediates=2).verify_client(user_cert(keys, certprov), pool, NOW)
    assert info.value.code == "BadCertificate"


# --- construction and PEM loading -----------------------------------------------------------------------


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def test_from_pem_files_skips_keys_and_comments(tmp_path: Path, pki: Pki) -> None:
    key_pem = pki.keys.leaf.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(
        b"# lab bundle\n" + pem(pki.root) + key_pem + b"junk\n" + pem(pki.mozilla_like) + pem(pki.root)
    )
    store = TrustStore.from_pem_files([bundle], max_intermediates=3)
    assert len(store) == 2
    assert set(store.anchors) == {pki.root, pki.mozilla_like}
    assert store.max_intermediates == 3
    assert store.notes == ()


def test_from_pem_files_drops_a_corrupt_certificate_with_a_note(tmp_path: Path, pki: Pki) -> None:
    bundle = tmp_path / "bundle.pem"
    corrupt = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    bundle.write_bytes(corrupt + pem(pki.root))
    store = TrustStore.from_pem_files([bundle])
    assert store.anchors == (pki.root,)
    assert len(store.notes) == 1
    assert "PEM block 0 skipped" in store.notes[0]


@pytest.mark.parametrize(
    "content", [b"", b"# nothing\n", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_file_without_certificates_is_no_anchors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.pem"
    path.write_bytes(content)
    with pytest.raises(StageError, match="no usable certificate") as info:
        TrustStore.from_pem_files([path])
    assert (info.value.stage, info.value.code) == (Stage.ROOT_CHAIN, "NO_ANCHORS")


def test_missing_file_is_no_anchors(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="cannot read") as info:
        TrustStore.from_pem_files([tmp_path / "absent.pem"])
    assert info.value.code == "NO_ANCHORS"


def test_no_anchors_at_all() -> None:
    with pytest.raises(StageError) as info:
        TrustStore([])
    assert info.value.code == "NO_ANCHORS"
