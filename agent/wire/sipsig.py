"""TLS-DSK message signatures (protocol.md §8.4, MS-SIPAE version 4) and the security association (§8.5).

The signed string is built from field *values*, not from a SIP message: the SIP codec extracts them (From
URI between ``<`` ``>``, tags, CSeq number and method, P-Asserted-Identity's sip and tel URIs, Expires) and
this module only lays them out, the way pidgin-sipe's ``sipmsg_breakdown_get_string`` does for version ≥ 3:

``<scheme><rand><num><realm><targetname><Call-ID><CSeq num><CSeq method><From URI><From tag><To URI>``
``<To tag><PAI sip URI><PAI tel URI><Expires>`` and, for responses only, ``<status code>``.

A value containing ``<``, ``>``, CR or LF is refused: it would let one layout read as another (a field's end
moved into its neighbour), so such a message can be neither signed nor verified.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Literal

from agent.stages import Stage, StageError, WireError
from agent.wire.tlsdsk import DskKeys

__all__ = [
    "SA_MARGIN",
    "SA_MAX_LIFETIME",
    "SCHEME",
    "SecurityAssociation",
    "SignedFields",
    "sa_lifetime",
    "sign",
    "signature_string",
    "verify",
]

SCHEME = "TLS-DSK"
SA_MAX_LIFETIME = timedelta(hours=8)
SA_MARGIN = timedelta(minutes=5)
Mac = Literal["sha1", "md5"]
Role = Literal["client", "server"]
_FORBIDDEN = frozenset("<>\r\n")


@dataclass(frozen=True)
class SignedFields:
    """The values one signature covers. ``None`` (or "") is an absent value, signed as ``<>``.

    ``rand``/``num`` are crand/cnum on requests and srand/snum on responses; ``status`` is the response
    code ("200") and stays None for requests.
    """

    realm: str
    targetname: str
    call_id: str
    cseq_num: str
    cseq_method: str
    from_uri: str
    to_uri: str
    from_tag: str | None = None
    to_tag: str | None = None
    pai_sip: str | None = None
    pai_tel: str | None = None
    expires: str | None = None
    status: str | None = None
    rand: str = ""
    num: str = ""
    protocol: str = SCHEME


def signature_string(fields_: SignedFields) -> bytes:
    """The version-4 string to MAC (UTF-8); :class:`WireError` if a value would make it ambiguous."""
    f = fields_
    values = [
        f.protocol,
        f.rand,
        f.num,
        f.realm,
        f.targetname,
        f.call_id,
        f.cseq_num,
        f.cseq_method,
        f.from_uri,
        f.from_tag,
        f.to_uri,
        f.to_tag,
        f.pai_sip,
        f.pai_tel,
        f.expires,
    ]
    if f.status is not None:
        if len(f.status) != 3 or not f.status.isascii() or not f.status.isdigit():
            raise WireError(f"status {f.status!r} is not a 3-digit SIP response code", Stage.REGISTER)
        values.append(f.status)
    for field in fields(f):
        value = getattr(f, field.name)
        if value is not None and not _FORBIDDEN.isdisjoint(value):
            raise WireError(f"{field.name} contains '<', '>' or a line break; cannot sign it", Stage.REGISTER)
    return "".join(f"<{v or ''}>" for v in values).encode("utf-8")


def sign(key: bytes, fields_: SignedFields, mac: Mac = "sha1") -> str:
    """Lower-case hex HMAC of :func:`signature_string` (``response=`` / ``rspauth=``)."""
    return hmac.digest(key, signature_string(fields_), _digest(mac)).hex()


def verify(key: bytes, fields_: SignedFields, signature_hex: str, mac: Mac = "sha1") -> bool:
    """Whether ``signature_hex`` signs ``fields_``: hex compared case-insensitively in constant time.

    Fields that cannot be laid out unambiguously never verify.
    """
    try:
        expected = sign(key, fields_, mac).encode("ascii")
    except WireError:
        return False
    return hmac.compare_digest(expected, signature_hex.strip().lower().encode("utf-8"))


def _digest(mac: Mac) -> str:
    if mac not in ("sha1", "md5"):
        raise ValueError(f"TLS-DSK MAC is sha1 or md5, not {mac!r}")
    return mac


def sa_lifetime(cert_not_after: datetime, at: datetime) -> timedelta:
    """min(time left on the client certificate, 8 h) − 5 min, never negative (MS-SIPAE; protocol.md §8.5)."""
    _aware(cert_not_after, "cert_not_after")
    _aware(at, "at")
    return max(min(cert_not_after - at, SA_MAX_LIFETIME) - SA_MARGIN, timedelta(0))


def _aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def new_rand() -> str:
    """A fresh crand/srand: 8 lower-case hex digits, as pidgin-sipe sends."""
    return secrets.token_hex(4)


class SecurityAssociation:
    """One TLS-DSK SA: its keys, our message counter, the peer's last accepted number and the expiry.

    Sans-IO: time is passed in. The client signs with the client key and checks the server key; the server
    the other way round. Numbers start at 1 and grow by one per signed message; the peer's must only grow.
    """

    def __init__(
        self,
        keys: DskKeys,
        sa_id: str,
        role: Role,
        established_at: datetime,
        lifetime: timedelta,
    ) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"role is 'client' or 'server', not {role!r}")
        _aware(established_at, "established_at")
        self.keys = keys
        self.sa_id = sa_id
        self.role: Role = role
        self.established_at = established_at
        self.lifetime = lifetime
        self.expires_at = established_at + lifetime
        self._sent = 0
        self._peer_last = 0

    def __repr__(self) -> str:
        return (
            f"SecurityAssociation(sa_id={self.sa_id!r}, role={self.role!r}, "
            f"expires_at={self.expires_at.isoformat()}, sent={self._sent}, peer_last={self._peer_last})"
        )

    @property
    def _own_key(self) -> bytes:
        return self.keys.client_sign if self.role == "client" else self.keys.server_sign

    @property
    def _peer_key(self) -> bytes:
        return self.keys.server_sign if self.role == "client" else self.keys.client_sign

    @property
    def peer_last(self) -> int:
        """The highest number accepted from the peer so far (0 before the first)."""
        return self._peer_last

    def is_expired(self, at: datetime) -> bool:
        return at >= self.expires_at

    def next_num(self) -> int:
        """Our next message number (cnum for the client, snum for the server)."""
        self._sent += 1
        return self._sent

    def next_cnum(self) -> int:
        if self.role != "client":
            raise ValueError("only the client side numbers with cnum")
        return self.next_num()

    def next_snum(self) -> int:
        if self.role != "server":
            raise ValueError("only the server side numbers with snum")
        return self.next_num()

    def sign_outgoing(self, fields_: SignedFields) -> tuple[str, str, str]:
        """(rand, num, signature) for an outgoing message; ``fields_``' own rand/num are replaced."""
        rand, num = new_rand(), str(self.next_num())
        return rand, num, sign(self._own_key, replace(fields_, rand=rand, num=num), self.keys.mac)

    def verify_incoming(self, fields_: SignedFields, signature: str, at: datetime) -> None:
        """Accept a signed message from the peer or raise StageError(REGISTER): SA_EXPIRED, BAD_SIGNATURE,
        REPLAY (a number not above the last accepted one). Only an accepted message moves the counter."""
        _aware(at, "at")
        if self.is_expired(at):
            raise StageError(
                Stage.REGISTER,
                "SA_EXPIRED",
                f"security association {self.sa_id} expired at "
                f"{self.expires_at.isoformat()}; redo the TLS-DSK handshake",
            )
        if not verify(self._peer_key, fields_, signature, self.keys.mac):
            raise StageError(
                Stage.REGISTER, "BAD_SIGNATURE", f"message signature does not verify under SA {self.sa_id}"
            )
        if not (fields_.num.isascii() and fields_.num.isdigit()):
            raise StageError(
                Stage.REGISTER,
                "BAD_SIGNATURE",
                f"signed message number {fields_.num!r} is not a decimal number",
            )
        num = int(fields_.num)
        if num <= self._peer_last:
            raise StageError(
                Stage.REGISTER,
                "REPLAY",
                f"message number {num} is not above {self._peer_last} "
                f"(replayed or out of order) under SA {self.sa_id}",
            )
        self._peer_last = num
