"""The boot retry policy: which failures are worth retrying, how long to wait, and when to stop.

A phone that retries a wrong PIN locks its user out; a phone that gives up on a sporadic "data store
unavailable" (failure 1) needs a technician for something a power cycle fixes. So every (stage, code) is
classified once, in :data:`RULES`, and the waits follow AWS's "exponential backoff and full jitter": a fleet
of phones that lost the pool at the same instant does not come back at the same instant.

Sans-IO: nothing here sleeps or reads a clock; the caller supplies the attempt number, the elapsed time and
a seeded :class:`random.Random`, so a schedule is reproducible in tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from agent.stages import Stage

Kind = Literal["transient", "permanent"]
Action = Literal["retry", "wait_operator", "power_cycle", "give_up"]

_T: Kind = "transient"
_P: Kind = "permanent"

# code → (kind, why). Codes are the same string in every stage (protocol.md §6.5, §7.4, §8.3 and the
# agent's symbolic codes), so one table serves all stages. Transient: the network or a pool service failed
# and the same request later can succeed. Permanent: a verdict about the phone's credentials, trust or
# configuration that a retry would only repeat (or, for a PIN, count toward the lockout).
RULES: dict[str, tuple[Kind, str]] = {
    # the network path to a service
    "NO_ANSWER": (_T, "no answer on the network"),
    "TIMEOUT": (_T, "the service did not answer in time"),
    "UNREACHABLE": (_T, "the service could not be reached"),
    "CONNECTION_LOST": (_T, "the service dropped the connection"),
    "HTTP": (_T, "an HTTP transfer failed or the server answered an error status"),
    "TLS": (_T, "the TLS transport failed (chain verdicts have their own CHAIN_* codes)"),
    "ROOT_CHAIN_DOWNLOAD": (_T, "the anonymous chain download failed"),
    "MEX": (_T, "the Web Ticket metadata could not be fetched"),
    "NO_ADDRESS": (_T, "the link has no address yet"),
    "UNSYNCHRONISED": (_T, "the time server is not synchronised yet"),
    "KOD": (_T, "the time server asked the phone to back off, which the backoff does"),
    # pool services that are expected to recover
    "3005": (_T, "the home pool's data store is unavailable (failure 1); a fresh boot retries"),
    "4104": (_T, "the registrar cannot reach the data store"),
    "4105": (_T, "the registrar is unhealthy (503)"),
    "2099": (_T, "the Web Ticket service had an internal error"),
    "3099": (_T, "the Certificate Provisioning service had an internal error"),
    "3001": (_T, "the web ticket was rejected; a new ticket usually works"),
    "UNEXPECTED": (_T, "the registrar answered an unexpected status, most often a passing server error"),
    "CERT_EXPIRING": (_T, "the certificate is about to expire; a fresh boot provisions a new one"),
    # the user's credentials: retrying counts toward the PIN lockout
    "2001": (_P, "wrong number or PIN; retrying would count toward the lockout"),
    "2002": (_P, "the PIN is locked"),
    "2003": (_P, "the number matches several users"),
    "2004": (_P, "the PIN has expired"),
    "2005": (_P, "PIN authentication is disabled"),
    "2006": (_P, "the SIP address does not match the PIN's user"),
    "CREDENTIAL": (_P, "the credential was refused; retrying would count toward the lockout"),
    "NO_PIN": (_P, "no PIN on this phone: its certificate comes over the USB tether"),
    # trust: only a new chain or a new shipped root helps
    "CHAIN_INCOMPLETE": (_P, "the chain has no path to a shipped root (failure 3)"),
    "CHAIN_INVALID": (_P, "the chain reaches a shipped root but is not valid"),
    "CHAIN_REFUSED": (_P, "the chain is abusive and was refused"),
    "NO_ANCHORS": (_P, "the phone image has no usable shipped roots"),
    "TLS_DSK": (_P, "the TLS-DSK handshake failed on the registrar's certificate or flight"),
    "BAD_SIGNATURE": (_P, "the registrar's signature did not verify"),
    # configuration of the pool, DHCP or the phone
    "NO_OPTION_43": (_P, "DHCP serves no option 43"),
    "NO_REGISTRAR": (_P, "no registrar is known"),
    "OPT120_ADDRESSES": (_P, "option 120 lists addresses instead of a name"),
    "INSECURE_URL": (_P, "a URL is not https://"),
    "NO_TLS_DSK": (_P, "the registrar does not offer TLS-DSK"),
    "401_LOOP": (_P, "the registrar never accepts the TLS-DSK authentication"),
    "REDIRECT_LOOP": (_P, "the registrars redirect in a loop"),
    "BAD_RESPONSE": (_P, "the service answered something the phone cannot use"),
    "MALFORMED": (_P, "the peer sent messages the phone cannot parse"),
    "3002": (_P, "the certificate was requested for another user"),
    "3003": (_P, "the certificate request was malformed"),
    "3004": (_P, "the key size is refused by the pool"),
    "3006": (_P, "the user is not enabled"),
    "BadCertificate": (_P, "the returned certificate is not for this phone"),
    "4101": (_P, "the registrar does not know the certificate"),
    "4102": (_P, "the registrar refused the certificate as expired or not yet valid"),
    "4103": (_P, "the certificate names another user"),
}

# The default for a code missing from RULES: stages that only reach infrastructure (link, DHCP, time,
# registrar) fail mostly because the network or a service is down, so retrying is cheap and right; the
# other stages judge trust and credentials, where an unknown refusal is likely to repeat and retrying a
# PIN exchange risks locking the user out.
NETWORK_STAGES = frozenset({Stage.NET, Stage.DHCP_INFORM, Stage.TIME, Stage.REGISTER})


def rule(stage: Stage, code: str) -> tuple[Kind, str]:
    """(kind, why) for a failure: the table's entry, else the stage default."""
    known = RULES.get(code)
    if known is not None:
        return known
    if stage in NETWORK_STAGES:
        return _T, "an unlisted failure of a network stage"
    return _P, "an unlisted refusal of a trust or credential stage"


def classify(stage: Stage, code: str) -> Kind:
    return rule(stage, code)[0]


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff base and cap, the total time budget of one boot's retries, and a cap on attempts."""

    base_s: float = 2.0
    cap_s: float = 300.0
    budget_s: float = 1800.0
    max_attempts: int = 20

    def __post_init__(self) -> None:
        if not (
            self.base_s > 0 and self.cap_s >= self.base_s and self.budget_s > 0 and self.max_attempts >= 1
        ):
            raise ValueError(
                f"invalid retry policy {self}: need base > 0, cap >= base, budget > 0, attempts >= 1"
            )


@dataclass(frozen=True)
class Decision:
    """What the boot sequence does after a failed attempt; ``reason`` names stage, code and why."""

    action: Action
    reason: str
    after_s: float = 0.0  # only for "retry"

    def as_dict(self) -> dict[str, object]:
        return {"action": self.action, "reason": self.reason, "after_s": round(self.after_s, 3)}


class Backoff:
    """Full-jitter exponential backoff under a :class:`RetryPolicy` (no I/O, no clock)."""

    def __init__(self, policy: RetryPolicy, rng: random.Random) -> None:
        self.policy = policy
        self.rng = rng

    def ceiling(self, attempt: int) -> float:
        """The largest wait after failed attempt ``attempt`` (0-based): min(cap, base·2^attempt)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, not {attempt}")
        # 2.0 ** 1024 overflows; long before that the cap has won.
        return min(self.policy.cap_s, self.policy.base_s * 2.0 ** min(attempt, 1000))

    def next_delay(self, attempt: int) -> float:
        """uniform(0, ceiling): full jitter spreads a fleet's retries over the whole window."""
        return self.rng.uniform(0.0, self.ceiling(attempt))

    def decide(
        self, error_stage: Stage, code: str, attempt: int, elapsed_s: float, rig_available: bool
    ) -> Decision:
        """After failed attempt ``attempt`` (0 = the first try), ``elapsed_s`` into this boot's budget.

        Permanent → wait for the operator (retrying cannot help). Transient → retry after a jittered
        wait, clipped so the next attempt starts within the budget; once the budget or the attempts are
        used up → power-cycle when a rig can, else give up.
        """
        if attempt < 0 or elapsed_s < 0:
            raise ValueError(f"attempt {attempt} and elapsed_s {elapsed_s} must be >= 0")
        kind, why = rule(error_stage, code)
        where = f"{error_stage.value} {code}"
        if kind == "permanent":
            return Decision("wait_operator", f"{where}: permanent ({why}); waiting for the operator")
        policy = self.policy
        if attempt + 1 >= policy.max_attempts or elapsed_s >= policy.budget_s:
            spent = f"{attempt + 1} attempts in {elapsed_s:.0f} s of a {policy.budget_s:.0f} s budget"
            if rig_available:
                return Decision("power_cycle", f"{where}: transient ({why}); {spent}, power-cycling")
            return Decision("give_up", f"{where}: transient ({why}); {spent} and no rig, giving up")
        after = min(self.next_delay(attempt), policy.budget_s - elapsed_s)
        return Decision(
            "retry",
            f"{where}: transient ({why}); try {attempt + 2} of {policy.max_attempts} in {after:.1f} s",
            after,
        )
