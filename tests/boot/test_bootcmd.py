"""`phoneprov boot --once` against a lab pool, and `phoneprov status` against the phone's status endpoint."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.stages import Stage, StageResult
from boot.status import BootStatus, StatusServer
from tests.e2e.conftest import Lab
from tools.cli import main

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _own_logging() -> Iterator[None]:
    """`phoneprov boot` configures logging as the firmware entry must; put it back for the tests after."""
    root, ours = logging.getLogger(), logging.getLogger("phoneprov")
    saved = root.handlers[:], root.level, ours.handlers[:], ours.level
    yield
    root.handlers[:], ours.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    ours.setLevel(saved[3])


def test_boot_once_signs_in(lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "lab.pem").write_bytes(lab.node.ca.root.public_bytes(Encoding.PEM))
    pin = tmp_path / "pin"
    pin.write_text("80613\n")
    pin.chmod(0o600)
    p = lab.node.ports
    toml = tmp_path / "agent.toml"
    toml.write_text(
        f'[phone]\nusername = "+14255550123"\npin_file = "{pin}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[network]\ndhcp_server = "127.0.0.1:{p.dhcp}"\nanon_http_port = {p.http}\nntp_port = {p.sntp}\n'
        f"registrar_port = {p.sip}\nntp_fallback = []\nset_system_clock = false\n"
        f'hosts = {{ "pool.lab.test" = "127.0.0.1" }}\n[trust]\nextra_roots_dirs = ["{roots}"]\n'
        f'[status]\nlisten = ""\n[log]\njson_path = "{tmp_path / "phone.jsonl"}"\n'
    )
    assert main(["boot", "--config", str(toml), "--once"]) == 0
    assert "80613" not in capsys.readouterr().err
    lines = [json.loads(line) for line in (tmp_path / "phone.jsonl").read_text().splitlines()]
    assert any("SIGNED_IN ok" in rec["msg"] for rec in lines)  # the structured log says what happened …
    assert "80613" not in (tmp_path / "phone.jsonl").read_text()  # … and never the PIN


def test_bad_agent_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('[phone]\nusername = "123"\n')
    assert main(["boot", "--config", str(toml), "--once"]) == 78
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "agent.toml" in err


def test_status_reads_the_phone(capsys: pytest.CaptureFixture[str]) -> None:
    status = BootStatus()
    status.update(state="signed-in", attempt=1)
    status.stage(StageResult(Stage.SIGNED_IN, "ok", None, "registered"))
    server = StatusServer(status, ("127.0.0.1", 0)).start()
    try:
        code = main(["status", "--url", f"http://127.0.0.1:{server.port}/status", "--json"])
    finally:
        server.stop()
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["state"] == "signed-in" and doc["stage"] == "SIGNED_IN"


def test_status_without_a_phone_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", "http://127.0.0.1:9/status"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
