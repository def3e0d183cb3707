"""Stage WEB_TICKET: trade phone number + PIN for a SAML web ticket and its proof key (protocol.md §6).

Endpoints come from metadata, as Lync clients find them: CertProv ``/mex`` names the Web Ticket service,
whose ``/mex`` names the PIN endpoint. The proof key is derived from both entropies (P_SHA1) and never logged.
"""

from __future__ import annotations

import base64
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
    negotiate_url: str | None = None


def find_endpoints(http: PhoneHttp, certprov_url: str) -> Endpoints:
    """Follow CertProv /mex → Web Ticket /mex to the PIN endpoint."""
    cp = mex.parse_certprov_mex(_get(http, certprov_url.rstrip("/") + "/mex"))
    require_https(cp.webticket_url, STAGE, "the Web Ticket service URL in CertProv /mex")
    require_https(cp.proof_url, STAGE, "the WebTicket_Proof URL in CertProv /mex")
    wt = mex.parse_webticket_mex(_get(http, cp.webticket_url.rstrip("/") + "/mex"))
    require_https(wt.pin_url, STAGE, "the PIN endpoint in Web Ticket /mex")
    if wt.negotiate_url is not None:
        require_https(wt.negotiate_url, STAGE, "the WinNegotiate endpoint in Web Ticket /mex")
    return Endpoints(cp.proof_url, cp.webticket_url, wt.pin_url, wt.negotiate_url)


def _get(http: PhoneHttp, url: str) -> bytes:
    reply = http.request("GET", url, STAGE)
    if reply.status != 200:
        raise StageError(STAGE, "MEX", f"GET {url}: HTTP {reply.status}")
    return reply.body


def request_ticket(
    http: PhoneHttp, endpoints: Endpoints, username: str, pin: str, claims_uri: str | None = None
) -> Ticket:
    """PIN sign-in: POST the RST with a UsernameToken to the PIN endpoint (a phone's way)."""
    return _request(http, endpoints.pin_url, endpoints.proof_url, (username, pin), None, claims_uri)


def request_ticket_basic(
    http: PhoneHttp, endpoints: Endpoints, user: str, password: str, claims_uri: str | None = None
) -> Ticket:
    """Credential sign-in: the RST to the WinNegotiate endpoint with HTTP Basic (the lab's stand-in for the
    Windows credential of Test-CsClientAuth)."""
    if endpoints.negotiate_url is None:
        raise StageError(STAGE, "MEX", "the Web Ticket /mex names no WinNegotiate endpoint")
    basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return _request(
        http, endpoints.negotiate_url, endpoints.proof_url, ("", ""), f"Basic {basic}", claims_uri
    )


def _request(
    http: PhoneHttp,
    url: str,
    proof_url: str,
    token: tuple[str, str],
    authorization: str | None,
    claims_uri: str | None,
) -> Ticket:
    """POST one RST; a SOAP fault becomes StageError(WEB_TICKET, 2001..2099), a 401 "CREDENTIAL"."""
    entropy = secrets.token_bytes(32)
    rst = webticket.RstRequest(
        username=token[0],
        password=token[1],
        context=f"uuid:{uuid.uuid4()}",
        applies_to=proof_url,
        client_entropy=entropy,
        claims_uri=claims_uri,
    )
    headers = {"Content-Type": SOAP_XML, "SOAPAction": f'"{webticket.RST_ISSUE_ACTION}"'}
    if authorization:
        headers["Authorization"] = authorization
    reply = http.request("POST", url, STAGE, body=webticket.build_rst(rst), headers=headers)
    if reply.status == 401:
        raise StageError(STAGE, "CREDENTIAL", f"POST {url}: 401, the credential was refused")
    if reply.status != 200:
        raise _fault(reply, url)
    try:
        rstr = webticket.parse_rstr(reply.body)
    except WireError as exc:
        raise StageError(STAGE, "BAD_RESPONSE", f"web ticket response: {exc.detail}") from None
    if rstr.context != rst.context:
        raise StageError(STAGE, "BAD_RESPONSE", "web ticket response answers another request (Context)")
    key = webticket.proof_key(entropy, rstr.server_entropy)
    return Ticket(rstr.ticket, key, rstr.created, rstr.expires, proof_url)


def _fault(reply: HttpReply, url: str) -> StageError:
    try:
        fault = webticket.parse_ticket_fault(reply.body, reply.header("x-ms-diagnostics"))
    except WireError:
        return StageError(STAGE, "HTTP", f"POST {url}: HTTP {reply.status} without a Web Ticket fault")
    return StageError(STAGE, str(fault.code), f"{fault.reason} ({fault.code})")
