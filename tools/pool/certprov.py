"""The Certificate Provisioning service: ``GetAndPublishCert`` processed in the order of protocol.md §7.3.

The certificate is published to the user's home-pool data store *before* it is returned; if that write
fails the phone gets ErrorInfo 3005 and no certificate, and both logs say ``data store unavailable`` with
the user and request id — the evidence an engineer looks for on every node (failure 1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.stages import Stage, WireError, one_line
from agent.wire import certprov
from agent.wire.certprov import CertProvCode
from tools.pool.ca import CertPolicy, PoolCA, check_csr, thumbprint
from tools.pool.errors import PoolError, StoreUnavailable
from tools.pool.provlog import ProvisioningLog, ProvRecord
from tools.pool.reply import Reply
from tools.pool.store.contract import PublishedCert, Store
from tools.pool.tickets import TicketCache

T = TypeVar("T")
log = logging.getLogger("phoneprov.pool.certprov")
CLOCK_SKEW = timedelta(minutes=5)
XML = (("Content-Type", "text/xml; charset=utf-8"),)


class _Refused(Exception):
    def __init__(self, code: CertProvCode, reason: str, stage: Stage = Stage.CERT_REQUEST) -> None:
        super().__init__(reason)
        self.code, self.reason, self.stage = code, reason, stage


class CertProvService:
    def __init__(
        self,
        store: Store,
        ca: PoolCA,
        policy: CertPolicy,
        tickets: TicketCache,
        now: Callable[[], datetime],
        log: ProvisioningLog,
    ) -> None:
        self.store, self.ca, self.policy, self.tickets = store, ca, policy, tickets
        self.now, self.log = now, log

    def get_and_publish(self, body: bytes) -> Reply:
        """POST …/WebTicket_Proof. Every outcome is logged once, with its duration (request in → certificate
        published, or refused); refusals are ErrorInfo (HTTP 200)."""
        started = time.monotonic()
        user, device, request_id = "-", "-", "-"
        try:
            req = certprov.parse_request(body)
            user, device, request_id = req.entity, req.device_id, req.request_id
            cert = self._process(req, self.now())
        except WireError as exc:
            refusal = _Refused(CertProvCode.BAD_REQUEST, exc.detail)
            return self._refuse(refusal, user, device, request_id, started)
        except _Refused as exc:
            return self._refuse(exc, user, device, request_id, started)
        except Exception as exc:  # anything else still answers ErrorInfo 3099 and leaves a log line
            log.exception("GetAndPublishCert failed for %s", user)
            refusal = _Refused(CertProvCode.INTERNAL, f"internal error: {one_line(exc)}")
            return self._refuse(refusal, user, device, request_id, started)
        serial = f"{cert.serial_number:x}"
        detail = f"published serial {serial}"
        self.log.record(
            ProvRecord(user, device, Stage.CERT_PUBLISH, "ok", "", request_id, detail, _ms_since(started))
        )
        out = certprov.build_response(cert.public_bytes(Encoding.DER), request_id)
        return Reply(200, out, XML, f"issued and published serial {serial}")

    def _process(self, req: certprov.ParsedCertRequest, at: datetime) -> x509.Certificate:
        sip_uri = self._check_ticket(req, at)
        if req.entity.lower().removeprefix("sip:") != sip_uri.lower().removeprefix("sip:"):
            raise _Refused(
                CertProvCode.ENTITY_MISMATCH, f"Entity {req.entity} does not match the ticket's user"
            )
        user = self._call(lambda: self.store.get_user(sip_uri))
        if user is None or not user.enabled:
            raise _Refused(CertProvCode.USER_NOT_ENABLED, f"{sip_uri} is not enabled")
        try:
            csr = check_csr(req.csr_der, self.policy)
        except PoolError as exc:
            raise _Refused(CertProvCode(int(exc.code)), exc.detail) from None
        hours = self.policy.validity_hours(_requested_hours(req.requested_expiry, at))
        cert = self.ca.issue_user_cert(csr, user.sip_uri, hours, at)
        record = PublishedCert(
            sip_uri=user.sip_uri,
            device_id=req.device_id,
            thumbprint=thumbprint(cert),
            serial=f"{cert.serial_number:x}",
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            published_at=at,
            der=cert.public_bytes(Encoding.DER),
        )
        try:
            self.store.publish(record)
        except StoreUnavailable as exc:
            raise _Refused(
                CertProvCode.DATA_STORE_UNAVAILABLE,
                f"data store unavailable ({exc.detail})",
                Stage.CERT_PUBLISH,
            ) from None
        return cert

    def _check_ticket(self, req: certprov.ParsedCertRequest, at: datetime) -> str:
        record = self.tickets.get(req.assertion_id, at)
        if record is None:
            raise _Refused(CertProvCode.TICKET_INVALID, "web ticket unknown or expired")
        if req.created > at + CLOCK_SKEW or req.expires < at - CLOCK_SKEW:
            raise _Refused(CertProvCode.TICKET_INVALID, "Timestamp outside the ticket lifetime (±5 min)")
        if not certprov.verify_request_signature(req, record.proof_key):
            raise _Refused(
                CertProvCode.TICKET_INVALID, "Timestamp signature does not verify with the proof key"
            )
        return record.sip_uri

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except StoreUnavailable as exc:
            raise _Refused(CertProvCode.DATA_STORE_UNAVAILABLE, exc.detail, Stage.CERT_PUBLISH) from None

    def _refuse(self, exc: _Refused, user: str, device: str, request_id: str, started: float) -> Reply:
        code, ms = str(int(exc.code)), _ms_since(started)
        self.log.record(ProvRecord(user, device, exc.stage, "failed", code, request_id, exc.reason, ms))
        reason = "data store unavailable" if exc.code is CertProvCode.DATA_STORE_UNAVAILABLE else exc.reason
        body = certprov.build_error(exc.code, reason)
        return Reply(200, body, XML, f"{int(exc.code)} {exc.reason} user={user} request={request_id}")


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _requested_hours(expiry: datetime | None, at: datetime) -> float | None:
    return None if expiry is None else (expiry - at).total_seconds() / 3600.0
