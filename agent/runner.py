"""Runs stages one by one: times each, records one status line, stops at the first failure and diagnoses it.

Shared by the phone's boot sequence and the synthetic transactions, so both report stages the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from agent.clocks import Clock
from agent.diagnosis import Diagnosis, diagnose
from agent.stages import AgentError, Stage, StageResult

T = TypeVar("T")


class StageFailed(Exception):
    """A stage failed and has been recorded; the sequence stops (caught by the sequence's owner)."""


class StageRunner:
    def __init__(self, clock: Clock, on_stage: Callable[[StageResult], None] | None = None) -> None:
        self.clock, self.on_stage = clock, on_stage
        self.results: list[StageResult] = []
        self.error: AgentError | None = None

    def run(
        self,
        stage: Stage,
        work: Callable[[], T],
        describe: Callable[[T], str],
        *,
        passthrough: tuple[type[AgentError], ...] = (),
    ) -> T:
        """Run one stage's work; on failure record it and raise StageFailed.

        ``passthrough`` errors are recorded as this stage's failure but re-raised as they are, for a caller
        that recovers (3001: get a new ticket once). An error naming a *later* stage (3005 answers
        CERT_REQUEST but is CERT_PUBLISH's failure) records this stage as ok first, so the status shows
        exactly where sign-in stopped.
        """
        start = self.clock.monotonic()
        try:
            value = work()
        except passthrough as exc:
            self.record(StageResult(stage, "failed", exc.code, exc.detail, self._ms(start)))
            raise
        except AgentError as exc:
            failed = exc.stage or stage
            if failed is not stage and _order(failed) > _order(stage):
                done = "request accepted; the pool answered for a later stage"
                self.record(StageResult(stage, "ok", None, done, self._ms(start)))
            self.record(StageResult(failed, "failed", exc.code, exc.detail, self._ms(start)))
            self.stop(exc)
        self.record(StageResult(stage, "ok", None, describe(value), self._ms(start)))
        return value

    def stop(self, exc: AgentError) -> NoReturn:
        self.error = exc
        raise StageFailed from None

    def skip_rest(self, stages: Sequence[Stage]) -> None:
        done = {r.stage for r in self.results}
        for stage in stages:
            if stage not in done:
                self.record(StageResult(stage, "skipped", detail="not reached"))

    def record(self, result: StageResult) -> None:
        self.results.append(result)
        if self.on_stage:
            self.on_stage(result)

    @property
    def diagnosis(self) -> Diagnosis | None:
        return diagnose(self.error) if self.error else None

    def _ms(self, start: float) -> float:
        return (self.clock.monotonic() - start) * 1000.0


def _order(stage: Stage) -> int:
    return list(Stage).index(stage)
