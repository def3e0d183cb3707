"""Bounded timing helpers shared by the benchmark sections."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def per_call_us(fn: Callable[[], object], count: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean time per call (µs) of ``count`` calls."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(count):
            fn()
        samples.append((time.perf_counter() - start) / count * 1e6)
    return statistics.median(samples)


def once_ms(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall time of one call (ms) and what it returned or raised."""
    start = time.perf_counter()
    try:
        result: object = fn()
    except Exception as exc:  # the outcome is part of the measurement
        result = exc
    return (time.perf_counter() - start) * 1000, result


def ratio(ours: float, peer: float) -> str:
    return f"{ours / peer:.2f}" if peer > 0 else "n/a"
