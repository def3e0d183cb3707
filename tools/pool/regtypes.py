"""The registrar's vocabulary (protocol.md §8.3, §8.5, §12): ms-diagnostics codes, the expiry policy, the SA
lifetime rule, and what :class:`tools.pool.regcore.RegistrarConnection` hands its I/O layer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from agent.wire.sip import SipMessage
from agent.wire.sipsig import SA_MAX_LIFETIME

__all__ = [
    "AOR_MISMATCH",
    "CERT_EXPIRED",
    "CERT_UNKNOWN",
    "DATA_STORE_UNAVAILABLE",
    "REDIRECT_REASON",
    "REGISTRAR_UNHEALTHY",
    "ClientCheck",
    "ExpiryPolicy",
    "Handled",
    "Outcome",
    "RegistrationEvent",
    "server_sa_lifetime",
]

# ms-diagnostics codes of §8.3 [ours] and 4105 (registrar unhealthy, ours too).
CERT_UNKNOWN = 4101
CERT_EXPIRED = 4102
AOR_MISMATCH = 4103
DATA_STORE_UNAVAILABLE = 4104
REGISTRAR_UNHEALTHY = 4105
REDIRECT_REASON = "Redirect request to Home Server"

#: Judges the phone's certificate chain (leaf first) for the From AOR at a time: None to accept, else the
#: ms-diagnostics (code, reason). Must not raise.
ClientCheck = Callable[[list[x509.Certificate], str, datetime], tuple[int, str] | None]


@dataclass(frozen=True)
class ExpiryPolicy:
    """Endpoint expiration (§12): requests are clamped to [min_s, max_s]; no Expires means default_s."""

    min_s: int = 300
    default_s: int = 600
    max_s: int = 900

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.default_s <= self.max_s:
            raise ValueError(f"expiry policy needs 0 < min <= default <= max, got {self}")

    def grant(self, requested: int | None) -> int:
        """0 stays 0 (unregister); anything else is clamped."""
        if requested is None:
            return self.default_s
        return 0 if requested == 0 else max(self.min_s, min(self.max_s, requested))


def server_sa_lifetime(cert_not_after: datetime, at: datetime) -> timedelta:
    """min(time left on the phone's certificate, 8 h), never negative."""
    return max(min(cert_not_after - at, SA_MAX_LIFETIME), timedelta(0))


@dataclass(frozen=True)
class RegistrationEvent:
    """A binding to write to the store (``expires_at == at``: remove it)."""

    aor: str
    contact: str
    at: datetime
    expires_at: datetime
    thumbprint: str

    @property
    def unregister(self) -> bool:
        return self.expires_at <= self.at


@dataclass(frozen=True)
class Outcome:
    """One provisioning-log line: ``result`` is ok, failed or redirected; ``code`` the status or reason."""

    result: str
    code: str
    aor: str
    detail: str


@dataclass(frozen=True)
class Handled:
    """What to send (in order), what to store, what to log, and whether to close the connection after."""

    messages: tuple[SipMessage, ...] = ()
    events: tuple[RegistrationEvent, ...] = ()
    outcome: Outcome | None = None
    close: bool = False
