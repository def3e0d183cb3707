"""The SQLite store (one pool node) and :class:`StoreBlocker`, the real fault behind ``--fault datastore``.

WAL mode lets readers go on while a writer (or a blocker) holds the write lock, which is exactly failure 1
of design.md §1: user lookups and PIN checks work, publishing a certificate times out. Two connections
(reader, writer), each behind its own lock, so a write waiting out the busy timeout never stalls reads of
other request threads. Every write is one ``BEGIN IMMEDIATE`` transaction: it either takes the write lock
up front or fails before touching anything.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from pathlib import Path

from tools.pool.errors import PoolError, StoreUnavailable
from tools.pool.store.contract import (
    PinRecord,
    PublishedCert,
    User,
    UsernameQuery,
    device_key,
    no_such_user,
    sqlite_target,
    stamp,
    thumbprint_key,
    unstamp,
    user_key,
)
from tools.pool.store.schema import SCHEMA_VERSION, SQLITE, check_version, pending
from tools.pool.store.sqlite_reg import RegistrationsMixin

__all__ = ["SCHEMA_VERSION", "SqliteStore", "StoreBlocker"]

_USER_COLUMNS = "sip_uri, line_uri, display_name, enabled, pin_auth_enabled, home_pool"
_CERT_COLUMNS = "sip_uri, device_id, thumbprint, serial, not_before, not_after, published_at, der, revoked"


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does (it would honour the umask); -wal/-shm inherit it."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


def _connect(path: Path, timeout_s: float) -> sqlite3.Connection:
    return sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)


def _user(row: tuple[object, ...]) -> User:
    sip_uri, line_uri, display_name, enabled, pin_auth, home_pool = row
    return User(str(sip_uri), str(line_uri), str(display_name), bool(enabled), bool(pin_auth), str(home_pool))


def _cert(row: tuple[object, ...]) -> PublishedCert:
    uri, device, thumb, serial, not_before, not_after, published_at, der, revoked = row
    start, end, published = (unstamp(str(t)) for t in (not_before, not_after, published_at))
    assert isinstance(der, bytes)
    return PublishedCert(
        str(uri), str(device), str(thumb), str(serial), start, end, published, der, bool(revoked)
    )


class SqliteStore(RegistrationsMixin):
    """The pool's data store in one SQLite file (WAL); safe to share between request threads."""

    def __init__(self, path: Path | str, timeout_s: float = 2.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._rlock = threading.Lock()
        self._wlock = threading.Lock()
        self._closed = False
        try:
            with self._guard():
                _create_private(self.path)
                self._writer = _connect(self.path, timeout_s)
                self._reader = _connect(self.path, timeout_s)
            self._prepare()
        except BaseException:
            self.close()
            raise

    def _prepare(self) -> None:
        with self._guard():
            mode = self._writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreUnavailable(f"sqlite {self.path}: cannot enable WAL mode (got {mode!r})")
            for conn in (self._writer, self._reader):
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA synchronous=FULL")
            self._reader.execute("PRAGMA query_only=ON")
        with self._read() as conn:
            current = self._schema_version(conn)
        check_version(current, str(self.path))
        if current < SCHEMA_VERSION:
            with self._write() as conn:
                # Statement by statement: executescript() would commit the open transaction first.
                for statement in pending(SQLITE, self._schema_version(conn)):
                    conn.execute(statement)

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> int:
        """0 for a new file, and for one from before ``passwords`` joined version 1 (step 1 completes it)."""
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            return 0
        version = int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
        return 0 if version == 1 and "passwords" not in tables else version

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn every SQLite/OS failure into one StoreUnavailable line: backend, file, reason."""
        if self._closed:
            raise StoreUnavailable(f"sqlite {self.path}: store is closed")
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"sqlite {self.path}: {_reason(exc)}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: the write lock first (or fail untouched), then commit or roll back all."""
        with self._wlock, self._guard():
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    # If even the rollback fails the connection is unusable; the original error says why.
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot, never blocked by a writer in WAL mode."""
        with self._rlock, self._guard():
            conn = self._reader
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @staticmethod
    def _require_user(conn: sqlite3.Connection, sip_uri: str) -> str:
        key = user_key(sip_uri)
        if conn.execute("SELECT 1 FROM users WHERE user_key = ?", (key,)).fetchone() is None:
            raise no_such_user(sip_uri)
        return key

    @staticmethod
    def _pin_record(conn: sqlite3.Connection, sip_uri: str) -> PinRecord | None:
        key = user_key(sip_uri)
        row = conn.execute(
            "SELECT u.sip_uri, p.pin_hash, p.pin_length, p.set_at, p.locked_until, p.global_failures, "
            "p.locked_permanently FROM pins p JOIN users u USING (user_key) WHERE p.user_key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        uri, pin_hash, length, set_at, locked_until, global_failures, permanent = row
        rows = conn.execute("SELECT at FROM pin_failures WHERE user_key = ? ORDER BY at", (key,)).fetchall()
        failures = tuple(unstamp(f[0]) for f in rows)
        until = unstamp(locked_until) if locked_until else None
        return PinRecord(
            uri, pin_hash, length, unstamp(set_at), failures, until, global_failures, bool(permanent)
        )

    # -- users and PINs ---------------------------------------------------------------------------------

    def add_user(self, user: User, pin_hash: str, pin_length: int, at: datetime) -> None:
        when = stamp(at)
        names = (user.key, user.sip_uri, user.line_uri, user.number[1:], user.extension, user.display_name)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM users WHERE user_key = ?", (user.key,)).fetchone():
                raise PoolError("USER_EXISTS", f"user {user.sip_uri!r} already exists in the store")
            conn.execute(
                "INSERT INTO users (user_key, sip_uri, line_uri, number_digits, extension, display_name, "
                "enabled, pin_auth_enabled, home_pool) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*names, int(user.enabled), int(user.pin_auth_enabled), user.home_pool),
            )
            conn.execute(
                "INSERT INTO pins (user_key, pin_hash, pin_length, set_at) VALUES (?, ?, ?, ?)",
                (user.key, pin_hash, pin_length, when),
            )

    def get_user(self, sip_uri: str) -> User | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE user_key = ?", (user_key(sip_uri),)
            ).fetchone()
        return _user(row) if row else None

    def list_users(self) -> list[User]:
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY user_key").fetchall()
        return [_user(row) for row in rows]

    def find_users(self, username: str) -> list[User]:
        query = UsernameQuery.parse(username)
        if query is None:
            return []
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT number_digits, extension, {_USER_COLUMNS} FROM users "
                "WHERE number_digits = ? OR extension = ? ORDER BY user_key",
                (query.digits, query.digits),
            ).fetchall()
        return [_user(row[2:]) for row in rows if query.matches(row[0], row[1])]

    def pin_record(self, sip_uri: str) -> PinRecord | None:
        with self._read() as conn:
            return self._pin_record(conn, sip_uri)

    def set_pin(self, sip_uri: str, pin_hash: str, pin_length: int, at: datetime) -> None:
        when = stamp(at)
        with self._write() as conn:
            key = self._require_user(conn, sip_uri)
            conn.execute(
                "UPDATE pins SET pin_hash = ?, pin_length = ?, set_at = ? WHERE user_key = ?",
                (pin_hash, pin_length, when, key),
            )

    def record_pin_failure(
        self,
        sip_uri: str,
        at: datetime,
        window: timedelta,
        local_limit: int,
        lock_for: timedelta,
        global_limit: int,
    ) -> PinRecord:
        with self._write() as conn:
            key = self._require_user(conn, sip_uri)
            conn.execute("DELETE FROM pin_failures WHERE user_key = ? AND at <= ?", (key, stamp(at - window)))
            conn.execute("INSERT INTO pin_failures (user_key, at) VALUES (?, ?)", (key, stamp(at)))
            local = conn.execute("SELECT COUNT(*) FROM pin_failures WHERE user_key = ?", (key,)).fetchone()[0]
            conn.execute("UPDATE pins SET global_failures = global_failures + 1 WHERE user_key = ?", (key,))
            if local >= local_limit:
                conn.execute(
                    "UPDATE pins SET locked_until = ? WHERE user_key = ?", (stamp(at + lock_for), key)
                )
            conn.execute(
                "UPDATE pins SET locked_permanently = 1 WHERE user_key = ? AND global_failures >= ?",
                (key, global_limit),
            )
            record = self._pin_record(conn, sip_uri)
        assert record is not None
        return record

    def reset_local_failures(self, sip_uri: str) -> None:
        record = self.pin_record(sip_uri)
        if record is None:
            raise no_such_user(sip_uri)
        if not record.failures and record.locked_until is None:
            return  # nothing to reset: stay read-only, so sign-in works while writes are blocked
        with self._write() as conn:
            key = user_key(sip_uri)
            conn.execute("DELETE FROM pin_failures WHERE user_key = ?", (key,))
            conn.execute("UPDATE pins SET locked_until = NULL WHERE user_key = ?", (key,))

    def unlock_pin(self, sip_uri: str) -> None:
        with self._write() as conn:
            key = self._require_user(conn, sip_uri)
            conn.execute("DELETE FROM pin_failures WHERE user_key = ?", (key,))
            conn.execute(
                "UPDATE pins SET locked_until = NULL, global_failures = 0, locked_permanently = 0 "
                "WHERE user_key = ?",
                (key,),
            )

    def publish(self, cert: PublishedCert) -> None:
        thumb = thumbprint_key(cert.thumbprint)
        device = device_key(cert.device_id)
        times = [stamp(t) for t in (cert.not_before, cert.not_after, cert.published_at)]
        row = (thumb, device, cert.sip_uri, cert.device_id, cert.serial, *times, cert.der, int(cert.revoked))
        with self._write() as conn:
            key = self._require_user(conn, cert.sip_uri)
            owner = conn.execute(
                "SELECT user_key, device_key FROM certificates WHERE thumbprint = ?", (thumb,)
            ).fetchone()
            if owner is not None and tuple(owner) != (key, device):
                raise PoolError("CERT_EXISTS", f"certificate {thumb} is already published for another device")
            conn.execute("DELETE FROM certificates WHERE user_key = ? AND device_key = ?", (key, device))
            conn.execute(
                "INSERT INTO certificates (thumbprint, device_key, sip_uri, device_id, serial, not_before, "
                "not_after, published_at, der, revoked, user_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, key),
            )

    def certificates(self, sip_uri: str) -> list[PublishedCert]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE user_key = ? "
                "ORDER BY published_at, thumbprint",
                (user_key(sip_uri),),
            ).fetchall()
        return [_cert(r) for r in rows]

    def certificate(self, thumbprint: str) -> PublishedCert | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE thumbprint = ?",
                (thumbprint_key(thumbprint),),
            ).fetchone()
        return _cert(row) if row else None

    def revoke(self, thumbprint: str) -> None:
        with self._write() as conn:
            done = conn.execute(
                "UPDATE certificates SET revoked = 1 WHERE thumbprint = ?", (thumbprint_key(thumbprint),)
            )
            if done.rowcount == 0:
                raise PoolError("NO_SUCH_CERT", f"no certificate with thumbprint {thumbprint!r} in the store")

    def ping(self, write: bool = False) -> None:
        if write:
            with self._write() as conn:  # takes the write lock, changes nothing
                conn.execute("UPDATE schema_version SET version = version")
            return
        with self._read() as conn:
            conn.execute("SELECT version FROM schema_version").fetchone()

    def close(self) -> None:
        self._closed = True
        for name, lock in (("_reader", self._rlock), ("_writer", self._wlock)):
            conn = getattr(self, name, None)
            if conn is not None:
                with lock:
                    conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"


class StoreBlocker:
    """Holds the store's write lock from its own connection: a real, reversible data-store outage.

    ``BEGIN IMMEDIATE`` takes the WAL write lock, so every writer gets "database is locked" after its busy
    timeout while readers keep reading. ``BEGIN EXCLUSIVE`` behaves identically in WAL mode (checked with
    SQLite 3.40.1); it only differs in rollback-journal mode, where it would also stop readers. Releasing
    rolls back: the blocker never writes anything.
    """

    def __init__(self, target: Path | str, timeout_s: float = 1.0) -> None:
        """``target``: the database file, or the store URL the pool was configured with."""
        self.path = sqlite_target(target)[0] if isinstance(target, str) else target
        self.timeout_s = timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        return self._conn is not None

    def start(self) -> StoreBlocker:
        with self._lock:
            if self._conn is not None:
                return self
            try:
                conn = _connect(self.path, self.timeout_s)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite {self.path}: blocker cannot open: {_reason(exc)}") from exc
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                conn.close()
                raise StoreUnavailable(f"sqlite {self.path}: blocker cannot lock: {_reason(exc)}") from exc
            self._conn = conn
        return self

    def stop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.execute("ROLLBACK")
            finally:
                conn.close()

    def __enter__(self) -> StoreBlocker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
