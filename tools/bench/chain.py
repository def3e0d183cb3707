"""Chain validation: our TrustStore vs raw cryptography and OpenSSL (pyOpenSSL X509StoreContext), on the
pool's real chain and on a hostile chain of many intermediates sharing one subject and key."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from OpenSSL import crypto

from agent.truststore import TrustStore
from tools.bench.timing import once_ms, per_call_us, ratio
from tools.pool.ca import PoolCA

HOSTILE = 100
COUNT = 300


def _openssl_verify(anchor: x509.Certificate, leaf: x509.Certificate, chain: list[x509.Certificate]) -> None:
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(anchor))
    ctx = crypto.X509StoreContext(
        store, crypto.X509.from_cryptography(leaf), [crypto.X509.from_cryptography(c) for c in chain]
    )
    ctx.verify_certificate()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _hostile(at: datetime) -> tuple[x509.Certificate, x509.Certificate, list[x509.Certificate]]:
    """An untrusted root, HOSTILE intermediates with one subject and one key, a leaf under them."""
    key = ec.generate_private_key(ec.SECP256R1())
    ikey = ec.generate_private_key(ec.SECP256R1())

    def cert(
        subject: str,
        issuer: str,
        signer: ec.EllipticCurvePrivateKey,
        pub: ec.EllipticCurvePrivateKey,
        ca: bool,
        serial: int,
    ) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(_name(issuer))
            .public_key(pub.public_key())
            .serial_number(serial)
            .not_valid_before(at - timedelta(days=1))
            .not_valid_after(at + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
            )
        )
        if ca:
            b = b.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("pool.lab.test")]), critical=False)
        return b.sign(signer, hashes.SHA256())

    root = cert("hostile root", "hostile root", key, key, True, 1)
    mids = [cert("loop CA", "loop CA", ikey, ikey, True, 100 + i) for i in range(HOSTILE)]
    leaf = cert("pool.lab.test", "loop CA", ikey, key, False, 2)
    return root, leaf, mids


def run() -> list[str]:
    at = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        ca = PoolCA.load_or_create(Path(tmp), "pool.lab.test", at=at)
    leaf, chain, root = ca.web_cert, [ca.issuing], ca.root
    ours_store = TrustStore([root])
    raw = PolicyBuilder().store(Store([root])).time(at).build_server_verifier(x509.DNSName("pool.lab.test"))
    a = per_call_us(lambda: ours_store.verify_server(leaf, chain, "pool.lab.test", at), COUNT)
    b = per_call_us(lambda: raw.verify(leaf, chain), COUNT)
    c = per_call_us(lambda: _openssl_verify(root, leaf, chain), COUNT)
    lines = [
        f"Chain validation, pool chain leaf <- issuing CA <- lab root ({COUNT} calls x 5)",
        f"  ours (TrustStore.verify_server)       {a:8.1f} µs",
        f"  raw cryptography PolicyBuilder        {b:8.1f} µs   ratio {ratio(a, b)}",
        f"  OpenSSL X509StoreContext              {c:8.1f} µs   ratio {ratio(a, c)}",
    ]
    hroot, hleaf, mids = _hostile(at)
    hours = TrustStore([hroot])
    hraw = PolicyBuilder().store(Store([hroot])).time(at).build_server_verifier(x509.DNSName("pool.lab.test"))
    t1, r1 = once_ms(lambda: hours.verify_server(hleaf, mids, "pool.lab.test", at))
    t2, r2 = once_ms(lambda: hraw.verify(hleaf, mids))
    t3, r3 = once_ms(lambda: _openssl_verify(hroot, hleaf, mids))
    lines += [
        f"Hostile chain: {HOSTILE} intermediates sharing one subject and key (one call each)",
        f"  ours                                  {t1:8.1f} ms   {_outcome(r1)}",
        f"  raw cryptography PolicyBuilder        {t2:8.1f} ms   {_outcome(r2)}",
        f"  OpenSSL X509StoreContext              {t3:8.1f} ms   {_outcome(r3)}   ratio ours/OpenSSL {ratio(t1, t3)}",
    ]
    return lines


def _outcome(result: object) -> str:
    if isinstance(result, Exception):
        return f"refused: {' '.join(str(result).split())[:70]}"
    return "accepted"
