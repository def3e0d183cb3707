"""How the rig demo looks to people (one aligned line per event, as it happens) and to scripts (one JSON doc).

Text: a label column (``pool``, ``board``, ``rig``, the phone's name) and what happened; the phone's stages
use :func:`tools.report.stage_line`, as every other demo does. JSON: ``{"result", "board": {...}, "rig_file",
"status_url", "first_signed_in_after_s", "cycle": {...} | null, "signed_in_after_s", "new_boot",
"status_before", "status_after", "boots": [...], "registrations": {"before", "after"}, "error", "pool"}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

from agent.stages import StageResult
from tools.demorig import PHONE, BoardInfo, RigDemoOutcome, RigInfo
from tools.pool.node import PoolNode
from tools.poweredphone import BootRecord, PowerEdge
from tools.report import stage_line

LABEL = 9


def _line(label: str, text: str) -> str:
    return f"{label:<{LABEL}} {text}"


def rig_demo_line(kind: str, value: object) -> str | None:
    """The line for one event of :func:`tools.demorig.run_rig_demo`; None for events shown elsewhere."""
    if isinstance(value, PoolNode):
        p, cfg = value.ports, value.cfg
        return _line(
            "pool",
            f"{cfg.fqdn} (node {cfg.node}) up on {cfg.bind}: dhcp {p.dhcp}, sntp {p.sntp}, "
            f"http {p.http}, https {p.https}, sip/tls {p.sip}",
        )
    if isinstance(value, BoardInfo):
        return _line(
            "board",
            f"{value.kind} emulated on {value.tty} (byte-exact, real driver); "
            f"{PHONE}'s power supply hangs on relay {value.phone_channel}",
        )
    if isinstance(value, RigInfo):
        spec = value.phone.spec
        return _line(
            "rig",
            f"{value.path}: {value.phone.name} = {spec.describe()}, off {spec.off_s:g} s, "
            f"status {value.phone.status_url}",
        )
    if kind == "switch" and isinstance(value, dict):
        return _line("rig", f"{value['phone']} power on -> relay {value['power']} ({value['knowledge']})")
    if kind == "cycle":
        return _line("rig", f"{PHONE} power-cycle: off for {value:g} s, then on; waiting for SIGNED_IN")
    if isinstance(value, PowerEdge):
        return _line(PHONE, _edge(value))
    if isinstance(value, StageResult):
        return _line("", stage_line(value).lstrip())
    if isinstance(value, BootRecord):
        return _line(PHONE, _boot(value))
    if kind == "cycled" and isinstance(value, dict):
        if value.get("signed_in_after_s") is None:
            return _line("rig", f"FAILED: {value.get('error', 'no SIGNED_IN')}")
        return _line("rig", f"{value['phone']} SIGNED_IN again after {value['signed_in_after_s']:.3f} s")
    if kind == "error":
        return _line("error", str(value))
    if isinstance(value, RigDemoOutcome):
        verdict = "ok" if value.exit_code == 0 else "FAILED"
        return _line("result", f"{verdict}: {value.error or 'new boot signed in after the power-cycle'}")
    return None


def _edge(edge: PowerEdge) -> str:
    if edge.on:
        return f"power on: boot {edge.boot} started {edge.boot_started_at}; status endpoint up"
    return f"power lost: boot {edge.boot} gone, registration dropped without unregistering, status down"


def _boot(rec: BootRecord) -> str:
    how = "stored identity" if rec.reused_identity else "full sign-in"
    if rec.signed_in_after_s is not None:
        return f"SIGNED_IN {rec.signed_in_after_s:.3f} s after power-on (boot {rec.number}, {how})"
    if rec.cut_short:
        return f"boot {rec.number} cut short by the power"
    d = rec.diagnosis or {}
    return f"boot {rec.number} failed: {d.get('stage')} {d.get('code')}: {d.get('problem')}"


def rig_demo_printer(out: TextIO) -> Callable[[str, object], None]:
    """An ``on_event`` for :func:`tools.demorig.run_rig_demo` that prints each event as it happens."""

    def emit(kind: str, value: object) -> None:
        line = rig_demo_line(kind, value)
        if line is not None:
            print(line, file=out, flush=True)

    return emit


def rig_demo_document(outcome: RigDemoOutcome) -> dict[str, Any]:
    """The stable JSON shape of the module docstring."""
    return {
        "result": "ok" if outcome.exit_code == 0 else "failed",
        "board": {
            "kind": outcome.board,
            "tty": outcome.tty,
            "channel": outcome.channel,
            "phone_channel": outcome.phone_channel,
        },
        "rig_file": outcome.rig_file,
        "status_url": outcome.status_url,
        "first_signed_in_after_s": outcome.first_signed_in_after_s,
        "cycle": outcome.cycle,
        "signed_in_after_s": outcome.signed_in_after_s,
        "new_boot": outcome.new_boot,
        "status_before": outcome.status_before,
        "status_after": outcome.status_after,
        "boots": [b.as_dict() for b in outcome.boots],
        "registrations": {
            "before": list(outcome.registrations_before),
            "after": list(outcome.registrations_after),
        },
        "error": outcome.error,
        "pool": outcome.pool,
    }
