"""The rig demo end to end: a real pool on loopback, a byte-exact LCUS-4 on a real pty driven by the real
driver through a real rig file, and an emulated phone powered by relay 2 that the rig power-cycles."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tools.demorig import PHONE, RigDemoOutcome, RigInfo, run_rig_demo
from tools.demorig_report import rig_demo_document, rig_demo_printer
from tools.poweredphone import PowerEdge
from tools.rig import load_rig, phone_status

pytestmark = pytest.mark.timeout(60)
Events = list[tuple[str, object]]


@pytest.fixture(scope="module")
def cycled(tmp_path_factory: pytest.TempPathFactory) -> tuple[RigDemoOutcome, Events, str]:
    """One run shared by the tests below, recorded as events and printed live, as `phoneprov demo --rig`.
    Threads it left running are recorded as an event too."""
    events: Events = []
    threads_before = set(threading.enumerate())
    out = io.StringIO()
    printer = rig_demo_printer(out)

    def on_event(kind: str, value: object) -> None:
        events.append((kind, value))
        printer(kind, value)

    outcome = run_rig_demo(tmp_path_factory.mktemp("rig-demo"), on_event, wait_s=20)
    events.append(("left running", sorted(t.name for t in set(threading.enumerate()) - threads_before)))
    return outcome, events, out.getvalue()


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_power_cycle_brings_the_phone_back_signed_in_with_a_new_boot(
    cycled: tuple[RigDemoOutcome, Events, str],
) -> None:
    outcome, events, _ = cycled
    assert outcome.error is None and outcome.exit_code == 0
    assert outcome.cycle is not None and outcome.cycle["power"] == "on" and outcome.cycle["off_s"] == 1.0
    assert outcome.signed_in_after_s is not None and 0 < outcome.signed_in_after_s < 20
    before, after = outcome.status_before, outcome.status_after
    assert before is not None and after is not None
    assert before["state"] == after["state"] == "signed-in"
    gap = _at(after["boot_started_at"]) - _at(before["boot_started_at"])
    assert gap >= timedelta(seconds=outcome.cycle["off_s"])  # a new boot, started after the off time
    edges = [(v.on, v.boot) for k, v in events if isinstance(v, PowerEdge)]
    assert edges == [(True, 1), (False, 1), (True, 2)]  # the supply saw on, the cut, on again
    first, second = outcome.boots
    assert not first.reused_identity and second.reused_identity  # after a cut the stored identity signs in
    assert first.signed_in_after_s is not None and second.signed_in_after_s is not None


def test_the_registrar_saw_a_fresh_registration_from_the_new_boot(
    cycled: tuple[RigDemoOutcome, Events, str],
) -> None:
    outcome, _, _ = cycled
    assert outcome.status_after is not None
    (old,) = outcome.registrations_before
    (new,) = outcome.registrations_after  # same contact: the new binding replaced the one the cut left behind
    assert new["sip_uri"] == "sip:alice@lab.test" and new["contact"] == old["contact"]
    assert _at(new["registered_at"]) > _at(old["registered_at"])
    assert _at(new["registered_at"]) >= _at(outcome.status_after["boot_started_at"])  # made by boot 2
    log = (Path(outcome.pool["logs"]) / "provisioning.log").read_text().splitlines()
    registers = [line for line in log if " stage=REGISTER " in line]
    # two dialogs (a new Call-ID per boot), each bound for 600 s; no unregister: a power cut says no goodbye
    assert len(registers) == 2 and all(
        "result=ok code=200" in line and "for 600 s" in line for line in registers
    )
    assert len({line.split(" request=")[1].split()[0] for line in registers}) == 2


def test_the_rig_file_is_real_and_everything_is_torn_down(cycled: tuple[RigDemoOutcome, Events, str]) -> None:
    outcome, events, _ = cycled
    assert outcome.rig_file is not None  # a kept workdir keeps the rig file
    phone = load_rig(Path(outcome.rig_file))[PHONE]
    assert (phone.spec.kind, phone.spec.channel, phone.spec.port) == ("lcus-4", 2, outcome.tty)
    assert phone.status_url == outcome.status_url
    assert phone_status(outcome.status_url, timeout_s=0.5) is None  # the phone's endpoint is gone
    assert events[-1] == ("left running", [])


def test_people_see_each_event_on_one_aligned_line_and_scripts_get_json(
    cycled: tuple[RigDemoOutcome, Events, str],
) -> None:
    outcome, _, text = cycled
    lines = text.splitlines()
    assert lines[0].startswith("pool      pool.lab.test")
    assert f"board     lcus-4 emulated on {outcome.tty} (byte-exact, real driver)" in lines[1]
    assert any(line.startswith(f"rig       {outcome.rig_file}: {PHONE} = lcus-4") for line in lines)
    assert any(line.startswith("          REGISTER      ok") for line in lines)
    assert sum(line.startswith(f"{PHONE}   power on: boot") for line in lines) == 2
    assert f"rig       {PHONE} power-cycle: off for 1 s, then on; waiting for SIGNED_IN" in lines
    assert f"rig       {PHONE} SIGNED_IN again after {outcome.signed_in_after_s:.3f} s" in lines
    assert lines[-1] == "result    ok: new boot signed in after the power-cycle"
    doc = json.loads(json.dumps(rig_demo_document(outcome)))
    assert doc["result"] == "ok" and doc["new_boot"] is True
    assert doc["board"] == {"kind": "lcus-4", "tty": outcome.tty, "channel": 2, "phone_channel": 2}
    assert doc["signed_in_after_s"] == outcome.signed_in_after_s == doc["cycle"]["signed_in_after_s"]
    assert [b["reused_identity"] for b in doc["boots"]] == [False, True]


@pytest.mark.timeout(30)
def test_a_relay_that_feeds_nothing_fails_naming_the_phone(tmp_path: Path) -> None:
    events: Events = []
    started = time.monotonic()
    outcome = run_rig_demo(tmp_path, lambda k, v: events.append((k, v)), wait_s=1.0, rig_channel=3)
    assert time.monotonic() - started < 15
    assert outcome.exit_code == 1 and outcome.channel == 3 and outcome.phone_channel == 2
    assert outcome.error == f"{PHONE} did not report SIGNED_IN within 1 s of power-on"
    assert outcome.cycle is None and outcome.boots == ()
    assert not any(isinstance(v, PowerEdge) for _, v in events)  # relay 3 switched; the phone never saw power
    assert ("switch", {"phone": PHONE, "power": "on", "knowledge": "observed"}) in events
    assert rig_demo_document(outcome)["result"] == "failed"


@pytest.mark.timeout(30)
def test_a_failure_midway_still_tears_everything_down(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    urls: list[str] = []

    def on_event(kind: str, value: object) -> None:
        if isinstance(value, RigInfo):
            urls.append(str(value.phone.status_url))
        if kind == "cycle":  # the phone is up and registered: its threads and endpoint are live now
            assert phone_status(urls[0]) is not None
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_rig_demo(tmp_path, on_event, wait_s=10)
    assert sorted(t.name for t in set(threading.enumerate()) - before) == []
    assert phone_status(urls[0], timeout_s=0.5) is None
