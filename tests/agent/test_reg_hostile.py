"""Hostile certificates at stage REGISTER: ones OpenSSL loads but cryptography cannot parse (X.509 version
field 3, mutated TBS bytes) must end as a typed refusal on both ends — a 403 4101 from the registrar core, a
StageError from the phone's tls_connect (socket closed) — never a foreign exception."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL, crypto

from agent.enroll import generate_key
from agent.net import Resolver
from agent.stages import Stage, StageError
from agent.tlsconn import tls_connect
from agent.truststore import TrustStore
from agent.wire.regmsg import REALM, credentials
from agent.wire.sip import SipMessage
from agent.wire.sipauth import format_auth_params, parse_ms_diagnostics
from agent.wire.tlsdsk import gssapi_decode, gssapi_encode
from tests.agent.regpki import ALICE, POOL, Pki, T, exchange, make_pki, phone, registrar, wire

pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    pki = make_pki(tmp_path_factory.mktemp("reghostile"))
    yield pki
    pki.store.close()


def malformed_der(cert: x509.Certificate, version: int = 3) -> bytes:
    """``cert`` with its X.509 version INTEGER patched: OpenSSL still loads it, cryptography raises
    InvalidVersion (not a ValueError)."""
    der = cert.public_bytes(Encoding.DER)
    at = der.index(b"\xa0\x03\x02\x01\x02")
    return der[:at] + bytes([0xA0, 3, 2, 1, version]) + der[at + 5 :]


def _load(der: bytes) -> crypto.X509:
    return crypto.load_certificate(crypto.FILETYPE_ASN1, der)


def _pump(conn: SSL.Connection, data: bytes | None) -> bytes:
    """Feed a raw OpenSSL peer; a peer that fails just stops talking (b"")."""
    try:
        if data:
            conn.bio_write(data)
        with contextlib.suppress(SSL.WantReadError):
            conn.do_handshake()
    except SSL.Error:
        return b""
    out = b""
    while True:
        try:
            out += conn.bio_read(65536)
        except SSL.WantReadError:
            return out


def _raw_phone(cert: crypto.X509, key: rsa.RSAPrivateKey) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(b"AES128-SHA:@SECLEVEL=0")
    ctx.use_certificate(cert)
    ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
    ctx.set_verify(SSL.VERIFY_NONE, lambda *_: True)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    return conn


Send = Callable[[SipMessage], list[SipMessage]]


def register_with(send: Send, first: SipMessage, cert: crypto.X509, key: rsa.RSAPrivateKey) -> SipMessage:
    """REGISTER A, B, C as a phone presenting ``cert`` inside TLS-DSK; the registrar's answer to the last
    request sent (C, or B/A if the registrar stopped earlier)."""
    (answer,) = send(first)
    tls = _raw_phone(cert, key)
    base = {"qop": "auth", "realm": REALM, "targetname": POOL, "version": "4"}
    flight = _pump(tls, None)
    for number in (2, 3):
        if answer.status != 401:
            return answer
        auth = {**base, "gssapi-data": gssapi_encode(flight)}
        if number == 3:
            challenge = credentials(answer, "WWW-Authenticate")
            assert challenge is not None and "opaque" in challenge.params
            auth["opaque"] = challenge.params["opaque"]
            flight = _pump(tls, gssapi_decode(challenge.params["gssapi-data"]))
            if not flight:
                return answer
            auth["gssapi-data"] = gssapi_encode(flight)
        request = first.replace_header("CSeq", f"{number} REGISTER").with_header(
            "Authorization", format_auth_params("TLS-DSK", auth)
        )
        (answer,) = send(request)
    return answer


def test_registrar_answers_a_malformed_client_certificate_with_403_4101(pki: Pki) -> None:
    conn = registrar(pki)
    outcomes = []

    def send(msg: SipMessage) -> list[SipMessage]:
        handled = conn.handle(wire(msg), T)
        outcomes.append(handled.outcome)
        return list(handled.messages)

    answer = register_with(send, phone(pki).start(), _load(malformed_der(pki.alice)), pki.key)
    assert answer.status == 403
    diag = parse_ms_diagnostics(answer.header("ms-diagnostics") or "")
    assert diag.code == 4101 and "malformed certificate" in (diag.reason or "")
    assert outcomes[-1] is not None and outcomes[-1].code == "4101"  # a provisioning-log line
    assert conn.security_associations == ()


_edits = st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=3)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=_edits)
def test_registrar_core_takes_any_loadable_client_certificate(pki: Pki, edits: list[tuple[int, int]]) -> None:
    der = bytearray(pki.alice.public_bytes(Encoding.DER))
    tbs = pki.alice.tbs_certificate_bytes
    spki = pki.alice.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    at_tbs, at_key = der.index(tbs), der.index(spki)
    where = [i for i in range(at_tbs, at_tbs + len(tbs)) if not at_key <= i < at_key + len(spki)]
    for at, value in edits:
        der[where[at % len(where)]] = value
    assume(bytes(der) != pki.alice.public_bytes(Encoding.DER))  # an edit may write the byte already there
    try:
        cert = _load(bytes(der))
    except crypto.Error:
        assume(False)
        return
    conn = registrar(pki)
    answer = register_with(
        lambda m: list(conn.handle(wire(m), T).messages), phone(pki).start(), cert, pki.key
    )
    assert answer.status in (400, 401, 403)
    assert conn.security_associations == ()


# --- the phone's TLS connection -------------------------------------------------------------------


def _serve_once(chain_pem: Path, key_pem: Path) -> tuple[socket.socket, threading.Thread]:
    """A TLS server on loopback presenting ``chain_pem``; handles one connection, then stops."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(chain_pem), str(key_pem))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(OSError):
            raw, _ = listener.accept()
            with raw, contextlib.suppress(OSError), ctx.wrap_socket(raw, server_side=True) as tls:
                tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_tls_connect_refuses_a_malformed_server_certificate_and_closes_the_socket(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain_pem = tmp_path / "chain.pem"
    bad = crypto.dump_certificate(crypto.FILETYPE_PEM, _load(malformed_der(pki.ca.web_cert)))
    chain_pem.write_bytes(bad + pki.ca.issuing.public_bytes(Encoding.PEM))
    listener, thread = _serve_once(chain_pem, pki.ca.tls_key_path)
    opened: list[socket.socket] = []
    real = socket.create_connection

    def spy(*args: object, **kwargs: object) -> socket.socket:
        sock = real(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(sock)
        return sock

    monkeypatch.setattr("agent.tlsconn.socket.create_connection", spy)
    port = listener.getsockname()[1]
    resolver = Resolver({POOL: "127.0.0.1"})
    try:
        with pytest.raises(StageError) as caught:
            tls_connect(TrustStore([pki.ca.root]), resolver, POOL, port, (), T, 5.0, Stage.REGISTER)
    finally:
        thread.join(timeout=5)
        listener.close()
    assert caught.value.stage is Stage.REGISTER and caught.value.code == "CHAIN_INVALID"
    assert "malformed certificate" in caught.value.detail
    assert len(opened) == 1 and opened[0].fileno() == -1  # closed


def test_refusal_quoting_a_hostile_issuer_name_is_still_a_403(pki: Pki) -> None:
    """The 4101 reason names the missing issuer; a control character in it must not break the 403."""
    rogue_key = generate_key(2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice@lab.test")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rogue\x01CA")]))
        .public_key(pki.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T - timedelta(days=1))
        .not_valid_after(T + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ALICE)]), critical=False)
        .sign(rogue_key, hashes.SHA256())
    )
    flow, conn = phone(pki, cert=cert), registrar(pki)
    with pytest.raises(StageError) as caught:
        exchange(flow, conn, flow.start(), T)
    assert caught.value.code == "4101" and "Rogue?CA" in caught.value.detail
