"""`phoneprov test-bootstrap` (≈ Test-CsPhoneBootstrap) against a real lab pool on loopback: the healthy pool,
the three field failures (the store down — sporadic, then persistent —, the registrar, the chain without a path)
and bad arguments. Exit codes and the Diagnosis text are what lab scripts rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tests.e2e.conftest import ALICE, ALICE_NUMBER, ALICE_PIN, Lab, start_lab
from tools.bootstrap import BootstrapTarget, test_bootstrap
from tools.cli import main
from tools.pool.store import store_blocker

pytestmark = pytest.mark.timeout(60)


def argv(lab: Lab, tmp_path: Path, *extra: str, discover: bool = True) -> list[str]:
    roots = tmp_path / "bootstrap-roots"
    roots.mkdir(exist_ok=True)
    (roots / "lab.pem").write_bytes(lab.node.ca.root.public_bytes(Encoding.PEM))
    ports = lab.node.ports
    where = (
        ["--dhcp-server", f"127.0.0.1:{ports.dhcp}"] if discover else ["--target-uri", lab.node.certprov_url]
    )
    return [
        "test-bootstrap",
        "--phone-or-ext",
        ALICE_NUMBER,
        "--pin",
        ALICE_PIN,
        *where,
        "--registrar-port",
        str(ports.sip),
        "--anon-port",
        str(ports.http),
        "--ntp-port",
        str(ports.sntp),
        "--resolve",
        f"{lab.node.cfg.fqdn}=127.0.0.1",
        "--roots-dir",
        str(roots),
        "--retry-after",
        "0.2",
        *extra,
    ]


def target(lab: Lab) -> BootstrapTarget:
    ports = lab.node.ports
    return BootstrapTarget(
        ALICE_NUMBER,
        ALICE_PIN,
        dhcp_server=("127.0.0.1", ports.dhcp),
        registrar_port=ports.sip,
        anon_http_port=ports.http,
        ntp_port=ports.sntp,
        resolve={lab.node.cfg.fqdn: "127.0.0.1"},
        retry_after_s=0.0,
    )


def test_healthy_pool_discovered_by_dhcp(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = len(lab.node.store.certificates(ALICE))
    assert main(argv(lab, tmp_path, "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["Result"] == "Success" and doc["Error"] == "" and doc["Diagnosis"] == ""
    assert doc["TargetUri"] == lab.node.certprov_url and doc["TargetFqdn"] == lab.node.cfg.fqdn
    stages = {s["stage"]: s["result"] for s in doc["attempts"][0]["stages"]}
    assert set(stages.values()) == {"ok"} and "SIGNED_IN" in stages
    assert len(lab.node.store.certificates(ALICE)) == before + 1  # published, like a phone's
    assert lab.node.store.registrations(ALICE, lab.clock.now()) == []  # and the binding removed again


def test_verbose_shows_every_message_but_no_secret(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv(lab, tmp_path, "--verbose")) == 0
    out = capsys.readouterr().out
    for stage in ("DHCP_INFORM", "TIME", "ROOT_CHAIN", "WEB_TICKET", "CERT_REQUEST", "REGISTER", "SIGNED_IN"):
        assert f"  {stage}" in out, stage
    assert "-> 127.0.0.1:" in out and "DHCPINFORM" in out and "DHCPACK" in out
    assert "POST /WebTicket" in out and "HTTP 200" in out
    assert "REGISTER sip:" in out and "401 " in out and "200 OK" in out
    assert ALICE_PIN not in out.replace(ALICE_NUMBER, "")  # the number may contain the digits; the PIN never
    assert "BEGIN" not in out and "gssapi-data=" not in out
    assert out.rstrip().splitlines()[-4].startswith("Result     : Success")


def test_targets_given_skip_dhcp(lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv(lab, tmp_path, "--json", discover=False)) == 0
    doc = json.loads(capsys.readouterr().out)
    first = doc["attempts"][0]["stages"][0]
    assert first["stage"] == "DHCP_INFORM" and first["detail"].startswith("config")


def test_store_down_throughout_is_persistent(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with store_blocker(lab.node.cfg.store):
        code = main(argv(lab, tmp_path, "--json"))
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["Result"] == "Failure" and doc["verdict"] == "persistent"
    assert len(doc["attempts"]) == 2
    assert doc["Diagnosis"].startswith("CERT_PUBLISH 3005: ")
    assert "Persistent: it failed twice, 0.2 s apart; power-cycling will not help." in doc["Diagnosis"]
    assert (
        "Remedy: Restore the home pool's data store" in doc["Diagnosis"]
        and "Power-cycle" not in doc["Diagnosis"]
    )


def test_store_back_for_the_retry_is_sporadic(lab: Lab) -> None:
    blocker = store_blocker(lab.node.cfg.store).start()
    trust = lab.trust()
    try:
        result = test_bootstrap(target(lab), trust, sleep=lambda _s: blocker.stop())
    finally:
        blocker.stop()
    assert result.verdict == "sporadic" and result.exit_code == 3
    doc = result.as_dict()
    assert doc["Result"] == "Success" and doc["Error"].startswith("first attempt: ")
    assert (
        doc["Diagnosis"].startswith("CERT_PUBLISH 3005: ") and "Sporadic: it failed once" in doc["Diagnosis"]
    )
    assert [r.ok for r in result.runs] == [False, True]


def test_unhealthy_registrar_names_the_registrar(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.node.registrar.unhealthy = True
    code = main(argv(lab, tmp_path, "--json"))
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["verdict"] == "failure" and len(doc["attempts"]) == 1  # not a store problem
    assert doc["Diagnosis"].startswith("REGISTER 4105: The registrar is unhealthy")
    assert "Restore the registrar service" in doc["Diagnosis"]


def test_chain_without_a_path_names_the_missing_issuer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = start_lab(tmp_path, incomplete_chain=True)
    try:
        code = main(argv(lab, tmp_path, "--json"))
    finally:
        lab.node.stop()
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["Diagnosis"].startswith("ROOT_CHAIN CHAIN_INCOMPLETE: ")
    assert "no path to a shipped root" in doc["Error"] and "Communications Server" in doc["Error"]
    assert "add the lab root" in doc["Diagnosis"]


def test_an_untrusted_pool_is_not_bypassed(lab: Lab) -> None:
    result = test_bootstrap(target(lab), lab.trust(with_lab_root=False))  # Mozilla's roots only
    assert result.exit_code == 1 and result.run.diagnosis is not None
    assert result.run.diagnosis.stage.value == "ROOT_CHAIN"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dhcp-server", "pool.lab.test"], "--dhcp-server takes ADDR[:PORT]"),
        (["--resolve", "nonsense", "--target-fqdn", "pool.lab.test"], "--resolve takes NAME=ADDR"),
        (["--dhcp-server", "127.0.0.1:70000"], "a port 1..65535"),
        (["--target-uri", "http://pool.lab.test/x"], "--target-uri must be an https:// URL"),
        (["--target-fqdn", "bad!name"], "--target-fqdn must be a DNS name"),
        (["--target-fqdn", "pool.lab.test", "--retry-after", "-1"], "--retry-after must be 0..3600"),
    ],
)
def test_bad_arguments_are_one_line(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["test-bootstrap", "--phone-or-ext", "123", "--pin", "12345", *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err


def test_no_pin_and_no_target_are_usage_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PHONEPROV_PIN", raising=False)
    assert main(["test-bootstrap", "--phone-or-ext", "123", "--target-fqdn", "pool.lab.test"]) == 2
    assert "give the PIN" in capsys.readouterr().err
    assert main(["test-bootstrap", "--phone-or-ext", "123", "--pin", "12345"]) == 2
    assert "--dhcp-server or --interface" in capsys.readouterr().err
