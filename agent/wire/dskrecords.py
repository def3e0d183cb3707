"""TLS-DSK's wire container (protocol.md §8.2): TLS records carried base64 in SIP ``gssapi-data``, and the
error every TLS-DSK failure is. Kept apart from the handshake (agent/wire/tlsdsk.py): the phone's flow and the
registrar both decode flights with it, and it checks a flight before OpenSSL sees a byte, so a truncated or
oversized flight is named as such instead of stalling a handshake.
"""

from __future__ import annotations

import base64
import binascii

from agent.stages import Stage, StageError

#: Largest TLS flight accepted in one gssapi-data (a flight is a few KiB; this caps memory, not the protocol).
MAX_FLIGHT_BYTES = 64 * 1024
_MAX_RECORD_BODY = 2**14 + 2048
_RECORD_TYPES = frozenset({20, 21, 22, 23})


class TlsDskError(StageError):
    """The TLS-DSK handshake failed (stage REGISTER). ``reason`` is the certificate check's refusal, if any.

    Codes: ``GSSAPI_DATA`` (not base64 TLS records), ``TLS_HANDSHAKE`` (OpenSSL rejected the records),
    ``SERVER_CERT_REFUSED``, ``CLIENT_CERT_REFUSED``, ``TLS_STATE`` (flight out of order or incomplete).
    """

    def __init__(self, code: str, detail: str, reason: str | None = None) -> None:
        super().__init__(Stage.REGISTER, code, detail)
        self.reason = reason


def gssapi_encode(records: bytes) -> str:
    """The ``gssapi-data`` value for a flight: base64 of the raw records, no line breaks."""
    return base64.b64encode(records).decode("ascii")


def gssapi_decode(text: str) -> bytes:
    """The raw records of a ``gssapi-data`` value; :class:`TlsDskError` (GSSAPI_DATA) if it is not base64."""
    if len(text) > (MAX_FLIGHT_BYTES + 2) // 3 * 4:
        raise TlsDskError("GSSAPI_DATA", f"gssapi-data is {len(text)} characters; too large for a TLS flight")
    try:
        data = base64.b64decode(text.strip().encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise TlsDskError("GSSAPI_DATA", "gssapi-data is not valid base64") from None
    if not data:
        raise TlsDskError("GSSAPI_DATA", "gssapi-data is empty")
    return data


def check_records(data: bytes) -> None:
    """Whole TLS 1.x records only, so that a truncated flight is named as such instead of stalling."""
    if not data:
        raise TlsDskError("GSSAPI_DATA", "empty TLS flight")
    if len(data) > MAX_FLIGHT_BYTES:
        raise TlsDskError("GSSAPI_DATA", f"TLS flight of {len(data)} bytes exceeds {MAX_FLIGHT_BYTES}")
    at = 0
    while at < len(data):
        header = data[at : at + 5]
        if len(header) < 5:
            raise TlsDskError("GSSAPI_DATA", f"truncated TLS record header at byte {at}")
        if header[0] not in _RECORD_TYPES or header[1] != 3:
            raise TlsDskError("GSSAPI_DATA", f"byte {at} does not start a TLS 1.x record")
        length = int.from_bytes(header[3:5], "big")
        if length > _MAX_RECORD_BODY:
            raise TlsDskError("GSSAPI_DATA", f"TLS record at byte {at} claims {length} bytes")
        if at + 5 + length > len(data):
            raise TlsDskError("GSSAPI_DATA", f"truncated TLS record at byte {at}")
        at += 5 + length
