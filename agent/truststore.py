"""The phone's trust store: shipped roots as the only anchors, path validation by ``cryptography``.

design.md §3 "Never trust silently": downloaded certificates only ever supply intermediates, anchors are the
roots shipped in the image, and path building is ``cryptography.x509.verification`` (no hand-written
validation). What this module adds is *diagnosis*: when no path exists, :func:`first_missing_issuer` walks the
offered certificates by issuer name so the failure names the issuer DN the lab must serve or ship
(protocol.md §5, failure 3 of design.md §1).

Hostile input is bounded twice: more than ``max_intermediates`` distinct intermediates are refused before
any path is built, and ``cryptography>=50`` (setup.cfg) stops path construction after a fixed budget of
signature checks ("Exceeded maximum signature check limit"). Before that budget, 48.0.0 spent over ten CPU
minutes on a hundred intermediates sharing one subject and key (x509-limbo
``pathological-chain-same-subject-same-key``); with it such chains fail in milliseconds.

Client certificates (stage CERT_REQUEST, the user certificate from the pool's CertProv CA) use
``cryptography``'s default client verifier. Checked against 50.0.2: it demands a subjectAltName on the leaf
but accepts any GeneralName type in it, so the URI-only SAN ``sip:user@domain`` passes and no custom
``extension_policies`` are needed; it also demands an authorityKeyIdentifier on the leaf, and an EKU, when
present, must include clientAuth.
"""

from __future__ import annotations

import ipaddress
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import (
    PolicyBuilder,
    Store,
    Subject,
    VerificationError,
)

from agent.stages import X509_ERRORS, Stage, StageError

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s.*?-----END \1-----", re.DOTALL)
_PROCESSING = re.compile(r"\(encountered processing <Certificate\(subject=<Name\((.*?)\)>, \.\.\.\)>\)")
_NAME_WALK_DEPTH = 16


@dataclass(frozen=True)
class ValidatedChain:
    """A path cryptography accepted: the leaf, the intermediates it used, and the shipped anchor."""

    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    anchor: x509.Certificate

    @property
    def path(self) -> tuple[x509.Certificate, ...]:
        """Leaf first, anchor last."""
        return (self.leaf, *self.intermediates, self.anchor)


class TrustStore:
    """Shipped anchors plus the caps that keep an untrusted certificate download cheap to refuse."""

    def __init__(
        self,
        anchors: Sequence[x509.Certificate],
        *,
        max_intermediates: int = 10,
        max_chain_depth: int = 6,
        notes: Sequence[str] = (),
    ) -> None:
        unique = _dedup(anchors)
        if not unique:
            raise StageError(Stage.ROOT_CHAIN, "NO_ANCHORS", "the trust store has no anchors")
        self._anchors = unique
        self._store = Store(list(unique))
        self.max_intermediates = max_intermediates
        self.max_chain_depth = max_chain_depth
        self.notes = tuple(notes)

    @classmethod
    def from_pem_files(cls, paths: Iterable[Path], **caps: int) -> TrustStore:
        """Anchors from PEM bundles; non-certificate blocks (keys, CRLs) and comments are skipped.

        A certificate block that does not parse is dropped, not fatal, and described in :attr:`notes` for
        the boot log, as are cryptography's warnings: six Mozilla roots (GoDaddy/Starfield G2 among them)
        carry serial 0, which cryptography 50 warns about and announces it will refuse, and one such root
        must not make the whole image unbootable. A file that yields no certificate at all is an error.
        """
        anchors: list[x509.Certificate] = []
        notes: list[str] = []
        for path in paths:
            certs, file_notes = _load_pem_bundle(Path(path))
            anchors.extend(certs)
            notes.extend(file_notes)
        return cls(anchors, notes=notes, **caps)

    @property
    def anchors(self) -> tuple[x509.Certificate, ...]:
        return self._anchors

    def __len__(self) -> int:
        return len(self._anchors)

    def verify_server(
        self,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate],
        hostname: str,
        at: datetime,
    ) -> ValidatedChain:
        """Validate a Web Services certificate for ``hostname`` (DNS name or IP literal) at time ``at``."""
        pool = self._capped(intermediates, Stage.ROOT_CHAIN, "CHAIN_REFUSED", "the server")
        builder = self._builder(at)
        try:
            verifier = builder.build_server_verifier(_subject(hostname))
        except ValueError:
            detail = f"hostname {hostname!r} is not a valid DNS name or IP address"
            raise StageError(Stage.ROOT_CHAIN, "CHAIN_INVALID", detail) from None
        try:
            chain = verifier.verify(leaf, list(pool))
        except VerificationError as exc:
            missing = self._missing(leaf, pool)
            if missing:
                raise StageError(
                    Stage.ROOT_CHAIN, "CHAIN_INCOMPLETE", f"no path to a shipped root: {missing}"
                ) from None
            raise StageError(Stage.ROOT_CHAIN, "CHAIN_INVALID", _reason(exc)) from None
        return _validated(chain)

    def verify_client(
        self, cert: x509.Certificate, intermediates: Sequence[x509.Certificate], at: datetime
    ) -> ValidatedChain:
        """Validate a user (TLS client) certificate against these anchors, e.g. the pool's CertProv CA."""
        pool = self._capped(intermediates, Stage.CERT_REQUEST, "BadCertificate", "the certificate response")
        verifier = self._builder(at).build_client_verifier()
        try:
            verified = verifier.verify(cert, list(pool))
        except (VerificationError, x509.UnsupportedGeneralNameType, ValueError) as exc:
            missing = self._missing(cert, pool)
            detail = f"no path to the CertProv CA: {missing}" if missing else _reason(exc)
            raise StageError(Stage.CERT_REQUEST, "BadCertificate", detail) from None
        return _validated(verified.chain)

    def _builder(self, at: datetime) -> PolicyBuilder:
        if at.tzinfo is None:
            raise ValueError("validation time must be timezone-aware")
        return (
            PolicyBuilder().store(self._store).time(at.astimezone(UTC)).max_chain_depth(self.max_chain_depth)
        )

    def _capped(
        self, intermediates: Sequence[x509.Certificate], stage: Stage, code: str, who: str
    ) -> tuple[x509.Certificate, ...]:
        pool = _dedup(intermediates)
        if len(pool) > self.max_intermediates:
            raise StageError(
                stage,
                code,
                f"{who} offers {len(pool)} intermediates; at most {self.max_intermediates} are considered",
            )
        return pool

    def _missing(self, leaf: x509.Certificate, pool: Sequence[x509.Certificate]) -> str | None:
        found = _walk(leaf, pool, self._anchors, _NAME_WALK_DEPTH)
        if found is None:
            return None
        missing, child = found
        if missing == child:
            return f"missing issuer {_dn(missing)} (of {_dn(child)}: self-issued, not a shipped root)"
        return f"missing issuer {_dn(missing)} (of {_dn(child)})"


def first_missing_issuer(
    leaf: x509.Certificate,
    pool: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    max_depth: int = _NAME_WALK_DEPTH,
) -> x509.Name | None:
    """Diagnosis only, never validation: the issuer name the offered certificates fail to reach.

    Walks from ``leaf`` by issuer name through ``pool`` (breadth first, each name once, ``max_depth``
    levels). None when some walk reaches an anchor's subject (a path exists by name, so the failure is
    something else: dates, hostname, signature). Otherwise the first issuer name no certificate in the
    pool has as subject; failing that, the subject of a self-issued top that is not an anchor (a root the
    server sends but the phone does not ship).
    """
    found = _walk(leaf, pool, anchors, max_depth)
    return found[0] if found else None


def _walk(
    leaf: x509.Certificate,
    pool: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    max_depth: int,
) -> tuple[x509.Name, x509.Name] | None:
    """(missing issuer, subject of the certificate naming it), or None if an anchor is reachable by name."""
    anchor_names = {a.subject for a in anchors}
    by_subject: dict[x509.Name, list[x509.Certificate]] = {}
    for cert in pool:
        by_subject.setdefault(cert.subject, []).append(cert)
    frontier = [(leaf.issuer, leaf.subject)]
    seen: set[x509.Name] = set()
    dangling: tuple[x509.Name, x509.Name] | None = None
    untrusted_top: tuple[x509.Name, x509.Name] | None = None
    for _ in range(max_depth):
        following: list[tuple[x509.Name, x509.Name]] = []
        for name, child in frontier:
            if name in anchor_names:
                return None
            if name == child:
                untrusted_top = untrusted_top or (name, name)
                continue
            if name in seen:
                continue
            seen.add(name)
            candidates = by_subject.get(name)
            if not candidates:
                dangling = dangling or (name, child)
            following.extend((cert.issuer, name) for cert in candidates or ())
        if not following:
            break
        frontier = following
    return dangling or untrusted_top


def _validated(chain: Sequence[x509.Certificate]) -> ValidatedChain:
    return ValidatedChain(leaf=chain[0], intermediates=tuple(chain[1:-1]), anchor=chain[-1])


def _dedup(certs: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """Certificates with distinct DER, first occurrence kept (a repeated intermediate costs nothing)."""
    seen: dict[bytes, x509.Certificate] = {}
    for cert in certs:
        seen.setdefault(cert.public_bytes(Encoding.DER), cert)
    return tuple(seen.values())


def _subject(hostname: str) -> Subject:
    """An IP literal becomes an IPAddress subject, anything else a DNSName (one trailing dot dropped)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname.removesuffix("."))


def _reason(exc: BaseException | str) -> str:
    """cryptography's reason on one line, naming the certificate it was processing by its subject DN."""
    text = " ".join(str(exc).split()).removeprefix("validation failed: ")
    text = _PROCESSING.sub(r"(certificate \1)", text)
    return text or "unknown reason"


def _dn(name: x509.Name) -> str:
    return name.rfc4514_string() or "<empty DN>"


def _load_pem_bundle(path: Path) -> tuple[list[x509.Certificate], list[str]]:
    """The certificates of one PEM file and notes on what was dropped or warned about."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StageError(Stage.ROOT_CHAIN, "NO_ANCHORS", f"{path}: cannot read ({exc.strerror})") from None
    certs: list[x509.Certificate] = []
    notes: list[str] = []
    for index, match in enumerate(_PEM_BLOCK.finditer(data)):
        if match.group(1) != b"CERTIFICATE":
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                cert = x509.load_pem_x509_certificate(match.group(0))
            except X509_ERRORS as exc:
                notes.append(f"{path}: PEM block {index} skipped, not a certificate ({_reason(exc)})")
                continue
        certs.append(cert)
        notes.extend(f"{path}: {_dn(cert.subject)}: {_reason(w.message)}" for w in caught)
    if not certs:
        raise StageError(Stage.ROOT_CHAIN, "NO_ANCHORS", f"{path}: no usable certificate in this PEM file")
    return certs, notes
