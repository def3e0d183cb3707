"""Power-cut torture: the boot sequence is SIGKILLed at random instants — inside the store's writes (the n-th
time a write point is reached) and at random times, during first sign-ins and during renewals — until it has
been killed CUTS times (200 by default, PHONEPROV_POWERCUTS for more: the bench does). After every kill the
state must load with a matching key and certificate, a renewal must leave an identity (the old or the new),
only the killed write's temp file may be left; every boot that was not killed must end SIGNED_IN; every 10th
kill is followed by a clean boot that must sign in; the device id never changes."""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from boot.config import AgentConfig
from boot.sequence import Boot
from boot.store import DEVICE_ID_FILE, FAULT_POINTS, TAGS, StateStore
from tests.boot.lab import agent_config
from tests.e2e.conftest import Lab, start_lab
from tools.pool.ca import CertPolicy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
CUTS = int(os.environ.get("PHONEPROV_POWERCUTS", "200"))
MAX_BOOTS = 4 * CUTS
FILES = {tag: name for name, tag in TAGS.items()}
KILLED = -signal.SIGKILL
MARGIN_H = 3.0  # renewal margin; the lab issues 8 h certificates


@pytest.fixture
def short_lab(tmp_path: Path) -> Iterator[Lab]:
    """A lab pool with short-lived certificates, so that its clock can make one due for renewal."""
    lab = start_lab(tmp_path, cert_policy=CertPolicy(default_validity_hours=8))
    try:
        yield lab
    finally:
        lab.node.stop()


def _boot_in_child(cfg: AgentConfig, state: Path, point: str | None, nth: int, delay_s: float | None,
                   renew: bool = False) -> int:  # fmt: skip
    """Fork; the child boots (or renews) and is killed the ``nth`` time it reaches ``point``, or after
    ``delay_s``; returns 0 (signed in), another exit code, or -SIGKILL."""
    pid = os.fork()
    if pid == 0:  # the phone
        code = 4
        try:
            # The parent's pool threads may have held a stdio buffer's lock at the fork (a log line in
            # flight): the child must never touch inherited streams, or it waits on that lock for ever.
            logging.disable(logging.CRITICAL)
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 — the child ends with os._exit
            reached = Counter[str]()

            def cut(at: str) -> None:
                reached[at] += 1
                if at == point and reached[at] == nth:
                    os.kill(os.getpid(), signal.SIGKILL)

            if delay_s is not None:
                threading.Timer(delay_s, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
            run = Boot(cfg, store=StateStore(state, fault=cut)).attempt(renew=renew)
            code = 0 if run.ok else 3
            if run.session is not None:
                run.session.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _identity(state: Path) -> bool:
    """The store loads without raising; an identity, if any, is a matching key and certificate."""
    identity = StateStore(state).load_identity()
    if identity is None:
        return False
    spki = Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    key, cert = identity.key.public_key(), identity.certificate.public_key()
    assert key.public_bytes(*spki) == cert.public_bytes(*spki)
    return True


def _make_due(lab: Lab, state: Path) -> None:
    """Run the pool's clock (the phone's too, after TIME) on until the stored certificate is within its
    renewal margin, still valid: as when the phone starts a renewal. It stays due after a restart."""
    identity = StateStore(state).load_identity()
    assert identity is not None
    due = identity.certificate.not_valid_after_utc - timedelta(hours=MARGIN_H - 0.5)
    lab.clock.shift += max(timedelta(), due - lab.clock.now())


def _device_id(state: Path) -> str | None:
    path = state / DEVICE_ID_FILE
    return path.read_text().strip() if path.exists() else None


def _leftovers_after(state: Path, point: str | None, ended: int) -> tuple[str, ...]:
    """tidy() removes exactly what the killed write left: its temp file if cut before the rename, or none."""
    left = StateStore(state).tidy()
    if ended != KILLED:
        assert left == (), left
    elif point is not None:
        assert len(left) == (1 if point.endswith("before-rename") else 0), (point, left)
        assert all(name.startswith(f".{FILES[point.split(':')[0]]}.") for name in left), (point, left)
    else:
        assert len(left) <= 1, left
    assert not [p.name for p in state.iterdir() if p.name.startswith(".")]
    return left


def test_power_cut_at_any_instant_never_corrupts_and_always_recovers(short_lab: Lab, tmp_path: Path) -> None:
    lab = short_lab
    state = tmp_path / "state"
    cfg = replace(agent_config(lab, state), renewal_margin_hours=MARGIN_H)
    rng = random.Random(20261126)
    endings: Counter[str] = Counter()
    kills = boots = renewal_kills = 0
    device: str | None = None
    while kills < CUTS:
        assert boots < MAX_BOOTS, f"only {kills} power cuts in {boots} boots"
        renew = _identity(state) and rng.random() < 0.3  # a renewal while a valid identity exists
        if renew:
            _make_due(lab, state)
        elif rng.random() < 0.5:
            StateStore(state).clear_identity()  # make this boot provision, so the identity write happens
        once = ("manifest:", "device-id:") if device is not None else ()  # written on the first boot only
        point, nth, delay = None, 1, None
        if rng.random() < 0.5:
            point = rng.choice([p for p in FAULT_POINTS if not p.startswith(once)])
            nth = rng.randint(1, 8) if point.startswith("progress") else 1  # one progress write per stage
        else:
            delay = rng.uniform(0.0, 0.3)
        ended = _boot_in_child(cfg, state, point, nth, delay, renew)
        boots += 1
        what = "renewal" if renew else "boot"
        assert ended in (0, KILLED), f"{what} {boots} ended with {ended}, not signed in (0) nor killed"
        endings[f"{what} {'killed' if ended == KILLED else 'signed in'}"] += 1
        _leftovers_after(state, point, ended)
        has_identity = _identity(state)
        assert has_identity or ended == KILLED, "signed in, but no identity stored"
        assert has_identity or not renew, f"a cut during a renewal ({point or delay}) lost the identity"
        seen = _device_id(state)
        assert seen == (device or seen), f"the device id changed from {device} to {seen}"
        device = seen
        if ended == KILLED:
            kills += 1
            renewal_kills += renew
            if kills % 10 == 0:  # a restart with no power cut must get all the way to SIGNED_IN
                assert _boot_in_child(cfg, state, None, 1, None) == 0, f"no sign-in after {kills} cuts"
                boots += 1
    assert _boot_in_child(cfg, state, None, 1, None) == 0
    assert device is not None and _device_id(state) == device
    print(f"\npower cuts: {kills} kills in {boots} boots, endings {dict(endings)}", file=sys.stderr)
    assert renewal_kills >= CUTS // 20, f"only {renewal_kills} cuts during a renewal"
