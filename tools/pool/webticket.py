"""The Web Ticket service's PIN endpoint (protocol.md §6.3–6.5): PIN policy → SAML ticket + server entropy."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from agent.stages import Stage, WireError
from agent.wire import webticket
from agent.wire.ticketfault import TicketFaultCode
from tools.pool.errors import PoolError
from tools.pool.pinpolicy import PinAuthError, PinPolicy, authenticate
from tools.pool.provlog import ProvisioningLog, ProvRecord
from tools.pool.reply import Reply
from tools.pool.store.contract import Store
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
        except PinAuthError as exc:
            return self._fault(exc.fault, exc.detail, rst.username)
        except PoolError as exc:  # StoreUnavailable and other store refusals
            return self._fault(TicketFaultCode.INTERNAL, exc.detail, rst.username)
        server_entropy = secrets.token_bytes(32)
        assertion_id = f"SamlSecurityToken-{uuid.uuid4()}"
        key = webticket.proof_key(rst.client_entropy, server_entropy)
        self.tickets.put(TicketRecord(assertion_id, user.sip_uri, key, at, at + self.lifetime))
        self.log.record(
            ProvRecord(user.sip_uri, "-", Stage.WEB_TICKET, "ok", "", assertion_id, "ticket issued")
        )
        body_out = webticket.build_rstr(
            rst.context, assertion_id, self.issuer(), user.sip_uri, at, self.lifetime, server_entropy
        )
        return Reply(200, body_out, (("Content-Type", "text/xml; charset=utf-8"),), "ticket issued")

    def _fault(self, code: TicketFaultCode, detail: str, who: str) -> Reply:
        body, diag = webticket.build_ticket_fault(code, code.reason_name, self.fqdn)
        self.log.record(ProvRecord(who, "-", Stage.WEB_TICKET, "failed", str(int(code)), "-", detail))
        headers = (("Content-Type", "text/xml; charset=utf-8"), ("X-Ms-diagnostics", diag))
        return Reply(500, body, headers, f"{int(code)} {code.reason_name}")
