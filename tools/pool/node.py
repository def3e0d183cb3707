"""One pool node: the DHCP and SNTP responders, the anonymous HTTP site, the HTTPS Web Services (cheroot,
real TLS), the registrar, the admin listener (/metrics, the log endpoint) and the data store, started
together and stopped together.

State (CA keys and certificates, the SQLite store, the logs) lives in ``state_dir`` and is kept across
restarts: a lab pool's root does not change under the phones that already trust it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from cryptography.hazmat.primitives.serialization import Encoding

from agent.atomic import atomic_write
from agent.clocks import Clock, SystemClock
from agent.wire import pkcs7
from tools.pool.admin import AdminSite, load_or_create_token
from tools.pool.ca import PoolCA
from tools.pool.certprov import CertProvService
from tools.pool.config import CERTPROV_PATH, WEBTICKET_PATH, PoolConfig
from tools.pool.dhcp import UcOptions, inform_handler
from tools.pool.metrics import DataStoreHealth, PoolMetrics, store_probe
from tools.pool.provlog import ProvisioningLog, RequestLog
from tools.pool.registrar import Registrar
from tools.pool.sntp import sntp_handler
from tools.pool.store import open_store
from tools.pool.store.contract import Store, User
from tools.pool.tickets import TicketCache
from tools.pool.udp import UdpResponder
from tools.pool.users import add_user
from tools.pool.webservices import Site, anonymous_site, secure_site
from tools.pool.webticket import WebTicketService

log = logging.getLogger("phoneprov.pool")


class _Server(wsgi.Server):
    """cheroot's error log (e.g. a phone aborting TLS on an untrusted chain) goes to the pool's log."""

    def error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        log.log(level, "web: %s", msg, exc_info=traceback)


class _WebServer:
    """A cheroot WSGI server on its own thread; port 0 picks a free port."""

    def __init__(
        self, bind: tuple[str, int], app: Site | AdminSite, fqdn: str, tls: tuple[Path, Path] | None = None
    ):
        self.server = _Server(bind, app, numthreads=8, server_name=fqdn, timeout=10)
        if tls is not None:
            self.server.ssl_adapter = BuiltinSSLAdapter(str(tls[0]), str(tls[1]))
        self.server.prepare()
        self._thread = threading.Thread(target=self.server.serve, name=f"pool-web-{self.port}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.bind_addr[1])

    def stop(self) -> None:
        self.server.stop()
        self._thread.join(timeout=10)


@dataclass(frozen=True)
class NodePorts:
    dhcp: int | None  # None: this node serves no DHCP
    sntp: int
    http: int
    https: int
    sip: int
    admin: int


def _stop_part(part: Any) -> None:
    try:
        part.stop() if hasattr(part, "stop") else part.close()
    except Exception as exc:  # stopping must go on for the other parts
        log.warning("stopping %s: %s", type(part).__name__, exc)


class PoolNode:
    def __init__(self, cfg: PoolConfig, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self._parts: list[Any] = []

    def start(self) -> PoolNode:
        cfg = self.cfg
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store: Store = open_store(cfg.store, timeout_s=cfg.store_timeout_s)
        self._parts.append(self.store)
        try:
            self._start_services()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_services(self) -> None:
        cfg, now = self.cfg, self.clock.now
        names = (cfg.fqdn, *cfg.web_names)
        self.ca = PoolCA.load_or_create(cfg.state_dir / "ca", cfg.fqdn, web_names=names[1:], at=now())
        logs = cfg.state_dir / "logs"
        self.provlog = ProvisioningLog(logs / "provisioning.log", cfg.node, now)
        self.requestlog = RequestLog(logs / "requests.log", now)
        self._start_admin()
        self.tickets = TicketCache()
        webticket = WebTicketService(
            self.store,
            cfg.pin_policy,
            self.tickets,
            lambda: self.base_url + WEBTICKET_PATH,
            cfg.fqdn,
            cfg.ticket_lifetime,
            now,
            self.provlog,
        )
        certprov = CertProvService(self.store, self.ca, cfg.cert_policy, self.tickets, now, self.provlog)
        tls = (self._tls_chain_file(), self.ca.tls_key_path)
        self.https = _WebServer(
            (cfg.bind, cfg.ports.https),
            secure_site(
                lambda: self.base_url,
                webticket.pin,
                webticket.negotiate,
                certprov.get_and_publish,
                self.requestlog,
                lambda: self.https.port,
            ),
            cfg.fqdn,
            tls,
        )
        self._parts.append(self.https)
        self.http = _WebServer(
            (cfg.bind, cfg.ports.http),
            anonymous_site(self._rootchain, self.requestlog, lambda: self.http.port),
            cfg.fqdn,
        )
        self._parts.append(self.http)
        self.dhcp: UdpResponder | None = None
        if cfg.serve_dhcp:
            handler = inform_handler(self._uc_options)
            self.dhcp = UdpResponder("dhcp", (cfg.dhcp_bind, cfg.ports.dhcp), handler, cfg.dhcp_interface)
            self._parts.append(self.dhcp.start())
        offset = cfg.sntp_offset_s
        self.sntp = UdpResponder(
            "sntp", (cfg.bind, cfg.ports.sntp), sntp_handler(now, lambda: offset)
        ).start()
        self._parts.append(self.sntp)
        self.registrar = Registrar(
            (cfg.bind, cfg.ports.sip),
            cfg.registrar,
            lambda: self.certprov_url,
            self.ca,
            self.store,
            cfg.node,
            now,
            self.provlog,
        )
        self.registrar.unhealthy = cfg.registrar_unhealthy
        self._parts.append(self.registrar.start())
        log.info("pool node %s up: %s", cfg.node, self.ports)

    def _start_admin(self) -> None:
        """Metrics first, so they see every provisioning-log line; then the admin listener (full chain always:
        the incomplete-chain fault is for phones, not for the engineer's collector)."""
        cfg = self.cfg
        wait_s = 2 * cfg.store_timeout_s + 0.5  # the check reads, then writes: each bounded by the timeout
        health = DataStoreHealth(store_probe(self.store), wait_s, cfg.admin.datastore_check_s)
        self.metrics = PoolMetrics(cfg.node, health)
        self.provlog.observe(self.metrics.observe)
        token = load_or_create_token(cfg.admin_token_file, create=cfg.admin.token_file is None)
        site = AdminSite(
            cfg.node, self.metrics, self.provlog.path, token, self.requestlog, lambda: self.admin.port
        )
        tls = (self.ca.tls_cert_chain_pem_path, self.ca.tls_key_path)
        self.admin = _WebServer((cfg.bind, cfg.ports.admin), site, cfg.fqdn, tls)
        self._parts.append(self.admin)

    def stop(self) -> None:
        """Stop the listeners all at once (cheroot takes up to half a second each), then close the store."""
        store = getattr(self, "store", None)
        listeners = [p for p in self._parts if p is not store]
        stoppers = [threading.Thread(target=_stop_part, args=(p,), daemon=True) for p in listeners]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(timeout=15)
        if store is not None and store in self._parts:
            _stop_part(store)
        self._parts.clear()

    def __enter__(self) -> PoolNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ports(self) -> NodePorts:
        return NodePorts(
            self.dhcp.port if self.dhcp is not None else None,
            self.sntp.port,
            self.http.port,
            self.https.port,
            self.registrar.port,
            self.admin.port,
        )

    @property
    def base_url(self) -> str:
        """https://<fqdn>:<port> as phones must address the Web Services (the name is what TLS checks)."""
        return f"https://{self.cfg.fqdn}:{self.https.port}"

    @property
    def admin_url(self) -> str:
        """Where ``phoneprov logs collect`` and Prometheus reach this node (its ``[[nodes]]`` admin_url)."""
        return f"https://{self.cfg.fqdn}:{self.admin.port}"

    @property
    def certprov_url(self) -> str:
        return self.base_url + CERTPROV_PATH

    def add_user(self, sip_uri: str, line_uri: str, pin: str, display_name: str = "") -> User:
        """Provision a user with a PIN that satisfies the pool's PIN policy."""
        return add_user(
            self.store,
            self.cfg.pin_policy,
            sip_uri,
            line_uri,
            pin,
            self.clock.now(),
            display_name,
            self.cfg.fqdn,
        )

    def _uc_options(self) -> UcOptions:
        server = IPv4Address(self.cfg.address)
        ntp = IPv4Address(self.cfg.ntp_server) if self.cfg.ntp_server else server
        return UcOptions(
            self.cfg.fqdn,
            self.https.port,
            self.cfg.registrar,
            ntp,
            self.cfg.domain,
            server,
            self.cfg.voice_vlan,
        )

    def _rootchain(self) -> bytes:
        """The issuing CA and root, or — with the incomplete-chain fault — the root alone."""
        chain = self.ca.rootchain()
        return pkcs7.encode_certs_only(chain[-1:] if self.cfg.incomplete_chain else chain)

    def _tls_chain_file(self) -> Path:
        if not self.cfg.incomplete_chain:
            return self.ca.tls_cert_chain_pem_path
        path = self.cfg.state_dir / "ca" / "web-leaf-only.pem"
        atomic_write(path, self.ca.web_cert.public_bytes(Encoding.PEM), 0o644)
        return path
