"""The DHCPINFORM exchange itself: one request, RFC 2131 §4.1 retransmission, replies filtered to ours.

Over a UDP endpoint bound to the phone's interface (port 68, broadcast to 255.255.255.255:67) or, in a
loopback lab, any port towards a configured server. Waits come from the injected clock; jitter from the
injected random source, so tests can pin the schedule.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

import psutil

from agent import trace
from agent.clocks import Clock
from agent.net import UdpEndpoint
from agent.stages import Stage, StageError, WireError
from agent.wire import dhcp

BROADCAST = ("255.255.255.255", 67)
MAX_WAIT_S = 64.0


@dataclass(frozen=True)
class Exchange:
    """One request's outcome: the ACK (None if nobody answered), who sent it, how many requests went out."""

    ack: dhcp.DhcpMessage | None
    sender: str | None
    sent: int
    ignored: tuple[str, ...] = ()


def schedule(tries: int, base_s: float, jitter_s: float, rng: random.Random) -> list[float]:
    """Waits after each request: base, 2·base, 4·base … (capped at 64 s), each ± jitter (RFC 2131 §4.1)."""
    waits = []
    for k in range(tries):
        wait = min(base_s * 2**k, MAX_WAIT_S) + rng.uniform(-jitter_s, jitter_s)
        waits.append(max(wait, base_s / 2))
    return waits


def exchange(
    ep: UdpEndpoint,
    request: dhcp.DhcpMessage,
    server: tuple[str, int],
    waits: list[float],
    clock: Clock,
) -> Exchange:
    """Send ``request`` until an ACK for its xid and chaddr arrives or the waits run out."""
    raw = dhcp.encode(request)
    ignored: list[str] = []
    for sent, wait in enumerate(waits, start=1):
        trace.emit(Stage.DHCP_INFORM, "sent", f"{server[0]}:{server[1]}", _describe(request, sent), len(raw))
        ep.send(raw, server)
        deadline = clock.monotonic() + wait
        while (left := deadline - clock.monotonic()) > 0:
            got = ep.recv(left)
            if got is None:
                break
            ack = _ours(got[0], request, ignored)
            trace.emit(
                Stage.DHCP_INFORM,
                "received",
                f"{got[1][0]}:{got[1][1]}",
                _describe(ack, sent)
                if ack is not None
                else f"ignored: {ignored[-1] if ignored else 'not ours'}",
                len(got[0]),
            )
            if ack is not None:
                return Exchange(ack, got[1][0], sent, tuple(ignored))
    return Exchange(None, None, len(waits), tuple(ignored))


def _describe(msg: dhcp.DhcpMessage, number: int) -> str:
    kind = msg.message_type.name if msg.message_type else "untyped"
    options = ", ".join(str(code) for code, _ in msg.options)
    return f"DHCP{kind} #{number} xid {msg.xid:#010x}, options {options}"


def _ours(data: bytes, request: dhcp.DhcpMessage, ignored: list[str]) -> dhcp.DhcpMessage | None:
    """The reply if it answers ``request`` (op, xid, chaddr, ACK); otherwise None, noting why."""
    try:
        msg = dhcp.decode(data)
    except WireError as exc:
        ignored.append(f"malformed reply ({exc.detail})")
        return None
    if msg.op != 2 or msg.xid != request.xid or msg.chaddr[:6] != request.chaddr[:6]:
        if msg.op == 2:
            ignored.append(f"reply for another request (xid {msg.xid:#010x})")
        return None
    if msg.message_type is not dhcp.MessageType.ACK:
        ignored.append(f"{msg.message_type.name if msg.message_type else 'untyped'} instead of ACK")
        return None
    return msg


def interface_facts(ifname: str) -> tuple[IPv4Address, bytes]:
    """(IPv4 address, MAC) of ``ifname``; StageError(NET) when it has none — INFORM needs an address."""
    addrs = psutil.net_if_addrs().get(ifname)
    if addrs is None:
        raise StageError(Stage.NET, "NO_INTERFACE", f"no network interface {ifname!r}")
    ipv4 = next((a.address for a in addrs if a.family == socket.AF_INET), None)
    mac = next((a.address for a in addrs if a.family == psutil.AF_LINK), None)
    if ipv4 is None:
        raise StageError(Stage.NET, "NO_ADDRESS", f"{ifname} has no IPv4 address (DHCPINFORM needs one)")
    return IPv4Address(ipv4), bytes.fromhex((mac or "02:00:00:00:00:01").replace(":", ""))


def interface_endpoint(ifname: str, port: int = 68) -> UdpEndpoint:
    """A UDP socket on 0.0.0.0:``port`` bound to ``ifname``, allowed to broadcast (needs CAP_NET_RAW)."""
    ep = UdpEndpoint(("0.0.0.0", port), broadcast=True)
    try:
        ep.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode() + b"\0")
    except OSError as exc:
        ep.close()
        raise StageError(Stage.DHCP_INFORM, "NO_SOCKET", f"cannot bind to {ifname}: {exc.strerror}") from None
    return ep


EndpointFactory = Callable[[], UdpEndpoint]
