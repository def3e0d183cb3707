"""A step-by-step account of what the phone sends and receives, for ``--verbose`` synthetic transactions.

A context variable rather than a parameter threaded through every stage: a phone nobody watches pays one lookup
per message, and ``test-bootstrap --verbose`` sees every exchange of the real code path. Only metadata is ever
emitted — method, URL, peer, status, sizes, SOAP action, SIP method and status, selected headers — never a body,
so no PIN, key, ticket or proof key can reach a trace (and the SIP Authorization header is summarised, not shown).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from agent.stages import Stage

Direction = Literal["sent", "received"]


@dataclass(frozen=True)
class Step:
    stage: Stage
    direction: Direction
    peer: str
    summary: str
    size: int | None = None

    def line(self) -> str:
        arrow = "->" if self.direction == "sent" else "<-"
        size = f" ({self.size} bytes)" if self.size is not None else ""
        return f"{self.stage.value:<13} {arrow} {self.peer}: {self.summary}{size}"


Sink = Callable[[Step], None]
_sink: ContextVar[Sink | None] = ContextVar("phoneprov_trace", default=None)


def emit(stage: Stage, direction: Direction, peer: str, summary: str, size: int | None = None) -> None:
    sink = _sink.get()
    if sink is not None:
        sink(Step(stage, direction, peer, " ".join(summary.split())[:300], size))


def active() -> bool:
    """Whether anyone listens (so callers can skip building a summary)."""
    return _sink.get() is not None


@contextmanager
def tracing(sink: Sink) -> Iterator[None]:
    """Send every step made in this thread (and its copied contexts) to ``sink`` until the block ends."""
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)
