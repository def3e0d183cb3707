"""boot.sdnotify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boot.sdnotify import Notifier


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket in a temp dir: (NOTIFY_SOCKET value, receiving socket)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    try:
        yield str(path), sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_watchdog_stopping_arrive_as_datagrams(systemd: tuple[str, socket.socket]) -> None:
    address, sock = systemd
    with Notifier.from_env({"NOTIFY_SOCKET": address}) as n:
        assert n.enabled
        assert n.ready(status="signed in as sip:alice@lab.test")
        assert received(sock) == ["READY=1", "STATUS=signed in as sip:alice@lab.test"]
        assert n.status("REGISTER: TLS-DSK with pool.lab.test")
        assert received(sock) == ["STATUS=REGISTER: TLS-DSK with pool.lab.test"]
        assert n.watchdog()
        assert received(sock) == ["WATCHDOG=1"]
        assert n.extend_timeout(30)
        assert received(sock) == ["EXTEND_TIMEOUT_USEC=30000000"]
        assert n.stopping()
        assert received(sock) == ["STOPPING=1"]


def test_abstract_namespace_socket() -> None:
    name = f"phoneprov-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        with Notifier.from_env({"NOTIFY_SOCKET": "@" + name}) as n:
            assert n.ready()
        assert received(sock) == ["READY=1"]
    finally:
        sock.close()


def test_status_cannot_inject_other_assignments(systemd: tuple[str, socket.socket]) -> None:
    address, sock = systemd
    with Notifier(address) as n:
        n.status("failed\nREADY=1\r\nWATCHDOG=1")
    assert received(sock) == ["STATUS=failed READY=1 WATCHDOG=1"]


@settings(max_examples=50)
@given(st.text(max_size=3000))
def test_any_status_text_arrives_as_one_status_line(text: str) -> None:
    name = f"phoneprov-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        with Notifier("@" + name) as n:
            assert n.status(text)
        lines = received(sock)
    finally:
        sock.close()
    assert len(lines) == 1 and lines[0].startswith("STATUS=")
    assert len(lines[0]) <= len("STATUS=") + 1024


def test_not_under_systemd_everything_is_a_no_op() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert not n.ready() and not n.status("x") and not n.watchdog() and not n.stopping()
    assert n.watchdog_interval_s() is None


def test_a_vanished_socket_is_not_an_error(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "gone"))
    assert n.enabled
    assert n.ready() is False  # ENOENT swallowed: systemd going away must not stop the phone
    assert n.ready() is False


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "60000000"})
    assert n.watchdog_interval_s() == 30.0
    mine = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(mine).watchdog_interval_s() == 30.0


@pytest.mark.parametrize(
    "env",
    [
        {"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"},  # meant for another process
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "sixty"},
        {"WATCHDOG_USEC": "-5"},
        {},
    ],
)
def test_watchdog_off(env: dict[str, str]) -> None:
    assert Notifier.from_env({"NOTIFY_SOCKET": "/run/x", **env}).watchdog_interval_s() is None
