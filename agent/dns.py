"""The phone's own DNS: SRV fallbacks of protocol.md §3–§4 and A lookups, asked of the DHCP-given servers.

``_sipinternaltls._tcp.<domain>`` finds the registrar when DHCP has no option 120; ``_ntp._udp.<domain>``
finds time servers when it has no option 42. dnspython does the wire work; a name that does not exist is an
empty answer, a server that does not answer is an OSError naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.rdatatype
import dns.resolver
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.SRV import SRV

REGISTRAR_SRV = "_sipinternaltls._tcp"
NTP_SRV = "_ntp._udp"


@dataclass(frozen=True)
class SrvTarget:
    target: str
    port: int
    priority: int
    weight: int


class Dns:
    """Queries to ``nameservers`` (the DHCP option 6 list) or, with none given, the system's resolver."""

    def __init__(self, nameservers: Sequence[str] = (), port: int = 53, timeout_s: float = 3.0) -> None:
        self.nameservers = tuple(nameservers)
        self._resolver = dns.resolver.Resolver(configure=not self.nameservers)
        if self.nameservers:
            self._resolver.nameservers = list(self.nameservers)
            self._resolver.port = port
        self._resolver.lifetime = timeout_s
        self._resolver.timeout = timeout_s

    def srv(self, name: str) -> list[SrvTarget]:
        """SRV records ordered by priority, then weight (highest first); [] when the name has none."""
        records = [
            SrvTarget(str(r.target).rstrip("."), int(r.port), int(r.priority), int(r.weight))
            for r in self._query(name, "SRV")
            if isinstance(r, SRV) and str(r.target) != "."
        ]
        return sorted(records, key=lambda r: (r.priority, -r.weight, r.target))

    def address(self, name: str) -> str | None:
        found = [r for r in self._query(name, "A") if isinstance(r, A)]
        return str(found[0].address) if found else None

    def _query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        try:
            return list(self._resolver.resolve(name, dns.rdatatype.from_text(rdtype), search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.LifetimeTimeout) as exc:
            servers = ", ".join(self.nameservers) or "the system resolver"
            raise OSError(f"DNS {rdtype} {name}: no answer from {servers} ({type(exc).__name__})") from None


def registrar_srv(dns_: Dns, domain: str) -> SrvTarget | None:
    """The registrar from ``_sipinternaltls._tcp.<domain>`` (best priority), or None."""
    found = dns_.srv(f"{REGISTRAR_SRV}.{domain}")
    return found[0] if found else None


def ntp_srv(dns_: Dns, domain: str) -> list[str]:
    """Time servers from ``_ntp._udp.<domain>``, best first."""
    return [t.target for t in dns_.srv(f"{NTP_SRV}.{domain}")]
