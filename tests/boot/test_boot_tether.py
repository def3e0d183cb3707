"""The boot sequence with the USB tether: a phone without a PIN gets its certificate from the PC and signs in,
and a phone that signs in over the network stops serving the tether (the first certificate wins).

The PC end is a pty master; the phone opens the slave by path, as it opens /dev/ttyGS0 on a Pi."""

from __future__ import annotations

import os
import threading
import time
import tty
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from agent.clocks import SystemClock
from agent.net import Resolver
from agent.phone import StoredIdentity
from agent.stages import Stage
from boot.sequence import Boot
from boot.store import StateStore
from hal.tether.device import thumbprint
from hal.tether.host import ProvisionResult, provision
from hal.tether.link import FdLink
from tests.boot.lab import agent_config
from tests.e2e.conftest import ALICE, Lab
from tools.pool.pinpolicy import hash_pin

pytestmark = pytest.mark.timeout(90)
PASSWORD = "tether-password-1"


@pytest.fixture
def cable() -> Iterator[tuple[FdLink, str]]:
    """(the PC's end, the path the phone opens); the slave stays open so the PC sees no early hang-up."""
    master, slave = os.openpty()
    tty.setraw(slave)
    pc = FdLink(master, "pc-end")
    try:
        yield pc, os.ttyname(slave)
    finally:
        pc.close()
        os.close(slave)


def _until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _run_in_thread(boot: Boot) -> threading.Thread:
    until = SystemClock().now() + timedelta(seconds=60)
    t = threading.Thread(target=boot.run, kwargs={"until": until}, daemon=True)
    t.start()
    return t


def _stop(boot: Boot, t: threading.Thread) -> None:
    boot.stopping.set()
    t.join(10)
    assert not t.is_alive()
    if boot.tether is not None:
        boot.tether.stop()
    if boot.session is not None:
        boot.session.close()


def _provision(lab: Lab, pc: FdLink) -> ProvisionResult:
    return provision(
        pc,
        lab.node.certprov_url,
        ALICE,
        ("alice@lab.test", PASSWORD),
        lab.trust(),
        Resolver({lab.node.cfg.fqdn: "127.0.0.1"}),
        lab.node.ports.http,
        10.0,
    )


def test_a_phone_without_a_pin_signs_in_with_the_certificate_from_the_tether(
    lab: Lab, tmp_path: Path, cable: tuple[FdLink, str]
) -> None:
    lab.node.store.set_password(ALICE, hash_pin(PASSWORD))
    pc, path = cable
    cfg = agent_config(lab, tmp_path / "state", pin=False, tether={"port": path, "phone_serial": "PI-7"})
    assert cfg.tether_only
    boot = Boot(cfg)
    t = _run_in_thread(boot)
    try:
        # the network path fails at WEB_TICKET without asking the pool, and the phone waits for the cable
        assert _until(lambda: boot.status.snapshot().get("last_error") is not None, 20)
        assert boot.status.snapshot()["last_error"]["code"] == "NO_PIN"
        result = _provision(lab, pc)
        assert result.ok, result.diagnosis
        assert result.phone_serial == "PI-7"
        assert _until(lambda: boot.session is not None, 20), boot.status.snapshot()
        identity = StateStore(tmp_path / "state").load_identity()
        assert identity is not None and thumbprint(identity.certificate) == result.thumbprint
        stages = {s["stage"]: s["result"] for s in boot.status.snapshot()["stages"]}
        assert stages[Stage.CERT_REQUEST.value] == "skipped" and stages[Stage.SIGNED_IN.value] == "ok"
        assert lab.node.store.registrations(ALICE, lab.clock.now())
        record = lab.node.store.pin_record(ALICE)
        assert (
            record is not None and not record.failures and record.global_failures == 0
        )  # no empty PIN ever reached the pool
        assert _until(lambda: not boot.tether.running, 5)  # type: ignore[union-attr]
    finally:
        _stop(boot, t)


def test_network_sign_in_first_stops_the_tether_and_a_late_certificate_is_refused(
    lab: Lab, tmp_path: Path, cable: tuple[FdLink, str]
) -> None:
    _, path = cable
    cfg = agent_config(lab, tmp_path / "state", tether={"port": path})
    assert not cfg.tether_only
    boot = Boot(cfg)
    assert boot.identity.wanted()  # nothing stored yet: the tether serves from the start
    t = _run_in_thread(boot)
    try:
        assert _until(lambda: boot.session is not None, 30), boot.status.snapshot()
        assert not boot.identity.wanted()
        assert _until(lambda: not boot.tether.running, 5)  # type: ignore[union-attr]
        stored = StateStore(tmp_path / "state").load_identity()
        assert stored is not None
        with pytest.raises(RuntimeError, match="already has a valid certificate"):
            boot.identity.install_from_tether(
                StoredIdentity(stored.key, stored.certificate, stored.intermediates)
            )
    finally:
        _stop(boot, t)


def test_a_missing_gadget_port_is_retried_not_fatal(
    lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = agent_config(lab, tmp_path / "state", pin=False, tether={"port": str(tmp_path / "ttyGS0")})
    boot = Boot(cfg)
    assert boot.tether is not None
    boot.tether.reopen_s = 0.05
    boot.tether.start()
    try:
        assert _until(lambda: "cannot open" in caplog.text, 5)
        time.sleep(0.3)
        assert boot.tether.running and caplog.text.count("cannot open") == 1  # said once, tried again quietly
    finally:
        boot.tether.stop()
    assert not boot.tether.running
