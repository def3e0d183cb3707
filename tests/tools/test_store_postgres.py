"""The PostgreSQL store: the shared contract, plus what only a shared server has (URL, outages, nodes)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import UTC, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.pgserver import PgServer
from tests.tools.store_contract import ALICE, AT, BOB, LOCK_FOR, WINDOW, StoreContract, cert
from tools.pool.errors import ConfigError, PoolError, StoreUnavailable
from tools.pool.store import (
    PgStoreBlocker,
    PostgresStore,
    SqliteStore,
    Store,
    StoreBlocker,
    open_store,
    store_blocker,
)
from tools.pool.store.contract import Registration
from tools.pool.store.pgconn import ConnectionPool, PgTarget, pg_target
from tools.pool.store.schema import SCHEMA_VERSION

TIMEOUT_S = 0.5
SECRET = "s3cr3t-Pw"


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    with PostgresStore(pg_url, timeout_s=TIMEOUT_S) as opened:
        yield opened


@pytest.fixture
def other_store(pg_url: str, store: PostgresStore) -> Iterator[PostgresStore]:
    with PostgresStore(pg_url, timeout_s=5.0) as opened:
        yield opened


@pytest.fixture
def write_blocker(pg_url: str, store: PostgresStore) -> Callable[[], AbstractContextManager[object]]:
    return lambda: PgStoreBlocker(pg_url)


class TestPostgresStoreContract(StoreContract):
    """The whole contract suite, against PostgreSQL."""


def _raw(url: str) -> psycopg.Connection[TupleRow]:
    return psycopg.connect(url, autocommit=True)


def _password(url: str) -> str:
    password = urlsplit(url).password
    assert password
    return password


# -- URLs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://pool@db.lab.test/phoneprov", PgTarget("phoneprov", "db.lab.test", None, "pool")),
        (
            f"postgres://pool:{SECRET}@10.0.0.5:5433/pp?timeout=0.5&pool_size=3",
            PgTarget("pp", "10.0.0.5", 5433, "pool", SECRET, 0.5, 3),
        ),
        ("postgresql://u:p%40ss%2Fw@[::1]:5432/db", PgTarget("db", "::1", 5432, "u", "p@ss/w")),
        ("POSTGRESQL:///db?host=/run/postgresql", PgTarget("db", "/run/postgresql")),
        ("postgresql://%2Frun%2FPG/db", PgTarget("db", "/run/PG")),
        (
            "postgresql://h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            PgTarget("db", "h", libpq=(("sslmode", "verify-full"), ("sslrootcert", "/etc/ca.pem"))),
        ),
    ],
)
def test_url_parsing(url: str, expected: PgTarget) -> None:
    assert pg_target(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"postgresql://pool:{SECRET}@db", "needs one database name"),
        (f"postgresql://pool:{SECRET}@db/", "needs one database name"),
        (f"postgresql://pool:{SECRET}@db/a/b", "needs one database name"),
        (f"postgresql://pool:{SECRET}@db:54x2/pp", "port is not a number"),
        (f"postgresql://pool:{SECRET}@db:0/pp", "port is not a number"),
        (f"postgresql://pool:{SECRET}@db1,db2/pp", "several hosts"),
        (f"postgresql://pool:{SECRET}@[::1/pp", "cannot be parsed"),
        (f"postgresql://pool:{SECRET}@db/pp?mode=ro", "unknown parameter(s) mode; supported: timeout"),
        (f"postgresql://pool:{SECRET}@db/pp?password={SECRET}", "unknown parameter(s) password"),
        (f"postgresql://pool:{SECRET}@db/pp?timeout=soon", "timeout 'soon' is not a number"),
        (f"postgresql://pool:{SECRET}@db/pp?timeout=0", "timeout 0 must be in (0, 300]"),
        (f"postgresql://pool:{SECRET}@db/pp?pool_size=2.5", "pool_size 2.5 must be a whole number"),
        (f"postgresql://pool:{SECRET}@db/pp?pool_size=1000", "pool_size 1000 must be in"),
        (f"postgresql://pool:{SECRET}@db/pp?sslmode=always", "sslmode must be one of"),
        (f"postgresql://pool:{SECRET}@db/pp?host=/tmp", "host given twice"),
        (f"postgresql://pool:{SECRET}@db/pp#frag", "fragment"),
        # Unencoded reserved characters split the password early: no piece of it may be echoed.
        (f"postgresql://pool:{SECRET}/x@db/pp", "'@' after the host"),
        (f"postgresql://pool:{SECRET}?x@db/pp", "'@' after the host"),
        (f"postgresql://pool:{SECRET}#x@db/pp", "'@' after the host"),
    ],
)
def test_url_errors_are_one_line_config_errors_without_the_password(url: str, message: str) -> None:
    for parse in (pg_target, open_store, store_blocker):
        with pytest.raises(ConfigError) as err:
            parse(url)
        text = f"{err.value} {err.value!r} {err.value.args!r}"
        assert message in str(err.value) and "\n" not in str(err.value)
        assert "3cr3t" not in text and "x@db" not in text


def test_repr_and_display_never_show_the_password() -> None:
    target = pg_target(f"postgresql://pool:{SECRET}@db.lab.test:5433/pp")
    assert SECRET not in repr(target) and SECRET not in str(target)
    assert target.display == "pool@db.lab.test:5433/pp"
    assert pg_target("postgresql://[fe80::1]/pp").display == "[fe80::1]/pp"


def test_open_store_and_blocker_dispatch(pg_url: str, tmp_path: Path) -> None:
    with open_store(pg_url, timeout_s=0.7) as plain:
        assert isinstance(plain, PostgresStore) and plain.timeout_s == 0.7
        assert _password(pg_url) not in repr(plain)
    alias = pg_url.replace("postgresql://", "postgres://") + "?timeout=0.2"
    with open_store(alias, timeout_s=0.7) as overridden:
        assert isinstance(overridden, PostgresStore) and overridden.timeout_s == 0.2
        overridden.ping()
    assert isinstance(store_blocker(pg_url), PgStoreBlocker)
    assert isinstance(store_blocker(f"sqlite://{tmp_path / 'p.sqlite'}"), StoreBlocker)
    with pytest.raises(
        ConfigError, match="unsupported store URL scheme 'mysql'; supported: sqlite, postgresql"
    ):
        open_store("mysql://db/pool")


# -- outages --------------------------------------------------------------------------------------------


def _assert_unavailable(call: Callable[[], object], within: float, *hints: str) -> str:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        call()
    assert time.monotonic() - started < within
    text = str(err.value)
    assert text.startswith("3005: data store unavailable: postgresql ") and "\n" not in text
    for hint in hints:
        assert hint in text
    return text


def test_wrong_password_is_unavailable_and_not_echoed(pg_url: str) -> None:
    password = _password(pg_url)
    wrong = pg_url.replace(password, SECRET)
    text = _assert_unavailable(lambda: PostgresStore(wrong), 5, "password authentication failed")
    assert SECRET not in text and password not in text


@pytest.mark.timeout(30)
def test_nothing_listening_is_unavailable_at_once() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://pool:{SECRET}@127.0.0.1:{port}/pp"
    text = _assert_unavailable(lambda: PostgresStore(url, timeout_s=TIMEOUT_S), 2, f"127.0.0.1:{port}/pp")
    assert "refused" in text.lower() and SECRET not in text


@pytest.mark.timeout(30)
def test_a_server_that_never_answers_times_out() -> None:
    """Connecting waits libpq's connect_timeout (2 s at least), not for ever."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"postgresql://pool@127.0.0.1:{silent.getsockname()[1]}/pp"
        _assert_unavailable(lambda: PostgresStore(url, timeout_s=TIMEOUT_S), 5, "timeout")


@pytest.mark.timeout(60)
def test_server_restart_the_same_store_recovers_by_itself(
    pg_server: PgServer, store: PostgresStore, other_store: PostgresStore
) -> None:
    if pg_server.external:
        pytest.skip("cannot stop the server named by PHONEPROV_TEST_PG_URL")
    store.add_user(ALICE, "h", 5, AT)
    store.publish(cert("{d}", "A" * 40))
    assert other_store.get_user(ALICE.sip_uri) == ALICE  # leaves an idle pooled connection
    with pg_server.stopped():
        _assert_unavailable(lambda: store.get_user(ALICE.sip_uri), 3)
        _assert_unavailable(lambda: store.publish(cert("{d}", "B" * 40)), 3)
    assert store.get_user(ALICE.sip_uri) == ALICE
    store.publish(cert("{d}", "B" * 40))
    # other_store was idle throughout: its pooled connection died unseen, and checkout must notice.
    assert [c.thumbprint for c in other_store.certificates(ALICE.sip_uri)] == ["B" * 40]


def test_publish_is_atomic_when_the_connection_dies_mid_transaction(
    pg_url: str, store: PostgresStore
) -> None:
    store.add_user(ALICE, "h", 5, AT)
    store.publish(cert("{d}", "A" * 40))
    with _raw(pg_url) as admin:
        admin.execute(
            "CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$"
        )
        admin.execute("CREATE TRIGGER die BEFORE INSERT ON certificates FOR EACH ROW EXECUTE FUNCTION die()")
        # publish has already deleted the device's old row when its connection is killed.
        _assert_unavailable(lambda: store.publish(cert("{d}", "B" * 40)), 5, "terminating connection")
        admin.execute("DROP TRIGGER die ON certificates")
    assert [c.thumbprint for c in store.certificates(ALICE.sip_uri)] == ["A" * 40]
    store.publish(cert("{d}", "B" * 40))
    assert [c.thumbprint for c in store.certificates(ALICE.sip_uri)] == ["B" * 40]


def test_blocked_publish_fails_after_the_lock_timeout(pg_url: str, store: PostgresStore) -> None:
    store.add_user(ALICE, "h", 5, AT)
    with PgStoreBlocker(pg_url) as blocker:
        assert blocker.held and blocker.start() is blocker
        started = time.monotonic()
        _assert_unavailable(lambda: store.publish(cert("{d}", "A" * 40)), 3, "lock timeout")
        assert time.monotonic() - started >= TIMEOUT_S * 0.8
        with PostgresStore(pg_url, timeout_s=TIMEOUT_S) as again:
            assert again.get_user(ALICE.sip_uri) == ALICE  # opening a migrated store needs no write
        with pytest.raises(StoreUnavailable, match="blocker cannot lock"):
            PgStoreBlocker(pg_url, timeout_s=0.1).start()
    assert not blocker.held
    blocker.stop()  # stopping twice is harmless
    store.publish(cert("{d}", "A" * 40))


def test_closed_store_says_so(store: PostgresStore) -> None:
    store.close()
    _assert_unavailable(store.ping, 1, "store is closed")


# -- several nodes --------------------------------------------------------------------------------------


def test_two_nodes_see_each_others_writes(store: PostgresStore, other_store: PostgresStore) -> None:
    store.add_user(ALICE, "h", 5, AT)
    assert other_store.get_user(ALICE.sip_uri) == ALICE
    other_store.publish(cert("{d}", "A" * 40))
    assert store.certificate("A" * 40) == cert("{d}", "A" * 40)
    store.register(Registration(ALICE.sip_uri, "<sip:a@192.0.2.1>", "A" * 40, "fe1", AT, AT + LOCK_FOR))
    assert [r.node for r in other_store.registrations(ALICE.sip_uri, AT)] == ["fe1"]
    with pytest.raises(PoolError) as err:
        other_store.add_user(ALICE, "h", 5, AT)
    assert err.value.code == "USER_EXISTS"


def _wait_for_lock_waiters(admin: psycopg.Connection[TupleRow], count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'phoneprov' AND wait_event_type = 'Lock'"
        ).fetchone()
        if row is not None and row[0] >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"{count} store transactions never queued for a lock")


def test_concurrent_failures_from_two_nodes_lose_no_update(pg_url: str) -> None:
    """Two nodes record the last two failures before the limit at the same moment: exactly one locks.

    A transaction holding the user's PIN row makes both wait mid-flight; a store that counted failures
    before taking that row would let both count the same total and neither would lock.
    """
    limit = 5
    with PostgresStore(pg_url, timeout_s=5.0) as one, PostgresStore(pg_url, timeout_s=5.0) as two:
        one.add_user(ALICE, "h", 5, AT)
        for i in range(limit - 2):
            fail_at = AT + timedelta(seconds=i)
            one.record_pin_failure(ALICE.sip_uri, fail_at, WINDOW, limit, LOCK_FOR, 1000)
        results: list[bool] = []

        def record(node: Store, second: int) -> None:
            at = AT + timedelta(seconds=second)
            rec = node.record_pin_failure(ALICE.sip_uri, at, WINDOW, limit, LOCK_FOR, 1000)
            results.append(rec.locked_until is not None)

        with _raw(pg_url) as admin:
            admin.execute("BEGIN")
            admin.execute("SELECT 1 FROM pins FOR UPDATE")
            threads = [threading.Thread(target=record, args=(n, 10 + i)) for i, n in enumerate((one, two))]
            for t in threads:
                t.start()
            _wait_for_lock_waiters(admin, 2)
            admin.execute("COMMIT")
            for t in threads:
                t.join()
        rec = one.pin_record(ALICE.sip_uri)
    assert sorted(results) == [False, True]
    assert rec is not None and len(rec.failures) == limit and rec.global_failures == limit


def test_concurrent_publish_for_one_device_from_two_nodes(pg_url: str) -> None:
    """Both publishes succeed, one after the other: the device ends with exactly one certificate."""
    with PostgresStore(pg_url, timeout_s=5.0) as one, PostgresStore(pg_url, timeout_s=5.0) as two:
        one.add_user(ALICE, "h", 5, AT)
        errors: list[BaseException] = []

        def publish(node: Store, thumb: str) -> None:
            try:
                node.publish(cert("{same-device}", thumb))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        with _raw(pg_url) as admin:
            admin.execute("BEGIN")
            admin.execute("SELECT 1 FROM users FOR UPDATE")
            threads = [
                threading.Thread(target=publish, args=(n, c * 40)) for n, c in ((one, "A"), (two, "B"))
            ]
            for t in threads:
                t.start()
            _wait_for_lock_waiters(admin, 2)
            admin.execute("COMMIT")
            for t in threads:
                t.join()
        assert errors == [] and len(one.certificates(ALICE.sip_uri)) == 1


def test_migration_runs_once_when_nodes_start_together(pg_url: str) -> None:
    barrier = threading.Barrier(4)
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            opened.append(PostgresStore(pg_url, timeout_s=5.0))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for node in opened:
        node.close()
    assert errors == [] and len(opened) == 4
    with _raw(pg_url) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_newer_schema_is_refused(pg_url: str, store: PostgresStore) -> None:
    with _raw(pg_url) as raw:
        raw.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(ConfigError, match="schema version 99") as err:
        PostgresStore(pg_url)
    assert _password(pg_url) not in str(err.value)


# -- connections ----------------------------------------------------------------------------------------


def test_pool_is_bounded_and_discards_broken_connections(pg_url: str) -> None:
    target = pg_target(pg_url)
    pool = ConnectionPool(target.connector(TIMEOUT_S), 2, TIMEOUT_S, target.display)
    with pool.connection() as first, pool.connection() as second:
        assert first is not second
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="all 2 connections busy"), pool.connection():
            pass  # pragma: no cover
        assert TIMEOUT_S * 0.8 <= time.monotonic() - started < TIMEOUT_S + 1
        second.close()
    assert pool.idle == 1  # the closed one was dropped, not handed out again
    with pool.connection() as again, pool.connection() as fresh:
        assert again is first and not fresh.closed
    pool.close()
    with pytest.raises(StoreUnavailable, match="store is closed"), pool.connection():
        pass  # pragma: no cover


def test_many_threads_share_a_small_pool(pg_url: str) -> None:
    with PostgresStore(f"{pg_url}?pool_size=3", timeout_s=5.0) as small:
        small.add_user(ALICE, "h", 5, AT)
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(5):
                    small.publish(cert(f"{{dev-{n}-{i}}}", f"{n:02d}{i:02d}" + "0" * 36))
                    assert small.get_user(ALICE.sip_uri) == ALICE
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and len(small.certificates(ALICE.sip_uri)) == 40
        with _raw(pg_url) as raw:
            count = raw.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'phoneprov'"
            ).fetchone()
        assert count is not None and count[0] <= 3


# -- same behaviour as SQLite ---------------------------------------------------------------------------


def test_times_are_utc_and_naive_ones_refused(store: PostgresStore) -> None:
    plus_two = timezone(timedelta(hours=2))
    store.add_user(ALICE, "h", 5, AT.astimezone(plus_two))
    rec = store.pin_record(ALICE.sip_uri)
    assert rec is not None and rec.set_at == AT and rec.set_at.tzinfo is UTC
    with pytest.raises(ValueError, match="naive"):
        store.add_user(BOB, "h", 5, AT.replace(tzinfo=None))
    assert store.get_user(BOB.sip_uri) is None
    store.publish(cert("{d}", "A" * 40, at=AT.replace(microsecond=123456)))
    got = store.certificate("A" * 40)
    assert got is not None and got.published_at == AT.replace(microsecond=123456)
    assert got.not_after.tzinfo is UTC


def _script(node: Store) -> list[object]:
    """The same calls on any backend; the answers must be identical."""
    node.add_user(ALICE, "h", 5, AT)
    node.add_user(replace(BOB, sip_uri="sip:Zed@lab.test", line_uri="tel:+14255551219;ext=1"), "h", 4, AT)
    node.add_user(replace(BOB, sip_uri="sip:bob@lab.test", line_uri="tel:+14255551219;ext=2"), "h", 4, AT)
    for contact in ("<sip:alice@192.0.2.9>", "<sip:Bob@192.0.2.9>", "<sip:-x@192.0.2.9>", "<sip:B@1>"):
        node.register(Registration(ALICE.sip_uri, contact, "A" * 40, "fe1", AT, AT + LOCK_FOR))
    for thumb in ("b" * 40, "A" * 40, "1" * 40):
        node.publish(cert("{d-" + thumb[0] + "}", thumb))
    for minute in range(4):
        node.record_pin_failure(ALICE.sip_uri, AT + timedelta(minutes=minute * 20), WINDOW, 2, LOCK_FOR, 3)
    return [
        [u.sip_uri for u in node.find_users("+14255551219")],
        [r.contact for r in node.registrations(ALICE.sip_uri, AT)],
        [c.as_row() for c in node.certificates(ALICE.sip_uri)],
        node.pin_record(ALICE.sip_uri),
    ]


def test_answers_match_sqlite_whatever_the_database_collation(pg_server: PgServer, tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "s.sqlite") as lite:
        expected = _script(lite)
    try:
        name = pg_server.create_database(locale_provider="icu", icu_locale="en-US")
    except psycopg.Error as exc:  # pragma: no cover - servers built without ICU
        pytest.skip(f"no ICU collation on this server: {exc}")
    try:
        with PostgresStore(pg_server.url(name)) as pg:
            assert _script(pg) == expected
    finally:
        pg_server.drop_database(name)
