"""Stage ids of protocol.md §2, the per-stage result record and the agent's one exception family.

Every log line, status line and diagnosis names a :class:`Stage`; every failure is an :class:`AgentError`
carrying stage + code + remedy so that a lab engineer sees *where* sign-in broke and *what to do*.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm


class Stage(enum.StrEnum):
    """Sign-in stages, in boot order (protocol.md §2)."""

    NET = "NET"
    DHCP_INFORM = "DHCP_INFORM"
    TIME = "TIME"
    ROOT_CHAIN = "ROOT_CHAIN"
    WEB_TICKET = "WEB_TICKET"
    CERT_REQUEST = "CERT_REQUEST"
    CERT_PUBLISH = "CERT_PUBLISH"
    REGISTER = "REGISTER"
    SIGNED_IN = "SIGNED_IN"


Outcome = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class StageResult:
    """One line of agent status: what a stage did, how long it took, and (on failure) the code."""

    stage: Stage
    result: Outcome
    code: str | None = None
    detail: str = ""
    ms: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "stage": self.stage.value,
            "result": self.result,
            "code": self.code,
            "detail": self.detail,
            "ms": round(self.ms, 1),
        }


# What parsing an untrusted certificate can raise in cryptography 50 (several are not ValueErrors).
X509_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm,
)


class AgentError(Exception):
    """Base of every error the agent raises: names the stage (when known), a code and a remedy.

    ``code`` is always a string: protocol numbers ("2001", "3005") and symbolic codes ("CHAIN_INCOMPLETE")
    travel the same way into logs and JSON.
    """

    def __init__(self, stage: Stage | None, code: str, detail: str, remedy: str = "") -> None:
        super().__init__(detail)
        self.stage = stage
        self.code = code
        self.detail = detail
        self.remedy = remedy

    def __str__(self) -> str:
        where = f"{self.stage.value} " if self.stage else ""
        return f"{where}{self.code}: {self.detail}"


class WireError(AgentError):
    """Malformed input on the wire (packet, XML, DER): what was wrong, in one line."""

    def __init__(self, detail: str, stage: Stage | None = None, code: str = "MALFORMED") -> None:
        super().__init__(stage, code, detail)


class StageError(AgentError):
    """A sign-in stage failed. An empty remedy is filled from the catalogue by :func:`agent.diagnosis.diagnose`."""

    stage: Stage

    def __init__(self, stage: Stage, code: str | int, detail: str, remedy: str = "") -> None:
        super().__init__(stage, str(code), detail, remedy)


def one_line(text: str | BaseException, limit: int = 200) -> str:
    """Any message (or exception) flattened to one line of at most ``limit`` characters, for error details."""
    flat = " ".join(str(text).split()) or (type(text).__name__ if isinstance(text, BaseException) else "")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
