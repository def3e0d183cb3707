"""The retry policy: the documented classification, full-jitter bounds, and when retrying stops."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.stages import Stage
from boot.retry import NETWORK_STAGES, RULES, Backoff, Decision, RetryPolicy, classify

# The classification the issue asks for, written out independently of boot.retry.RULES.
TRANSIENT = [
    "NO_ANSWER", "TIMEOUT", "UNREACHABLE", "CONNECTION_LOST", "HTTP", "TLS", "ROOT_CHAIN_DOWNLOAD",
    "3005", "3099", "2099", "4104", "4105", "3001",
]  # fmt: skip
PERMANENT = [
    "2001", "2002", "2003", "2004", "2005", "2006", "CHAIN_INCOMPLETE", "CHAIN_INVALID", "CHAIN_REFUSED",
    "INSECURE_URL", "3002", "3003", "3004", "3006", "4101", "4102", "4103", "BadCertificate", "NO_OPTION_43",
]  # fmt: skip


def _backoff(seed: int = 7, **policy: float) -> Backoff:
    return Backoff(RetryPolicy(**policy), random.Random(seed))  # type: ignore[arg-type]


@pytest.mark.parametrize("stage", list(Stage))
def test_documented_codes_classify_the_same_in_every_stage(stage: Stage) -> None:
    assert [c for c in TRANSIENT if classify(stage, c) != "transient"] == []
    assert [c for c in PERMANENT if classify(stage, c) != "permanent"] == []


def test_every_table_entry_has_a_kind_and_a_reason() -> None:
    for code, (kind, why) in RULES.items():
        assert kind in ("transient", "permanent") and why and "\n" not in why, code
    assert set(TRANSIENT + PERMANENT) <= set(RULES)


def test_unknown_codes_default_by_stage() -> None:
    for stage in Stage:
        expected = "transient" if stage in NETWORK_STAGES else "permanent"
        assert classify(stage, "SOMETHING_NEW") == expected, stage
    assert classify(Stage.REGISTER, "4199") == "transient"
    assert classify(Stage.WEB_TICKET, "2042") == "permanent"  # never risk a PIN lockout on a guess
    assert {Stage.NET, Stage.DHCP_INFORM, Stage.TIME, Stage.REGISTER} == NETWORK_STAGES


def test_ceiling_doubles_then_caps() -> None:
    b = _backoff(base_s=2.0, cap_s=300.0)
    assert [b.ceiling(n) for n in range(10)] == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert b.ceiling(10**6) == 300.0  # no overflow for absurd attempt numbers
    with pytest.raises(ValueError):
        b.ceiling(-1)


def _schedule(seed: int) -> list[float]:
    b = _backoff(seed=seed)
    return [b.next_delay(n) for n in range(12)]


def test_seeded_schedule_is_full_jitter_and_reproducible() -> None:
    schedule = _schedule(42)
    assert schedule == _schedule(42) and schedule != _schedule(43)
    assert all(0.0 <= d <= min(300.0, 2.0 * 2**n) for n, d in enumerate(schedule))


def test_jitter_spreads_over_the_whole_window() -> None:
    """Full jitter, not "cap plus a little": capped waits are uniform over [0, cap]."""
    b = _backoff(seed=1)
    samples = [b.next_delay(30) for _ in range(4000)]
    assert max(samples) <= 300.0 and min(samples) >= 0.0
    assert min(samples) < 10.0 and max(samples) > 290.0
    assert statistics.mean(samples) == pytest.approx(150.0, rel=0.05)


@given(
    attempt=st.integers(0, 5000),
    base=st.floats(0.001, 100.0),
    extra=st.floats(0.0, 10_000.0),
    seed=st.integers(0, 2**32),
)
def test_delay_is_always_within_bounds(attempt: int, base: float, extra: float, seed: int) -> None:
    b = _backoff(seed=seed, base_s=base, cap_s=base + extra)
    delay = b.next_delay(attempt)
    assert 0.0 <= delay <= b.ceiling(attempt) <= base + extra


def test_transient_failures_retry_within_the_budget() -> None:
    b = _backoff()
    d = b.decide(Stage.CERT_PUBLISH, "3005", attempt=0, elapsed_s=5.0, rig_available=False)
    assert d.action == "retry" and 0.0 <= d.after_s <= 2.0
    assert d.reason.startswith("CERT_PUBLISH 3005: transient") and "data store" in d.reason
    late = b.decide(Stage.REGISTER, "TIMEOUT", attempt=12, elapsed_s=1790.0, rig_available=True)
    assert late.action == "retry" and late.after_s <= 10.0  # clipped: the next try starts within budget


@pytest.mark.parametrize(("rig", "action"), [(True, "power_cycle"), (False, "give_up")])
def test_exhausted_budget_or_attempts_end_in_a_power_cycle_or_giving_up(rig: bool, action: str) -> None:
    b = _backoff()
    by_time = b.decide(Stage.REGISTER, "4105", attempt=3, elapsed_s=1800.0, rig_available=rig)
    by_count = b.decide(Stage.DHCP_INFORM, "NO_ANSWER", attempt=19, elapsed_s=60.0, rig_available=rig)
    assert by_time.action == by_count.action == action
    assert by_time.reason.startswith("REGISTER 4105: transient") and "1800 s" in by_time.reason
    assert by_count.reason.startswith("DHCP_INFORM NO_ANSWER") and "20 attempts" in by_count.reason
    assert b.decide(Stage.REGISTER, "4105", 18, 60.0, rig).action == "retry"


def test_permanent_failures_wait_for_the_operator_whatever_the_budget() -> None:
    b = _backoff()
    for attempt, elapsed in ((0, 0.0), (50, 99_999.0)):
        d = b.decide(Stage.WEB_TICKET, "2001", attempt, elapsed, rig_available=True)
        assert d == Decision("wait_operator", d.reason)
        assert d.reason.startswith("WEB_TICKET 2001: permanent") and "PIN" in d.reason


def test_a_whole_outage_runs_the_schedule_out_then_power_cycles() -> None:
    """Simulated time: each attempt costs 10 s, then the decided wait; stops within budget and attempts."""
    policy = RetryPolicy(base_s=2.0, cap_s=60.0, budget_s=600.0, max_attempts=20)
    b = Backoff(policy, random.Random(5))
    elapsed, attempt, waits = 0.0, 0, []
    while True:
        elapsed += 10.0
        d = b.decide(Stage.REGISTER, "UNREACHABLE", attempt, elapsed, rig_available=True)
        if d.action != "retry":
            break
        assert 0.0 <= d.after_s <= min(60.0, 2.0 * 2**attempt)
        waits.append(d.after_s)
        elapsed += d.after_s
        attempt += 1
    assert d.action == "power_cycle"
    assert attempt + 1 <= policy.max_attempts and elapsed < policy.budget_s + 10.0 + 1e-9
    assert len(set(waits)) == len(waits)  # jittered, not a fixed ladder


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(base_s=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_s=10, cap_s=5)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        _backoff().decide(Stage.TIME, "NO_ANSWER", -1, 0.0, False)


def test_decision_as_dict() -> None:
    d = _backoff().decide(Stage.TIME, "NO_ANSWER", 0, 0.0, False)
    assert d.as_dict() == {"action": "retry", "reason": d.reason, "after_s": round(d.after_s, 3)}
