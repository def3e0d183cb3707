"""A pool CA, a store and the phones' certificates for the REGISTER tests without sockets (shared helpers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from agent.enroll import build_csr, generate_key
from agent.stages import AgentError
from agent.truststore import TrustStore
from agent.wire.regflow import RegisterFlow, Step
from agent.wire.sip import SipMessage, decode, encode
from tools.pool.ca import PoolCA, thumbprint
from tools.pool.regcheck import client_checker
from tools.pool.regcore import RegistrarConnection
from tools.pool.regtypes import ExpiryPolicy, Handled
from tools.pool.store.contract import PublishedCert, User
from tools.pool.store.sqlite import SqliteStore

T = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
POOL = "pool.lab.test"
ALICE = "sip:alice@lab.test"
BOB = "sip:bob@lab.test"
STS = f"https://{POOL}:443/CertProv/CertProvisioningService.svc"


@dataclass(frozen=True)
class Pki:
    ca: PoolCA
    store: SqliteStore
    server_key: rsa.RSAPrivateKey
    key: rsa.RSAPrivateKey
    alice: x509.Certificate
    bob: x509.Certificate
    unpublished: x509.Certificate
    revoked: x509.Certificate
    expired: x509.Certificate


def _publish(store: SqliteStore, cert: x509.Certificate, sip_uri: str, device: str) -> None:
    store.publish(
        PublishedCert(
            sip_uri=sip_uri,
            device_id=device,
            thumbprint=thumbprint(cert),
            serial=f"{cert.serial_number:x}",
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            published_at=T,
            der=cert.public_bytes(Encoding.DER),
        )
    )


def make_pki(state: Path) -> Pki:
    ca = PoolCA.load_or_create(state / "ca", POOL, at=T - timedelta(days=30))
    store = SqliteStore(state / "store.sqlite")
    for uri, line in ((ALICE, "tel:+14255550123"), (BOB, "tel:+14255550124")):
        store.add_user(User(uri, line, uri), "not-a-pin-hash", 5, T)
    key = generate_key(2048)
    csr = x509.load_der_x509_csr(build_csr(key, ALICE))

    def issue(uri: str, hours: float = 4320, at: datetime = T - timedelta(hours=1)) -> x509.Certificate:
        return ca.issue_user_cert(csr, uri, hours, at)

    alice, bob, unpublished, revoked = issue(ALICE), issue(BOB), issue(ALICE), issue(ALICE)
    expired = issue(ALICE, hours=8, at=T - timedelta(hours=30))
    _publish(store, alice, ALICE, "dev-1")
    _publish(store, bob, BOB, "dev-2")
    _publish(store, revoked, ALICE, "dev-3")
    _publish(store, expired, ALICE, "dev-4")
    store.revoke(thumbprint(revoked))
    server_key = serialization.load_pem_private_key(ca.tls_key_path.read_bytes(), password=None)
    assert isinstance(server_key, rsa.RSAPrivateKey)
    return Pki(ca, store, server_key, key, alice, bob, unpublished, revoked, expired)


def server_check(pki: Pki) -> Callable[[list[x509.Certificate]], bool]:
    """The phone's judgement of the registrar inside TLS-DSK: the lab root, the pool FQDN, at T."""
    trust = TrustStore([pki.ca.root])

    def check(chain: list[x509.Certificate]) -> bool:
        try:
            trust.verify_server(chain[0], chain[1:], POOL, T)
        except AgentError:
            return False
        return True

    return check


def registrar(pki: Pki, store: object | None = None, **kw: object) -> RegistrarConnection:
    return RegistrarConnection(
        POOL,
        STS,
        [pki.ca.web_cert, pki.ca.issuing],
        pki.server_key,
        client_checker(pki.ca.root, [pki.ca.issuing], store or pki.store),  # type: ignore[arg-type]
        policy=ExpiryPolicy(),
        **kw,  # type: ignore[arg-type]
    )


def phone(pki: Pki, cert: x509.Certificate | None = None, aor: str = ALICE, **kw: object) -> RegisterFlow:
    return RegisterFlow(
        aor,
        POOL,
        5061,
        cert or pki.alice,
        pki.key,
        server_check(pki),
        contact_host="192.0.2.7",
        **kw,  # type: ignore[arg-type]
    )


def wire(msg: SipMessage) -> SipMessage:
    """Through the codec, as on a real connection."""
    return decode(encode(msg))


def exchange(
    flow: RegisterFlow,
    conn: RegistrarConnection,
    first: SipMessage,
    now: datetime,
    server_now: datetime | None = None,
    log: list[Handled] | None = None,
    tamper: Callable[[SipMessage], SipMessage] = lambda m: m,
) -> Step:
    """Carry requests to the registrar and its answers back until the flow stops asking to send."""
    msg: SipMessage = first
    for _ in range(12):
        handled = conn.handle(wire(msg), server_now or now)
        if log is not None:
            log.append(handled)
        step: Step = None
        for answer in handled.messages:
            step = flow.receive(wire(tamper(answer)), now)
        if not isinstance(step, SipMessage):
            return step
        msg = step
    raise AssertionError("the exchange did not settle")
