"""The `phoneprov` command as users and scripts meet it: JSON shape, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.cli import main

pytestmark = pytest.mark.timeout(90)
STAGES = [
    "DHCP_INFORM",
    "TIME",
    "ROOT_CHAIN",
    "WEB_TICKET",
    "CERT_REQUEST",
    "CERT_PUBLISH",
    "REGISTER",
    "SIGNED_IN",
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_json_is_the_documented_document(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "demo", "--json", "--workdir", str(tmp_path))
    doc = json.loads(out)
    assert code == 0 and doc["result"] == "ok" and doc["diagnosis"] is None
    assert [s["stage"] for s in doc["stages"]] == STAGES
    assert all(set(s) == {"stage", "result", "code", "detail", "ms"} for s in doc["stages"])
    assert set(doc["certificate"]) == {"subject", "serial", "not_before", "not_after", "thumbprint"}
    assert doc["certificate"]["subject"] == "CN=alice@lab.test"
    assert doc["published"]["thumbprint"] == doc["certificate"]["thumbprint"]
    assert doc["published"]["sip_uri"] == "sip:alice@lab.test"
    assert Path(doc["pool"]["logs"], "provisioning.log").exists()


def test_demo_fault_datastore_diagnoses_3005_and_recovers(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--fault", "datastore", "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["result"] == "failed" and doc["certificate"] is None and doc["published"] is None
    assert (doc["diagnosis"]["stage"], doc["diagnosis"]["code"]) == ("CERT_PUBLISH", "3005")
    assert doc["diagnosis_correct"] is True
    assert doc["recovery"]["result"] == "ok" and doc["recovery"]["published"] is not None


def test_demo_rig_power_cycles_the_phone_back_to_signed_in(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--rig", "--json")
    doc = json.loads(out)
    assert code == 0, doc
    assert doc["cycle"]["signed_in_after_s"] is not None


def test_demo_fault_chain_names_the_missing_issuer(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--fault", "chain")
    assert code == 0
    assert "CHAIN_INCOMPLETE" in out and "missing issuer CN=Communications Server" in out
    assert "diagnosis matches the injected fault" in out


def test_demo_fault_registrar_diagnoses_4105_and_recovers(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--fault", "registrar", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["diagnosis_correct"] is True
    assert (doc["diagnosis"]["stage"], doc["diagnosis"]["code"]) == ("REGISTER", "4105")
    assert doc["published"] is not None and doc["registration"] is None
    assert doc["recovery"]["registration"]["sip_uri"] == "sip:alice@lab.test"
    assert doc["recovery"]["stages"][-1] == {
        **doc["recovery"]["stages"][-1],
        "stage": "SIGNED_IN",
        "result": "ok",
    }


@pytest.mark.parametrize(
    "argv",
    [[], ["demo", "--fault", "bogus"], ["nope"], ["certs"], ["pool", "serve"]],
)
def test_bad_arguments_are_one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    _, err = capsys.readouterr()
    assert exc.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "error:" in err


@pytest.mark.parametrize(
    "toml",
    [
        "this is not toml",
        "[pool]\nfqdn = 'x'\n",  # no state_dir
        "[pool]\nstate_dir = '.'\n[ports]\nhttps = 'high'\n",
        "[pool]\nstate_dir = '.'\n[wat]\n",
        "[pool]\nstate_dir = '.'\n[pin]\nmin_length = 99\n",
    ],
)
def test_bad_pool_config_is_one_line(toml: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "pool.toml"
    cfg.write_text(toml)
    code, _, err = run(capsys, "pool", "serve", "--config", str(cfg))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and str(cfg) in err


def test_add_root_refuses_a_non_certificate_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    code, _, err = run(capsys, "certs", "add-root", str(junk), "--roots-dir", str(tmp_path / "roots"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "junk.pem" in err


def test_console_script_help() -> None:
    exe = Path(sys.executable).with_name("phoneprov")
    out = subprocess.run([str(exe), "demo", "--help"], capture_output=True, text=True, timeout=30, check=True)
    assert "--fault" in out.stdout and "--json" in out.stdout
