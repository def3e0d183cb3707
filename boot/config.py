"""The phone's configuration: ``/etc/phoneprov/agent.toml``, validated with one-line errors.

Every mistake is a :class:`ConfigError` naming the file, the ``[section]`` and the key, so a lab engineer
looking at ``journalctl -u phoneprov`` knows which line to fix. The PIN is read once, here, from exactly one
source (inline, a 0600 file, or an environment variable) and never appears in a message or a repr.
``boot/agent.example.toml`` documents every key.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import certs
from agent.clock import TimeConfig
from agent.discovery import DiscoveryConfig
from agent.phone import PhoneConfig
from boot.configtable import (
    ConfigError as ConfigError,  # re-exported: callers catch boot.config.ConfigError
)
from boot.configtable import (
    Table,
    dns_name,
    ifname,
    ipv4,
    parse_address,
    show,
    url_check,
)

DEFAULT_PATH = Path("/etc/phoneprov/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/phoneprov")
ETC_ROOTS_DIR = Path("/etc/phoneprov/roots")
PIN_SOURCES = ("pin", "pin_file", "pin_env")
_PIN_FILE_MAX = 256  # a PIN file holds one short line; anything bigger is the wrong file

_USERNAME = re.compile(r"\+?[0-9]{1,15}", re.ASCII)  # E.164 number or an extension
_PIN = re.compile(r"[0-9]{4,24}", re.ASCII)  # protocol.md §12: PIN length range 4–24
_SIP_URI = re.compile(r"sip:[^@\s;]+@[A-Za-z0-9.-]+", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


@dataclass(frozen=True)
class PhoneSettings:
    """[phone]: the user's entry as typed on a real phone, and where the phone keeps its state."""

    username: str
    pin: str = field(repr=False)
    pin_source: str = "pin"  # "pin", "pin_file PATH" or "pin_env NAME": where the PIN came from
    sip_uri: str | None = None
    state_dir: Path = DEFAULT_STATE_DIR
    key_bits: int = 2048


@dataclass(frozen=True)
class NetworkSettings:
    """[network]: where to ask for the pool, and the overrides a lab needs (the cmdlets' -TargetUri/-Fqdn)."""

    interface: str | None = None
    dhcp_server: tuple[str, int] | None = None
    certprov_url: str | None = None
    registrar_fqdn: str | None = None
    registrar_port: int | None = None
    vlan: bool = False
    hosts: Mapping[str, str] = field(default_factory=dict)
    anon_http_port: int = 80
    ntp_port: int = 123
    ntp_fallback: tuple[str, ...] = ("time.windows.com",)
    set_system_clock: bool = True  # a Pi has no RTC: the phone sets the clock it boots with


@dataclass(frozen=True)
class TetherSettings:
    """[tether]: the USB gadget port a PC provisions the phone through while it has no certificate."""

    port: str | None = None  # e.g. /dev/ttyGS0; None: no tether
    phone_serial: str | None = None  # what the PC looks for; default: the board's serial (usb-gadget.sh)


@dataclass(frozen=True)
class RetrySettings:
    """[retry]: backoff between sign-in attempts; 0 for ``budget_s``/``max_attempts`` means no limit."""

    base_s: float = 5.0
    cap_s: float = 300.0
    budget_s: float = 0.0
    max_attempts: int = 0
    rig_power_cycle_url: str | None = None


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``phoneprov boot`` needs, validated."""

    path: Path
    phone: PhoneSettings
    network: NetworkSettings = field(default_factory=NetworkSettings)
    extra_roots_dirs: tuple[Path, ...] = (ETC_ROOTS_DIR,)  # besides certs/roots, which is always trusted
    retry: RetrySettings = field(default_factory=RetrySettings)
    renewal_margin_hours: float = 24.0
    status_listen: tuple[str, int] | None = ("127.0.0.1", 8765)
    log_json_path: Path | None = None
    tether: TetherSettings = field(default_factory=TetherSettings)

    @property
    def tether_only(self) -> bool:
        """No PIN on the phone: certificates come over the USB tether only."""
        return not self.phone.pin

    @property
    def renewal_margin(self) -> timedelta:
        return timedelta(hours=self.renewal_margin_hours)

    def anchor_files(self) -> list[Path]:
        """The PEM files the phone trusts: the shipped bundle, ``certs/roots`` and each extra directory."""
        return certs.anchor_files(extra_dirs=self.extra_roots_dirs)

    def phone_config(self, device_id: str) -> PhoneConfig:
        """The agent's view of this configuration, for the phone identified by ``device_id``."""
        if not isinstance(device_id, str) or not device_id.strip() or not device_id.isprintable():
            raise ValueError(f"device_id must be a printable, non-empty string, got {device_id!r}")
        net, me = self.network, self.phone
        overrides: dict[str, Any] = {
            "certprov_url": net.certprov_url,
            "registrar_fqdn": net.registrar_fqdn,
            "registrar_port": net.registrar_port,
            "vlan": net.vlan,
        }
        if net.dhcp_server is not None:  # a lab: unicast to a known responder from any free port
            host, port = net.dhcp_server
            ciaddr = IPv4Address("127.0.0.1") if IPv4Address(host).is_loopback else None
            discovery = DiscoveryConfig(ciaddr=ciaddr, server=(host, port), bind=("0.0.0.0", 0), **overrides)
        else:
            discovery = DiscoveryConfig(interface=net.interface, **overrides)
        return PhoneConfig(
            username=me.username,
            pin=me.pin,
            device_id=device_id,
            sip_uri=me.sip_uri,
            discovery=discovery,
            time=TimeConfig(
                port=net.ntp_port, fallback=net.ntp_fallback, set_system_clock=net.set_system_clock
            ),
            anon_http_port=net.anon_http_port,
            hosts=dict(net.hosts),
            key_bits=me.key_bits,
            registrar_port=net.registrar_port or 5061,
        )


def load(path: Path = DEFAULT_PATH, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate the phone's TOML file; ``environ`` (default ``os.environ``) serves ``pin_env``."""
    where = str(path)
    try:
        raw = Path(path).read_bytes()
        mode = Path(path).stat().st_mode
    except OSError as exc:
        raise ConfigError(where, f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(where, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, f"invalid TOML: {exc}") from None
    phone, mode = data.get("phone"), stat.S_IMODE(mode)
    if isinstance(phone, dict) and "pin" in phone and mode & 0o077:
        problem = (
            f"an inline PIN needs this file to be mode 0600, not {mode:04o} (chmod 600 it, or use pin_file)"
        )
        raise ConfigError(where, problem, "phone", "pin")
    environ = os.environ if environ is None else environ
    return from_dict(data, where=where, base=Path(path).absolute().parent, environ=environ)


def from_dict(
    data: Mapping[str, Any],
    where: str = "config",
    base: Path = Path("."),
    environ: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Validate an already parsed document (relative paths are taken from ``base``)."""
    sections = ("phone", "network", "trust", "retry", "renewal", "status", "log", "tether")
    for name in data:
        if name not in sections:
            raise ConfigError(where, f"unknown section (known: {', '.join(sections)})", str(name))
    if "phone" not in data:
        raise ConfigError(where, "missing: the phone's username and PIN source live here", "phone")
    t = {name: Table(where, name, data.get(name, {}), base) for name in sections}
    tether = _tether(t["tether"])
    config = AgentConfig(
        path=Path(where),
        phone=_phone(t["phone"], os.environ if environ is None else environ, tether.port is not None),
        network=_network(t["network"]),
        extra_roots_dirs=t["trust"].paths("extra_roots_dirs", AgentConfig.extra_roots_dirs),
        retry=_retry(t["retry"]),
        renewal_margin_hours=t["renewal"].number("margin_hours", 24.0, low=0.0, high=8760.0),
        status_listen=_listen(t["status"]),
        log_json_path=t["log"].path("json_path"),
        tether=tether,
    )
    for table in t.values():
        table.finish()
    return config


def _phone(t: Table, environ: Mapping[str, str], tethered: bool) -> PhoneSettings:
    username = t.text("username", valid=_USERNAME.fullmatch, want="a phone number (+digits) or an extension")
    if username is None:
        raise t.error("username", "required: the phone number or extension the user types")
    sip_uri = t.text("sip_uri", valid=_SIP_URI.fullmatch, want="a SIP URI like sip:user@domain")
    state_dir = t.path("state_dir", DEFAULT_STATE_DIR)
    assert state_dir is not None
    key_bits = t.integer("key_bits", 2048, 2048, 4096)  # larger keys take minutes on a Pi: past the watchdog
    if key_bits % 1024:
        raise t.error("key_bits", f"must be 2048, 3072 or 4096, got {key_bits}")
    if tethered and not any(name in t.data for name in PIN_SOURCES):
        return PhoneSettings(
            username, "", "none: certificates come over the USB tether", sip_uri, state_dir, key_bits
        )
    pin, source = _pin(t, environ)
    return PhoneSettings(username, pin, source, sip_uri, state_dir, key_bits)


def _pin(t: Table, environ: Mapping[str, str]) -> tuple[str, str]:
    """Exactly one PIN source; the PIN itself is never echoed."""
    given = [name for name in PIN_SOURCES if name in t.data]
    if len(given) != 1:
        found = f" (found {', '.join(given)})" if given else " (or [tether] port for a USB-provisioned phone)"
        raise t.error(given[-1] if given else "pin", f"set exactly one of pin, pin_file, pin_env{found}")
    raw = t.data.get(given[0])
    if given[0] == "pin_env" and not (isinstance(raw, str) and _ENV_NAME.fullmatch(raw)):
        raise t.error("pin_env", "must be an environment variable name like PHONEPROV_PIN (value not shown)")
    if given[0] == "pin_file" and not isinstance(raw, str):
        raise t.error("pin_file", "must be a file path in quotes (value not shown)")
    if given[0] == "pin":
        pin, source = t.data.pop("pin"), "pin"
    elif given[0] == "pin_file":
        path = t.path("pin_file")
        assert path is not None
        pin, source = _read_pin_file(t, path), f"pin_file {path}"
    else:
        name = t.text("pin_env", valid=_ENV_NAME.fullmatch, want="an environment variable name")
        assert name is not None
        if name not in environ:
            raise t.error("pin_env", f"environment variable {name} is not set")
        pin, source = environ[name].strip(), f"pin_env {name}"
    if not isinstance(pin, str) or not _PIN.fullmatch(pin):
        raise t.error(given[0], f"the PIN from {source} must be 4 to 24 digits 0-9 (value not shown)")
    return pin, source


def _read_pin_file(t: Table, path: Path) -> str:
    """The PIN file must be a regular file no one but its owner can read (mode 0600 or stricter)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise t.error("pin_file", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise t.error("pin_file", f"{path} is not a regular file")
        if (mode := stat.S_IMODE(st.st_mode)) & 0o077:
            raise t.error("pin_file", f"{path} is mode {mode:04o}, looser than 0600: refused (chmod 600 it)")
        data = os.read(fd, _PIN_FILE_MAX + 1)
    except OSError as exc:
        raise t.error("pin_file", f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > _PIN_FILE_MAX:
        raise t.error("pin_file", f"{path} is larger than {_PIN_FILE_MAX} bytes: not a PIN file")
    return data.decode("utf-8", "replace").strip()


def _network(t: Table) -> NetworkSettings:
    interface = t.text("interface", valid=ifname, want="a network interface name like eth0")
    server = t.text("dhcp_server")
    dhcp_server = parse_address(t, "dhcp_server", server, 67) if server is not None else None
    url = t.text("certprov_url", valid=url_check(("https",)), want="an https:// URL with a host")
    registrar = t.text("registrar_fqdn", valid=dns_name, want="a DNS name")
    registrar_port = t.integer("registrar_port", 5061, 1, 65535) if "registrar_port" in t.data else None
    if interface and dhcp_server:
        raise t.error("dhcp_server", "give interface or dhcp_server, not both")
    if not (interface or dhcp_server or (url and registrar)):
        raise t.error(
            "interface",
            "required: the NIC to send the DHCPINFORM on (or dhcp_server for a lab, "
            "or both certprov_url and registrar_fqdn)",
        )
    fallback = t.strings("ntp_fallback", NetworkSettings.ntp_fallback)
    for name in fallback:
        if not dns_name(name):
            raise t.error("ntp_fallback", f"{show(name)} is not a host name or IPv4 address")
    return NetworkSettings(
        interface=interface,
        dhcp_server=dhcp_server,
        certprov_url=url,
        registrar_fqdn=registrar,
        registrar_port=registrar_port,
        vlan=t.flag("vlan", False),
        hosts=_hosts(t),
        anon_http_port=t.integer("anon_http_port", 80, 1, 65535),
        ntp_port=t.integer("ntp_port", 123, 1, 65535),
        ntp_fallback=fallback,
        set_system_clock=t.flag("set_system_clock", True),
    )


def _hosts(t: Table) -> dict[str, str]:
    """NAME = "ADDR" pairs, the phone's /etc/hosts for names a lab's DNS does not know."""
    table = t.data.pop("hosts", None)
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise t.error("hosts", 'must be a table of NAME = "IPv4 address"')
    hosts: dict[str, str] = {}
    for name, address in table.items():
        if not dns_name(name):
            raise t.error(f"hosts.{name}", "is not a DNS name")
        if not isinstance(address, str) or not ipv4(address):
            raise t.error(f"hosts.{name}", f"must be an IPv4 address in quotes, got {show(address)}")
        hosts[name.rstrip(".").lower()] = address
    return hosts


def _tether(t: Table) -> TetherSettings:
    port = t.text(
        "port", valid=lambda v: v.startswith("/") and "\0" not in v, want="a device path like /dev/ttyGS0"
    )
    serial = t.text(
        "phone_serial", valid=lambda v: 0 < len(v) <= 126 and v.isprintable(), want="a USB serial number"
    )
    return TetherSettings(port, serial)


def _retry(t: Table) -> RetrySettings:
    base = t.number("base_s", 5.0, low=0.001)
    cap = t.number("cap_s", 300.0, low=0.001)
    if cap < base:
        raise t.error("cap_s", f"must be at least base_s ({base:g}), got {cap:g}")
    url = t.text(
        "rig_power_cycle_url", valid=url_check(("http", "https")), want="an http(s):// URL with a host"
    )
    return RetrySettings(
        base_s=base,
        cap_s=cap,
        budget_s=t.number("budget_s", 0.0, low=0.0),
        max_attempts=t.integer("max_attempts", 0, 0, 1_000_000),
        rig_power_cycle_url=url,
    )


def _listen(t: Table) -> tuple[str, int] | None:
    value = t.text("listen", "127.0.0.1:8765")
    if not value:
        return None
    return parse_address(t, "listen", value, None)
