"""A pool node's configuration: defaults from protocol.md §1/§12, loaded from TOML, one-line errors.

```toml
[pool]
fqdn = "pool.lab.test"        # web services + registrar name (opt 43 sub-option 3, opt 120)
domain = "lab.test"
node = "fe1"
bind = "127.0.0.1"             # web services and SNTP listen here
advertise = "192.0.2.1"        # the address phones are given (DHCP server id, NTP); default: bind
dhcp_bind = "0.0.0.0"          # DHCP must listen on all addresses to receive broadcast INFORMs
dhcp_interface = "eth1"        # optional: serve DHCP on this NIC only (a lab with no other DHCP server)
serve_dhcp = true              # false: a real DHCP server (phoneprov dhcp-config) or another node answers
voice_vlan = 100               # optional: answer the phones' CPE-OCPHONE INFORM with this VLAN
state_dir = "/var/lib/phoneprov-pool"
[ports]                        # 0 = any free port (tests, demo)
dhcp = 67
sntp = 123
http = 80
https = 443
sip = 5061                     # the registrar (SIP over TLS, TLS-DSK)
admin = 8443                   # /metrics and the log endpoint (HTTPS, the pool's web certificate)
[store]
url = "sqlite:///var/lib/phoneprov-pool/store.sqlite"
timeout_s = 2.0
[pin]                          # PinPolicy fields
min_length = 5
[certs]                        # CertPolicy fields
default_validity_hours = 4320
[faults]
incomplete_chain = false       # serve the web chain without its issuing CA (failure 3)
sntp_offset_s = 0.0            # the lab's time source is this far off
registrar_unhealthy = false    # the registrar answers 503 / ms-diagnostics 4105 (failure 2)
[admin]
token_file = "/etc/phoneprov/admin.token"  # bearer token of /admin/logs/*; a 0600 file. Default:
                               # state_dir/admin.token, generated on first start
datastore_check_s = 5.0        # /metrics reuses a data-store check this long (a scrape never piles up)
[[nodes]]                      # every node of the pool, for `phoneprov logs collect`
name = "fe1"
admin_url = "https://192.0.2.11:8443"
[[nodes]]
name = "fe2"
admin_url = "https://192.0.2.12:8443"
```

Every node's pool.toml can carry the same ``[[nodes]]`` list. All nodes share the admin token (copy the token
file) and the CA (copy ``state_dir/ca`` from the first node before starting the others: phones trust one
root); the collector checks each node's certificate against that root and the pool ``fqdn``, so an
``admin_url`` may name an address.
``ports.admin`` defaults to 8443, or to 0 when every other port is 0 (a loopback lab on free ports — tests,
the demo — must never collide on a fixed port).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tools.pool.ca import CertPolicy
from tools.pool.errors import ConfigError
from tools.pool.pinpolicy import PinPolicy

C = TypeVar("C")
CERTPROV_PATH = "/CertProv/CertProvisioningService.svc"
WEBTICKET_PATH = "/WebTicket/WebTicketService.svc"


ADMIN_PORT = 8443
_AUTO = -1  # Ports.admin not given: 8443, or 0 beside all-zero ports


@dataclass(frozen=True)
class Ports:
    """Listening ports; 0 picks a free one (tests, the demo). ``admin``: see the module docstring."""

    dhcp: int = 67
    sntp: int = 123
    http: int = 80
    https: int = 443
    sip: int = 5061
    admin: int = _AUTO

    def __post_init__(self) -> None:
        if self.admin == _AUTO:
            loopback_lab = all(v == 0 for v in (self.dhcp, self.sntp, self.http, self.https, self.sip))
            object.__setattr__(self, "admin", 0 if loopback_lab else ADMIN_PORT)
        for name in ("dhcp", "sntp", "http", "https", "sip", "admin"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
                raise ConfigError(f"port {name} must be a whole number 0..65535, got {value!r}")


@dataclass(frozen=True)
class AdminConfig:
    """The admin listener: who may read the logs, and how long /metrics trusts a data-store check."""

    token_file: Path | None = None
    datastore_check_s: float = 5.0

    def __post_init__(self) -> None:
        if self.token_file is not None and not isinstance(self.token_file, Path):
            raise ConfigError(f"token_file must be a path, got {self.token_file!r}")
        if not _number(self.datastore_check_s) or not 0 < self.datastore_check_s <= 3600:
            raise ConfigError(f"datastore_check_s must be 0..3600 seconds, got {self.datastore_check_s!r}")


_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class NodeRef:
    """One node of the pool as ``phoneprov logs collect`` reaches it."""

    name: str
    admin_url: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NODE_NAME.match(self.name):
            raise ConfigError(f"node name must be letters, digits, '.', '_' or '-', got {self.name!r}")
        if not isinstance(self.admin_url, str):
            raise ConfigError(f"admin_url of node {self.name} must be a string")
        try:
            url = urlsplit(self.admin_url)
            url.port  # noqa: B018 — raises ValueError for a bad port
        except ValueError as exc:
            raise ConfigError(f"admin_url of node {self.name}: {exc}") from None
        if url.scheme != "https" or not url.hostname or url.username or url.password:
            raise ConfigError(f"admin_url of node {self.name} is not https://HOST[:PORT]: {self.admin_url!r}")
        if url.path not in ("", "/") or url.query or url.fragment:
            raise ConfigError(f"admin_url of node {self.name} has a path or query: {self.admin_url!r}")


@dataclass(frozen=True)
class PoolConfig:
    state_dir: Path
    fqdn: str = "pool.lab.test"
    domain: str = "lab.test"
    node: str = "fe1"
    bind: str = "127.0.0.1"
    advertise: str | None = None
    dhcp_bind: str = "0.0.0.0"
    dhcp_interface: str | None = None
    serve_dhcp: bool = True  # one DHCP responder per subnet: the other nodes of a pool leave it off
    voice_vlan: int | None = None
    ports: Ports = field(default_factory=Ports)
    registrar_fqdn: str | None = None
    ntp_server: str | None = None
    store_url: str | None = None
    store_timeout_s: float = 2.0
    web_names: tuple[str, ...] = ()
    pin_policy: PinPolicy = field(default_factory=PinPolicy)
    cert_policy: CertPolicy = field(default_factory=CertPolicy)
    ticket_lifetime: timedelta = timedelta(hours=8)
    incomplete_chain: bool = False
    sntp_offset_s: float = 0.0
    registrar_unhealthy: bool = False
    admin: AdminConfig = field(default_factory=AdminConfig)
    nodes: tuple[NodeRef, ...] = ()

    def __post_init__(self) -> None:
        for name in ("fqdn", "domain", "registrar_fqdn"):
            _dns_name(name, getattr(self, name))
        for name in ("bind", "dhcp_bind", "advertise", "ntp_server"):
            _ipv4(name, getattr(self, name))
        if IPv4Address(self.address) == IPv4Address("0.0.0.0"):
            raise ConfigError(
                "bind is 0.0.0.0: set advertise to the address phones reach (DHCP option 54/42)"
            )
        if self.dhcp_interface is not None and (
            not isinstance(self.dhcp_interface, str) or not self.dhcp_interface
        ):
            raise ConfigError(f"dhcp_interface must be an interface name, got {self.dhcp_interface!r}")
        if self.voice_vlan is not None and (
            not isinstance(self.voice_vlan, int)
            or isinstance(self.voice_vlan, bool)
            or not 1 <= self.voice_vlan <= 4094
        ):
            raise ConfigError(f"voice_vlan must be 1..4094, got {self.voice_vlan!r}")
        if not isinstance(self.node, str) or not self.node:
            raise ConfigError(f"node must be a non-empty name, got {self.node!r}")
        if not isinstance(self.web_names, tuple) or not all(isinstance(n, str) and n for n in self.web_names):
            raise ConfigError(f"web_names must be a list of names, got {self.web_names!r}")
        if not _number(self.store_timeout_s) or self.store_timeout_s <= 0:
            raise ConfigError(f"store timeout_s must be a positive number, got {self.store_timeout_s!r}")
        if not isinstance(self.ticket_lifetime, timedelta) or self.ticket_lifetime <= timedelta():
            raise ConfigError("ticket_lifetime_hours must be a positive number")
        if not all(isinstance(f, bool) for f in (self.incomplete_chain, self.registrar_unhealthy)):
            raise ConfigError("[faults] incomplete_chain and registrar_unhealthy must be true or false")
        if not _number(self.sntp_offset_s):
            raise ConfigError("[faults] sntp_offset_s must be a number")
        if self.store_url is not None and not isinstance(self.store_url, str):
            raise ConfigError(f"store url must be a string, got {self.store_url!r}")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ConfigError(f"[[nodes]] names must be unique, got {names}")

    @property
    def address(self) -> str:
        """The address phones are told about (DHCP server id, default NTP server)."""
        return self.advertise or self.bind

    @property
    def store(self) -> str:
        return self.store_url or f"sqlite:///{(self.state_dir / 'store.sqlite').resolve()}"

    @property
    def registrar(self) -> str:
        return self.registrar_fqdn or self.fqdn

    @property
    def admin_token_file(self) -> Path:
        """The bearer token of the admin endpoint (the collector reads the same file)."""
        return self.admin.token_file or self.state_dir / "admin.token"

    @property
    def ca_root_file(self) -> Path:
        """The pool's lab root (PEM): what the collector verifies the nodes' admin listeners against."""
        return self.state_dir / "ca" / "root.pem"


def load(path: Path) -> PoolConfig:
    """Read a pool TOML file; any problem is a ConfigError naming the file and key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return from_dict(data, where=str(path), base=path.parent)


def from_dict(data: dict[str, Any], where: str = "config", base: Path = Path(".")) -> PoolConfig:
    unknown = set(data) - {"pool", "ports", "store", "pin", "certs", "faults", "admin", "nodes"}
    if unknown:
        raise ConfigError(f"{where}: unknown section [{sorted(unknown)[0]}]")
    pool = _section(data, "pool", where)
    ports = _section(data, "ports", where)
    if "admin" in ports and ports["admin"] == _AUTO:
        raise ConfigError(f"{where} [ports]: port admin must be a whole number 0..65535, got {_AUTO}")
    state = pool.pop("state_dir", None)
    if not isinstance(state, str):
        raise ConfigError(f"{where}: [pool] state_dir is required (a directory path)")
    store = _section(data, "store", where)
    faults = _section(data, "faults", where)
    kwargs: dict[str, Any] = {
        "state_dir": (base / state).resolve(),
        "ports": _build(Ports, ports, f"{where} [ports]"),
        "admin": _admin(_section(data, "admin", where), where, base),
        "nodes": _nodes(data.get("nodes", []), where),
        "pin_policy": _build(PinPolicy, _section(data, "pin", where), f"{where} [pin]"),
        "cert_policy": _build(CertPolicy, _section(data, "certs", where), f"{where} [certs]"),
        "store_url": store.pop("url", None),
        "store_timeout_s": store.pop("timeout_s", 2.0),
        "incomplete_chain": faults.pop("incomplete_chain", False),
        "sntp_offset_s": faults.pop("sntp_offset_s", 0.0),
        "registrar_unhealthy": faults.pop("registrar_unhealthy", False),
    }
    for leftover, name in ((store, "store"), (faults, "faults")):
        if leftover:
            raise ConfigError(f"{where}: unknown key [{name}] {sorted(leftover)[0]}")
    if isinstance(pool.get("web_names"), list):
        pool["web_names"] = tuple(pool["web_names"])
    if "ticket_lifetime_hours" in pool:
        hours = pool.pop("ticket_lifetime_hours")
        if not _number(hours):
            raise ConfigError(f"{where}: [pool] ticket_lifetime_hours must be a number, got {hours!r}")
        pool["ticket_lifetime"] = timedelta(hours=hours)
    return _build(PoolConfig, {**pool, **kwargs}, f"{where} [pool]")


def _admin(section: dict[str, Any], where: str, base: Path) -> AdminConfig:
    token = section.pop("token_file", None)
    if token is not None and (not isinstance(token, str) or not token):
        raise ConfigError(f"{where}: [admin] token_file must be a file path, got {token!r}")
    path = None if token is None else (base / token).resolve()
    return _build(AdminConfig, {**section, "token_file": path}, f"{where} [admin]")


def _nodes(value: object, where: str) -> tuple[NodeRef, ...]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ConfigError(f"{where}: nodes must be [[nodes]] tables")
    return tuple(_build(NodeRef, dict(item), f"{where} [[nodes]] #{i}") for i, item in enumerate(value, 1))


def _section(data: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    return dict(value)


def _build(cls: type[C], values: dict[str, Any], where: str) -> C:
    """Construct a dataclass, checking key names and the types of plain fields."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}")
        expected = fields[key].type
        if expected in ("int", "float", "str", "bool") and not _is(value, str(expected)):
            raise ConfigError(f"{where}: {key} must be {expected}, got {value!r}")
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.detail}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _dns_name(name: str, value: object) -> None:
    if value is None and name == "registrar_fqdn":
        return
    if not isinstance(value, str) or len(value) > 253 or not all(_LABEL.match(p) for p in value.split(".")):
        raise ConfigError(f"{name} must be a DNS name, got {value!r}")


def _ipv4(name: str, value: object) -> None:
    if value is None and name in ("advertise", "ntp_server"):
        return
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        IPv4Address(value)
    except ValueError:
        raise ConfigError(f"{name} must be an IPv4 address, got {value!r}") from None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is(value: object, kind: str) -> bool:
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool}[kind])
