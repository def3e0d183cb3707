"""Shipped anchors: the certifi build step and the lab-root intake (add_root) refusing non-roots."""

from __future__ import annotations

import stat
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

import certs
from agent.truststore import TrustStore
from certs import RootError, add_root, anchor_files, list_roots, shipped_bundle
from certs.build import build, main

START = datetime(2026, 1, 1, tzinfo=UTC)


def certifi_count() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few Mozilla roots have serial 0 and cryptography warns
        return len(x509.load_pem_x509_certificates(Path(certifi.where()).read_bytes()))


def make_cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool | None = True,
    issuer: str | None = None,
    signer: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    """A certificate for ``cn``: self-signed unless ``issuer``/``signer`` are given; ``ca=None``: no BC."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or cn)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START)
        .not_valid_after(START + timedelta(days=3650))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    return builder.sign(signer or key, hashes.SHA256())


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def other_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- certs.build ----------------------------------------------------------------------------------------


def test_build_copies_certifi_with_a_header(tmp_path: Path) -> None:
    out = tmp_path / "build" / "mozilla-roots.pem"
    count, changed = build(out)
    assert changed
    assert count == certifi_count()
    data = out.read_bytes()
    header = data.partition(b"\n# Generated")[0]
    assert f"certifi {certifi.__version__}, {count} certificates".encode() in header
    assert data.endswith(Path(certifi.where()).read_bytes())
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert list(out.parent.iterdir()) == [out]  # no temp file left behind


def test_build_is_idempotent(tmp_path: Path) -> None:
    out = tmp_path / "roots.pem"
    build(out)
    first = out.read_bytes()
    count, changed = build(out)
    assert not changed
    assert out.read_bytes() == first
    assert count == certifi_count()


def test_build_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.pem"
    assert main(["--out", str(out)]) == 0
    assert f"{certifi_count()} certificates from certifi" in capsys.readouterr().out
    assert out.is_file()


def test_built_bundle_loads_as_phone_anchors(tmp_path: Path) -> None:
    out = tmp_path / "roots.pem"
    count, _ = build(out)
    store = TrustStore.from_pem_files([out])
    assert len(store) == count


# --- bundle location ------------------------------------------------------------------------------------


def test_missing_bundle_says_run_make_certs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(certs, "BUILD_BUNDLE", tmp_path / "absent.pem")
    with pytest.raises(FileNotFoundError, match="run `make certs`"):
        shipped_bundle()


def test_anchor_files_lists_bundle_roots_and_extra_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = write(tmp_path, "bundle.pem", b"")
    roots = tmp_path / "roots"
    extra = tmp_path / "extra"
    for directory in (roots, extra):
        directory.mkdir()
        write(directory, "b.pem", b"")
        write(directory, "a.pem", b"")
        write(directory, "notes.txt", b"")
    monkeypatch.setattr(certs, "BUILD_BUNDLE", bundle)
    monkeypatch.setattr(certs, "ROOTS_DIR", roots)
    files = anchor_files([extra, tmp_path / "missing"])
    assert files == [bundle, roots / "a.pem", roots / "b.pem", extra / "a.pem", extra / "b.pem"]


# --- add_root / list_roots -------------------------------------------------------------------------------


def test_add_root_accepts_a_self_signed_ca(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    root = make_cert("Lab Root CA", key)
    roots = tmp_path / "roots"
    target = add_root(write(tmp_path, "lab.pem", root.public_bytes(Encoding.PEM)), roots)
    assert target == roots / (root.fingerprint(hashes.SHA256()).hex()[:16] + ".pem")
    assert x509.load_pem_x509_certificate(target.read_bytes()) == root
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert add_root(write(tmp_path, "again.der", root.public_bytes(Encoding.DER)), roots) == target
    assert sorted(p.name for p in roots.iterdir()) == [target.name]


def test_list_roots(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey
) -> None:
    first = make_cert("Lab Root A", key)
    second = make_cert("Lab Root B", other_key)
    paths = {
        add_root(write(tmp_path, f"{i}.pem", c.public_bytes(Encoding.PEM)), tmp_path / "r")
        for i, c in enumerate((first, second))
    }
    entries = list_roots(tmp_path / "r")
    assert {e.path for e in entries} == paths
    assert {(e.subject, e.not_after) for e in entries} == {
        ("CN=Lab Root A", first.not_valid_after_utc),
        ("CN=Lab Root B", second.not_valid_after_utc),
    }


def test_list_roots_names_an_unreadable_file(tmp_path: Path) -> None:
    write(tmp_path, "broken.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(RootError, match=r"broken\.pem: unreadable lab root"):
        list_roots(tmp_path)


def refusal(tmp_path: Path, data: bytes) -> str:
    roots = tmp_path / "roots"
    with pytest.raises(RootError) as info:
        add_root(write(tmp_path, "candidate.pem", data), roots)
    assert not roots.exists() or not any(roots.iterdir())
    message = str(info.value)
    assert "\n" not in message
    return message


def test_add_root_refuses_a_leaf(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    assert "is not a CA (basicConstraints CA=false)" in refusal(
        tmp_path, make_cert("leaf.lab.test", key, ca=False).public_bytes(Encoding.PEM)
    )
    assert "is not a CA (no basicConstraints)" in refusal(
        tmp_path, make_cert("old.lab.test", key, ca=None).public_bytes(Encoding.PEM)
    )


def test_add_root_refuses_an_intermediate(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey
) -> None:
    inter = make_cert("Lab Issuing CA", key, issuer="Lab Root CA", signer=other_key)
    assert "not self-signed (issued by CN=Lab Root CA)" in refusal(tmp_path, inter.public_bytes(Encoding.PEM))


def test_add_root_refuses_a_self_named_ca_signed_by_another_key(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey
) -> None:
    forged = make_cert("Lab Root CA", key, signer=other_key)
    assert "not self-signed (own signature" in refusal(tmp_path, forged.public_bytes(Encoding.PEM))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x00garbage\xff", "not a certificate (neither PEM nor DER X.509)"),
        (
            b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
            "no parsable PEM certificate",
        ),
        (b"", "not a certificate"),
    ],
)
def test_add_root_refuses_garbage(tmp_path: Path, data: bytes, expected: str) -> None:
    assert expected in refusal(tmp_path, data)


def test_add_root_refuses_a_bundle(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey
) -> None:
    data = b"".join(
        make_cert(f"Root {i}", k).public_bytes(Encoding.PEM) for i, k in enumerate((key, other_key))
    )
    assert "holds 2 certificates; add one root at a time" in refusal(tmp_path, data)


def test_add_root_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RootError, match="cannot read"):
        add_root(tmp_path / "absent.pem", tmp_path / "roots")
    assert issubclass(RootError, ValueError)
