"""The PostgreSQL store (several pool nodes share one database) and :class:`PgStoreBlocker`.

Any node can serve any user because every rule runs in the database, in one transaction per call: writes
that read before they write lock the row they depend on first (the user's ``pins`` row for PIN failures,
the ``users`` row for a publish), so two nodes recording failures for one user queue up instead of losing a
count. A node that loses the server answers :class:`StoreUnavailable` (lock and statement timeouts, connect
timeout) and needs no restart when it returns: the connection pool checks each connection on checkout and
replaces the dead ones. Reads are REPEATABLE READ snapshots, so a record is never assembled from two
different moments. The store's rules and their SQL are :mod:`.sqlbase`'s; this module supplies the pooled
transactions, the row locks and the storage form of an instant (TIMESTAMPTZ).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import UTC, datetime

import psycopg
from psycopg import errors
from psycopg.rows import TupleRow

from tools.pool.errors import StoreUnavailable
from tools.pool.store.blocker import WriteBlocker
from tools.pool.store.contract import require_aware
from tools.pool.store.pgconn import Conn, ConnectionPool, PgTarget, pg_target, reason
from tools.pool.store.schema import POSTGRESQL, SCHEMA_VERSION, TABLES, check_version, pending
from tools.pool.store.sqlbase import SqlConn, SqlStore

_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
_MIGRATION_LOCK = int.from_bytes(b"phonepr1", "big")  # the advisory lock every node migrates under


class QmarkConn:
    """A pooled connection that takes the shared SQL's ``?`` placeholders (psycopg's are ``%s``).

    The shared statements hold no ``?`` but placeholders; a literal ``%`` is escaped all the same.
    """

    __slots__ = ("conn",)

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> psycopg.Cursor[TupleRow]:
        return self.conn.execute(sql.replace("%", "%%").replace("?", "%s"), params)


def _schema_version(conn: SqlConn) -> int:
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    found = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(found[0]) if found is not None and found[0] is not None else 0


class PostgresStore(SqlStore):
    """The pool's data store in a PostgreSQL database; safe to share between request threads and nodes.

    ``timeout_s`` bounds connecting (libpq's minimum is 2 s), waiting for a lock or a free connection;
    a ``?timeout=`` in the URL overrides it.
    """

    # Nodes write at once: a write that reads first locks the row it depends on, and a duplicate key
    # another node inserted after the check is reported like the check would have.
    _ROW_LOCKS = True
    _UNIQUE_RACE = (errors.UniqueViolation,)

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
                conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
                for statement in pending(POSTGRESQL, _schema_version(conn)):
                    conn.execute(statement)  # DDL from schema.py, no user input

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[QmarkConn]:
        """One transaction on a pooled connection; any driver failure becomes one StoreUnavailable line."""
        try:
            with self._pool.connection() as conn:
                conn.execute(begin)  # one of two constants
                try:
                    yield QmarkConn(conn)
                except BaseException:
                    if not conn.closed and not conn.broken:
                        with suppress(psycopg.Error):
                            conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except (psycopg.Error, OSError) as exc:
            raise StoreUnavailable(f"postgresql {self.target.display}: {reason(exc, self.target)}") from exc

    def _write(self) -> AbstractContextManager[QmarkConn]:
        return self._transaction("BEGIN")

    def _read(self) -> AbstractContextManager[QmarkConn]:
        return self._transaction(_READ)

    @staticmethod
    def _to_db(at: datetime) -> datetime:
        return require_aware(at)

    @staticmethod
    def _from_db(value: object) -> datetime:
        """A TIMESTAMPTZ as read back, in ``datetime.UTC`` (the session zone is UTC; this says so)."""
        assert isinstance(value, datetime)
        return value.astimezone(UTC)

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.target.display!r})"


class PgStoreBlocker(WriteBlocker[Conn]):
    """Holds EXCLUSIVE locks on the store's tables from its own connection: a real, reversible outage.

    EXCLUSIVE conflicts with every row lock and every INSERT/UPDATE/DELETE but not with plain SELECTs, so
    on every node writers fail after their lock timeout while sign-in reads keep working, as with SQLite's
    :class:`~tools.pool.store.sqlite.StoreBlocker`. Releasing rolls back: the blocker never writes.
    """

    def __init__(self, target: PgTarget | str, timeout_s: float = 1.0) -> None:
        """``target``: the store URL the pool was configured with (or its parsed form)."""
        self.target = target if isinstance(target, PgTarget) else pg_target(target)
        super().__init__(timeout_s)

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"postgresql {self.target.display}: blocker {what}: {reason(exc, self.target)}"
        )

    def _take(self) -> Conn:
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

    def _release(self, conn: Conn) -> None:
        try:
            with suppress(psycopg.Error):  # a server that went away took the locks with it
                conn.execute("ROLLBACK")
        finally:
            conn.close()
