"""`phoneprov test-clientauth` (≈ Test-CsClientAuth) against a real lab pool on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tests.e2e.conftest import ALICE, Lab
from tools.cli import main
from tools.pool.pinpolicy import hash_pin
from tools.pool.store import store_blocker

pytestmark = pytest.mark.timeout(60)
PASSWORD = "lab-password-1"


def clientauth(lab: Lab, tmp_path: Path, credential: str, *extra: str) -> list[str]:
    roots = tmp_path / "clientauth-roots"
    roots.mkdir(exist_ok=True)
    (roots / "lab.pem").write_bytes(lab.node.ca.root.public_bytes(Encoding.PEM))
    ports = lab.node.ports
    return [
        "test-clientauth",
        "--user-sip-address",
        ALICE,
        "--credential",
        credential,
        "--target-uri",
        lab.node.certprov_url,
        "--registrar-port",
        str(ports.sip),
        "--anon-port",
        str(ports.http),
        "--resolve",
        f"{lab.node.cfg.fqdn}=127.0.0.1",
        "--roots-dir",
        str(roots),
        *extra,
    ]


def test_success_registers_with_a_throwaway_key(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.node.store.set_password(ALICE, hash_pin(PASSWORD))
    before = len(lab.node.store.certificates(ALICE))
    code = main(clientauth(lab, tmp_path, f"alice@lab.test:{PASSWORD}", "--json"))
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["Result"] == "Success" and doc["Error"] == "" and doc["Diagnosis"] is None
    assert doc["TargetFqdn"] == "pool.lab.test"
    assert [s["stage"] for s in doc["stages"]] == [
        "ROOT_CHAIN",
        "WEB_TICKET",
        "CERT_REQUEST",
        "CERT_PUBLISH",
        "REGISTER",
    ]
    assert len(lab.node.store.certificates(ALICE)) == before + 1  # published for a new device id
    assert lab.node.store.registrations(ALICE, lab.clock.now()) == []  # and it unregistered afterwards


def test_wrong_password_fails_at_web_ticket_with_exit_1(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.node.store.set_password(ALICE, hash_pin(PASSWORD))
    code = main(clientauth(lab, tmp_path, "alice@lab.test:nope"))
    out = capsys.readouterr().out
    assert code == 1
    assert "Result     : Failure" in out and "WEB_TICKET CREDENTIAL" in out
    assert "nope" not in out


def test_unhealthy_registrar_is_named(lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab.node.store.set_password(ALICE, hash_pin(PASSWORD))
    lab.node.registrar.unhealthy = True
    code = main(clientauth(lab, tmp_path, f"alice@lab.test:{PASSWORD}", "--json"))
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["Diagnosis"]["stage"] == "REGISTER" and doc["Diagnosis"]["code"] == "4105"


def test_data_store_down_says_could_not_download(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.node.store.set_password(ALICE, hash_pin(PASSWORD))
    with store_blocker(lab.node.cfg.store):
        code = main(clientauth(lab, tmp_path, f"alice@lab.test:{PASSWORD}", "--json"))
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["Error"].startswith("Could not download a CS Certificate for the given user.")
    assert doc["Diagnosis"]["code"] == "3005"
