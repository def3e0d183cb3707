"""What both store blockers (``--fault datastore``) share: a write lock held from a connection of their own.

A backend says only how it takes the lock and how it lets it go; holding, starting twice and stopping twice
behave the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Generic, Self, TypeVar

C = TypeVar("C")


class WriteBlocker(ABC, Generic[C]):
    """Holds the store's write lock on a ``C`` from :meth:`start` to :meth:`stop` (both idempotent)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._conn: C | None = None
        self._lock = threading.Lock()

    @abstractmethod
    def _take(self) -> C:
        """Open a connection and take the lock on it; StoreUnavailable (nothing left open) when it cannot."""

    @abstractmethod
    def _release(self, conn: C) -> None:
        """Roll back (the blocker never writes) and close."""

    @property
    def held(self) -> bool:
        return self._conn is not None

    def start(self) -> Self:
        with self._lock:
            if self._conn is None:
                self._conn = self._take()
        return self

    def stop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            self._release(conn)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
