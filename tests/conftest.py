"""Fixtures for every test directory: one PostgreSQL per session, one fresh database per test (tests/pgserver.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pgserver import PgServer, PgUnavailable
from tests.servers import server_missing


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway cluster (or ``$PHONEPROV_TEST_PG_URL``); skips when no PostgreSQL is installed."""
    try:
        server = PgServer.from_environment()
    except PgUnavailable as exc:
        server_missing(str(exc))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL (with password) of a fresh, empty database, dropped after the test."""
    with pg_server.database() as url:
        yield url
