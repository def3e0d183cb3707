"""The phone's NIC: facts (MAC, IPv4, carrier) from psutil + sysfs, waits with a deadline, and the voice VLAN.

Behind a small :class:`Nic` protocol with an emulated twin, so the boot sequence and the rig are tested without a
cable to pull. Reading ``carrier`` on an admin-down interface fails with EINVAL: that is "no carrier".
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import psutil

from hal.errors import HalError

SYSFS_NET = Path("/sys/class/net")


@dataclass(frozen=True)
class NicFacts:
    name: str
    mac: str | None
    ipv4: ipaddress.IPv4Interface | None
    carrier: bool
    operstate: str


class Nic(Protocol):
    name: str

    def facts(self) -> NicFacts: ...


class LinuxNic:
    """A real interface; ``sysfs`` and ``addrs`` are injectable so tests can point them at a fake tree."""

    def __init__(
        self,
        name: str,
        sysfs: Path = SYSFS_NET,
        addrs: Callable[[], Mapping[str, list[Any]]] = psutil.net_if_addrs,
    ) -> None:
        self.name, self.sysfs, self._addrs = name, sysfs, addrs

    def facts(self) -> NicFacts:
        base = self.sysfs / self.name
        if not base.exists():
            raise HalError(self.name, "NO_INTERFACE", "no such network interface", "check the interface name")
        mac, ipv4 = None, None
        for a in self._addrs().get(self.name, []):
            if a.family == psutil.AF_LINK:
                mac = a.address
            elif a.family == socket.AF_INET and ipv4 is None:
                ipv4 = ipaddress.IPv4Interface(f"{a.address}/{a.netmask or '32'}")
        return NicFacts(self.name, mac, ipv4, _carrier(base), _read(base / "operstate") or "unknown")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # EINVAL on an admin-down interface's carrier, ENOENT on odd drivers
        return None


def _carrier(base: Path) -> bool:
    return _read(base / "carrier") == "1"


class EmulatedNic:
    """A NIC whose cable and DHCP lease a test controls."""

    def __init__(self, name: str = "eth0", mac: str = "02:00:00:00:00:01") -> None:
        self.name = name
        self._facts = NicFacts(name, mac, None, False, "down")

    def plug(self, ipv4: str | None = None) -> None:
        self._facts = replace(
            self._facts, carrier=True, operstate="up", ipv4=ipaddress.IPv4Interface(ipv4) if ipv4 else None
        )

    def unplug(self) -> None:
        self._facts = replace(self._facts, carrier=False, operstate="down", ipv4=None)

    def facts(self) -> NicFacts:
        return self._facts


def wait_until(
    nic: Nic,
    ready: Callable[[NicFacts], bool],
    what: str,
    timeout_s: float,
    monotonic: Callable[[], float],
    sleep: Callable[[float], None],
    poll_s: float = 0.2,
) -> NicFacts:
    """Poll until ``ready(facts)``; HalError naming ``what`` after ``timeout_s`` (one deadline, computed once)."""
    deadline = monotonic() + timeout_s
    while True:
        facts = nic.facts()
        if ready(facts):
            return facts
        left = deadline - monotonic()
        if left <= 0:
            raise HalError(
                nic.name,
                "TIMEOUT",
                f"no {what} after {timeout_s:g} s (operstate {facts.operstate})",
                "check the cable, the switch port and the DHCP server",
            )
        sleep(min(poll_s, left))


def wait_carrier(
    nic: Nic, timeout_s: float, monotonic: Callable[[], float], sleep: Callable[[float], None]
) -> NicFacts:
    return wait_until(nic, lambda f: f.carrier, "carrier", timeout_s, monotonic, sleep)


def wait_ipv4(
    nic: Nic, timeout_s: float, monotonic: Callable[[], float], sleep: Callable[[float], None]
) -> NicFacts:
    return wait_until(
        nic, lambda f: f.carrier and f.ipv4 is not None, "IPv4 address", timeout_s, monotonic, sleep
    )


def vlan_name(parent: str, vlan: int) -> str:
    name = f"{parent}.{vlan}"
    return name if len(name) <= 15 else f"{parent[: 15 - len(str(vlan)) - 1]}.{vlan}"


def apply_vlan(parent: str, vlan: int, run: Callable[[list[str]], None] | None = None) -> str:
    """Create (idempotently) and bring up ``parent.vlan`` with iproute2; needs CAP_NET_ADMIN. Returns its name."""
    if not 1 <= vlan <= 4094:
        raise HalError(parent, "BAD_VLAN", f"VLAN {vlan} outside 1..4094")
    name = vlan_name(parent, vlan)
    runner = run or _ip
    if not (SYSFS_NET / name).exists():
        runner(["link", "add", "link", parent, "name", name, "type", "vlan", "id", str(vlan)])
    runner(["link", "set", name, "up"])
    return name


def _ip(args: list[str]) -> None:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    done = subprocess.run([ip, *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise HalError(
            args[-1] if args else "ip",
            "IP_FAILED",
            f"ip {' '.join(args)}: {done.stderr.strip()}",
            "the phone needs CAP_NET_ADMIN to apply the voice VLAN",
        )
