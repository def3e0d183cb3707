"""The boot sequence against a real lab pool: resume, renewal, retries, staying signed in."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from agent.clocks import SystemClock
from boot.sdnotify import Notifier
from boot.sequence import Boot
from boot.store import StateStore
from tests.boot.lab import agent_config
from tests.e2e.conftest import ALICE, Lab, start_lab
from tools.pool.ca import CertPolicy, thumbprint
from tools.pool.store import store_blocker

pytestmark = pytest.mark.timeout(120)


class FastClock(SystemClock):
    """Real time plus whatever the code under test 'slept': timers fire without waiting."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def now(self) -> datetime:
        return super().now() + self.ahead

    def sleep(self, seconds: float) -> None:
        self.ahead += timedelta(seconds=seconds)


def stages(run) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {r.stage.value: r.result for r in run.results}


def test_cold_boot_then_resume_goes_straight_to_register(lab: Lab, tmp_path: Path) -> None:
    cfg = agent_config(lab, tmp_path / "state")
    first = Boot(cfg).attempt()
    assert first.ok, first.diagnosis
    first.session.close()  # type: ignore[union-attr]
    store = StateStore(tmp_path / "state")
    identity = store.load_identity()
    assert identity is not None and identity.certificate == first.certificate
    device = store.device_id()
    again = Boot(cfg).attempt()
    assert again.ok, again.diagnosis
    again.session.close()  # type: ignore[union-attr]
    assert stages(again)["CERT_REQUEST"] == "skipped" and stages(again)["REGISTER"] == "ok"
    assert StateStore(tmp_path / "state").device_id() == device
    assert len(lab.node.store.certificates(ALICE)) == 1


def test_mismatched_key_and_certificate_reprovision(lab: Lab, tmp_path: Path) -> None:
    cfg = agent_config(lab, tmp_path / "state")
    first = Boot(cfg).attempt()
    first.session.close()  # type: ignore[union-attr]
    from agent.enroll import generate_key

    StateStore(tmp_path / "state").save_key(generate_key())  # a key that is not the certificate's
    again = Boot(cfg).attempt()
    assert again.ok and stages(again)["CERT_REQUEST"] == "ok"
    again.session.close()  # type: ignore[union-attr]


def test_stays_signed_in_and_reregisters_on_time(lab: Lab, tmp_path: Path) -> None:
    clock = FastClock()
    boot = Boot(agent_config(lab, tmp_path / "state"), clock=clock)
    until = clock.now() + timedelta(minutes=35)
    code = boot.run(until=until)
    try:
        assert code == 0 and boot.session is not None
        assert clock.now() >= until
        assert boot.status.snapshot()["state"] == "signed-in"
        reg = boot.session.registered
        assert reg.registered_at > clock.now() - timedelta(minutes=10)  # refreshed, not the first binding
    finally:
        boot.session.close()  # type: ignore[union-attr]


def test_transient_failure_is_retried_then_signs_in(lab: Lab, tmp_path: Path) -> None:
    clock = FastClock()
    boot = Boot(agent_config(lab, tmp_path / "state"), clock=clock)
    blocker = store_blocker(lab.node.cfg.store)
    blocker.start()
    first = boot.attempt()
    assert first.diagnosis is not None and first.diagnosis.code == "3005"
    decision = boot._decide(first, 0, 0.0)
    assert decision.action == "retry" and 0 <= decision.after_s <= 0.05
    blocker.stop()
    code = boot.run(until=clock.now() + timedelta(seconds=5), max_attempts=3)
    assert code == 0
    boot.session.close()  # type: ignore[union-attr]


def test_refused_pin_is_not_guessed_again_until_the_pin_changes(lab: Lab, tmp_path: Path) -> None:
    good = agent_config(lab, tmp_path / "state")
    wrong = replace(good, phone=replace(good.phone, pin="86420"))
    clock = FastClock()
    configs = [wrong] * 30 + [good] * 1000  # the operator fixes the PIN after half an hour
    boot = Boot(wrong, clock=clock, reload=lambda: configs.pop(0))
    code = boot.run(until=clock.now() + timedelta(hours=2))
    try:
        assert code == 0 and boot.status.snapshot()["state"] == "signed-in"
        record = lab.node.store.pin_record(ALICE)
        assert (
            record is not None and len(record.failures) == 0
        )  # success reset it; only one wrong try was made
        log = (lab.logs / "provisioning.log").read_text()
        assert log.count("code=2001") == 1
    finally:
        boot.session.close()  # type: ignore[union-attr]


def test_renewal_replaces_the_certificate_before_dropping_the_registration(tmp_path: Path) -> None:
    lab = start_lab(tmp_path, cert_policy=CertPolicy(default_validity_hours=8))  # short-lived certificates
    try:
        cfg = replace(agent_config(lab, tmp_path / "state"), renewal_margin_hours=3.0)
        clock = FastClock()
        boot = Boot(cfg, clock=clock)
        first = boot.attempt()
        assert first.ok and first.certificate is not None
        boot._signed_in(first)
        old_session = boot.session
        boot._stay(old_session, clock.now() + timedelta(hours=6))  # type: ignore[arg-type]
        assert boot.session is not None and boot.session is not old_session
        stored = StateStore(tmp_path / "state").load_identity()
        assert stored is not None and stored.certificate != first.certificate
        rows = lab.node.store.certificates(ALICE)
        assert rows and all(r.der != first.certificate.public_bytes(Encoding.DER) for r in rows)
        boot.session.close()
    finally:
        lab.node.stop()


def test_exhausted_budget_asks_the_rig_to_power_cycle(lab: Lab, tmp_path: Path) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    from tools.bootcmd import _rig_hook

    posts: list[str] = []

    class Rig(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the name http.server dispatches to
            posts.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    rig = ThreadingHTTPServer(("127.0.0.1", 0), Rig)
    Thread(target=rig.serve_forever, daemon=True).start()
    try:
        cfg = agent_config(lab, tmp_path / "state", max_attempts=2)
        clock = FastClock()
        hook = _rig_hook(f"http://127.0.0.1:{rig.server_address[1]}/rig/cycle/phone-7")
        boot = Boot(cfg, clock=clock, power_cycle=hook)
        with store_blocker(lab.node.cfg.store):
            boot.run(until=clock.now() + timedelta(minutes=5), max_attempts=2)
    finally:
        rig.shutdown()
        rig.server_close()
    assert posts == ["/rig/cycle/phone-7"]
    assert boot.status.snapshot()["state"] == "power_cycle"


class RecordingNotifier(Notifier):
    """sd_notify as systemd would see it: every datagram's assignments, in order."""

    def __init__(self) -> None:
        super().__init__(None, watchdog_usec=20_000_000)
        self.sent: list[str] = []

    def notify(self, *assignments: str) -> bool:
        self.sent.extend(assignments)
        return True


def test_systemd_sees_ready_at_once_then_progress_and_watchdog(lab: Lab, tmp_path: Path) -> None:
    clock, notifier = FastClock(), RecordingNotifier()
    boot = Boot(agent_config(lab, tmp_path / "state"), clock=clock, notifier=notifier)
    assert boot.run(until=clock.now() + timedelta(minutes=2)) == 0
    boot.session.close()  # type: ignore[union-attr]
    assert (
        notifier.sent[0] == "READY=1"
    )  # before any stage: retrying for hours must not look like a hung start
    statuses = [a for a in notifier.sent if a.startswith("STATUS=")]
    assert any("SIGNED_IN ok" in a for a in statuses) and any("signed-in" in a for a in statuses)
    first_stage = next(i for i, a in enumerate(notifier.sent) if a.startswith("STATUS=DHCP_INFORM"))
    assert "WATCHDOG=1" in notifier.sent[first_stage:]  # stage progress is a heartbeat


def test_stop_request_is_honoured_at_a_safe_point(lab: Lab, tmp_path: Path) -> None:
    clock = FastClock()
    boot = Boot(agent_config(lab, tmp_path / "state"), clock=clock)
    boot.stopping.set()
    assert (
        boot.run(until=clock.now() + timedelta(hours=1)) == 1
    )  # stopped before signing in: nothing half-done
    assert StateStore(tmp_path / "state").load_identity() is None


def test_a_stored_certificate_the_pool_no_longer_knows_is_replaced(lab: Lab, tmp_path: Path) -> None:
    cfg = agent_config(lab, tmp_path / "state")
    first = Boot(cfg).attempt()
    assert first.ok and first.certificate is not None
    first.session.close()  # type: ignore[union-attr]
    lab.node.store.revoke(thumbprint(first.certificate))  # e.g. an admin revoked it, or a renewal was cut
    clock = FastClock()
    boot = Boot(cfg, clock=clock)
    assert boot.run(until=clock.now() + timedelta(minutes=1), max_attempts=3) == 0
    try:
        stored = StateStore(tmp_path / "state").load_identity()
        assert stored is not None and stored.certificate != first.certificate
    finally:
        boot.session.close()  # type: ignore[union-attr]
