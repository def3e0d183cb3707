"""Stage REGISTER end to end on loopback: a phone that signed in through the lab pool (lab.boot()) registers
with a real Registrar (TLS listener, TLS-DSK, the pool's store and provisioning log)."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto

from agent.clocks import Clock, SystemClock
from agent.diagnosis import diagnose
from agent.net import Resolver
from agent.register import RegisterConfig, RegistrarSession, sign_in
from agent.stages import StageError
from agent.truststore import TrustStore
from agent.wire.regflow import RegisterFlow
from agent.wire.sip import SipMessage, SipStreamParser, encode
from agent.wire.sipauth import format_auth_params
from tests.agent.test_reg_hostile import malformed_der, register_with
from tests.e2e.conftest import ALICE, Lab, start_lab
from tools.pool.ca import thumbprint
from tools.pool.registrar import Registrar
from tools.pool.store import store_blocker

pytestmark = pytest.mark.timeout(60)


class FastClock:
    """A clock whose sleep moves time on at once: hours of timers in milliseconds."""

    def __init__(self, start: datetime) -> None:
        self.start = self._now = start

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return (self._now - self.start).total_seconds()

    def sleep(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


class Phone:
    """What the phone has after lab.boot(): certificate, key, validated intermediates, registrar name."""

    def __init__(self, lab: Lab) -> None:
        run = lab.boot()
        assert run.ok, run.diagnosis
        assert run.certificate and run.key and run.trust and run.discovery and run.sip_uri
        self.lab, self.cert, self.key, self.aor = lab, run.certificate, run.key, run.sip_uri
        self.intermediates = run.trust.intermediates
        self.fqdn = run.discovery.registrar_fqdn or ""
        self.trust: TrustStore = lab.trust()
        self.resolver = Resolver({lab.node.cfg.fqdn: "127.0.0.1"})

    def sign_in(self, port: int, clock: Clock | None = None, **cfg: object) -> RegistrarSession:
        config = RegisterConfig(self.fqdn, port=port, timeout_s=5.0, **cfg)  # type: ignore[arg-type]
        cert: x509.Certificate = self.cert
        key: rsa.RSAPrivateKey = self.key
        return sign_in(
            config, self.trust, self.resolver, self.intermediates, cert, key, self.aor, clock or SystemClock()
        )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = start_lab(tmp_path_factory.mktemp("register"))
    try:
        yield lab
    finally:
        lab.node.stop()


@pytest.fixture(scope="module")
def phone(lab: Lab) -> Phone:
    return Phone(lab)


@pytest.fixture
def registrars(lab: Lab) -> Iterator[list[Registrar]]:
    started: list[Registrar] = []
    yield started
    for registrar in started:
        registrar.stop()


def start_registrar(lab: Lab, started: list[Registrar], now: Clock | None = None, **kw: object) -> Registrar:
    node = lab.node
    registrar = Registrar(
        ("127.0.0.1", 0),
        node.cfg.fqdn,
        lambda: node.certprov_url,
        node.ca,
        node.store,
        node.cfg.node,
        (now or lab.clock).now,
        node.provlog,
        **kw,  # type: ignore[arg-type]
    ).start()
    started.append(registrar)
    return registrar


def log_lines(lab: Lab, call_id: str) -> list[str]:
    return [
        ln for ln in (lab.logs / "provisioning.log").read_text().splitlines() if f"request={call_id}" in ln
    ]


def test_phone_signs_in_after_boot(lab: Lab, phone: Phone, registrars: list[Registrar]) -> None:
    registrar = start_registrar(lab, registrars)
    session = phone.sign_in(registrar.port)
    try:
        done = session.registered
        assert (done.aor, done.registrar, done.port, done.expires_s) == (
            ALICE,
            phone.fqdn,
            registrar.port,
            600,
        )
        assert done.tls_version == "TLSv1.2" and done.redirected_from is None
        (binding,) = lab.node.store.registrations(ALICE, lab.clock.now())
        assert binding.thumbprint == thumbprint(phone.cert) and binding.node == lab.node.cfg.node
        assert binding.contact == "sip:alice@127.0.0.1;transport=tls"
        (line,) = log_lines(lab, session.flow.call_id)
        assert "stage=REGISTER result=ok code=200" in line and "user=sip:alice@lab.test" in line
    finally:
        session.close()


def test_first_contact_pool_redirects_to_the_home_pool(
    lab: Lab, phone: Phone, registrars: list[Registrar]
) -> None:
    home = start_registrar(lab, registrars)
    first = start_registrar(lab, registrars, redirect_to=(lab.node.cfg.fqdn, home.port))
    session = phone.sign_in(first.port)
    try:
        assert session.registered.port == home.port
        assert session.registered.redirected_from == f"{phone.fqdn}:{first.port}"
        (line,) = log_lines(lab, session.flow.call_id)  # the home pool's: a new flow, a new Call-ID
        assert "result=ok code=200" in line
    finally:
        session.close()
    log = (lab.logs / "provisioning.log").read_text()
    assert "result=redirected code=301 request=" in log
    loop = start_registrar(lab, registrars)
    loop.redirect_to = (lab.node.cfg.fqdn, loop.port)
    with pytest.raises(StageError) as caught:
        phone.sign_in(loop.port, max_redirects=2)
    assert caught.value.code == "REDIRECT_LOOP"


def test_timers_refresh_and_reauthenticate(lab: Lab, phone: Phone, registrars: list[Registrar]) -> None:
    clock = FastClock(lab.clock.now())
    registrar = start_registrar(lab, registrars, now=clock)
    session = phone.sign_in(registrar.port, clock=clock)
    try:
        t0 = session.registered.registered_at
        assert session.tick(t0) == "idle"
        ticks = session.run(clock, until=t0 + timedelta(hours=8, minutes=10), max_ticks=200)
        kinds = [kind for _, kind in ticks]
        at = [(when - t0).total_seconds() for when, _ in ticks]
        # Every 570 s (30 s before the 600 s binding ends) until the SA's 7 h 55 min; then B–D; then on.
        assert kinds == ["refreshed"] * 49 + ["reauthenticated", "refreshed"]
        assert at == [570.0 * k for k in range(1, 51)] + [28500.0 + 570.0]
        assert session.registered.sa_expires_at == t0 + timedelta(seconds=28500 + 28500)
        assert lab.node.store.registrations(ALICE, clock.now())
        capped = session.run(clock, until=clock.now() + timedelta(hours=1), max_ticks=3)
        assert len(capped) == 3
    finally:
        session.close()


def test_unhealthy_registrar_is_4105(lab: Lab, phone: Phone, registrars: list[Registrar]) -> None:
    registrar = start_registrar(lab, registrars)
    registrar.unhealthy = True
    with pytest.raises(StageError) as caught:
        phone.sign_in(registrar.port)
    assert caught.value.code == "4105"
    assert "unhealthy" in diagnose(caught.value).problem
    assert "result=failed code=4105" in (lab.logs / "provisioning.log").read_text()
    registrar.unhealthy = False
    phone.sign_in(registrar.port).close()


def test_store_locked_while_binding_is_4104(lab: Lab, phone: Phone, registrars: list[Registrar]) -> None:
    registrar = start_registrar(lab, registrars)
    with store_blocker(lab.node.cfg.store), pytest.raises(StageError) as caught:
        phone.sign_in(registrar.port)
    assert caught.value.code == "4104"
    assert not lab.node.store.registrations(ALICE, lab.clock.now() + timedelta(days=1))


def test_nothing_listening_is_unreachable(phone: Phone) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    with pytest.raises(StageError) as caught:
        phone.sign_in(port)
    assert caught.value.code == "UNREACHABLE"


# --- garbage on the socket ------------------------------------------------------------------------


def _tls(lab: Lab, port: int, root_file: Path) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(root_file))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=lab.node.cfg.fqdn)


def _until_closed(conn: ssl.SSLSocket) -> bytes:
    got = b""
    while True:
        try:
            data = conn.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return got
        if not data:
            return got
        got += data


def _register_b_truncated() -> bytes:
    cut = base64.b64encode(
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    ).decode()  # a ClientHello cut short
    auth = format_auth_params("TLS-DSK", {"qop": "auth", "gssapi-data": cut})
    msg = SipMessage(
        method="REGISTER",
        uri="sip:lab.test",
        headers=(
            ("Via", "SIP/2.0/TLS 127.0.0.1;branch=z9hG4bKjunk"),
            ("From", "<sip:alice@lab.test>;tag=j1"),
            ("To", "<sip:alice@lab.test>"),
            ("Call-ID", "junk-call"),
            ("CSeq", "2 REGISTER"),
            ("Authorization", auth),
        ),
    )
    return encode(msg)


def test_registrar_survives_garbage(
    lab: Lab, phone: Phone, registrars: list[Registrar], tmp_path: Path
) -> None:
    registrar = start_registrar(lab, registrars, idle_timeout_s=5.0, handshake_timeout_s=0.5)
    root_file = tmp_path / "root.pem"
    root_file.write_bytes(lab.node.ca.root.public_bytes(Encoding.PEM))
    with _tls(lab, registrar.port, root_file) as conn:
        conn.sendall(os.urandom(4096) + b"\r\n\r\n")
        assert _until_closed(conn) == b""
    with _tls(lab, registrar.port, root_file) as conn:
        conn.sendall(b"REGISTER sip:lab.test SIP/2.0\r\nX-Long: " + b"a" * 20 * 1024 + b"\r\n\r\n")
        assert _until_closed(conn) == b""
    with _tls(lab, registrar.port, root_file) as conn:
        conn.sendall(_register_b_truncated())
        answers = SipStreamParser().feed(_until_closed(conn))
        assert [m.status for m in answers] == [400]
    with socket.create_connection(("127.0.0.1", registrar.port), timeout=5) as plain:
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS at all
        _until_closed_plain(plain)
    with socket.create_connection(("127.0.0.1", registrar.port), timeout=5) as plain:
        plain.sendall(b"\x16\x03\x01\x00\x05junk")  # a TLS record that never completes
        _until_closed_plain(plain)  # the handshake timeout ends it
    session = phone.sign_in(registrar.port)
    session.close()
    (line,) = log_lines(lab, "junk-call")
    assert "result=failed code=400" in line
    deadline = time.monotonic() + 5
    while registrar.connections and time.monotonic() < deadline:  # the last thread sees the phone's close
        time.sleep(0.01)
    assert registrar.connections == 0


def _until_closed_plain(sock: socket.socket) -> None:
    """Read (an alert, perhaps) until the registrar closes; a timeout here fails the test."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


def test_connection_cap_and_stop_cut_idle_connections(
    lab: Lab, registrars: list[Registrar], tmp_path: Path
) -> None:
    registrar = start_registrar(lab, registrars, max_connections=1)
    root_file = tmp_path / "root.pem"
    root_file.write_bytes(lab.node.ca.root.public_bytes(Encoding.PEM))
    with _tls(lab, registrar.port, root_file) as idle:
        with socket.create_connection(("127.0.0.1", registrar.port), timeout=5) as extra:
            _until_closed_plain(extra)  # over the cap: closed at once
        assert registrar.refused_connections == 1
        started = time.monotonic()
        registrar.stop()
        assert time.monotonic() - started < 2
        assert _until_closed(idle) == b""


# --- regressions ----------------------------------------------------------------------------------


def test_unregister_reaches_the_store(lab: Lab, phone: Phone, registrars: list[Registrar]) -> None:
    registrar = start_registrar(lab, registrars)
    session = phone.sign_in(registrar.port)
    try:
        assert lab.node.store.registrations(ALICE, lab.clock.now())
        done = session.unregister()
        assert done.expires_s == 0
        assert not lab.node.store.registrations(ALICE, lab.clock.now())
        assert session.tick(done.registered_at + timedelta(hours=1)) == "idle"  # no timers after it
        lines = log_lines(lab, session.flow.call_id)
        assert len(lines) == 2 and "result=ok code=200" in lines[1] and "unbound" in lines[1]
    finally:
        session.close()


def test_unregister_after_the_sa_ended_reauthenticates_first(
    lab: Lab, phone: Phone, registrars: list[Registrar]
) -> None:
    clock = FastClock(lab.clock.now())
    registrar = start_registrar(lab, registrars, now=clock)
    session = phone.sign_in(registrar.port, clock=clock)
    try:
        old = session.flow.sa
        clock.sleep((session.registered.sa_expires_at - clock.now()).total_seconds())
        done = session.unregister()
        assert done.expires_s == 0 and session.flow.sa is not None and old is not None
        assert session.flow.sa.sa_id != old.sa_id
    finally:
        session.close()


def test_unhealthy_registrar_signs_its_503_to_a_refresh(
    lab: Lab, phone: Phone, registrars: list[Registrar]
) -> None:
    clock = FastClock(lab.clock.now())
    registrar = start_registrar(lab, registrars, now=clock)
    session = phone.sign_in(registrar.port, clock=clock)
    try:
        registrar.unhealthy = True
        with pytest.raises(StageError) as caught:  # an unsigned 503 would be BAD_SIGNATURE after D
            session.tick(session.registered.refresh_at)
        assert caught.value.code == "4105"
    finally:
        session.close()


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
def test_malformed_client_certificate_is_403_4101_and_logged(
    lab: Lab, phone: Phone, registrars: list[Registrar], tmp_path: Path
) -> None:
    registrar = start_registrar(lab, registrars)
    root_file = tmp_path / "root.pem"
    root_file.write_bytes(lab.node.ca.root.public_bytes(Encoding.PEM))
    first = RegisterFlow(
        ALICE, phone.fqdn, registrar.port, phone.cert, phone.key, lambda chain: True, contact_host="127.0.0.1"
    ).start()
    bad = crypto.load_certificate(crypto.FILETYPE_ASN1, malformed_der(phone.cert))
    with _tls(lab, registrar.port, root_file) as conn:
        parser = SipStreamParser()

        def send(msg: SipMessage) -> list[SipMessage]:
            conn.sendall(encode(msg))
            while True:
                data = conn.recv(65536)
                assert data, "the registrar dropped the connection without an answer"
                got = parser.feed(data)
                if got:
                    return got

        answer = register_with(send, first, bad, phone.key)
    assert answer.status == 403 and (answer.header("ms-diagnostics") or "").startswith("4101;")
    (line,) = log_lines(lab, first.header("Call-ID") or "")
    assert "result=failed code=4101" in line and "malformed certificate" in line


def _closed_within(conn: ssl.SSLSocket, seconds: float, feed: Iterator[bytes]) -> float | None:
    """Send ``feed``'s chunks every 0.05 s until the registrar closes; how long that took, or None."""
    started = time.monotonic()
    conn.settimeout(0.05)
    while time.monotonic() - started < seconds:
        try:
            conn.sendall(next(feed))
            if conn.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (OSError, ssl.SSLError):
            return time.monotonic() - started
    return None


def _repeat(chunk: bytes) -> Iterator[bytes]:
    while True:
        yield chunk


def test_no_sa_within_the_setup_deadline_closes_despite_keepalives(
    lab: Lab, registrars: list[Registrar], tmp_path: Path
) -> None:
    registrar = start_registrar(lab, registrars, setup_timeout_s=0.5, idle_timeout_s=5.0)
    root_file = tmp_path / "root.pem"
    root_file.write_bytes(lab.node.ca.root.public_bytes(Encoding.PEM))
    with _tls(lab, registrar.port, root_file) as conn:
        took = _closed_within(conn, 3.0, _repeat(b"\r\n\r\n"))  # keep-alives reset an idle timer
    assert took is not None and took < 2.0


def test_a_trickled_message_is_cut_at_the_header_deadline(
    lab: Lab, registrars: list[Registrar], tmp_path: Path
) -> None:
    registrar = start_registrar(lab, registrars, header_timeout_s=0.3, setup_timeout_s=10.0)
    root_file = tmp_path / "root.pem"
    root_file.write_bytes(lab.node.ca.root.public_bytes(Encoding.PEM))
    lines = (f"X-Slow-{n}: a\r\n".encode() for n in range(1000))
    with _tls(lab, registrar.port, root_file) as conn:
        conn.sendall(b"REGISTER sip:lab.test SIP/2.0\r\n")
        took = _closed_within(conn, 3.0, lines)
    assert took is not None and took < 1.5


def test_setup_deadline_ends_once_an_sa_exists(lab: Lab, phone: Phone, registrars: list[Registrar]) -> None:
    clock = FastClock(lab.clock.now())
    registrar = start_registrar(lab, registrars, now=clock, setup_timeout_s=0.3)
    session = phone.sign_in(registrar.port, clock=clock)
    try:
        time.sleep(0.6)
        assert session.tick(session.registered.refresh_at) == "refreshed"
    finally:
        session.close()


def test_connections_per_address_are_capped(lab: Lab, registrars: list[Registrar], tmp_path: Path) -> None:
    registrar = start_registrar(lab, registrars, max_per_ip=2)
    root_file = tmp_path / "root.pem"
    root_file.write_bytes(lab.node.ca.root.public_bytes(Encoding.PEM))
    with _tls(lab, registrar.port, root_file), _tls(lab, registrar.port, root_file):
        with socket.create_connection(("127.0.0.1", registrar.port), timeout=5) as extra:
            _until_closed_plain(extra)  # the third from 127.0.0.1: closed at once
        assert registrar.refused_connections == 1 and registrar.connections == 2
