"""Registrations and Basic credentials in the PostgreSQL store (a mixin of :class:`PostgresStore`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from datetime import UTC, datetime

from tools.pool.store.contract import Registration, require_aware, user_key
from tools.pool.store.pgconn import Conn

_REG_COLUMNS = "sip_uri, contact, thumbprint, node, registered_at, expires_at"


def utc(value: object) -> datetime:
    """A TIMESTAMPTZ as read back, as ``datetime.UTC`` (the session zone is UTC; this makes it explicit)."""
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


class PgRegistrationsMixin(ABC):
    """Needs the store's transactions; :class:`PostgresStore` provides them."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Conn]: ...

    @abstractmethod
    def _read(self) -> AbstractContextManager[Conn]: ...

    @staticmethod
    @abstractmethod
    def _require_user(conn: Conn, sip_uri: str, lock: str = "") -> str: ...

    def register(self, reg: Registration) -> None:
        row = (
            reg.contact,
            reg.sip_uri,
            reg.thumbprint,
            reg.node,
            require_aware(reg.registered_at),
            require_aware(reg.expires_at),
        )
        with self._write() as conn:
            key = self._require_user(conn, reg.sip_uri)
            conn.execute(
                "INSERT INTO registrations (contact, sip_uri, thumbprint, node, registered_at, expires_at, "
                "user_key) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (user_key, contact) DO UPDATE SET "
                "sip_uri = EXCLUDED.sip_uri, thumbprint = EXCLUDED.thumbprint, node = EXCLUDED.node, "
                "registered_at = EXCLUDED.registered_at, expires_at = EXCLUDED.expires_at",
                (*row, key),
            )

    def unregister(self, sip_uri: str, contact: str) -> None:
        with self._write() as conn:
            conn.execute(
                "DELETE FROM registrations WHERE user_key = %s AND contact = %s", (user_key(sip_uri), contact)
            )

    def registrations(self, sip_uri: str, at: datetime) -> list[Registration]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_REG_COLUMNS} FROM registrations WHERE user_key = %s AND expires_at > %s "
                "ORDER BY registered_at, contact",
                (user_key(sip_uri), require_aware(at)),
            ).fetchall()
        return [Registration(str(r[0]), str(r[1]), str(r[2]), str(r[3]), utc(r[4]), utc(r[5])) for r in rows]

    def set_password(self, sip_uri: str, password_hash: str) -> None:
        with self._write() as conn:
            key = self._require_user(conn, sip_uri)
            conn.execute(
                "INSERT INTO passwords (user_key, password_hash) VALUES (%s, %s) "
                "ON CONFLICT (user_key) DO UPDATE SET password_hash = EXCLUDED.password_hash",
                (key, password_hash),
            )

    def password_hash(self, sip_uri: str) -> str | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT password_hash FROM passwords WHERE user_key = %s", (user_key(sip_uri),)
            ).fetchone()
        return None if row is None else str(row[0])
