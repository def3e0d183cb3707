"""The Web Ticket service (protocol.md §6.3–6.5): the PIN endpoint (PIN policy → SAML ticket + server entropy)
and the "WinNegotiate" endpoint, which in the lab takes HTTP Basic (the credential of Test-CsClientAuth)."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from agent.stages import Stage, WireError
from agent.wire import webticket
from agent.wire.ticketfault import TicketFaultCode
from tools.pool.errors import PoolError
from tools.pool.pinpolicy import (
    DUMMY_HASH,
    PinAuthError,
    PinPolicy,
    authenticate,
    check_password,
    verify_pin,
)
from tools.pool.provlog import ProvisioningLog, ProvRecord
from tools.pool.reply import Reply
from tools.pool.store.contract import Store, user_key
from tools.pool.tickets import TicketCache, TicketRecord


class WebTicketService:
    def __init__(
        self,
        store: Store,
        policy: PinPolicy,
        tickets: TicketCache,
        issuer: Callable[[], str],
        fqdn: str,
        lifetime: timedelta,
        now: Callable[[], datetime],
        log: ProvisioningLog,
    ) -> None:
        self.store, self.policy, self.tickets = store, policy, tickets
        self.issuer, self.fqdn, self.lifetime = issuer, fqdn, lifetime
        self.now, self.log = now, log

    def pin(self, body: bytes) -> Reply:
        """POST …/Pin: authenticate number + PIN; a refusal is a SOAP fault with X-Ms-diagnostics.

        The phone is told only the §6.5 reason word; why exactly (unknown number, wrong PIN) goes to the log.
        """
        try:
            rst = webticket.parse_rst(body)
        except WireError as exc:
            return self._fault(TicketFaultCode.INTERNAL, f"bad request: {exc.detail}", "-")
        at = self.now()
        try:
            user = authenticate(self.store, self.policy, rst.username, rst.password, rst.claims_uri, at)
        except (
            PinAuthError
        ) as exc:  # filed under the user(s) the number named, so `logs collect --user` finds it
            who = exc.users[0] if len(exc.users) == 1 else rst.username
            typed = f" (typed {rst.username!r})" if who != rst.username else ""
            return self._fault(exc.fault, exc.detail + typed, who)
        except PoolError as exc:  # StoreUnavailable and other store refusals
            return self._fault(TicketFaultCode.INTERNAL, exc.detail, rst.username)
        return self._issue(rst, user.sip_uri, at)

    def negotiate(self, body: bytes, authorization: str | None) -> Reply:
        """POST <base> with HTTP Basic (user = SIP address, password = the lab credential); no PIN involved."""
        creds = _basic(authorization)
        if creds is None:
            return self._challenge("-", "no or malformed Basic credentials")
        username, password = creds
        at = self.now()
        try:
            rst = webticket.parse_rst(body, require_credentials=False)
            user = self.store.get_user(username)
            if user is None:
                verify_pin(password, DUMMY_HASH)  # an unknown user costs what a wrong password costs
                return self._challenge(username, "unknown user")
            check_password(self.store, self.policy, user, password, at)
        except WireError as exc:
            return self._fault(TicketFaultCode.INTERNAL, f"bad request: {exc.detail}", username)
        except PinAuthError as exc:
            if exc.fault is TicketFaultCode.PIN_LOCKED:
                return self._fault(exc.fault, exc.detail, username)
            return self._challenge(username, exc.detail)
        except PoolError as exc:
            return self._fault(TicketFaultCode.INTERNAL, exc.detail, username)
        if not user.enabled:
            return self._fault(TicketFaultCode.PIN_AUTH_DISABLED, f"{user.sip_uri} is disabled", username)
        if rst.claims_uri is not None and user_key(rst.claims_uri) != user.key:
            return self._fault(
                TicketFaultCode.CLAIM_MISMATCH, "claimed SIP URI is not the credential's", username
            )
        return self._issue(rst, user.sip_uri, at)

    def _issue(self, rst: webticket.RstRequest, sip_uri: str, at: datetime) -> Reply:
        server_entropy = secrets.token_bytes(32)
        assertion_id = f"SamlSecurityToken-{uuid.uuid4()}"
        key = webticket.proof_key(rst.client_entropy, server_entropy)
        self.tickets.put(TicketRecord(assertion_id, sip_uri, key, at, at + self.lifetime))
        self.log.record(ProvRecord(sip_uri, "-", Stage.WEB_TICKET, "ok", "", assertion_id, "ticket issued"))
        body_out = webticket.build_rstr(
            rst.context, assertion_id, self.issuer(), sip_uri, at, self.lifetime, server_entropy
        )
        return Reply(200, body_out, (("Content-Type", "text/xml; charset=utf-8"),), "ticket issued")

    def _challenge(self, who: str, detail: str) -> Reply:
        self.log.record(ProvRecord(who, "-", Stage.WEB_TICKET, "failed", "401", "-", detail))
        headers = (("WWW-Authenticate", f'Basic realm="{self.fqdn}"'), ("Content-Type", "text/plain"))
        return Reply(401, b"authentication required\n", headers, f"401 {detail}")

    def _fault(self, code: TicketFaultCode, detail: str, who: str) -> Reply:
        body, diag = webticket.build_ticket_fault(code, code.reason_name, self.fqdn)
        self.log.record(ProvRecord(who, "-", Stage.WEB_TICKET, "failed", str(int(code)), "-", detail))
        headers = (("Content-Type", "text/xml; charset=utf-8"), ("X-Ms-diagnostics", diag))
        return Reply(500, body, headers, f"{int(code)} {code.reason_name}")


def _basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from ``Authorization: Basic …``, or None for anything else."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep and user else None
