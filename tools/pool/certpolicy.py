"""Certificate Provisioning policy (protocol.md §12) and the CSR check of §7.3 step 3.

Two facts about ``cryptography`` 50.0.2 shape :func:`check_csr`:

- ``load_der_x509_csr`` refuses any PKCS#10 version but 0 (``InvalidVersion: 2 is not a valid CSR
  version``), yet §7.1 requires accepting what real clients write (pidgin-sipe sends 2). We walk the DER
  ourselves, verify the signature over the *original* CertificationRequestInfo, and only then hand
  ``cryptography`` a copy whose version INTEGER is rewritten to 0 for parsing.
- ``CertificateSigningRequest.is_signature_valid`` answers False for sha1WithRSAEncryption CSRs even
  when the signature is good (and the CSR builder refuses to sign with SHA-1). Lync-era clients sign with
  SHA-1, so the self-signature is verified explicitly with the CSR's own algorithm via the public key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from agent.stages import Stage, one_line
from agent.wire.certprov import CertProvCode
from tools.pool.errors import ConfigError, PoolError

BAD_REQUEST = CertProvCode.BAD_REQUEST
KEY_SIZE_REJECTED = CertProvCode.KEY_SIZE_REJECTED
MAX_CSR_BYTES = 64 * 1024
_HASHES = (hashes.SHA1, hashes.SHA224, hashes.SHA256, hashes.SHA384, hashes.SHA512)


@dataclass(frozen=True)
class CertPolicy:
    """CertProv settings (Lync names in §12); a value outside its documented range raises ConfigError."""

    default_validity_hours: int = 4320
    min_validity_hours: int = 8
    max_validity_hours: int = 8760
    min_csr_key_bits: int = 1024
    max_csr_key_bits: int = 16384

    def __post_init__(self) -> None:
        _in_range("DefaultValidityPeriodHours", self.default_validity_hours, 8, 8760)
        _in_range("MinValidityPeriodHours", self.min_validity_hours, 8, 4320)
        _in_range("MaxValidityPeriodHours", self.max_validity_hours, 8, 8760)
        _in_range("MinCSRKeySize", self.min_csr_key_bits, 1024, 16384)
        _in_range("MaxCSRKeySize", self.max_csr_key_bits, 1024, 16384)
        if not self.min_validity_hours <= self.default_validity_hours <= self.max_validity_hours:
            raise ConfigError(
                f"DefaultValidityPeriodHours {self.default_validity_hours} must lie within "
                f"MinValidityPeriodHours {self.min_validity_hours}.."
                f"MaxValidityPeriodHours {self.max_validity_hours}"
            )
        if self.min_csr_key_bits > self.max_csr_key_bits:
            raise ConfigError(
                f"MinCSRKeySize {self.min_csr_key_bits} exceeds MaxCSRKeySize {self.max_csr_key_bits}"
            )

    def validity_hours(self, requested: float | None) -> float:
        """§7.3 step 4: the requested lifetime clamped to [min, max]; none requested → the default."""
        if requested is None:
            return float(self.default_validity_hours)
        if math.isnan(requested):
            raise PoolError(BAD_REQUEST, "requested certificate lifetime is not a number", Stage.CERT_REQUEST)
        return float(min(max(requested, self.min_validity_hours), self.max_validity_hours))


def _in_range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} {value!r} is outside {low}..{high}")


def _bad(detail: str) -> PoolError:
    return PoolError(BAD_REQUEST, detail, Stage.CERT_REQUEST)


def _tlv(data: bytes, pos: int, end: int, what: str) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``pos``; definite lengths only."""
    if pos + 2 > end:
        raise _bad(f"CSR DER is truncated in {what}")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise _bad(f"CSR DER has a bad length in {what}")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise _bad(f"CSR DER is truncated in {what}")
    return tag, pos, pos + length


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


@dataclass(frozen=True)
class _CsrParts:
    info: bytes  # the CertificationRequestInfo exactly as signed
    version_end: int  # offset in ``info`` just past the version INTEGER
    info_body: int  # offset in ``info`` of its first content byte
    tail: bytes  # signatureAlgorithm + signature, as received
    version: bytes  # the version INTEGER's content bytes


def _split(der: bytes) -> _CsrParts:
    """The three parts of CertificationRequest and the version inside the info (RFC 2986 §4)."""
    tag, start, end = _tlv(der, 0, len(der), "CertificationRequest")
    if tag != 0x30:
        raise _bad("CSR is not a DER SEQUENCE")
    if end != len(der):
        raise _bad("CSR DER has trailing bytes")
    tag, info_start, info_end = _tlv(der, start, end, "CertificationRequestInfo")
    if tag != 0x30:
        raise _bad("CSR CertificationRequestInfo is not a SEQUENCE")
    tag, v_start, v_end = _tlv(der, info_start, info_end, "version")
    if tag != 0x02 or v_start == v_end:
        raise _bad("CSR version is not an INTEGER")
    return _CsrParts(
        info=der[start:info_end],
        version_end=v_end - start,
        info_body=info_start - start,
        tail=der[info_end:end],
        version=der[v_start:v_end],
    )


def _as_version_0(parts: _CsrParts) -> bytes:
    """The same request with version 0, so ``cryptography`` parses it (its signature no longer covers it)."""
    body = b"\x02\x01\x00" + parts.info[parts.version_end :]
    info = b"\x30" + _length(len(body)) + body
    outer = info + parts.tail
    return b"\x30" + _length(len(outer)) + outer


def check_csr(csr_der: bytes, policy: CertPolicy) -> x509.CertificateSigningRequest:
    """Parse a PKCS#10 of any version, verify its self-signature (SHA-1 included) and its RSA key size.

    Raises PoolError 3003 BadRequest (malformed, bad signature) or 3004 KeySizeRejected. For a version ≠ 0
    the returned object carries version 0 and its ``is_signature_valid`` is False: the signature was checked
    here over the bytes the client signed.
    """
    if not csr_der:
        raise _bad("CSR is empty")
    if len(csr_der) > MAX_CSR_BYTES:
        raise _bad(f"CSR is {len(csr_der)} bytes; the limit is {MAX_CSR_BYTES}")
    parts = _split(csr_der)
    parse_der = csr_der if parts.version == b"\x00" else _as_version_0(parts)
    try:
        csr = x509.load_der_x509_csr(parse_der)
        key = csr.public_key()
        algorithm = csr.signature_hash_algorithm
        params = csr.signature_algorithm_parameters
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise _bad(f"CSR is not a valid PKCS#10 request: {one_line(exc)}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise PoolError(
            KEY_SIZE_REJECTED,
            f"CSR key is {type(key).__name__}; only RSA keys are accepted",
            Stage.CERT_REQUEST,
        )
    if not isinstance(algorithm, _HASHES) or not isinstance(params, padding.PKCS1v15 | padding.PSS):
        raise _bad(f"CSR signature algorithm {csr.signature_algorithm_oid.dotted_string} is not accepted")
    try:
        key.verify(csr.signature, parts.info, params, algorithm)
    except (InvalidSignature, ValueError):
        raise _bad("CSR self-signature does not verify") from None
    if not policy.min_csr_key_bits <= key.key_size <= policy.max_csr_key_bits:
        raise PoolError(
            KEY_SIZE_REJECTED,
            f"CSR RSA key is {key.key_size} bits; "
            f"accepted {policy.min_csr_key_bits}..{policy.max_csr_key_bits}",
            Stage.CERT_REQUEST,
        )
    return csr
