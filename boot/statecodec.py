"""The bytes of each file of the phone's state (see :mod:`boot.store`): records, encoders and strict decoders.

Every file ends with a newline, and a bundle states its counts (the identity bundle also ends with a marker
line), so any prefix of a file — a disk that lost the tail, a copy cut short — is recognisably incomplete
instead of a shorter valid file. Decoders raise :class:`Unusable` (or :class:`Foreign`, for a well-formed file
that is not ours) with a few words saying why; the store reads such a file as absent.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.discovery import Discovery
from agent.stages import X509_ERRORS, Outcome, Stage, StageResult, one_line

T = TypeVar("T")

IDENTITY_TRAILER = "# end of phoneprov identity"
_IDENTITY_HEADER = re.compile(
    r"# phoneprov identity: key ([01]), certificate ([01]), intermediates (\d{1,4})"
)
_CHAIN_HEADER = re.compile(r"# phoneprov intermediates: (\d{1,4})")
_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9 ]{1,40})-----")
_GUID = re.compile(r"\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}")
_STAGES = {s.value: s for s in Stage}
_OUTCOMES: dict[str, Outcome] = {"ok": "ok", "failed": "failed", "skipped": "skipped"}


class Unusable(Exception):
    """A file that must be read as absent; the message says why, in a few words."""


class Foreign(Unusable):
    """A well-formed file that is not ours (another kind, label or schema)."""


@dataclass(frozen=True)
class Identity:
    """A key and the certificate issued for it (checked to match), with the intermediates the phone holds."""

    key: rsa.RSAPrivateKey = field(repr=False)
    certificate: x509.Certificate
    intermediates: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class Bundle:
    """What one identity file holds: any part may be missing (a cleared identity keeps its intermediates)."""

    key: rsa.RSAPrivateKey | None = field(default=None, repr=False)
    certificate: x509.Certificate | None = None
    intermediates: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class LastDiscovery:
    """What the last successful DHCP_INFORM found, and when: a later boot can fall back on it."""

    certprov_url: str
    registrar: str | None
    registrar_port: int | None
    ntp: tuple[str, ...]
    domain: str | None
    vlan: int | None
    when: datetime

    @classmethod
    def from_discovery(cls, found: Discovery, when: datetime) -> LastDiscovery:
        f = found
        return cls(f.certprov_url, f.registrar_fqdn, f.registrar_port, f.ntp_servers, f.domain, f.vlan, when)


@dataclass(frozen=True)
class StageProgress:
    """The last stage a boot reached, its result and code, when, and which attempt of the boot it was."""

    stage: Stage
    result: Outcome
    code: str | None
    time: datetime
    attempt: int

    @classmethod
    def from_result(cls, result: StageResult, time: datetime, attempt: int) -> StageProgress:
        return cls(result.stage, result.result, result.code, time, attempt)


# -- encoders ----------------------------------------------------------------------------------------------


def encode_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def encode_identity(bundle: Bundle) -> bytes:
    """Header with the counts, the PKCS#8 key, the certificate, the intermediates, the end marker."""
    b, pem = bundle, serialization.Encoding.PEM
    certs = ([b.certificate] if b.certificate is not None else []) + list(b.intermediates)
    header = (
        f"# phoneprov identity: key {int(b.key is not None)}, certificate {int(b.certificate is not None)}, "
        f"intermediates {len(b.intermediates)}\n"
    )
    key = encode_key(b.key) if b.key is not None else b""
    return (
        header.encode()
        + key
        + b"".join(c.public_bytes(pem) for c in certs)
        + f"{IDENTITY_TRAILER}\n".encode()
    )


def encode_json(kind: str, **fields: object) -> bytes:
    return (json.dumps({"kind": kind, **fields}, sort_keys=True) + "\n").encode()


def encode_discovery(found: LastDiscovery) -> bytes:
    record = {**asdict(found), "ntp": list(found.ntp), "when": iso(found.when)}
    return encode_json("phoneprov-discovery", **record)


def encode_progress(progress: StageProgress) -> bytes:
    if progress.attempt < 0:
        raise ValueError(f"attempt must be >= 0, not {progress.attempt}")
    record = {**asdict(progress), "stage": progress.stage.value, "time": iso(progress.time)}
    return encode_json("phoneprov-progress", **record)


def iso(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("stored times must be timezone-aware")
    return when.astimezone(UTC).isoformat()


# -- decoders: bytes → value, or Unusable naming what is wrong ------------------------------------------


def _text(data: bytes) -> str:
    if not data:
        raise Unusable("empty")
    if not data.endswith(b"\n"):
        raise Unusable("cut short (no final newline)")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise Unusable("garbage (not ASCII text)") from None


def _pem(data: bytes) -> tuple[list[tuple[int, str]], list[tuple[str, bytes]]]:
    """(each non-blank line outside the blocks, with the number of blocks before it; (label, DER) of each
    block), strictly: every block complete and closed with its own label."""
    outside: list[tuple[int, str]] = []
    blocks: list[tuple[str, bytes]] = []
    label: str | None = None
    body: list[str] = []
    for raw in _text(data).split("\n"):
        line = raw.rstrip("\r")
        begin = _BEGIN.fullmatch(line) if label is None else None
        if begin is not None:
            label, body = begin[1], []
        elif label is not None and line == f"-----END {label}-----":
            try:
                blocks.append((label, base64.b64decode("".join(body), validate=True)))
            except binascii.Error:
                raise Unusable("garbage inside a PEM block (bad base64)") from None
            label = None
        elif line.startswith("-----"):
            raise Unusable("malformed PEM block boundary")
        elif label is not None:
            body.append(line)
        elif line.strip():
            outside.append((len(blocks), line))
    if label is not None:
        raise Unusable("cut short inside a PEM block")
    return outside, blocks


def _labelled(data: bytes, label: str) -> tuple[list[tuple[int, str]], list[bytes]]:
    outside, blocks = _pem(data)
    for got, _ in blocks:
        if got != label:
            raise Foreign(f"foreign: holds a {got} PEM block, not {label}")
    return outside, [der for _, der in blocks]


def _single(data: bytes, label: str) -> bytes:
    outside, blocks = _labelled(data, label)
    if outside or len(blocks) != 1:
        raise Unusable(f"not a single {label} PEM block ({len(blocks)} blocks, {len(outside)} other lines)")
    return blocks[0]


def _key(der: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise Unusable(f"unparsable PKCS#8 key ({type(exc).__name__})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise Foreign(f"foreign: a {type(key).__name__}, not an RSA key")
    return key


def _certificate(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except X509_ERRORS as exc:
        raise Unusable(f"unparsable certificate ({one_line(exc, 80)})") from None


def decode_key(data: bytes) -> rsa.RSAPrivateKey:
    return _key(_single(data, "PRIVATE KEY"))


def decode_certificate(data: bytes) -> x509.Certificate:
    return _certificate(_single(data, "CERTIFICATE"))


def decode_chain(data: bytes) -> tuple[x509.Certificate, ...]:
    """The legacy intermediates file: "# phoneprov intermediates: N", then N certificates."""
    outside, blocks = _labelled(data, "CERTIFICATE")
    header = _CHAIN_HEADER.fullmatch(outside[0][1]) if len(outside) == 1 else None
    if header is None:
        raise Foreign("foreign: no '# phoneprov intermediates: N' header")
    if int(header[1]) != len(blocks):
        raise Unusable(f"cut short: {len(blocks)} of {header[1]} certificates")
    return tuple(_certificate(der) for der in blocks)


def decode_identity(data: bytes) -> Bundle:
    """The identity bundle, whole or not at all: header first, blocks as counted, end marker last."""
    outside, blocks = _pem(data)
    header = _IDENTITY_HEADER.fullmatch(outside[0][1]) if outside and outside[0][0] == 0 else None
    if header is None:
        raise Foreign("foreign: no '# phoneprov identity: ...' header")
    if outside[1:] != [(len(blocks), IDENTITY_TRAILER)]:
        raise Unusable("cut short (no end marker)" if len(outside) == 1 else "stray lines outside the blocks")
    keys, certs, chain = int(header[1]), int(header[2]), int(header[3])
    if [label for label, _ in blocks] != ["PRIVATE KEY"] * keys + ["CERTIFICATE"] * (certs + chain):
        raise Unusable(
            f"its blocks are not the {keys} key, {certs} certificate, {chain} intermediates stated"
        )
    ders = [der for _, der in blocks]
    return Bundle(
        key=_key(ders[0]) if keys else None,
        certificate=_certificate(ders[keys]) if certs else None,
        intermediates=tuple(_certificate(der) for der in ders[keys + certs :]),
    )


def decode_device_id(data: bytes) -> str:
    text = _text(data).rstrip("\n")
    if not _GUID.fullmatch(text):
        raise Unusable("garbage (not an upper-case {GUID})")
    return text


def decode_json(data: bytes, kind: str) -> dict[str, Any]:
    try:
        obj = json.loads(_text(data))
    except (ValueError, RecursionError):
        raise Unusable("unparsable JSON") from None
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        raise Foreign(f"foreign: not a {kind} record")
    return obj


def decode_schema(data: bytes, ours: int) -> int:
    """The manifest's schema; Foreign when a newer firmware (or something else) wrote it."""
    schema = field_of(decode_json(data, "phoneprov-state"), "schema", int)
    if schema < 1:
        raise Unusable(f"schema {schema} is not a version")
    if schema > ours:
        raise Foreign(f"foreign: schema {schema} is newer than this firmware's {ours}")
    return schema


def field_of(obj: dict[str, Any], key: str, typ: type[T]) -> T:
    value = obj.get(key)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise Unusable(f"field {key!r} is not a {typ.__name__}")
    return value


def _optional(obj: dict[str, Any], key: str, typ: type[T]) -> T | None:
    return None if obj.get(key) is None else field_of(obj, key, typ)


def _time(obj: dict[str, Any], key: str) -> datetime:
    try:
        when = datetime.fromisoformat(field_of(obj, key, str))
        if when.tzinfo is not None:
            return when.astimezone(UTC)
    except (ValueError, OverflowError):
        pass
    raise Unusable(f"field {key!r} is not an ISO 8601 time with a zone")


def decode_discovery(data: bytes) -> LastDiscovery:
    obj = decode_json(data, "phoneprov-discovery")
    ntp = field_of(obj, "ntp", list)
    port, vlan = _optional(obj, "registrar_port", int), _optional(obj, "vlan", int)
    if not all(isinstance(n, str) for n in ntp):
        raise Unusable("field 'ntp' is not a list of names")
    if (port is not None and not 0 < port < 65536) or (vlan is not None and not 0 < vlan < 4095):
        raise Unusable("registrar_port or vlan is out of range")
    return LastDiscovery(
        certprov_url=field_of(obj, "certprov_url", str),
        registrar=_optional(obj, "registrar", str),
        registrar_port=port,
        ntp=tuple(ntp),
        domain=_optional(obj, "domain", str),
        vlan=vlan,
        when=_time(obj, "when"),
    )


def decode_progress(data: bytes) -> StageProgress:
    obj = decode_json(data, "phoneprov-progress")
    stage, result = field_of(obj, "stage", str), _OUTCOMES.get(field_of(obj, "result", str))
    attempt = field_of(obj, "attempt", int)
    if stage not in _STAGES or result is None or attempt < 0:
        raise Unusable("unknown stage or result, or a negative attempt")
    return StageProgress(_STAGES[stage], result, _optional(obj, "code", str), _time(obj, "time"), attempt)
