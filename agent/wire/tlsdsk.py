"""TLS-DSK handshake and keys (protocol.md §8.2–8.4, MS-SIPAE): real TLS carried in SIP ``gssapi-data``.

The handshake is OpenSSL's, run over memory BIOs: raw TLS records go in and out as bytes and the SIP layer
base64s them into ``gssapi-data`` (:func:`gssapi_encode`). Nothing here touches a socket or the clock.

Flights (§8.2): A/B ClientHello → ServerHello, Certificate, CertificateRequest, ServerHelloDone; C client
Certificate, ClientKeyExchange, CertificateVerify, ChangeCipherSpec, Finished → ChangeCipherSpec, Finished.
Session tickets, resumption and renegotiation are off so that every SA runs exactly these flights.

Versions and suites (§8.3), as measured with cryptography 50.0.2 / pyOpenSSL 26.4.0 (OpenSSL 4.0.3):
TLS 1.0 still negotiates, but only at ``@SECLEVEL=0`` (otherwise "no protocols available"); TLS 1.1 is
excluded (see :func:`_context`); TLS 1.2 uses the same RSA-key-exchange AES-CBC-SHA suites. RC4 is no
longer compiled in ("no cipher match"), so :data:`RC4_AVAILABLE` is False there and the RC4 suites are
offered only where the linked OpenSSL still has them. Security level 0 also drops OpenSSL's key-size
checks, hence :data:`MIN_RSA_BITS`.

Certificate checks are the caller's, run from inside OpenSSL's verify callback: OpenSSL's own verdict
(system clock, empty trust store) is ignored, and the caller's verdict is final. The client gets the chain
exactly as presented; on the server OpenSSL exposes no presented chain during verification, so the server
check gets the chain OpenSSL built from what the client sent (leaf first). A certificate OpenSSL accepts but
cryptography cannot parse (e.g. X.509 version field 3), or a check that raises, is a refusal, never an
exception out of the handshake; and neither side goes on unless the check ran and accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL, crypto

from agent.stages import X509_ERRORS, one_line
from agent.wire.dskrecords import TlsDskError as TlsDskError
from agent.wire.dskrecords import check_records, gssapi_decode, gssapi_encode

__all__ = [
    "CIPHER_LIST",
    "KEY_LABEL",
    "RC4_AVAILABLE",
    "DskKeys",
    "TlsDskClient",
    "TlsDskError",
    "TlsDskServer",
    "derive_keys",
    "gssapi_decode",
    "gssapi_encode",
]

#: RFC 5705 exporter label of MS-SIPAE 3.2.5.1 (the EAP-TLS label), used with *no* context.
KEY_LABEL = b"client EAP encryption"
KEY_BLOCK_BYTES = 128
_CLIENT_KEY = slice(64, 96)
_SERVER_KEY = slice(96, 128)

AES_SUITES = ("AES128-SHA", "AES256-SHA")  # TLS_RSA_WITH_AES_128_CBC_SHA 0x002F, _AES_256_CBC_SHA 0x0035
RC4_SUITES = ("RC4-MD5", "RC4-SHA")  # 0x0004, 0x0005: legacy peers only
MIN_RSA_BITS = 1024
_HANDSHAKE, _CERTIFICATE = 22, 11


def _probe_rc4() -> bool:
    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(":".join(RC4_SUITES).encode() + b":@SECLEVEL=0")
    except SSL.Error:
        return False
    return True


RC4_AVAILABLE = _probe_rc4()
CIPHER_LIST = ":".join(AES_SUITES + (RC4_SUITES if RC4_AVAILABLE else ())).encode() + b":@SECLEVEL=0"


@dataclass(frozen=True, repr=False)
class DskKeys:
    """The two signing keys of one SA, and the suite that decides the MAC (HMAC-MD5 only for RC4-MD5)."""

    client_sign: bytes
    server_sign: bytes
    cipher_name: str
    protocol: str = ""

    @property
    def mac(self) -> Literal["sha1", "md5"]:
        name = self.cipher_name.upper()
        return "md5" if "RC4" in name and name.endswith("MD5") else "sha1"

    def __repr__(self) -> str:
        return f"DskKeys(cipher_name={self.cipher_name!r}, protocol={self.protocol!r}, keys=<hidden>)"


def derive_keys(conn: SSL.Connection) -> DskKeys:
    """Signing keys of a finished TLS 1.0–1.2 handshake: bytes 64–95 (client) and 96–127 (server) of
    ``PRF(master_secret, KEY_LABEL, client_random ‖ server_random)``.

    pyOpenSSL passes ``use_context=0`` to ``SSL_export_keying_material`` when ``context`` is None, which is
    exactly that PRF (the seed carries no context length); any context, even empty, would change the keys.
    """
    version = conn.get_protocol_version_name()
    if conn.get_finished() is None or conn.get_peer_finished() is None:
        raise TlsDskError("TLS_STATE", "TLS-DSK keys asked for before the handshake finished")
    if version not in ("TLSv1", "TLSv1.1", "TLSv1.2"):
        raise TlsDskError("TLS_HANDSHAKE", f"TLS-DSK needs TLS 1.0-1.2 keying material, not {version}")
    block = conn.export_keying_material(KEY_LABEL, KEY_BLOCK_BYTES, None)
    return DskKeys(block[_CLIENT_KEY], block[_SERVER_KEY], conn.get_cipher_name() or "", version)


def _one_line(exc: SSL.Error) -> str:
    """OpenSSL's reasons ("wrong version number; ...") instead of pyOpenSSL's list-of-tuples repr."""
    queue = exc.args[0] if exc.args else None
    if isinstance(queue, list):
        reasons = [str(entry[-1]) for entry in queue if isinstance(entry, tuple) and entry and entry[-1]]
        if reasons:
            return "; ".join(reasons)
    return " ".join(str(exc).split()) or type(exc).__name__


class _PeerCheck:
    """Runs the caller's certificate check once per handshake, from OpenSSL's verify callback.

    OpenSSL calls back per chain depth, top first, then finally for the leaf with ``ok=1``; earlier calls
    report OpenSSL's own errors (no local issuer, dates by the system clock), which are the caller's
    business, so they pass provisionally and the decision is taken at that final leaf call. Nothing raised
    in here may escape: pyOpenSSL would re-raise it from ``do_handshake`` as a foreign exception.
    """

    def __init__(self, decide: Callable[[list[x509.Certificate]], str | None]) -> None:
        self._decide = decide
        self._by_depth: dict[int, x509.Certificate] = {}
        self.ran = False
        self.refusal: str | None = None
        self.chain: tuple[x509.Certificate, ...] = ()

    def callback(self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if self.ran:
            return self.refusal is None
        try:
            self._by_depth[depth] = cert.to_cryptography()
            if depth != 0 or not ok:
                return True
            presented = conn.get_peer_cert_chain(as_cryptography=True)
            chain = list(presented) if presented else [self._by_depth[d] for d in sorted(self._by_depth)]
            self.chain = tuple(chain)
            self.refusal = _weak_key(chain[0]) or self._decide(chain)
        except X509_ERRORS as exc:
            self.refusal = f"malformed certificate: {one_line(exc, 120)}"
        except Exception as exc:  # a failing check is a refusal that names the failure, never acceptance
            self.refusal = f"certificate check failed: {type(exc).__name__}: {one_line(exc, 120)}"
        self.ran = True
        return self.refusal is None

    def refused(self, code: str) -> TlsDskError:
        """The refusal as an error naming the judged leaf ("?" when none was judged or it does not render)."""
        try:
            subject = self.chain[0].subject.rfc4514_string() if self.chain else "?"
        except X509_ERRORS:
            subject = "?"
        return TlsDskError(code, f"certificate {subject} refused: {self.refusal}", self.refusal)


def _weak_key(leaf: x509.Certificate) -> str | None:
    key = leaf.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return f"RSA key of {key.key_size} bits is below {MIN_RSA_BITS}"
    return None


def _context(allow_tls10: bool, server: bool) -> SSL.Context:
    """TLS 1.0 (if allowed) or 1.2, never 1.1. OpenSSL treats a disabled middle version as the *end* of a
    client's range (min 1.0 + no 1.1 offers 1.0 only), so only the server disables 1.1 (it then falls
    back to 1.0 for a 1.1 client) and the client refuses a 1.1 ServerHello itself."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_VERSION if allow_tls10 else SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(CIPHER_LIST)
    no_tls11 = SSL.OP_NO_TLSv1_1 if server else 0
    ctx.set_options(no_tls11 | SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return ctx


def _load_identity(ctx: SSL.Context, chain: Sequence[x509.Certificate], key: rsa.RSAPrivateKey) -> None:
    if not chain:
        raise ValueError("a TLS-DSK endpoint needs its certificate")
    ctx.use_certificate(chain[0])
    for extra in chain[1:]:
        ctx.add_extra_chain_cert(extra)
    try:
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except SSL.Error:
        raise ValueError("the private key does not match the certificate") from None


class _Endpoint:
    """One side of the handshake over memory BIOs: records in, records out, failures as TlsDskError."""

    _refusal_code = "TLS_HANDSHAKE"

    def __init__(self, ctx: SSL.Context, check: _PeerCheck) -> None:
        self._check = check
        self._conn = SSL.Connection(ctx, None)
        self._failed = False

    def _run(self, records: bytes | None) -> tuple[bool, bytes]:
        """Feed a flight, advance the handshake; (finished?, the records to send back)."""
        if self._failed:
            raise TlsDskError("TLS_STATE", "this TLS-DSK handshake already failed; restart at REGISTER A")
        if records is not None:
            check_records(records)
        self._failed = True  # until proven otherwise: a callback exception must not leave a live state
        try:
            if records is not None:
                self._conn.bio_write(records)
            self._conn.do_handshake()
            done = True
        except SSL.WantReadError:
            done = False
        except SSL.Error as exc:
            raise self._error(_one_line(exc)) from None
        except Exception as exc:  # re-raised by pyOpenSSL from a callback: still this handshake's failure
            raise self._error(f"{type(exc).__name__}: {one_line(exc, 120)}") from None
        self._failed = False
        return done, self._drain()

    def _drain(self) -> bytes:
        out = bytearray()
        while True:
            try:
                out += self._conn.bio_read(65536)
            except SSL.WantReadError:
                return bytes(out)

    def _error(self, why: str) -> TlsDskError:
        if self._check.refusal is not None:
            return self._check.refused(self._refusal_code)
        return TlsDskError("TLS_HANDSHAKE", f"TLS handshake failed: {why}")

    def _require_accepted(self, who: str) -> None:
        """Go no further unless the certificate check ran and accepted (OpenSSL must have asked it)."""
        if not self._check.ran or self._check.refusal is not None:
            self._failed = True
            if self._check.refusal is not None:
                raise self._check.refused(self._refusal_code)
            raise TlsDskError(self._refusal_code, f"{who} certificate was never checked")

    def _fail(self, code: str, detail: str) -> TlsDskError:
        self._failed = True
        return TlsDskError(code, detail)

    @property
    def protocol(self) -> str:
        """Negotiated version name ("TLSv1", "TLSv1.2"), once known."""
        return self._conn.get_protocol_version_name()


class TlsDskClient(_Endpoint):
    """The phone's side: :meth:`hello` (flight A/B), :meth:`step` (flight C), :meth:`finish` (keys)."""

    _refusal_code = "SERVER_CERT_REFUSED"

    def __init__(
        self,
        cert: x509.Certificate,
        key: rsa.RSAPrivateKey,
        verify_server: Callable[[list[x509.Certificate]], bool],
        allow_tls10: bool = True,
    ) -> None:
        def decide(chain: list[x509.Certificate]) -> str | None:
            return None if verify_server(chain) else "the registrar's chain failed the trust check"

        ctx = _context(allow_tls10, server=False)
        _load_identity(ctx, [cert], key)
        check = _PeerCheck(decide)
        ctx.set_verify(SSL.VERIFY_PEER, check.callback)
        super().__init__(ctx, check)
        self._conn.set_connect_state()
        self._phase = "new"

    def _expect(self, phase: str, what: str) -> None:
        if self._phase != phase:
            raise TlsDskError("TLS_STATE", f"{what} called out of order (handshake is at {self._phase!r})")

    def hello(self) -> bytes:
        """The ClientHello records (REGISTER B)."""
        self._expect("new", "hello()")
        _, out = self._run(None)
        self._phase = "hello"
        return out

    def step(self, server_records: bytes) -> bytes:
        """Takes ServerHello..ServerHelloDone; returns Certificate..Finished (REGISTER C)."""
        self._expect("hello", "step()")
        done, out = self._run(server_records)
        if done or not out:
            raise self._fail("TLS_STATE", "the registrar's ServerHello flight is incomplete or out of place")
        if self.protocol == "TLSv1.1":
            raise self._fail("TLS_HANDSHAKE", "the registrar chose TLS 1.1; TLS-DSK here is TLS 1.0 or 1.2")
        if out[0] != _HANDSHAKE or out[5] != _CERTIFICATE:
            raise self._fail("TLS_HANDSHAKE", "the registrar sent no CertificateRequest; TLS-DSK needs one")
        self._require_accepted("the registrar's")
        self._phase = "finished"
        return out

    def finish(self, server_records: bytes) -> DskKeys:
        """Takes ChangeCipherSpec+Finished; checks the handshake completed and returns the SA keys."""
        self._expect("finished", "finish()")
        done, out = self._run(server_records)
        if not done or out:
            raise self._fail("TLS_STATE", "the registrar's Finished flight did not complete the handshake")
        self._require_accepted("the registrar's")
        self._phase = "done"
        return derive_keys(self._conn)

    @property
    def server_chain(self) -> tuple[x509.Certificate, ...]:
        """The chain the registrar presented (what ``verify_server`` judged)."""
        return self._check.chain


class TlsDskServer(_Endpoint):
    """The registrar's side: :meth:`step` answers flight B and flight C; then :attr:`keys`."""

    _refusal_code = "CLIENT_CERT_REFUSED"

    def __init__(
        self,
        cert_chain: Sequence[x509.Certificate],
        key: rsa.RSAPrivateKey,
        verify_client: Callable[[list[x509.Certificate]], str | None],
        allow_tls10: bool = True,
    ) -> None:
        ctx = _context(allow_tls10, server=True)
        _load_identity(ctx, cert_chain, key)
        check = _PeerCheck(verify_client)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, check.callback)
        super().__init__(ctx, check)
        self._conn.set_accept_state()
        self._flights = 0
        self._keys: DskKeys | None = None

    def step(self, client_records: bytes) -> bytes:
        """ClientHello → ServerHello..ServerHelloDone; client flight C → ChangeCipherSpec+Finished."""
        if self._keys is not None:
            raise TlsDskError("TLS_STATE", "the TLS-DSK handshake is already complete")
        done, out = self._run(client_records)
        self._flights += 1
        if self._flights == 1 and (done or not out):
            raise self._fail("TLS_STATE", "the phone's first flight is not a complete ClientHello")
        if self._flights == 2:
            if not done or not out:
                raise self._fail("TLS_STATE", "the phone's flight C did not complete the handshake")
            self._require_accepted("the phone's")
            self._keys = derive_keys(self._conn)
        return out

    @property
    def done(self) -> bool:
        return self._keys is not None

    @property
    def keys(self) -> DskKeys:
        if self._keys is None:
            raise TlsDskError("TLS_STATE", "TLS-DSK keys asked for before the handshake finished")
        return self._keys

    @property
    def client_chain(self) -> tuple[x509.Certificate, ...]:
        """The phone's chain as OpenSSL built it from what was sent (leaf first), as judged."""
        return self._check.chain

    @property
    def refusal(self) -> str | None:
        """``verify_client``'s reason for refusing, kept for the registrar's 403."""
        return self._check.refusal
