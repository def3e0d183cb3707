"""`phoneprov demo --rig`: the field's remedy, power-cycling, shown end to end without hardware.

A lab pool on loopback (as in :func:`tools.demo.run_demo`), a byte-exact LCUS-4 relay board on a real pty, and
an emulated phone whose power supply *is* relay 2 of that board: while the relay is closed the phone runs
(boots, signs in, serves its status endpoint, stays registered); when it opens the phone is gone at once — no
unregister, no status. The real rig code drives it through a real rig file: ``tools.rig.switch`` powers the
phone on, ``tools.rig.power_cycle`` cycles it and waits for the status endpoint to report a *new* boot signed
in, which is the time-to-SIGNED_IN a lab cares about.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hal.emulators.relays import LcusModel, PtyEmulator
from hal.errors import HalError
from tools.demo import DEMO_USER, demo_pool, demo_pool_config, demo_workdir, loopback_phone, pool_info
from tools.pool.node import PoolNode
from tools.poweredphone import BootRecord, PoweredPhone
from tools.rig import RigPhone, load_rig, phone_status, power_cycle, switch

PHONE = "phone-1"
BOARD = "lcus-4"
PHONE_CHANNEL = 2  # the relay the emulated phone's power supply hangs on
STATUS_POLL_S = 0.05  # how often the rig asks the phone's status endpoint while waiting for SIGNED_IN

Emit = Callable[[str, object], None]


@dataclass(frozen=True)
class BoardInfo:
    kind: str
    tty: str
    phone_channel: int


@dataclass(frozen=True)
class RigInfo:
    path: Path
    phone: RigPhone


@dataclass(frozen=True)
class RigDemoOutcome:
    tty: str
    board: str
    channel: int  # the relay the rig file names
    phone_channel: int  # the relay the phone really hangs on (they differ only in a miswiring test)
    rig_file: str | None  # None when the workdir was temporary: gone by the time anyone reads this
    status_url: str
    pool: dict[str, Any]
    first_signed_in_after_s: float | None = None  # `rig on` → the status endpoint says signed-in
    cycle: dict[str, Any] | None = None  # tools.rig.power_cycle's result; None when the first power-on failed
    status_before: dict[str, Any] | None = None
    status_after: dict[str, Any] | None = None
    boots: tuple[BootRecord, ...] = ()
    registrations_before: tuple[dict[str, str], ...] = ()
    registrations_after: tuple[dict[str, str], ...] = ()
    error: str | None = None

    @property
    def signed_in_after_s(self) -> float | None:
        """Power back on → the new boot reports SIGNED_IN, as the rig measured it."""
        return self.cycle.get("signed_in_after_s") if self.cycle else None

    @property
    def new_boot(self) -> bool:
        before, after = self.status_before or {}, self.status_after or {}
        return after.get("boot_started_at") not in (None, before.get("boot_started_at"))

    @property
    def exit_code(self) -> int:
        after = self.status_after or {}
        ok = self.error is None and self.signed_in_after_s is not None and after.get("state") == "signed-in"
        return 0 if ok and self.new_boot else 1


def write_rig_file(path: Path, tty: str, channel: int, off_s: float, status_url: str) -> Path:
    """The rig file a lab would write for this bench: one phone on one relay, with its status endpoint."""
    path.write_text(
        f"# phoneprov rig demo: {PHONE} is powered by relay {PHONE_CHANNEL} of an emulated {BOARD}\n"
        f"[defaults]\noff_s = {off_s!r}\n\n"
        f"[phones.{PHONE}]\nboard = {json.dumps(BOARD)}\nchannel = {channel}\n"
        f"port = {json.dumps(tty)}\nstatus_url = {json.dumps(status_url)}\n",
        encoding="utf-8",
    )
    return path


def run_rig_demo(
    workdir: Path | None = None,
    on_event: Emit = lambda kind, value: None,
    *,
    wait_s: float = 30.0,
    off_s: float = 1.0,
    rig_channel: int = PHONE_CHANNEL,
    status_port: int = 0,
    store_timeout_s: float = 1.5,
) -> RigDemoOutcome:
    """Pool, board, rig file, powered phone; `rig on`, wait for SIGNED_IN, `rig cycle`; all torn down after.

    ``rig_channel`` other than :data:`PHONE_CHANNEL` miswires the rig file (the relay it switches feeds
    nothing); ``status_port`` 0 picks a free loopback port once, kept for every boot of the run.
    """
    emit = _serialised(on_event)
    with demo_workdir(workdir) as root, ExitStack() as stack:
        cfg = demo_pool_config(root, store_timeout_s)
        node = stack.enter_context(demo_pool(cfg))
        emit("pool", node)
        board = stack.enter_context(PtyEmulator(LcusModel(4)))
        emit("board", BoardInfo(BOARD, board.port, PHONE_CHANNEL))
        port = status_port or _free_port()
        url = f"http://127.0.0.1:{port}/status"
        rig_path = write_rig_file(root / "rig.toml", board.port, rig_channel, off_s, url)
        rig = load_rig(rig_path)
        emit("rig", RigInfo(rig_path, rig[PHONE]))
        phone = stack.enter_context(
            PoweredPhone(
                PHONE, board, PHONE_CHANNEL, loopback_phone(node, root), root / "rig-phone", port, emit
            )
        )
        base = RigDemoOutcome(
            board.port,
            BOARD,
            rig_channel,
            PHONE_CHANNEL,
            str(rig_path) if workdir is not None else None,
            url,
            pool_info(cfg, workdir is not None),
        )
        outcome = _exercise(base, rig, node, phone, wait_s, emit)
    emit("result", outcome)
    return outcome


def _exercise(
    base: RigDemoOutcome,
    rig: dict[str, RigPhone],
    node: PoolNode,
    phone: PoweredPhone,
    wait_s: float,
    emit: Emit,
) -> RigDemoOutcome:
    def bindings() -> tuple[dict[str, str], ...]:
        return tuple(r.as_row() for r in node.store.registrations(DEMO_USER, node.clock.now()))

    try:
        emit("switch", switch(rig, PHONE, on=True))
        first, error = _wait_signed_in(base.status_url, wait_s)
        if error is not None:
            emit("error", error)
            return replace(base, boots=phone.boots, error=error)
        before, regs_before = phone_status(base.status_url), bindings()
        emit("cycle", rig[PHONE].spec.off_s)
        cycled = power_cycle(rig, PHONE, wait_s=wait_s, poll_s=STATUS_POLL_S)
    except HalError as exc:
        emit("error", f"{PHONE}: {exc}")
        return replace(base, boots=phone.boots, error=f"{PHONE}: {exc}")
    after = phone_status(base.status_url)
    emit("cycled", cycled)
    return replace(
        base,
        first_signed_in_after_s=first,
        cycle=cycled,
        status_before=before,
        status_after=after,
        boots=phone.boots,
        registrations_before=regs_before,
        registrations_after=bindings(),
        error=cycled.get("error"),
    )


def _wait_signed_in(url: str, wait_s: float) -> tuple[float | None, str | None]:
    """(seconds until the status endpoint said signed-in, None) — or (None, why not) after ``wait_s``."""
    started = time.monotonic()
    while time.monotonic() - started < wait_s:
        seen = phone_status(url, timeout_s=1.0)
        if seen and seen.get("state") == "signed-in":
            return round(time.monotonic() - started, 3), None
        if seen and seen.get("state") == "failed":
            err = seen.get("last_error") or {}
            return None, f"{PHONE} failed to sign in after power-on: {err.get('stage')} {err.get('code')}"
        time.sleep(STATUS_POLL_S)
    return None, f"{PHONE} did not report SIGNED_IN within {wait_s:g} s of power-on"


def _free_port() -> int:
    """A loopback port free now; each boot's status server binds it again (SO_REUSEADDR, as http.server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serialised(on_event: Emit) -> Emit:
    """Events come from the rig (main thread) and from the phone's threads: one at a time, whole lines."""
    lock = threading.Lock()

    def emit(kind: str, value: object) -> None:
        with lock:
            on_event(kind, value)

    return emit
