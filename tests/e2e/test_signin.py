"""End to end on loopback: a real pool (UDP, HTTP, HTTPS with real TLS, SQLite) and the phone's real stages."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.clocks import SystemClock
from agent.phone import Phone, StoredIdentity
from agent.stages import Stage
from tests.e2e.conftest import ALICE, ALICE_NUMBER, ALICE_PIN, Lab, start_lab
from tools.pool.ca import thumbprint
from tools.pool.store import store_blocker

pytestmark = pytest.mark.timeout(60)


def outcome(run) -> dict[str, tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    return {r.stage.value: (r.result, r.code) for r in run.results}


def test_sign_in_publishes_and_returns_the_certificate(lab: Lab) -> None:
    run = lab.boot()
    assert run.ok, run.diagnosis
    assert [r.stage for r in run.results] == [
        Stage.DHCP_INFORM,
        Stage.TIME,
        Stage.ROOT_CHAIN,
        Stage.WEB_TICKET,
        Stage.CERT_REQUEST,
        Stage.CERT_PUBLISH,
        Stage.REGISTER,
        Stage.SIGNED_IN,
    ]
    assert all(r.result == "ok" for r in run.results)
    assert run.discovery is not None and run.discovery.source == "dhcp"
    assert run.discovery.certprov_url == lab.node.certprov_url
    cert = run.certificate
    assert cert is not None
    assert cert.subject.rfc4514_string() == "CN=alice@lab.test"
    rows = lab.node.store.certificates(ALICE)
    assert [r.thumbprint for r in rows] == [thumbprint(cert)]
    assert rows[0].der == cert.public_bytes(serialization.Encoding.DER)
    assert run.registered is not None and run.registered.aor == ALICE and run.registered.expires_s == 600
    bindings = lab.node.store.registrations(ALICE, lab.clock.now())
    assert [b.thumbprint for b in bindings] == [thumbprint(cert)]


def test_key_file_is_private(lab: Lab) -> None:
    run = lab.boot()
    assert run.ok, run.results
    key_file = lab.root / "phone-state" / "user.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_sign_in_by_extension(lab: Lab) -> None:
    run = lab.boot(lab.phone_config(username="123"))
    assert run.ok, run.diagnosis
    assert run.sip_uri == ALICE


def test_wrong_pin_is_2001_and_nothing_is_published(lab: Lab) -> None:
    run = lab.boot(lab.phone_config(pin="86420"))
    assert outcome(run)["WEB_TICKET"] == ("failed", "2001")
    assert outcome(run)["CERT_REQUEST"] == ("skipped", None)
    assert run.diagnosis is not None and run.diagnosis.code == "2001"
    assert lab.node.store.certificates(ALICE) == []


def test_lockout_after_the_policys_count_then_right_pin_is_refused(lab: Lab) -> None:
    for _ in range(3):  # PinPolicy(max_logon_attempts=3)
        assert outcome(lab.boot(lab.phone_config(pin="86420")))["WEB_TICKET"] == ("failed", "2001")
    run = lab.boot()
    assert outcome(run)["WEB_TICKET"] == ("failed", "2002")
    assert "contact the administrator" in run.diagnosis.remedy  # type: ignore[union-attr]


def test_claim_mismatch_is_2006(lab: Lab) -> None:
    run = lab.boot(lab.phone_config(sip_uri="sip:bob@lab.test"))
    assert outcome(run)["WEB_TICKET"] == ("failed", "2006")


def test_data_store_down_is_3005_with_no_certificate_then_retry_works(lab: Lab) -> None:
    with store_blocker(lab.node.cfg.store):
        run = lab.boot()
        rows_while_down = lab.node.store.certificates(ALICE)
    assert outcome(run)["CERT_REQUEST"] == ("ok", None)
    assert outcome(run)["CERT_PUBLISH"] == ("failed", "3005")
    assert run.certificate is None
    assert rows_while_down == []
    assert run.diagnosis is not None and "Power-cycle" in run.diagnosis.remedy
    log = (lab.logs / "provisioning.log").read_text()
    line = next(ln for ln in log.splitlines() if "code=3005" in ln)
    assert "data store unavailable" in line and "user=alice@lab.test" in line and "request=" in line
    assert "data store unavailable" in (lab.logs / "requests.log").read_text()
    again = lab.boot()  # the field's power-cycle
    assert again.ok, again.diagnosis
    assert len(lab.node.store.certificates(ALICE)) == 1


def test_chain_without_its_issuing_ca_names_the_missing_issuer(tmp_path: Path) -> None:
    lab = start_lab(tmp_path, incomplete_chain=True)
    try:
        run = lab.boot()
    finally:
        lab.node.stop()
    assert outcome(run)["ROOT_CHAIN"] == ("failed", "CHAIN_INCOMPLETE")
    assert "CN=Communications Server" in run.results[2].detail
    assert outcome(run)["WEB_TICKET"] == ("skipped", None)


def test_phone_checks_dates_at_its_sntp_time_not_the_system_clock(tmp_path: Path) -> None:
    """A pool two days ahead: its web certificate is not yet valid by the system clock, but it is by the
    phone's SNTP-corrected clock, which is the one a phone goes by."""
    lab = start_lab(tmp_path, shift=timedelta(days=2))
    try:
        run = lab.boot()
    finally:
        lab.node.stop()
    assert run.ok, run.diagnosis
    assert run.time_sync is not None and abs(run.time_sync.offset_s - 2 * 86400) < 5


def test_phone_without_the_lab_root_names_the_lab_root(lab: Lab) -> None:
    run = lab.boot(trust=lab.trust(with_lab_root=False))
    assert outcome(run)["ROOT_CHAIN"] == ("failed", "CHAIN_INCOMPLETE")
    assert "phoneprov Lab Root CA" in run.results[2].detail


def test_no_secret_in_any_log(
    lab: Lab, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level("DEBUG")
    lab.boot(lab.phone_config(pin="86420"))
    run = lab.boot()
    assert run.ok and run.key is not None
    key_pem = run.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    key_body = "".join(key_pem.splitlines()[1:-1])
    texts = [p.read_text() for p in lab.logs.glob("*.log")] + [caplog.text, *capsys.readouterr()]
    texts.append(repr(run))
    for text in texts:
        assert ALICE_PIN not in text and "86420" not in text
        assert key_body[:40] not in text
    assert (
        ALICE_NUMBER in (lab.logs / "provisioning.log").read_text()
        or ALICE in (lab.logs / "provisioning.log").read_text()
    )


def test_a_stored_certificate_skips_provisioning_and_registers(lab: Lab) -> None:
    first = lab.boot()
    assert first.ok and first.key is not None and first.certificate is not None and first.trust is not None
    stored = StoredIdentity(first.key, first.certificate, first.trust.intermediates)
    phone = Phone(lab.phone_config(), lab.trust(), SystemClock(), stored=stored)
    run = phone.run()
    assert run.ok, run.diagnosis
    outcome = {r.stage.value: r.result for r in run.results}
    assert [outcome[s] for s in ("ROOT_CHAIN", "WEB_TICKET", "CERT_REQUEST", "CERT_PUBLISH")] == [
        "skipped"
    ] * 4
    assert outcome["REGISTER"] == "ok" and run.certificate == first.certificate
    assert len(lab.node.store.certificates(ALICE)) == 1  # nothing new issued


def test_a_certificate_with_under_an_hour_left_is_replaced(lab: Lab) -> None:
    first = lab.boot()
    assert first.ok and first.key is not None and first.certificate is not None and first.trust is not None
    left = first.certificate.not_valid_after_utc - lab.clock.now()
    lab.clock.shift = left - timedelta(minutes=30)  # the pool (and so the phone's SNTP time) near expiry
    stored = StoredIdentity(first.key, first.certificate, first.trust.intermediates)
    run = Phone(lab.phone_config(), lab.trust(), SystemClock(), stored=stored).run()
    assert run.ok, run.diagnosis
    assert run.certificate is not None and run.certificate != first.certificate
    assert {r.stage.value: r.result for r in run.results}["CERT_PUBLISH"] == "ok"
