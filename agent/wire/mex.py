"""Metadata (WSDL at ``<base>/mex``) of the CertProv and Web Ticket services (protocol.md §6.1).

The builders write namespaced WSDL; the parsers match *local names* only, starting from the root's direct
children, because that is what real clients do (pidgin-sipe walks ``Policy`` and ``service/port`` by local
name and compares ``Id``/``name`` case-insensitively). A pool whose WSDL only works with a namespace-aware
reader would pass our tests and fail with them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from lxml import etree

from agent.stages import Stage, WireError
from agent.wire.soap import (
    OCS_NS,
    WSA_NS,
    WSP_NS,
    WSU_NS,
    XML_WS,
    is_element,
    local_name,
    parse_xml,
    qn,
    serialize,
    sub,
)

WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
WSDL_SOAP_NS = "http://schemas.xmlsoap.org/wsdl/soap/"
SP_NS = "http://docs.oasis-open.org/ws-sx/ws-securitypolicy/200702"
SOAP_HTTP_TRANSPORT = "http://schemas.xmlsoap.org/soap/http"

CERTPROV_PORT = "CertProvisioningServiceWebTicketProof_SHA1"
CERTPROV_POLICY_ID = CERTPROV_PORT + "_policy"
WEBTICKET_PIN_PORT = "WebTicketServicePin"
WEBTICKET_NEGOTIATE_PORT = "WebTicketServiceWinNegotiate"
#: Path under the policy to the Web Ticket URL; "Endorsing" = the ticket must be signed with the proof key.
ISSUER_PATH = ("ExactlyOne", "All", "EndorsingSupportingTokens", "Policy", "IssuedToken", "Issuer", "Address")

_STAGE = Stage.WEB_TICKET
_NSMAP = {"wsdl": WSDL_NS, "soap": WSDL_SOAP_NS, "wsp": WSP_NS, "wsu": WSU_NS, "sp": SP_NS, "wsa": WSA_NS}


@dataclass(frozen=True)
class CertProvMex:
    """What the phone learns from ``<CertProv base>/mex``: where to get a ticket and where to use it."""

    webticket_url: str
    proof_url: str


@dataclass(frozen=True)
class WebTicketMex:
    """Endpoints of ``<Web Ticket base>/mex``: the PIN endpoint (required) and Negotiate (optional)."""

    pin_url: str
    negotiate_url: str | None


def _definitions(name: str) -> etree._Element:
    return etree.Element(
        qn(WSDL_NS, "definitions"),
        {"name": name, "targetNamespace": OCS_NS},
        nsmap={**_NSMAP, "tns": OCS_NS},
    )


def _port(service: etree._Element, name: str, location: str) -> None:
    port = sub(service, WSDL_NS, "port", name=name, binding=f"tns:{name}")
    sub(port, WSDL_SOAP_NS, "address", location=location)


def _binding(root: etree._Element, name: str, policy_id: str | None = None) -> None:
    binding = sub(root, WSDL_NS, "binding", name=name, type=f"tns:{name}")
    if policy_id is not None:
        sub(binding, WSP_NS, "PolicyReference", URI=f"#{policy_id}")
    sub(binding, WSDL_SOAP_NS, "binding", transport=SOAP_HTTP_TRANSPORT)


def build_certprov_mex(certprov_base: str, webticket_base: str) -> bytes:
    """CertProv WSDL: the endorsing IssuedToken policy naming the Web Ticket service, and the proof port."""
    certprov_base = certprov_base.rstrip("/")
    root = _definitions("CertProvisioningService")
    policy = sub(root, WSP_NS, "Policy", **{qn(WSU_NS, "Id"): CERTPROV_POLICY_ID})
    every = sub(sub(policy, WSP_NS, "ExactlyOne"), WSP_NS, "All")
    transport = sub(sub(every, SP_NS, "TransportBinding"), WSP_NS, "Policy")
    sub(sub(sub(transport, SP_NS, "TransportToken"), WSP_NS, "Policy"), SP_NS, "HttpsToken")
    endorsing = sub(sub(every, SP_NS, "EndorsingSupportingTokens"), WSP_NS, "Policy")
    issued = sub(
        endorsing,
        SP_NS,
        "IssuedToken",
        **{qn(SP_NS, "IncludeToken"): SP_NS + "/IncludeToken/AlwaysToRecipient"},
    )
    sub(sub(issued, SP_NS, "Issuer"), WSA_NS, "Address", webticket_base)
    _binding(root, CERTPROV_PORT, CERTPROV_POLICY_ID)
    service = sub(root, WSDL_NS, "service", name="CertProvisioningService")
    _port(service, CERTPROV_PORT, certprov_base + "/WebTicket_Proof")
    return serialize(root)


def build_webticket_mex(base: str) -> bytes:
    """Web Ticket WSDL: ``WebTicketServicePin`` → ``<base>/Pin``, ``WebTicketServiceWinNegotiate`` → base."""
    base = base.rstrip("/")
    root = _definitions("WebTicketService")
    _binding(root, WEBTICKET_PIN_PORT)
    _binding(root, WEBTICKET_NEGOTIATE_PORT)
    service = sub(root, WSDL_NS, "service", name="WebTicketService")
    _port(service, WEBTICKET_PIN_PORT, base + "/Pin")
    _port(service, WEBTICKET_NEGOTIATE_PORT, base)
    return serialize(root)


# --- parsing by local name ------------------------------------------------------------------------


def _children(el: etree._Element, name: str) -> Iterator[etree._Element]:
    return (c for c in el if is_element(c) and local_name(c) == name)


def _child(el: etree._Element, name: str) -> etree._Element | None:
    return next(_children(el, name), None)


def _attr_local(el: etree._Element, name: str) -> str | None:
    """An attribute by local name in any namespace (``wsu:Id`` and plain ``Id`` alike)."""
    for key, value in el.attrib.items():
        if str(key).rsplit("}", 1)[-1] == name:
            return str(value)
    return None


def _port_location(root: etree._Element, port_name: str) -> str | None:
    for service in _children(root, "service"):
        for port in _children(service, "port"):
            if (port.get("name") or "").lower() != port_name.lower():
                continue
            address = _child(port, "address")
            location = (address.get("location") or "").strip(XML_WS) if address is not None else ""
            if not location:
                raise WireError(f"MEX port {port_name} has no address location", _STAGE)
            return location
    return None


def parse_certprov_mex(data: bytes) -> CertProvMex:
    """The Web Ticket URL (from the endorsing policy) and the ``WebTicket_Proof`` URL of a CertProv WSDL."""
    root = parse_xml(data, stage=_STAGE)
    policy = next(
        (
            p
            for p in _children(root, "Policy")
            if (_attr_local(p, "Id") or "").lower() == CERTPROV_POLICY_ID.lower()
        ),
        None,
    )
    if policy is None:
        raise WireError(f"MEX has no Policy {CERTPROV_POLICY_ID} among the root's children", _STAGE)
    node = policy
    for step in ISSUER_PATH:
        found = _child(node, step)
        if found is None:
            raise WireError(f"MEX policy has no {'/'.join(ISSUER_PATH)} (missing {step})", _STAGE)
        node = found
    webticket_url = (node.text or "").strip(XML_WS)
    if not webticket_url:
        raise WireError("MEX policy Issuer/Address is empty", _STAGE)
    proof_url = _port_location(root, CERTPROV_PORT)
    if proof_url is None:
        raise WireError(f"MEX has no service/port {CERTPROV_PORT}", _STAGE)
    return CertProvMex(webticket_url=webticket_url, proof_url=proof_url)


def parse_webticket_mex(data: bytes) -> WebTicketMex:
    """The PIN (required: it is how a phone signs in) and Negotiate endpoints of a Web Ticket WSDL."""
    root = parse_xml(data, stage=_STAGE)
    pin = _port_location(root, WEBTICKET_PIN_PORT)
    if pin is None:
        raise WireError(f"MEX has no service/port {WEBTICKET_PIN_PORT} (no PIN sign-in offered)", _STAGE)
    return WebTicketMex(pin_url=pin, negotiate_url=_port_location(root, WEBTICKET_NEGOTIATE_PORT))
