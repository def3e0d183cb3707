"""The PostgreSQL store (several pool nodes share one database) and :class:`PgStoreBlocker`.

Any node can serve any user because every rule runs in the database, in one transaction per call: writes
that read before they write lock the row they depend on first (the user's ``pins`` row for PIN failures,
the ``users`` row for a publish), so two nodes recording failures for one user queue up instead of losing a
count. A node that loses the server answers :class:`StoreUnavailable` (lock and statement timeouts, connect
timeout) and needs no restart when it returns: the connection pool checks each connection on checkout and
replaces the dead ones. Reads are REPEATABLE READ snapshots, so a record is never assembled from two
different moments.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import datetime, timedelta

import psycopg
from psycopg import errors

from tools.pool.errors import PoolError, StoreUnavailable
from tools.pool.store.contract import (
    PinRecord,
    PublishedCert,
    User,
    UsernameQuery,
    device_key,
    no_such_user,
    require_aware,
    thumbprint_key,
    user_key,
)
from tools.pool.store.pgconn import Conn, ConnectionPool, PgTarget, pg_target, reason
from tools.pool.store.postgres_reg import PgRegistrationsMixin, utc
from tools.pool.store.schema import POSTGRESQL, SCHEMA_VERSION, TABLES, check_version, pending

_USER_COLUMNS = "sip_uri, line_uri, display_name, enabled, pin_auth_enabled, home_pool"
_CERT_COLUMNS = "sip_uri, device_id, thumbprint, serial, not_before, not_after, published_at, der, revoked"
_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
_MIGRATION_LOCK = int.from_bytes(b"phonepr1", "big")  # the advisory lock every node migrates under


def _user(row: tuple[object, ...]) -> User:
    sip_uri, line_uri, display_name, enabled, pin_auth, home_pool = row
    return User(str(sip_uri), str(line_uri), str(display_name), bool(enabled), bool(pin_auth), str(home_pool))


def _cert(row: tuple[object, ...]) -> PublishedCert:
    uri, device, thumb, serial, not_before, not_after, published_at, der, revoked = row
    assert isinstance(der, bytes)
    return PublishedCert(
        str(uri), str(device), str(thumb), str(serial), utc(not_before), utc(not_after), utc(published_at),
        der, bool(revoked),
    )  # fmt: skip


def _schema_version(conn: Conn) -> int:
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    found = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(found[0]) if found is not None and found[0] is not None else 0


class PostgresStore(PgRegistrationsMixin):
    """The pool's data store in a PostgreSQL database; safe to share between request threads and nodes.

    ``timeout_s`` bounds connecting (libpq's minimum is 2 s), waiting for a lock or a free connection;
    a ``?timeout=`` in the URL overrides it.
    """

    def __init__(self, target: PgTarget | str, timeout_s: float = 2.0) -> None:
        self.target = target if isinstance(target, PgTarget) else pg_target(target)
        self.timeout_s = self.target.timeout_s if self.target.timeout_s is not None else timeout_s
        self._pool = ConnectionPool(
            self.target.connector(self.timeout_s),
            self.target.pool_size,
            self.timeout_s,
            self.target.display,
        )
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise

    def _prepare(self) -> None:
        """Migrate when behind; opening an up-to-date store only reads, so a blocked store still opens."""
        with self._read() as conn:
            current = _schema_version(conn)
        check_version(current, self.target.display)
        if current < SCHEMA_VERSION:
            with self._write() as conn:
                # Nodes starting together queue here; the later ones then find nothing left to do.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                for statement in pending(POSTGRESQL, _schema_version(conn)):
                    conn.execute(statement)  # DDL from schema.py, no user input

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[Conn]:
        """One transaction on a pooled connection; any driver failure becomes one StoreUnavailable line."""
        try:
            with self._pool.connection() as conn:
                conn.execute(begin)  # one of two constants
                try:
                    yield conn
                except BaseException:
                    if not conn.closed and not conn.broken:
                        with suppress(psycopg.Error):
                            conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except (psycopg.Error, OSError) as exc:
            raise StoreUnavailable(f"postgresql {self.target.display}: {reason(exc, self.target)}") from exc

    def _write(self) -> AbstractContextManager[Conn]:
        return self._transaction("BEGIN")

    def _read(self) -> AbstractContextManager[Conn]:
        return self._transaction(_READ)

    @staticmethod
    def _require_user(conn: Conn, sip_uri: str, lock: str = "") -> str:
        key = user_key(sip_uri)
        if conn.execute(f"SELECT 1 FROM users WHERE user_key = %s {lock}", (key,)).fetchone() is None:
            raise no_such_user(sip_uri)
        return key

    @staticmethod
    def _lock_pins(conn: Conn, sip_uri: str) -> str:
        """Take the user's PIN row: every PIN write queues behind the one before it, on every node."""
        key = user_key(sip_uri)
        if conn.execute("SELECT 1 FROM pins WHERE user_key = %s FOR UPDATE", (key,)).fetchone() is None:
            raise no_such_user(sip_uri)
        return key

    @staticmethod
    def _pin_record(conn: Conn, sip_uri: str) -> PinRecord | None:
        key = user_key(sip_uri)
        row = conn.execute(
            "SELECT u.sip_uri, p.pin_hash, p.pin_length, p.set_at, p.locked_until, p.global_failures, "
            "p.locked_permanently FROM pins p JOIN users u USING (user_key) WHERE p.user_key = %s",
            (key,),
        ).fetchone()
        if row is None:
            return None
        uri, pin_hash, length, set_at, locked_until, global_failures, permanent = row
        rows = conn.execute("SELECT at FROM pin_failures WHERE user_key = %s ORDER BY at", (key,)).fetchall()
        return PinRecord(
            str(uri),
            str(pin_hash),
            int(length),
            utc(set_at),
            tuple(utc(f[0]) for f in rows),
            None if locked_until is None else utc(locked_until),
            int(global_failures),
            bool(permanent),
        )

    # -- users and PINs ---------------------------------------------------------------------------------

    def add_user(self, user: User, pin_hash: str, pin_length: int, at: datetime) -> None:
        when = require_aware(at)
        names = (user.key, user.sip_uri, user.line_uri, user.number[1:], user.extension, user.display_name)
        with self._write() as conn:
            done = conn.execute(
                "INSERT INTO users (user_key, sip_uri, line_uri, number_digits, extension, display_name, "
                "enabled, pin_auth_enabled, home_pool) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (user_key) DO NOTHING",
                (*names, user.enabled, user.pin_auth_enabled, user.home_pool),
            )
            if done.rowcount == 0:
                raise PoolError("USER_EXISTS", f"user {user.sip_uri!r} already exists in the store")
            conn.execute(
                "INSERT INTO pins (user_key, pin_hash, pin_length, set_at) VALUES (%s, %s, %s, %s)",
                (user.key, pin_hash, pin_length, when),
            )

    def get_user(self, sip_uri: str) -> User | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE user_key = %s", (user_key(sip_uri),)
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
                "WHERE number_digits = %s OR extension = %s ORDER BY user_key",
                (query.digits, query.digits),
            ).fetchall()
        return [_user(row[2:]) for row in rows if query.matches(str(row[0]), str(row[1]))]

    def pin_record(self, sip_uri: str) -> PinRecord | None:
        with self._read() as conn:
            return self._pin_record(conn, sip_uri)

    def set_pin(self, sip_uri: str, pin_hash: str, pin_length: int, at: datetime) -> None:
        when = require_aware(at)
        with self._write() as conn:
            done = conn.execute(
                "UPDATE pins SET pin_hash = %s, pin_length = %s, set_at = %s WHERE user_key = %s",
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
        when = require_aware(at)
        with self._write() as conn:
            key = self._lock_pins(conn, sip_uri)
            conn.execute("DELETE FROM pin_failures WHERE user_key = %s AND at <= %s", (key, when - window))
            conn.execute("INSERT INTO pin_failures (user_key, at) VALUES (%s, %s)", (key, when))
            counted = conn.execute("SELECT COUNT(*) FROM pin_failures WHERE user_key = %s", (key,)).fetchone()
            local = int(counted[0]) if counted is not None else 0
            conn.execute(
                "UPDATE pins SET global_failures = global_failures + 1, "
                "locked_until = CASE WHEN %s THEN %s ELSE locked_until END, "
                "locked_permanently = locked_permanently OR global_failures + 1 >= %s WHERE user_key = %s",
                (local >= local_limit, when + lock_for, global_limit, key),
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
            conn.execute("DELETE FROM pin_failures WHERE user_key = %s", (key,))
            conn.execute("UPDATE pins SET locked_until = NULL WHERE user_key = %s", (key,))

    def unlock_pin(self, sip_uri: str) -> None:
        with self._write() as conn:
            key = self._lock_pins(conn, sip_uri)
            conn.execute("DELETE FROM pin_failures WHERE user_key = %s", (key,))
            conn.execute(
                "UPDATE pins SET locked_until = NULL, global_failures = 0, locked_permanently = FALSE "
                "WHERE user_key = %s",
                (key,),
            )

    # -- certificates -----------------------------------------------------------------------------------

    def publish(self, cert: PublishedCert) -> None:
        thumb = thumbprint_key(cert.thumbprint)
        device = device_key(cert.device_id)
        times = [require_aware(t) for t in (cert.not_before, cert.not_after, cert.published_at)]
        row = (thumb, device, cert.sip_uri, cert.device_id, cert.serial, *times, cert.der, cert.revoked)
        taken = PoolError("CERT_EXISTS", f"certificate {thumb} is already published for another device")
        with self._write() as conn:
            # The user's row lock queues two nodes publishing for one device (else both DELETE, both INSERT).
            key = self._require_user(conn, cert.sip_uri, lock="FOR NO KEY UPDATE")
            owner = conn.execute(
                "SELECT user_key, device_key FROM certificates WHERE thumbprint = %s", (thumb,)
            ).fetchone()
            if owner is not None and tuple(owner) != (key, device):
                raise taken
            conn.execute("DELETE FROM certificates WHERE user_key = %s AND device_key = %s", (key, device))
            try:
                conn.execute(
                    "INSERT INTO certificates (thumbprint, device_key, sip_uri, device_id, serial, "
                    "not_before, not_after, published_at, der, revoked, user_key) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (*row, key),
                )
            except errors.UniqueViolation:
                raise taken from None  # another user's node published the same thumbprint just now

    def certificates(self, sip_uri: str) -> list[PublishedCert]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE user_key = %s "
                "ORDER BY published_at, thumbprint",
                (user_key(sip_uri),),
            ).fetchall()
        return [_cert(r) for r in rows]

    def certificate(self, thumbprint: str) -> PublishedCert | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE thumbprint = %s",
                (thumbprint_key(thumbprint),),
            ).fetchone()
        return _cert(row) if row else None

    def revoke(self, thumbprint: str) -> None:
        with self._write() as conn:
            done = conn.execute(
                "UPDATE certificates SET revoked = TRUE WHERE thumbprint = %s", (thumbprint_key(thumbprint),)
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
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.target.display!r})"


class PgStoreBlocker:
    """Holds EXCLUSIVE locks on the store's tables from its own connection: a real, reversible outage.

    EXCLUSIVE conflicts with every row lock and every INSERT/UPDATE/DELETE but not with plain SELECTs, so
    on every node writers fail after their lock timeout while sign-in reads keep working, as with SQLite's
    :class:`~tools.pool.store.sqlite.StoreBlocker`. Releasing rolls back: the blocker never writes.
    """

    def __init__(self, target: PgTarget | str, timeout_s: float = 1.0) -> None:
        """``target``: the store URL the pool was configured with (or its parsed form)."""
        self.target = target if isinstance(target, PgTarget) else pg_target(target)
        self.timeout_s = timeout_s
        self._conn: Conn | None = None
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        return self._conn is not None

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"postgresql {self.target.display}: blocker {what}: {reason(exc, self.target)}"
        )

    def start(self) -> PgStoreBlocker:
        with self._lock:
            if self._conn is None:
                self._conn = self._lock_tables()
        return self

    def _lock_tables(self) -> Conn:
        try:
            conn = self.target.connector(self.timeout_s)()
        except psycopg.Error as exc:
            raise self._unavailable("cannot open", exc) from exc
        try:
            conn.execute("SET idle_in_transaction_session_timeout = 0")  # it idles in its transaction
            conn.execute("BEGIN")
            conn.execute(f"LOCK TABLE {', '.join(TABLES)} IN EXCLUSIVE MODE")
        except psycopg.Error as exc:
            conn.close()
            raise self._unavailable("cannot lock", exc) from exc
        return conn

    def stop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                with suppress(psycopg.Error):  # a server that went away took the locks with it
                    conn.execute("ROLLBACK")
            finally:
                conn.close()

    def __enter__(self) -> PgStoreBlocker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
