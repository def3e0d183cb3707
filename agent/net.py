"""The phone's transports: name resolution, HTTP(S) with the phone's own trust, and UDP.

A phone resolves names itself (DHCP-given DNS servers or a static hosts table) and verifies TLS against the
roots it shipped with plus the intermediates that stage ROOT_CHAIN validated — never the host's CA bundle.
The HTTP client connects to the resolved address while sending SNI and checking the certificate for the
FQDN, exactly what a device with its own resolver does.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from agent import trace
from agent.dns import Dns
from agent.stages import Stage, StageError

MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Resolver:
    """Static hosts first (like /etc/hosts on the device image), then the DHCP-given DNS servers, then the
    system resolver."""

    hosts: Mapping[str, str] = field(default_factory=dict)
    dns: Dns | None = None

    def resolve(self, name: str) -> str:
        key = name.rstrip(".").lower()
        if key in self.hosts:
            return self.hosts[key]
        try:
            ipaddress.ip_address(key)
            return key
        except ValueError:
            pass
        if self.dns is not None:
            found = self.dns.address(key)
            if found is None:
                raise OSError(f"cannot resolve {name}: no A record at {', '.join(self.dns.nameservers)}")
            return found
        try:
            infos = socket.getaddrinfo(key, None, socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            raise OSError(f"cannot resolve {name}: {exc}") from exc
        return str(infos[0][4][0])


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class _ResolvingAdapter(HTTPAdapter):
    """Connects to the resolved address; SNI, Host and certificate checks stay on the URL's FQDN."""

    def __init__(self, resolver: Resolver, context: ssl.SSLContext | None, pin_sha256: str | None) -> None:
        self._resolver = resolver
        self._context = context
        self._pin = pin_sha256
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(  # type: ignore[override]
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        # The stubs type these as closed TypedDicts; urllib3 accepts server_hostname/assert_hostname too.
        host, kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        host_params: dict[str, Any] = dict(host)
        pool_kwargs: dict[str, Any] = dict(kwargs)
        fqdn = str(host_params["host"])
        host_params["host"] = self._resolver.resolve(fqdn)
        if host_params["scheme"] == "https":
            if self._context is None:
                raise requests.exceptions.SSLError("no trust established yet for HTTPS (stage ROOT_CHAIN)")
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
            pool_kwargs["ssl_context"] = self._context
            pool_kwargs["server_hostname"] = fqdn
            pool_kwargs["assert_hostname"] = fqdn
            if self._pin:
                pool_kwargs["assert_fingerprint"] = self._pin
        return host_params, pool_kwargs


MAX_SYSTEM_SKEW_S = 60.0
X509_V_FLAG_NO_CHECK_TIME = 0x200000  # OpenSSL: leave validity dates to the caller


@dataclass(frozen=True)
class HttpsTrust:
    """What HTTPS after stage ROOT_CHAIN trusts: the shipped roots plus the validated intermediates.

    OpenSSL checks dates against the *system* clock. When the phone's SNTP-corrected clock disagrees with it
    (a Pi without RTC before boot/ sets the clock), the dates are instead those cryptography checked at the
    corrected time in ROOT_CHAIN, and connections are pinned to exactly the leaf validated there: chain,
    name and key are still verified by OpenSSL on every connection.
    """

    bundle_pem: bytes
    leaf_sha256: str | None = None

    @classmethod
    def after_root_chain(cls, bundle_pem: bytes, leaf_der: bytes, phone_now: datetime) -> HttpsTrust:
        """Pin only when the system clock (OpenSSL's) is off the phone's corrected clock by more than 60 s."""
        skew = abs((phone_now - datetime.now(UTC)).total_seconds())
        return cls(bundle_pem, hashlib.sha256(leaf_der).hexdigest() if skew > MAX_SYSTEM_SKEW_S else None)

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.bundle_pem.decode("ascii"))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.leaf_sha256:
            ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
        return ctx


class PhoneHttp:
    """HTTP(S) for the phone's stages: bounded bodies, timeouts, and failures mapped to the caller's stage."""

    def __init__(self, resolver: Resolver, timeout_s: float = 10.0, trust: HttpsTrust | None = None) -> None:
        self.resolver = resolver
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._session.trust_env = False  # a phone has no proxy settings from a login shell
        self.set_trust(trust)

    def set_resolver(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.set_trust(self._trust)

    def set_trust(self, trust: HttpsTrust | None) -> None:
        self._trust = trust
        context = trust.context() if trust else None
        adapter = _ResolvingAdapter(self.resolver, context, trust.leaf_sha256 if trust else None)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def close(self) -> None:
        self._session.close()

    def request(
        self,
        method: str,
        url: str,
        stage: Stage,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        code: str = "HTTP",
    ) -> HttpReply:
        """One request; transport errors become StageError(stage, code) with a one-line reason."""
        if trace.active():
            action = (headers or {}).get("SOAPAction", "")
            trace.emit(
                stage, "sent", _origin(url), f"{method} {urlsplit(url).path} {action}", len(body or b"")
            )
        try:
            with self._session.request(
                method,
                url,
                data=body,
                headers=dict(headers or {}),
                timeout=self.timeout_s,
                stream=True,
                allow_redirects=False,  # a redirect could lead a PIN off the verified host
            ) as resp:
                data = _read_bounded(resp, stage, url)
                hdrs = {k.lower(): v for k, v in resp.headers.items()}
                trace.emit(
                    stage,
                    "received",
                    _origin(url),
                    f"HTTP {resp.status_code} {hdrs.get('content-type', '')}",
                    len(data),
                )
                return HttpReply(resp.status_code, hdrs, data)
        except requests.exceptions.SSLError as exc:
            raise StageError(stage, "TLS", f"TLS to {_origin(url)} failed: {_reason(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise StageError(stage, code, f"{method} {url} failed: {_reason(exc)}") from None
        except OSError as exc:
            raise StageError(stage, code, f"{method} {url} failed: {exc}") from None


def require_https(url: str, stage: Stage, what: str) -> str:
    """PINs, tickets and CSRs only ever travel over verified TLS: any other scheme fails the stage."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise StageError(stage, "INSECURE_URL", f"{what} {url!r} is not an https:// URL; refused")
    return url


def _read_bounded(resp: requests.Response, stage: Stage, url: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_content(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise StageError(stage, "HTTP", f"{url} answered more than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def _reason(exc: BaseException) -> str:
    """The innermost useful message of a requests/urllib3 exception chain, on one line."""
    seen = exc
    while True:
        inner = seen.__context__ or seen.__cause__
        if inner is None or inner is seen:
            break
        seen = inner
    for candidate in (seen, exc):
        text = " ".join(str(candidate).split())
        if text:
            return text[:300]
    return type(exc).__name__


class UdpEndpoint:
    """One UDP socket for a stage's request/response exchange (DHCPINFORM, SNTP)."""

    def __init__(self, bind: tuple[str, int] = ("0.0.0.0", 0), broadcast: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if bind[1]:  # port 68 beside the OS's DHCP client; never for port 0, where the kernel could then
            # hand out a port another SO_REUSEADDR socket holds and the answer would go there
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if broadcast:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.bind(bind)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sock.sendto(data, addr)

    def recv(self, timeout_s: float) -> tuple[bytes, tuple[str, int]] | None:
        self.sock.settimeout(max(timeout_s, 0.001))
        try:
            data, addr = self.sock.recvfrom(4096)
        except TimeoutError:
            return None
        return data, (str(addr[0]), int(addr[1]))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UdpEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
