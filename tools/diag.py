"""Synthetic transactions, the lab's equivalents of the Lync cmdlets (protocol.md §10).

``client_auth`` ≈ ``Test-CsClientAuth``: with a user's credential (HTTP Basic in the lab) it gets a web
ticket, a certificate for a throwaway key (CERT_REQUEST/CERT_PUBLISH) and registers with it (REGISTER),
then reports the cmdlet's fields: TargetFqdn, Result, Latency, Error, Diagnosis. The key is never stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from agent import enroll, ticket
from agent.clocks import Clock, SystemClock
from agent.diagnosis import Diagnosis
from agent.net import PhoneHttp, Resolver
from agent.register import RegisterConfig, sign_in
from agent.runner import StageFailed, StageRunner
from agent.stages import AgentError, Stage, StageResult
from agent.trust import establish_trust
from agent.truststore import TrustStore

CERTPROV_PATH = "/CertProv/CertProvisioningService.svc"
CLIENT_AUTH_STAGES = (
    Stage.ROOT_CHAIN,
    Stage.WEB_TICKET,
    Stage.CERT_REQUEST,
    Stage.CERT_PUBLISH,
    Stage.REGISTER,
)
COULD_NOT_DOWNLOAD = "Could not download a CS Certificate for the given user."


@dataclass(frozen=True)
class ClientAuthTarget:
    """Where to test: the registrar FQDN and/or the CertProv URL (either implies the other, as the cmdlet)."""

    user_sip_address: str
    credential: tuple[str, str] = field(repr=False)
    target_fqdn: str | None = None
    target_uri: str | None = None
    registrar_port: int = 5061
    anon_http_port: int = 80
    resolve: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0

    @property
    def fqdn(self) -> str:
        if self.target_fqdn:
            return self.target_fqdn
        if self.target_uri:
            return urlsplit(self.target_uri).hostname or ""
        raise ValueError("give --target-fqdn or --target-uri")

    @property
    def certprov_url(self) -> str:
        return self.target_uri or f"https://{self.fqdn}{CERTPROV_PATH}"


@dataclass(frozen=True)
class ClientAuthResult:
    target_fqdn: str
    target_uri: str
    results: tuple[StageResult, ...]
    diagnosis: Diagnosis | None
    latency_ms: float

    @property
    def ok(self) -> bool:
        return self.diagnosis is None

    @property
    def error(self) -> str:
        if self.diagnosis is None:
            return ""
        failed = next((r for r in self.results if r.result == "failed"), None)
        detail = failed.detail if failed else ""
        if self.diagnosis.stage in (Stage.CERT_REQUEST, Stage.CERT_PUBLISH):
            return f"{COULD_NOT_DOWNLOAD} {detail}".strip()
        return detail

    def as_dict(self) -> dict[str, Any]:
        return {
            "TargetFqdn": self.target_fqdn,
            "TargetUri": self.target_uri,
            "Result": "Success" if self.ok else "Failure",
            "Latency": f"{self.latency_ms / 1000:.3f}s",
            "Error": self.error,
            "Diagnosis": self.diagnosis.as_dict() if self.diagnosis else None,
            "stages": [r.as_dict() for r in self.results],
        }


def client_auth(
    target: ClientAuthTarget,
    trust: TrustStore,
    clock: Clock | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
) -> ClientAuthResult:
    """Run ROOT_CHAIN, WEB_TICKET (Basic), CERT_REQUEST/CERT_PUBLISH (throwaway key) and REGISTER."""
    clock = clock or SystemClock()
    runner = StageRunner(clock, on_stage)
    resolver = Resolver({k.lower(): v for k, v in target.resolve.items()})
    http = PhoneHttp(resolver, target.timeout_s)
    started = clock.monotonic()
    try:
        _run(target, trust, clock, runner, resolver, http)
    except StageFailed:
        runner.skip_rest(CLIENT_AUTH_STAGES)
    finally:
        http.close()
    latency = (clock.monotonic() - started) * 1000
    return ClientAuthResult(
        target.fqdn, target.certprov_url, tuple(runner.results), runner.diagnosis, latency
    )


def _run(
    target: ClientAuthTarget,
    trust: TrustStore,
    clock: Clock,
    runner: StageRunner,
    resolver: Resolver,
    http: PhoneHttp,
) -> None:
    url = target.certprov_url
    trusted = runner.run(
        Stage.ROOT_CHAIN,
        lambda: establish_trust(trust, http, url, clock.now(), target.anon_http_port, target.timeout_s),
        lambda t: f"{t.validated.leaf.subject.rfc4514_string()} chains to a shipped root",
    )
    http.set_trust(trusted.https_trust(clock.now()))
    user, password = target.credential
    held = runner.run(
        Stage.WEB_TICKET,
        lambda: ticket.request_ticket_basic(
            http, ticket.find_endpoints(http, url), user, password, target.user_sip_address
        ),
        lambda t: f"ticket for {t.sip_uri} (Basic credential)",
    )
    key = enroll.generate_key()  # throwaway: never written anywhere
    cert_der, _ = runner.run(
        Stage.CERT_REQUEST,
        lambda: enroll.get_and_publish(
            http, held, enroll.build_csr(key, held.sip_uri), enroll.new_device_id()
        ),
        lambda r: f"GetAndPublishCert accepted (request {r[1]})",
    )
    cert = runner.run(
        Stage.CERT_PUBLISH,
        lambda: enroll.check_issued(cert_der, key, held.sip_uri, trust, trusted.intermediates, clock.now()),
        lambda c: f"published and returned: serial {c.serial_number:032x}",
    )
    cfg = RegisterConfig(target.fqdn, target.registrar_port, timeout_s=target.timeout_s)
    session = runner.run(
        Stage.REGISTER,
        lambda: sign_in(cfg, trust, resolver, trusted.intermediates, cert, key, held.sip_uri, clock),
        lambda s: (
            f"registered with {s.registered.registrar}:{s.registered.port} for {s.registered.expires_s} s"
        ),
    )
    try:
        session.unregister()  # a synthetic transaction leaves no binding behind
    except AgentError:
        pass  # the sign-in itself succeeded; a failed clean-up must not turn it into a failure
    finally:
        session.close()
