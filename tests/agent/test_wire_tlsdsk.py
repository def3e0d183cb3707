"""TLS-DSK handshake and keys (agent/wire/tlsdsk.py, protocol.md §8.2–8.4): both sides back to back."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL, crypto

from agent.stages import Stage
from agent.wire import tlsdsk
from agent.wire.sipsig import SecurityAssociation, SignedFields, sa_lifetime
from agent.wire.tlsdsk import (
    AES_SUITES,
    CIPHER_LIST,
    KEY_LABEL,
    RC4_AVAILABLE,
    DskKeys,
    TlsDskClient,
    TlsDskError,
    TlsDskServer,
    derive_keys,
    gssapi_decode,
    gssapi_encode,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:Passing pyOpenSSL:DeprecationWarning"  # hostile certificates only OpenSSL can load
)

# Certificates are valid around T, which is long past by the system clock: OpenSSL's own date check must
# not matter, only the injected-time checks below.
T = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POOL = "pool.lab.test"
AOR = "sip:alice@lab.test"


@dataclass(frozen=True)
class Pki:
    root: x509.Certificate
    issuing: x509.Certificate
    server_chain: tuple[x509.Certificate, ...]
    server_key: rsa.RSAPrivateKey
    client: x509.Certificate
    client_key: rsa.RSAPrivateKey
    rogue_chain: tuple[x509.Certificate, ...]
    rogue_key: rsa.RSAPrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    cn: str,
    key: rsa.RSAPrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
    eku: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T - timedelta(days=10))
        .not_valid_after(T + timedelta(days=180))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
        .add_extension(
            x509.KeyUsage(not ca, False, not ca, False, False, ca, ca, False, False), critical=True
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pki() -> Pki:
    root_key, issuing_key, server_key, client_key, rogue_key = (_key() for _ in range(5))
    root = _cert("Lab Root", root_key, None, root_key, ca=True)
    issuing = _cert("Lab Issuing CA", issuing_key, root, root_key, ca=True)
    server = _cert(
        POOL, server_key, issuing, issuing_key, san=[x509.DNSName(POOL)], eku=ExtendedKeyUsageOID.SERVER_AUTH
    )
    client = _cert(
        "alice",
        client_key,
        root,
        root_key,
        san=[x509.UniformResourceIdentifier(AOR)],
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    rogue_root = _cert("Rogue Root", rogue_key, None, rogue_key, ca=True)
    rogue = _cert(
        POOL, rogue_key, rogue_root, rogue_key, san=[x509.DNSName(POOL)], eku=ExtendedKeyUsageOID.SERVER_AUTH
    )
    return Pki(root, issuing, (server, issuing), server_key, client, client_key, (rogue,), rogue_key)


def _server_check(pki: Pki, seen: list[list[x509.Certificate]] | None = None) -> Callable[..., bool]:
    verifier = PolicyBuilder().store(Store([pki.root])).time(T).build_server_verifier(x509.DNSName(POOL))

    def check(chain: list[x509.Certificate]) -> bool:
        if seen is not None:
            seen.append(chain)
        try:
            verifier.verify(chain[0], chain[1:])
        except VerificationError:
            return False
        return True

    return check


def _client_check(pki: Pki, seen: list[list[x509.Certificate]] | None = None) -> Callable[..., str | None]:
    verifier = PolicyBuilder().store(Store([pki.root])).time(T).build_client_verifier()

    def check(chain: list[x509.Certificate]) -> str | None:
        if seen is not None:
            seen.append(chain)
        try:
            verified = verifier.verify(chain[0], chain[1:])
        except VerificationError:
            return "4101 CertUnknown"
        aors = verified.subjects or []
        return None if x509.UniformResourceIdentifier(AOR) in aors else "4103 AorMismatch"

    return check


def _client(pki: Pki, **kwargs: bool) -> TlsDskClient:
    return TlsDskClient(pki.client, pki.client_key, _server_check(pki), **kwargs)


def _server(pki: Pki, verify_client: Callable[..., str | None] | None = None) -> TlsDskServer:
    return TlsDskServer(pki.server_chain, pki.server_key, verify_client or _client_check(pki))


def _records(data: bytes) -> list[tuple[int, int | None]]:
    """(content type, first handshake message type for plaintext handshake records)."""
    out, at = [], 0
    while at < len(data):
        kind, length = data[at], int.from_bytes(data[at + 3 : at + 5], "big")
        out.append((kind, data[at + 5] if kind == 22 else None))
        at += 5 + length
    return out


def _handshake(client: TlsDskClient, server: TlsDskServer) -> tuple[DskKeys, list[bytes]]:
    a = client.hello()
    b = server.step(gssapi_decode(gssapi_encode(a)))
    c = client.step(b)
    d = server.step(c)
    return client.finish(d), [a, b, c, d]


# --- handshakes -----------------------------------------------------------------------------------


def test_tls12_handshake_gives_both_sides_the_same_keys(pki: Pki) -> None:
    client, server = _client(pki), _server(pki)
    keys, (a, b, c, d) = _handshake(client, server)
    assert server.done and server.keys == keys
    assert keys.client_sign != keys.server_sign
    assert len(keys.client_sign) == len(keys.server_sign) == 32
    assert (keys.protocol, keys.cipher_name, keys.mac) == ("TLSv1.2", AES_SUITES[0], "sha1")
    assert _records(a) == [(22, 1)]
    assert _records(b) == [(22, 2), (22, 11), (22, 13), (22, 14)]
    assert [kind for kind, _ in _records(c)] == [22, 22, 22, 20, 22]
    assert [first for _, first in _records(c)][:3] == [11, 16, 15]
    assert [kind for kind, _ in _records(d)] == [20, 22]


def test_every_handshake_has_fresh_keys(pki: Pki) -> None:
    first, _ = _handshake(_client(pki), _server(pki))
    second, _ = _handshake(_client(pki), _server(pki))
    assert first.client_sign != second.client_sign


def test_certificate_checks_see_the_presented_chains(pki: Pki) -> None:
    seen_by_client: list[list[x509.Certificate]] = []
    seen_by_server: list[list[x509.Certificate]] = []
    client = TlsDskClient(pki.client, pki.client_key, _server_check(pki, seen_by_client))
    server = _server(pki, _client_check(pki, seen_by_server))
    _handshake(client, server)
    assert seen_by_client == [list(pki.server_chain)]
    assert seen_by_server == [[pki.client]]
    assert client.server_chain == pki.server_chain
    assert server.client_chain == (pki.client,) and server.refusal is None


def test_keys_drive_a_security_association(pki: Pki) -> None:
    client_tls, server_tls = _client(pki), _server(pki)
    keys, _ = _handshake(client_tls, server_tls)
    lifetime = sa_lifetime(pki.client.not_valid_after_utc, T)
    phone = SecurityAssociation(keys, "3A1F0C2B", "client", T, lifetime)
    registrar = SecurityAssociation(server_tls.keys, "3A1F0C2B", "server", T, lifetime)
    fields = SignedFields(
        realm="SIP Communications Service",
        targetname=POOL,
        call_id="c1",
        cseq_num="4",
        cseq_method="REGISTER",
        from_uri=AOR,
        from_tag="t1",
        to_uri=AOR,
        expires="600",
    )
    rand, num, signature = phone.sign_outgoing(fields)
    registrar.verify_incoming(replace(fields, rand=rand, num=num), signature, T)


# --- TLS 1.0 (sipe and Lync Phone Edition) and the exporter ---------------------------------------


def _prf10(secret: bytes, seed: bytes, size: int) -> bytes:
    half = (len(secret) + 1) // 2
    return bytes(
        x ^ y
        for x, y in zip(
            _p_hash("md5", secret[:half], seed, size),
            _p_hash("sha1", secret[-half:], seed, size),
            strict=True,
        )
    )


def _p_hash(name: str, secret: bytes, seed: bytes, size: int) -> bytes:
    out, a = b"", seed
    while len(out) < size:
        a = hmac.digest(secret, a, name)
        out += hmac.digest(secret, a + seed, name)
    return out[:size]


def _expected_block(conn: SSL.Connection) -> bytes:
    """RFC 5705 without context, computed by hand from the master secret (MS-SIPAE 3.2.5.1)."""
    master, randoms = conn.master_key(), (conn.client_random() or b"") + (conn.server_random() or b"")
    assert master and len(randoms) == 64
    seed = KEY_LABEL + randoms
    if conn.get_protocol_version_name() == "TLSv1.2":
        return _p_hash("sha256", master, seed, 128)
    return _prf10(master, seed, 128)


def _raw(
    role: str,
    versions: tuple[int, int],
    cert: x509.Certificate | None = None,
    key: rsa.RSAPrivateKey | None = None,
    *,
    extra: x509.Certificate | None = None,
    request_cert: bool = True,
) -> SSL.Connection:
    """A plain OpenSSL peer with a fixed version range: pidgin-sipe (TLS 1.0 only), an old registrar."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(versions[0])
    ctx.set_max_proto_version(versions[1])
    ctx.set_cipher_list(b"AES256-SHA:AES128-SHA:@SECLEVEL=0")
    ctx.set_options(SSL.OP_NO_TICKET)
    if cert is not None and key is not None:
        ctx.use_certificate(cert)
        ctx.use_privatekey(key)
    if extra is not None:
        ctx.add_extra_chain_cert(extra)
    mode = SSL.VERIFY_PEER if role == "server" and request_cert else SSL.VERIFY_NONE
    ctx.set_verify(mode, lambda *_: True)
    conn = SSL.Connection(ctx, None)
    if role == "server":
        conn.set_accept_state()
    else:
        conn.set_connect_state()
    return conn


TLS10 = (SSL.TLS1_VERSION, SSL.TLS1_VERSION)
TLS11 = (SSL.TLS1_1_VERSION, SSL.TLS1_1_VERSION)
TLS12 = (SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION)


def _pump(conn: SSL.Connection, data: bytes | None) -> bytes:
    if data:
        conn.bio_write(data)
    with contextlib.suppress(SSL.WantReadError):
        conn.do_handshake()
    out = b""
    while True:
        try:
            out += conn.bio_read(65536)
        except SSL.WantReadError:
            return out


def test_tls10_client_like_sipe_gets_the_prf_keys(pki: Pki) -> None:
    sipe = _raw("client", TLS10, pki.client, pki.client_key)
    server = _server(pki)
    b = server.step(_pump(sipe, None))
    d = server.step(_pump(sipe, b))
    assert _pump(sipe, d) == b""
    assert server.keys.protocol == "TLSv1" and server.keys.cipher_name == "AES256-SHA"
    block = _expected_block(sipe)
    assert server.keys.client_sign == block[64:96] and server.keys.server_sign == block[96:128]
    assert derive_keys(sipe) == server.keys


def test_client_against_tls10_only_registrar(pki: Pki) -> None:
    registrar = _raw("server", TLS10, pki.server_chain[0], pki.server_key, extra=pki.issuing)
    client = _client(pki)
    c = client.step(_pump(registrar, client.hello()))
    keys = client.finish(_pump(registrar, c))
    assert keys.protocol == "TLSv1"
    assert keys == derive_keys(registrar)
    assert keys.client_sign == _expected_block(registrar)[64:96]


def test_tls12_keys_are_the_contextless_exporter(pki: Pki) -> None:
    sipe_like = _raw("client", TLS12, pki.client, pki.client_key)
    server = _server(pki)
    _pump(sipe_like, server.step(_pump(sipe_like, server.step(_pump(sipe_like, None)))))
    block = _expected_block(sipe_like)
    assert server.keys.client_sign == block[64:96] and server.keys.server_sign == block[96:128]
    # An empty context is use_context=1: different keys, which is why derive_keys passes None.
    assert sipe_like.export_keying_material(KEY_LABEL, 128, b"") != block


def test_tls10_needs_allow_tls10(pki: Pki) -> None:
    registrar = _raw("server", TLS10, pki.server_chain[0], pki.server_key)
    client = _client(pki, allow_tls10=False)
    with pytest.raises(TlsDskError) as caught:
        client.step(_pump(registrar, client.hello()))
    assert caught.value.code in ("TLS_HANDSHAKE", "TLS_STATE")


def test_registrar_never_answers_tls11(pki: Pki) -> None:
    """A 1.1-capable client gets a TLS 1.0 ServerHello (and, being able to do 1.1, then sees OpenSSL's
    downgrade sentinel and gives up: real phones and sipe are TLS 1.0 only)."""
    old = _raw("client", (SSL.TLS1_VERSION, SSL.TLS1_1_VERSION), pki.client, pki.client_key)
    b = _server(pki).step(_pump(old, None))
    assert _records(b)[0] == (22, 2)
    assert b[9:11] == b"\x03\x01"  # ServerHello.server_version


def test_client_refuses_a_tls11_registrar(pki: Pki) -> None:
    registrar = _raw("server", TLS11, pki.server_chain[0], pki.server_key, extra=pki.issuing)
    client = _client(pki)
    with pytest.raises(TlsDskError, match=r"TLS 1\.1") as caught:
        client.step(_pump(registrar, client.hello()))
    assert caught.value.code == "TLS_HANDSHAKE" and caught.value.stage is Stage.REGISTER


def test_cipher_list_follows_the_linked_openssl() -> None:
    assert CIPHER_LIST.startswith(b"AES128-SHA:AES256-SHA")
    assert CIPHER_LIST.endswith(b"@SECLEVEL=0")
    assert (b"RC4-MD5" in CIPHER_LIST) is RC4_AVAILABLE


def test_mac_is_md5_only_for_rc4_md5() -> None:
    assert DskKeys(b"", b"", "RC4-MD5").mac == "md5"
    assert DskKeys(b"", b"", "RC4-SHA").mac == "sha1"
    assert DskKeys(b"", b"", "AES256-SHA").mac == "sha1"


# --- refusals -------------------------------------------------------------------------------------


def test_server_refuses_a_client_without_certificate(pki: Pki) -> None:
    anonymous = _raw("client", TLS12)
    server = _server(pki)
    with pytest.raises(TlsDskError) as caught:
        server.step(_pump(anonymous, server.step(_pump(anonymous, None))))
    assert caught.value.code == "TLS_HANDSHAKE"
    assert "certificate" in caught.value.detail
    assert not server.done


def test_client_check_reason_is_kept_for_the_403(pki: Pki) -> None:
    client, server = _client(pki), _server(pki, lambda chain: "4103 AorMismatch")
    c = client.step(server.step(client.hello()))
    with pytest.raises(TlsDskError) as caught:
        server.step(c)
    assert (caught.value.code, caught.value.reason) == ("CLIENT_CERT_REFUSED", "4103 AorMismatch")
    assert "CN=alice" in str(caught.value) and "\n" not in str(caught.value)
    assert server.refusal == "4103 AorMismatch" and server.client_chain == (pki.client,)
    with pytest.raises(TlsDskError) as again:
        _ = server.keys
    assert again.value.code == "TLS_STATE"


def test_client_from_another_ca_is_refused(pki: Pki) -> None:
    client = TlsDskClient(pki.rogue_chain[0], pki.rogue_key, _server_check(pki))
    server = _server(pki)
    with pytest.raises(TlsDskError) as caught:
        server.step(client.step(server.step(client.hello())))
    assert caught.value.reason == "4101 CertUnknown"


def test_client_refuses_an_untrusted_server(pki: Pki) -> None:
    client = _client(pki)
    rogue = TlsDskServer(pki.rogue_chain, pki.rogue_key, _client_check(pki))
    b = rogue.step(client.hello())
    with pytest.raises(TlsDskError) as caught:
        client.step(b)
    assert caught.value.code == "SERVER_CERT_REFUSED" and caught.value.stage is Stage.REGISTER
    assert f"CN={POOL}" in caught.value.detail
    with pytest.raises(TlsDskError) as again:
        client.finish(b)
    assert again.value.code == "TLS_STATE"


@pytest.mark.filterwarnings("ignore:PKey.generate_key is deprecated:DeprecationWarning")
def test_weak_server_key_is_refused_even_if_the_check_would_pass(pki: Pki) -> None:
    legacy = crypto.PKey()
    legacy.generate_key(crypto.TYPE_RSA, 768)  # cryptography refuses to make keys this small
    weak_key = legacy.to_cryptography_key()
    assert isinstance(weak_key, rsa.RSAPrivateKey)
    weak = _cert(POOL, weak_key, None, weak_key)
    client = TlsDskClient(pki.client, pki.client_key, lambda chain: True)
    with pytest.raises(TlsDskError) as caught:
        client.step(TlsDskServer([weak], weak_key, lambda chain: None).step(client.hello()))
    assert caught.value.code == "SERVER_CERT_REFUSED" and "768 bits" in (caught.value.reason or "")


def test_server_without_certificate_request_is_refused(pki: Pki) -> None:
    registrar = _raw(
        "server", TLS12, pki.server_chain[0], pki.server_key, extra=pki.issuing, request_cert=False
    )
    client = _client(pki)
    with pytest.raises(TlsDskError, match="CertificateRequest"):
        client.step(_pump(registrar, client.hello()))


def test_a_failing_check_is_a_refusal_that_names_it_and_ends_the_handshake(pki: Pki) -> None:
    """A bug in the caller's check never counts as acceptance nor escapes as a foreign exception: it is a
    refusal whose reason names the exception."""

    def broken(chain: list[x509.Certificate]) -> bool:
        raise RuntimeError("trust store unreadable")

    client = TlsDskClient(pki.client, pki.client_key, broken)
    b = _server(pki).step(client.hello())
    with pytest.raises(TlsDskError) as refused:
        client.step(b)
    assert refused.value.code == "SERVER_CERT_REFUSED"
    assert refused.value.reason == "certificate check failed: RuntimeError: trust store unreadable"
    with pytest.raises(TlsDskError) as caught:
        client.finish(b)
    assert caught.value.code == "TLS_STATE"


def test_mismatched_key_is_a_value_error(pki: Pki) -> None:
    with pytest.raises(ValueError, match="does not match"):
        TlsDskClient(pki.client, pki.server_key, lambda chain: True)


# --- order of calls -------------------------------------------------------------------------------


def test_calls_out_of_order_are_refused(pki: Pki) -> None:
    client, server = _client(pki), _server(pki)
    with pytest.raises(TlsDskError) as caught:
        client.step(b"\x16\x03\x01\x00\x00")
    assert caught.value.code == "TLS_STATE"
    with pytest.raises(TlsDskError):
        client.finish(b"")
    a = client.hello()
    with pytest.raises(TlsDskError):
        client.hello()
    b = server.step(a)
    with pytest.raises(TlsDskError) as early:
        _ = server.keys
    assert early.value.code == "TLS_STATE"
    server.step(client.step(b))
    with pytest.raises(TlsDskError) as late:
        server.step(a)
    assert late.value.code == "TLS_STATE"


def test_keys_before_the_handshake_finished_are_refused(pki: Pki) -> None:
    with pytest.raises(TlsDskError) as caught:
        derive_keys(_raw("client", TLS12))
    assert caught.value.code == "TLS_STATE"


def test_server_flight_repeated_to_finish_is_refused(pki: Pki) -> None:
    client, server = _client(pki), _server(pki)
    b = server.step(client.hello())
    client.step(b)
    with pytest.raises(TlsDskError):
        client.finish(b)


# --- damaged input --------------------------------------------------------------------------------


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@pytest.mark.parametrize("where", [-1, -20, 60, 200])
def test_tampered_server_hello_flight_never_completes(pki: Pki, where: int) -> None:
    """Some bytes (a CA name, a signature algorithm) parse either way; the Finished MACs catch those."""
    client, server = _client(pki), _server(pki)
    b = server.step(client.hello())
    with pytest.raises(TlsDskError) as caught:
        client.finish(server.step(client.step(_flip(b, where % len(b)))))
    assert caught.value.code in ("GSSAPI_DATA", "TLS_HANDSHAKE", "SERVER_CERT_REFUSED", "TLS_STATE")
    assert not server.done


@pytest.mark.parametrize("where", [-1, -30, 20, 800])
def test_tampered_client_flight_is_refused(pki: Pki, where: int) -> None:
    client, server = _client(pki), _server(pki)
    c = client.step(server.step(client.hello()))
    with pytest.raises(TlsDskError) as caught:
        server.step(_flip(c, where % len(c)))
    assert caught.value.code in ("GSSAPI_DATA", "TLS_HANDSHAKE", "CLIENT_CERT_REFUSED", "TLS_STATE")
    assert not server.done


def test_tampered_finished_is_refused(pki: Pki) -> None:
    client, server = _client(pki), _server(pki)
    d = server.step(client.step(server.step(client.hello())))
    with pytest.raises(TlsDskError) as caught:
        client.finish(_flip(d, len(d) - 3))
    assert caught.value.code == "TLS_HANDSHAKE"
    assert "\n" not in caught.value.detail


def test_truncated_flight_is_named(pki: Pki) -> None:
    client, server = _client(pki), _server(pki)
    b = server.step(client.hello())
    with pytest.raises(TlsDskError, match="truncated TLS record") as caught:
        client.step(b[: len(b) // 2])
    assert caught.value.code == "GSSAPI_DATA"


def test_flight_cut_at_a_record_boundary_is_incomplete(pki: Pki) -> None:
    client, server = _client(pki), _server(pki)
    b = server.step(client.hello())
    first_record = 5 + int.from_bytes(b[3:5], "big")
    with pytest.raises(TlsDskError) as caught:
        client.step(b[:first_record])
    assert caught.value.code == "TLS_STATE"


@pytest.mark.parametrize("text", ["", "   ", "not base64!", "FgMBA", "FgMBAA==A", "é", "QQ" * 50_000])
def test_bad_gssapi_data_is_refused(text: str) -> None:
    with pytest.raises(TlsDskError) as caught:
        gssapi_decode(text)
    assert caught.value.code == "GSSAPI_DATA"


def test_gssapi_round_trip() -> None:
    data = bytes(range(256)) * 3
    text = gssapi_encode(data)
    assert "\n" not in text and gssapi_decode(text) == data


_FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_record_like = st.builds(
    lambda kind, body: bytes([kind, 3, 1]) + len(body).to_bytes(2, "big") + body,
    st.sampled_from([20, 21, 22, 23]),
    st.binary(max_size=300),
)


@_FUZZ
@given(data=st.binary(max_size=400) | st.lists(_record_like, min_size=1, max_size=4).map(b"".join))
def test_arbitrary_bytes_to_server_raise_only_the_typed_error(pki: Pki, data: bytes) -> None:
    server = TlsDskServer(pki.server_chain, pki.server_key, lambda chain: None)
    with pytest.raises(TlsDskError):
        server.step(data)


@_FUZZ
@given(data=st.binary(max_size=400) | st.lists(_record_like, min_size=1, max_size=4).map(b"".join))
def test_arbitrary_bytes_to_client_raise_only_the_typed_error(pki: Pki, data: bytes) -> None:
    client = TlsDskClient(pki.client, pki.client_key, lambda chain: True)
    client.hello()
    with pytest.raises(TlsDskError):
        client.step(data)


# --- hostile certificates: OpenSSL loads them, cryptography cannot parse them ---------------------


def malformed(cert: x509.Certificate, version: int = 3) -> crypto.X509:
    """``cert`` with its X.509 version INTEGER patched (3 = "v4"): OpenSSL loads it, cryptography refuses."""
    der = cert.public_bytes(Encoding.DER)
    at = der.index(b"\xa0\x03\x02\x01\x02")
    loaded = crypto.load_certificate(
        crypto.FILETYPE_ASN1, der[:at] + bytes([0xA0, 3, 2, 1, version]) + der[at + 5 :]
    )
    with pytest.raises(x509.InvalidVersion):
        loaded.to_cryptography()
    return loaded


def _hostile(
    role: str, cert: crypto.X509, key: rsa.RSAPrivateKey, extra: x509.Certificate | None = None
) -> SSL.Connection:
    """A plain OpenSSL peer presenting ``cert`` (TLS 1.2, RSA key exchange)."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(b"AES128-SHA:@SECLEVEL=0")
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.use_certificate(cert)
    ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
    if extra is not None:
        ctx.add_extra_chain_cert(extra)
    ctx.set_verify(SSL.VERIFY_PEER if role == "server" else SSL.VERIFY_NONE, lambda *_: True)
    conn = SSL.Connection(ctx, None)
    if role == "server":
        conn.set_accept_state()
    else:
        conn.set_connect_state()
    return conn


def _feed(conn: SSL.Connection, data: bytes | None) -> bytes:
    """Like _pump, but a failing hostile peer just stops talking (b"")."""
    try:
        return _pump(conn, data)
    except SSL.Error:
        return b""


def test_malformed_server_certificate_is_a_refusal(pki: Pki) -> None:
    registrar = _hostile("server", malformed(pki.server_chain[0]), pki.server_key, extra=pki.issuing)
    client = TlsDskClient(pki.client, pki.client_key, lambda chain: True)
    with pytest.raises(TlsDskError) as caught:
        client.step(_pump(registrar, client.hello()))
    assert caught.value.code == "SERVER_CERT_REFUSED"
    assert (caught.value.reason or "").startswith("malformed certificate: 3 is not a valid X509 version")


def test_malformed_client_certificate_is_a_refusal(pki: Pki) -> None:
    accepted: list[object] = []
    phone = _hostile("client", malformed(pki.client), pki.client_key)
    server = TlsDskServer(pki.server_chain, pki.server_key, lambda chain: accepted.append(chain))
    with pytest.raises(TlsDskError) as caught:
        server.step(_pump(phone, server.step(_pump(phone, None))))
    assert caught.value.code == "CLIENT_CERT_REFUSED" and not server.done and accepted == []
    assert (caught.value.reason or "").startswith("malformed certificate:")
    assert server.refusal == caught.value.reason


def test_client_goes_no_further_unless_the_check_ran(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """If OpenSSL never asked the check for its final verdict, flight C must not go out."""
    monkeypatch.setattr(tlsdsk._PeerCheck, "callback", lambda self, *args: True)
    client = _client(pki)
    b = TlsDskServer(pki.server_chain, pki.server_key, lambda chain: None).step(client.hello())
    with pytest.raises(TlsDskError) as caught:
        client.step(b)
    assert caught.value.code == "SERVER_CERT_REFUSED" and "never checked" in caught.value.detail
    with pytest.raises(TlsDskError):
        client.finish(b)


def test_server_goes_no_further_unless_the_check_ran(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tlsdsk._PeerCheck, "callback", lambda self, *args: True)
    phone = _raw("client", TLS12, pki.client, pki.client_key)
    server = _server(pki)
    with pytest.raises(TlsDskError) as caught:
        server.step(_pump(phone, server.step(_pump(phone, None))))
    assert caught.value.code == "CLIENT_CERT_REFUSED" and not server.done


_edits = st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=3)


def _mutated(cert: x509.Certificate, edits: list[tuple[int, int]]) -> crypto.X509:
    """``cert`` with a few bytes of its TBSCertificate replaced (the public key left alone, so the peer's
    key still fits and the handshake gets as far as the certificate check), if OpenSSL still loads it."""
    der = bytearray(cert.public_bytes(Encoding.DER))
    tbs = cert.tbs_certificate_bytes
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    at_tbs, at_key = der.index(tbs), der.index(spki)
    where = [i for i in range(at_tbs, at_tbs + len(tbs)) if not at_key <= i < at_key + len(spki)]
    for at, value in edits:
        der[where[at % len(where)]] = value
    try:
        return crypto.load_certificate(crypto.FILETYPE_ASN1, bytes(der))
    except crypto.Error:
        assume(False)
        raise


@_FUZZ
@given(edits=_edits)
def test_hostile_server_certificates_raise_only_the_typed_error(
    pki: Pki, edits: list[tuple[int, int]]
) -> None:
    cert = _mutated(pki.server_chain[0], edits)
    try:
        registrar = _hostile("server", cert, pki.server_key, extra=pki.issuing)
    except SSL.Error:
        assume(False)
        return
    client = TlsDskClient(pki.client, pki.client_key, lambda chain: True)
    with contextlib.suppress(TlsDskError):
        client.finish(_feed(registrar, client.step(_feed(registrar, client.hello()))))


@_FUZZ
@given(edits=_edits)
def test_hostile_client_certificates_raise_only_the_typed_error(
    pki: Pki, edits: list[tuple[int, int]]
) -> None:
    cert = _mutated(pki.client, edits)
    try:
        phone = _hostile("client", cert, pki.client_key)
    except SSL.Error:
        assume(False)
        return
    server = _server(pki)
    with contextlib.suppress(TlsDskError):
        server.step(_feed(phone, server.step(_feed(phone, None))))
        assert server.client_chain[0].public_bytes(Encoding.DER) == crypto.dump_certificate(
            crypto.FILETYPE_ASN1, cert
        )
