"""The pool's one exception family: a protocol code (2001.., 3001..), what went wrong, and the remedy."""

from __future__ import annotations

from agent.stages import Stage


class PoolError(Exception):
    """A request the pool refuses or cannot serve. ``code`` is the protocol code as a string."""

    def __init__(self, code: str | int, detail: str, stage: Stage | None = None, remedy: str = "") -> None:
        super().__init__(detail)
        self.code = str(code)
        self.detail = detail
        self.stage = stage
        self.remedy = remedy

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


class StoreUnavailable(PoolError):
    """The data store cannot be reached or written (failure 1 of design.md §1)."""

    def __init__(self, detail: str) -> None:
        super().__init__("3005", f"data store unavailable: {detail}", Stage.CERT_PUBLISH)


class ConfigError(PoolError):
    """The pool's configuration is invalid: names the key and what is wrong."""

    def __init__(self, detail: str) -> None:
        super().__init__("CONFIG", detail)
