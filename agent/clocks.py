"""Injected time: everything that waits or checks validity takes a :class:`Clock`, so tests never sleep.

After stage TIME the phone runs on an :class:`OffsetClock`: the system clock corrected by the measured
SNTP offset, which is what a phone without a settable RTC does.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC wall-clock time."""
        ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class OffsetClock:
    """Another clock shifted by a fixed offset (seconds), e.g. the SNTP-measured correction."""

    def __init__(self, base: Clock, offset_s: float) -> None:
        self.base = base
        self.offset_s = offset_s

    def now(self) -> datetime:
        return self.base.now() + timedelta(seconds=self.offset_s)

    def monotonic(self) -> float:
        return self.base.monotonic()

    def sleep(self, seconds: float) -> None:
        self.base.sleep(seconds)
