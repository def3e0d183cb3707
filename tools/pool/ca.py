"""The pool's lab CA (protocol.md §7.3, §12): root → issuing CA → web server cert, and user certificates.

The hierarchy is created once and kept in the pool's state directory, because phones pin the lab root among
their shipped roots: regenerating it would make every phone fail ``ROOT_CHAIN``. Files are written atomically
(temp file, fsync, rename, fsync the directory) and keys are 0600, so a power cut leaves the old or the new
file, never half of one. Certificates satisfy ``cryptography``'s webpki verifier (critical BasicConstraints,
KeyUsage on CAs, SKI/AKI, SAN on leaves), which is what the agent validates with.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.atomic import atomic_write
from tools.pool.certpolicy import CertPolicy, check_csr
from tools.pool.errors import ConfigError
from tools.pool.store.contract import require_aware, user_key

__all__ = ["CertPolicy", "PoolCA", "check_csr", "serial_number", "thumbprint"]  # policy re-exported

ROOT_NAME = "phoneprov Lab Root CA"
ISSUING_NAME = "Communications Server"
WEB_KEY_BITS = 2048
_BACKDATE = timedelta(minutes=5)
_ROOT_LIFE = timedelta(days=20 * 365)
_ISSUING_LIFE = timedelta(days=10 * 365)
_WEB_LIFE = timedelta(days=2 * 365)
_WEB_RENEW_BEFORE = timedelta(days=30)
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)

_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 of the DER, upper-case hex: the thumbprint Windows shows and the store keys on."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()


def serial_number() -> int:
    """A random positive serial of exactly 16 bytes (top bit clear so DER needs no padding byte)."""
    return (int.from_bytes(secrets.token_bytes(16), "big") >> 1) | (1 << 126)


def _web_names(pool_fqdn: str, web_names: Sequence[str]) -> tuple[x509.GeneralName, ...]:
    """SAN entries: the pool FQDN first, then the extra names (IP literals as IP entries), deduplicated."""
    out: list[x509.GeneralName] = []
    for raw in (pool_fqdn, *web_names):
        name = raw.strip().lower().rstrip(".")
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            if not _DNS_NAME.match(name):
                raise ConfigError(
                    f"web server name {raw!r} is neither a DNS name nor an IP address"
                ) from None
            entry = x509.DNSName(name)
        if entry not in out:
            out.append(entry)
    if not isinstance(out[0], x509.DNSName):
        raise ConfigError(f"pool FQDN {pool_fqdn!r} must be a DNS name")
    return tuple(out)


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class _Pair:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey


class PoolCA:
    """The lab CA of one pool; build with :meth:`load_or_create`."""

    def __init__(self, state_dir: Path, root: _Pair, issuing: _Pair, web: _Pair) -> None:
        self.state_dir = state_dir
        self._root = root
        self._issuing = issuing
        self._web = web

    # -- files ------------------------------------------------------------------------------------------

    @staticmethod
    def _paths(state_dir: Path, name: str) -> tuple[Path, Path]:
        return state_dir / f"{name}.pem", state_dir / f"{name}.key"

    @classmethod
    def _load(cls, state_dir: Path, name: str) -> _Pair | None:
        """A certificate and its key, or None when either file is missing or they do not belong together."""
        cert_path, key_path = cls._paths(state_dir, name)
        if not cert_path.exists() or not key_path.exists():
            return None
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError, OSError) as exc:
            raise ConfigError(
                f"CA file {cert_path.name}/{key_path.name} in {state_dir} is unreadable: {exc}"
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"CA key {key_path} is not an RSA key")
        if cert.public_key() != key.public_key():
            return None  # a power cut between writing the key and its certificate: re-issue this level
        return _Pair(cert, key)

    @classmethod
    def _save(cls, state_dir: Path, name: str, pair: _Pair) -> None:
        cert_path, key_path = cls._paths(state_dir, name)
        key_pem = pair.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        atomic_write(key_path, key_pem, 0o600)
        atomic_write(cert_path, pair.cert.public_bytes(serialization.Encoding.PEM), 0o644)

    # -- issuing ----------------------------------------------------------------------------------------

    @staticmethod
    def _builder(
        subject: x509.Name, issuer: _Pair | None, key: rsa.RSAPrivateKey, at: datetime, life: timedelta
    ) -> x509.CertificateBuilder:
        public = key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.cert.subject if issuer else subject)
            .public_key(public)
            .serial_number(serial_number())
            .not_valid_before(at - _BACKDATE)
            .not_valid_after(at + life)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )
        if issuer is not None:
            ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
        return builder

    @classmethod
    def _make_root(cls, pool_fqdn: str, bits: int, at: datetime) -> _Pair:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        # DER order O, CN: shown as "CN=phoneprov Lab Root CA, O=<pool>" by Windows and RFC 4514.
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, pool_fqdn),
                x509.NameAttribute(NameOID.COMMON_NAME, ROOT_NAME),
            ]
        )
        cert = (
            cls._builder(subject, None, key, at, _ROOT_LIFE)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .sign(key, hashes.SHA256())
        )
        return _Pair(cert, key)

    @classmethod
    def _make_issuing(cls, root: _Pair, bits: int, at: datetime) -> _Pair:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUING_NAME)])
        cert = (
            cls._builder(subject, root, key, at, _ISSUING_LIFE)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .sign(root.key, hashes.SHA256())
        )
        return _Pair(cert, key)

    @classmethod
    def _make_web(cls, issuing: _Pair, names: tuple[x509.GeneralName, ...], at: datetime) -> _Pair:
        key = rsa.generate_private_key(public_exponent=65537, key_size=WEB_KEY_BITS)
        first = names[0]
        assert isinstance(first, x509.DNSName)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first.value)])
        cert = (
            cls._builder(subject, issuing, key, at, _WEB_LIFE)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_LEAF_USAGE, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
            .sign(issuing.key, hashes.SHA256())
        )
        return _Pair(cert, key)

    @staticmethod
    def _web_is_current(
        web: _Pair, issuing: _Pair, names: tuple[x509.GeneralName, ...], at: datetime
    ) -> bool:
        """Same names, issued by this issuing CA, and not within 30 days of expiry."""
        try:
            san = web.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        return (
            set(san) == set(names)
            and _signed_by(web.cert, issuing.cert)
            and web.cert.not_valid_before_utc <= at < web.cert.not_valid_after_utc - _WEB_RENEW_BEFORE
        )

    @classmethod
    def load_or_create(
        cls,
        state_dir: Path,
        pool_fqdn: str,
        *,
        web_names: Sequence[str] = (),
        ca_key_bits: int = 2048,
        at: datetime,
    ) -> PoolCA:
        """Load the hierarchy from ``state_dir``, create what is missing; re-issue the web cert if stale.

        A level is re-created (with everything below it) only when its files are missing or its key and
        certificate disagree; unreadable files raise ConfigError rather than silently replacing a root.
        """
        if not 2048 <= ca_key_bits <= 16384:
            raise ConfigError(f"CA signing key size {ca_key_bits} is outside 2048..16384")
        at = require_aware(at)
        names = _web_names(pool_fqdn, web_names)
        state_dir = Path(state_dir)
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"CA state directory {state_dir}: {exc.strerror}") from None
        root = cls._load(state_dir, "root")
        issuing = cls._load(state_dir, "issuing") if root else None
        if issuing is not None and root is not None and not _signed_by(issuing.cert, root.cert):
            issuing = None
        web = cls._load(state_dir, "web") if issuing else None
        if root is None:
            root = cls._make_root(pool_fqdn, ca_key_bits, at)
            cls._save(state_dir, "root", root)
        if issuing is None:
            issuing = cls._make_issuing(root, ca_key_bits, at)
            cls._save(state_dir, "issuing", issuing)
        chain_path = state_dir / "web-chain.pem"
        if web is None or not chain_path.exists() or not cls._web_is_current(web, issuing, names, at):
            web = cls._make_web(issuing, names, at)
            cls._save(state_dir, "web", web)
            pem = serialization.Encoding.PEM
            atomic_write(chain_path, web.cert.public_bytes(pem) + issuing.cert.public_bytes(pem), 0o644)
        return cls(state_dir, root, issuing, web)

    # -- what the pool serves ---------------------------------------------------------------------------

    @property
    def root(self) -> x509.Certificate:
        return self._root.cert

    @property
    def issuing(self) -> x509.Certificate:
        return self._issuing.cert

    @property
    def web_cert(self) -> x509.Certificate:
        return self._web.cert

    def rootchain(self) -> list[x509.Certificate]:
        """What ``/rootchain`` serves (§5): the issuing CA, then the root."""
        return [self._issuing.cert, self._root.cert]

    @property
    def tls_cert_chain_pem_path(self) -> Path:
        """Leaf + issuing CA in one PEM, for the HTTPS server."""
        return self.state_dir / "web-chain.pem"

    @property
    def tls_key_path(self) -> Path:
        return self.state_dir / "web.key"

    def issue_user_cert(
        self, csr: x509.CertificateSigningRequest, sip_uri: str, validity_hours: float, at: datetime
    ) -> x509.Certificate:
        """§7.3 step 5: the user's client certificate for the CSR's key, signed by the issuing CA."""
        at = require_aware(at)
        entity = user_key(sip_uri)
        key = csr.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, entity)]))
            .issuer_name(self._issuing.cert.subject)
            .public_key(key)
            .serial_number(serial_number())
            .not_valid_before(at - _BACKDATE)
            .not_valid_after(at + timedelta(hours=validity_hours))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_LEAF_USAGE, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"sip:{entity}")]), critical=False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        )
        ski = self._issuing.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        return builder.sign(self._issuing.key, hashes.SHA256())

    def __repr__(self) -> str:
        return f"PoolCA({str(self.state_dir)!r}, web={thumbprint(self._web.cert)})"
