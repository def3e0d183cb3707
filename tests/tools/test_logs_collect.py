"""``phoneprov logs collect`` against two real nodes on loopback sharing one SQLite store, CA and token."""

from __future__ import annotations

import argparse
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.e2e.conftest import ALICE, ALICE_NUMBER, ALICE_PIN, BOB, BOB_PIN, Lab, ShiftedClock
from tools import logs
from tools.pool.ca import PoolCA
from tools.pool.config import AdminConfig, PoolConfig, Ports
from tools.pool.errors import ConfigError
from tools.pool.node import PoolNode
from tools.pool.pinpolicy import PinPolicy
from tools.pool.provlog import ProvLine, parse_line, user_key

pytestmark = pytest.mark.timeout(60)
BOB_NUMBER = "+14255550124"
TOKEN = "the-pool-admin-token-0123456789"


@dataclass
class Pool:
    root: Path
    nodes: dict[str, PoolNode]
    labs: dict[str, Lab]
    admin_ports: dict[str, int]  # fe3's too, though it is stopped

    def pool_file(self, *names: str, token_file: Path | None = None) -> Path:
        """A pool.toml listing ``names`` (state_dir of fe1: its CA root is the collector's default)."""
        nodes = "".join(
            f'[[nodes]]\nname = "{n}"\nadmin_url = "https://127.0.0.1:{self.admin_ports[n]}"\n' for n in names
        )
        text = (
            f'[pool]\nstate_dir = "fe1"\nfqdn = "pool.lab.test"\n'
            f'[admin]\ntoken_file = "{token_file or self.root / "admin.token"}"\n{nodes}'
        )
        path = self.root / f"pool-{'-'.join(names)}.toml"
        path.write_text(text)
        return path

    def logged(self, name: str) -> list[ProvLine]:
        path = self.nodes[name].cfg.state_dir / "logs" / "provisioning.log"
        return [parse_line(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    root = tmp_path_factory.mktemp("two-nodes")
    (root / "admin.token").write_text(TOKEN + "\n")
    (root / "admin.token").chmod(0o600)
    clock = ShiftedClock()
    base = PoolConfig(
        state_dir=root / "fe1",
        node="fe1",
        ports=Ports(0, 0, 0, 0, 0),
        store_url=f"sqlite:///{root / 'shared.sqlite'}",  # ONE store for both nodes
        store_timeout_s=0.5,
        pin_policy=PinPolicy(max_logon_attempts=3),
        admin=AdminConfig(token_file=root / "admin.token"),
    )
    PoolCA.load_or_create(root / "fe1" / "ca", base.fqdn, at=clock.now())
    for other in ("fe2", "fe3"):  # one pool, one CA: phones and the collector trust one root
        shutil.copytree(root / "fe1" / "ca", root / other / "ca")
    nodes: dict[str, PoolNode] = {}
    try:
        for name in ("fe1", "fe2", "fe3"):
            nodes[name] = PoolNode(replace(base, state_dir=root / name, node=name), clock).start()
        admin_ports = {name: node.ports.admin for name, node in nodes.items()}
        nodes.pop("fe3").stop()  # a node that is down when the engineer collects
        nodes["fe1"].add_user(ALICE, "tel:+14255550123;ext=123", ALICE_PIN, "Alice")
        nodes["fe1"].add_user(BOB, "tel:+14255550124;ext=124", BOB_PIN, "Bob")
        labs = {}
        for name, node in nodes.items():
            (root / f"phone-{name}").mkdir()
            labs[name] = Lab(node, clock, root / f"phone-{name}")
        pool = Pool(root, nodes, labs, admin_ports)
        assert labs["fe1"].boot().ok  # alice reaches fe1
        assert labs["fe2"].boot(labs["fe2"].phone_config(username=BOB_NUMBER, pin=BOB_PIN)).ok
        assert labs["fe2"].boot().ok  # and alice, later, fe2
        assert not labs["fe1"].boot(labs["fe1"].phone_config(pin="86420")).ok  # a wrong PIN on fe1
        yield pool
    finally:
        for node in nodes.values():
            node.stop()


def collect(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    logs.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["logs", "collect", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = logs.run(args, out, err)
    return code, out.getvalue(), err.getvalue()


def test_the_timeline_has_every_request_of_both_nodes_in_time_order(pool: Pool) -> None:
    code, out, err = collect("--pool", str(pool.pool_file("fe1", "fe2")), "--json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    expected = [("fe1", ln) for ln in pool.logged("fe1")] + [("fe2", ln) for ln in pool.logged("fe2")]
    assert len(doc["lines"]) == len(expected) >= 8
    assert sorted((e["source"], e["request"], e["stage"], e["time"]) for e in doc["lines"]) == sorted(
        (s, ln.request, ln.stage, ln.as_dict()["time"]) for s, ln in expected
    )
    times = [datetime.fromisoformat(e["time"]) for e in doc["lines"]]
    assert times == sorted(times)
    assert all(e["source"] == e["node"] for e in doc["lines"])  # each line marked with its node
    assert {e["source"] for e in doc["lines"] if e["stage"] == "REGISTER"} == {"fe1", "fe2"}
    assert [n["name"] for n in doc["nodes"] if n["ok"]] == ["fe1", "fe2"]
    published = [e for e in doc["lines"] if e["stage"] == "CERT_PUBLISH"]
    assert len(published) == 3 and all(isinstance(e["ms"], int) for e in published)


def test_text_output_is_aligned_and_marks_the_node(pool: Pool) -> None:
    code, out, _ = collect("--pool", str(pool.pool_file("fe1", "fe2")))
    header, *rows = out.splitlines()
    assert code == 0 and header.split()[:3] == ["TIME", "SOURCE", "STAGE"]
    assert len(rows) == len(pool.logged("fe1")) + len(pool.logged("fe2"))
    stage_col = header.index("STAGE")
    assert all(row[stage_col - 2] == " " and row[stage_col - 1] == " " for row in rows)
    assert {row.split()[1] for row in rows} == {"fe1", "fe2"}
    assert any("2001" in row.split() and row.split()[1] == "fe1" for row in rows)  # the wrong PIN


def test_user_and_since_select_lines(pool: Pool) -> None:
    file = str(pool.pool_file("fe1", "fe2"))
    _, out, _ = collect("--pool", file, "--json", "--user", "SIP:Alice@LAB.test", "--since", "1h")
    lines = json.loads(out)["lines"]
    assert {user_key(e["user"]) for e in lines} == {"alice@lab.test"}
    assert {e["source"] for e in lines} == {"fe1", "fe2"}  # alice reached both nodes
    _, out, _ = collect("--pool", file, "--json", "--user", "bob@lab.test")
    assert {e["source"] for e in json.loads(out)["lines"]} == {"fe2"}
    wrong_pin = [e for e in lines if e["code"] == "2001"]  # filed under alice, with the number she typed
    assert (
        len(wrong_pin) == 1
        and wrong_pin[0]["source"] == "fe1"
        and f"typed '{ALICE_NUMBER}'" in wrong_pin[0]["detail"]
    )
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    code, out, _ = collect("--pool", file, "--since", later)
    assert code == 0 and out == "no matching provisioning-log lines\n"


def test_a_stopped_node_is_named_and_the_others_still_shown(pool: Pool) -> None:
    code, out, err = collect("--pool", str(pool.pool_file("fe1", "fe3", "fe2")), "--json")
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith("phoneprov: node fe3 (https://127.0.0.1:") and "cannot fetch" in line
    doc = json.loads(out)
    assert {e["source"] for e in doc["lines"]} == {"fe1", "fe2"}
    assert [(n["name"], n["ok"]) for n in doc["nodes"]] == [("fe1", True), ("fe2", True), ("fe3", False)]


def test_a_wrong_token_or_root_names_the_node_and_why(pool: Pool, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token-of-this-pool\n")
    wrong.chmod(0o600)
    code, out, err = collect("--pool", str(pool.pool_file("fe1")), "--token-file", str(wrong))
    assert out == "no matching provisioning-log lines\n"
    assert code == 1 and "node fe1" in err and "HTTP 401" in err and "same admin token" in err
    other = PoolCA.load_or_create(tmp_path / "other-ca", "pool.lab.test", at=datetime.now(UTC))
    code, _, err = collect("--pool", str(pool.pool_file("fe2")), "--ca", str(other.state_dir / "root.pem"))
    assert code == 1 and "node fe2" in err and "TLS: certificate verify failed" in err
    wrong.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        collect("--pool", str(pool.pool_file("fe1")), "--token-file", str(wrong))


def test_since_accepts_iso_and_relative_times() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert logs.parse_since("15m", now) == now - timedelta(minutes=15)
    assert logs.parse_since("2h", now) == now - timedelta(hours=2)
    assert logs.parse_since("30s", now) == now - timedelta(seconds=30)
    assert logs.parse_since("1d", now) == now - timedelta(days=1)
    assert logs.parse_since("2024-05-01T10:00:00", now) == datetime(2024, 5, 1, 10, tzinfo=UTC)
    plus2 = logs.parse_since("2024-05-01T12:00:00+02:00", now)
    assert plus2 == datetime(2024, 5, 1, 10, tzinfo=UTC) and plus2.utcoffset() == timedelta(hours=2)
    for bad in ("yesterday", "15", "-5m", "5w", "999999999d"):
        with pytest.raises(ValueError, match="--since"):
            logs.parse_since(bad, now)


def test_the_pool_file_must_list_valid_nodes(tmp_path: Path) -> None:
    def pool_file(nodes: str, top: str = "") -> Path:
        path = tmp_path / "pool.toml"
        path.write_text(f'{top}[pool]\nstate_dir = "s"\n{nodes}')
        return path

    with pytest.raises(ConfigError, match="no \\[\\[nodes\\]\\]"):
        collect("--pool", str(pool_file("")))
    for nodes, why in [
        ('[[nodes]]\nname = "fe1"\nadmin_url = "http://fe1:8443"\n', "not https://HOST"),
        ('[[nodes]]\nname = "fe1"\nadmin_url = "https://fe1:99999"\n', "admin_url of node fe1"),
        ('[[nodes]]\nname = "fe 1"\nadmin_url = "https://fe1"\n', "node name"),
        (
            '[[nodes]]\nname = "a"\nadmin_url = "https://a"\n[[nodes]]\nname = "a"\nadmin_url = "https://b"\n',
            "unique",
        ),
        ('[[nodes]]\nname = "a"\nadmin_url = "https://a/admin"\n', "path"),
        ('[[nodes]]\nname = "a"\nadmin_url = "https://a"\ncolor = 1\n', "unknown key"),
    ]:
        with pytest.raises(ConfigError, match=why):
            collect("--pool", str(pool_file(nodes)))
    with pytest.raises(ConfigError, match=r"\[\[nodes\]\] tables"):
        collect("--pool", str(pool_file("", top="nodes = 5\n")))


def test_hostile_fields_are_escaped_for_the_terminal() -> None:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=1)))
    evil = "\x1b[2J\u202eevil\r"
    line = ProvLine(at, "fe1", evil, evil, "WEB_TICKET", "failed", "2001", evil, evil)
    out = io.StringIO()
    logs.write_text(logs.Timeline([("fe1", line)], [], []), out)
    text = out.getvalue()
    assert "\x1b" not in text and "\u202e" not in text and "\r" not in text
    assert "2024-05-01T11:00:00.000Z" in text and "\\x1b[2J" in text
