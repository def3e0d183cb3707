"""Web Ticket messages (protocol.md §6.2–6.5): RST with phone number + PIN, the RSTR with a SAML 1.1 ticket,
the P_SHA1 proof key, and the ticket faults (re-exported from :mod:`agent.wire.ticketfault`).

The RSTR is serialised the way pidgin-sipe (the independent client of §13) can read with plain ``strstr``:
ws-trust is the *default* namespace of the collection, so ``<Lifetime>``, ``<BinarySecret>`` and
``<Expires>`` appear unprefixed, and ``<saml:Assertion>`` declares its own ``saml`` prefix so that a raw cut
of it is a self-contained element. sipe then builds its Timestamp as ``<wsu:Timestamp …>`` + the raw inside of
``<Lifetime>`` and digests that string without canonicalising it, so the Lifetime's inside must already be
in exclusive-C14N form: no whitespace between children, no redundant declarations.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

from lxml import etree

from agent.stages import Stage, WireError
from agent.wire.soap import (
    AUTH_NS,
    NS,
    SAML_NS,
    SOAP_NS,
    WSA_NS,
    WSP_NS,
    WSSE_NS,
    WST_NS,
    WSU_NS,
    XML_WS,
    attr,
    b64decode,
    b64encode,
    detached,
    envelope,
    find_first,
    find_one,
    find_text,
    find_text_optional,
    format_time,
    new_element,
    parse_envelope,
    parse_fault,
    parse_time,
    sub,
)
from agent.wire.ticketfault import (
    TicketFault,
    TicketFaultCode,
    build_ticket_fault,
    parse_ticket_fault,
)

__all__ = [
    "RstRequest",
    "RstResponse",
    "SamlTicket",
    "TicketFault",
    "TicketFaultCode",
    "build_rst",
    "build_rstr",
    "build_ticket_fault",
    "parse_rst",
    "parse_rstr",
    "parse_ticket_fault",
    "proof_key",
    "psha1",
]

RST_ISSUE_ACTION = "http://docs.oasis-open.org/ws-sx/ws-trust/200512/RST/Issue"
RSTRC_ISSUE_FINAL_ACTION = "http://docs.oasis-open.org/ws-sx/ws-trust/200512/RSTRC/IssueFinal"
SAML11_TOKEN_TYPE = "http://docs.oasis-open.org/wss/oasis-wss-saml-token-profile-1.1#SAMLV1.1"
#: Lync clients send the WS-Trust Feb 2005 Issue URI in a 1.3 RST; both are accepted.
ISSUE_REQUEST_TYPE = "http://schemas.xmlsoap.org/ws/2005/02/trust/Issue"
ISSUE_REQUEST_TYPES = (ISSUE_REQUEST_TYPE, WST_NS + "/Issue")
SYMMETRIC_KEY_TYPE = WST_NS + "/SymmetricKey"
PSHA1_COMPUTED_KEY = WST_NS + "/CK/PSHA1"
PASSWORD_TEXT = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText"
)
CLAIMS_DIALECT = "urn:component:Microsoft.Rtc.WebAuthentication.2010:authclaims"
CLAIM_URI_TYPE = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/uri"
HOLDER_OF_KEY = "urn:oasis:names:tc:SAML:1.0:cm:holder-of-key"
KEY_SIZE_BITS = 256
PROOF_KEY_BYTES = 32

_STAGE = Stage.WEB_TICKET


# --- proof key ------------------------------------------------------------------------------------


def psha1(secret: bytes, seed: bytes, length: int = PROOF_KEY_BYTES) -> bytes:
    """TLS 1.0 P_SHA1(secret, seed) cut to ``length`` bytes: WS-Trust's CK/PSHA1 computed key."""
    out = bytearray()
    a = seed
    while len(out) < length:
        a = hmac.digest(secret, a, "sha1")
        out += hmac.digest(secret, a + seed, "sha1")
    return bytes(out[:length])


def proof_key(client_entropy: bytes, server_entropy: bytes) -> bytes:
    """The 32-byte key both sides sign GetAndPublishCert with: P_SHA1(client entropy, server entropy)."""
    return psha1(client_entropy, server_entropy, PROOF_KEY_BYTES)


# --- RST ------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class RstRequest:
    """A ticket request. ``username``/``password`` are the phone number and PIN (§6.2); both empty means no
    UsernameToken (the Negotiate endpoint, where HTTP authentication identifies the user)."""

    username: str
    password: str
    context: str
    applies_to: str
    client_entropy: bytes
    claims_uri: str | None = None

    def __repr__(self) -> str:
        hidden = "''" if not self.password else "'***'"
        return (
            f"RstRequest(username={self.username!r}, password={hidden}, context={self.context!r}, "
            f"applies_to={self.applies_to!r}, client_entropy=<{len(self.client_entropy)} bytes>, "
            f"claims_uri={self.claims_uri!r})"
        )


def build_rst(req: RstRequest) -> bytes:
    """The §6.2 envelope; POST it with ``SOAPAction: "<RST_ISSUE_ACTION>"``."""
    if bool(req.username) != bool(req.password):
        raise ValueError("username and password go together")
    headers = []
    if req.username:
        security = etree.Element(f"{{{WSSE_NS}}}Security", nsmap={"wsse": WSSE_NS})
        token = sub(security, WSSE_NS, "UsernameToken")
        sub(token, WSSE_NS, "Username", req.username)
        sub(token, WSSE_NS, "Password", req.password, Type=PASSWORD_TEXT)
        headers.append(security)
    rst = etree.Element(
        f"{{{WST_NS}}}RequestSecurityToken",
        {"Context": req.context},
        nsmap={"wst": WST_NS, "wsp": WSP_NS, "wsa": WSA_NS, "auth": AUTH_NS},
    )
    sub(rst, WST_NS, "TokenType", SAML11_TOKEN_TYPE)
    sub(rst, WST_NS, "RequestType", ISSUE_REQUEST_TYPE)
    reference = sub(sub(rst, WSP_NS, "AppliesTo"), WSA_NS, "EndpointReference")
    sub(reference, WSA_NS, "Address", req.applies_to)
    if req.claims_uri is not None:
        claims = sub(rst, WST_NS, "Claims", Dialect=CLAIMS_DIALECT)
        claim = sub(claims, AUTH_NS, "ClaimType", Uri=CLAIM_URI_TYPE, Optional="false")
        sub(claim, AUTH_NS, "Value", req.claims_uri)
    sub(sub(rst, WST_NS, "Entropy"), WST_NS, "BinarySecret", b64encode(req.client_entropy))
    sub(rst, WST_NS, "KeyType", SYMMETRIC_KEY_TYPE)
    return envelope(rst, headers)


def _credentials(header: etree._Element | None, required: bool) -> tuple[str, str]:
    token = None if header is None else header.find("wsse:Security/wsse:UsernameToken", NS)
    if token is None:
        if required:
            raise WireError("missing <wsse:UsernameToken> in the <wsse:Security> header", _STAGE)
        return "", ""
    password_el = find_one(token, "wsse:Password", "wsse:Password", _STAGE)
    kind = (password_el.get("Type") or PASSWORD_TEXT).strip(XML_WS)
    if kind != PASSWORD_TEXT:
        raise WireError(f"<wsse:Password> Type is {kind!r}, only PasswordText is accepted", _STAGE)
    username = find_text(token, "wsse:Username", "wsse:Username", _STAGE)
    password = find_text(token, "wsse:Password", "wsse:Password", _STAGE)
    return username, password


def _check_uri(el: etree._Element, path: str, allowed: tuple[str, ...]) -> None:
    value = find_text_optional(el, path)
    if value is not None and value not in allowed:
        raise WireError(f"<{path}> {value!r} is not supported", _STAGE)


def parse_rst(data: bytes, *, require_credentials: bool = True) -> RstRequest:
    """Server side of §6.2. The PIN endpoint needs a UsernameToken with a PasswordText password; with
    ``require_credentials=False`` (Negotiate endpoint) a missing token gives empty username and password."""
    header, body = parse_envelope(data, _STAGE)
    username, password = _credentials(header, require_credentials)
    rst = find_one(body, "wst:RequestSecurityToken", "wst:RequestSecurityToken", _STAGE)
    _check_uri(rst, "wst:TokenType", (SAML11_TOKEN_TYPE,))
    _check_uri(rst, "wst:RequestType", ISSUE_REQUEST_TYPES)
    _check_uri(rst, "wst:KeyType", (SYMMETRIC_KEY_TYPE,))
    applies_to = find_text(rst, "wsp:AppliesTo/wsa:EndpointReference/wsa:Address", "wsa:Address", _STAGE)
    secret = find_text(rst, "wst:Entropy/wst:BinarySecret", "wst:BinarySecret", _STAGE)
    claims_uri = None
    for claim in rst.iterfind("wst:Claims/auth:ClaimType", NS):
        if (claim.get("Uri") or "").strip(XML_WS) == CLAIM_URI_TYPE:
            claims_uri = find_text(claim, "auth:Value", "auth:Value", _STAGE)
            break
    return RstRequest(
        username=username,
        password=password,
        context=attr(rst, "Context", "wst:RequestSecurityToken", _STAGE),
        applies_to=applies_to,
        client_entropy=b64decode(secret, "wst:BinarySecret", _STAGE),
        claims_uri=claims_uri,
    )


# --- RSTR with the SAML ticket --------------------------------------------------------------------


@dataclass(frozen=True)
class SamlTicket:
    """The web ticket. ``assertion_xml`` is the Assertion element as received (see :func:`parse_rstr`)."""

    assertion_id: str
    issuer: str
    sip_uri: str
    issue_instant: datetime
    not_before: datetime
    not_on_or_after: datetime
    assertion_xml: bytes


@dataclass(frozen=True, repr=False)
class RstResponse:
    """A parsed RSTR: the ticket, the server entropy for the proof key, and the ticket Lifetime."""

    context: str
    ticket: SamlTicket
    server_entropy: bytes
    created: datetime
    expires: datetime
    key_size: int = KEY_SIZE_BITS

    def __repr__(self) -> str:
        return (
            f"RstResponse(context={self.context!r}, ticket={self.ticket!r}, "
            f"server_entropy=<{len(self.server_entropy)} bytes>, created={self.created!r}, "
            f"expires={self.expires!r}, key_size={self.key_size})"
        )


def _assertion(
    parent: etree._Element, assertion_id: str, issuer: str, sip_uri: str, start: datetime, end: datetime
) -> None:
    a = etree.SubElement(parent, f"{{{SAML_NS}}}Assertion", nsmap={"saml": SAML_NS})
    for key, value in (
        ("MajorVersion", "1"),
        ("MinorVersion", "1"),
        ("AssertionID", assertion_id),
        ("Issuer", issuer),
        ("IssueInstant", format_time(start)),
    ):
        a.set(key, value)
    sub(a, SAML_NS, "Conditions", NotBefore=format_time(start), NotOnOrAfter=format_time(end))
    subject = sub(sub(a, SAML_NS, "AttributeStatement"), SAML_NS, "Subject")
    sub(subject, SAML_NS, "NameIdentifier", sip_uri, Format=CLAIM_URI_TYPE)
    sub(sub(subject, SAML_NS, "SubjectConfirmation"), SAML_NS, "ConfirmationMethod", HOLDER_OF_KEY)


def build_rstr(
    context: str,
    assertion_id: str,
    issuer: str,
    sip_uri: str,
    issued_at: datetime,
    lifetime: timedelta,
    server_entropy: bytes,
) -> bytes:
    """The §6.4 response (HTTP 200). ``assertion_id`` is the caller's ``SamlSecurityToken-<uuid>``."""
    expires = issued_at + lifetime
    action = etree.Element(f"{{{WSA_NS}}}Action", nsmap={"wsa": WSA_NS})
    action.set(f"{{{SOAP_NS}}}mustUnderstand", "1")
    action.text = RSTRC_ISSUE_FINAL_ACTION
    collection = new_element(f"{{{WST_NS}}}RequestSecurityTokenResponseCollection", {None: WST_NS})
    rstr = sub(collection, WST_NS, "RequestSecurityTokenResponse", Context=context)
    sub(rstr, WST_NS, "TokenType", SAML11_TOKEN_TYPE)
    _assertion(sub(rstr, WST_NS, "RequestedSecurityToken"), assertion_id, issuer, sip_uri, issued_at, expires)
    sub(sub(rstr, WST_NS, "RequestedProofToken"), WST_NS, "ComputedKey", PSHA1_COMPUTED_KEY)
    sub(sub(rstr, WST_NS, "Entropy"), WST_NS, "BinarySecret", b64encode(server_entropy))
    life = sub(rstr, WST_NS, "Lifetime")
    for name, when in (("Created", issued_at), ("Expires", expires)):
        new_element(f"{{{WSU_NS}}}{name}", {None: WSU_NS}, parent=life).text = format_time(when)
    sub(rstr, WST_NS, "KeySize", str(KEY_SIZE_BITS))
    return envelope(collection, [action])


def _parse_ticket(assertion: etree._Element) -> SamlTicket:
    major = assertion.get("MajorVersion", "").strip(XML_WS)
    if major != "1":
        raise WireError(f"<saml:Assertion> MajorVersion is {major!r}, expected SAML 1.x", _STAGE)
    conditions = find_one(assertion, "saml:Conditions", "saml:Conditions", _STAGE)
    subject = assertion.find(".//saml:Subject/saml:NameIdentifier", NS)
    if subject is None:
        raise WireError("missing <saml:NameIdentifier> in the ticket", _STAGE)
    sip_uri = (subject.text or "").strip(XML_WS)
    if not sip_uri:
        raise WireError("<saml:NameIdentifier> is empty", _STAGE)
    return SamlTicket(
        assertion_id=attr(assertion, "AssertionID", "saml:Assertion", _STAGE),
        issuer=attr(assertion, "Issuer", "saml:Assertion", _STAGE),
        sip_uri=sip_uri,
        issue_instant=parse_time(assertion.get("IssueInstant"), "saml:Assertion IssueInstant", _STAGE),
        not_before=parse_time(conditions.get("NotBefore"), "saml:Conditions NotBefore", _STAGE),
        not_on_or_after=parse_time(conditions.get("NotOnOrAfter"), "saml:Conditions NotOnOrAfter", _STAGE),
        assertion_xml=detached(assertion),
    )


def _key_size(rstr: etree._Element) -> int:
    text = find_text_optional(rstr, "wst:KeySize")
    if text is None:
        return KEY_SIZE_BITS
    if not text.isascii() or not text.isdigit() or not 8 <= int(text) <= 4096 or int(text) % 8:
        raise WireError(f"<wst:KeySize> {text[:20]!r} is not a key size in bits", _STAGE)
    return int(text)


def parse_rstr(data: bytes) -> RstResponse:
    """Agent side of §6.4.

    ``ticket.assertion_xml`` is the Assertion *unchanged* in this sense: the same element, namespace,
    attributes (names, values, order), text and children as received, serialised by lxml on its own. It
    carries exactly the namespace declarations it had plus any inherited ones it uses (a deep copy, not
    ``tostring`` of the sub-element, which would drag in every ancestor declaration), so its exclusive C14N is
    identical to the received element's, and for a pool that declares ``saml`` on the Assertion (ours does) it
    is byte-identical to the received text. Lexical details lxml does not keep (quote style, ``<a></a>`` vs
    ``<a/>``, character references) are normalised.
    """
    _, body = parse_envelope(data, _STAGE)
    fault = parse_fault(body, _STAGE)
    if fault is not None:
        raise WireError(f"ticket response is a SOAP fault: {fault.faultcode}: {fault.faultstring}", _STAGE)
    rstr = find_first(
        body,
        (
            "wst:RequestSecurityTokenResponseCollection/wst:RequestSecurityTokenResponse",
            "wst:RequestSecurityTokenResponse",
        ),
    )
    if rstr is None:
        raise WireError("missing <wst:RequestSecurityTokenResponse>", _STAGE)
    _check_uri(rstr, "wst:TokenType", (SAML11_TOKEN_TYPE,))
    assertion = find_one(rstr, "wst:RequestedSecurityToken/saml:Assertion", "saml:Assertion", _STAGE)
    computed = find_text(rstr, "wst:RequestedProofToken/wst:ComputedKey", "wst:ComputedKey", _STAGE)
    if computed != PSHA1_COMPUTED_KEY:
        raise WireError(f"<wst:ComputedKey> {computed!r} is not CK/PSHA1", _STAGE)
    secret = find_text(rstr, "wst:Entropy/wst:BinarySecret", "wst:BinarySecret", _STAGE)
    lifetime = find_one(rstr, "wst:Lifetime", "wst:Lifetime", _STAGE)
    return RstResponse(
        context=attr(rstr, "Context", "wst:RequestSecurityTokenResponse", _STAGE),
        ticket=_parse_ticket(assertion),
        server_entropy=b64decode(secret, "wst:BinarySecret", _STAGE),
        created=parse_time(find_text(lifetime, "wsu:Created", "wsu:Created", _STAGE), "wsu:Created", _STAGE),
        expires=parse_time(find_text(lifetime, "wsu:Expires", "wsu:Expires", _STAGE), "wsu:Expires", _STAGE),
        key_size=_key_size(rstr),
    )
