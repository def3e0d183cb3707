"""The phone's boot sequence: sign in, stay signed in, renew, and recover — surviving any power cut.

One attempt = the agent's stages with what the state store still holds (a certificate with enough life left
goes straight to REGISTER; the stored chain is reused; the device id never changes). A new identity is
written only once complete (key, chain, then certificate, each atomically), so a cut at any instant leaves
the old identity or the new one, never a key for the wrong certificate. Key generation starts at power-on in
a thread and overlaps the network stages. Failures go through the retry policy: transient ones back off with
full jitter inside a budget, permanent ones wait for the operator, an exhausted budget asks the rig to
power-cycle. Every decision is logged with stage and code.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import rsa

from agent import enroll
from agent.clocks import Clock, SystemClock
from agent.phone import Phone, PhoneRun, StoredIdentity
from agent.register import RegistrarSession
from agent.stages import AgentError, Stage, StageResult
from agent.truststore import TrustStore
from boot.config import AgentConfig
from boot.retry import Backoff, Decision, RetryPolicy
from boot.sdnotify import Notifier
from boot.status import BootStatus
from boot.store import Identity, LastDiscovery, StageProgress, StateStore

log = logging.getLogger("phoneprov.boot")
UNLIMITED = 10**9
OPERATOR_WAIT_S = 3600.0  # a permanent failure is retried once an hour (or at once after a restart)


class KeyPrefetch:
    """RSA key generation started now, joined when CERT_REQUEST needs it: cold sign-in ≈ max(keygen, network)."""

    def __init__(self, bits: int) -> None:
        self._future: Future[rsa.RSAPrivateKey] = Future()
        threading.Thread(target=self._make, args=(bits,), name="keygen", daemon=True).start()

    def _make(self, bits: int) -> None:
        try:
            self._future.set_result(enroll.generate_key(bits))
        except BaseException as exc:  # surfaced in get(), in the stage that needs the key
            self._future.set_exception(exc)

    def get(self) -> rsa.RSAPrivateKey:
        return self._future.result()


def _policy(cfg: AgentConfig) -> RetryPolicy:
    r = cfg.retry
    return RetryPolicy(
        base_s=r.base_s,
        cap_s=max(r.cap_s, r.base_s),
        budget_s=r.budget_s or float(UNLIMITED),
        max_attempts=r.max_attempts or UNLIMITED,
    )


class Boot:
    def __init__(
        self,
        cfg: AgentConfig,
        clock: Clock | None = None,
        store: StateStore | None = None,
        notifier: Notifier | None = None,
        status: BootStatus | None = None,
        power_cycle: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg, self.clock = cfg, clock or SystemClock()
        self.store = store or StateStore(cfg.phone.state_dir)
        self.notifier = notifier or Notifier.from_env()
        self.status = status or BootStatus()
        self.power_cycle = power_cycle
        self.backoff = Backoff(_policy(cfg), rng or random.Random())
        self.trust = TrustStore.from_pem_files(cfg.anchor_files())
        self.session: RegistrarSession | None = None

    # -- one attempt ---------------------------------------------------------------------------------

    def attempt(self, number: int = 1, renew: bool = False) -> PhoneRun:
        """One sign-in; persists progress and, on success, the identity. Keeps the registrar session."""
        store = self.store
        for name in store.tidy():
            log.info("removed a stale temp file %s (a write cut short by a power loss)", name)
        identity = None if renew else store.load_identity()
        for problem in store.problems:
            log.warning("state: %s", problem)
        store.problems.clear()
        reuse = identity is not None and store.identity_valid_for(self.clock.now(), self.cfg.renewal_margin)
        stored = (
            StoredIdentity(identity.key, identity.certificate, identity.intermediates)
            if reuse and identity
            else None
        )
        prefetch = None if stored else KeyPrefetch(self.cfg.phone.key_bits)
        self.status.new_attempt(number)
        phone = Phone(
            self.cfg.phone_config(store.device_id()),
            self.trust,
            self.clock,
            on_stage=lambda r: self._on_stage(r, number),
            stored=stored,
            key_source=prefetch.get if prefetch else None,
        )
        run = phone.run(keep_signed_in=True)
        self._persist(run, reused=stored is not None)
        return run

    def _on_stage(self, result: StageResult, attempt: int) -> None:
        self.status.stage(result)
        self.notifier.status(f"{result.stage.value} {result.result}")
        level = logging.WARNING if result.result == "failed" else logging.INFO
        log.log(
            level,
            "attempt %d: %s %s %s %s",
            attempt,
            result.stage.value,
            result.result,
            result.code or "-",
            result.detail,
        )
        try:
            self.store.save_progress(StageProgress.from_result(result, self.clock.now(), attempt))
        except OSError as exc:  # a full or read-only disk must not stop sign-in
            log.warning("cannot record progress: %s", exc)

    def _persist(self, run: PhoneRun, reused: bool) -> None:
        if run.discovery is not None:
            self.store.save_discovery(LastDiscovery.from_discovery(run.discovery, self.clock.now()))
        if not reused and run.certificate is not None and run.key is not None and run.trust is not None:
            self.store.save_identity(Identity(run.key, run.certificate, run.trust.intermediates))
        self.status.identity(run.certificate)
        self.status.error(run.diagnosis)

    # -- the loop -----------------------------------------------------------------------------------------

    def run(self, until: datetime | None = None, max_attempts: int | None = None) -> int:
        """Sign in and stay signed in until ``until`` (forever for systemd). 0 = signed in at the end."""
        started, attempt = self.clock.monotonic(), 0
        # READY means "the service is running its loop", not "signed in": a phone may retry for hours, and
        # systemd must not kill it for that. The sign-in state is in STATUS= and on the status endpoint.
        self.notifier.ready("starting")
        while until is None or self.clock.now() < until:
            if max_attempts is not None and attempt >= max_attempts:
                break
            run = self.attempt(attempt + 1)
            if run.ok and run.session is not None:
                attempt, started = 0, self.clock.monotonic()
                self._signed_in(run)
                while self.session is not None and (until is None or self.clock.now() < until):
                    current = self.session
                    self._stay(current, until)
                    if self.session is current:
                        break  # ``until`` reached with this session still live
                continue
            decision = self._decide(run, attempt, self.clock.monotonic() - started)
            attempt += 1
            if decision.action == "give_up":
                return 1
            self._wait(decision.after_s if decision.action == "retry" else OPERATOR_WAIT_S, until)
        return 0 if self.session is not None else 1

    def _signed_in(self, run: PhoneRun) -> None:
        if self.session is not None:
            self.session.close()
        self.session = run.session
        self.status.update(state="signed-in", registered=run.registered.aor if run.registered else None)
        self.notifier.status(self.status.headline)
        log.info("signed in: %s", self.status.headline)

    def _decide(self, run: PhoneRun, attempt: int, elapsed_s: float) -> Decision:
        diag = run.diagnosis
        stage, code = (diag.stage, diag.code) if diag else (Stage.NET, "UNKNOWN")
        decision = self.backoff.decide(stage, code, attempt, elapsed_s, self.power_cycle is not None)
        log.warning("decision: %s (%s)", decision.action, decision.reason)
        self.status.update(state=decision.action, next_attempt_at=None)
        self.notifier.status(f"{decision.action}: {decision.reason}")
        if decision.action == "power_cycle" and self.power_cycle is not None:
            self.power_cycle()
        return decision

    def _stay(self, session: RegistrarSession, until: datetime | None) -> None:
        """Keep the registration alive; renew the certificate before it gets too short; return on failure."""
        renew_after, tries = self.clock.now(), 0
        while until is None or self.clock.now() < until:
            now = self.clock.now()
            if now >= renew_after and not self.store.identity_valid_for(now, self.cfg.renewal_margin):
                if self._renew():
                    return  # signed in with the new certificate; the caller's loop takes the new session
                renew_after = now + timedelta(seconds=self.backoff.next_delay(tries))
                tries += 1
            try:
                session.tick(now)
            except AgentError as exc:
                log.warning("registration lost: %s", exc)
                self.status.update(state="re-signing-in", last_error={"stage": exc.stage, "code": exc.code})
                session.close()
                self.session = None
                return
            self.notifier.watchdog()
            self._wait(self._next_wake(session, now), until)

    def _next_wake(self, session: RegistrarSession, now: datetime) -> float:
        due = (session.next_due() - now).total_seconds()
        watchdog = self.notifier.watchdog_interval_s() or 60.0
        return max(0.05, min(due, watchdog))

    def _renew(self) -> bool:
        """A new certificate and registration first; the old registration is dropped only then."""
        log.info("renewing: the certificate has less than %s left", self.cfg.renewal_margin)
        run = self.attempt(1, renew=True)
        if run.ok and run.session is not None:
            self._signed_in(run)  # closes the old session
            return True
        if run.session is not None:
            run.session.close()
        log.warning("renewal failed, the current registration stays: %s", run.diagnosis)
        self.status.update(state="signed-in")
        return False

    def _wait(self, seconds: float, until: datetime | None) -> None:
        if until is not None:
            seconds = min(seconds, max(0.0, (until - self.clock.now()).total_seconds()))
        step = self.notifier.watchdog_interval_s() or seconds
        while seconds > 0:
            chunk = min(seconds, step)
            self.clock.sleep(chunk)
            self.notifier.watchdog()
            seconds -= chunk
