"""The registrar's judgement of a phone's TLS-DSK client certificate (protocol.md §8.3).

Order matters for the diagnosis: the chain first (4101 CertUnknown, or 4102 CertExpired when a path exists
and only the dates are wrong), then the name (4103 AorMismatch: the certificate is some other user's), then
the data store (4101 when it is not published for that user or any of its rows is revoked, 4104 when the
store cannot be read). Checking the name before the store makes "Bob's certificate, Alice's From" a 4103,
not a 4101. The registrar runs this at the handshake and again on every signed REGISTER.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from agent.stages import AgentError, one_line
from agent.truststore import TrustStore
from agent.wire.regmsg import aor_key
from tools.pool.errors import PoolError, StoreUnavailable
from tools.pool.regtypes import (
    AOR_MISMATCH,
    CERT_EXPIRED,
    CERT_UNKNOWN,
    DATA_STORE_UNAVAILABLE,
    ClientCheck,
)
from tools.pool.store.contract import PublishedCert, thumbprint_key

__all__ = ["CertificateSource", "certificate_aors", "client_checker"]


class CertificateSource(Protocol):
    """The part of :class:`tools.pool.store.contract.Store` the check reads."""

    def certificates(self, sip_uri: str) -> list[PublishedCert]: ...


def certificate_aors(cert: x509.Certificate) -> set[str]:
    """The AOR keys a certificate names: its SAN URIs, else its CNs (user@domain, as CertProv issues)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except (x509.ExtensionNotFound, ValueError):
        uris = []
    if uris:
        return {aor_key(u) for u in uris}
    return {aor_key(str(a.value)) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}


def client_checker(
    root: x509.Certificate, intermediates: Sequence[x509.Certificate], store: CertificateSource
) -> ClientCheck:
    """A :data:`~tools.pool.regtypes.ClientCheck` against the pool CA and the store (never raises)."""
    trust = TrustStore([root])
    known = tuple(intermediates)

    def check(chain: list[x509.Certificate], aor: str, at: datetime) -> tuple[int, str] | None:
        if not chain:
            return CERT_UNKNOWN, "CertUnknown: no client certificate"
        leaf = chain[0]
        pool = (*chain[1:], *known)
        try:
            trust.verify_client(leaf, pool, at)
        except AgentError as exc:
            if _only_dates_wrong(trust, leaf, pool, at):
                start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
                return CERT_EXPIRED, f"CertExpired: valid {start:%Y-%m-%d %H:%M}Z..{end:%Y-%m-%d %H:%M}Z"
            return CERT_UNKNOWN, f"CertUnknown: not issued by the pool CA ({one_line(exc.detail, 120)})"
        names = certificate_aors(leaf)
        if aor_key(aor) not in names:
            return AOR_MISMATCH, f"AorMismatch: certificate is for {', '.join(sorted(names))}, not {aor}"
        thumb = leaf.fingerprint(hashes.SHA1()).hex().upper()
        try:
            published = [c for c in store.certificates(aor) if thumbprint_key(c.thumbprint) == thumb]
        except StoreUnavailable:
            return DATA_STORE_UNAVAILABLE, "DataStoreUnavailable: the user's data store cannot be read"
        except PoolError as exc:
            return CERT_UNKNOWN, f"CertUnknown: {one_line(exc.detail, 120)}"
        if not published:
            return CERT_UNKNOWN, f"CertUnknown: certificate {thumb} is not published for {aor}"
        if any(c.revoked for c in published):  # one revoked row revokes the certificate
            return CERT_UNKNOWN, f"CertUnknown: certificate {thumb} of {aor} is revoked"
        return None

    return check


def _only_dates_wrong(
    trust: TrustStore, leaf: x509.Certificate, pool: Sequence[x509.Certificate], at: datetime
) -> bool:
    """Outside the leaf's validity, yet a valid path at a moment inside it: only the dates are wrong."""
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if start <= at <= end:
        return False
    try:
        trust.verify_client(leaf, pool, start + (end - start) / 2)
    except AgentError:
        return False
    return True
