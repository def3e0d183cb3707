"""The pool's data store: one contract; the backend is chosen by URL (``sqlite:///abs/path.sqlite``)."""

from __future__ import annotations

from tools.pool.store.contract import (
    PinRecord,
    PublishedCert,
    Store,
    User,
    sqlite_target,
)
from tools.pool.store.sqlite import SqliteStore, StoreBlocker

__all__ = ["PinRecord", "PublishedCert", "SqliteStore", "Store", "StoreBlocker", "User", "open_store"]


def open_store(url: str, *, timeout_s: float = 2.0) -> Store:
    """Open the store a pool config names; ConfigError for anything but SQLite (the only backend so far).

    ``timeout_s`` is the busy timeout; a ``?timeout=`` in the URL overrides it.
    """
    path, url_timeout = sqlite_target(url)
    return SqliteStore(path, timeout_s=timeout_s if url_timeout is None else url_timeout)
