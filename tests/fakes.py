"""Fakes shared by tests in several directories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class FakeClock:
    """Time moves only when the code under test waits: ``sleep`` advances both clocks at once."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> None:
        self.start, self.t = start, 0.0

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.t)

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
