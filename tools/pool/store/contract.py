"""The pool's data store contract: records, the :class:`Store` protocol, and the rules every backend shares.

SQLite (one node) and PostgreSQL (several nodes) must behave identically, so the matching rules for
usernames, the key normalisation and the timestamp format live here and ``tests/tools/store_contract.py``
checks every backend against them.

Decisions every backend implements:

- **Keys.** A user is keyed by its SIP URI without ``sip:``, lower-cased (``sip:Alice@lab.test`` and
  ``alice@lab.test`` name the same user). Thumbprints are compared upper-case without separators; device ids
  case-insensitively.
- **Usernames** (what the phone typed, protocol.md §6.2): ``tel:``, spaces, dashes, dots and parentheses are
  ignored; what remains must be digits with an optional leading ``+`` and an optional ``;ext=<digits>``.
  ``+<digits>`` names a line number only (E.164); bare ``<digits>`` matches a line number (without its ``+``)
  or an extension; ``<number>;ext=<digits>`` must match both. Nothing else matches anyone.
- **Certificates.** One current row per (user, device): publishing for the same device replaces that device's
  row (its older certificate disappears); other devices' rows are never touched. A thumbprint already
  published for another device is refused (``CERT_EXISTS``) rather than silently moved.
- **Errors.** Unknown users/certificates raise :class:`PoolError` (``NO_SUCH_USER``, ``NO_SUCH_CERT``,
  ``USER_EXISTS``); an unreachable, locked or unwritable database raises :class:`StoreUnavailable` with one
  line naming the backend and the reason, and nothing is ever half-written.
- **Time.** Every datetime is timezone-aware; backends store UTC.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Protocol
from urllib.parse import parse_qs

from tools.pool.errors import ConfigError, PoolError

_VISUAL = re.compile(r"[\s\-.()]")
_LINE_URI = re.compile(r"^tel:(\+?[0-9]+)(?:;ext=([0-9]+))?$", re.IGNORECASE)
_USERNAME = re.compile(r"^(\+?)([0-9]+)(?:;ext=([0-9]+))?$", re.IGNORECASE)


def user_key(sip_uri: str) -> str:
    """The store key of a SIP URI: without ``sip:``, lower-case (SIP URIs compare case-insensitively)."""
    uri = sip_uri.strip()
    if uri[:4].lower() == "sip:":
        uri = uri[4:]
    return uri.lower()


def thumbprint_key(thumbprint: str) -> str:
    """A thumbprint as stored: hex, upper-case, without the spaces/colons Windows dialogs show."""
    return re.sub(r"[\s:]", "", thumbprint).upper()


def device_key(device_id: str) -> str:
    """Device GUIDs are compared case-insensitively."""
    return device_id.strip().lower()


def _split_line_uri(line_uri: str) -> tuple[str, str]:
    """(number digits without '+', extension or '') of ``tel:+14255551219;ext=1219``; visual separators ok."""
    match = _LINE_URI.match(_VISUAL.sub("", line_uri))
    if match is None:
        raise ConfigError(f"line URI {line_uri!r} is not tel:+<digits>[;ext=<digits>]")
    return match.group(1).lstrip("+"), match.group(2) or ""


@dataclass(frozen=True)
class UsernameQuery:
    """A parsed username: which line number and/or extension it names (see the module docstring)."""

    digits: str
    e164: bool
    extension: str | None

    @classmethod
    def parse(cls, username: str) -> UsernameQuery | None:
        """None when the username cannot name any line (letters, empty, ...)."""
        text = _VISUAL.sub("", username)
        if text[:4].lower() == "tel:":
            text = text[4:]
        match = _USERNAME.match(text)
        if match is None:
            return None
        return cls(digits=match.group(2), e164=bool(match.group(1)), extension=match.group(3))

    def matches(self, number_digits: str, extension: str) -> bool:
        if self.extension is not None:
            return self.digits == number_digits and self.extension == extension
        if self.e164:
            return self.digits == number_digits
        return self.digits in (number_digits, extension)

    def exactly(self, number_digits: str, extension: str) -> bool:
        """True when the username spells the whole line (number and its extension, or a line without one)."""
        return self.digits == number_digits and (self.extension or "") == extension


@dataclass(frozen=True)
class User:
    """A user enabled for phone sign-in: SIP URI, line URI (``tel:+14255551219;ext=1219``)."""

    sip_uri: str
    line_uri: str
    display_name: str
    enabled: bool = True
    pin_auth_enabled: bool = True
    home_pool: str = "pool.lab.test"

    def __post_init__(self) -> None:
        if not self.sip_uri.lower().startswith("sip:") or "@" not in self.sip_uri:
            raise ConfigError(f"SIP URI {self.sip_uri!r} is not sip:user@domain")
        _split_line_uri(self.line_uri)

    @property
    def number(self) -> str:
        """The line number with a leading ``+`` and without the extension."""
        return "+" + _split_line_uri(self.line_uri)[0]

    @property
    def extension(self) -> str:
        """The extension of the line URI, or '' when it has none."""
        return _split_line_uri(self.line_uri)[1]

    @property
    def key(self) -> str:
        return user_key(self.sip_uri)


@dataclass(frozen=True)
class PinRecord:
    """A user's PIN state: the hash (never the PIN), local-window failures, locks and the global counter."""

    sip_uri: str
    pin_hash: str
    pin_length: int
    set_at: datetime
    failures: tuple[datetime, ...]
    locked_until: datetime | None
    global_failures: int
    locked_permanently: bool

    def is_locked(self, at: datetime) -> bool:
        """Permanently locked, or inside the local lock period."""
        return self.locked_permanently or (self.locked_until is not None and at < self.locked_until)

    def __repr__(self) -> str:
        # The hash is not the PIN, but it is offline-guessable: keep it out of logs and tracebacks.
        return (
            f"PinRecord(sip_uri={self.sip_uri!r}, pin_length={self.pin_length}, set_at={self.set_at!r}, "
            f"failures={len(self.failures)}, locked_until={self.locked_until!r}, "
            f"global_failures={self.global_failures}, locked_permanently={self.locked_permanently})"
        )


@dataclass(frozen=True)
class PublishedCert:
    """A certificate published for one device of a user (protocol.md §7.3 step 6)."""

    sip_uri: str
    device_id: str
    thumbprint: str
    serial: str
    not_before: datetime
    not_after: datetime
    published_at: datetime
    der: bytes
    revoked: bool = False

    def as_row(self) -> dict[str, str | bool]:
        """JSON-safe form: DER as base64, datetimes ISO-8601 with ``Z``."""
        return {
            "sip_uri": self.sip_uri,
            "device_id": self.device_id,
            "thumbprint": self.thumbprint,
            "serial": self.serial,
            "not_before": iso_z(self.not_before),
            "not_after": iso_z(self.not_after),
            "published_at": iso_z(self.published_at),
            "der": base64.b64encode(self.der).decode("ascii"),
            "revoked": self.revoked,
        }


@dataclass(frozen=True)
class Registration:
    """A registrar binding: the AOR, its contact, until when, and the certificate it authenticated with."""

    sip_uri: str
    contact: str
    thumbprint: str
    node: str
    registered_at: datetime
    expires_at: datetime

    def as_row(self) -> dict[str, str]:
        return {
            "sip_uri": self.sip_uri,
            "contact": self.contact,
            "thumbprint": self.thumbprint,
            "node": self.node,
            "registered_at": iso_z(self.registered_at),
            "expires_at": iso_z(self.expires_at),
        }


def require_aware(at: datetime) -> datetime:
    """The same instant in UTC; naive datetimes are a programming error (which zone would it be?)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("naive datetime given to the store; pass timezone-aware UTC")
    return at.astimezone(UTC)


def iso_z(at: datetime) -> str:
    """ISO-8601 UTC with ``Z`` (microseconds only when present), for JSON."""
    return require_aware(at).isoformat().replace("+00:00", "Z")


def stamp(at: datetime) -> str:
    """Fixed-width UTC text that sorts like time: the storage form of every datetime."""
    return require_aware(at).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def unstamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def sqlite_target(url: str) -> tuple[Path, float | None]:
    """(file, busy timeout or None) of ``sqlite:///abs/path?timeout=S`` (``sqlite:////abs`` too) or a path.

    Lives here because both :func:`open_store` and the store blocker take the URL a pool config names.
    """
    text = url.strip()
    if not text:
        raise ConfigError("store URL is empty; give sqlite:///abs/path.sqlite or a file path")
    if "://" not in text:
        return Path(text), None
    scheme, _, rest = text.partition("://")
    if scheme.lower() != "sqlite":
        raise ConfigError(f"unsupported store URL scheme {scheme.lower()!r}; supported: sqlite")
    path, _, query = rest.partition("?")
    if not path.startswith("/"):
        raise ConfigError(f"store URL {url!r} needs an absolute path: sqlite:///abs/path.sqlite")
    params = parse_qs(query, keep_blank_values=True)
    if set(params) - {"timeout"}:
        raise ConfigError(f"store URL: unknown parameter(s) {', '.join(sorted(params))}; supported: timeout")
    file = Path("/" + path.lstrip("/"))
    if "timeout" not in params:
        return file, None
    try:
        timeout = float(params["timeout"][-1])
    except ValueError:
        raise ConfigError(
            f"store URL: timeout {params['timeout'][-1]!r} is not a number of seconds"
        ) from None
    if not 0 < timeout <= 300:
        raise ConfigError(f"store URL: timeout {timeout} must be in (0, 300] seconds")
    return file, timeout


def no_such_user(sip_uri: str) -> PoolError:
    return PoolError("NO_SUCH_USER", f"no user {sip_uri!r} in the store")


class Store(Protocol):
    """What the pool needs from its data store; every method may raise :class:`StoreUnavailable`."""

    def add_user(self, user: User, pin_hash: str, pin_length: int, at: datetime) -> None:
        """Insert a user with its PIN; ``USER_EXISTS`` when the SIP URI is taken."""
        ...

    def get_user(self, sip_uri: str) -> User | None: ...

    def list_users(self) -> list[User]:
        """Every user, ordered by key (``phoneprov pool user list``)."""
        ...

    def find_users(self, username: str) -> list[User]:
        """Users whose line number or extension equals ``username`` (module docstring rules)."""
        ...

    def pin_record(self, sip_uri: str) -> PinRecord | None: ...

    def set_pin(self, sip_uri: str, pin_hash: str, pin_length: int, at: datetime) -> None:
        """Replace the PIN; failure counters and locks are left to :meth:`unlock_pin`."""
        ...

    def record_pin_failure(
        self,
        sip_uri: str,
        at: datetime,
        window: timedelta,
        local_limit: int,
        lock_for: timedelta,
        global_limit: int,
    ) -> PinRecord:
        """Atomically: prune failures older than ``window``, append ``at``, lock when a limit is reached."""
        ...

    def reset_local_failures(self, sip_uri: str) -> None:
        """Forget window failures and an expired lock; writes only when there is something to reset."""
        ...

    def unlock_pin(self, sip_uri: str) -> None:
        """Admin unlock: clears window failures, both locks and the global counter."""
        ...

    def publish(self, cert: PublishedCert) -> None:
        """Store the device's current certificate in one transaction (module docstring rules)."""
        ...

    def certificates(self, sip_uri: str) -> list[PublishedCert]:
        """The user's current certificates (revoked ones included), oldest publication first."""
        ...

    def certificate(self, thumbprint: str) -> PublishedCert | None: ...

    def revoke(self, thumbprint: str) -> None:
        """Mark a certificate revoked; ``NO_SUCH_CERT`` when unknown."""
        ...

    def register(self, reg: Registration) -> None:
        """Add or refresh the binding (sip_uri, contact); raises StoreUnavailable like every write."""
        ...

    def unregister(self, sip_uri: str, contact: str) -> None: ...

    def registrations(self, sip_uri: str, at: datetime) -> list[Registration]:
        """The bindings of ``sip_uri`` still valid at ``at``."""
        ...

    def set_password(self, sip_uri: str, password_hash: str) -> None:
        """The lab's Basic credential for the user (the Windows password of Test-CsClientAuth)."""
        ...

    def password_hash(self, sip_uri: str) -> str | None: ...

    def ping(self, write: bool = False) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers a read — with ``write``, unless it also
        takes a write (a no-op one): a store that reads but cannot write is failure 1 all the same."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Store: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
