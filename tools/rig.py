"""`phoneprov rig`: the lab's phones on their relays — status, on, off, and the field's remedy, power-cycle.

A rig file says which phone is on which board and channel (and, optionally, where the phone reports its status):

```toml
[defaults]
off_s = 3.0                     # how long a cycle keeps the phone off

[phones.phone-7]
board = "lcus-4"                # lcus-N | kmtronic-N | numato-N | devantech-N | dcttech | gpio | gpio-active-high
channel = 2
serial_number = "A7B3C9"        # or usb_path = "1-1.2" (boards without a serial) or port = "/dev/serial/by-path/…"
status_url = "http://192.0.2.57:8765/status"   # the phone's status endpoint: cycle waits for SIGNED_IN
                                # (the phone's agent.toml [status] listen must then not be loopback-only)
```
"""

from __future__ import annotations

import json
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hal.emulators.relays import (
    DevantechModel,
    KmtronicModel,
    LcusModel,
    NumatoModel,
    PtyEmulator,
)
from hal.errors import HalError
from hal.power.boards import BoardSpec, ManagedSwitch, board_kinds, open_switch
from hal.power.protocol import LEFT_OFF, cycle

_PHONE_KEYS = {"board", "channel", "serial_number", "usb_path", "port", "off_s", "timeout_s", "status_url"}
_DEFAULT_KEYS = {"off_s", "timeout_s"}  # what [defaults] may set for every phone


class RigError(ValueError):
    """A rig file or command problem, in one line."""


@dataclass(frozen=True)
class RigPhone:
    name: str
    spec: BoardSpec
    status_url: str | None = None


def load_rig(path: Path) -> dict[str, RigPhone]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RigError(f"cannot read rig file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RigError(f"{path}: invalid TOML: {exc}") from None
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise RigError(f"{path}: [defaults] must be a table")
    if set(defaults) - _DEFAULT_KEYS:
        raise RigError(f"{path}: [defaults]: unknown key {sorted(set(defaults) - _DEFAULT_KEYS)[0]!r}")
    phones = data.get("phones")
    if not isinstance(phones, dict) or not phones:
        raise RigError(f"{path}: no [phones.<name>] tables")
    return {name: _phone(path, name, table, defaults) for name, table in phones.items()}


def _phone(path: Path, name: str, table: Any, defaults: dict[str, Any]) -> RigPhone:
    where = f"{path}: [phones.{name}]"
    if not isinstance(table, dict):
        raise RigError(f"{where} must be a table")
    unknown = set(table) - _PHONE_KEYS
    if unknown:
        raise RigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    values = {**defaults, **table}
    status_url = values.pop("status_url", None)
    if status_url is not None and not (
        isinstance(status_url, str) and status_url.startswith(("http://", "https://"))
    ):
        raise RigError(f"{where}: status_url must be an http(s) URL")
    kind = values.get("board")
    if kind is not None and kind not in board_kinds():
        raise RigError(f"{where}: unknown board {kind!r}; known: {', '.join(board_kinds())}")
    try:
        spec = BoardSpec(kind=values.pop("board"), **values)
    except KeyError:
        raise RigError(f"{where}: board is required") from None
    except (TypeError, ValueError, HalError) as exc:
        raise RigError(f"{where}: {exc}") from None
    return RigPhone(name, spec, status_url)


def _pick(rig: dict[str, RigPhone], name: str) -> RigPhone:
    if name not in rig:
        raise RigError(f"no phone {name!r} in the rig (known: {', '.join(sorted(rig))})")
    return rig[name]


def phone_status(url: str | None, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The phone's own status document, or None when it does not answer (booting, powered off)."""
    if url is None:
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except (urllib.error.URLError, OSError, ValueError):
        return None


def status(
    rig: dict[str, RigPhone], names: list[str], opener: Callable[[BoardSpec], ManagedSwitch] = open_switch
) -> list[dict[str, Any]]:
    rows = []
    for name in names or sorted(rig):
        phone = _pick(rig, name)
        row: dict[str, Any] = {"phone": name, "board": phone.spec.kind, "channel": phone.spec.channel}
        try:  # one missing board must not hide the phones on the others
            switch = opener(phone.spec)
            try:
                power = switch.state()
            finally:
                switch.close()
            row.update(power=power.describe(), knowledge=power.knowledge)
        except HalError as exc:
            row.update(power=None, knowledge=None, error=str(exc))
        seen = phone_status(phone.status_url)
        row.update(phone_state=seen.get("state") if seen else None, stage=seen.get("stage") if seen else None)
        rows.append(row)
    return rows


def switch(
    rig: dict[str, RigPhone], name: str, on: bool, opener: Callable[[BoardSpec], ManagedSwitch] = open_switch
) -> dict[str, Any]:
    phone = _pick(rig, name)
    try:
        sw = opener(phone.spec)
        try:
            state = sw.on() if on else sw.off()
        finally:
            sw.close()
    except HalError as exc:
        return {"phone": name, "power": None, "error": f"switching {'on' if on else 'off'} failed: {exc}"}
    return {"phone": name, "power": state.describe(), "knowledge": state.knowledge}


def power_cycle(
    rig: dict[str, RigPhone],
    name: str,
    wait_s: float = 0.0,
    opener: Callable[[BoardSpec], ManagedSwitch] = open_switch,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    poll_s: float = 1.0,
) -> dict[str, Any]:
    """Off, wait the phone's off time, on; then (with a status URL and ``wait_s``) wait for SIGNED_IN."""
    phone = _pick(rig, name)
    before = phone_status(phone.status_url)
    previous_boot = before.get("boot_started_at") if before else None
    try:
        sw = opener(phone.spec)
        try:
            state = cycle(sw, phone.spec.off_s, sleep)
        finally:
            sw.close()
    except HalError as exc:
        step = "on" if exc.code == LEFT_OFF else "off"
        left = (
            "OFF: the board took 'off' but not 'on'"
            if step == "on"
            else "as it was: 'off' did not go through"
        )
        return {
            "phone": name,
            "power": None,
            "error": f"power-cycle failed at '{step}' ({exc}); phone left {left}",
        }
    result: dict[str, Any] = {
        "phone": name,
        "power": state.describe(),
        "off_s": phone.spec.off_s,
        "signed_in_after_s": None,
    }
    if phone.status_url is None or wait_s <= 0:
        return result
    started = monotonic()
    deadline = started + wait_s
    while monotonic() < deadline:
        seen = phone_status(phone.status_url)
        # a new boot that has signed in — not the old one still answering because the relay did nothing
        if seen and seen.get("state") == "signed-in" and seen.get("boot_started_at") != previous_boot:
            result["signed_in_after_s"] = round(monotonic() - started, 3)
            return result
        sleep(poll_s)
    result["error"] = f"{name} did not report SIGNED_IN within {wait_s:g} s"
    return result


def emulator(kind: str) -> PtyEmulator:
    """A byte-exact board on a pty, for people and demos: ``phoneprov rig emulate lcus-4`` prints its tty."""
    family, _, size = kind.partition("-")
    models: dict[str, Callable[[int], Any]] = {
        "lcus": LcusModel,
        "kmtronic": KmtronicModel,
        "numato": NumatoModel,
        "devantech": DevantechModel,
    }
    if family not in models or kind not in board_kinds():  # the sizes the real drivers know
        known = ", ".join(k for k in board_kinds() if k.partition("-")[0] in models)
        raise RigError(f"cannot emulate {kind!r}; serial boards: {known}")
    return PtyEmulator(models[family](int(size))).start()
