"""The root-chain body of protocol.md §5: a DER PKCS#7 SignedData carrying certificates only.

The pool serves its web-server issuing CA(s) up to the root this way over plain HTTP; the phone decodes the
body into certificates that only ever *supply intermediates* (never anchors, see :mod:`agent.truststore`).
The body is untrusted, so decoding caps the size, insists on one definite-length DER object with nothing
after it, and turns every parser failure into one :class:`~agent.stages.WireError` line.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from agent.stages import X509_ERRORS, Stage, WireError, one_line

CONTENT_TYPE = "application/pkcs7-mime; smime-type=certs-only"
MAX_BYTES = 256 * 1024

_SEQUENCE = 0x30
_MAX_LENGTH_OCTETS = 4


def encode_certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """The DER certs-only SignedData for ``certs``.

    ``certificates`` is a SET OF, which DER sorts by encoding: the receiver gets the same certificates in
    DER order, not the order given. Path building does not care.
    """
    if not certs:
        raise ValueError("a certs-only PKCS#7 needs at least one certificate")
    return pkcs7.serialize_certificates(list(certs), Encoding.DER)


def decode_certs_only(der: bytes, max_bytes: int = MAX_BYTES) -> tuple[x509.Certificate, ...]:
    """The certificates of a DER certs-only SignedData; :class:`WireError` (ROOT_CHAIN_DOWNLOAD) otherwise."""
    if not der:
        raise _error("root chain body is empty")
    if len(der) > max_bytes:
        raise _error(f"root chain body is {len(der)} bytes; at most {max_bytes} are accepted")
    _check_single_der_object(der)
    with warnings.catch_warnings(record=True) as caught:
        # cryptography quietly retries non-DER input as BER and only warns; the contract is DER.
        warnings.simplefilter("always")
        try:
            certs = pkcs7.load_der_pkcs7_certificates(der)
        except X509_ERRORS as exc:
            raise _error(
                f"root chain body is not a DER PKCS#7 certs-only SignedData ({one_line(exc)})"
            ) from None
    if any("BER" in str(w.message) for w in caught):
        raise _error("root chain body is BER, not DER, PKCS#7")
    if not certs:
        raise _error("root chain PKCS#7 carries no certificates")
    return tuple(certs)


def _check_single_der_object(der: bytes) -> None:
    """One definite-length SEQUENCE spanning exactly ``der`` (no indefinite length, no trailing bytes)."""
    if der[0] != _SEQUENCE or len(der) < 2:
        raise _error("root chain body is not a DER SEQUENCE (not PKCS#7)")
    first = der[1]
    if first < 0x80:
        header, length = 2, first
    else:
        count = first & 0x7F
        if count == 0:
            raise _error("root chain body uses an indefinite length (BER, not DER)")
        if count > _MAX_LENGTH_OCTETS or len(der) < 2 + count:
            raise _error("root chain body has a malformed DER length")
        header, length = 2 + count, int.from_bytes(der[2 : 2 + count], "big")
    if header + length != len(der):
        raise _error(
            f"root chain body length mismatch: DER object is {header + length} bytes, body {len(der)}"
        )


def _error(detail: str) -> WireError:
    return WireError(detail, stage=Stage.ROOT_CHAIN, code="ROOT_CHAIN_DOWNLOAD")
