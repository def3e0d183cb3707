"""``phoneprov test-bootstrap``: the lab's ``Test-CsPhoneBootstrap`` — a phone's whole sign-in, as a test.

A phone number or extension and PIN, DHCP discovery unless the targets are given, then every stage to SIGNED_IN
with a throwaway key and device id (nothing is stored; the registration is removed at the end). It reports the
cmdlet's fields — TargetUri, TargetFqdn, Result, Latency, Error, Diagnosis — and with ``--verbose`` every message
as it goes (metadata only: no PIN, key or ticket is ever printed; see agent/trace.py).

Field failure 1 (the data store unavailable) is told apart as the seed does: a 3005 / 4104 / 2099 is retried once after
``retry_after_s``; success then is *sporadic* (exit 3: a power-cycle is the remedy, but watch the store), a second
failure is *persistent* (exit 1: restore the store; power-cycling will not help).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, Literal
from urllib.parse import urlsplit

from agent import enroll, trace
from agent.clock import TimeConfig
from agent.clocks import Clock, SystemClock
from agent.diagnosis import Diagnosis
from agent.discovery import DiscoveryConfig
from agent.phone import Phone, PhoneConfig, PhoneRun
from agent.stages import AgentError, StageResult
from agent.truststore import TrustStore

CERTPROV_PATH = "/CertProv/CertProvisioningService.svc"
# The data store, not the phone: 2099 is what the Web Ticket service answers when it cannot read the user.
STORE_FAILURES = {("WEB_TICKET", "2099"), ("CERT_PUBLISH", "3005"), ("REGISTER", "4104")}
PERSISTENT_REMEDY = (
    "Restore the home pool's data store (the back-end database: is it running and reachable from every node?), "
    "then run this test again; `phoneprov logs collect` shows 'data store unavailable' on the nodes affected."
)
Verdict = Literal["success", "sporadic", "persistent", "failure"]
EXIT = {"success": 0, "failure": 1, "persistent": 1, "sporadic": 3}


@dataclass(frozen=True)
class BootstrapTarget:
    """What the cmdlet takes, plus what a lab without DNS and port 67 needs."""

    phone_or_ext: str
    pin: str = field(repr=False)
    user_sip_address: str | None = None
    target_uri: str | None = None
    target_fqdn: str | None = None
    dhcp_server: tuple[str, int] | None = None  # unicast INFORM (a lab); default: broadcast on ``interface``
    interface: str | None = None
    registrar_port: int | None = None
    anon_http_port: int = 80
    ntp_port: int = 123
    resolve: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    retry_after_s: float = 5.0

    def discovery(self) -> DiscoveryConfig:
        """Targets given: DHCP is not asked for them (either implies the other, as in the cmdlet)."""
        uri, fqdn = self.target_uri, self.target_fqdn
        if uri and not fqdn:
            fqdn = urlsplit(uri).hostname
        if fqdn and not uri:
            uri = f"https://{fqdn}{CERTPROV_PATH}"
        common: dict[str, Any] = {
            "certprov_url": uri,
            "registrar_fqdn": fqdn,
            "registrar_port": self.registrar_port,
        }
        if self.dhcp_server is not None:
            loopback = IPv4Address(self.dhcp_server[0]).is_loopback
            ciaddr = IPv4Address("127.0.0.1") if loopback else None
            return DiscoveryConfig(
                ciaddr=ciaddr, server=self.dhcp_server, bind=("0.0.0.0", 0), interval_s=1.0, **common
            )
        return DiscoveryConfig(interface=self.interface, **common)

    def phone_config(self) -> PhoneConfig:
        return PhoneConfig(
            username=self.phone_or_ext,
            pin=self.pin,
            device_id=enroll.new_device_id(),  # throwaway: the pool sees a new device each run
            sip_uri=self.user_sip_address,
            discovery=self.discovery(),
            time=TimeConfig(port=self.ntp_port, fallback=(), local_clock_ok=True),
            anon_http_port=self.anon_http_port,
            hosts={k.lower(): v for k, v in self.resolve.items()},
            http_timeout_s=self.timeout_s,
            registrar_port=self.registrar_port or 5061,
        )


@dataclass(frozen=True)
class BootstrapResult:
    runs: tuple[PhoneRun, ...]
    verdict: Verdict
    latency_ms: float
    retry_after_s: float

    @property
    def run(self) -> PhoneRun:
        """The run the verdict is about: the retry's, when there was one."""
        return self.runs[-1]

    @property
    def first_failure(self) -> Diagnosis | None:
        return self.runs[0].diagnosis

    @property
    def exit_code(self) -> int:
        return EXIT[self.verdict]

    @property
    def target_uri(self) -> str:
        found = self.run.discovery or self.runs[0].discovery
        return found.certprov_url if found else ""

    @property
    def target_fqdn(self) -> str:
        found = self.run.discovery or self.runs[0].discovery
        return (found.registrar_fqdn or "") if found else ""

    @property
    def error(self) -> str:
        failed = next((r for r in self.run.results if r.result == "failed"), None)
        if self.verdict == "sporadic":
            first = next((r for r in self.runs[0].results if r.result == "failed"), None)
            return f"first attempt: {first.detail}" if first else ""
        return failed.detail if failed else ""

    @property
    def _diagnosis(self) -> Diagnosis | None:
        return self.first_failure if self.verdict == "sporadic" else self.run.diagnosis

    @property
    def diagnosis_text(self) -> str:
        d = self._diagnosis
        if d is None:
            return ""
        gap = f"{self.retry_after_s:g} s apart"
        if self.verdict == "sporadic":
            note = (
                f" Sporadic: it failed once and succeeded on a retry {gap}, so a power-cycle gets the phone in"
                " — but the data store is flapping; check its health."
            )
            return f"{d.stage} {d.code}: {d.problem}{note} Remedy: {d.remedy}"
        if self.verdict == "persistent":  # the catalogue's remedy starts with the power-cycle: not now
            note = f" Persistent: it failed twice, {gap}; power-cycling will not help."
            return f"{d.stage} {d.code}: {d.problem}{note} Remedy: {PERSISTENT_REMEDY}"
        return f"{d.stage} {d.code}: {d.problem} Remedy: {d.remedy}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "TargetUri": self.target_uri,
            "TargetFqdn": self.target_fqdn,
            "Result": "Success" if self.verdict in ("success", "sporadic") else "Failure",
            "Latency": f"{self.latency_ms / 1000:.3f}s",
            "Error": self.error,
            "Diagnosis": self.diagnosis_text,
            "verdict": self.verdict,
            "diagnosis": d.as_dict() if (d := self._diagnosis) else None,
            "attempts": [{"stages": [r.as_dict() for r in run.results]} for run in self.runs],
        }


def test_bootstrap(
    target: BootstrapTarget,
    trust: TrustStore,
    clock: Clock | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
    on_step: trace.Sink | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> BootstrapResult:
    """Sign in like a phone; a data-store failure is tried once more to tell sporadic from persistent."""
    clock = clock or SystemClock()
    started = clock.monotonic()
    first = _once(target, trust, clock, on_stage, on_step)
    runs: tuple[PhoneRun, ...] = (first,)
    verdict: Verdict = "success" if first.ok else "failure"
    if _store_failure(first):
        sleep(target.retry_after_s)
        second = _once(target, trust, clock, on_stage, on_step)
        runs = (first, second)
        verdict = "sporadic" if second.ok else ("persistent" if _store_failure(second) else "failure")
    latency = (clock.monotonic() - started) * 1000
    return BootstrapResult(runs, verdict, latency, target.retry_after_s)


test_bootstrap.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite the cmdlet's name


def _store_failure(run: PhoneRun) -> bool:
    d = run.diagnosis
    return d is not None and (d.stage.value, d.code) in STORE_FAILURES


def _once(
    target: BootstrapTarget,
    trust: TrustStore,
    clock: Clock,
    on_stage: Callable[[StageResult], None] | None,
    on_step: trace.Sink | None,
) -> PhoneRun:
    phone = Phone(
        target.phone_config(), trust, clock, on_stage=on_stage
    )  # on_key unset: the key stays in memory
    if on_step is None:
        run = phone.run(keep_signed_in=True)
    else:
        with trace.tracing(on_step):
            run = phone.run(keep_signed_in=True)
    if run.session is not None:
        try:
            run.session.unregister()  # a synthetic transaction leaves no binding behind
        except AgentError:
            pass  # signed in is signed in; a failed clean-up must not turn it into a failure
        finally:
            run.session.close()
    return run
