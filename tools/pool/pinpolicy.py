"""PIN policy and PIN authentication (protocol.md §6.3, §12): what a PIN may be, how it is kept, who it opens.

The PIN itself is never stored, logged or put in an exception: only a salted PBKDF2 hash is kept, and
every message names the user or the rule, not the digits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent.stages import Stage
from agent.wire.ticketfault import TicketFaultCode
from tools.pool.errors import ConfigError, PoolError
from tools.pool.store.contract import PinRecord, Store, User, UsernameQuery, user_key

_SCHEME = "pbkdf2_sha256"
_MAX_ITERATIONS = 10_000_000


class PinAuthError(PoolError):
    """A refused PIN sign-in: ``code`` is the ErrorId, ``reason`` the Reason name of §6.5 (all the phone is
    told — the detail, which says *why*, is for the pool's log only, so numbers cannot be enumerated)."""

    def __init__(self, fault: TicketFaultCode, detail: str, users: tuple[str, ...] = ()) -> None:
        super().__init__(int(fault), detail, Stage.WEB_TICKET)
        self.fault = fault
        self.reason = fault.reason_name
        self.users = users  # SIP URIs the typed number named: the pool's log files the failure under them


@dataclass(frozen=True)
class PinPolicy:
    """The pool's PIN policy (Lync ``CsPinPolicy`` names in §12); invalid ranges raise ConfigError."""

    min_length: int = 5
    allow_common_patterns: bool = False
    lifetime_days: int = 0
    max_logon_attempts: int | None = None
    window: timedelta = timedelta(minutes=30)
    lock_for: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if not 4 <= self.min_length <= 24:
            raise ConfigError(f"PIN MinPasswordLength {self.min_length} is outside 4..24")
        if not 0 <= self.lifetime_days <= 999:
            raise ConfigError(f"PINLifetime {self.lifetime_days} days is outside 0..999")
        if self.max_logon_attempts is not None and not 1 <= self.max_logon_attempts <= 999:
            raise ConfigError(f"MaximumLogonAttempts {self.max_logon_attempts} is outside 1..999")
        if self.window <= timedelta(0) or self.lock_for <= timedelta(0):
            raise ConfigError("PIN lockout window and lock period must be positive")

    def limits(self, pin_length: int) -> tuple[int, int]:
        """(local limit per window, global limit) for a PIN of this length; §6.3 table."""
        if pin_length <= 4:
            local, global_ = 10, 100
        elif pin_length == 5:
            local, global_ = 25, 1000
        else:
            local, global_ = 25, 5000
        return (self.max_logon_attempts or local, global_)

    def check_new_pin(self, pin: str, number: str, extension: str) -> None:
        """Refuse a PIN the policy forbids, with PoolError("PIN_POLICY", why) that never quotes the PIN."""
        if not pin.isascii() or not pin.isdigit():
            raise PoolError("PIN_POLICY", "the PIN must consist of digits 0-9 only")
        if len(pin) < self.min_length:
            raise PoolError("PIN_POLICY", f"the PIN is shorter than the minimum of {self.min_length} digits")
        if self.allow_common_patterns:
            return
        if len(set(pin)) == 1:
            raise PoolError("PIN_POLICY", "the PIN repeats a single digit")
        if _has_run(pin, 4):
            raise PoolError(
                "PIN_POLICY", "the PIN contains 4 or more consecutive ascending/descending digits"
            )
        line = {number.lstrip("+"), extension} - {""}
        if pin in line:
            raise PoolError("PIN_POLICY", "the PIN equals the user's phone number or extension")

    def expired(self, record: PinRecord, at: datetime) -> bool:
        return self.lifetime_days > 0 and at >= record.set_at + timedelta(days=self.lifetime_days)


def _has_run(pin: str, length: int) -> bool:
    """True when ``length`` digits in a row step by +1 or by -1 (1234, 8765)."""
    for step in (1, -1):
        run = 1
        for before, after in itertools.pairwise(pin):
            run = run + 1 if int(after) - int(before) == step else 1
            if run >= length:
                return True
    return False


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_pin(pin: str, *, salt: bytes | None = None, iterations: int = 100_000) -> str:
    """``pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>``: salted, slow; a leaked store is no PIN list."""
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"PBKDF2 iterations {iterations} outside 1..{_MAX_ITERATIONS}")
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode("utf-8"), salt, iterations)
    return f"{_SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def verify_pin(pin: str, encoded: str) -> bool:
    """Constant-time check of ``pin`` against :func:`hash_pin` output; a corrupt hash is a 2099 Internal."""
    parts = encoded.split("$")
    try:
        scheme, iterations_text, salt_b64, digest_b64 = parts
        iterations = int(iterations_text)
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(digest_b64, validate=True)
    except (ValueError, binascii.Error):
        raise PinAuthError(TicketFaultCode.INTERNAL, "stored PIN hash is malformed") from None
    if scheme != _SCHEME or not 1 <= iterations <= _MAX_ITERATIONS or not expected:
        raise PinAuthError(
            TicketFaultCode.INTERNAL, "stored PIN hash has an unsupported scheme or parameters"
        )
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(digest, expected)


def _pick(matches: list[tuple[User, PinRecord]], username: str) -> tuple[User, PinRecord]:
    """One user among PIN matches; several → the one whose whole line the username spells, else ambiguous."""
    if len(matches) == 1:
        return matches[0]
    query = UsernameQuery.parse(username)
    exact = [m for m in matches if query and query.exactly(m[0].number.lstrip("+"), m[0].extension)]
    if len(exact) == 1:
        return exact[0]
    raise PinAuthError(
        TicketFaultCode.PHONE_AMBIGUOUS,
        f"number {username!r} and PIN match {len(matches)} users; add the extension",
    )


_guard = threading.Lock()
_user_locks: dict[str, threading.Lock] = {}
# Verified when no user matches, so an unknown number costs the same PBKDF2 time as a wrong PIN.
DUMMY_HASH = hash_pin("0" * 8, salt=b"phoneprov-dummy!")


@contextmanager
def _serialised(users: list[User]) -> Iterator[None]:
    """Hold the users' locks (sorted: no deadlock) so that parallel wrong PINs cannot outrun the lockout count.

    Per node process; a multi-node pool on a shared store also needs the store's own serialisation.
    """
    with _guard:
        locks = [_user_locks.setdefault(u.key, threading.Lock()) for u in sorted(users, key=lambda u: u.key)]
    with ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield


def authenticate(
    store: Store, policy: PinPolicy, username: str, pin: str, claims_uri: str | None, at: datetime
) -> User:
    """Protocol.md §6.3 steps 1-5, in order: the user ``username`` + ``pin`` sign in as, or PinAuthError."""
    candidates = store.find_users(username)  # 1
    if not candidates:
        verify_pin(pin, DUMMY_HASH)
        raise PinAuthError(TicketFaultCode.PIN_INVALID, f"no user has number or extension {username!r}")
    with _serialised(candidates):
        try:
            user, record = _check_pin(store, policy, candidates, username, pin, at)
        except PinAuthError as exc:
            exc.users = tuple(u.sip_uri for u in candidates)
            raise
    if policy.expired(record, at):  # 4
        raise PinAuthError(
            TicketFaultCode.PIN_EXPIRED, f"the PIN of {user.sip_uri} has expired", (user.sip_uri,)
        )
    if not user.enabled or not user.pin_auth_enabled:
        raise PinAuthError(
            TicketFaultCode.PIN_AUTH_DISABLED,
            f"PIN authentication is disabled for {user.sip_uri}",
            (user.sip_uri,),
        )
    if claims_uri is not None and user_key(claims_uri) != user.key:  # 5
        raise PinAuthError(
            TicketFaultCode.CLAIM_MISMATCH,
            f"claimed SIP URI {claims_uri!r} does not match the credentials' user",
            (user.sip_uri,),
        )
    return user


def _check_pin(
    store: Store, policy: PinPolicy, candidates: list[User], username: str, pin: str, at: datetime
) -> tuple[User, PinRecord]:
    """Steps 2-3: lockout before the PIN; a wrong PIN counts on every unlocked candidate."""
    records = [(user, store.pin_record(user.sip_uri)) for user in candidates]
    unlocked = [(u, r) for u, r in records if r is not None and not r.is_locked(at)]
    if len(unlocked) == 0 and all(r is not None for _, r in records):
        raise PinAuthError(TicketFaultCode.PIN_LOCKED, f"PIN authentication is locked for {username!r}")
    matches = [(u, r) for u, r in unlocked if verify_pin(pin, r.pin_hash)]
    if not matches:
        for user, record in unlocked:
            local, global_ = policy.limits(record.pin_length)
            store.record_pin_failure(user.sip_uri, at, policy.window, local, policy.lock_for, global_)
        raise PinAuthError(TicketFaultCode.PIN_INVALID, f"wrong PIN for {username!r}")
    user, record = _pick(matches, username)
    store.reset_local_failures(user.sip_uri)
    return user, record


def check_password(store: Store, policy: PinPolicy, user: User, password: str, at: datetime) -> None:
    """The Basic credential path: the same per-user lockout as PINs (a password guesser must not get
    around PIN lockout by taking the other door). Raises PinAuthError PIN_LOCKED or PIN_INVALID."""
    with _serialised([user]):
        record = store.pin_record(user.sip_uri)
        if record is not None and record.is_locked(at):
            raise PinAuthError(TicketFaultCode.PIN_LOCKED, f"sign-in is locked for {user.sip_uri}")
        stored = store.password_hash(user.sip_uri)
        if stored is None or not verify_pin(password, stored):
            if stored is None:
                verify_pin(password, DUMMY_HASH)  # same cost as a wrong password
            if record is not None:
                local, global_ = policy.limits(record.pin_length)
                store.record_pin_failure(user.sip_uri, at, policy.window, local, policy.lock_for, global_)
            raise PinAuthError(TicketFaultCode.PIN_INVALID, f"wrong or no lab password for {user.sip_uri}")
        if record is not None:
            store.reset_local_failures(user.sip_uri)
