"""`phoneprov pool user …` against a real store — SQLite and PostgreSQL alike: the administrator's view of PINs."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tools.cli import main
from tools.pool.pinpolicy import verify_pin
from tools.pool.store import open_store

ALICE = "sip:alice@lab.test"
PIN = "80613"


@pytest.fixture(params=["sqlite", "postgresql"])
def pool_toml(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    url = (
        f"sqlite:///{tmp_path / 'store.sqlite'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    path = tmp_path / "pool.toml"
    path.write_text(f'[pool]\nstate_dir = "{tmp_path / "pool"}"\n[store]\nurl = "{url}"\ntimeout_s = 2.0\n')
    return path


def user(
    pool_toml: Path,
    *args: str,
    stdin: str = "",
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(["pool", "user", *args, "--config", str(pool_toml)])
    out, err = capsys.readouterr()
    return code, out, err


def store_url(pool_toml: Path) -> str:
    return pool_toml.read_text().split('url = "')[1].split('"')[0]


def test_add_list_set_pin_unlock(
    pool_toml: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(*args: str, stdin: str = "") -> tuple[int, str, str]:
        return user(pool_toml, *args, stdin=stdin, capsys=capsys, monkeypatch=monkeypatch)

    assert (
        run("add", "--sip", ALICE, "--line", "tel:+14255550123;ext=123", "--name", "Alice", stdin=PIN + "\n")[
            0
        ]
        == 0
    )
    code, out, _ = run("list", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["sip"] for r in rows] == [ALICE] and rows[0]["pin_locked"] is False
    assert PIN not in out  # neither the PIN nor its hash is ever listed
    with open_store(store_url(pool_toml)) as store:
        record = store.pin_record(ALICE)
        assert record is not None and verify_pin(PIN, record.pin_hash) and PIN not in record.pin_hash
        now = datetime.now(UTC)
        for _ in range(3):  # the administrator's view of a phone typing wrong PINs
            store.record_pin_failure(ALICE, now, timedelta(minutes=30), 3, timedelta(hours=1), 25)
    code, out, _ = run("list")
    assert code == 0 and "yes" in out.splitlines()[1]  # locked
    assert run("unlock", "--sip", ALICE)[1] == f"PIN unlocked for {ALICE}\n"
    assert json.loads(run("list", "--json")[1])[0]["pin_locked"] is False
    assert run("set-pin", "--sip", ALICE, stdin="59417\n")[0] == 0
    with open_store(store_url(pool_toml)) as store:
        record = store.pin_record(ALICE)
        assert (
            record is not None
            and verify_pin("59417", record.pin_hash)
            and not verify_pin(PIN, record.pin_hash)
        )


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("set-pin", "--sip", ALICE), "1111\n", "PIN"),  # the policy: too short / trivial
        (("set-pin", "--sip", "sip:nobody@lab.test"), "59417\n", "no user"),
        (("unlock", "--sip", "sip:nobody@lab.test"), "", "no user"),
        (("set-password", "--sip", "sip:nobody@lab.test"), "secret\n", "no user"),
        (("set-pin", "--sip", ALICE), "", "no PIN on stdin"),
        (("add", "--sip", ALICE, "--line", "tel:+14255550123;ext=123"), "59417\n", "already exists"),
    ],
)
def test_refusals_are_one_line(
    pool_toml: Path,
    args: tuple[str, ...],
    stdin: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user(
        pool_toml,
        "add",
        "--sip",
        ALICE,
        "--line",
        "tel:+14255550123;ext=123",
        stdin=PIN,
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    before = open_store(store_url(pool_toml))
    try:
        record = before.pin_record(ALICE)
    finally:
        before.close()
    code, _, err = user(pool_toml, *args, stdin=stdin, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert stdin.strip() == "" or stdin.strip() not in err
    with open_store(store_url(pool_toml)) as store:
        assert store.pin_record(ALICE) == record  # nothing already stored is lost or changed


def test_users_can_be_added_before_the_pool_ever_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's order: `pool user add` first, on a state_dir that does not exist yet (default store)."""
    toml = tmp_path / "pool.toml"
    toml.write_text(f'[pool]\nstate_dir = "{tmp_path / "fresh" / "pool"}"\n')
    code, out, err = user(toml, "add", "--sip", ALICE, "--line", "tel:+14255550123;ext=123", stdin=PIN,
                          capsys=capsys, monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0 and out == f"added {ALICE}\n", err
    assert (tmp_path / "fresh" / "pool").stat().st_mode & 0o777 == 0o700
