"""Power-cut torture: the boot sequence is SIGKILLed at random instants — inside the store's writes and at
random times — hundreds of times, and after every restart the state must load, key and certificate must
match, and the phone must still get to SIGNED_IN. Set PHONEPROV_POWERCUTS for more (the bench does)."""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from boot.sequence import Boot
from boot.store import FAULT_POINTS, StateStore
from tests.boot.lab import agent_config
from tests.e2e.conftest import Lab

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
CUTS = int(os.environ.get("PHONEPROV_POWERCUTS", "200"))


def _boot_in_child(cfg, state: Path, point: str | None, delay_s: float | None) -> int:  # type: ignore[no-untyped-def]
    """Fork; the child boots and is killed at ``point`` or after ``delay_s``; returns how it ended."""
    pid = os.fork()
    if pid == 0:  # the phone
        code = 4
        try:

            def cut(at: str) -> None:
                if at == point:
                    os.kill(os.getpid(), signal.SIGKILL)

            if delay_s is not None:
                threading.Timer(delay_s, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
            run = Boot(cfg, store=StateStore(state, fault=cut)).attempt()
            code = 0 if run.ok else 3
            if run.session is not None:
                run.session.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _check_state(state: Path) -> str:
    """The store loads without raising; an identity, if any, is a matching key and certificate."""
    store = StateStore(state)
    identity = store.load_identity()
    if identity is None:
        return "no identity"
    spki = PublicFormat.SubjectPublicKeyInfo
    assert identity.key.public_key().public_bytes(
        Encoding.DER, spki
    ) == identity.certificate.public_key().public_bytes(Encoding.DER, spki)
    return "identity"


def test_power_cut_at_any_instant_never_corrupts_and_always_recovers(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = agent_config(lab, state)
    rng = random.Random(20261126)
    endings: Counter[str] = Counter()
    states: Counter[str] = Counter()
    for i in range(CUTS):
        if rng.random() < 0.5:
            StateStore(state).clear_identity()  # make this boot provision, so the key/cert writes happen
        if rng.random() < 0.5:
            point, delay = rng.choice(FAULT_POINTS), None
        else:
            point, delay = None, rng.uniform(0.0, 0.4)
        ended = _boot_in_child(cfg, state, point, delay)
        endings["killed" if ended == -signal.SIGKILL else "signed in" if ended == 0 else f"exit {ended}"] += 1
        states[_check_state(state)] += 1
        if i % 10 == 9:  # a restart with no power cut must get all the way to SIGNED_IN
            assert _boot_in_child(cfg, state, None, None) == 0
    assert _boot_in_child(cfg, state, None, None) == 0
    print(
        f"\npower cuts: {CUTS} boots, endings {dict(endings)}, state after each {dict(states)}",
        file=sys.stderr,
    )
    assert endings["killed"] > CUTS // 4 and not any(k.startswith("exit") for k in endings)
