"""Stage DHCP_INFORM's client logic with a stateful fake network: retransmission, reply filtering, sources."""

from __future__ import annotations

import random
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import dhcpclient
from agent.clock import TimeConfig, sync_time
from agent.discovery import DiscoveryConfig, discover
from agent.net import Resolver
from agent.stages import StageError
from agent.wire import dhcp
from tests.fakes import FakeClock

MAC = b"\x02\x00\x00\x00\x00\x09"
INFO = dhcp.UcVendorInfo(
    "MS-UC-Client", "https", "pool.lab.test", "443", "/CertProv/CertProvisioningService.svc"
)


class FakeNet:
    """A UDP endpoint whose peer answers each request with ``answer(request, n)`` (a list of datagrams)."""

    def __init__(self, clock: FakeClock, answer: Callable[[dhcp.DhcpMessage, int], list[bytes]]) -> None:
        self.clock, self.answer = clock, answer
        self.sent: list[tuple[float, dhcp.DhcpMessage]] = []
        self.queue: list[bytes] = []

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = dhcp.decode(data)
        self.sent.append((self.clock.t, msg))
        self.queue.extend(self.answer(msg, len(self.sent)))

    def recv(self, timeout_s: float) -> tuple[bytes, tuple[str, int]] | None:
        if self.queue:
            return self.queue.pop(0), ("192.0.2.1", 67)
        self.clock.t += timeout_s
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeNet:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def ack(request: dhcp.DhcpMessage, **changes: object) -> bytes:
    options = [(43, dhcp.encode_option43(INFO)), (120, dhcp.encode_option120(["pool.lab.test"]))]
    msg = dhcp.build_inform_ack(request, options, IPv4Address("192.0.2.1"))
    return dhcp.encode(msg.__class__(**{**msg.__dict__, **changes}))


def run(answer: Callable[[dhcp.DhcpMessage, int], list[bytes]], **cfg: object) -> tuple[FakeNet, object]:
    clock = FakeClock()
    net = FakeNet(clock, answer)
    cfg.setdefault("lease_files", ())
    config = DiscoveryConfig(ciaddr=IPv4Address("192.0.2.50"), chaddr=MAC, **cfg)  # type: ignore[arg-type]
    try:
        result: object = discover(config, clock, lambda: 0xABCD, lambda _: net, random.Random(7))  # type: ignore[arg-type,return-value]
    except StageError as exc:
        result = exc
    return net, result


def test_schedule_doubles_with_bounded_jitter() -> None:
    waits = dhcpclient.schedule(5, 4.0, 1.0, random.Random(1))
    for k, wait in enumerate(waits):
        assert abs(wait - min(4.0 * 2**k, 64.0)) <= 1.0


def test_retransmits_on_schedule_then_fails_with_no_answer() -> None:
    net, result = run(lambda req, n: [], tries=3, interval_s=4.0, jitter_s=1.0)
    assert isinstance(result, StageError) and result.code == "NO_ANSWER" and "3 INFORMs" in result.detail
    times = [t for t, _ in net.sent]
    assert len(times) == 3 and 3.0 <= times[1] - times[0] <= 5.0 and 7.0 <= times[2] - times[1] <= 9.0
    assert all(m.xid == 0xABCD and m.ciaddr == IPv4Address("192.0.2.50") for _, m in net.sent)


def test_replies_for_others_are_ignored_until_ours_arrives() -> None:
    def answer(req: dhcp.DhcpMessage, n: int) -> list[bytes]:
        return [
            b"garbage",
            ack(req, xid=req.xid + 1),
            ack(req, chaddr=b"\x02" * 6 + bytes(10)),
            ack(req, options=((53, bytes([dhcp.MessageType.NAK])),)),
            ack(req),
        ]

    _, found = run(answer)
    assert not isinstance(found, StageError), found
    assert found.certprov_url == INFO.certprov_url and found.informs_sent == 1  # type: ignore[attr-defined]
    assert found.sources["registrar"] == "DHCPACK from 192.0.2.1, option 120"  # type: ignore[attr-defined]


def test_second_inform_answer_counts() -> None:
    _, found = run(lambda req, n: [ack(req)] if n == 2 else [], interval_s=1.0)
    assert not isinstance(found, StageError) and found.informs_sent == 2  # type: ignore[attr-defined]


def test_plain_http_option_43_is_refused() -> None:
    insecure = dhcp.UcVendorInfo(
        "MS-UC-Client", "http", "pool.lab.test", "80", "/CertProv/CertProvisioningService.svc"
    )

    def answer(req: dhcp.DhcpMessage, n: int) -> list[bytes]:
        msg = dhcp.build_inform_ack(req, [(43, dhcp.encode_option43(insecure))], IPv4Address("192.0.2.1"))
        return [dhcp.encode(msg)]

    _, result = run(answer)
    assert isinstance(result, StageError) and result.code == "INSECURE_URL"


def test_lease_fallback_reads_a_raw_dhcpcd_lease(tmp_path: Path) -> None:
    request = dhcp.build_inform(1, "192.0.2.50", MAC)
    lease = tmp_path / "eth0.lease"
    lease.write_bytes(ack(request))
    _, found = run(lambda req, n: [], tries=1, lease_files=(lease,))
    assert not isinstance(found, StageError), found
    assert found.sources["certprov_url"] == f"lease {lease}, option 43"  # type: ignore[attr-defined]


def test_dhclient_text_lease(tmp_path: Path) -> None:
    opt43 = ":".join(f"{b:x}" for b in dhcp.encode_option43(INFO))
    opt120 = ":".join(f"{b:x}" for b in dhcp.encode_option120(["pool.lab.test"]))
    lease = tmp_path / "dhclient.eth0.leases"
    lease.write_text(
        'lease {\n  interface "eth0";\n  option vendor-encapsulated-options ' + opt43 + ";\n"
        "  option unknown-120 " + opt120 + ";\n  option ntp-servers 192.0.2.1;\n"
        '  option domain-name "lab.test";\n}\n'
    )
    _, found = run(lambda req, n: [], tries=1, lease_files=(lease,))
    assert not isinstance(found, StageError), found
    assert found.registrar_fqdn == "pool.lab.test" and found.domain == "lab.test"  # type: ignore[attr-defined]
    assert found.ntp_servers == ("192.0.2.1",)  # type: ignore[attr-defined]


@given(st.binary(max_size=400))
def test_garbage_lease_files_never_crash_discovery(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    lease = tmp_path_factory.mktemp("lease") / "x.lease"
    lease.write_bytes(data)
    _, result = run(lambda req, n: [], tries=1, lease_files=(lease,))
    assert isinstance(result, StageError) or hasattr(result, "certprov_url")


def test_time_falls_back_to_srv_then_to_the_fallback_host() -> None:
    class Quiet:
        def __init__(self) -> None:
            self.asked: list[tuple[str, int]] = []

        def send(self, data: bytes, addr: tuple[str, int]) -> None:
            self.asked.append(addr)

        def recv(self, timeout_s: float) -> None:
            return None

        def __enter__(self) -> Quiet:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    quiet = Quiet()
    cfg = TimeConfig(port=123, tries=1, timeout_s=0.01, fallback=("192.0.2.9",))
    with pytest.raises(StageError) as err:
        sync_time(
            [], cfg, FakeClock(), Resolver(), srv=lambda: ["192.0.2.7", "192.0.2.8"], endpoint=lambda: quiet
        )  # type: ignore[arg-type,return-value]
    assert [a for a, _ in quiet.asked] == ["192.0.2.7", "192.0.2.8", "192.0.2.9"]
    assert err.value.code == "NO_ANSWER"
