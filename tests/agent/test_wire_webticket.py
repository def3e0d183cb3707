"""Web Ticket codec (agent/wire/webticket.py, protocol.md §6.2–6.5): P_SHA1, RST, RSTR, faults."""

from __future__ import annotations

import base64
import contextlib
import hmac
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from agent.stages import Stage, WireError
from agent.wire.soap import NS, SAML_NS, WSU_NS, exc_c14n, parse_xml
from agent.wire.ticketfault import parse_ms_diagnostics
from agent.wire.webticket import (
    PASSWORD_TEXT,
    RST_ISSUE_ACTION,
    RstRequest,
    RstResponse,
    SamlTicket,
    TicketFault,
    TicketFaultCode,
    build_rst,
    build_rstr,
    build_ticket_fault,
    parse_rst,
    parse_rstr,
    parse_ticket_fault,
    proof_key,
    psha1,
)

T0 = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)
PROOF_URL = "https://pool.lab.test:443/CertProv/CertProvisioningService.svc/WebTicket_Proof"
ISSUER = "https://pool.lab.test/WebTicket/WebTicketService.svc"
CLIENT_ENTROPY = bytes(range(32))
SERVER_ENTROPY = bytes(range(100, 132))


def _request(**changes: object) -> RstRequest:
    fields: dict[str, object] = {
        "username": "+14255551219",
        "password": "72913",
        "context": "5c2b3a3e-7f6a-4f0e-9d1c-0c8f1e6b9a10",
        "applies_to": PROOF_URL,
        "client_entropy": CLIENT_ENTROPY,
        "claims_uri": "sip:user@lab.test",
    }
    fields.update(changes)
    return RstRequest(**fields)  # type: ignore[arg-type]


def _rstr(context: str = "ctx", sip_uri: str = "sip:user@lab.test") -> bytes:
    return build_rstr(
        context, "SamlSecurityToken-0f1e", ISSUER, sip_uri, T0, timedelta(hours=8), SERVER_ENTROPY
    )


# --- P_SHA1 ---------------------------------------------------------------------------------------


def test_psha1_published_vector() -> None:
    """Vector from the Digest::PSHA1 test suite (secret = client entropy, seed = server entropy, 256 bits)."""
    a = base64.b64decode("grrlUUfhuNwlvQzQ4bV6TT3wA8ieZPltIf4+H7nIvCE=")
    b = base64.b64decode("YLABh3ZmZyiO5gvVLZe9J4JPd9w59KGeTFwE85XlzxE=")
    assert psha1(a, b, 32) == base64.b64decode("Wv3QzY84KfgwSkn1z3QV+LXEoo3nPraZPysJYtA3u4c=")
    assert psha1(b, a, 32) == base64.b64decode("g/uYZmYX7rOm/X7UV4usrvjIPCiWMWwNZJL0ejvz6Y4=")
    assert proof_key(a, b) == psha1(a, b, 32)


def _p_sha1_reference(secret: bytes, seed: bytes, length: int) -> bytes:
    """RFC 2246 §5 written out: A(0) = seed, A(i) = HMAC(secret, A(i-1)), out = HMAC(secret, A(i)+seed)…"""
    blocks = []
    a_i = seed
    for _ in range(length // 20 + 1):
        a_i = hmac.new(secret, a_i, "sha1").digest()
        blocks.append(hmac.new(secret, a_i + seed, "sha1").digest())
    return b"".join(blocks)[:length]


@given(st.binary(max_size=80), st.binary(max_size=80), st.integers(min_value=0, max_value=100))
def test_psha1_matches_the_rfc_construction(secret: bytes, seed: bytes, length: int) -> None:
    assert psha1(secret, seed, length) == _p_sha1_reference(secret, seed, length)


# --- RST ------------------------------------------------------------------------------------------


def test_rst_round_trip_and_shape() -> None:
    req = _request()
    data = build_rst(req)
    assert parse_rst(data) == req
    root = parse_xml(data)
    rst = root.find("s:Body/wst:RequestSecurityToken", NS)
    assert rst is not None and rst.get("Context") == req.context
    assert rst.findtext("wst:RequestType", None, NS) == "http://schemas.xmlsoap.org/ws/2005/02/trust/Issue"
    assert (
        rst.findtext("wst:KeyType", None, NS)
        == "http://docs.oasis-open.org/ws-sx/ws-trust/200512/SymmetricKey"
    )
    claims = rst.find("wst:Claims", NS)
    assert claims is not None
    assert claims.get("Dialect") == "urn:component:Microsoft.Rtc.WebAuthentication.2010:authclaims"
    password = root.find("s:Header/wsse:Security/wsse:UsernameToken/wsse:Password", NS)
    assert password is not None and password.get("Type") == PASSWORD_TEXT
    assert RST_ISSUE_ACTION == "http://docs.oasis-open.org/ws-sx/ws-trust/200512/RST/Issue"


def test_rst_without_claims_and_without_credentials() -> None:
    assert parse_rst(build_rst(_request(claims_uri=None))).claims_uri is None
    anonymous = _request(username="", password="")
    data = build_rst(anonymous)
    assert b"UsernameToken" not in data
    with pytest.raises(WireError, match="missing <wsse:UsernameToken>"):
        parse_rst(data)
    assert parse_rst(data, require_credentials=False) == anonymous
    with pytest.raises(ValueError):
        build_rst(_request(password=""))


def test_rst_repr_hides_pin_and_entropy() -> None:
    text = repr(_request(password="918273", client_entropy=b"\xaa" * 32))
    assert "918273" not in text and "\\xaa" not in text and "aaaa" not in text
    assert "+14255551219" in text and "<32 bytes>" in text


def test_rst_password_type() -> None:
    data = build_rst(_request())
    digest = data.replace(PASSWORD_TEXT.encode(), PASSWORD_TEXT.replace("Text", "Digest").encode())
    with pytest.raises(WireError, match="only PasswordText"):
        parse_rst(digest)
    untyped = data.replace(b' Type="' + PASSWORD_TEXT.encode() + b'"', b"")
    assert (
        parse_rst(untyped).password == "72913"
    )  # absent Type means PasswordText (WSS UsernameToken profile)


def test_rst_as_pidgin_sipe_sends_it_is_accepted() -> None:
    """sipe's Negotiate RST: no Security header, Envelope-level prefixes, whitespace between elements."""
    doc = f"""<?xml version="1.0"?>\r\n<soap:Envelope xmlns:saml="urn:oasis:names:tc:SAML:1.0:assertion"
 xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:wst="http://docs.oasis-open.org/ws-sx/ws-trust/200512"
 xmlns:auth="http://schemas.xmlsoap.org/ws/2006/12/authorization" xmlns:wsa="http://www.w3.org/2005/08/addressing"
 xmlns:wsp="http://schemas.xmlsoap.org/ws/2004/09/policy" >
 <soap:Body><wst:RequestSecurityToken Context="abc">
 <wst:TokenType>http://docs.oasis-open.org/wss/oasis-wss-saml-token-profile-1.1#SAMLV1.1</wst:TokenType>
 <wst:RequestType>http://schemas.xmlsoap.org/ws/2005/02/trust/Issue</wst:RequestType> <wsp:AppliesTo>
  <wsa:EndpointReference>   <wsa:Address>{PROOF_URL}</wsa:Address>  </wsa:EndpointReference> </wsp:AppliesTo>
 <wst:Claims Dialect="urn:component:Microsoft.Rtc.WebAuthentication.2010:authclaims">
  <auth:ClaimType Uri="http://schemas.xmlsoap.org/ws/2005/05/identity/claims/uri" Optional="false">
   <auth:Value>sip:user@lab.test</auth:Value>  </auth:ClaimType> </wst:Claims> <wst:Entropy>
  <wst:BinarySecret>{base64.b64encode(CLIENT_ENTROPY).decode()}</wst:BinarySecret> </wst:Entropy>
 <wst:KeyType>http://docs.oasis-open.org/ws-sx/ws-trust/200512/SymmetricKey</wst:KeyType>
</wst:RequestSecurityToken></soap:Body></soap:Envelope>"""
    assert parse_rst(doc.encode(), require_credentials=False) == _request(
        username="", password="", context="abc"
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b"SymmetricKey", b"PublicKey", "KeyType"),
        (b"#SAMLV1.1", b"#SAMLV2.0", "TokenType"),
        (b' Context="5c2b3a3e-7f6a-4f0e-9d1c-0c8f1e6b9a10"', b"", "no Context attribute"),
        (b"<wst:BinarySecret>AAE", b"<wst:BinarySecret>!!!", "not valid base64"),
        (b"72913<", b" <", "<wsse:Password> is empty"),
        (b"wsa:Address>", b"wsa:Other>", "missing <wsa:Address>"),
    ],
)
def test_rst_errors(old: bytes, new: bytes, message: str) -> None:
    data = build_rst(_request())
    assert old in data
    with pytest.raises(WireError, match=message) as info:
        parse_rst(data.replace(old, new, 2))
    assert info.value.stage is Stage.WEB_TICKET


_XML_CHARS = st.characters(
    blacklist_categories=("Cs",), blacklist_characters="\x00\ufffe\uffff", min_codepoint=0x20
) | st.sampled_from("\t\n\r")
XML_TEXT = st.text(_XML_CHARS, min_size=1, max_size=30).map(lambda t: t.strip(" \t\r\n")).filter(bool)


@settings(max_examples=60)
@given(XML_TEXT, XML_TEXT, XML_TEXT, XML_TEXT, st.none() | XML_TEXT, st.binary(min_size=1, max_size=64))
def test_rst_round_trip_property(
    username: str, password: str, context: str, applies_to: str, claims: str | None, entropy: bytes
) -> None:
    req = RstRequest(username, password, context, applies_to, entropy, claims)
    assert parse_rst(build_rst(req)) == req


# --- RSTR -----------------------------------------------------------------------------------------


def test_rstr_round_trip() -> None:
    data = _rstr()
    resp = parse_rstr(data)
    assert resp.context == "ctx"
    assert resp.server_entropy == SERVER_ENTROPY
    assert (resp.created, resp.expires, resp.key_size) == (T0, T0 + timedelta(hours=8), 256)
    ticket = resp.ticket
    assert ticket == SamlTicket(
        assertion_id="SamlSecurityToken-0f1e",
        issuer=ISSUER,
        sip_uri="sip:user@lab.test",
        issue_instant=T0,
        not_before=T0,
        not_on_or_after=T0 + timedelta(hours=8),
        assertion_xml=ticket.assertion_xml,
    )
    # "Unchanged": the very bytes of the Assertion in the response, and the same exclusive C14N.
    assert ticket.assertion_xml in data
    received = parse_xml(data).find(".//saml:Assertion", NS)
    assert received is not None
    assert exc_c14n(parse_xml(ticket.assertion_xml)) == exc_c14n(received)


def test_rstr_repr_hides_server_entropy() -> None:
    text = repr(parse_rstr(_rstr()))
    assert base64.b64encode(SERVER_ENTROPY).decode() not in text and "<32 bytes>" in text
    assert "\\x64\\x65" not in text and "defg" not in text


def test_rstr_is_readable_with_raw_string_cuts_like_pidgin_sipe() -> None:
    """sipe cuts ``<Lifetime``, ``<BinarySecret``, ``saml:Assertion`` and ``AssertionID="`` out of the raw
    text and digests ``<wsu:Timestamp …>`` + the raw Lifetime inside without canonicalising: that must already
    be the exclusive C14N of the Timestamp it builds."""
    raw = _rstr().decode()
    inner = re.search(r"<Lifetime>(.*?)</Lifetime>", raw)
    secret = re.search(r"<BinarySecret>(.*?)</BinarySecret>", raw)
    assertion = re.search(r"<saml:Assertion.*?</saml:Assertion>", raw)
    assert inner and secret and assertion
    assert re.search(r"<Expires[ >]", inner.group(1)), (
        "sipe reads the ticket expiry from an unprefixed <Expires"
    )
    assert base64.b64decode(secret.group(1)) == SERVER_ENTROPY
    assert 'AssertionID="SamlSecurityToken-0f1e"' in assertion.group(0)
    standalone = parse_xml(assertion.group(0).encode())  # self-contained: declares its own saml prefix
    assert standalone.tag == f"{{{SAML_NS}}}Assertion"
    timestamp = f'<wsu:Timestamp xmlns:wsu="{WSU_NS}" wsu:Id="timestamp">{inner.group(1)}</wsu:Timestamp>'
    assert exc_c14n(parse_xml(timestamp.encode())) == timestamp.encode()


def test_rstr_written_by_another_server_with_prefixes_and_7_digit_fractions() -> None:
    doc = f"""<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
    <t:RequestSecurityTokenResponseCollection xmlns:t="http://docs.oasis-open.org/ws-sx/ws-trust/200512">
    <t:RequestSecurityTokenResponse Context="c1"><t:RequestedSecurityToken>
    <saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:1.0:assertion" MajorVersion="1" MinorVersion="1"
      AssertionID="SamlSecurityToken-9" Issuer="{ISSUER}" IssueInstant="2026-11-26T14:00:00.1234567Z">
      <saml:Conditions NotBefore="2026-11-26T14:00:00Z" NotOnOrAfter="2026-11-26T22:00:00Z"/>
      <saml:AuthenticationStatement><saml:Subject><saml:NameIdentifier>sip:u@lab.test</saml:NameIdentifier>
      </saml:Subject></saml:AuthenticationStatement></saml:Assertion></t:RequestedSecurityToken>
    <t:RequestedProofToken><t:ComputedKey>http://docs.oasis-open.org/ws-sx/ws-trust/200512/CK/PSHA1</t:ComputedKey>
    </t:RequestedProofToken><t:Entropy><t:BinarySecret Type="http://docs.oasis-open.org/ws-sx/ws-trust/200512/Nonce">
    {base64.b64encode(SERVER_ENTROPY).decode()}</t:BinarySecret></t:Entropy>
    <t:Lifetime><wsu:Created xmlns:wsu="{WSU_NS}">2026-11-26T14:00:00.000Z</wsu:Created>
    <wsu:Expires xmlns:wsu="{WSU_NS}">2026-11-26T22:00:00+00:00</wsu:Expires></t:Lifetime>
    </t:RequestSecurityTokenResponse></t:RequestSecurityTokenResponseCollection></s:Body></s:Envelope>"""
    resp = parse_rstr(doc.encode())
    assert resp.ticket.sip_uri == "sip:u@lab.test"
    assert resp.ticket.issue_instant == T0 + timedelta(microseconds=123456)
    assert (resp.created, resp.expires, resp.key_size) == (T0, T0 + timedelta(hours=8), 256)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b"CK/PSHA1", b"CK/HMAC", "not CK/PSHA1"),
        (b'MajorVersion="1"', b'MajorVersion="2"', "SAML 1.x"),
        (b"<Created", b"<Made", "missing <wsu:Created>"),
        (b"<KeySize>256", b"<KeySize>abc", "KeySize"),
        (b'IssueInstant="2026-11-26T14:00:00Z"', b'IssueInstant="soon"', "IssueInstant"),
        (b"sip:user@lab.test</saml:NameIdentifier>", b"</saml:NameIdentifier>", "NameIdentifier> is empty"),
        (b"<RequestedProofToken>", b"<RequestedProofTokenX>", "missing <wst:ComputedKey>"),
    ],
)
def test_rstr_errors(old: bytes, new: bytes, message: str) -> None:
    data = _rstr()
    assert old in data
    tail = old[1:].split(b">")[0] if old.startswith(b"<") and b" " not in old else None
    changed = data.replace(old, new)
    if tail is not None and new.startswith(b"<"):
        changed = changed.replace(b"</" + tail + b">", b"</" + new[1:].split(b">")[0] + b">")
    with pytest.raises(WireError, match=message) as info:
        parse_rstr(changed)
    assert info.value.stage is Stage.WEB_TICKET


def test_rstr_that_is_a_fault_says_so() -> None:
    body, _ = build_ticket_fault(TicketFaultCode.PIN_INVALID, "PinInvalid", "pool.lab.test")
    with pytest.raises(WireError, match="SOAP fault: Client: PinInvalid"):
        parse_rstr(body)


@settings(max_examples=60)
@given(XML_TEXT, XML_TEXT.map(lambda t: "sip:" + t), XML_TEXT, st.binary(min_size=1, max_size=64))
def test_rstr_round_trip_property(context: str, sip_uri: str, issuer: str, entropy: bytes) -> None:
    data = build_rstr(context, "SamlSecurityToken-x", issuer, sip_uri, T0, timedelta(minutes=5), entropy)
    resp = parse_rstr(data)
    assert (resp.context, resp.ticket.sip_uri, resp.ticket.issuer, resp.server_entropy) == (
        context,
        sip_uri,
        issuer,
        entropy,
    )
    assert isinstance(resp, RstResponse) and resp.ticket.assertion_xml in data


# --- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(TicketFaultCode))
def test_ticket_fault_round_trip(code: TicketFaultCode) -> None:
    body, header = build_ticket_fault(code, code.reason_name, "pool.lab.test")
    assert header == f'{int(code)};source="pool.lab.test";reason="{code.reason_name}";fault="Client:Auth"'
    fault = parse_ticket_fault(body, header)
    assert fault == TicketFault(int(code), code.reason_name) and fault.known is code
    root = parse_xml(body)
    assert root.findtext("s:Body/s:Fault/faultcode", None, NS) == "s:Client"
    assert root.findtext("s:Body/s:Fault/faultstring", None, NS) == code.reason_name
    error_id = root.find(
        "s:Body/s:Fault/detail/af:OCSDiagnosticsFault/af:Ms-Diagnostics-Fault/af:ErrorId", NS
    )
    assert error_id is not None and error_id.text == str(int(code))


def test_reason_names() -> None:
    assert [c.reason_name for c in TicketFaultCode] == [
        "PinInvalid",
        "PinLocked",
        "PhoneAmbiguous",
        "PinExpired",
        "PinAuthDisabled",
        "ClaimMismatch",
        "Internal",
    ]


def test_ticket_fault_falls_back_to_the_header() -> None:
    header = '2002;source="pool.lab.test";reason="PinLocked";fault="Client:Auth"'
    assert parse_ticket_fault(b"<html><body>500</body></html>", header) == TicketFault(2002, "PinLocked")
    assert parse_ticket_fault(b"", "2099") == TicketFault(2099, "")
    with pytest.raises(WireError, match=r"not a SOAP 1\.1"):
        parse_ticket_fault(b"<html/>", None)
    with pytest.raises(WireError, match="error id"):
        parse_ticket_fault(b"<html/>", 'reason="x"')


def test_ticket_fault_header_is_sanitised_and_unknown_codes_travel() -> None:
    body, header = build_ticket_fault(2042, 'odd "quoted"\r\nreason', "pool\n.lab.test")
    assert "\r" not in header and "\n" not in header and header.count('"') == 6
    fault = parse_ticket_fault(body, None)
    assert fault == TicketFault(2042, 'odd "quoted"\r\nreason') and fault.known is None


def test_generic_fault_without_diagnostics_detail() -> None:
    from agent.wire.soap import build_fault

    with pytest.raises(WireError, match="no af:OCSDiagnosticsFault"):
        parse_ticket_fault(build_fault("Server", "boom"), None)


# --- arbitrary and mutilated input ----------------------------------------------------------------


@settings(max_examples=150)
@given(st.binary(max_size=300), st.none() | st.text(max_size=40))
def test_arbitrary_bytes_raise_only_wire_error(data: bytes, header: str | None) -> None:
    for parse in (parse_rst, parse_rstr):
        with contextlib.suppress(WireError):
            parse(data)
    with contextlib.suppress(WireError):
        parse_ticket_fault(data, header)
    if header is not None:
        with contextlib.suppress(WireError):
            parse_ms_diagnostics(header)


def _mutilations(original: bytes) -> list[bytes]:
    """Each element removed, each attribute removed, each text replaced by junk: one change at a time."""
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
    [
        build_rst(_request()),
        _rstr(),
        build_ticket_fault(TicketFaultCode.PIN_LOCKED, "PinLocked", "pool.lab.test")[0],
    ],
    ids=["rst", "rstr", "fault"],
)
def test_mutilated_messages_raise_only_wire_error(original: bytes) -> None:
    for data in _mutilations(original):
        for parse in (parse_rst, parse_rstr, lambda d: parse_ticket_fault(d, None)):
            with contextlib.suppress(WireError):
                parse(data)
