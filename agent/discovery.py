"""Stage DHCP_INFORM: find the CertProv URL (option 43) and the registrar (option 120) as a Lync phone does.

A DHCPINFORM with vendor class ``MS-UC-Client`` goes out on the phone's interface (broadcast from port 68,
``ciaddr`` set) or, in a loopback lab, to a configured server. No answer after the bounded retransmissions →
the options of the lease the OS already holds, if any. Then, when configured, a second INFORM with vendor class
``CPE-OCPHONE`` for the voice VLAN. A registrar missing from DHCP is looked up as
``_sipinternaltls._tcp.<domain>``. A configured CertProv URL / registrar (the cmdlets' -TargetUri /
-TargetFqdn) bypasses DHCP for that item. Every item records where it came from.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from agent import dhcpclient
from agent.clocks import Clock
from agent.dns import Dns, registrar_srv
from agent.lease import lease_files, read_lease
from agent.net import UdpEndpoint, require_https
from agent.stages import Stage, StageError, WireError
from agent.wire import dhcp


@dataclass(frozen=True)
class DiscoveryConfig:
    """Where to ask, and what to skip asking for."""

    interface: str | None = None
    ciaddr: IPv4Address | None = None
    chaddr: bytes | None = None
    server: tuple[str, int] = dhcpclient.BROADCAST
    bind: tuple[str, int] = ("0.0.0.0", 68)
    tries: int = 3
    interval_s: float = 4.0
    jitter_s: float = 1.0
    certprov_url: str | None = None
    registrar_fqdn: str | None = None
    registrar_port: int | None = None
    ntp_servers: tuple[str, ...] = ()
    domain: str | None = None
    vlan: bool = False
    lease_files: tuple[Path, ...] | None = None  # None: the usual places for ``interface``
    dns_port: int = 53
    dns_timeout_s: float = 3.0


@dataclass(frozen=True)
class Discovery:
    """What the phone learned about the pool; ``sources`` says where each item came from."""

    certprov_url: str
    registrar_fqdn: str | None
    registrar_port: int | None = None
    ntp_servers: tuple[str, ...] = ()
    dns_servers: tuple[str, ...] = ()
    domain: str | None = None
    vlan: int | None = None
    source: str = "dhcp"
    answered_by: str | None = None
    informs_sent: int = 0
    sources: dict[str, str] = field(default_factory=dict)


def discover(
    cfg: DiscoveryConfig,
    clock: Clock,
    new_xid: Callable[[], int],
    endpoint: Callable[[DiscoveryConfig], UdpEndpoint] | None = None,
    rng: random.Random | None = None,
) -> Discovery:
    """Run stage DHCP_INFORM; raises StageError(DHCP_INFORM, NO_ANSWER | NO_OPTION_43 | INSECURE_URL | …)."""
    if cfg.certprov_url and cfg.registrar_fqdn:
        require_https(cfg.certprov_url, Stage.DHCP_INFORM, "the configured CertProv URL")
        sources = {"certprov_url": "config", "registrar": "config"}
        return Discovery(
            cfg.certprov_url,
            cfg.registrar_fqdn,
            cfg.registrar_port,
            cfg.ntp_servers,
            (),
            cfg.domain,
            source="config",
            sources=sources,
        )
    rng = rng or random.Random()
    ciaddr, chaddr = _identity(cfg)
    make = endpoint or _default_endpoint
    with make(cfg) as ep:
        waits = dhcpclient.schedule(cfg.tries, cfg.interval_s, cfg.jitter_s, rng)
        request = dhcp.build_inform(new_xid(), ciaddr, chaddr)
        got = dhcpclient.exchange(ep, request, cfg.server, waits, clock)
        vlan = _vlan(cfg, ep, ciaddr, chaddr, new_xid(), clock, rng) if cfg.vlan and got.ack else None
    if got.ack is not None:
        return _merge(cfg, dhcp.parse_inform_answer(got.ack), f"DHCPACK from {got.sender}", got, vlan)
    lease = _lease(cfg)
    if lease is not None:
        return _merge(cfg, lease[1], f"lease {lease[0]}", got, None)
    why = f"; ignored: {got.ignored[-1]}" if got.ignored else ""
    raise StageError(
        Stage.DHCP_INFORM,
        "NO_ANSWER",
        f"Unable to locate Lync Certificate Web service: no DHCPACK from {cfg.server[0]}:{cfg.server[1]} "
        f"after {got.sent} INFORMs and no usable lease{why}",
    )


def _identity(cfg: DiscoveryConfig) -> tuple[IPv4Address, bytes]:
    """ciaddr and chaddr: configured, else the interface's own."""
    if cfg.interface and (cfg.ciaddr is None or cfg.chaddr is None):
        address, mac = dhcpclient.interface_facts(cfg.interface)
        return cfg.ciaddr or address, cfg.chaddr or mac
    return cfg.ciaddr or IPv4Address("0.0.0.0"), cfg.chaddr or b"\x02\x00\x00\x00\x00\x01"


def _default_endpoint(cfg: DiscoveryConfig) -> UdpEndpoint:
    if cfg.interface:
        return dhcpclient.interface_endpoint(cfg.interface, cfg.bind[1])
    return UdpEndpoint(cfg.bind, broadcast=cfg.server[0] == dhcpclient.BROADCAST[0])


def _vlan(
    cfg: DiscoveryConfig,
    ep: UdpEndpoint,
    ciaddr: IPv4Address,
    chaddr: bytes,
    xid: int,
    clock: Clock,
    rng: random.Random,
) -> int | None:
    """The second INFORM (vendor class CPE-OCPHONE): the voice VLAN, or None if nobody says."""
    request = dhcp.build_inform(xid, ciaddr, chaddr, vendor_class=dhcp.VLAN_VENDOR_CLASS, params=(43,))
    got = dhcpclient.exchange(
        ep, request, cfg.server, dhcpclient.schedule(1, cfg.interval_s, 0.0, rng), clock
    )
    value = got.ack.option(43) if got.ack else None
    if value is None:
        return None
    try:
        return dhcp.decode_vlan_option43(value)
    except WireError as exc:
        raise StageError(Stage.DHCP_INFORM, exc.code, f"CPE-OCPHONE answer: {exc.detail}") from None


def _lease(cfg: DiscoveryConfig) -> tuple[Path, dhcp.InformAnswer] | None:
    """The first readable lease that carries option 43."""
    paths: Sequence[Path] = (
        cfg.lease_files
        if cfg.lease_files is not None
        else (lease_files(cfg.interface) if cfg.interface else ())
    )
    for path in paths:
        if not path.exists():
            continue
        try:
            answer = read_lease(path)
        except WireError:
            continue
        if answer.vendor is not None:
            return path, answer
    return None


def _merge(
    cfg: DiscoveryConfig, ans: dhcp.InformAnswer, origin: str, got: dhcpclient.Exchange, vlan: int | None
) -> Discovery:
    sources: dict[str, str] = {}
    certprov = _pick(
        sources,
        "certprov_url",
        cfg.certprov_url,
        ans.vendor.certprov_url if ans.vendor else None,
        f"{origin}, option 43",
    )
    if certprov is None:
        raise StageError(
            Stage.DHCP_INFORM,
            "NO_OPTION_43",
            f"Unable to locate Lync Certificate Web service: {origin} has no option 43 for vendor class "
            "MS-UC-Client",
        )
    require_https(certprov, Stage.DHCP_INFORM, "the CertProv URL")
    dns_servers = tuple(str(a) for a in ans.dns_servers)
    domain = _pick(sources, "domain", cfg.domain, ans.domain, f"{origin}, option 15")
    registrar = _pick(
        sources,
        "registrar",
        cfg.registrar_fqdn,
        ans.registrars[0] if ans.registrars else None,
        f"{origin}, option 120",
    )
    port = cfg.registrar_port
    if registrar is None and domain:
        registrar, port = _registrar_from_dns(cfg, dns_servers, domain, sources)
    ntp = cfg.ntp_servers or tuple(str(a) for a in ans.ntp_servers)
    if ntp:
        sources["ntp"] = "config" if cfg.ntp_servers else f"{origin}, option 42"
    if vlan is not None:
        sources["vlan"] = "DHCPACK to CPE-OCPHONE, option 43 sub-option 10"
    return Discovery(
        certprov_url=certprov,
        registrar_fqdn=registrar,
        registrar_port=port,
        ntp_servers=ntp,
        dns_servers=dns_servers,
        domain=domain,
        vlan=vlan,
        source="lease" if origin.startswith("lease") else "dhcp",
        answered_by=str(ans.server_id) if ans.server_id else got.sender,
        informs_sent=got.sent,
        sources=sources,
    )


def _pick(
    sources: dict[str, str], item: str, configured: str | None, found: str | None, where: str
) -> str | None:
    if configured:
        sources[item] = "config"
        return configured
    if found:
        sources[item] = where
    return found


def _registrar_from_dns(
    cfg: DiscoveryConfig, servers: tuple[str, ...], domain: str, sources: dict[str, str]
) -> tuple[str | None, int | None]:
    """No option 120: ``_sipinternaltls._tcp.<domain>`` (protocol.md §3 fallbacks)."""
    try:
        found = registrar_srv(Dns(servers, cfg.dns_port, cfg.dns_timeout_s), domain)
    except OSError:
        return None, None
    if found is None:
        return None, None
    sources["registrar"] = f"DNS SRV _sipinternaltls._tcp.{domain}"
    return found.target, found.port


def random_mac(seed: bytes) -> bytes:
    """A stable locally-administered MAC derived from a device id (emulated phones have no NIC of their own)."""
    digest = hashlib.sha256(seed).digest()
    return bytes([(digest[0] | 0x02) & 0xFE]) + digest[1:6]
