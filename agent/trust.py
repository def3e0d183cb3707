"""Stage ROOT_CHAIN: download the Web Services chain anonymously, then prove the HTTPS server chains to a root
the phone shipped with.

The downloaded certificates only ever supply intermediates; anchors are the shipped roots (failure 3 of
design.md §1 is precisely "no path to a shipped root"). The first HTTPS handshake is verified by
:class:`agent.truststore.TrustStore` — cryptography's path builder at the phone's synchronised time — from
inside OpenSSL's verify callback, so verification is never off and a failure names the missing issuer.
Later HTTPS requests trust the shipped roots plus exactly the intermediates validated here.
"""

from __future__ import annotations

import contextlib
import select
import socket
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from agent.net import HttpsTrust, PhoneHttp, Resolver
from agent.stages import AgentError, Stage, StageError, WireError
from agent.truststore import TrustStore, ValidatedChain
from agent.wire import pkcs7

ROOTCHAIN_SUFFIX = "/rootchain"


@dataclass(frozen=True)
class TrustResult:
    downloaded: tuple[x509.Certificate, ...]
    validated: ValidatedChain
    bundle_pem: bytes

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        return self.validated.intermediates

    def https_trust(self, phone_now: datetime) -> HttpsTrust:
        return HttpsTrust.after_root_chain(
            self.bundle_pem, self.validated.leaf.public_bytes(Encoding.DER), phone_now
        )


def rootchain_url(certprov_url: str, anon_port: int = 80) -> str:
    """The anonymous CertProv URL (plain HTTP) with ``/rootchain`` appended (protocol.md §5)."""
    parts = urlsplit(certprov_url)
    host = parts.hostname or ""
    netloc = host if anon_port == 80 else f"{host}:{anon_port}"
    return urlunsplit(("http", netloc, parts.path.rstrip("/") + ROOTCHAIN_SUFFIX, "", ""))


def download_chain(http: PhoneHttp, url: str) -> tuple[x509.Certificate, ...]:
    """GET the certs-only PKCS#7; any HTTP or body problem is ROOT_CHAIN_DOWNLOAD."""
    stage, code = Stage.ROOT_CHAIN, "ROOT_CHAIN_DOWNLOAD"
    reply = http.request("GET", url, stage, code=code)
    if reply.status != 200:
        raise StageError(stage, code, f"Error downloading certificate chain from {url}: HTTP {reply.status}")
    try:
        return pkcs7.decode_certs_only(reply.body)
    except WireError as exc:
        raise StageError(
            stage, code, f"Error downloading certificate chain from {url}: {exc.detail}"
        ) from None


def establish_trust(
    store: TrustStore,
    http: PhoneHttp,
    certprov_url: str,
    at: datetime,
    anon_port: int = 80,
    timeout_s: float = 10.0,
) -> TrustResult:
    """Run stage ROOT_CHAIN and return what later HTTPS requests may trust."""
    downloaded = download_chain(http, rootchain_url(certprov_url, anon_port))
    parts = urlsplit(certprov_url)
    host, port = parts.hostname or "", parts.port or 443
    validated = verify_https_server(store, http.resolver, host, port, downloaded, at, timeout_s)
    bundle = b"".join(c.public_bytes(Encoding.PEM) for c in (*store.anchors, *validated.intermediates))
    return TrustResult(downloaded, validated, bundle)


def verify_https_server(
    store: TrustStore,
    resolver: Resolver,
    host: str,
    port: int,
    extra_intermediates: tuple[x509.Certificate, ...],
    at: datetime,
    timeout_s: float,
) -> ValidatedChain:
    """Handshake with the server; its chain is judged by ``store`` from OpenSSL's verify callback."""
    verdict = _Verdict(store, host, extra_intermediates, at)
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_verify(SSL.VERIFY_PEER, verdict.callback)
    try:
        address = resolver.resolve(host)
        sock = socket.create_connection((address, port), timeout=timeout_s)
    except OSError as exc:
        raise StageError(Stage.ROOT_CHAIN, "TLS", f"cannot reach {host}:{port}: {exc}") from None
    conn = SSL.Connection(ctx, sock)
    try:
        conn.set_tlsext_host_name(host.encode("idna"))
        conn.set_connect_state()
        _handshake(conn, sock, timeout_s)
    except (SSL.Error, OSError) as exc:
        if verdict.error is not None:
            raise verdict.error from None
        why = str(exc) or type(exc).__name__
        raise StageError(Stage.ROOT_CHAIN, "TLS", f"TLS handshake with {host}:{port} failed: {why}") from None
    finally:
        _close(conn, sock)
    if verdict.chain is None:
        raise verdict.error or StageError(Stage.ROOT_CHAIN, "TLS", f"{host}:{port} presented no certificate")
    return verdict.chain


class _Verdict:
    """Decides once per handshake (OpenSSL calls back once per depth) and remembers why."""

    def __init__(
        self, store: TrustStore, host: str, extra: tuple[x509.Certificate, ...], at: datetime
    ) -> None:
        self.store, self.host, self.extra, self.at = store, host, extra, at
        self.chain: ValidatedChain | None = None
        self.error: AgentError | None = None
        self._decided = False

    def callback(self, conn: SSL.Connection, _cert: object, _errno: int, _depth: int, _ok: int) -> bool:
        if not self._decided:
            self._decided = True
            presented = conn.get_peer_cert_chain(as_cryptography=True) or []
            if not presented:
                self.error = StageError(Stage.ROOT_CHAIN, "TLS", f"{self.host} presented no certificate")
            else:
                try:
                    pool = (*presented[1:], *self.extra)
                    self.chain = self.store.verify_server(presented[0], pool, self.host, self.at)
                except AgentError as exc:
                    self.error = exc
        return self.chain is not None


def _handshake(conn: SSL.Connection, sock: socket.socket, timeout_s: float) -> None:
    """Drive the handshake on the (non-blocking, since it has a timeout) socket, waiting at most timeout_s
    for each step; a silent server is a TimeoutError, not a hang."""
    while True:
        try:
            conn.do_handshake()
            return
        except SSL.WantReadError:
            ready = select.select([sock], [], [], timeout_s)[0]
        except SSL.WantWriteError:
            ready = select.select([], [sock], [], timeout_s)[1]
        if not ready:
            raise TimeoutError(f"no TLS answer within {timeout_s:g} s")


def _close(conn: SSL.Connection, sock: socket.socket) -> None:
    with contextlib.suppress(SSL.Error, OSError):
        conn.shutdown()
    sock.close()
