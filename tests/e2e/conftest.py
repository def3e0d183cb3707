"""A real lab pool on loopback (free ports, temp state) and a phone factory for end-to-end tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

import certs
from agent import enroll, ticket
from agent.clock import TimeConfig
from agent.clocks import SystemClock
from agent.discovery import DiscoveryConfig
from agent.net import HttpsTrust, PhoneHttp, Resolver
from agent.phone import Phone, PhoneConfig, PhoneRun
from agent.stages import Stage
from agent.truststore import TrustStore
from agent.wire import certprov
from boot.store import StateStore
from tools.pool.config import PoolConfig, Ports
from tools.pool.node import PoolNode
from tools.pool.pinpolicy import PinPolicy

ALICE = "sip:alice@lab.test"
ALICE_NUMBER = "+14255550123"
ALICE_PIN = "80613"
BOB = "sip:bob@lab.test"
BOB_PIN = "52907"


class ShiftedClock(SystemClock):
    """The system clock, shifted by a settable amount: lets a test age tickets without sleeping."""

    def __init__(self) -> None:
        self.shift = timedelta()

    def now(self) -> datetime:
        return super().now() + self.shift


@dataclass
class Lab:
    node: PoolNode
    clock: ShiftedClock
    root: Path

    def phone_config(self, username: str = ALICE_NUMBER, pin: str = ALICE_PIN, **kw: object) -> PhoneConfig:
        ports = self.node.ports
        cfg = PhoneConfig(
            username=username,
            pin=pin,
            device_id="{" + str(uuid.uuid4()).upper() + "}",
            discovery=DiscoveryConfig(
                ciaddr=IPv4Address("127.0.0.1"),
                server=("127.0.0.1", ports.dhcp),
                bind=("127.0.0.1", 0),
                interval_s=1.0,
            ),
            time=TimeConfig(port=ports.sntp, fallback=(), timeout_s=1.0),
            anon_http_port=ports.http,
            registrar_port=ports.sip,
            hosts={self.node.cfg.fqdn: "127.0.0.1"},
            key_bits=2048,
        )
        return replace(cfg, **kw)  # type: ignore[arg-type]

    def trust(self, with_lab_root: bool = True) -> TrustStore:
        roots = self.root / "phone-roots"
        roots.mkdir(exist_ok=True)
        for old in roots.glob("*.pem"):
            old.unlink()
        if with_lab_root:
            (roots / "lab-root.pem").write_bytes(self.node.ca.root.public_bytes(Encoding.PEM))
        return TrustStore.from_pem_files(certs.anchor_files(extra_dirs=(roots,)))

    def boot(self, cfg: PhoneConfig | None = None, trust: TrustStore | None = None) -> PhoneRun:
        state = StateStore(self.root / "phone-state")
        phone = Phone(cfg or self.phone_config(), trust or self.trust(), SystemClock(), on_key=state.save_key)
        return phone.run()

    @property
    def logs(self) -> Path:
        return self.node.cfg.state_dir / "logs"


def start_lab(tmp: Path, shift: timedelta = timedelta(), **cfg_changes: object) -> Lab:
    clock = ShiftedClock()
    clock.shift = shift
    cfg = PoolConfig(
        state_dir=tmp / "pool",
        ports=Ports(0, 0, 0, 0, 0),
        store_timeout_s=0.5,
        pin_policy=PinPolicy(max_logon_attempts=3),
    )
    node = PoolNode(replace(cfg, **cfg_changes), clock).start()  # type: ignore[arg-type]
    node.add_user(ALICE, "tel:+14255550123;ext=123", ALICE_PIN, "Alice")
    node.add_user(BOB, "tel:+14255550124;ext=124", BOB_PIN, "Bob")
    return Lab(node, clock, tmp)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = start_lab(tmp_path)
    try:
        yield lab
    finally:
        lab.node.stop()


@pytest.fixture
def http(lab: Lab) -> Iterator[PhoneHttp]:
    """The phone's HTTPS client, trusting what a real sign-in established (for talking to the pool directly)."""
    run = lab.boot()
    assert run.trust is not None
    client = PhoneHttp(Resolver({lab.node.cfg.fqdn: "127.0.0.1"}), 5.0, HttpsTrust(run.trust.bundle_pem))
    yield client
    client.close()


def alice_ticket(lab: Lab, http: PhoneHttp) -> ticket.Ticket:
    return ticket.request_ticket(
        http, ticket.find_endpoints(http, lab.node.certprov_url), ALICE_NUMBER, ALICE_PIN
    )


def post_cert_request(
    http: PhoneHttp, held: ticket.Ticket, entity: str, csr_for: str, created: datetime | None = None
) -> certprov.CertIssued | certprov.CertProvFault:
    """A GetAndPublishCert built by hand, so a test can put in what a real phone would not."""
    req = certprov.CertRequest(
        to=held.proof_url,
        message_id=f"uuid:{uuid.uuid4()}",
        assertion_xml=held.saml.assertion_xml,
        assertion_id=held.saml.assertion_id,
        created=created or held.created,
        expires=held.expires,
        device_id=str(uuid.uuid4()),
        entity=entity,
        csr_der=enroll.build_csr(enroll.generate_key(2048), csr_for),
        request_id=str(uuid.uuid4()),
    )
    reply = http.request(
        "POST",
        held.proof_url,
        Stage.CERT_REQUEST,
        body=certprov.build_request(req, held.proof_key),
        headers={"Content-Type": "text/xml; charset=utf-8"},
    )
    return certprov.parse_response(reply.body)
