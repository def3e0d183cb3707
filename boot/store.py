"""The phone's persistent state: key, certificate and trusted intermediates, written so a power cut at any
instant leaves either the old or the new file (temp file, fsync, rename, fsync the directory).

The private key is written 0600 and never read back by anything but the phone itself.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.atomic import atomic_write

KEY_FILE = "user.key"
CERT_FILE = "user.crt"
CHAIN_FILE = "intermediates.pem"


class StateStore:
    """Files under one state directory (``/var/lib/phoneprov`` on a Pi)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save_key(self, key: rsa.RSAPrivateKey) -> Path:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path = self.root / KEY_FILE
        atomic_write(path, pem, 0o600)
        return path

    def save_certificate(self, cert: x509.Certificate) -> Path:
        path = self.root / CERT_FILE
        atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return path

    def save_intermediates(self, certs: tuple[x509.Certificate, ...]) -> Path:
        path = self.root / CHAIN_FILE
        atomic_write(path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs), 0o644)
        return path

    def load_certificate(self) -> x509.Certificate | None:
        path = self.root / CERT_FILE
        return x509.load_pem_x509_certificate(path.read_bytes()) if path.exists() else None

    def load_key(self) -> rsa.RSAPrivateKey | None:
        path = self.root / KEY_FILE
        if not path.exists():
            return None
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA key")
        return key
