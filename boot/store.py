"""The phone's persistent state, written so that a power cut at any instant leaves the old or the new state.

Layout of the state directory (0700, ``/var/lib/phoneprov`` on a Pi)::

    state.json         manifest {"kind": "phoneprov-state", "schema": 1}
    user.key           private key, PKCS#8 PEM, 0600
    user.crt           user certificate, PEM
    intermediates.pem  "# phoneprov intermediates: N" then N certificates, PEM
    device-id          "{GUID}", created once
    discovery.json     the last discovery      progress.json   the last stage reached

Why it is built this way:

- Every write is :func:`agent.atomic.atomic_write` (temp file, fsync, rename, fsync the directory).
- Every file ends with a newline and a bundle states its count, so any prefix of a file (a disk that lost
  the tail, a copy cut short) is recognisably incomplete instead of a shorter valid file.
- Loaders never raise: a damaged, foreign or unreadable file is read as absent and explained in
  :attr:`StateStore.problems`, so boot re-provisions instead of crash-looping. A key is only ever used
  together with the certificate for it (:meth:`StateStore.load_identity`).
- ``fault(point)`` is called at named points so a torture test can kill the process there:
  "<tag>:before-rename" once the new data is durable, just before the rename, "<tag>:after-rename" once it returned
  (renamed, directory synced), "cert|key:before-unlink|after-unlink" around :meth:`StateStore.clear_identity`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.atomic import atomic_write
from agent.discovery import Discovery
from agent.stages import X509_ERRORS, Outcome, Stage, StageResult, one_line

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = 1
MANIFEST_FILE = "state.json"
KEY_FILE = "user.key"
CERT_FILE = "user.crt"
CHAIN_FILE = "intermediates.pem"
DEVICE_ID_FILE = "device-id"
DISCOVERY_FILE = "discovery.json"
PROGRESS_FILE = "progress.json"
# each file and its fault-point tag: "<tag>:before-rename", "<tag>:after-rename" (and "-unlink" for key/cert)
TAGS = {
    MANIFEST_FILE: "manifest",
    KEY_FILE: "key",
    CERT_FILE: "cert",
    CHAIN_FILE: "chain",
    DEVICE_ID_FILE: "device-id",
    DISCOVERY_FILE: "discovery",
    PROGRESS_FILE: "progress",
}
FAULT_POINTS = tuple(f"{t}:{w}-rename" for t in TAGS.values() for w in ("before", "after")) + tuple(
    f"{t}:{w}-unlink" for t in ("cert", "key") for w in ("before", "after")
)
MAX_FILE_BYTES = 1 << 20
_BUNDLE_HEADER = re.compile(r"# phoneprov intermediates: (\d{1,4})")
_GUID = re.compile(r"\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}")
_STAGES = {s.value: s for s in Stage}
_OUTCOMES: dict[str, Outcome] = {"ok": "ok", "failed": "failed", "skipped": "skipped"}
_TEMP = re.compile(r"\.(" + "|".join(re.escape(f) for f in TAGS) + r")\.[A-Za-z0-9_]+")


@dataclass(frozen=True)
class Identity:
    """A key and the certificate issued for it (checked to match), with the intermediates the phone holds."""

    key: rsa.RSAPrivateKey = field(repr=False)
    certificate: x509.Certificate
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


class _Unusable(Exception):
    """A file that must be read as absent; the message says why, in a few words."""


class _Foreign(_Unusable):
    """A well-formed file that is not ours (another kind, label or schema)."""


class StateStore:
    """Files under one state directory; see the module docstring for the layout and the rules."""

    def __init__(self, root: Path, fault: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.fault: Callable[[str], None] = fault or _no_fault
        self.problems: list[str] = []
        self._stamped = False

    def save_key(self, key: rsa.RSAPrivateKey) -> Path:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return self._write(KEY_FILE, pem, 0o600)

    def save_certificate(self, cert: x509.Certificate) -> Path:
        return self._write(CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def save_intermediates(self, certs: Sequence[x509.Certificate]) -> Path:
        pems = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
        return self._write(CHAIN_FILE, f"# phoneprov intermediates: {len(certs)}\n".encode() + pems, 0o644)

    def save_identity(self, identity: Identity) -> None:
        """Key, intermediates, then certificate: until the certificate lands, a crash leaves a key that
        matches no certificate, which loads as "no identity" — never a certificate whose key was lost."""
        self.save_key(identity.key)
        self.save_intermediates(identity.intermediates)
        self.save_certificate(identity.certificate)

    def load_key(self) -> rsa.RSAPrivateKey | None:
        return self._load(KEY_FILE, _decode_key)

    def load_certificate(self) -> x509.Certificate | None:
        return self._load(CERT_FILE, _decode_certificate)

    def load_intermediates(self) -> tuple[x509.Certificate, ...]:
        """The stored intermediates; () when none are stored or the bundle is unusable."""
        return self._load(CHAIN_FILE, _decode_bundle) or ()

    def load_identity(self) -> Identity | None:
        """Key + certificate + intermediates, only when the certificate is for this key."""
        key, cert = self.load_key(), self.load_certificate()
        if key is None or cert is None:
            if (key is None) != (cert is None):
                have, lack = (KEY_FILE, CERT_FILE) if cert is None else (CERT_FILE, KEY_FILE)
                self._problem(have, f"no usable {lack} to pair with; no identity")
            return None
        if not _matches(key, cert):
            self._problem(CERT_FILE, f"certificate is for another key than {KEY_FILE}; no identity")
            return None
        return Identity(key, cert, self.load_intermediates())

    def identity_valid_for(self, at: datetime, margin: timedelta = timedelta(hours=1)) -> bool:
        """A usable identity whose certificate is valid at ``at`` with at least ``margin`` left (§8.5)."""
        if at.tzinfo is None:
            raise ValueError("identity_valid_for needs a timezone-aware time")
        identity = self.load_identity()
        if identity is None:
            return False
        cert = identity.certificate
        return cert.not_valid_before_utc <= at and cert.not_valid_after_utc - at >= margin

    def clear_identity(self) -> None:
        """Certificate first, then key: a crash in between leaves a key without a certificate, which
        loads as "no identity" just like the end state."""
        for name in (CERT_FILE, KEY_FILE):
            tag = TAGS[name]
            self.fault(f"{tag}:before-unlink")
            (self.root / name).unlink(missing_ok=True)
            if self.root.is_dir():
                _fsync_dir(self.root)
            self.fault(f"{tag}:after-unlink")

    def device_id(self) -> str:
        """The phone's "{GUID}", created on first use and the same for every later boot."""
        known = self._load(DEVICE_ID_FILE, _decode_device_id)
        if known is not None:
            return known
        new = "{" + str(uuid.uuid4()).upper() + "}"
        self._write(DEVICE_ID_FILE, f"{new}\n".encode(), 0o644)
        return new

    def save_discovery(self, found: LastDiscovery) -> Path:
        record = {**asdict(found), "ntp": list(found.ntp), "when": _iso(found.when)}
        return self._write(DISCOVERY_FILE, _encode_json("phoneprov-discovery", **record), 0o644)

    def load_discovery(self) -> LastDiscovery | None:
        return self._load(DISCOVERY_FILE, _decode_discovery)

    def save_progress(self, progress: StageProgress) -> Path:
        if progress.attempt < 0:
            raise ValueError(f"attempt must be >= 0, not {progress.attempt}")
        record = {**asdict(progress), "stage": progress.stage.value, "time": _iso(progress.time)}
        return self._write(PROGRESS_FILE, _encode_json("phoneprov-progress", **record), 0o644)

    def load_progress(self) -> StageProgress | None:
        return self._load(PROGRESS_FILE, _decode_progress)

    def tidy(self) -> tuple[str, ...]:
        """Remove the temp files (".<name>.XXXXXXXX") a crash left behind; call at boot, before writing.
        Returns the names removed. Other files in the directory are not touched."""
        try:
            stale = [p for p in self.root.iterdir() if _TEMP.fullmatch(p.name) and not p.is_dir()]
        except OSError:
            return ()
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            _fsync_dir(self.root)
        return tuple(sorted(p.name for p in stale))

    def _write(self, name: str, data: bytes, mode: int) -> Path:
        """One atomic replacement, between the fault points "<tag>:before-rename" and "<tag>:after-rename"."""
        if name != MANIFEST_FILE:
            self._prepare()
        tag, path = TAGS[name], self.root / name
        atomic_write(path, data, mode, before_rename=lambda: self.fault(f"{tag}:before-rename"))
        self.fault(f"{tag}:after-rename")
        return path

    def _prepare(self) -> None:
        """Before the first write: the directory exists, is 0700, and the manifest states our schema."""
        if self._stamped:
            return
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        if self._manifest() != "ok":  # absent, damaged or foreign: from now on it is this schema's state
            self._write(MANIFEST_FILE, _encode_json("phoneprov-state", schema=SCHEMA), 0o644)
        self._stamped = True

    def _manifest(self) -> str:
        """ "ok", "absent" (none, or damaged: the files are judged one by one) or "foreign"."""
        data = self._read(MANIFEST_FILE)
        if data is None:
            return "absent"
        try:
            obj = _decode_json(data, "phoneprov-state")
            schema = _field(obj, "schema", int)
            if schema < 1:
                raise _Unusable(f"schema {schema} is not a version")
            if schema > SCHEMA:
                raise _Foreign(f"foreign: schema {schema} is newer than this firmware's {SCHEMA}")
        except _Foreign as exc:
            self._problem(MANIFEST_FILE, f"{exc}; all stored state ignored")
            return "foreign"
        except _Unusable as exc:
            self._problem(MANIFEST_FILE, f"{exc}; the files are judged one by one")
            return "absent"
        return "ok"

    def _load(self, name: str, decode: Callable[[bytes], T]) -> T | None:
        if self._manifest() == "foreign":
            return None
        data = self._read(name)
        if data is None:
            return None
        try:
            return decode(data)
        except _Unusable as exc:
            self._problem(name, f"{exc}; treated as absent")
            return None

    def _read(self, name: str) -> bytes | None:
        try:
            with (self.root / name).open("rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._problem(name, f"cannot be read ({exc.strerror or type(exc).__name__}); treated as absent")
            return None
        if len(data) > MAX_FILE_BYTES:
            self._problem(name, f"larger than {MAX_FILE_BYTES} bytes; treated as absent")
            return None
        return data

    def _problem(self, name: str, reason: str) -> None:
        line = one_line(f"{name}: {reason}", 300)
        if line not in self.problems:
            self.problems.append(line)
            log.warning("state %s", line)


def _no_fault(point: str) -> None:
    """The production fault hook: nothing happens at any point."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _matches(key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


# -- decoders: bytes → value, or _Unusable naming what is wrong ----------------------------------------


def _text(data: bytes) -> str:
    if not data:
        raise _Unusable("empty")
    if not data.endswith(b"\n"):
        raise _Unusable("cut short (no final newline)")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise _Unusable("garbage (not ASCII text)") from None


def _pem(data: bytes, label: str) -> tuple[list[str], list[bytes]]:
    """(non-blank lines outside blocks, DER of each block), strictly: every block complete, all ``label``."""
    outside: list[str] = []
    blocks: list[bytes] = []
    body: list[str] | None = None
    for raw in _text(data).split("\n"):
        line = raw.rstrip("\r")
        if body is None:
            if line.startswith("-----BEGIN "):
                if line != f"-----BEGIN {label}-----":
                    raise _Foreign(f"foreign: holds {one_line(line, 60)!r}, not {label}")
                body = []
            elif line.strip():
                outside.append(line)
        elif line == f"-----END {label}-----":
            try:
                blocks.append(base64.b64decode("".join(body), validate=True))
            except binascii.Error:
                raise _Unusable("garbage inside a PEM block (bad base64)") from None
            body = None
        elif line.startswith("-----"):
            raise _Unusable("malformed PEM block boundary")
        else:
            body.append(line)
    if body is not None:
        raise _Unusable("cut short inside a PEM block")
    return outside, blocks


def _single(data: bytes, label: str) -> bytes:
    outside, blocks = _pem(data, label)
    if outside or len(blocks) != 1:
        raise _Unusable(f"not a single {label} PEM block ({len(blocks)} blocks, {len(outside)} other lines)")
    return blocks[0]


def _decode_key(data: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_der_private_key(_single(data, "PRIVATE KEY"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise _Unusable(f"unparsable PKCS#8 key ({type(exc).__name__})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _Foreign(f"foreign: a {type(key).__name__}, not an RSA key")
    return key


def _certificate(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except X509_ERRORS as exc:
        raise _Unusable(f"unparsable certificate ({one_line(exc, 80)})") from None


def _decode_certificate(data: bytes) -> x509.Certificate:
    return _certificate(_single(data, "CERTIFICATE"))


def _decode_bundle(data: bytes) -> tuple[x509.Certificate, ...]:
    outside, blocks = _pem(data, "CERTIFICATE")
    header = _BUNDLE_HEADER.fullmatch(outside[0]) if len(outside) == 1 else None
    if header is None:
        raise _Foreign("foreign: no '# phoneprov intermediates: N' header")
    if int(header[1]) != len(blocks):
        raise _Unusable(f"cut short: {len(blocks)} of {header[1]} certificates")
    return tuple(_certificate(der) for der in blocks)


def _decode_device_id(data: bytes) -> str:
    text = _text(data).rstrip("\n")
    if not _GUID.fullmatch(text):
        raise _Unusable("garbage (not an upper-case {GUID})")
    return text


def _encode_json(kind: str, **fields: object) -> bytes:
    return (json.dumps({"kind": kind, **fields}, sort_keys=True) + "\n").encode()


def _decode_json(data: bytes, kind: str) -> dict[str, Any]:
    try:
        obj = json.loads(_text(data))
    except (ValueError, RecursionError):
        raise _Unusable("unparsable JSON") from None
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        raise _Foreign(f"foreign: not a {kind} record")
    return obj


def _field(obj: dict[str, Any], key: str, typ: type[T]) -> T:
    value = obj.get(key)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise _Unusable(f"field {key!r} is not a {typ.__name__}")
    return value


def _optional(obj: dict[str, Any], key: str, typ: type[T]) -> T | None:
    return None if obj.get(key) is None else _field(obj, key, typ)


def _iso(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("stored times must be timezone-aware")
    return when.astimezone(UTC).isoformat()


def _time(obj: dict[str, Any], key: str) -> datetime:
    try:
        when = datetime.fromisoformat(_field(obj, key, str))
        if when.tzinfo is not None:
            return when.astimezone(UTC)
    except (ValueError, OverflowError):
        pass
    raise _Unusable(f"field {key!r} is not an ISO 8601 time with a zone")


def _decode_discovery(data: bytes) -> LastDiscovery:
    obj = _decode_json(data, "phoneprov-discovery")
    ntp = _field(obj, "ntp", list)
    port, vlan = _optional(obj, "registrar_port", int), _optional(obj, "vlan", int)
    if not all(isinstance(n, str) for n in ntp):
        raise _Unusable("field 'ntp' is not a list of names")
    if (port is not None and not 0 < port < 65536) or (vlan is not None and not 0 < vlan < 4095):
        raise _Unusable("registrar_port or vlan is out of range")
    return LastDiscovery(
        certprov_url=_field(obj, "certprov_url", str),
        registrar=_optional(obj, "registrar", str),
        registrar_port=port,
        ntp=tuple(ntp),
        domain=_optional(obj, "domain", str),
        vlan=vlan,
        when=_time(obj, "when"),
    )


def _decode_progress(data: bytes) -> StageProgress:
    obj = _decode_json(data, "phoneprov-progress")
    stage, result = _field(obj, "stage", str), _OUTCOMES.get(_field(obj, "result", str))
    attempt = _field(obj, "attempt", int)
    if stage not in _STAGES or result is None or attempt < 0:
        raise _Unusable("unknown stage or result, or a negative attempt")
    return StageProgress(_STAGES[stage], result, _optional(obj, "code", str), _time(obj, "time"), attempt)
