"""The SQLite store (one pool node) and :class:`StoreBlocker`, the real fault behind ``--fault datastore``.

WAL mode lets readers go on while a writer (or a blocker) holds the write lock, which is exactly failure 1
of design.md §1: user lookups and PIN checks work, publishing a certificate times out. Two connections
(reader, writer), each behind its own lock, so a write waiting out the busy timeout never stalls reads of
other request threads. Every write is one ``BEGIN IMMEDIATE`` transaction: it either takes the write lock
up front or fails before touching anything. The store's rules and their SQL are :mod:`.sqlbase`'s; this
module supplies the file, the transactions and the storage form of an instant (fixed-width UTC text).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

from tools.pool.errors import StoreUnavailable
from tools.pool.store.blocker import WriteBlocker
from tools.pool.store.contract import sqlite_target, stamp, unstamp
from tools.pool.store.schema import SCHEMA_VERSION, SQLITE, check_version, pending
from tools.pool.store.sqlbase import SqlStore

__all__ = ["SCHEMA_VERSION", "SqliteStore", "StoreBlocker"]


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does (it would honour the umask); -wal/-shm inherit it."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


def _connect(path: Path, timeout_s: float) -> sqlite3.Connection:
    return sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)


class SqliteStore(SqlStore):
    """The pool's data store in one SQLite file (WAL); safe to share between request threads."""

    # BEGIN IMMEDIATE holds the whole database, so writers already queue and nothing can slip in between a
    # check and the insert it guards; a constraint error is a real failure (StoreUnavailable).
    _ROW_LOCKS = False
    _UNIQUE_RACE = ()

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
    def _to_db(at: datetime) -> str:
        return stamp(at)

    @staticmethod
    def _from_db(value: object) -> datetime:
        return unstamp(str(value))

    def close(self) -> None:
        self._closed = True
        for name, lock in (("_reader", self._rlock), ("_writer", self._wlock)):
            conn = getattr(self, name, None)
            if conn is not None:
                with lock:
                    conn.close()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"


class StoreBlocker(WriteBlocker[sqlite3.Connection]):
    """Holds the store's write lock from its own connection: a real, reversible data-store outage.

    ``BEGIN IMMEDIATE`` takes the WAL write lock, so every writer gets "database is locked" after its busy
    timeout while readers keep reading. ``BEGIN EXCLUSIVE`` behaves identically in WAL mode (checked with
    SQLite 3.40.1); it only differs in rollback-journal mode, where it would also stop readers. Releasing
    rolls back: the blocker never writes anything.
    """

    def __init__(self, target: Path | str, timeout_s: float = 1.0) -> None:
        """``target``: the database file, or the store URL the pool was configured with."""
        self.path = sqlite_target(target)[0] if isinstance(target, str) else target
        super().__init__(timeout_s)

    def _take(self) -> sqlite3.Connection:
        try:
            conn = _connect(self.path, self.timeout_s)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite {self.path}: blocker cannot open: {_reason(exc)}") from exc
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreUnavailable(f"sqlite {self.path}: blocker cannot lock: {_reason(exc)}") from exc
        return conn

    def _release(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("ROLLBACK")
        finally:
            conn.close()
