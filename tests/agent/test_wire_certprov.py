"""GetAndPublishCert codec and its WS-Security signature (agent/wire/certprov.py, wssec.py; §7)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from agent.stages import Stage, WireError
from agent.wire.certprov import (
    BASE64_ENCODING_TYPE,
    GET_AND_PUBLISH_ACTION,
    PKCS10_VALUE_TYPE,
    X509V3_VALUE_TYPE,
    CertIssued,
    CertProvCode,
    CertProvFault,
    CertRequest,
    build_error,
    build_request,
    build_response,
    parse_request,
    parse_response,
    request_signature_problem,
    verify_request_signature,
)
from agent.wire.soap import NS, WST_NS, WST_SLASH_NS, WSU_NS, build_fault, parse_xml
from agent.wire.webticket import build_rstr, parse_rstr, proof_key

T0 = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)
PROOF_URL = "https://pool.lab.test:443/CertProv/CertProvisioningService.svc/WebTicket_Proof"
CLIENT_ENTROPY = bytes(range(32))
SERVER_ENTROPY = bytes(range(200, 232))
KEY = proof_key(CLIENT_ENTROPY, SERVER_ENTROPY)
CSR = bytes(range(256)) * 3
ISSUER = "https://pool.lab.test/WebTicket/WebTicketService.svc"
RSTR = build_rstr(
    "ctx", "SamlSecurityToken-5d1", ISSUER, "sip:user@lab.test", T0, timedelta(hours=8), SERVER_ENTROPY
)
TICKET = parse_rstr(RSTR)


def _cert_request(**changes: object) -> CertRequest:
    fields: dict[str, object] = {
        "to": PROOF_URL,
        "message_id": "uuid:0a4f6a0e-3d55-4c52-8a4e-2f35b1f6d6c1",
        "assertion_xml": TICKET.ticket.assertion_xml,
        "assertion_id": TICKET.ticket.assertion_id,
        "created": TICKET.created,
        "expires": TICKET.expires,
        "device_id": "8c3f2a9e-0b7d-4e0a-9f41-6a2d5c7b1e03",
        "entity": "user@lab.test",
        "csr_der": CSR,
        "request_id": "3f0c2e1a-5b6d-4c7e-8f90-a1b2c3d4e5f6",
        "requested_expiry": T0 + timedelta(days=180),
    }
    fields.update(changes)
    return CertRequest(**fields)  # type: ignore[arg-type]


REQUEST = build_request(_cert_request(), KEY)


def _edit(data: bytes, change: Callable[[etree._Element], None]) -> bytes:
    root = etree.fromstring(data)
    change(root)
    return etree.tostring(root)


def _one(root: etree._Element, path: str) -> etree._Element:
    found = root.find(path, NS)
    assert found is not None, path
    return found


# --- round trip -----------------------------------------------------------------------------------


def test_request_round_trip_and_verify() -> None:
    parsed = parse_request(REQUEST)
    req = _cert_request()
    for name in (
        "to", "message_id", "assertion_xml", "assertion_id", "created", "expires", "device_id", "entity",
        "csr_der", "request_id", "requested_expiry",
    ):  # fmt: skip
        assert getattr(parsed, name) == getattr(req, name), name
    assert verify_request_signature(parsed, KEY)
    assert request_signature_problem(parsed, KEY) is None
    assert parse_request(build_request(_cert_request(requested_expiry=None), KEY)).requested_expiry is None


def test_request_shape() -> None:
    root = parse_xml(REQUEST)
    header = _one(root, "s:Header")
    assert [etree.QName(el).localname for el in header] == [
        "To",
        "ReplyTo",
        "MessageID",
        "Action",
        "Security",
    ]
    assert _one(header, "wsa:Action").text == GET_AND_PUBLISH_ACTION
    assert _one(header, "wsa:ReplyTo/wsa:Address").text == "http://www.w3.org/2005/08/addressing/anonymous"
    security = _one(header, "wsse:Security")
    assert [etree.QName(el).localname for el in security] == ["Timestamp", "Assertion", "Signature"]
    assert _one(security, "wsu:Timestamp").get(f"{{{WSU_NS}}}Id") == "timestamp"
    signed_info = _one(security, "ds:Signature/ds:SignedInfo")
    assert _one(signed_info, "ds:Reference").get("URI") == "#timestamp"
    assert (
        _one(signed_info, "ds:SignatureMethod").get("Algorithm")
        == "http://www.w3.org/2000/09/xmldsig#hmac-sha1"
    )
    key_id = _one(security, "ds:Signature/ds:KeyInfo/wsse:SecurityTokenReference/wsse:KeyIdentifier")
    assert key_id.text == TICKET.ticket.assertion_id
    assert TICKET.ticket.assertion_xml in REQUEST  # the ticket travels byte for byte
    gap = _one(root, "s:Body/ocs:GetAndPublishCert")
    assert (
        gap.get("DeviceId") == "{8c3f2a9e-0b7d-4e0a-9f41-6a2d5c7b1e03}"
        and gap.get("Entity") == "user@lab.test"
    )
    assert gap.nsmap["wst"] == WST_SLASH_NS
    token = _one(gap, f"{{{WST_SLASH_NS}}}RequestSecurityToken/wsse:BinarySecurityToken")
    assert (token.get("ValueType"), token.get("EncodingType")) == (PKCS10_VALUE_TYPE, BASE64_ENCODING_TYPE)
    lines = (token.text or "").split("\n")
    assert all(len(line) == 76 for line in lines[:-1]) and 0 < len(lines[-1]) <= 76


def test_device_id_braces_are_not_doubled() -> None:
    parsed = parse_request(build_request(_cert_request(device_id="{abc}"), KEY))
    assert parsed.device_id == "abc"


def test_verification_uses_the_document_as_received() -> None:
    """Other envelope prefixes and whitespace between header blocks do not touch the signed parts."""
    data = (
        REQUEST.replace(b"<s:", b"<soap:").replace(b"</s:", b"</soap:").replace(b"xmlns:s=", b"xmlns:soap=")
    )
    assert b"<soap:Header>" in data
    data = data.replace(b"<wsa:ReplyTo>", b"\n  <wsa:ReplyTo>").replace(
        b"<ds:Signature xmlns", b"\r\n<ds:Signature xmlns"
    )
    assert verify_request_signature(parse_request(data), KEY)


# --- tampering and wrapping -----------------------------------------------------------------------


def _forged_timestamp(with_id: bool) -> etree._Element:
    ts = etree.Element(f"{{{WSU_NS}}}Timestamp", nsmap={"wsu": WSU_NS})
    if with_id:
        ts.set(f"{{{WSU_NS}}}Id", "timestamp")
    etree.SubElement(ts, f"{{{WSU_NS}}}Created").text = "2026-11-26T14:00:00Z"
    etree.SubElement(ts, f"{{{WSU_NS}}}Expires").text = "2030-01-01T00:00:00Z"
    return ts


def _set_expires(root: etree._Element) -> None:
    _one(root, "s:Header/wsse:Security/wsu:Timestamp/wsu:Expires").text = "2030-01-01T00:00:00Z"


def _move_original_and_forge(root: etree._Element) -> None:
    security = _one(root, "s:Header/wsse:Security")
    original = _one(security, "wsu:Timestamp")
    wrapper = etree.SubElement(_one(root, "s:Header"), "{urn:evil}Wrapper")
    wrapper.append(original)
    security.insert(0, _forged_timestamp(with_id=False))


def _forge_with_same_id_and_hide_original(root: etree._Element) -> None:
    security = _one(root, "s:Header/wsse:Security")
    _one(root, "s:Body").append(_one(security, "wsu:Timestamp"))
    security.insert(0, _forged_timestamp(with_id=True))


def _duplicate_timestamp(root: etree._Element) -> None:
    _one(root, "s:Header/wsse:Security").insert(0, _forged_timestamp(with_id=True))


def _second_security_header(root: etree._Element) -> None:
    header = _one(root, "s:Header")
    forged = etree.SubElement(header, _one(header, "wsse:Security").tag)
    forged.append(_forged_timestamp(with_id=False))
    header.insert(0, forged)


def _id_on_body(root: etree._Element) -> None:
    _one(root, "s:Body").set(f"{{{WSU_NS}}}Id", "timestamp")


def _change_key_identifier(root: etree._Element) -> None:
    path = "s:Header/wsse:Security/ds:Signature/ds:KeyInfo/wsse:SecurityTokenReference/wsse:KeyIdentifier"
    _one(root, path).text = "SamlSecurityToken-other"


def _change_assertion_id(root: etree._Element) -> None:
    _one(root, "s:Header/wsse:Security/saml:Assertion").set("AssertionID", "SamlSecurityToken-other")


def _change_reference_uri(root: etree._Element) -> None:
    _one(root, "s:Header/wsse:Security/ds:Signature/ds:SignedInfo/ds:Reference").set("URI", "#elsewhere")


def _downgrade_algorithm(root: etree._Element) -> None:
    method = _one(root, "s:Header/wsse:Security/ds:Signature/ds:SignedInfo/ds:SignatureMethod")
    method.set("Algorithm", "http://www.w3.org/2000/09/xmldsig#rsa-sha1")


def _redigest_forged(root: etree._Element) -> None:
    """A forger who recomputes the digest for the altered Timestamp still cannot produce the HMAC."""
    _set_expires(root)
    ts = _one(root, "s:Header/wsse:Security/wsu:Timestamp")
    digest = hashlib.sha1(etree.tostring(ts, method="c14n", exclusive=True)).digest()
    path = "s:Header/wsse:Security/ds:Signature/ds:SignedInfo/ds:Reference/ds:DigestValue"
    _one(root, path).text = base64.b64encode(digest).decode()


@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        (_set_expires, "digest does not match"),
        (_move_original_and_forge, "not the wsu:Timestamp in wsse:Security"),
        (_forge_with_same_id_and_hide_original, "matches 2 elements"),
        (_duplicate_timestamp, "2 wsu:Timestamp elements"),
        (_id_on_body, "matches 2 elements"),
        (_change_key_identifier, "KeyIdentifier does not name the Assertion"),
        (_change_assertion_id, "KeyIdentifier does not name the Assertion"),
        (_change_reference_uri, "matches 0 elements"),
        (_downgrade_algorithm, "is not hmac-sha1"),
        (_redigest_forged, "SignatureValue does not match"),
    ],
)
def test_tampered_requests_fail_verification(tamper: Callable[[etree._Element], None], why: str) -> None:
    parsed = parse_request(_edit(REQUEST, tamper))
    assert not verify_request_signature(parsed, KEY)
    problem = request_signature_problem(parsed, KEY)
    assert problem is not None and why in problem
    assert "\n" not in problem


def test_a_second_security_header_is_refused() -> None:
    with pytest.raises(WireError, match="more than one <wsse:Security>"):
        parse_request(_edit(REQUEST, _second_security_header))


def test_wrong_proof_key_fails() -> None:
    parsed = parse_request(REQUEST)
    assert not verify_request_signature(parsed, proof_key(CLIENT_ENTROPY, b"other server entropy"))
    assert not verify_request_signature(parsed, KEY[:-1] + bytes([KEY[-1] ^ 1]))


def test_forged_timestamp_values_are_what_the_server_would_see() -> None:
    """The times the pool checks come from the Timestamp in wsse:Security: the one that must be signed."""
    parsed = parse_request(_edit(REQUEST, _move_original_and_forge))
    assert parsed.expires == datetime(2030, 1, 1, tzinfo=UTC)
    assert not verify_request_signature(parsed, KEY)


# --- accepted variants ----------------------------------------------------------------------------


def test_wst_with_or_without_trailing_slash() -> None:
    without = REQUEST.replace(
        b'xmlns:wst="' + WST_SLASH_NS.encode() + b'"', b'xmlns:wst="' + WST_NS.encode() + b'"'
    )
    assert without != REQUEST
    for data in (REQUEST, without):
        parsed = parse_request(data)
        assert parsed.csr_der == CSR and parsed.requested_expiry == T0 + timedelta(days=180)
        assert verify_request_signature(parsed, KEY)


def test_base64_with_crlf_and_whitespace() -> None:
    flat = base64.b64encode(CSR).decode()
    crlf = "&#13;\n".join(flat[i : i + 64] for i in range(0, len(flat), 64))
    data = re.sub(
        rb"(<wsse:BinarySecurityToken[^>]*>)[^<]*",
        lambda m: m.group(1) + b"\r\n  " + crlf.encode() + b"\n ",
        REQUEST,
    )
    assert parse_request(data).csr_der == CSR


def _extract_raw(xml: str, tag: str, include_tag: bool) -> str:
    """pidgin-sipe's sipe_xml_extract_raw: a plain substring search, no XML parsing."""
    start = xml.index("<" + tag)
    end = xml.index("</" + tag + ">", start)
    if include_tag:
        return xml[start : end + len(tag) + 3]
    return xml[xml.index(">", start) + 1 : end]


def _sipe_style_request(raw_rstr: str, client_entropy: bytes, uri: str) -> bytes:
    """A GetAndPublishCert built the way pidgin-sipe builds it (sipe-webticket.c, sipe-svc.c): string
    templates, the digest over the *raw* Timestamp text, and its own P_SHA1."""
    timestamp = (
        f'<wsu:Timestamp xmlns:wsu="{WSU_NS}" wsu:Id="timestamp">{_extract_raw(raw_rstr, "Lifetime", False)}'
        "</wsu:Timestamp>"
    )
    keydata = _extract_raw(raw_rstr, "saml:Assertion", True)
    match = re.search(r'AssertionID="([^"]*)"', keydata)
    assert match is not None
    server_entropy = base64.b64decode(_extract_raw(raw_rstr, "BinarySecret", False))
    key, a = b"", server_entropy
    while len(key) < 32:
        a = hmac.new(client_entropy, a, "sha1").digest()
        key += hmac.new(client_entropy, a + server_entropy, "sha1").digest()
    digest = base64.b64encode(hashlib.sha1(timestamp.encode()).digest()).decode()
    signed_info = (
        '<SignedInfo xmlns="http://www.w3.org/2000/09/xmldsig#"><CanonicalizationMethod '
        'Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/><SignatureMethod '
        'Algorithm="http://www.w3.org/2000/09/xmldsig#hmac-sha1"/><Reference URI="#timestamp"><Transforms>'
        '<Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></Transforms><DigestMethod '
        f'Algorithm="http://www.w3.org/2000/09/xmldsig#sha1"/><DigestValue>{digest}</DigestValue></Reference>'
        "</SignedInfo>"
    )
    canon = etree.tostring(etree.fromstring(signed_info), method="c14n", exclusive=True).decode()
    mac = base64.b64encode(hmac.new(key[:32], canon.encode(), "sha1").digest()).decode()
    signature = (
        f'<Signature xmlns="http://www.w3.org/2000/09/xmldsig#"> {canon} '
        f"<SignatureValue>{mac}</SignatureValue>"
        ' <KeyInfo>  <wsse:SecurityTokenReference wsse:TokenType="http://docs.oasis-open.org/wss/oasis-wss-saml-'
        'token-profile-1.1#SAMLV1.1">   <wsse:KeyIdentifier ValueType="http://docs.oasis-open.org/wss/oasis-wss-'
        f'saml-token-profile-1.0#SAMLAssertionID">{match.group(1)}</wsse:KeyIdentifier>  '
        "</wsse:SecurityTokenReference> </KeyInfo></Signature>"
    )
    csr = base64.b64encode(CSR).decode()
    csr = "\r\n".join(csr[i : i + 64] for i in range(0, len(csr), 64))
    return (
        '<?xml version="1.0"?>\r\n<soap:Envelope xmlns:saml="urn:oasis:names:tc:SAML:1.0:assertion" '
        'xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:wst="http://docs.oasis-open.org/ws-sx/'
        'ws-trust/200512" xmlns:auth="http://schemas.xmlsoap.org/ws/2006/12/authorization" xmlns:wsa="http://'
        'www.w3.org/2005/08/addressing" xmlns:wsp="http://schemas.xmlsoap.org/ws/2004/09/policy" xmlns:wsse='
        '"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd" xmlns:wsu="http://'
        'docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd" >'
        f"<soap:Header> <wsa:To>{uri}</wsa:To> <wsa:ReplyTo>  <wsa:Address>http://www.w3.org/2005/08/addressing/"
        f"anonymous</wsa:Address> </wsa:ReplyTo> <wsa:Action>{GET_AND_PUBLISH_ACTION}</wsa:Action> "
        f"<wsse:Security>{timestamp}{keydata}{signature}</wsse:Security></soap:Header> <soap:Body>"
        '<GetAndPublishCert xmlns="http://schemas.microsoft.com/OCS/AuthWebServices/" xmlns:wst="http://docs.'
        'oasis-open.org/ws-sx/ws-trust/200512/" xmlns:wstep="http://schemas.microsoft.com/windows/pki/2009/01/'
        'enrollment" DeviceId="{11111111-2222-3333-4444-555555555555}" Entity="user@lab.test"> '
        "<wst:RequestSecurityToken>  <wst:TokenType>http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-"
        "x509-token-profile-1.0#X509v3</wst:TokenType>  <wst:RequestType>http://docs.oasis-open.org/ws-sx/ws-"
        'trust/200512/Issue</wst:RequestType>  <wsse:BinarySecurityToken   ValueType="http://schemas.microsoft'
        '.com/OCS/AuthWebServices.xsd#PKCS10"   EncodingType="http://docs.oasis-open.org/wss/2004/01/oasis-'
        f'200401-wss-wssecurity-secext-1.0.xsd#Base64Binary"  >\r\n{csr}</wsse:BinarySecurityToken>  '
        "<wstep:RequestID>2c6f7a4e-1d3b-4f5a-9e8d-7c6b5a4f3e2d</wstep:RequestID> </wst:RequestSecurityToken>"
        "</GetAndPublishCert></soap:Body></soap:Envelope>"
    ).encode()


def test_request_built_like_pidgin_sipe_verifies() -> None:
    """Interop (§13): sipe digests raw text and sends no MessageID; our RSTR makes its bytes canonical."""
    data = _sipe_style_request(RSTR.decode(), CLIENT_ENTROPY, PROOF_URL)
    parsed = parse_request(data)
    assert request_signature_problem(parsed, KEY) is None
    assert (parsed.message_id, parsed.to, parsed.device_id) == (
        None,
        PROOF_URL,
        "11111111-2222-3333-4444-555555555555",
    )
    assert (parsed.entity, parsed.csr_der, parsed.assertion_id) == (
        "user@lab.test",
        CSR,
        TICKET.ticket.assertion_id,
    )
    assert (parsed.created, parsed.expires) == (TICKET.created, TICKET.expires)
    assert not verify_request_signature(parsed, proof_key(b"another phone's entropy", SERVER_ENTROPY))


# --- structural errors ----------------------------------------------------------------------------


def _drop(path: str) -> Callable[[etree._Element], None]:
    def change(root: etree._Element) -> None:
        victim = _one(root, path)
        parent = victim.getparent()
        assert parent is not None
        parent.remove(victim)

    return change


def _strip_attr(path: str, name: str) -> Callable[[etree._Element], None]:
    return lambda root: _one(root, path).attrib.pop(name)  # type: ignore[func-returns-value]


RST_PATH = f"s:Body/ocs:GetAndPublishCert/{{{WST_SLASH_NS}}}RequestSecurityToken"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_drop("s:Header"), "missing <s:Header>"),
        (_drop("s:Header/wsse:Security"), "missing <wsse:Security> header"),
        (_drop("s:Header/wsse:Security/wsu:Timestamp"), "missing <wsu:Timestamp>"),
        (_drop("s:Header/wsse:Security/saml:Assertion"), "missing <saml:Assertion>"),
        (_drop("s:Header/wsse:Security/ds:Signature"), "missing <ds:Signature>"),
        (_drop("s:Header/wsse:Security/ds:Signature/ds:SignatureValue"), "missing <ds:SignatureValue>"),
        (_drop("s:Header/wsse:Security/ds:Signature/ds:KeyInfo"), "missing <wsse:KeyIdentifier>"),
        (_drop("s:Header/wsse:Security/wsu:Timestamp/wsu:Expires"), "missing <wsu:Expires>"),
        (_drop("s:Body/ocs:GetAndPublishCert"), "missing <GetAndPublishCert>"),
        (_drop(RST_PATH), "missing <wst:RequestSecurityToken>"),
        (_drop(RST_PATH + "/wsse:BinarySecurityToken"), "missing <wsse:BinarySecurityToken>"),
        (_drop(RST_PATH + "/wstep:RequestID"), "missing <wstep:RequestID>"),
        (_strip_attr("s:Body/ocs:GetAndPublishCert", "DeviceId"), "no DeviceId attribute"),
        (_strip_attr("s:Body/ocs:GetAndPublishCert", "Entity"), "no Entity attribute"),
        (_strip_attr("s:Header/wsse:Security/saml:Assertion", "AssertionID"), "no AssertionID attribute"),
    ],
)
def test_missing_parts_are_named(change: Callable[[etree._Element], None], message: str) -> None:
    with pytest.raises(WireError, match=message) as info:
        parse_request(_edit(REQUEST, change))
    assert info.value.stage is Stage.CERT_REQUEST


def test_csr_value_type_must_be_pkcs10() -> None:
    with pytest.raises(WireError, match="not PKCS10"):
        parse_request(REQUEST.replace(PKCS10_VALUE_TYPE.encode(), b"urn:other"))


# --- responses ------------------------------------------------------------------------------------


def test_response_round_trip_and_shape() -> None:
    cert = b"\x30\x82\x01\x0a" + bytes(266)
    data = build_response(cert, "rid-7")
    assert parse_response(data) == CertIssued(cert_der=cert, request_id="rid-7")
    # The path real clients read (§7.4), by local name.
    body = _one(parse_xml(data), "s:Body")
    node: etree._Element | None = body
    for step in ("GetAndPublishCertResponse", "RequestSecurityTokenResponse", "RequestedSecurityToken"):
        assert node is not None
        node = next((c for c in node if etree.QName(c).localname == step), None)
    assert node is not None
    token = next(iter(node))
    assert (
        etree.QName(token).localname == "BinarySecurityToken" and token.get("ValueType") == X509V3_VALUE_TYPE
    )


@pytest.mark.parametrize("code", list(CertProvCode))
def test_error_round_trip(code: CertProvCode) -> None:
    fault = parse_response(build_error(code, code.reason_name))
    assert fault == CertProvFault(int(code), code.reason_name) and isinstance(fault, CertProvFault)
    assert fault.known is code


def test_reason_names_and_unknown_codes() -> None:
    assert [c.reason_name for c in CertProvCode] == [
        "TicketInvalid", "EntityMismatch", "BadRequest", "KeySizeRejected", "DataStoreUnavailable",
        "UserNotEnabled", "Internal",
    ]  # fmt: skip
    data = build_error(CertProvCode.DATA_STORE_UNAVAILABLE, "data store unavailable")
    assert b"<ErrorInfo><ErrorId>3005</ErrorId><Reason>data store unavailable</Reason></ErrorInfo>" in data
    unknown = parse_response(build_error(3555, ""))
    assert unknown == CertProvFault(3555, "") and isinstance(unknown, CertProvFault) and unknown.known is None


def test_response_errors() -> None:
    with pytest.raises(WireError, match="SOAP fault: Server: busy"):
        parse_response(build_fault("Server", "busy"))
    with pytest.raises(WireError, match="is not a number"):
        parse_response(build_error(3001, "x").replace(b"3001", b"30x1"))
    with pytest.raises(WireError, match="not X509v3"):
        parse_response(build_response(b"\x30", "r").replace(X509V3_VALUE_TYPE.encode(), b"urn:x"))
    with pytest.raises(WireError, match="missing <GetAndPublishCertResponse>"):
        parse_response(build_fault("Server", "x").replace(b"s:Fault", b"s:Other"))
    slash = build_response(b"\x30\x00", "r").replace(
        b'xmlns:wst="' + WST_NS.encode(), b'xmlns:wst="' + WST_SLASH_NS.encode()
    )
    assert parse_response(slash) == CertIssued(b"\x30\x00", "r")


# --- arbitrary and mutilated input ----------------------------------------------------------------


@settings(max_examples=150)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_wire_error(data: bytes) -> None:
    for parse in (parse_request, parse_response):
        with contextlib.suppress(WireError):
            parse(data)


def _mutilations(original: bytes) -> list[bytes]:
    out = []
    count = len(list(etree.fromstring(original).iter()))
    for index in range(1, count):
        for action in ("drop", "attrs", "text"):
            root = etree.fromstring(original)
            victim = list(root.iter())[index]
            if action == "drop":
                parent = victim.getparent()
                assert parent is not None
                parent.remove(victim)
            elif action == "attrs":
                victim.attrib.clear()
            else:
                victim.text = "@@ not a value @@"
            out.append(etree.tostring(root))
    return out


@pytest.mark.parametrize(
    "original",
    [REQUEST, build_response(b"\x30\x00", "r"), build_error(3005, "x")],
    ids=["request", "ok", "error"],
)
def test_mutilated_messages_raise_only_wire_error(original: bytes) -> None:
    for data in _mutilations(original):
        try:
            parsed = parse_request(data)
            verify_request_signature(parsed, KEY)
        except WireError:
            pass
        with contextlib.suppress(WireError):
            parse_response(data)
