"""The phone's boot sequence: sign in, stay signed in, renew, and recover — surviving any power cut.

One attempt = the agent's stages with what the state store still holds: the stored identity is always offered
and the phone decides after TIME, at its synchronised time, whether it has enough life left (straight to
REGISTER) — a Pi without RTC boots in 1970 and must not re-enrol because of that. A new identity (key,
certificate, chain) is written as one file, atomically, only once complete. Key generation starts at power-on in a thread and overlaps the network stages; an unused key is
kept for the next attempt. Failures go through the retry policy: transient ones back off with full jitter
inside a budget that starts at the first failure; permanent ones wait for the operator — and a refused PIN is
not tried again until the PIN itself changes, so a phone never locks its user out. Stage progress is the
watchdog's heartbeat. SIGTERM is honoured between stages, never in the middle of a state write.

With ``[tether] port`` the phone also serves the USB tether whenever it has no usable certificate (none yet,
one due for renewal, or one the registrar refused): the first certificate to arrive, over the network or the
cable, wins, and the phone goes straight to REGISTER with it. A phone without a PIN relies on the tether alone.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.clocks import Clock, SystemClock
from agent.phone import Phone, PhoneRun, StoredIdentity
from agent.register import RegistrarSession
from agent.stages import AgentError, Stage, StageResult
from agent.truststore import TrustStore
from boot.config import AgentConfig
from boot.identity import IdentityKeeper, KeyPrefetch
from boot.retry import Backoff, Decision, RetryPolicy
from boot.sdnotify import Notifier
from boot.status import BootStatus
from boot.store import Identity, LastDiscovery, StageProgress, StateStore
from boot.tether import TetherService, read_phone_serial
from boot.vlan import VoiceVlan

log = logging.getLogger("phoneprov.boot")
UNLIMITED = 10**9
OPERATOR_POLL_S = 60.0  # how often a phone waiting for its operator looks for a changed configuration
OPERATOR_RETRY_S = 3600.0  # other permanent failures (an untrusted chain, …) are tried again hourly
# Refusals of the user's credential: retrying the same PIN can only lock the user out.
CREDENTIAL_CODES = {"2001", "2002", "2003", "2004", "2005", "2006", "CREDENTIAL", "NO_PIN"}
WAKE_S = 1.0  # waits are sliced so SIGTERM and a certificate from the tether are noticed within a second


class Stopping(Exception):
    """SIGTERM arrived; raised only at safe points (between attempts, while waiting)."""


def _policy(cfg: AgentConfig) -> RetryPolicy:
    r = cfg.retry
    return RetryPolicy(
        base_s=r.base_s,
        cap_s=max(r.cap_s, r.base_s),
        budget_s=r.budget_s or float(UNLIMITED),
        max_attempts=r.max_attempts or UNLIMITED,
    )


def _spki(key: rsa.RSAPublicKey | object) -> bytes:
    assert isinstance(key, rsa.RSAPublicKey)
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


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
        reload: Callable[[], AgentConfig] | None = None,
        tether: TetherService | None = None,
        voice: VoiceVlan | None = None,
    ) -> None:
        self.cfg, self.clock = cfg, clock or SystemClock()
        self.store = store or StateStore(cfg.phone.state_dir)
        self.notifier = notifier or Notifier.from_env()
        self.status = status or BootStatus()
        self.power_cycle, self.reload = power_cycle, reload
        self.backoff = Backoff(_policy(cfg), rng or random.Random())
        self.trust = TrustStore.from_pem_files(cfg.anchor_files())
        self.session: RegistrarSession | None = None
        self.phone_clock: Clock = self.clock  # after TIME: the SNTP-corrected clock every expiry check uses
        self.stopping = threading.Event()
        self._prefetch: KeyPrefetch | None = None
        self._renew_after: datetime | None = None  # after a failed renewal: not before this (backoff)
        self._force_enrol = False
        self._renew_tries = 0
        net = cfg.network
        self.voice = voice or (VoiceVlan(net.interface, self.clock) if net.vlan and net.interface else None)
        self.identity = IdentityKeeper(self.store, self._margin, lambda: self.phone_clock.now())
        self.identity.tether = tether if tether is not None else self._make_tether()

    def _make_tether(self) -> TetherService | None:
        t = self.cfg.tether
        if t.port is None:
            return None
        serial = t.phone_serial or read_phone_serial()
        install = self.identity.install_from_tether
        return TetherService(t.port, self.store.device_id(), serial, self.trust, install, clock=self.clock)

    @property
    def tether(self) -> TetherService | None:
        return self.identity.tether

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
        stored = (
            StoredIdentity(identity.key, identity.certificate, identity.intermediates) if identity else None
        )
        if self._prefetch is None:
            self._prefetch = KeyPrefetch(self.cfg.phone.key_bits)  # used only if the phone must enrol
        self.status.new_attempt(number)
        cfg = replace(self.cfg.phone_config(store.device_id()), reuse_margin=self._margin(identity))
        if self.voice is not None:  # once on the voice VLAN, every later attempt asks there
            cfg = replace(cfg, discovery=self.voice.discovery(cfg.discovery))
        phone = Phone(
            cfg,
            self.trust,
            self.clock,
            on_stage=lambda r: self._on_stage(r, number),
            stored=stored,
            key_source=self._prefetch.get,
            on_vlan=self.voice.enter if self.voice is not None else None,
        )
        run = phone.run(keep_signed_in=True)
        if self.voice is not None:
            v = self.voice
            self.status.update(vlan={"id": v.vlan, "interface": v.interface, "problem": v.problem})
        if run.time_sync is not None:
            self.phone_clock = run.time_sync.clock
        if (
            run.key is not None
            and run.certificate is not None
            and _spki(run.key.public_key()) == _spki(run.certificate.public_key())
            and (stored is None or run.certificate != stored.certificate)
        ):
            self._prefetch = None  # the pending key now has a certificate
        self._persist(run, stored)
        return run

    def _margin(self, identity: Identity | None) -> timedelta:
        """The renewal margin, capped at half the certificate's lifetime so renewal cannot loop."""
        if identity is None:
            return self.cfg.renewal_margin
        c = identity.certificate
        return min(self.cfg.renewal_margin, (c.not_valid_after_utc - c.not_valid_before_utc) / 2)

    def _on_stage(self, result: StageResult, attempt: int) -> None:
        self.status.stage(result)
        self.notifier.status(f"{result.stage.value} {result.result}")
        self.notifier.watchdog()  # progress is the heartbeat
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

    def _persist(self, run: PhoneRun, stored: StoredIdentity | None) -> None:
        try:
            if run.discovery is not None:
                self.store.save_discovery(LastDiscovery.from_discovery(run.discovery, self.clock.now()))
            fresh = stored is None or run.certificate != stored.certificate
            if fresh and run.certificate is not None and run.key is not None:
                chain = run.trust.intermediates if run.trust is not None else ()
                self.identity.save_from_network(Identity(run.key, run.certificate, chain))
        except OSError as exc:  # the sign-in stands; the next boot enrols again if the identity was lost
            log.error("cannot store state in %s: %s", self.store.root, exc)
        self.status.identity(run.certificate)
        self.status.error(run.diagnosis)

    # -- the loop -----------------------------------------------------------------------------------------

    def run(self, until: datetime | None = None, max_attempts: int | None = None) -> int:
        """Sign in and stay signed in until ``until`` (forever for systemd). 0 = signed in at the end."""
        failed_since: float | None = None
        attempt = 0
        self.notifier.ready("starting")  # READY = the loop runs; the sign-in state is in STATUS=
        try:
            while until is None or self.clock.now() < until:
                if self.stopping.is_set() or (max_attempts is not None and attempt >= max_attempts):
                    break
                self.identity.sync_tether()
                self.identity.arrived.clear()  # the attempt loads whatever identity is stored now
                run = self._safe_attempt(attempt + 1)
                if run is not None and run.ok and run.session is not None:
                    attempt, failed_since = 0, None
                    self._signed_in(run)
                    self._keep(until)
                    continue
                if run is not None and self._stored_identity_refused(run):
                    self.identity.refused = self._force_enrol = (
                        True  # the pool no longer knows the stored certificate: enrol anew
                    )
                    log.warning("the registrar refused the stored certificate: enrolling a new one")
                    continue
                failed_since = self.clock.monotonic() if failed_since is None else failed_since
                decision = self._decide(run, attempt, self.clock.monotonic() - failed_since)
                attempt += 1
                if decision.action == "give_up":
                    return 1
                if decision.action == "retry":
                    self._wait(decision.after_s, until)
                else:
                    self._wait_operator(run, until)
        except Stopping:
            log.info("stopping on request")
        return 0 if self.session is not None else 1

    def _stored_identity_refused(self, run: PhoneRun) -> bool:
        """REGISTER refused a *reused* certificate as unknown/expired (e.g. a renewal cut after the pool
        replaced it): not the operator's problem — the phone can enrol again, once."""
        diag = run.diagnosis
        reused = any(r.stage is Stage.CERT_REQUEST and r.result == "skipped" for r in run.results)
        return (
            diag is not None
            and diag.stage is Stage.REGISTER
            and diag.code in ("4101", "4102")
            and reused
            and not self._force_enrol
        )

    def _safe_attempt(self, number: int) -> PhoneRun | None:
        """An attempt whose unexpected failure (a bug, a disk error) is logged and retried, not a crash loop."""
        try:
            if self._force_enrol:
                self._force_enrol = False
                return self.attempt(number, renew=True)
            return self.attempt(number)
        except Exception:
            log.exception("sign-in attempt %d failed unexpectedly", number)
            return None

    def _keep(self, until: datetime | None) -> None:
        while self.session is not None and (until is None or self.clock.now() < until):
            current = self.session
            self._stay(current, until)
            if self.session is current:
                break  # ``until`` reached with this session still live

    def _signed_in(self, run: PhoneRun) -> None:
        if self.session is not None:
            self.session.close()
        self.session = run.session
        self.status.update(state="signed-in", registered=run.registered.aor if run.registered else None)
        self.notifier.status(self.status.headline)
        log.info("signed in: %s", self.status.headline)

    def _decide(self, run: PhoneRun | None, attempt: int, elapsed_s: float) -> Decision:
        diag = run.diagnosis if run is not None else None
        stage, code = (diag.stage, diag.code) if diag else (Stage.NET, "UNEXPECTED")
        decision = self.backoff.decide(stage, code, attempt, elapsed_s, self.power_cycle is not None)
        log.warning("decision: %s (%s)", decision.action, decision.reason)
        self.status.update(state=decision.action, next_attempt_at=None)
        self.notifier.status(f"{decision.action}: {decision.reason}")
        if decision.action == "power_cycle" and self.power_cycle is not None:
            self.power_cycle()
        return decision

    def _wait_operator(self, run: PhoneRun | None, until: datetime | None) -> None:
        """Permanent failure: a refused credential waits for a changed PIN; anything else retries hourly."""
        diag = run.diagnosis if run is not None else None
        if diag is None or diag.code not in CREDENTIAL_CODES:
            self._wait(OPERATOR_RETRY_S, until)
            return
        refused = self._pin_fingerprint()
        if diag.code == "NO_PIN":
            log.warning("no PIN on this phone: waiting for a certificate over the USB tether (or a PIN)")
        else:
            log.warning(
                "the pool refused the credential (%s %s): waiting for a new PIN", diag.stage, diag.code
            )
        while until is None or self.clock.now() < until:
            self._wait(OPERATOR_POLL_S, until)
            if self.identity.arrived.is_set():
                return
            if self._pin_fingerprint() != refused:
                log.info("the PIN changed: trying again")
                return

    def _pin_fingerprint(self) -> str:
        """A hash of the PIN now configured (re-read from agent.toml / the PIN file when a reload is given)."""
        if self.reload is not None:
            try:
                self.cfg = self.reload()
            except ValueError as exc:
                log.warning("configuration not reloaded: %s", exc)
        return hashlib.sha256(self.cfg.phone.pin.encode()).hexdigest()

    def _stay(self, session: RegistrarSession, until: datetime | None) -> None:
        """Keep the registration alive; renew the certificate before it gets too short; return on failure."""
        while until is None or self.clock.now() < until:
            self.identity.sync_tether()
            if self.identity.arrived.is_set() and self._adopt():
                return
            now = self.phone_clock.now()
            if self._renewal_due(now) and self._renew():
                return  # signed in with the new certificate; the caller's loop takes the new session
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

    def _adopt(self) -> bool:
        """Sign in with the certificate the tether installed, then drop the old registration."""
        self.identity.arrived.clear()
        run = self.attempt(1)
        if run.ok and run.session is not None:
            self._renew_after, self._renew_tries = None, 0
            self._signed_in(run)
            return True
        if run.session is not None:
            run.session.close()
        log.warning(
            "the certificate from the tether did not sign in, the current registration stays: %s",
            run.diagnosis,
        )
        return False

    def _renewal_due(self, now: datetime) -> bool:
        identity = self.store.load_identity()
        if identity is None or self.store.identity_valid_for(now, self._margin(identity)):
            return False
        return self._renew_after is None or now >= self._renew_after

    def _renew(self) -> bool:
        """A new certificate and registration first; the old registration is dropped only then."""
        log.info("renewing: the certificate is within its renewal margin")
        run = self.attempt(1, renew=True)
        if run.ok and run.session is not None:
            self._renew_after, self._renew_tries = None, 0
            self._signed_in(run)  # closes the old session
            return True
        if run.session is not None:
            run.session.close()
        diag = run.diagnosis
        if diag is not None and diag.code == "NO_PIN":
            wait = timedelta(hours=1)  # the tether serves meanwhile; a new certificate wakes the phone
            log.warning("renewal due and this phone has no PIN: provision it over the USB tether")
        elif diag is not None and diag.code in CREDENTIAL_CODES:
            wait = timedelta(
                days=3650
            )  # never guess again with a refused PIN; the old certificate still works
            log.warning("renewal refused the credential (%s); not retrying until restarted", diag.code)
        else:
            wait = timedelta(seconds=self.backoff.next_delay(self._renew_tries))
            self._renew_tries += 1
        self._renew_after = self.phone_clock.now() + wait
        log.warning("renewal failed, the current registration stays: %s", diag)
        self.status.update(state="signed-in")
        return False

    def _next_wake(self, session: RegistrarSession, now: datetime) -> float:
        due = (session.next_due() - now).total_seconds()
        if self._renew_after is not None:
            due = min(due, (self._renew_after - now).total_seconds())
        watchdog = self.notifier.watchdog_interval_s() or 60.0
        return max(1.0, min(due, watchdog))

    def _wait(self, seconds: float, until: datetime | None) -> None:
        if until is not None:
            seconds = min(seconds, max(0.0, (until - self.clock.now()).total_seconds()))
        step = min(self.notifier.watchdog_interval_s() or WAKE_S, WAKE_S)
        while seconds > 0:
            if self.stopping.is_set():
                raise Stopping
            if self.identity.arrived.is_set():
                return
            chunk = min(seconds, step)
            self.clock.sleep(chunk)
            self.notifier.watchdog()
            seconds -= chunk
        if self.stopping.is_set():
            raise Stopping
