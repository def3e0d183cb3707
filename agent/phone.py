"""One phone's sign-in: the stages of protocol.md §2 in order, each timed, the first failure diagnosed.

No persistence here (boot/ owns state): ``on_key`` sees the new key before the CSR is sent, for a caller that
wants it stored early; boot/ instead stores key, certificate and chain together once the certificate is back,
so a power cut never pairs a key with the wrong certificate (a cut in between costs one re-enrolment).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from agent import enroll, ticket
from agent.clock import TimeConfig, TimeSync, sync_time
from agent.clocks import Clock
from agent.diagnosis import Diagnosis
from agent.discovery import Discovery, DiscoveryConfig, discover
from agent.dns import Dns, ntp_srv
from agent.net import PhoneHttp, Resolver
from agent.register import RegisterConfig, RegistrarSession, sign_in
from agent.runner import StageFailed, StageRunner
from agent.stages import X509_ERRORS, Stage, StageError, StageResult
from agent.trust import TrustResult, establish_trust
from agent.truststore import TrustStore
from agent.wire.regflow import Registered

T = TypeVar("T")
SIGN_IN_STAGES = (
    Stage.DHCP_INFORM,
    Stage.TIME,
    Stage.ROOT_CHAIN,
    Stage.WEB_TICKET,
    Stage.CERT_REQUEST,
    Stage.CERT_PUBLISH,
    Stage.REGISTER,
    Stage.SIGNED_IN,
)


@dataclass(frozen=True)
class PhoneConfig:
    """What a phone knows before it boots: the user's entry (number + PIN) and how to reach the lab."""

    username: str
    pin: str = field(repr=False)
    device_id: str
    sip_uri: str | None = None
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    time: TimeConfig = field(default_factory=TimeConfig)
    anon_http_port: int = 80
    hosts: Mapping[str, str] = field(default_factory=dict)
    http_timeout_s: float = 10.0
    key_bits: int = 2048
    registrar_port: int = 5061
    register_expires_s: int = 600
    reuse_margin: timedelta = timedelta(
        hours=1
    )  # a stored certificate needs this much life left to be reused


@dataclass(frozen=True)
class StoredIdentity:
    """What a previous boot left: key, certificate and the intermediates validated then (boot/ loads it)."""

    key: rsa.RSAPrivateKey = field(repr=False)
    certificate: x509.Certificate
    intermediates: tuple[x509.Certificate, ...] = ()

    def sip_uri(self) -> str | None:
        try:
            san = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return None
        except X509_ERRORS:
            return None
        uris = [
            str(u)
            for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if str(u).startswith("sip:")
        ]
        return uris[0] if uris else None


REUSE_MARGIN = timedelta(hours=1)  # protocol.md §2: a stored certificate with ≥ 1 h left skips stages 3–6


@dataclass
class _Progress:
    """What the sequence has learned so far (internal, mutable while the stages run)."""

    discovery: Discovery | None = None
    time_sync: TimeSync | None = None
    trust: TrustResult | None = None
    sip_uri: str | None = None
    key: rsa.RSAPrivateKey | None = field(default=None, repr=False)
    certificate: x509.Certificate | None = None
    session: RegistrarSession | None = None


@dataclass(frozen=True)
class PhoneRun:
    results: tuple[StageResult, ...]
    diagnosis: Diagnosis | None
    discovery: Discovery | None = None
    time_sync: TimeSync | None = None
    trust: TrustResult | None = None
    sip_uri: str | None = None
    key: rsa.RSAPrivateKey | None = field(default=None, repr=False)
    certificate: x509.Certificate | None = None
    registered: Registered | None = None
    session: RegistrarSession | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.diagnosis is None


class Phone:
    def __init__(
        self,
        cfg: PhoneConfig,
        trust: TrustStore,
        clock: Clock,
        on_key: Callable[[rsa.RSAPrivateKey], object] | None = None,
        on_stage: Callable[[StageResult], None] | None = None,
        stored: StoredIdentity | None = None,
        key_source: Callable[[], rsa.RSAPrivateKey] | None = None,
        on_vlan: Callable[[int, DiscoveryConfig], DiscoveryConfig | None] | None = None,
    ) -> None:
        """``stored``: an identity from an earlier boot (used when still valid); ``key_source``: where the new key
        comes from (boot/ starts key generation at power-on so it overlaps the network stages); ``on_vlan``:
        moves the phone onto the voice VLAN DHCP named and says where to ask again (None: stay untagged)."""
        self.cfg, self.trust, self.clock = cfg, trust, clock
        self.on_key, self.stored, self.on_vlan = on_key, stored, on_vlan
        self.key_source = key_source or (lambda: enroll.generate_key(cfg.key_bits))
        self.runner = StageRunner(clock, on_stage)
        self.resolver = Resolver({k.lower(): v for k, v in cfg.hosts.items()})

    def run(self, keep_signed_in: bool = False) -> PhoneRun:
        """Run DHCP_INFORM … SIGNED_IN; stages after a failure are recorded as skipped.

        With ``keep_signed_in`` the registrar session stays open in ``PhoneRun.session`` (the caller keeps it
        alive with ``session.run`` and closes it); otherwise it is closed before returning.
        """
        progress = _Progress()
        http = PhoneHttp(self.resolver, self.cfg.http_timeout_s)
        try:
            self._provision(http, progress)
        except StageFailed:
            self.runner.skip_rest(SIGN_IN_STAGES)
        finally:
            http.close()
            if progress.session is not None and not keep_signed_in:
                progress.session.close()
        return PhoneRun(
            results=tuple(self.runner.results),
            diagnosis=self.runner.diagnosis,
            discovery=progress.discovery,
            time_sync=progress.time_sync,
            trust=progress.trust,
            sip_uri=progress.sip_uri,
            key=progress.key,
            certificate=progress.certificate,
            registered=progress.session.registered if progress.session else None,
            session=progress.session if keep_signed_in else None,
        )

    def _provision(self, http: PhoneHttp, p: _Progress) -> None:
        cfg = self.cfg
        found = p.discovery = self.runner.run(
            Stage.DHCP_INFORM,
            self._discover,
            lambda d: (
                f"{d.source} ({d.answered_by or 'config'}): {d.certprov_url}; registrar {d.registrar_fqdn}"
            ),
        )
        if found.dns_servers:  # from here on, names are resolved by the DHCP-given DNS servers
            dns = Dns(found.dns_servers, cfg.discovery.dns_port, cfg.discovery.dns_timeout_s)
            self.resolver = Resolver(self.resolver.hosts, dns)
            http.set_resolver(self.resolver)
        synced = p.time_sync = self.runner.run(
            Stage.TIME,
            lambda: sync_time(
                found.ntp_servers, cfg.time, self.clock, self.resolver, _ntp_srv(self.resolver, found)
            ),
            lambda t: f"{t.server} ({t.source}): offset {t.offset_s:+.3f} s, delay {t.delay_s * 1000:.1f} ms",
        )
        now = synced.clock.now
        if self._reuse(p, now()):
            assert self.stored is not None
            self._register(p, found, self.stored.intermediates, synced)
            return
        trusted = p.trust = self.runner.run(
            Stage.ROOT_CHAIN,
            lambda: establish_trust(self.trust, http, found.certprov_url, now(), cfg.anon_http_port),
            _describe_chain,
        )
        http.set_trust(trusted.https_trust(now()))
        for attempt in (1, 2):  # ErrorInfo 3001: discard the ticket and get a new one, once
            try:
                p.certificate = self._enroll(http, p, found.certprov_url, trusted, now, retry=attempt == 1)
                break
            except enroll.TicketRejected:
                continue
        self._register(p, found, trusted.intermediates, synced)

    def _discover(self) -> Discovery:
        """DHCPINFORM; given a voice VLAN and a way onto it, ask again on the VLAN — a phone's traffic belongs
        there (LPE does the same after LLDP-MED or DHCP names the VLAN)."""
        cfg, xid = self.cfg.discovery, lambda: random.getrandbits(32)
        found = discover(cfg, self.clock, xid)
        moved = self.on_vlan(found.vlan, cfg) if found.vlan is not None and self.on_vlan else None
        if moved is None:
            return found
        again = discover(replace(moved, vlan=False), self.clock, xid)
        where = moved.interface or f"{moved.server[0]}:{moved.server[1]}"
        sources = {**again.sources, "vlan": f"{found.sources.get('vlan', 'DHCP')}; asked again on {where}"}
        return replace(
            again, vlan=found.vlan, sources=sources, informs_sent=found.informs_sent + again.informs_sent
        )

    def _reuse(self, p: _Progress, now: datetime) -> bool:
        """A stored certificate with ≥ 1 h left (at the phone's synchronised time) skips ROOT_CHAIN … CERT_PUBLISH."""
        stored = self.stored
        margin = max(REUSE_MARGIN, self.cfg.reuse_margin)
        if stored is None or stored.certificate.not_valid_after_utc - now < margin:
            return False
        if stored.certificate.not_valid_before_utc > now or stored.sip_uri() is None:
            return False
        p.key, p.certificate, p.sip_uri = stored.key, stored.certificate, stored.sip_uri()
        until = f"stored certificate valid until {stored.certificate.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
        for stage in (Stage.ROOT_CHAIN, Stage.WEB_TICKET, Stage.CERT_REQUEST, Stage.CERT_PUBLISH):
            self.runner.record(StageResult(stage, "skipped", detail=until))
        return True

    def _register(
        self, p: _Progress, found: Discovery, intermediates: tuple[x509.Certificate, ...], synced: TimeSync
    ) -> None:
        """REGISTER with TLS-DSK and the new certificate; SIGNED_IN once the registrar confirmed it."""
        cfg = self.cfg
        cert, key, aor = p.certificate, p.key, p.sip_uri
        assert cert is not None and key is not None and aor is not None  # set by the stages above

        def register() -> RegistrarSession:
            if not found.registrar_fqdn:
                raise StageError(
                    Stage.REGISTER, "NO_REGISTRAR", "no registrar FQDN (option 120 or configuration)"
                )
            port = found.registrar_port or cfg.registrar_port
            rcfg = RegisterConfig(found.registrar_fqdn, port, cfg.register_expires_s)
            return sign_in(rcfg, self.trust, self.resolver, intermediates, cert, key, aor, synced.clock)

        p.session = self.runner.run(
            Stage.REGISTER,
            register,
            lambda s: (
                f"TLS-DSK ({s.registered.tls_version}) with {s.registered.registrar}:{s.registered.port}"
                + (
                    f", redirected from {s.registered.redirected_from}"
                    if s.registered.redirected_from
                    else ""
                )
            ),
        )
        session = p.session
        self.runner.run(
            Stage.SIGNED_IN,
            lambda: session.registered,
            lambda r: (
                f"{r.aor} registered for {r.expires_s} s; re-register at {r.refresh_at:%H:%M:%S}Z, "
                f"new SA by {r.sa_expires_at:%Y-%m-%d %H:%M}Z"
            ),
        )

    def _enroll(
        self,
        http: PhoneHttp,
        p: _Progress,
        certprov_url: str,
        trusted: TrustResult,
        now: Callable[[], datetime],
        retry: bool,
    ) -> x509.Certificate:
        """WEB_TICKET, CERT_REQUEST (key + CSR + GetAndPublishCert), CERT_PUBLISH (the returned certificate)."""
        cfg = self.cfg

        def get_ticket() -> ticket.Ticket:
            if not cfg.pin:  # a tether-only phone: an empty PIN would count as a wrong one at the pool
                raise StageError(
                    Stage.WEB_TICKET, "NO_PIN", "no PIN on this phone: its certificate comes over USB"
                )
            return ticket.request_ticket(
                http, ticket.find_endpoints(http, certprov_url), cfg.username, cfg.pin, cfg.sip_uri
            )

        held = self.runner.run(
            Stage.WEB_TICKET,
            get_ticket,
            lambda t: f"ticket for {t.sip_uri}, valid until {t.expires:%Y-%m-%d %H:%M}Z",
        )
        p.sip_uri = held.sip_uri

        def request() -> tuple[rsa.RSAPrivateKey, bytes, str]:
            key = p.key = self.key_source()
            if self.on_key:
                self.on_key(key)  # stored before the CSR leaves: never a certificate for a lost key
            cert_der, request_id = enroll.get_and_publish(
                http, held, enroll.build_csr(key, held.sip_uri), cfg.device_id
            )
            return key, cert_der, request_id

        key, cert_der, _ = self.runner.run(
            Stage.CERT_REQUEST,
            request,
            lambda r: f"new RSA {cfg.key_bits} key + PKCS#10; GetAndPublishCert accepted (request {r[2]})",
            passthrough=(enroll.TicketRejected,) if retry else (),
        )
        return self.runner.run(
            Stage.CERT_PUBLISH,
            lambda: enroll.check_issued(
                cert_der, key, held.sip_uri, self.trust, trusted.intermediates, now()
            ),
            lambda c: f"published to the home pool and returned: serial {c.serial_number:032x}",
        )


def _ntp_srv(resolver: Resolver, found: Discovery) -> Callable[[], list[str]] | None:
    """No option 42: ``_ntp._udp.<domain>`` via the DHCP-given DNS (protocol.md §4)."""
    if resolver.dns is None or not found.domain:
        return None
    dns, domain = resolver.dns, found.domain
    return lambda: ntp_srv(dns, domain)


def _describe_chain(t: TrustResult) -> str:
    path = " <- ".join(_cn(c) for c in t.validated.path)
    return f"{path} (shipped root); {len(t.downloaded)} downloaded"


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()
