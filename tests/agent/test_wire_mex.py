"""CertProv and Web Ticket metadata (agent/wire/mex.py, protocol.md §6.1)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from agent.stages import Stage, WireError
from agent.wire.mex import (
    CERTPROV_POLICY_ID,
    CERTPROV_PORT,
    CertProvMex,
    WebTicketMex,
    build_certprov_mex,
    build_webticket_mex,
    parse_certprov_mex,
    parse_webticket_mex,
)

CERTPROV = "https://pool.lab.test:443/CertProv/CertProvisioningService.svc"
WEBTICKET = "https://pool.lab.test/WebTicket/WebTicketService.svc"


def test_certprov_mex_round_trip() -> None:
    assert parse_certprov_mex(build_certprov_mex(CERTPROV, WEBTICKET)) == CertProvMex(
        webticket_url=WEBTICKET, proof_url=CERTPROV + "/WebTicket_Proof"
    )
    assert (
        parse_certprov_mex(build_certprov_mex(CERTPROV + "/", WEBTICKET)).proof_url
        == CERTPROV + "/WebTicket_Proof"
    )


def test_certprov_mex_shape_is_what_local_name_clients_walk() -> None:
    """Root's direct children are wsp:Policy (with wsu:Id) and wsdl:service, spelled as §6.1 says."""
    root = etree.fromstring(build_certprov_mex(CERTPROV, WEBTICKET))
    assert root.tag == "{http://schemas.xmlsoap.org/wsdl/}definitions"
    policy = root.find("{http://schemas.xmlsoap.org/ws/2004/09/policy}Policy")
    assert policy is not None
    wsu_id = "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd}Id"
    assert policy.get(wsu_id) == "CertProvisioningServiceWebTicketProof_SHA1_policy"
    local = [etree.QName(el).localname for el in policy.iter()]
    path = ["ExactlyOne", "All", "EndorsingSupportingTokens", "Policy", "IssuedToken", "Issuer", "Address"]
    assert all(step in local for step in path)
    port = root.find("{http://schemas.xmlsoap.org/wsdl/}service/{http://schemas.xmlsoap.org/wsdl/}port")
    assert port is not None and port.get("name") == "CertProvisioningServiceWebTicketProof_SHA1"
    address = port.find("{http://schemas.xmlsoap.org/wsdl/soap/}address")
    assert address is not None and address.get("location") == CERTPROV + "/WebTicket_Proof"


def test_certprov_mex_with_other_prefixes_and_case_is_accepted() -> None:
    """Clients match local names and compare Id/name case-insensitively: so do we."""
    doc = f"""<definitions xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:p="http://schemas.xmlsoap.org/ws/2004/09/policy"
      xmlns:u="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd">
      <p:Policy u:Id="other_policy"/>
      <p:Policy u:Id="{CERTPROV_POLICY_ID.lower()}"><p:ExactlyOne><p:All>
        <x:EndorsingSupportingTokens xmlns:x="urn:sp"><p:Policy><x:IssuedToken><x:Issuer>
        <a:Address xmlns:a="urn:wsa"> {WEBTICKET} </a:Address></x:Issuer></x:IssuedToken>
        </p:Policy></x:EndorsingSupportingTokens></p:All></p:ExactlyOne></p:Policy>
      <service><port name="{CERTPROV_PORT.upper()}"><s:address xmlns:s="urn:soap" location="https://x/WebTicket_Proof"/>
      </port></service></definitions>"""
    assert parse_certprov_mex(doc.encode()) == CertProvMex(WEBTICKET, "https://x/WebTicket_Proof")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.replace(b"_SHA1_policy", b"_SHA256_policy"), "no Policy"),
        (
            lambda d: d.replace(b"EndorsingSupportingTokens", b"SignedSupportingTokens"),
            "missing EndorsingSupporting",
        ),
        (lambda d: d.replace(b"<wsa:Address>" + WEBTICKET.encode(), b"<wsa:Address>"), "Address is empty"),
        (
            lambda d: d.replace(b'port name="CertProvisioningServiceWebTicketProof_SHA1"', b'port name="x"'),
            "no service/port",
        ),
        (lambda d: d.replace(b"location=", b"place="), "no address location"),
    ],
)
def test_certprov_mex_errors_name_what_is_missing(mutate: object, message: str) -> None:
    doc = mutate(build_certprov_mex(CERTPROV, WEBTICKET))  # type: ignore[operator]
    with pytest.raises(WireError, match=message) as info:
        parse_certprov_mex(doc)
    assert info.value.stage is Stage.WEB_TICKET


def test_policy_nested_below_the_root_is_not_found() -> None:
    """Only the root's direct children count, as for real clients."""
    doc = build_certprov_mex(CERTPROV, WEBTICKET).replace(
        b"<wsp:Policy wsu:Id", b"<wrap><wsp:Policy wsu:Id", 1
    )
    doc = doc.replace(b"</wsp:ExactlyOne></wsp:Policy>", b"</wsp:ExactlyOne></wsp:Policy></wrap>", 1)
    with pytest.raises(WireError, match="no Policy"):
        parse_certprov_mex(doc)


def test_webticket_mex_round_trip() -> None:
    assert parse_webticket_mex(build_webticket_mex(WEBTICKET)) == WebTicketMex(
        pin_url=WEBTICKET + "/Pin", negotiate_url=WEBTICKET
    )


def test_webticket_mex_without_negotiate_or_without_pin() -> None:
    doc = build_webticket_mex(WEBTICKET)
    only_pin = doc.replace(b'name="WebTicketServiceWinNegotiate"', b'name="WsFedBearer"')
    assert parse_webticket_mex(only_pin) == WebTicketMex(pin_url=WEBTICKET + "/Pin", negotiate_url=None)
    only_negotiate = doc.replace(b'name="WebTicketServicePin"', b'name="WsFedBearer"')
    with pytest.raises(WireError, match="no service/port WebTicketServicePin"):
        parse_webticket_mex(only_negotiate)


@settings(max_examples=150)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_wire_error(data: bytes) -> None:
    for parse in (parse_certprov_mex, parse_webticket_mex):
        with contextlib.suppress(WireError):
            parse(data)


@pytest.mark.parametrize(
    "builder", [lambda: build_certprov_mex(CERTPROV, WEBTICKET), lambda: build_webticket_mex(WEBTICKET)]
)
def test_dropping_any_element_or_attribute_raises_only_wire_error(builder: object) -> None:
    original = builder()  # type: ignore[operator]
    count = len(list(etree.fromstring(original).iter()))
    for index in range(1, count):
        root = etree.fromstring(original)
        victim = list(root.iter())[index]
        for key in list(victim.attrib):
            trimmed = etree.fromstring(original)
            del list(trimmed.iter())[index].attrib[key]
            _parse_both(etree.tostring(trimmed))
        parent = victim.getparent()
        assert parent is not None
        parent.remove(victim)
        _parse_both(etree.tostring(root))


def _parse_both(data: bytes) -> None:
    for parse in (parse_certprov_mex, parse_webticket_mex):
        with contextlib.suppress(WireError):
            parse(data)
