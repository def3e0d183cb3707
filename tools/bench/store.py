"""The data store on the sign-in path: what our Store costs per sign-in against the bare driver doing the same
statements, for SQLite always and for PostgreSQL when ``PHONEPROV_BENCH_PG_URL`` names a database to use.

One "sign-in" is what the pool asks of its store for a phone: find the user by number, read the PIN record,
publish the certificate (one transaction), look the certificate up again for REGISTER, record the binding.
The peer runs the equivalent statements on the same engine with no contract logic: the ratio is our overhead.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tools.bench.timing import per_call_us, ratio
from tools.pool.store import open_store
from tools.pool.store.contract import PublishedCert, Registration, Store, User

PG_ENV = "PHONEPROV_BENCH_PG_URL"
ROUNDS = 200
AT = datetime(2026, 1, 1, tzinfo=UTC)


def _sign_in(store: Store, n: list[int]) -> Callable[[], None]:
    def one() -> None:
        n[0] += 1
        thumb = f"{n[0]:040X}"
        assert store.find_users("+14255550123")
        assert store.pin_record("sip:alice@lab.test") is not None
        store.publish(
            PublishedCert(
                "sip:alice@lab.test", "{" + str(uuid.uuid4()) + "}", thumb, f"{n[0]:x}", AT,
                AT + timedelta(days=180), AT, b"\x30\x03\x02\x01\x00",
            )
        )  # fmt: skip
        assert store.certificate(thumb) is not None
        store.register(
            Registration(
                "sip:alice@lab.test", f"<sip:phone{n[0]}@192.0.2.9;transport=tls>", thumb, "fe1", AT,
                AT + timedelta(minutes=10),
            )
        )  # fmt: skip

    return one


def _raw_sqlite(path: Path) -> Callable[[], None]:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # as ours: a power cut must not lose a published certificate
    conn.executescript(
        "CREATE TABLE u (k TEXT PRIMARY KEY, num TEXT); CREATE TABLE p (k TEXT PRIMARY KEY, h TEXT);"
        "CREATE TABLE c (t TEXT PRIMARY KEY, k TEXT, d TEXT, der BLOB);"
        "CREATE TABLE r (k TEXT, contact TEXT, t TEXT, PRIMARY KEY (k, contact));"
        "INSERT INTO u VALUES ('alice@lab.test', '14255550123'); INSERT INTO p VALUES ('alice@lab.test', 'h');"
    )
    n = [0]

    def one() -> None:
        n[0] += 1
        t = f"{n[0]:040X}"
        conn.execute("SELECT k FROM u WHERE num = ?", ("14255550123",)).fetchall()
        conn.execute("SELECT h FROM p WHERE k = ?", ("alice@lab.test",)).fetchone()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM c WHERE k = ? AND d = ?", ("alice@lab.test", "d"))
        conn.execute("INSERT INTO c VALUES (?, ?, ?, ?)", (t, "alice@lab.test", str(n[0]), b"\x30"))
        conn.execute("COMMIT")
        conn.execute("SELECT der FROM c WHERE t = ?", (t,)).fetchone()
        conn.execute("INSERT OR REPLACE INTO r VALUES (?, ?, ?)", ("alice@lab.test", f"c{n[0]}", t))

    return one


def _measure(url: str) -> float:
    with open_store(url) as store:
        store.add_user(User("sip:alice@lab.test", "tel:+14255550123;ext=123", "Alice"), "h", 5, AT)
        return per_call_us(_sign_in(store, [0]), ROUNDS, rounds=3)


def run() -> list[str]:
    lines = [f"Data store work per sign-in ({ROUNDS} sign-ins × 3 rounds, median µs; peer = bare driver)"]
    with tempfile.TemporaryDirectory() as tmp:
        ours = _measure(f"sqlite:///{Path(tmp) / 'ours.sqlite'}")
        peer = per_call_us(_raw_sqlite(Path(tmp) / "raw.sqlite"), ROUNDS, rounds=3)
    lines.append(
        f"  SQLite      ours {ours:8.0f} µs   bare sqlite3 {peer:8.0f} µs   ratio {ratio(ours, peer)}"
    )
    url = os.environ.get(PG_ENV)
    if url:
        lines.append(
            f"  PostgreSQL  ours {_measure(url):8.0f} µs   (vs SQLite above: one more network hop per call)"
        )
    else:
        lines.append(f"  PostgreSQL  skipped: set {PG_ENV} to an empty database to include it")
    return lines
