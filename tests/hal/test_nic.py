"""NIC facts from sysfs + psutil, waits with one deadline, and the voice VLAN applied with iproute2."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from hal.errors import HalError
from hal.nic import EmulatedNic, LinuxNic, apply_vlan, vlan_name, wait_carrier, wait_ipv4
from tests.interop.netns import unavailable


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def fake_sysfs(tmp: Path, name: str, carrier: str | None, operstate: str) -> Path:
    base = tmp / name
    base.mkdir(parents=True)
    if carrier is not None:
        (base / "carrier").write_text(carrier + "\n")
    (base / "operstate").write_text(operstate + "\n")
    return tmp


def addrs(name: str) -> dict[str, list[SimpleNamespace]]:
    return {
        name: [
            SimpleNamespace(family=psutil.AF_LINK, address="b8:27:eb:00:00:07", netmask=None),
            SimpleNamespace(family=socket.AF_INET, address="192.0.2.57", netmask="255.255.255.0"),
        ]
    }


def test_linux_nic_reads_sysfs_and_addresses(tmp_path: Path) -> None:
    nic = LinuxNic("eth0", fake_sysfs(tmp_path, "eth0", "1", "up"), lambda: addrs("eth0"))
    facts = nic.facts()
    assert facts.carrier and facts.operstate == "up" and facts.mac == "b8:27:eb:00:00:07"
    assert str(facts.ipv4) == "192.0.2.57/24"


def test_unreadable_carrier_is_no_carrier(tmp_path: Path) -> None:
    nic = LinuxNic("eth0", fake_sysfs(tmp_path, "eth0", None, "down"), lambda: {})
    assert not nic.facts().carrier and nic.facts().ipv4 is None


def test_missing_interface_is_a_hal_error(tmp_path: Path) -> None:
    with pytest.raises(HalError) as err:
        LinuxNic("nope0", tmp_path, lambda: {}).facts()
    assert err.value.code == "NO_INTERFACE"


def test_loopback_is_real() -> None:
    facts = LinuxNic("lo").facts()
    assert facts.ipv4 is not None and str(facts.ipv4.ip) == "127.0.0.1"


def test_wait_for_carrier_then_address_with_one_deadline() -> None:
    nic, t = EmulatedNic(), FakeTime()
    with pytest.raises(HalError) as err:
        wait_carrier(nic, 2.0, t.monotonic, t.sleep)
    assert err.value.code == "TIMEOUT" and 2.0 <= t.t <= 2.2
    nic.plug()
    assert wait_carrier(nic, 1.0, t.monotonic, t.sleep).carrier
    with pytest.raises(HalError):
        wait_ipv4(nic, 1.0, t.monotonic, t.sleep)
    nic.plug("192.0.2.57/24")
    assert str(wait_ipv4(nic, 1.0, t.monotonic, t.sleep).ipv4) == "192.0.2.57/24"


def test_vlan_commands_and_name_limit() -> None:
    ran: list[list[str]] = []
    assert apply_vlan("eth0", 100, ran.append) == "eth0.100"
    assert ran == [
        ["link", "add", "link", "eth0", "name", "eth0.100", "type", "vlan", "id", "100"],
        ["link", "set", "eth0.100", "up"],
    ]
    assert len(vlan_name("enxb827eb000007", 4094)) <= 15
    with pytest.raises(HalError):
        apply_vlan("eth0", 5000, ran.append)


@pytest.mark.slow
def test_vlan_is_really_created_in_a_namespace() -> None:
    why = unavailable()
    if why:
        pytest.skip(why)
    ns = "pp-vlan-test"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "ppv0", "type", "veth", "peer", "name", "ppv1"],
            check=True,
            timeout=10,
        )
        code = "from hal.nic import apply_vlan; print(apply_vlan('ppv0', 222))"
        done = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if "Unknown device type" in done.stderr:
            print("SKIP: this kernel has no 802.1Q (8021q) support", file=sys.stderr)
            pytest.skip("this kernel has no 802.1Q VLAN support (8021q)")
        assert done.returncode == 0, done.stderr
        show = subprocess.run(
            ["ip", "-n", ns, "-d", "link", "show", "ppv0.222"], capture_output=True, text=True, timeout=10
        )
        assert "vlan protocol 802.1Q id 222" in show.stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=10)
