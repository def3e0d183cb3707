"""Stage ROOT_CHAIN: download the Web Services chain anonymously, then prove the HTTPS server chains to a root
the phone shipped with.

The downloaded certificates only ever supply intermediates; anchors are the shipped roots (failure 3 of
design.md §1 is precisely "no path to a shipped root"). The first HTTPS handshake is verified by
:class:`agent.truststore.TrustStore` — cryptography's path builder at the phone's synchronised time — from
inside OpenSSL's verify callback, so verification is never off and a failure names the missing issuer.
Later HTTPS requests trust the shipped roots plus exactly the intermediates validated here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.net import HttpsTrust, PhoneHttp, Resolver
from agent.stages import Stage, StageError, WireError
from agent.tlsconn import tls_connect
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
    """The first HTTPS handshake: judged by ``store``; the connection itself is not needed afterwards."""
    channel = tls_connect(store, resolver, host, port, extra_intermediates, at, timeout_s, Stage.ROOT_CHAIN)
    channel.close()
    return channel.chain
