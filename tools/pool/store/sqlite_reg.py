"""Registrations and Basic credentials in the SQLite store (a mixin of :class:`SqliteStore`)."""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from datetime import datetime

from tools.pool.store.contract import (
    Registration,
    require_aware,
    stamp,
    unstamp,
    user_key,
)

_REG_COLUMNS = "sip_uri, contact, thumbprint, node, registered_at, expires_at"


class RegistrationsMixin(ABC):
    """Needs the store's transactions; :class:`SqliteStore` provides them."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

    @abstractmethod
    def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    @staticmethod
    @abstractmethod
    def _require_user(conn: sqlite3.Connection, sip_uri: str) -> str: ...

    def register(self, reg: Registration) -> None:
        row = (
            reg.contact,
            reg.sip_uri,
            reg.thumbprint,
            reg.node,
            stamp(reg.registered_at),
            stamp(reg.expires_at),
        )
        with self._write() as conn:
            key = self._require_user(conn, reg.sip_uri)
            conn.execute(
                "INSERT OR REPLACE INTO registrations (contact, sip_uri, thumbprint, node, registered_at, "
                "expires_at, user_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*row, key),
            )

    def unregister(self, sip_uri: str, contact: str) -> None:
        with self._write() as conn:
            conn.execute(
                "DELETE FROM registrations WHERE user_key = ? AND contact = ?", (user_key(sip_uri), contact)
            )

    def registrations(self, sip_uri: str, at: datetime) -> list[Registration]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_REG_COLUMNS} FROM registrations WHERE user_key = ? AND expires_at > ? "
                "ORDER BY registered_at, contact",
                (user_key(sip_uri), stamp(require_aware(at))),
            ).fetchall()
        return [
            Registration(str(r[0]), str(r[1]), str(r[2]), str(r[3]), unstamp(str(r[4])), unstamp(str(r[5])))
            for r in rows
        ]

    def set_password(self, sip_uri: str, password_hash: str) -> None:
        with self._write() as conn:
            key = self._require_user(conn, sip_uri)
            conn.execute(
                "INSERT OR REPLACE INTO passwords (user_key, password_hash) VALUES (?, ?)",
                (key, password_hash),
            )

    def password_hash(self, sip_uri: str) -> str | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT password_hash FROM passwords WHERE user_key = ?", (user_key(sip_uri),)
            ).fetchone()
        return None if row is None else str(row[0])
