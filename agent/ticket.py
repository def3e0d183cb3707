"""Stage WEB_TICKET: trade phone number + PIN for a SAML web ticket and its proof key (protocol.md §6).

Endpoints come from metadata, as Lync clients find them: CertProv ``/mex`` names the Web Ticket service,
whose ``/mex`` names the PIN endpoint. The proof key is derived from both entropies (P_SHA1) and never logged.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from agent.net import HttpReply, PhoneHttp, require_https
from agent.stages import Stage, StageError, WireError
from agent.wire import mex, webticket

STAGE = Stage.WEB_TICKET
SOAP_XML = "text/xml; charset=utf-8"


@dataclass(frozen=True)
class Ticket:
    """A web ticket the phone holds: the assertion to present and the key that endorses it."""

    saml: webticket.SamlTicket
    proof_key: bytes = field(repr=False)
    created: datetime
    expires: datetime
    proof_url: str

    @property
    def sip_uri(self) -> str:
        return self.saml.sip_uri


@dataclass(frozen=True)
class Endpoints:
    proof_url: str
    webticket_url: str
    pin_url: str


def find_endpoints(http: PhoneHttp, certprov_url: str) -> Endpoints:
    """Follow CertProv /mex → Web Ticket /mex to the PIN endpoint."""
    cp = mex.parse_certprov_mex(_get(http, certprov_url.rstrip("/") + "/mex"))
    require_https(cp.webticket_url, STAGE, "the Web Ticket service URL in CertProv /mex")
    require_https(cp.proof_url, STAGE, "the WebTicket_Proof URL in CertProv /mex")
    wt = mex.parse_webticket_mex(_get(http, cp.webticket_url.rstrip("/") + "/mex"))
    require_https(wt.pin_url, STAGE, "the PIN endpoint in Web Ticket /mex")
    return Endpoints(cp.proof_url, cp.webticket_url, wt.pin_url)


def _get(http: PhoneHttp, url: str) -> bytes:
    reply = http.request("GET", url, STAGE)
    if reply.status != 200:
        raise StageError(STAGE, "MEX", f"GET {url}: HTTP {reply.status}")
    return reply.body


def request_ticket(
    http: PhoneHttp, endpoints: Endpoints, username: str, pin: str, claims_uri: str | None = None
) -> Ticket:
    """POST the RST to the PIN endpoint; a SOAP fault becomes StageError(WEB_TICKET, 2001..2099)."""
    entropy = secrets.token_bytes(32)
    rst = webticket.RstRequest(
        username=username,
        password=pin,
        context=f"uuid:{uuid.uuid4()}",
        applies_to=endpoints.proof_url,
        client_entropy=entropy,
        claims_uri=claims_uri,
    )
    headers = {"Content-Type": SOAP_XML, "SOAPAction": f'"{webticket.RST_ISSUE_ACTION}"'}
    reply = http.request("POST", endpoints.pin_url, STAGE, body=webticket.build_rst(rst), headers=headers)
    if reply.status != 200:
        raise _fault(reply, endpoints.pin_url)
    try:
        rstr = webticket.parse_rstr(reply.body)
    except WireError as exc:
        raise StageError(STAGE, "BAD_RESPONSE", f"web ticket response: {exc.detail}") from None
    if rstr.context != rst.context:
        raise StageError(STAGE, "BAD_RESPONSE", "web ticket response answers another request (Context)")
    key = webticket.proof_key(entropy, rstr.server_entropy)
    return Ticket(rstr.ticket, key, rstr.created, rstr.expires, endpoints.proof_url)


def _fault(reply: HttpReply, url: str) -> StageError:
    try:
        fault = webticket.parse_ticket_fault(reply.body, reply.header("x-ms-diagnostics"))
    except WireError:
        return StageError(STAGE, "HTTP", f"POST {url}: HTTP {reply.status} without a Web Ticket fault")
    return StageError(STAGE, str(fault.code), f"{fault.reason} ({fault.code})")
