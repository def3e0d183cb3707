"""The device image's shipped trust anchors: Mozilla's root set (built from certifi) plus lab roots.

``make certs`` copies certifi's bundle to :data:`BUILD_BUNDLE`; a lab adds its own root with
``phoneprov certs add-root FILE`` (:func:`add_root`), which files it under :data:`ROOTS_DIR`. The phone trusts
exactly :func:`anchor_files` — nothing it downloads ever joins them (design.md §3, "Never trust silently").
Files are written atomically (temp, fsync, rename, fsync the directory) so a power cut leaves old or new.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from agent.atomic import atomic_write
from agent.stages import X509_ERRORS, one_line

PACKAGE_DIR = Path(__file__).resolve().parent
ROOTS_DIR = PACKAGE_DIR / "roots"
BUILD_BUNDLE = PACKAGE_DIR / "build" / "mozilla-roots.pem"


class RootError(ValueError):
    """A file offered as a lab root is not a self-signed CA certificate (one line: which check failed)."""


class RootEntry(NamedTuple):
    path: Path
    subject: str
    not_after: datetime


def shipped_bundle() -> Path:
    """The built Mozilla root bundle; it is a build product, so its absence is a build step not run."""
    if not BUILD_BUNDLE.is_file():
        raise FileNotFoundError(f"{BUILD_BUNDLE} is missing: run `make certs` (python -m certs.build)")
    return BUILD_BUNDLE


def anchor_files(extra_dirs: Iterable[Path] = ()) -> list[Path]:
    """Every PEM file the phone trusts: the Mozilla bundle, the lab roots, then ``*.pem`` of each extra dir.

    Missing extra directories are skipped (they are optional drop-in places, e.g. /etc/phoneprov/roots).
    """
    files = [shipped_bundle()]
    for directory in (ROOTS_DIR, *extra_dirs):
        if Path(directory).is_dir():
            files.extend(sorted(Path(directory).glob("*.pem")))
    return files


def add_root(pem_path: Path, roots_dir: Path = ROOTS_DIR) -> Path:
    """Validate ``pem_path`` as a self-signed CA and file it as ``<16 hex of its SHA-256>.pem`` (0644).

    Idempotent: the same root always lands in the same file.
    """
    cert = _load_one(Path(pem_path))
    _check_self_signed_ca(cert, Path(pem_path))
    name = cert.fingerprint(hashes.SHA256()).hex()[:16] + ".pem"
    target = Path(roots_dir) / name
    atomic_write(target, cert.public_bytes(Encoding.PEM), mode=0o644)
    return target


def list_roots(roots_dir: Path = ROOTS_DIR) -> list[RootEntry]:
    """(path, subject DN, notAfter) of every certificate in the lab roots directory, by file name."""
    entries: list[RootEntry] = []
    for path in sorted(Path(roots_dir).glob("*.pem")):
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except OSError as exc:
            raise RootError(f"{path}: unreadable lab root ({exc.strerror})") from None
        except X509_ERRORS as exc:
            raise RootError(f"{path}: unreadable lab root ({one_line(exc)})") from None
        entries.extend(RootEntry(path, c.subject.rfc4514_string(), c.not_valid_after_utc) for c in certs)
    return entries


def _load_one(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RootError(f"{path}: cannot read ({exc.strerror})") from None
    if b"-----BEGIN" not in data:
        try:
            return x509.load_der_x509_certificate(data)
        except X509_ERRORS:
            raise RootError(f"{path}: not a certificate (neither PEM nor DER X.509)") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except X509_ERRORS:
        raise RootError(f"{path}: no parsable PEM certificate in this file") from None
    if len(certs) != 1:
        raise RootError(f"{path}: holds {len(certs)} certificates; add one root at a time")
    return certs[0]


def _check_self_signed_ca(cert: x509.Certificate, path: Path) -> None:
    subject = cert.subject.rfc4514_string()
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise RootError(f"{path}: {subject} is not a CA (no basicConstraints)") from None
    except X509_ERRORS as exc:
        raise RootError(f"{path}: {subject} has malformed extensions ({one_line(exc)})") from None
    if not constraints.ca:
        raise RootError(f"{path}: {subject} is not a CA (basicConstraints CA=false)")
    if cert.issuer != cert.subject:
        raise RootError(f"{path}: {subject} is not self-signed (issued by {cert.issuer.rfc4514_string()})")
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise RootError(f"{path}: {subject} is not self-signed (own signature: {one_line(exc)})") from None
