"""The phone's persistent state, written so that a power cut at any instant leaves the old or the new state.

Layout of the state directory (0700, ``/var/lib/phoneprov`` on a Pi)::

    state.json         manifest {"kind": "phoneprov-state", "schema": 1}
    identity.pem       0600: "# phoneprov identity: key 1, certificate 1, intermediates N", the PKCS#8 key,
                       the certificate, N intermediates, "# end of phoneprov identity"
    device-id          "{GUID}", created once
    discovery.json     the last discovery      progress.json   the last stage reached
    user.key           a key saved alone (:meth:`StateStore.save_key`), for a certificate still to come
    user.crt, intermediates.pem   legacy: earlier firmware kept the identity in three files
    foreign-<time>/    what a newer firmware (a foreign manifest) had stored, set aside untouched

Why it is built this way:

- Every write is :func:`agent.atomic.atomic_write` (temp file, fsync, rename, fsync the directory).
- The identity is ONE file, replaced by one rename: a cut during a renewal leaves the old identity or the
  new one, never a key next to a certificate from another write. When ``identity.pem`` exists it is the
  whole identity; the legacy files are read only on a phone that has none yet (upgraded in the field), and
  the first bundle written removes them.
- The file formats (:mod:`boot.statecodec`) make any prefix of a file recognisably incomplete.
- Loaders never raise: a damaged, foreign or unreadable file is read as absent and explained in
  :attr:`StateStore.problems`, so boot re-provisions instead of crash-looping.
- A foreign manifest (a newer schema: the firmware was downgraded) hides all state, and the first write moves
  it aside to ``foreign-<time>/`` — never overwrites it — and starts afresh.
- ``fault(point)`` is called at named points so a torture test can kill the process there:
  "<tag>:before-rename" once the new data is durable, just before the rename, "<tag>:after-rename" once it
  returned (renamed, directory synced); "foreign:before-manifest" when all but the foreign manifest moved.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.atomic import atomic_write, fsync_dir
from agent.stages import one_line
from boot.statecodec import (
    Bundle,
    Foreign,
    Identity,
    LastDiscovery,
    StageProgress,
    Unusable,
    decode_certificate,
    decode_chain,
    decode_device_id,
    decode_discovery,
    decode_identity,
    decode_key,
    decode_progress,
    decode_schema,
    encode_discovery,
    encode_identity,
    encode_json,
    encode_key,
    encode_progress,
)

__all__ = ["FAULT_POINTS", "SCHEMA", "Identity", "LastDiscovery", "StageProgress", "StateStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = 1
MANIFEST_FILE = "state.json"
IDENTITY_FILE = "identity.pem"
KEY_FILE = "user.key"
CERT_FILE = "user.crt"
CHAIN_FILE = "intermediates.pem"
LEGACY_FILES = (CERT_FILE, KEY_FILE, CHAIN_FILE)
DEVICE_ID_FILE = "device-id"
DISCOVERY_FILE = "discovery.json"
PROGRESS_FILE = "progress.json"
# each file written and its fault-point tag: "<tag>:before-rename", "<tag>:after-rename"
TAGS = {
    MANIFEST_FILE: "manifest",
    IDENTITY_FILE: "identity",
    KEY_FILE: "key",
    DEVICE_ID_FILE: "device-id",
    DISCOVERY_FILE: "discovery",
    PROGRESS_FILE: "progress",
}
# the points a boot passes (user.key is written only by save_key, which boot does not use)
FAULT_POINTS = tuple(f"{t}:{w}-rename" for t in TAGS.values() if t != "key" for w in ("before", "after"))
MAX_FILE_BYTES = 1 << 20
_TEMP = re.compile(r"\.(" + "|".join(re.escape(f) for f in [*TAGS, *LEGACY_FILES]) + r")\.[A-Za-z0-9_]+")
_ASIDE = re.compile(r"foreign-\d{8}T\d{6}Z(-\d+)?")


class StateStore:
    """Files under one state directory; see the module docstring for the layout and the rules."""

    def __init__(self, root: Path, fault: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.fault: Callable[[str], None] = fault or _no_fault
        self.problems: list[str] = []
        self._stamped = False

    # -- the identity -------------------------------------------------------------------------------------

    def save_identity(self, identity: Identity) -> Path:
        """Key, certificate and intermediates in one atomic replacement."""
        return self._save_bundle(Bundle(identity.key, identity.certificate, identity.intermediates))

    def save_key(self, key: rsa.RSAPrivateKey) -> Path:
        """A new key for a certificate still to come (the agent's ``on_key``), alone in user.key (0600). The
        stored identity is dropped after it: its certificate is for another key. :meth:`save_certificate`
        later joins key and certificate in the bundle."""
        path = self._write(KEY_FILE, encode_key(key), 0o600)
        self._remove((IDENTITY_FILE, CERT_FILE))
        return path

    def save_certificate(self, cert: x509.Certificate) -> Path:
        """The certificate, in one bundle with the key held now (user.key after :meth:`save_key`)."""
        return self._save_bundle(replace(self._held(), certificate=cert))

    def save_intermediates(self, certs: Sequence[x509.Certificate]) -> Path:
        return self._save_bundle(replace(self._held(), intermediates=tuple(certs)))

    def load_key(self) -> rsa.RSAPrivateKey | None:
        bundle = self._bundle()
        return bundle.key if bundle is not None else self._load(KEY_FILE, decode_key)

    def load_certificate(self) -> x509.Certificate | None:
        bundle = self._bundle()
        return bundle.certificate if bundle is not None else self._load(CERT_FILE, decode_certificate)

    def load_intermediates(self) -> tuple[x509.Certificate, ...]:
        """The stored intermediates; () when none are stored or the file is unusable."""
        bundle = self._bundle()
        return bundle.intermediates if bundle is not None else self._load(CHAIN_FILE, decode_chain) or ()

    def load_identity(self) -> Identity | None:
        """Key + certificate + intermediates from one write, only when the certificate is for this key."""
        bundle = self._bundle()
        if bundle is None:
            return self._legacy_identity()
        key, cert = bundle.key, bundle.certificate
        if key is None or cert is None:
            if key is not None or cert is not None:
                self._problem(
                    IDENTITY_FILE, f"holds a {'key' if cert is None else 'certificate'} only; no identity"
                )
            return None
        if not _matches(key, cert):
            self._problem(IDENTITY_FILE, "the certificate is for another key; no identity")
            return None
        return Identity(key, cert, bundle.intermediates)

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
        """Drop key and certificate in one replacement of the bundle (the intermediates stay)."""
        held = self._held()
        if held.key is not None or held.certificate is not None:
            self._save_bundle(Bundle(intermediates=held.intermediates))

    # -- the rest -------------------------------------------------------------------------------------------

    def device_id(self) -> str:
        """The phone's "{GUID}", created on first use and the same for every later boot."""
        known = self._load(DEVICE_ID_FILE, decode_device_id)
        if known is not None:
            return known
        new = "{" + str(uuid.uuid4()).upper() + "}"
        self._write(DEVICE_ID_FILE, f"{new}\n".encode(), 0o644)
        return new

    def save_discovery(self, found: LastDiscovery) -> Path:
        return self._write(DISCOVERY_FILE, encode_discovery(found), 0o644)

    def load_discovery(self) -> LastDiscovery | None:
        return self._load(DISCOVERY_FILE, decode_discovery)

    def save_progress(self, progress: StageProgress) -> Path:
        return self._write(PROGRESS_FILE, encode_progress(progress), 0o644)

    def load_progress(self) -> StageProgress | None:
        return self._load(PROGRESS_FILE, decode_progress)

    def tidy(self) -> tuple[str, ...]:
        """Remove the temp files (".<name>.XXXXXXXX") a crash left behind; call at boot, before writing.
        Returns the names removed. Other files in the directory are not touched."""
        try:
            stale = [p.name for p in self.root.iterdir() if _TEMP.fullmatch(p.name) and not p.is_dir()]
        except OSError:
            return ()
        self._remove(stale)
        return tuple(sorted(stale))

    # -- internals ----------------------------------------------------------------------------------------

    def _bundle(self) -> Bundle | None:
        """The identity bundle (empty when unusable); None when there is none, i.e. read the legacy files."""
        if not os.path.lexists(self.root / IDENTITY_FILE):
            return None
        return self._load(IDENTITY_FILE, decode_identity) or Bundle()

    def _held(self) -> Bundle:
        """What the phone holds now, from the bundle or else the legacy files, to change one part of it."""
        bundle = self._bundle()
        if bundle is not None:
            return bundle
        return Bundle(self.load_key(), self.load_certificate(), self.load_intermediates())

    def _legacy_identity(self) -> Identity | None:
        key, cert = self._load(KEY_FILE, decode_key), self._load(CERT_FILE, decode_certificate)
        if key is None or cert is None:
            if (key is None) != (cert is None):
                have, lack = (KEY_FILE, CERT_FILE) if cert is None else (CERT_FILE, KEY_FILE)
                self._problem(have, f"no usable {lack} to pair with; no identity")
            return None
        if not _matches(key, cert):
            self._problem(CERT_FILE, f"certificate is for another key than {KEY_FILE}; no identity")
            return None
        return Identity(key, cert, self.load_intermediates())

    def _save_bundle(self, bundle: Bundle) -> Path:
        """The bundle replaces the identity in one rename; the legacy files it supersedes go after it."""
        path = self._write(IDENTITY_FILE, encode_identity(bundle), 0o600)
        self._remove(LEGACY_FILES)
        return path

    def _remove(self, names: Iterable[str]) -> None:
        removed = False
        for name in names:
            try:
                (self.root / name).unlink()
                removed = True
            except FileNotFoundError:
                pass
        if removed:
            fsync_dir(self.root)

    def _write(self, name: str, data: bytes, mode: int) -> Path:
        """One atomic replacement, between the fault points "<tag>:before-rename" and "<tag>:after-rename"."""
        if name != MANIFEST_FILE:
            self._prepare()
        tag, path = TAGS[name], self.root / name
        atomic_write(path, data, mode, before_rename=lambda: self.fault(f"{tag}:before-rename"))
        self.fault(f"{tag}:after-rename")
        return path

    def _prepare(self) -> None:
        """Before the first write: the directory exists, is 0700, foreign state is set aside, and the manifest
        states our schema."""
        if self._stamped:
            return
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        manifest = self._manifest()
        if manifest == "foreign":
            self._set_aside()
        if manifest != "ok":  # absent or damaged (the files are judged one by one), or set aside
            self._write(MANIFEST_FILE, encode_json("phoneprov-state", schema=SCHEMA), 0o644)
        self._stamped = True

    def _set_aside(self) -> None:
        """Move everything into foreign-<UTC time>/, the manifest last: until it moves, the directory still
        reads as foreign, so a cut in between only splits the move over two directories."""
        stamp, n = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"), 1
        aside = self.root / f"foreign-{stamp}"
        while True:
            try:
                aside.mkdir(mode=0o700)
                break
            except FileExistsError:
                n += 1
                aside = self.root / f"foreign-{stamp}-{n}"
        for entry in sorted(self.root.iterdir()):
            if entry.name != MANIFEST_FILE and entry != aside and not _ASIDE.fullmatch(entry.name):
                os.replace(entry, aside / entry.name)
        fsync_dir(aside)
        fsync_dir(self.root)
        self.fault("foreign:before-manifest")
        os.replace(self.root / MANIFEST_FILE, aside / MANIFEST_FILE)
        fsync_dir(aside)
        fsync_dir(self.root)
        self._problem(MANIFEST_FILE, f"the foreign state was moved aside to {aside.name}/; starting afresh")

    def _manifest(self) -> str:
        """ "ok", "absent" (none, or damaged: the files are judged one by one) or "foreign"."""
        data = self._read(MANIFEST_FILE)
        if data is None:
            return "absent"
        try:
            decode_schema(data, SCHEMA)
        except Foreign as exc:
            self._problem(MANIFEST_FILE, f"{exc}; all stored state ignored")
            return "foreign"
        except Unusable as exc:
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
        except Unusable as exc:
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


def _matches(key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
