"""A pool node's configuration: defaults from protocol.md §1/§12, loaded from TOML, validated with one-line errors.

```toml
[pool]
fqdn = "pool.lab.test"        # web services + registrar name (opt 43 sub-option 3, opt 120)
domain = "lab.test"
node = "fe1"
bind = "127.0.0.1"
state_dir = "/var/lib/phoneprov-pool"
[ports]                        # 0 = any free port (tests, demo)
dhcp = 67
sntp = 123
http = 80
https = 443
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
```
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from tools.pool.ca import CertPolicy
from tools.pool.errors import ConfigError
from tools.pool.pinpolicy import PinPolicy

C = TypeVar("C")
CERTPROV_PATH = "/CertProv/CertProvisioningService.svc"
WEBTICKET_PATH = "/WebTicket/WebTicketService.svc"


@dataclass(frozen=True)
class Ports:
    dhcp: int = 67
    sntp: int = 123
    http: int = 80
    https: int = 443


@dataclass(frozen=True)
class PoolConfig:
    state_dir: Path
    fqdn: str = "pool.lab.test"
    domain: str = "lab.test"
    node: str = "fe1"
    bind: str = "127.0.0.1"
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

    @property
    def store(self) -> str:
        return self.store_url or f"sqlite:///{(self.state_dir / 'store.sqlite').resolve()}"

    @property
    def registrar(self) -> str:
        return self.registrar_fqdn or self.fqdn


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
    unknown = set(data) - {"pool", "ports", "store", "pin", "certs", "faults"}
    if unknown:
        raise ConfigError(f"{where}: unknown section [{sorted(unknown)[0]}]")
    pool = _section(data, "pool", where)
    state = pool.pop("state_dir", None)
    if not isinstance(state, str):
        raise ConfigError(f"{where}: [pool] state_dir is required (a directory path)")
    store = _section(data, "store", where)
    faults = _section(data, "faults", where)
    kwargs: dict[str, Any] = {
        "state_dir": (base / state).resolve(),
        "ports": _build(Ports, _section(data, "ports", where), f"{where} [ports]"),
        "pin_policy": _build(PinPolicy, _section(data, "pin", where), f"{where} [pin]"),
        "cert_policy": _build(CertPolicy, _section(data, "certs", where), f"{where} [certs]"),
        "store_url": store.pop("url", None),
        "store_timeout_s": store.pop("timeout_s", 2.0),
        "incomplete_chain": faults.pop("incomplete_chain", False),
        "sntp_offset_s": faults.pop("sntp_offset_s", 0.0),
    }
    for leftover, name in ((store, "store"), (faults, "faults")):
        if leftover:
            raise ConfigError(f"{where}: unknown key [{name}] {sorted(leftover)[0]}")
    if "web_names" in pool:
        pool["web_names"] = tuple(pool["web_names"])
    if "ticket_lifetime_hours" in pool:
        pool["ticket_lifetime"] = timedelta(hours=float(pool.pop("ticket_lifetime_hours")))
    return _build(PoolConfig, {**pool, **kwargs}, f"{where} [pool]")


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


def _is(value: object, kind: str) -> bool:
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool}[kind])
