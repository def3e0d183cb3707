"""GetAndPublishCert (protocol.md §7.2–7.4): the phone's signed certificate request and the pool's answer.

The request carries the web ticket (the SAML Assertion as received) and a Timestamp signed with the proof key
(:mod:`agent.wire.wssec`); the body holds the PKCS#10 CSR. Inside ``GetAndPublishCert`` we bind ``wst`` to
the ws-trust URI *with* a trailing slash, as Lync clients and pidgin-sipe do; the parser accepts both.
Errors are not SOAP faults but an ``ErrorInfo`` inside an HTTP 200 response.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum

from lxml import etree

from agent.stages import Stage, WireError
from agent.wire.soap import (
    NS,
    OCS_NS,
    SOAP_NS,
    WSA_NS,
    WSSE_NS,
    WST_NS,
    WST_SLASH_NS,
    WSTEP_NS,
    WSU_NS,
    XML_WS,
    attr,
    b64decode,
    b64encode,
    b64encode_lines,
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
    qn,
    serialize,
    sub,
    text_of,
)
from agent.wire.wssec import (
    SignatureInfo,
    build_security,
    parse_security,
    signature_problem,
)

GET_AND_PUBLISH_ACTION = "http://schemas.microsoft.com/OCS/AuthWebServices/GetAndPublishCert"
PKCS10_VALUE_TYPE = "http://schemas.microsoft.com/OCS/AuthWebServices.xsd#PKCS10"
X509V3_VALUE_TYPE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3"
X509V3_TOKEN_TYPE = X509V3_VALUE_TYPE
BASE64_ENCODING_TYPE = WSSE_NS + "#Base64Binary"
ISSUE_REQUEST_TYPE = WST_NS + "/Issue"
ANONYMOUS_ADDRESS = "http://www.w3.org/2005/08/addressing/anonymous"

_REQ = Stage.CERT_REQUEST
_WST_SPELLINGS = (WST_SLASH_NS, WST_NS)


class CertProvCode(IntEnum):
    """§7.4 ErrorInfo codes; :attr:`reason_name` is the protocol's name ("DataStoreUnavailable")."""

    TICKET_INVALID = 3001
    ENTITY_MISMATCH = 3002
    BAD_REQUEST = 3003
    KEY_SIZE_REJECTED = 3004
    DATA_STORE_UNAVAILABLE = 3005
    USER_NOT_ENABLED = 3006
    INTERNAL = 3099

    @property
    def reason_name(self) -> str:
        return "".join(part.capitalize() for part in self.name.split("_"))


@dataclass(frozen=True)
class CertRequest:
    """What the phone sends. ``device_id`` is the GUID without braces (the codec adds them); ``message_id``
    is written verbatim (e.g. ``uuid:<uuid>``); created/expires are copied from the ticket Lifetime."""

    to: str
    message_id: str
    assertion_xml: bytes = field(repr=False)
    assertion_id: str
    created: datetime
    expires: datetime
    device_id: str
    entity: str
    csr_der: bytes = field(repr=False)
    request_id: str
    requested_expiry: datetime | None = None


@dataclass(frozen=True)
class ParsedCertRequest:
    """A received request: the :class:`CertRequest` fields (``to``/``message_id`` may be absent, pidgin-sipe
    sends no MessageID) plus the captured signature. ``created``/``expires`` are from the signed Timestamp."""

    to: str | None
    message_id: str | None
    assertion_xml: bytes = field(repr=False)
    assertion_id: str
    created: datetime
    expires: datetime
    device_id: str
    entity: str
    csr_der: bytes = field(repr=False)
    request_id: str
    requested_expiry: datetime | None
    signature: SignatureInfo


@dataclass(frozen=True)
class CertIssued:
    cert_der: bytes
    request_id: str | None


@dataclass(frozen=True)
class CertProvFault:
    """An ErrorInfo answer. ``code`` stays an int so that codes we do not know still travel."""

    code: int
    reason: str

    @property
    def known(self) -> CertProvCode | None:
        try:
            return CertProvCode(self.code)
        except ValueError:
            return None


# --- request --------------------------------------------------------------------------------------


def _request_body(parent: etree._Element, req: CertRequest) -> None:
    wst = WST_SLASH_NS
    gap = new_element(
        qn(OCS_NS, "GetAndPublishCert"),
        {None: OCS_NS, "wst": wst, "wstep": WSTEP_NS},
        {"DeviceId": "{" + req.device_id.strip("{}") + "}", "Entity": req.entity},
        parent=parent,
    )
    rst = sub(gap, wst, "RequestSecurityToken")
    sub(rst, wst, "TokenType", X509V3_TOKEN_TYPE)
    sub(rst, wst, "RequestType", ISSUE_REQUEST_TYPE)
    csr = b64encode_lines(req.csr_der)
    sub(
        rst,
        WSSE_NS,
        "BinarySecurityToken",
        csr,
        ValueType=PKCS10_VALUE_TYPE,
        EncodingType=BASE64_ENCODING_TYPE,
    )
    sub(rst, WSTEP_NS, "RequestID", req.request_id)
    if req.requested_expiry is not None:
        sub(sub(rst, wst, "Lifetime"), WSU_NS, "Expires", format_time(req.requested_expiry))


def build_request(req: CertRequest, proof_key: bytes) -> bytes:
    """The §7.2 envelope, signed; POST it with ``SOAPAction: "<GET_AND_PUBLISH_ACTION>"``."""
    env = etree.Element(
        qn(SOAP_NS, "Envelope"), nsmap={"s": SOAP_NS, "wsa": WSA_NS, "wsse": WSSE_NS, "wsu": WSU_NS}
    )
    header = sub(env, SOAP_NS, "Header")
    sub(header, WSA_NS, "To", req.to)
    sub(sub(header, WSA_NS, "ReplyTo"), WSA_NS, "Address", ANONYMOUS_ADDRESS)
    sub(header, WSA_NS, "MessageID", req.message_id)
    sub(header, WSA_NS, "Action", GET_AND_PUBLISH_ACTION)
    security = sub(header, WSSE_NS, "Security")
    build_security(security, req.created, req.expires, req.assertion_xml, req.assertion_id, proof_key)
    _request_body(sub(env, SOAP_NS, "Body"), req)
    return serialize(env)


def _find_wst(el: etree._Element, local: str) -> etree._Element | None:
    return find_first(el, [f"{{{ns}}}{local}" for ns in _WST_SPELLINGS])


def _csr(rst: etree._Element) -> bytes:
    token = find_one(rst, "wsse:BinarySecurityToken", "wsse:BinarySecurityToken", _REQ)
    value_type = (token.get("ValueType") or PKCS10_VALUE_TYPE).strip(XML_WS)
    if value_type != PKCS10_VALUE_TYPE:
        raise WireError(f"<wsse:BinarySecurityToken> ValueType {value_type!r} is not PKCS10", _REQ)
    encoding = (token.get("EncodingType") or BASE64_ENCODING_TYPE).strip(XML_WS)
    if encoding != BASE64_ENCODING_TYPE:
        raise WireError(f"<wsse:BinarySecurityToken> EncodingType {encoding!r} is not Base64Binary", _REQ)
    return b64decode(text_of(token, "wsse:BinarySecurityToken", _REQ), "wsse:BinarySecurityToken", _REQ)


def _requested_expiry(rst: etree._Element) -> datetime | None:
    lifetime = _find_wst(rst, "Lifetime")
    if lifetime is None:
        return None
    return parse_time(
        find_text(lifetime, "wsu:Expires", "wsu:Expires", _REQ), "wst:Lifetime/wsu:Expires", _REQ
    )


def parse_request(data: bytes) -> ParsedCertRequest:
    """Server side of §7.2. Structure problems are WireErrors; the signature is checked separately by
    :func:`verify_request_signature` with the proof key the pool stored for the AssertionID."""
    header, body = parse_envelope(data, _REQ)
    if header is None:
        raise WireError("missing <s:Header> (the web ticket travels there)", _REQ)
    root = header.getroottree().getroot()
    timestamp, assertion, signature = parse_security(root, header, _REQ)
    gap = find_one(body, "ocs:GetAndPublishCert", "GetAndPublishCert", _REQ)
    rst = _find_wst(gap, "RequestSecurityToken")
    if rst is None:
        raise WireError("missing <wst:RequestSecurityToken> in <GetAndPublishCert>", _REQ)
    return ParsedCertRequest(
        to=find_text_optional(header, "wsa:To"),
        message_id=find_text_optional(header, "wsa:MessageID"),
        assertion_xml=detached(assertion),
        assertion_id=attr(assertion, "AssertionID", "saml:Assertion", _REQ),
        created=parse_time(find_text(timestamp, "wsu:Created", "wsu:Created", _REQ), "wsu:Created", _REQ),
        expires=parse_time(find_text(timestamp, "wsu:Expires", "wsu:Expires", _REQ), "wsu:Expires", _REQ),
        device_id=attr(gap, "DeviceId", "GetAndPublishCert", _REQ).strip("{}"),
        entity=attr(gap, "Entity", "GetAndPublishCert", _REQ),
        csr_der=_csr(rst),
        request_id=find_text(rst, "wstep:RequestID", "wstep:RequestID", _REQ),
        requested_expiry=_requested_expiry(rst),
        signature=signature,
    )


def request_signature_problem(parsed: ParsedCertRequest, proof_key: bytes) -> str | None:
    """Why the request's signature fails (one line for the pool's log, no key material), or None."""
    return signature_problem(parsed.signature, parsed.assertion_id, proof_key)


def verify_request_signature(parsed: ParsedCertRequest, proof_key: bytes) -> bool:
    """True when the Timestamp in wsse:Security is what was signed, with this proof key (constant time)."""
    return request_signature_problem(parsed, proof_key) is None


# --- response -------------------------------------------------------------------------------------


def _response_root() -> etree._Element:
    return new_element(
        qn(OCS_NS, "GetAndPublishCertResponse"),
        {None: OCS_NS, "wst": WST_NS, "wsse": WSSE_NS, "wstep": WSTEP_NS},
    )


def build_response(cert_der: bytes, request_id: str) -> bytes:
    """§7.4 success: the issued leaf certificate, DER in base64, and the echoed RequestID."""
    root = _response_root()
    rstr = sub(root, WST_NS, "RequestSecurityTokenResponse")
    sub(rstr, WST_NS, "TokenType", X509V3_TOKEN_TYPE)
    token = sub(rstr, WST_NS, "RequestedSecurityToken")
    sub(
        token,
        WSSE_NS,
        "BinarySecurityToken",
        b64encode(cert_der),
        ValueType=X509V3_VALUE_TYPE,
        EncodingType=BASE64_ENCODING_TYPE,
    )
    sub(rstr, WSTEP_NS, "RequestID", request_id)
    return envelope(root)


def build_error(code: CertProvCode | int, reason: str) -> bytes:
    """§7.4 error: HTTP 200 with ``GetAndPublishCertResponse/ErrorInfo/{ErrorId, Reason}``."""
    root = _response_root()
    info = sub(root, OCS_NS, "ErrorInfo")
    sub(info, OCS_NS, "ErrorId", str(int(code)))
    sub(info, OCS_NS, "Reason", reason)
    return envelope(root)


def _error_info(info: etree._Element) -> CertProvFault:
    error_id = find_text(info, "ocs:ErrorId", "ErrorId", Stage.CERT_REQUEST)
    if not (error_id.isascii() and error_id.isdigit() and len(error_id) <= 9):
        raise WireError(f"<ErrorId> {error_id[:20]!r} is not a number", Stage.CERT_REQUEST)
    return CertProvFault(code=int(error_id), reason=find_text_optional(info, "ocs:Reason") or "")


def parse_response(data: bytes) -> CertIssued | CertProvFault:
    """Agent side of §7.4: the certificate, or the ErrorInfo code and reason."""
    _, body = parse_envelope(data, _REQ)
    fault = parse_fault(body, _REQ)
    if fault is not None:
        raise WireError(
            f"CertProv answered with a SOAP fault: {fault.faultcode}: {fault.faultstring[:80]}", _REQ
        )
    response = find_one(body, "ocs:GetAndPublishCertResponse", "GetAndPublishCertResponse", _REQ)
    info = response.find("ocs:ErrorInfo", NS)
    if info is not None:
        return _error_info(info)
    rstr = _find_wst(response, "RequestSecurityTokenResponse")
    if rstr is None:
        raise WireError("missing <wst:RequestSecurityTokenResponse> in <GetAndPublishCertResponse>", _REQ)
    requested = _find_wst(rstr, "RequestedSecurityToken")
    if requested is None:
        raise WireError("missing <wst:RequestedSecurityToken>", _REQ)
    token = find_one(requested, "wsse:BinarySecurityToken", "wsse:BinarySecurityToken", _REQ)
    value_type = (token.get("ValueType") or X509V3_VALUE_TYPE).strip(XML_WS)
    if value_type != X509V3_VALUE_TYPE:
        raise WireError(f"<wsse:BinarySecurityToken> ValueType {value_type!r} is not X509v3", _REQ)
    cert = b64decode(text_of(token, "wsse:BinarySecurityToken", _REQ), "wsse:BinarySecurityToken", _REQ)
    return CertIssued(cert_der=cert, request_id=find_text_optional(rstr, "wstep:RequestID"))
