"""The provisioning log reads back into records: round trips, old lines, hostile fields, arbitrary bytes."""

from __future__ import annotations

import gzip
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tools.pool.admin import LogQuery, log_files, select_lines
from tools.pool.provlog import (
    ProvisioningLog,
    ProvLine,
    ProvLogError,
    ProvRecord,
    format_line,
    parse_line,
    user_key,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
OLD_LINE = (
    "2024-05-01T12:00:00.123Z node=fe1 user=alice@lab.test device=%7BABC%7D stage=CERT_PUBLISH "
    'result=failed code=3005 request=r-1 detail="data store unavailable (database is locked)"'
)

texts = st.text(st.characters(codec="utf-8"), max_size=40)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.sampled_from([UTC])
) | st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-720, 720)),
)


def _token(text: str) -> str:
    return text or "-"


@given(
    times,
    texts,
    texts,
    texts,
    texts,
    texts,
    texts,
    texts,
    texts,
    st.none() | st.integers(0, 9_999_999_999),
)
def test_format_then_parse_round_trips(
    at: datetime,
    node: str,
    user: str,
    device: str,
    stage: str,
    result: str,
    code: str,
    request: str,
    detail: str,
    ms: int | None,
) -> None:
    line = ProvLine(at, node, user, device, stage, result, code, request, detail, ms)
    text = format_line(line)
    assert "\n" not in text and "\r" not in text
    back = parse_line(text)
    assert back.time == at.replace(microsecond=at.microsecond // 1000 * 1000)
    assert back.time.tzinfo is not None
    assert (back.node, back.user, back.device, back.stage) == tuple(
        _token(v) for v in (node, user, device, stage)
    )
    assert (back.result, back.code, back.request) == tuple(_token(v) for v in (result, code, request))
    assert back.detail == " ".join(detail.split())  # the detail's whitespace is folded to single spaces
    assert back.duration_ms == ms
    assert format_line(back) == text


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_the_typed_error(raw: bytes) -> None:
    try:
        parse_line(raw)
    except ProvLogError as exc:
        assert "\n" not in exc.detail


@given(st.text(max_size=300))
def test_arbitrary_text_parse_or_raise_the_typed_error(text: str) -> None:
    try:
        line = parse_line(OLD_LINE[:30] + text)
    except ProvLogError as exc:
        assert "\n" not in exc.detail
    else:
        assert format_line(line).startswith(OLD_LINE[:24])


def test_a_line_from_before_the_ms_field_still_parses() -> None:
    line = parse_line(OLD_LINE + "\n")
    assert line == ProvLine(
        T0,
        "fe1",
        "alice@lab.test",
        "{ABC}",
        "CERT_PUBLISH",
        "failed",
        "3005",
        "r-1",
        "data store unavailable (database is locked)",
        None,
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "no timestamp"),
        (OLD_LINE.replace(" stage=", " stag="), "no stage= field"),
        (OLD_LINE.replace("user=alice", "user=al ice"), "characters the log never writes"),
        (OLD_LINE + "\nforged", "line break"),
        (OLD_LINE.replace('detail="', 'detail="\\x'), "does not decode"),
        (OLD_LINE.replace("device=%7BABC%7D", "device=%FF"), "does not decode"),
        (OLD_LINE.replace("2024-05-01T12", "2024-13-01T12"), "does not decode"),
        ("x" * 70_000, "longer than"),
    ],
)
def test_malformed_lines_name_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(ProvLogError, match=why):
        parse_line(text)


def test_hostile_fields_cannot_forge_a_line_or_a_field(tmp_path: Path) -> None:
    plog = ProvisioningLog(tmp_path / "p.log", "fe1", lambda: T0)
    evil = 'x result=ok code=200\n2024-05-01T12:00:00.000Z node=fe9 user=bob detail="forged"'
    plog.record(ProvRecord(evil, evil, "WEB_TICKET", "failed", "2001", evil, evil))
    lines = (tmp_path / "p.log").read_text().splitlines()
    assert len(lines) == 1 and lines[0].partition(" detail=")[0].count(" result=") == 1
    back = parse_line(lines[0])
    assert back.user == evil and back.request == evil and back.node == "fe1"
    assert back.result == "failed" and back.detail == " ".join(evil.split())


def _broken(line: ProvLine) -> None:
    raise RuntimeError(f"observer bug on {line.request}")


def test_observers_see_exactly_the_line_in_the_file(tmp_path: Path) -> None:
    seen: list[ProvLine] = []
    plog = ProvisioningLog(tmp_path / "p.log", "fe1", lambda: T0.astimezone(timezone(timedelta(hours=2))))
    plog.observe(seen.append)
    plog.observe(_broken)  # a broken observer is contained
    plog.record(ProvRecord("sip:alice@lab.test", "", "CERT_PUBLISH", "ok", "", "r-2", "published", 42))
    (written,) = (tmp_path / "p.log").read_text().splitlines()
    assert written.startswith("2024-05-01T12:00:00.123Z ")  # written in UTC whatever the clock's zone
    assert seen == [parse_line(written)]
    assert seen[0].device == "-" and seen[0].code == "-" and seen[0].duration_ms == 42


def test_user_key_ignores_case_and_scheme() -> None:
    assert user_key(" SIP:Alice@Lab.Test ") == user_key("alice@lab.test") == "alice@lab.test"


def _write(path: Path, lines: list[ProvLine], mtime: float) -> None:
    data = "".join(format_line(line) + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    os.utime(path, (mtime, mtime))


def _line(minute: int, user: str = "alice@lab.test") -> ProvLine:
    return ProvLine(
        T0 + timedelta(minutes=minute), "fe1", user, "-", "WEB_TICKET", "ok", "-", f"r{minute}", ""
    )


def test_rotated_files_are_read_oldest_first_and_filtered(tmp_path: Path) -> None:
    current = tmp_path / "provisioning.log"
    _write(tmp_path / "provisioning.log.2.gz", [_line(0), _line(1, "bob@lab.test")], 1000)
    _write(tmp_path / "provisioning.log.1", [_line(2)], 2000)
    _write(current, [_line(3), _line(4, "BOB@lab.test")], 3000)
    (tmp_path / "provisioning.log.bak").write_text("not a rotation\n")
    with current.open("a") as fh:
        fh.write("garbage\n" + "y" * 70_000 + "\n")
    assert [p.name for p in log_files(current)] == [
        "provisioning.log.2.gz",
        "provisioning.log.1",
        "provisioning.log",
    ]
    everything = select_lines(current, LogQuery())
    assert [parse_line(t).request for t in everything.lines] == ["r0", "r1", "r2", "r3", "r4"]
    assert everything.unreadable == 2 and everything.omitted == 0
    bob = select_lines(current, LogQuery(since=T0 + timedelta(minutes=1), user="sip:Bob@lab.test"))
    assert [parse_line(t).request for t in bob.lines] == ["r1", "r4"]


def test_the_response_budget_keeps_the_newest_lines(tmp_path: Path) -> None:
    current = tmp_path / "provisioning.log"
    _write(current, [_line(m) for m in range(50)], 1000)
    size = len(format_line(_line(40))) + 1  # every line of r10..r49 has this size
    picked = select_lines(current, LogQuery(), budget=size * 10)
    assert [parse_line(t).request for t in picked.lines] == [f"r{m}" for m in range(40, 50)]
    assert picked.omitted == 40
