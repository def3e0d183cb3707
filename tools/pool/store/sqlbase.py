"""Every :class:`~tools.pool.store.contract.Store` rule both SQL backends share, with its SQL, written once.

SQLite and PostgreSQL must behave identically (contract.py), so the statements and the logic around them
live in :class:`SqlStore` and a backend supplies only what really differs between the two databases:

- ``_read()`` / ``_write()``: its transactions. Each maps every driver failure to one StoreUnavailable line
  and yields a :class:`SqlConn` that takes this module's SQL as written, ``?`` placeholders included
  (sqlite3's style; the PostgreSQL backend translates them for psycopg).
- ``_to_db()`` / ``_from_db()``: how an instant is stored (SQLite: fixed-width UTC text; PostgreSQL:
  TIMESTAMPTZ). Both refuse naive datetimes.
- ``_ROW_LOCKS``: whether a write that reads first must lock the row it depends on (PostgreSQL, where nodes
  write at once; SQLite's ``BEGIN IMMEDIATE`` already serialises every writer and has no ``FOR UPDATE``).
- ``_UNIQUE_RACE``: the driver error for a duplicate key another node inserted between check and insert.

Booleans are bound as Python bools and written as ``TRUE``/``FALSE``, which SQLite stores as 1/0 like its
INTEGER flags; upserts use ``ON CONFLICT``, which both databases speak (SQLite since 3.24).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol, Self

from tools.pool.errors import PoolError
from tools.pool.store.contract import (
    PinRecord,
    PublishedCert,
    Registration,
    User,
    UsernameQuery,
    device_key,
    no_such_user,
    thumbprint_key,
    user_key,
)

_USER_COLUMNS = "sip_uri, line_uri, display_name, enabled, pin_auth_enabled, home_pool"
_CERT_COLUMNS = "sip_uri, device_id, thumbprint, serial, not_before, not_after, published_at, der, revoked"
_REG_COLUMNS = "sip_uri, contact, thumbprint, node, registered_at, expires_at"


class Rows(Protocol):
    """What the shared logic reads of a statement's result (a DB-API cursor)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> tuple[Any, ...] | None: ...

    def fetchall(self) -> Sequence[tuple[Any, ...]]: ...


class SqlConn(Protocol):
    """A connection inside one transaction that takes SQL with ``?`` placeholders."""

    def execute(self, sql: str, params: Sequence[object] = ..., /) -> Rows: ...


def _user(row: Sequence[object]) -> User:
    sip_uri, line_uri, display_name, enabled, pin_auth, home_pool = row
    return User(str(sip_uri), str(line_uri), str(display_name), bool(enabled), bool(pin_auth), str(home_pool))


class SqlStore(ABC):
    """The Store methods of an SQL database; subclasses provide the hooks the module docstring lists."""

    _ROW_LOCKS: ClassVar[bool]
    _UNIQUE_RACE: ClassVar[tuple[type[Exception], ...]]

    @abstractmethod
    def _read(self) -> AbstractContextManager[SqlConn]:
        """A read-only transaction: one consistent snapshot."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[SqlConn]:
        """A write transaction: committed whole or rolled back whole."""

    @staticmethod
    @abstractmethod
    def _to_db(at: datetime) -> object:
        """An aware datetime as the database stores it; ValueError when naive."""

    @staticmethod
    @abstractmethod
    def _from_db(value: object) -> datetime:
        """A stored instant as an aware UTC datetime."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------------------------------------

    def _existing(self, conn: SqlConn, table: str, sip_uri: str, lock: str = "") -> str:
        """The user's key; NO_SUCH_USER unless ``table`` has the user's row, locked with ``lock`` where
        the backend locks rows (``table`` and ``lock`` are constants of this module, never input)."""
        key = user_key(sip_uri)
        clause = lock if self._ROW_LOCKS else ""
        if conn.execute(f"SELECT 1 FROM {table} WHERE user_key = ? {clause}", (key,)).fetchone() is None:
            raise no_such_user(sip_uri)
        return key

    def _lock_pins(self, conn: SqlConn, sip_uri: str) -> str:
        """Take the user's PIN row: every PIN write queues behind the one before it, on every node."""
        return self._existing(conn, "pins", sip_uri, lock="FOR UPDATE")

    def _cert(self, row: Sequence[object]) -> PublishedCert:
        uri, device, thumb, serial, not_before, not_after, published_at, der, revoked = row
        start, end, published = (self._from_db(t) for t in (not_before, not_after, published_at))
        assert isinstance(der, bytes)
        return PublishedCert(
            str(uri), str(device), str(thumb), str(serial), start, end, published, der, bool(revoked)
        )

    def _pin_record(self, conn: SqlConn, sip_uri: str) -> PinRecord | None:
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
        return PinRecord(
            str(uri),
            str(pin_hash),
            int(length),
            self._from_db(set_at),
            tuple(self._from_db(f[0]) for f in rows),
            None if locked_until is None else self._from_db(locked_until),
            int(global_failures),
            bool(permanent),
        )

    # -- users and PINs ---------------------------------------------------------------------------------

    def add_user(self, user: User, pin_hash: str, pin_length: int, at: datetime) -> None:
        when = self._to_db(at)
        names = (user.key, user.sip_uri, user.line_uri, user.number[1:], user.extension, user.display_name)
        with self._write() as conn:
            # ON CONFLICT rather than a SELECT first: two nodes adding one user cannot both pass the check.
            done = conn.execute(
                "INSERT INTO users (user_key, sip_uri, line_uri, number_digits, extension, display_name, "
                "enabled, pin_auth_enabled, home_pool) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (user_key) DO NOTHING",
                (*names, user.enabled, user.pin_auth_enabled, user.home_pool),
            )
            if done.rowcount == 0:
                raise PoolError("USER_EXISTS", f"user {user.sip_uri!r} already exists in the store")
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
        return [_user(row[2:]) for row in rows if query.matches(str(row[0]), str(row[1]))]

    def pin_record(self, sip_uri: str) -> PinRecord | None:
        with self._read() as conn:
            return self._pin_record(conn, sip_uri)

    def set_pin(self, sip_uri: str, pin_hash: str, pin_length: int, at: datetime) -> None:
        when = self._to_db(at)
        with self._write() as conn:
            done = conn.execute(
                "UPDATE pins SET pin_hash = ?, pin_length = ?, set_at = ? WHERE user_key = ?",
                (pin_hash, pin_length, when, user_key(sip_uri)),
            )
            if done.rowcount == 0:
                raise no_such_user(sip_uri)

    def record_pin_failure(
        self,
        sip_uri: str,
        at: datetime,
        window: timedelta,
        local_limit: int,
        lock_for: timedelta,
        global_limit: int,
    ) -> PinRecord:
        when, expired, until = (self._to_db(t) for t in (at, at - window, at + lock_for))
        with self._write() as conn:
            key = self._lock_pins(conn, sip_uri)
            conn.execute("DELETE FROM pin_failures WHERE user_key = ? AND at <= ?", (key, expired))
            conn.execute("INSERT INTO pin_failures (user_key, at) VALUES (?, ?)", (key, when))
            counted = conn.execute("SELECT COUNT(*) FROM pin_failures WHERE user_key = ?", (key,)).fetchone()
            local = int(counted[0]) if counted is not None else 0
            # SET expressions read the row as it was: global_failures + 1 is the count after this failure.
            conn.execute(
                "UPDATE pins SET global_failures = global_failures + 1, "
                "locked_until = CASE WHEN ? THEN ? ELSE locked_until END, "
                "locked_permanently = locked_permanently OR global_failures + 1 >= ? WHERE user_key = ?",
                (local >= local_limit, until, global_limit, key),
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
            key = self._lock_pins(conn, sip_uri)
            conn.execute("DELETE FROM pin_failures WHERE user_key = ?", (key,))
            conn.execute("UPDATE pins SET locked_until = NULL WHERE user_key = ?", (key,))

    def unlock_pin(self, sip_uri: str) -> None:
        with self._write() as conn:
            key = self._lock_pins(conn, sip_uri)
            conn.execute("DELETE FROM pin_failures WHERE user_key = ?", (key,))
            conn.execute(
                "UPDATE pins SET locked_until = NULL, global_failures = 0, locked_permanently = FALSE "
                "WHERE user_key = ?",
                (key,),
            )

    # -- certificates -----------------------------------------------------------------------------------

    def publish(self, cert: PublishedCert) -> None:
        thumb = thumbprint_key(cert.thumbprint)
        device = device_key(cert.device_id)
        times = [self._to_db(t) for t in (cert.not_before, cert.not_after, cert.published_at)]
        row = (thumb, device, cert.sip_uri, cert.device_id, cert.serial, *times, cert.der, cert.revoked)
        taken = PoolError("CERT_EXISTS", f"certificate {thumb} is already published for another device")
        with self._write() as conn:
            # The user's row lock queues two nodes publishing for one device (else both DELETE, both INSERT).
            key = self._existing(conn, "users", cert.sip_uri, lock="FOR NO KEY UPDATE")
            owner = conn.execute(
                "SELECT user_key, device_key FROM certificates WHERE thumbprint = ?", (thumb,)
            ).fetchone()
            if owner is not None and tuple(owner) != (key, device):
                raise taken
            conn.execute("DELETE FROM certificates WHERE user_key = ? AND device_key = ?", (key, device))
            try:
                conn.execute(
                    "INSERT INTO certificates (thumbprint, device_key, sip_uri, device_id, serial, "
                    "not_before, not_after, published_at, der, revoked, user_key) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*row, key),
                )
            except self._UNIQUE_RACE:
                raise taken from None  # another user's node published the same thumbprint just now

    def certificates(self, sip_uri: str) -> list[PublishedCert]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE user_key = ? "
                "ORDER BY published_at, thumbprint",
                (user_key(sip_uri),),
            ).fetchall()
        return [self._cert(r) for r in rows]

    def certificate(self, thumbprint: str) -> PublishedCert | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE thumbprint = ?",
                (thumbprint_key(thumbprint),),
            ).fetchone()
        return self._cert(row) if row else None

    def revoke(self, thumbprint: str) -> None:
        with self._write() as conn:
            done = conn.execute(
                "UPDATE certificates SET revoked = TRUE WHERE thumbprint = ?", (thumbprint_key(thumbprint),)
            )
            if done.rowcount == 0:
                raise PoolError("NO_SUCH_CERT", f"no certificate with thumbprint {thumbprint!r} in the store")

    # -- registrations and Basic credentials ------------------------------------------------------------

    def register(self, reg: Registration) -> None:
        times = (self._to_db(reg.registered_at), self._to_db(reg.expires_at))
        with self._write() as conn:
            key = self._existing(conn, "users", reg.sip_uri)
            conn.execute(
                "INSERT INTO registrations (contact, sip_uri, thumbprint, node, registered_at, expires_at, "
                "user_key) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_key, contact) DO UPDATE SET "
                "sip_uri = EXCLUDED.sip_uri, thumbprint = EXCLUDED.thumbprint, node = EXCLUDED.node, "
                "registered_at = EXCLUDED.registered_at, expires_at = EXCLUDED.expires_at",
                (reg.contact, reg.sip_uri, reg.thumbprint, reg.node, *times, key),
            )

    def unregister(self, sip_uri: str, contact: str) -> None:
        with self._write() as conn:
            conn.execute(
                "DELETE FROM registrations WHERE user_key = ? AND contact = ?", (user_key(sip_uri), contact)
            )

    def registrations(self, sip_uri: str, at: datetime) -> list[Registration]:
        when = self._to_db(at)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_REG_COLUMNS} FROM registrations WHERE user_key = ? AND expires_at > ? "
                "ORDER BY registered_at, contact",
                (user_key(sip_uri), when),
            ).fetchall()
        return [
            Registration(str(r[0]), str(r[1]), str(r[2]), str(r[3]), self._from_db(r[4]), self._from_db(r[5]))
            for r in rows
        ]

    def set_password(self, sip_uri: str, password_hash: str) -> None:
        with self._write() as conn:
            key = self._existing(conn, "users", sip_uri)
            conn.execute(
                "INSERT INTO passwords (user_key, password_hash) VALUES (?, ?) "
                "ON CONFLICT (user_key) DO UPDATE SET password_hash = EXCLUDED.password_hash",
                (key, password_hash),
            )

    def password_hash(self, sip_uri: str) -> str | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT password_hash FROM passwords WHERE user_key = ?", (user_key(sip_uri),)
            ).fetchone()
        return None if row is None else str(row[0])

    def ping(self, write: bool = False) -> None:
        if write:
            with self._write() as conn:  # takes the write lock, changes nothing
                conn.execute("UPDATE schema_version SET version = version")
            return
        with self._read() as conn:
            conn.execute("SELECT version FROM schema_version").fetchone()
