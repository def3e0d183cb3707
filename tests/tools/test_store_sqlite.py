"""The SQLite store: the shared contract, plus what only SQLite has (file, WAL, schema, URL, blocker)."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.tools.store_contract import ALICE, AT, StoreContract, cert
from tools.pool.errors import ConfigError, StoreUnavailable
from tools.pool.store import SqliteStore, StoreBlocker, open_store
from tools.pool.store.sqlite import SCHEMA_VERSION

TIMEOUT_S = 0.3


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "pool.sqlite"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(db_path, timeout_s=TIMEOUT_S) as opened:
        yield opened


@pytest.fixture
def other_store(db_path: Path, store: SqliteStore) -> Iterator[SqliteStore]:
    with SqliteStore(db_path, timeout_s=5.0) as opened:
        yield opened


@pytest.fixture
def write_blocker(db_path: Path, store: SqliteStore) -> Callable[[], AbstractContextManager[object]]:
    return lambda: StoreBlocker(db_path)


class TestSqliteStoreContract(StoreContract):
    pass


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_files_are_private_whatever_the_umask(db_path: Path) -> None:
    old = os.umask(0)
    try:
        with SqliteStore(db_path) as opened:
            opened.add_user(ALICE, "h", 5, AT)
            files = [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]
            assert [_mode(f) for f in files] == [0o600, 0o600, 0o600]
    finally:
        os.umask(old)


def test_wal_mode_and_schema_version(store: SqliteStore, db_path: Path) -> None:
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_reopen_keeps_data_and_does_not_write(store: SqliteStore, db_path: Path) -> None:
    store.add_user(ALICE, "h", 5, AT)
    with StoreBlocker(db_path), SqliteStore(db_path, timeout_s=TIMEOUT_S) as again:
        assert again.get_user(ALICE.sip_uri) == ALICE  # opening an existing store needs no write lock


def test_newer_schema_is_refused(store: SqliteStore, db_path: Path) -> None:
    store.close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(ConfigError, match="schema version 99"):
        SqliteStore(db_path)


def test_not_a_database_is_unavailable_in_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreUnavailable) as err:
        SqliteStore(junk)
    assert str(junk) in str(err.value) and "\n" not in str(err.value)


def test_missing_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match=r"sqlite .*nowhere"):
        SqliteStore(tmp_path / "nowhere" / "pool.sqlite")


def test_blocked_publish_waits_about_the_busy_timeout(store: SqliteStore, db_path: Path) -> None:
    store.add_user(ALICE, "h", 5, AT)
    with StoreBlocker(db_path) as blocker:
        assert blocker.held
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="database is locked"):
            store.publish(cert("{d}", "A" * 40))
        assert TIMEOUT_S * 0.8 <= time.monotonic() - started < TIMEOUT_S + 2
    assert not blocker.held
    store.publish(cert("{d}", "A" * 40))


def test_second_blocker_cannot_lock(db_path: Path, store: SqliteStore) -> None:
    with StoreBlocker(db_path) as first:
        assert first.start() is first  # idempotent
        with pytest.raises(StoreUnavailable, match="blocker cannot lock"):
            StoreBlocker(db_path, timeout_s=0.05).start()
    first.stop()  # stopping twice is harmless


def test_failed_write_mid_transaction_rolls_back(store: SqliteStore, db_path: Path) -> None:
    """A failure after publish's DELETE (a trigger refusing the INSERT) must leave the old row in place."""
    store.add_user(ALICE, "h", 5, AT)
    store.publish(cert("{d}", "A" * 40))
    with sqlite3.connect(db_path) as raw:
        raw.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON certificates BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    with pytest.raises(StoreUnavailable, match="disk full"):
        store.publish(cert("{d}", "B" * 40))
    assert [c.thumbprint for c in store.certificates(ALICE.sip_uri)] == ["A" * 40]
    store.ping()  # the connection is usable after the rollback


def test_one_handle_serves_many_threads(store: SqliteStore) -> None:
    store.add_user(ALICE, "h", 5, AT)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                store.publish(cert(f"{{dev-{n}-{i}}}", f"{n:02d}{i:02d}" + "0" * 36))
                assert store.get_user(ALICE.sip_uri) == ALICE
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.certificates(ALICE.sip_uri)) == 30


@pytest.mark.parametrize(
    ("form", "timeout"),
    [
        ("sqlite://{p}", 2.0),
        ("sqlite:///{p}", 2.0),
        ("{p}", 2.0),
        ("sqlite://{p}?timeout=0.5", 0.5),
        ("SQLITE://{p}", 2.0),
    ],
)
def test_open_store_sqlite_urls(db_path: Path, form: str, timeout: float) -> None:
    with open_store(form.format(p=db_path)) as opened:
        assert isinstance(opened, SqliteStore) and (opened.path, opened.timeout_s) == (db_path, timeout)
        opened.ping()


def test_open_store_timeout_argument_and_url_override(db_path: Path) -> None:
    with open_store(f"sqlite://{db_path}", timeout_s=0.7) as plain:
        assert isinstance(plain, SqliteStore) and plain.timeout_s == 0.7
    with open_store(f"sqlite://{db_path}?timeout=0.2", timeout_s=0.7) as overridden:
        assert isinstance(overridden, SqliteStore) and overridden.timeout_s == 0.2


def test_blocker_takes_the_configured_store_url(store: SqliteStore, db_path: Path) -> None:
    store.add_user(ALICE, "h", 5, AT)
    with StoreBlocker(f"sqlite:///{db_path}") as blocker:
        assert blocker.path == db_path
        with pytest.raises(StoreUnavailable):
            store.publish(cert("{d}", "A" * 40))
    with pytest.raises(ConfigError, match="unsupported store URL scheme"):
        StoreBlocker("postgresql://db/pool")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x/y", "unsupported store URL scheme 'mysql'; supported: sqlite"),
        ("sqlite://relative/pool.sqlite", "needs an absolute path"),
        ("sqlite:///tmp/p.sqlite?mode=ro", "unknown parameter"),
        ("sqlite:///tmp/p.sqlite?timeout=soon", "not a number"),
        ("sqlite:///tmp/p.sqlite?timeout=0", "must be in"),
        ("  ", "empty"),
    ],
)
def test_open_store_rejects(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        open_store(url)
    assert message in str(err.value)
