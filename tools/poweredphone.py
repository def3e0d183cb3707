"""An emulated phone whose power supply is one relay of an emulated board: the relay's state is its life.

Used by ``phoneprov demo --rig`` (tools/demorig.py) and its tests, so the real rig code — rig file, driver,
pty, ``power_cycle`` waiting on the status endpoint — can be watched bringing a phone back. While the relay
is closed the phone runs like boot/sequence.py (status document, stored identity, sign-in, staying
registered); the moment it opens the phone is gone: no unregister, no status.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.clocks import Clock, SystemClock
from agent.phone import Phone, PhoneConfig, PhoneRun, StoredIdentity
from agent.stages import AgentError, StageResult
from agent.truststore import TrustStore
from boot.status import BootStatus, StatusServer
from boot.store import Identity, StateStore
from hal.emulators.relays import PtyEmulator

RELAY_POLL_S = 0.01  # how often the supply looks at its relay; an off time must be longer than this
JOIN_S = 5.0  # bound on waiting for a phone thread at teardown (a boot in flight ends on its own timeouts)

Emit = Callable[[str, object], None]


@dataclass(frozen=True)
class PowerEdge:
    """What the phone's supply saw: the relay closed (boot ``boot`` starts) or opened (boot ``boot`` ends)."""

    on: bool
    boot: int
    boot_started_at: str | None = None


@dataclass(frozen=True)
class BootRecord:
    """One boot as the phone saw it; ``signed_in_after_s`` runs from the relay closing to SIGNED_IN."""

    number: int
    boot_started_at: str
    reused_identity: bool
    signed_in_after_s: float | None
    diagnosis: dict[str, str] | None
    cut_short: bool = False  # the power went before the sign-in finished: whatever it did is lost

    def as_dict(self) -> dict[str, Any]:
        return {
            "boot": self.number,
            "boot_started_at": self.boot_started_at,
            "reused_identity": self.reused_identity,
            "signed_in_after_s": self.signed_in_after_s,
            "diagnosis": self.diagnosis,
            "cut_short": self.cut_short,
        }


class _Life:
    """One stretch of power: its status document and endpoint, its registration, the moment power came."""

    def __init__(self, number: int, powered_at: float) -> None:
        self.number, self.powered_at = number, powered_at
        self.status = BootStatus()
        self.cut = threading.Event()
        self.server: StatusServer | None = None


class PoweredPhone:
    """An emulated phone fed by one relay of an emulated board: the relay's state is the phone's life.

    A thread watches the board's register (the model the real driver just wrote to). Relay closed → a boot:
    a fresh status document and endpoint on ``status_port``, then the sign-in with what the state store kept
    (a stored identity is reused, as after any power cut), then staying registered. Relay open → the endpoint
    stops answering and the registrar connection is dropped without an unregister: a power cut says no
    goodbye.
    """

    def __init__(
        self,
        name: str,
        board: PtyEmulator,
        channel: int,
        phone: tuple[PhoneConfig, TrustStore],
        state_dir: Path,
        status_port: int,
        emit: Emit,
        clock: Clock | None = None,
    ) -> None:
        self.name, self.board, self.channel = name, board, channel
        self.status_port, self.emit = status_port, emit
        self.cfg, self.trust = phone
        self.store = StateStore(state_dir)
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._life: _Life | None = None
        self._boots: list[BootRecord] = []
        self._count = 0
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name=f"{self.name} power supply", daemon=True)

    @property
    def boots(self) -> tuple[BootRecord, ...]:
        with self._lock:
            return tuple(self._boots)

    def __enter__(self) -> PoweredPhone:
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unplug the phone: stop watching the relay, cut the power, wait (bounded) for its threads."""
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join(timeout=JOIN_S)
        self._power_off(announce=False)
        for thread in self._threads:
            thread.join(timeout=JOIN_S)

    def _watch(self) -> None:
        while not self._stop.wait(RELAY_POLL_S):
            on = self.board.relays()[self.channel - 1]
            if on and self._life is None:
                self._power_on()
            elif not on and self._life is not None:
                self._power_off(announce=True)

    def _power_on(self) -> None:
        self._count += 1
        life = _Life(self._count, time.monotonic())
        self._life = life
        try:
            life.server = StatusServer(life.status, ("127.0.0.1", self.status_port)).start()
        except OSError as exc:  # the boot goes on; the rig just cannot see it
            self.emit(
                "error", f"{self.name} cannot serve its status on port {self.status_port}: {exc.strerror}"
            )
        self.emit("powered", PowerEdge(True, life.number, life.status.snapshot()["boot_started_at"]))
        thread = threading.Thread(target=self._live, args=(life,), name=f"{self.name} boot {life.number}")
        thread.daemon = True
        self._threads.append(thread)
        thread.start()

    def _power_off(self, announce: bool) -> None:
        life, self._life = self._life, None
        if life is None:
            return
        life.cut.set()  # the boot thread drops the registration itself: it owns the session
        if life.server is not None:
            life.server.stop()
        if announce:
            self.emit("powered", PowerEdge(False, life.number))

    def _live(self, life: _Life) -> None:
        try:
            self._boot(life)
        except Exception as exc:  # a bug or a broken disk: the phone is dead, the rig sees "failed"
            life.status.update(state="failed", last_error={"stage": "BOOT", "code": type(exc).__name__})
            self.emit("error", f"{self.name} boot {life.number} crashed: {exc}")

    def _boot(self, life: _Life) -> None:
        identity = self.store.load_identity()
        stored = (
            StoredIdentity(identity.key, identity.certificate, identity.intermediates) if identity else None
        )
        life.status.new_attempt(1)
        phone = Phone(
            replace(self.cfg, device_id=self.store.device_id()),
            self.trust,
            self.clock,
            on_stage=lambda r: self._stage(life, r),
            stored=stored,
        )
        run = phone.run(keep_signed_in=True)
        if life.cut.is_set():  # power went mid-boot: nothing of this boot survives, nothing says goodbye
            if run.session is not None:
                run.session.close()
            self._record(life, run, stored, cut_short=True)
            return
        self._persist(run, stored)
        life.status.identity(run.certificate)
        life.status.error(run.diagnosis)
        self._record(life, run, stored)
        if not run.ok or run.session is None:
            life.status.update(state="failed")
            return
        life.status.update(state="signed-in", registered=run.registered.aor if run.registered else None)
        self._stay(life, run)

    def _stage(self, life: _Life, result: StageResult) -> None:
        if not life.cut.is_set():
            life.status.stage(result)
            self.emit("stage", result)

    def _persist(self, run: PhoneRun, stored: StoredIdentity | None) -> None:
        """A new identity in one atomic write, as boot/sequence.py does: the boot after a cut reuses it."""
        fresh = stored is None or run.certificate != stored.certificate
        if fresh and run.certificate is not None and run.key is not None:
            chain = run.trust.intermediates if run.trust is not None else ()
            try:
                self.store.save_identity(Identity(run.key, run.certificate, chain))
            except OSError as exc:  # the sign-in stands; the next boot enrols again
                self.emit("error", f"{self.name} cannot store its identity: {exc.strerror}")

    def _record(
        self, life: _Life, run: PhoneRun, stored: StoredIdentity | None, cut_short: bool = False
    ) -> None:
        elapsed = round(time.monotonic() - life.powered_at, 3)
        record = BootRecord(
            life.number,
            str(life.status.snapshot()["boot_started_at"]),
            stored is not None and run.certificate == stored.certificate,
            elapsed if run.ok and not cut_short else None,
            run.diagnosis.as_dict() if run.diagnosis else None,
            cut_short,
        )
        with self._lock:
            self._boots.append(record)
        self.emit("boot", record)

    def _stay(self, life: _Life, run: PhoneRun) -> None:
        """Keep the binding alive (refresh, new SA) until the power goes; then drop it without a word."""
        session = run.session
        assert session is not None
        clock = run.time_sync.clock if run.time_sync is not None else self.clock
        try:
            while not life.cut.wait(max(0.5, (session.next_due() - clock.now()).total_seconds())):
                session.tick(clock.now())
        except AgentError as exc:
            life.status.update(state="re-signing-in", last_error={"stage": exc.stage, "code": exc.code})
        finally:
            session.close()
