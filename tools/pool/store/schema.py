"""The store's schema as one ordered list of migrations that SQLite and PostgreSQL both apply.

One list, so a column added for one backend is added for the other in the same step and both keep holding
the same data under the same rules (contract.py). The DDL names column *kinds* (``{text}``, ``{stamp}``,
``{blob}``, ``{flag}``); a :class:`Dialect` says once what each kind is in its database. Every statement is
idempotent (``IF NOT EXISTS``) and a backend applies a version's statements in one transaction, together
with the new ``schema_version`` row, so a migration is either complete or absent.

A new migration is appended with the next version; shipped ones are never edited.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tools.pool.errors import ConfigError


@dataclass(frozen=True)
class Dialect:
    """What each column kind of the DDL is in one database."""

    name: str
    text: str  # compared and ordered byte-wise, like SQLite's default BINARY collation
    stamp: str  # a UTC instant
    blob: str
    flag: str

    def render(self, ddl: str) -> list[str]:
        """The statements of ``ddl`` with its column kinds filled in."""
        return [s.strip() for s in ddl.format(**asdict(self)).split(";") if s.strip()]


SQLITE = Dialect("sqlite", text="TEXT", stamp="TEXT", blob="BLOB", flag="INTEGER")
POSTGRESQL = Dialect("postgresql", text='TEXT COLLATE "C"', stamp="TIMESTAMPTZ", blob="BYTEA", flag="BOOLEAN")


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    ddl: str


_V1 = """
CREATE TABLE IF NOT EXISTS users (
    user_key {text} PRIMARY KEY, sip_uri {text} NOT NULL, line_uri {text} NOT NULL,
    number_digits {text} NOT NULL, extension {text} NOT NULL, display_name {text} NOT NULL,
    enabled {flag} NOT NULL, pin_auth_enabled {flag} NOT NULL, home_pool {text} NOT NULL);
CREATE INDEX IF NOT EXISTS users_number ON users (number_digits);
CREATE INDEX IF NOT EXISTS users_extension ON users (extension);
CREATE TABLE IF NOT EXISTS pins (
    user_key {text} PRIMARY KEY REFERENCES users (user_key) ON DELETE CASCADE,
    pin_hash {text} NOT NULL, pin_length INTEGER NOT NULL, set_at {stamp} NOT NULL, locked_until {stamp},
    global_failures INTEGER NOT NULL DEFAULT 0, locked_permanently {flag} NOT NULL DEFAULT FALSE);
CREATE TABLE IF NOT EXISTS pin_failures (
    user_key {text} NOT NULL REFERENCES users (user_key) ON DELETE CASCADE, at {stamp} NOT NULL);
CREATE INDEX IF NOT EXISTS pin_failures_user ON pin_failures (user_key, at);
CREATE TABLE IF NOT EXISTS certificates (
    thumbprint {text} PRIMARY KEY, user_key {text} NOT NULL REFERENCES users (user_key),
    device_key {text} NOT NULL, sip_uri {text} NOT NULL, device_id {text} NOT NULL, serial {text} NOT NULL,
    not_before {stamp} NOT NULL, not_after {stamp} NOT NULL, published_at {stamp} NOT NULL,
    der {blob} NOT NULL, revoked {flag} NOT NULL DEFAULT FALSE, UNIQUE (user_key, device_key));
CREATE TABLE IF NOT EXISTS registrations (
    user_key {text} NOT NULL REFERENCES users (user_key) ON DELETE CASCADE, contact {text} NOT NULL,
    sip_uri {text} NOT NULL, thumbprint {text} NOT NULL, node {text} NOT NULL, registered_at {stamp} NOT NULL,
    expires_at {stamp} NOT NULL, PRIMARY KEY (user_key, contact));
CREATE TABLE IF NOT EXISTS passwords (
    user_key {text} PRIMARY KEY REFERENCES users (user_key) ON DELETE CASCADE, password_hash {text} NOT NULL);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "users, PINs, certificates, registrations and Basic credentials", _V1),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
TABLES = ("users", "pins", "pin_failures", "certificates", "registrations", "passwords", "schema_version")

_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"


def check_version(found: int, where: str) -> None:
    """A store written by a newer program is refused rather than misread."""
    if found > SCHEMA_VERSION:
        raise ConfigError(f"store {where} has schema version {found}; this program knows {SCHEMA_VERSION}")


def pending(dialect: Dialect, current: int) -> list[str]:
    """The statements taking a store at version ``current`` (0: empty) to :data:`SCHEMA_VERSION`.

    Empty when there is nothing to do; otherwise they end by recording the new version, so a caller runs
    them in one transaction.
    """
    steps = [m for m in MIGRATIONS if m.version > current]
    if not steps:
        return []
    statements = [_VERSION_TABLE]
    for step in steps:
        statements += dialect.render(step.ddl)
    return [
        *statements,
        "DELETE FROM schema_version",
        f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION})",
    ]
