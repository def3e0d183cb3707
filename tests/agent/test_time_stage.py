"""Stage TIME against real SNTP servers on loopback: a good one, a Kiss-o'-Death one, an unsynchronised one."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from agent.clock import TimeConfig, sync_time
from agent.clocks import SystemClock
from agent.net import Resolver
from agent.stages import Stage, StageError
from agent.wire import sntp

pytestmark = pytest.mark.timeout(30)


@contextmanager
def sntp_server(answer: Callable[[bytes], bytes]) -> Iterator[tuple[int, list[int]]]:
    """A bounded SNTP responder on loopback: answers until the test leaves the block."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()
    asked: list[int] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(512)
            except TimeoutError:
                continue
            asked.append(1)
            sock.sendto(answer(data), addr)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], asked
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def offset_reply(offset: float) -> Callable[[bytes], bytes]:
    return lambda req: sntp.build_reply(req, time.time() + offset, time.time() + offset)


def kod_reply(req: bytes) -> bytes:
    ok = sntp.decode(sntp.build_reply(req, time.time(), time.time()))
    return sntp.encode(ok.__class__(**{**ok.__dict__, "stratum": 0, "ref_id": b"RATE"}))


def test_offset_is_measured() -> None:
    with sntp_server(offset_reply(42.0)) as (port, _):
        synced = sync_time(["127.0.0.1"], TimeConfig(port=port, fallback=()), SystemClock(), Resolver())
    assert abs(synced.offset_s - 42.0) < 0.5
    assert abs((synced.clock.now() - SystemClock().now()).total_seconds() - 42.0) < 0.5


def test_kiss_of_death_is_diagnosed_and_not_asked_again() -> None:
    with sntp_server(kod_reply) as (port, asked), pytest.raises(StageError) as err:
        sync_time(["127.0.0.1"], TimeConfig(port=port, fallback=(), tries=3), SystemClock(), Resolver())
    assert (err.value.stage, err.value.code) == (Stage.TIME, "KOD")
    assert len(asked) == 1
    assert "RATE" in err.value.detail


def test_silence_is_no_answer() -> None:
    quiet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    quiet.bind(("127.0.0.1", 0))
    try:
        cfg = TimeConfig(port=quiet.getsockname()[1], fallback=(), tries=2, timeout_s=0.2)
        with pytest.raises(StageError) as err:
            sync_time(["127.0.0.1"], cfg, SystemClock(), Resolver())
    finally:
        quiet.close()
    assert err.value.code == "NO_ANSWER" and "timeout" in err.value.detail


def test_privileged_phone_sets_the_system_clock_instead_of_keeping_an_offset() -> None:
    set_to: list[float] = []
    with sntp_server(offset_reply(120.0)) as (port, _):
        cfg = TimeConfig(port=port, fallback=(), set_system_clock=True)
        synced = sync_time(["127.0.0.1"], cfg, SystemClock(), Resolver(), set_clock=set_to.append)
    assert len(set_to) == 1 and abs(set_to[0] - (time.time() + 120.0)) < 1.0
    assert synced.clock.offset_s == 0.0 and "system clock set" in synced.source


def test_unprivileged_or_unconfigured_phone_keeps_the_offset() -> None:
    with sntp_server(offset_reply(120.0)) as (port, _):
        synced = sync_time(["127.0.0.1"], TimeConfig(port=port, fallback=()), SystemClock(), Resolver())
    assert abs(synced.clock.offset_s - 120.0) < 1.0 and synced.source == "option 42"
