"""The voice VLAN: DHCP names it, the phone moves onto it and asks for the pool there — or says why not.

VoiceVlan runs against a stateful fake host (interfaces that exist once created, an address the OS's DHCP
client hands out a few seconds later, an unprivileged host that refuses ``ip link add``); the phone's side
runs against the lab pool's real DHCP responder, which answers the CPE-OCPHONE INFORM with the VLAN.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from agent.clocks import SystemClock
from agent.discovery import DiscoveryConfig
from agent.phone import Phone
from boot.vlan import VoiceVlan
from hal.errors import HalError
from hal.nic import NicFacts, vlan_name
from tests.e2e.conftest import start_lab
from tests.fakes import FakeClock


class FakeHost:
    """Interfaces by name; a VLAN interface gets its address ``lease_after_s`` after it was created."""

    def __init__(self, clock: FakeClock, privileged: bool = True, lease_after_s: float | None = 2.0) -> None:
        self.clock, self.privileged, self.lease_after_s = clock, privileged, lease_after_s
        self.created: dict[str, float] = {}

    def apply(self, parent: str, vlan: int) -> str:
        if not self.privileged:
            raise HalError(parent, "IP_FAILED", "ip link add: Operation not permitted", "needs CAP_NET_ADMIN")
        name = vlan_name(parent, vlan)
        self.created.setdefault(name, self.clock.t)
        return name

    def nic(self, name: str) -> FakeNic:
        return FakeNic(self, name)


class FakeNic:
    def __init__(self, host: FakeHost, name: str) -> None:
        self.host, self.name = host, name

    def facts(self) -> NicFacts:
        born = self.host.created[self.name]
        leased = self.host.lease_after_s is not None and self.host.clock.t - born >= self.host.lease_after_s
        ipv4 = IPv4Interface("10.100.0.57/24") if leased else None
        return NicFacts(self.name, "02:00:00:00:00:01", ipv4, True, "up")


def _voice(host: FakeHost, clock: FakeClock) -> VoiceVlan:
    return VoiceVlan("eth0", clock, apply=host.apply, nic=host.nic, timeout_s=30.0)


BASE = DiscoveryConfig(interface="eth0", vlan=True)


def test_the_phone_moves_onto_the_voice_vlan_once_it_has_an_address() -> None:
    clock = FakeClock()
    host = FakeHost(clock)
    voice = _voice(host, clock)
    moved = voice.enter(100, BASE)
    assert moved is not None and moved.interface == "eth0.100" and moved.vlan is False
    assert voice.interface == "eth0.100" and voice.vlan == 100 and voice.problem is None
    assert 2.0 <= clock.t < 3.0  # waited for the lease, not for the whole timeout
    assert voice.discovery(BASE).interface == "eth0.100"  # later attempts ask on the VLAN directly
    assert voice.enter(100, moved) is None  # already there: nothing created twice
    assert list(host.created) == ["eth0.100"]


def test_an_unprivileged_phone_stays_untagged_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    voice = _voice(FakeHost(clock, privileged=False), clock)
    with caplog.at_level(logging.WARNING, "phoneprov.boot"):
        assert voice.enter(100, BASE) is None
    assert voice.interface is None and voice.discovery(BASE) == BASE
    assert voice.problem is not None and "Operation not permitted" in voice.problem and "100" in voice.problem
    assert len(caplog.records) == 1 and "staying untagged on eth0" in caplog.records[0].getMessage()


def test_no_address_on_the_vlan_is_a_timeout_not_a_hang() -> None:
    clock = FakeClock()
    voice = _voice(FakeHost(clock, lease_after_s=None), clock)
    assert voice.enter(100, BASE) is None
    assert 30.0 <= clock.t <= 30.5
    assert voice.problem is not None and "no IPv4 address after 30 s" in voice.problem


def test_a_lab_without_broadcast_is_left_alone() -> None:
    clock = FakeClock()
    host = FakeHost(clock)
    lab = DiscoveryConfig(server=("192.0.2.1", 67), vlan=True)
    assert _voice(host, clock).enter(100, lab) is None and host.created == {}


def test_the_phone_asks_again_on_the_vlan_the_pool_named(tmp_path: Path) -> None:
    lab = start_lab(tmp_path, voice_vlan=100)
    try:
        seen: list[int] = []

        def on_vlan(vlan: int, cfg: DiscoveryConfig) -> DiscoveryConfig:
            seen.append(vlan)
            return replace(cfg, bind=("127.0.0.1", 0))  # the "VLAN interface" of a loopback lab

        cfg = lab.phone_config(discovery=replace(lab.phone_config().discovery, vlan=True))
        run = Phone(cfg, lab.trust(), SystemClock(), on_vlan=on_vlan).run()
        assert run.ok, run.diagnosis
        assert seen == [100]
        assert run.discovery is not None and run.discovery.vlan == 100
        assert "asked again on 127.0.0.1" in run.discovery.sources["vlan"]
        assert run.discovery.informs_sent >= 2
        if run.session is not None:
            run.session.close()
    finally:
        lab.node.stop()
