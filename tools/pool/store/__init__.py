"""The pool's data store: one contract; the backend is chosen by URL.

``sqlite:///abs/path.sqlite`` (or a bare path) for one node; ``postgresql://user:password@host/db`` when
several nodes share one database.
"""

from __future__ import annotations

from tools.pool.errors import ConfigError
from tools.pool.store.contract import (
    PinRecord,
    PublishedCert,
    Store,
    User,
    sqlite_target,
)
from tools.pool.store.pgconn import SCHEMES as PG_SCHEMES
from tools.pool.store.pgconn import pg_target
from tools.pool.store.postgres import PgStoreBlocker, PostgresStore
from tools.pool.store.sqlite import SqliteStore, StoreBlocker

__all__ = [
    "PgStoreBlocker",
    "PinRecord",
    "PostgresStore",
    "PublishedCert",
    "SqliteStore",
    "Store",
    "StoreBlocker",
    "User",
    "open_store",
    "store_blocker",
]


def _backend(url: str) -> str:
    """'postgresql' or 'sqlite' by the URL's scheme (a bare path is SQLite); ConfigError for others."""
    scheme, sep, _ = url.strip().partition("://")
    if not sep or scheme.lower() == "sqlite":
        return "sqlite"
    if scheme.lower() in PG_SCHEMES:
        return "postgresql"
    raise ConfigError(f"unsupported store URL scheme {scheme.lower()!r}; supported: sqlite, postgresql")


def open_store(url: str, *, timeout_s: float = 2.0) -> Store:
    """Open the store a pool config names.

    ``timeout_s`` bounds waiting for a lock (SQLite's busy timeout; PostgreSQL's lock, connect and pool
    waits); a ``?timeout=`` in the URL overrides it.
    """
    if _backend(url) == "postgresql":
        return PostgresStore(pg_target(url), timeout_s=timeout_s)
    path, url_timeout = sqlite_target(url)
    return SqliteStore(path, timeout_s=timeout_s if url_timeout is None else url_timeout)


def store_blocker(url: str, *, timeout_s: float = 1.0) -> StoreBlocker | PgStoreBlocker:
    """The write blocker for the store a pool config names (``--fault datastore`` on either backend)."""
    if _backend(url) == "postgresql":
        return PgStoreBlocker(pg_target(url), timeout_s=timeout_s)
    return StoreBlocker(sqlite_target(url)[0], timeout_s=timeout_s)
