"""Whole sign-ins on loopback against a real lab pool: where the time goes, stage by stage."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from tools.demo import run_demo

PHONES = 10


def run() -> list[str]:
    per_stage: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(PHONES):
            outcome = run_demo(None, Path(tmp) / f"run{i}")
            for r in outcome.attempts[-1].run.results:
                per_stage.setdefault(r.stage.value, []).append(r.ms)
    lines = [f"Sign-in on loopback ({PHONES} boots, each against a fresh pool; median ms per stage)"]
    total = 0.0
    for stage, values in per_stage.items():
        med = statistics.median(values)
        total += med
        lines.append(f"  {stage:<13} {med:8.1f} ms   (max {max(values):.1f})")
    lines.append(f"  {'total':<13} {total:8.1f} ms   (RSA 2048 key generation is inside CERT_REQUEST)")
    return lines
