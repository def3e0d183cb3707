"""Stage TIME: measure the clock offset with SNTP before any certificate is checked.

Order (protocol.md §4): DHCP option 42 servers, then the configured fallback (``time.windows.com`` in the
field, a lab host here). Three tries per server; no answer anywhere fails the stage — no TLS is attempted
with an unsynchronised clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from agent import trace
from agent.clocks import Clock, OffsetClock
from agent.net import Resolver, UdpEndpoint
from agent.stages import Stage, StageError, WireError
from agent.wire import sntp


@dataclass(frozen=True)
class TimeConfig:
    port: int = 123
    tries: int = 3
    timeout_s: float = 1.0
    fallback: tuple[str, ...] = ("time.windows.com",)
    max_offset_s: float = 10 * 365 * 86400.0
    set_system_clock: bool = False  # a Pi without RTC: boot/ turns this on (needs CAP_SYS_TIME)
    local_clock_ok: bool = (
        False  # a synthetic transaction on an NTP-synced PC: no server known → its own clock
    )


@dataclass(frozen=True)
class TimeSync:
    server: str
    offset_s: float
    delay_s: float
    clock: OffsetClock
    source: str = "option 42"


def sync_time(
    servers: Sequence[str],
    cfg: TimeConfig,
    clock: Clock,
    resolver: Resolver,
    srv: Callable[[], list[str]] | None = None,
    endpoint: Callable[[], UdpEndpoint] = UdpEndpoint,
    set_clock: Callable[[float], None] | None = None,
) -> TimeSync:
    """Ask each candidate in order (option 42, else ``_ntp._udp`` SRV, then the fallback); the first good SNTP
    reply sets the phone's clock offset — or, with ``cfg.set_system_clock`` and privileges, the system clock."""
    errors: list[str] = []
    codes: list[str] = []  # why each server gave no time
    candidates = _candidates(servers, cfg, srv, errors)
    if not candidates and cfg.local_clock_ok:
        return TimeSync(
            "local clock", 0.0, 0.0, OffsetClock(clock, 0.0), "this machine's clock (no time server)"
        )
    for name, source in candidates.items():
        try:
            address = resolver.resolve(name)
        except OSError as exc:
            errors.append(str(exc))
            codes.append("NO_ANSWER")
            continue
        with endpoint() as ep:
            result = _ask(ep, name, (address, cfg.port), cfg, clock, errors, codes)
        if result is not None:
            return _apply(replace(result, source=source), cfg, clock, set_clock)
    tried = ", ".join(candidates) or "no server"
    last = f" (last: {errors[-1]})" if errors else ""
    # Every server refusing the same way (all Kiss-o'-Death, all unsynchronised) is diagnosed as that.
    code = (
        codes[0] if codes and len(set(codes)) == 1 and codes[0] in ("KOD", "UNSYNCHRONISED") else "NO_ANSWER"
    )
    raise StageError(Stage.TIME, code, f"no usable SNTP answer from {tried}{last}")


def _candidates(
    servers: Sequence[str], cfg: TimeConfig, srv: Callable[[], list[str]] | None, errors: list[str]
) -> dict[str, str]:
    """name → where it came from, in the order of protocol.md §4."""
    found: dict[str, str] = {name: "option 42" for name in servers}
    if not found and srv is not None:
        try:
            found = {name: "DNS SRV _ntp._udp" for name in srv()}
        except OSError as exc:
            errors.append(str(exc))
    for name in cfg.fallback:
        found.setdefault(name, "fallback")
    return found


def _apply(
    synced: TimeSync, cfg: TimeConfig, clock: Clock, set_clock: Callable[[float], None] | None
) -> TimeSync:
    """Set the system clock when configured and allowed (root or CAP_SYS_TIME); otherwise — or when the kernel
    says no — the offset stays in ``synced.clock`` and every certificate check uses it."""
    if not cfg.set_system_clock:
        return synced
    try:
        (set_clock or _set_system_clock)(clock.now().timestamp() + synced.offset_s)
    except PermissionError:
        return replace(synced, source=f"{synced.source}, offset kept (not allowed to set the clock)")
    return replace(synced, clock=OffsetClock(clock, 0.0), source=f"{synced.source}, system clock set")


def _set_system_clock(unix_seconds: float) -> None:
    time.clock_settime(time.CLOCK_REALTIME, unix_seconds)


def _ask(
    ep: UdpEndpoint,
    name: str,
    addr: tuple[str, int],
    cfg: TimeConfig,
    clock: Clock,
    errors: list[str],
    codes: list[str],
) -> TimeSync | None:
    """Up to ``cfg.tries`` requests; a Kiss-o'-Death or an unsynchronised server is not asked again."""
    for _ in range(cfg.tries):
        t1 = clock.now().timestamp()
        request = sntp.build_request(t1)
        sent_tx = sntp.decode(request).tx_ts
        trace.emit(Stage.TIME, "sent", f"{addr[0]}:{addr[1]}", f"SNTP request to {name}", len(request))
        ep.send(request, addr)
        got = ep.recv(cfg.timeout_s)
        if got is not None:
            trace.emit(Stage.TIME, "received", f"{got[1][0]}:{got[1][1]}", "SNTP reply", len(got[0]))
        t4 = clock.now().timestamp()
        if got is None:
            errors.append(f"{name}: timeout")
            continue
        try:
            reply = sntp.parse_reply(got[0], sent_tx)
        except WireError as exc:
            errors.append(f"{name}: {exc.detail}")
            if exc.code in ("KOD", "UNSYNCHRONISED"):
                codes.append(exc.code)
                return None
            continue
        offset, delay = sntp.offset_delay(t1, sntp.from_ntp(reply.recv_ts), sntp.from_ntp(reply.tx_ts), t4)
        if abs(offset) > cfg.max_offset_s:
            errors.append(f"{name}: offset {offset:.0f} s is implausible")
            continue
        return TimeSync(name, offset, delay, OffsetClock(clock, offset))
    codes.append("NO_ANSWER")
    return None
