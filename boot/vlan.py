"""The voice VLAN: when DHCP names one and agent.toml asks for it, move the phone onto it.

The phone creates ``<parent>.<vlan>`` with iproute2 (CAP_NET_ADMIN, granted by phoneprov.service), waits for
the OS's DHCP client (dhcpcd on Raspberry Pi OS manages new interfaces by itself) to give it an address, and
asks for the pool again there. Anything that goes wrong — no privilege, no 8021q module, no address in time —
is one warning and the phone carries on untagged: a lab whose data VLAN also reaches the pool still signs in,
and the status document says why the phone is not where DHCP wanted it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from agent.clocks import Clock
from agent.discovery import DiscoveryConfig
from hal.errors import HalError
from hal.nic import LinuxNic, Nic, apply_vlan, wait_ipv4

log = logging.getLogger("phoneprov.boot")
ADDRESS_TIMEOUT_S = 30.0  # dhcpcd's first DHCPDISCOVER on a new interface comes within a few seconds


class VoiceVlan:
    """Moves discovery from ``parent`` to its VLAN interface; remembers where the phone is."""

    def __init__(
        self,
        parent: str,
        clock: Clock,
        *,
        apply: Callable[[str, int], str] = apply_vlan,
        nic: Callable[[str], Nic] = LinuxNic,
        timeout_s: float = ADDRESS_TIMEOUT_S,
    ) -> None:
        self.parent, self.clock, self.apply, self.nic, self.timeout_s = parent, clock, apply, nic, timeout_s
        self.interface: str | None = None  # the VLAN interface the phone is on, once it got there
        self.vlan: int | None = None
        self.problem: str | None = None  # why the phone is not on the VLAN DHCP named

    def enter(self, vlan: int, cfg: DiscoveryConfig) -> DiscoveryConfig | None:
        """The discovery configuration on the VLAN, or None (stay untagged; :attr:`problem` says why)."""
        if cfg.interface != self.parent:
            return None  # already on a VLAN interface, or a lab without broadcast
        try:
            name = self.apply(self.parent, vlan)
            facts = wait_ipv4(self.nic(name), self.timeout_s, self.clock.monotonic, self.clock.sleep)
        except HalError as exc:
            self.problem = f"voice VLAN {vlan} not used: {exc}"
            log.warning("%s; staying untagged on %s", self.problem, self.parent)
            return None
        self.interface, self.vlan, self.problem = name, vlan, None
        log.info("voice VLAN %d: on %s (%s)", vlan, name, facts.ipv4)
        return self.discovery(cfg)

    def discovery(self, cfg: DiscoveryConfig) -> DiscoveryConfig:
        """``cfg`` as it applies now: on the VLAN interface once the phone moved there."""
        if self.interface is None:
            return cfg
        return replace(cfg, interface=self.interface, vlan=False, ciaddr=None, chaddr=None)
