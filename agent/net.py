"""The phone's transports: name resolution, HTTP(S) with the phone's own trust, and UDP.

A phone resolves names itself (DHCP-given DNS servers or a static hosts table) and verifies TLS against the
roots it shipped with plus the intermediates that stage ROOT_CHAIN validated — never the host's CA bundle.
The HTTP client connects to the resolved address while sending SNI and checking the certificate for the
FQDN, exactly what a device with its own resolver does.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from agent.stages import Stage, StageError

MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Resolver:
    """Static hosts first (like /etc/hosts on the device image), then the system resolver."""

    hosts: Mapping[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> str:
        key = name.rstrip(".").lower()
        if key in self.hosts:
            return self.hosts[key]
        try:
            ipaddress.ip_address(key)
            return key
        except ValueError:
            pass
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

    def __init__(self, resolver: Resolver, context: ssl.SSLContext | None) -> None:
        self._resolver = resolver
        self._context = context
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
        return host_params, pool_kwargs


def trust_context(bundle_pem: bytes) -> ssl.SSLContext:
    """An SSL context trusting only the given PEM anchors (+ validated intermediates); verification on."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=bundle_pem.decode("ascii"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class PhoneHttp:
    """HTTP(S) for the phone's stages: bounded bodies, timeouts, and failures mapped to the caller's stage."""

    def __init__(
        self, resolver: Resolver, timeout_s: float = 10.0, trust: ssl.SSLContext | None = None
    ) -> None:
        self.resolver = resolver
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._session.trust_env = False  # a phone has no proxy settings from a login shell
        self.set_trust(trust)

    def set_trust(self, trust: ssl.SSLContext | None) -> None:
        adapter = _ResolvingAdapter(self.resolver, trust)
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
        try:
            with self._session.request(
                method, url, data=body, headers=dict(headers or {}), timeout=self.timeout_s, stream=True
            ) as resp:
                data = _read_bounded(resp, stage, url)
                hdrs = {k.lower(): v for k, v in resp.headers.items()}
                return HttpReply(resp.status_code, hdrs, data)
        except requests.exceptions.SSLError as exc:
            raise StageError(stage, "TLS", f"TLS to {_origin(url)} failed: {_reason(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise StageError(stage, code, f"{method} {url} failed: {_reason(exc)}") from None
        except OSError as exc:
            raise StageError(stage, code, f"{method} {url} failed: {exc}") from None


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
