"""SOAP 1.1 plumbing shared by the Web Ticket and CertProv codecs (protocol.md §6, §7).

Everything that reads XML from the network goes through :func:`parse_xml`: a hardened lxml parser that never
loads a DTD, never resolves entities, never touches the network, caps size and depth, and refuses any
DOCTYPE outright, so billion-laughs and external-entity documents are rejected before they can expand.
Helpers raise :class:`~agent.stages.WireError` with one line naming what is wrong ("missing <wst:Lifetime>").
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import cast

from lxml import etree

from agent.stages import Stage, WireError, one_line

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
WST_NS = "http://docs.oasis-open.org/ws-sx/ws-trust/200512"
#: The ws-trust URI as Lync clients bind it inside GetAndPublishCert (protocol.md §7.2 quirk).
WST_SLASH_NS = WST_NS + "/"
WSP_NS = "http://schemas.xmlsoap.org/ws/2004/09/policy"
WSA_NS = "http://www.w3.org/2005/08/addressing"
AUTH_NS = "http://schemas.xmlsoap.org/ws/2006/12/authorization"
SAML_NS = "urn:oasis:names:tc:SAML:1.0:assertion"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
WSTEP_NS = "http://schemas.microsoft.com/windows/pki/2009/01/enrollment"
AF_NS = "urn:component:Microsoft.Rtc.WebAuthentication.2010"
OCS_NS = "http://schemas.microsoft.com/OCS/AuthWebServices/"

#: Prefix → namespace URI, for ``find``/``findall`` paths and for messages ("missing <wst:Lifetime>").
NS: dict[str, str] = {
    "s": SOAP_NS,
    "wsse": WSSE_NS,
    "wsu": WSU_NS,
    "wst": WST_NS,
    "wsp": WSP_NS,
    "wsa": WSA_NS,
    "auth": AUTH_NS,
    "saml": SAML_NS,
    "ds": DS_NS,
    "wstep": WSTEP_NS,
    "af": AF_NS,
    "ocs": OCS_NS,
}

MAX_XML_BYTES = 256 * 1024
#: XML's whitespace (not Python's, which also strips NEL, NBSP and friends from real values).
XML_WS = " \t\r\n"


def parse_xml(data: bytes, *, stage: Stage | None = None, max_bytes: int = MAX_XML_BYTES) -> etree._Element:
    """Parse untrusted bytes into an element; refuse DOCTYPEs, entities, oversize and malformed input."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"XML must be bytes, got {type(data).__name__}", stage)
    data = bytes(data)
    if not data.strip():
        raise WireError("XML body is empty", stage)
    if len(data) > max_bytes:
        raise WireError(f"XML body is {len(data)} bytes, over the {max_bytes}-byte limit", stage)
    # Checked before parsing so that an entity bomb is never even declared to libxml2.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise WireError("XML has a DOCTYPE (entities are not accepted)", stage)
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        collect_ids=False,
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise WireError(f"XML is not well-formed: {one_line(str(exc))}", stage) from None
    except (etree.LxmlError, ValueError) as exc:
        raise WireError(f"XML cannot be parsed: {one_line(str(exc))}", stage) from None
    if root is None:
        raise WireError("XML body has no root element", stage)
    # Second line of defence for encodings the byte scan cannot see (UTF-16, UTF-32).
    if root.getroottree().docinfo.internalDTD is not None:
        raise WireError("XML has a DOCTYPE (entities are not accepted)", stage)
    return root


def qname(el: etree._Element) -> str:
    """``{ns}local`` of an element as a prefixed name for messages, e.g. ``wst:Lifetime``."""
    tag = etree.QName(el)
    for prefix, uri in NS.items():
        if tag.namespace == uri:
            return f"{prefix}:{tag.localname}"
    return tag.localname


def is_element(node: object) -> bool:
    """True for real elements (comments and processing instructions have non-string tags)."""
    return isinstance(node, etree._Element) and isinstance(node.tag, str)


def local_name(el: etree._Element) -> str:
    return etree.QName(el).localname


def parse_envelope(data: bytes, stage: Stage | None = None) -> tuple[etree._Element | None, etree._Element]:
    """``(Header or None, Body)`` of a SOAP 1.1 envelope; anything else is a WireError."""
    root = parse_xml(data, stage=stage)
    if root.tag != f"{{{SOAP_NS}}}Envelope":
        raise WireError(f"root element is <{qname(root)}>, not a SOAP 1.1 <s:Envelope>", stage)
    headers = root.findall("s:Header", NS)
    bodies = root.findall("s:Body", NS)
    if len(bodies) != 1:
        raise WireError("missing <s:Body>" if not bodies else "more than one <s:Body>", stage)
    if len(headers) > 1:
        raise WireError("more than one <s:Header>", stage)
    return (headers[0] if headers else None), bodies[0]


def envelope(body_child: etree._Element, header_children: Iterable[etree._Element] = ()) -> bytes:
    """A SOAP 1.1 envelope (XML declaration, UTF-8) around one body element and optional header blocks."""
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"s": SOAP_NS})
    headers = list(header_children)
    if headers:
        header = etree.SubElement(env, f"{{{SOAP_NS}}}Header")
        header.extend(headers)
    body = etree.SubElement(env, f"{{{SOAP_NS}}}Body")
    body.append(body_child)
    return serialize(env)


def new_element(
    tag: str,
    nsmap: dict[str | None, str],
    attrib: dict[str, str] | None = None,
    parent: etree._Element | None = None,
) -> etree._Element:
    """An element (or sub-element of ``parent``) whose nsmap may bind the default namespace (key None)."""
    typed = cast("dict[str, str]", nsmap)  # lxml-stubs do not admit the None key lxml accepts
    if parent is None:
        return etree.Element(tag, attrib or {}, nsmap=typed)
    return etree.SubElement(parent, tag, attrib or {}, nsmap=typed)


def qn(ns: str, local: str) -> str:
    """Clark notation ``{ns}local``."""
    return f"{{{ns}}}{local}"


def sub(parent: etree._Element, ns: str, local: str, text: str | None = None, **attrs: str) -> etree._Element:
    """A namespaced child element with optional text: the one element builder every codec uses."""
    el = etree.SubElement(parent, qn(ns, local), attrs)
    if text is not None:
        el.text = text
    return el


def serialize(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")


def exc_c14n(el: etree._Element, stage: Stage | None = None) -> bytes:
    """Exclusive XML C14N 1.0 without comments of one element, as the signature (§7.2) needs."""
    try:
        return etree.tostring(el, method="c14n", exclusive=True, with_comments=False)
    except (etree.LxmlError, ValueError) as exc:
        # libxml2 refuses e.g. relative namespace URIs.
        raise WireError(f"<{qname(el)}> cannot be canonicalised: {one_line(str(exc))}", stage) from None


def detached(el: etree._Element) -> bytes:
    """One element serialised on its own: only the namespace declarations it uses, no tail text.

    ``etree.tostring`` of a sub-element copies *every* in-scope declaration of its ancestors onto it; a deep
    copy keeps the element's own declarations and adds only those it needs, which is what a raw cut of the
    element from the document would look like. UTF-8 like our envelopes, so non-ASCII text is not turned
    into character references.
    """
    clone = copy.deepcopy(el)
    clone.tail = None
    return etree.tostring(clone, encoding="utf-8")


# --- element access -------------------------------------------------------------------------------


def find_one(
    el: etree._Element, path: str, what: str | None = None, stage: Stage | None = None
) -> etree._Element:
    """The element at ``path`` (prefixes from :data:`NS`); WireError "missing <what>" if there is none."""
    found = el.find(path, NS)
    if found is None:
        raise WireError(f"missing <{what or path.rsplit('/', 1)[-1]}>", stage)
    return found


def find_first(el: etree._Element, paths: Iterable[str]) -> etree._Element | None:
    """The first match of several alternative paths (e.g. ws-trust with and without trailing slash)."""
    for path in paths:
        found = el.find(path, NS)
        if found is not None:
            return found
    return None


def text_of(el: etree._Element, what: str | None = None, stage: Stage | None = None) -> str:
    """The element's text with surrounding XML whitespace removed; WireError if empty."""
    value = (el.text or "").strip(XML_WS)
    if not value:
        raise WireError(f"<{what or qname(el)}> is empty", stage)
    return value


def find_text(el: etree._Element, path: str, what: str | None = None, stage: Stage | None = None) -> str:
    name = what or path.rsplit("/", 1)[-1]
    return text_of(find_one(el, path, name, stage), name, stage)


def find_text_optional(el: etree._Element, path: str) -> str | None:
    found = el.find(path, NS)
    if found is None:
        return None
    value = (found.text or "").strip(XML_WS)
    return value or None


def attr(el: etree._Element, name: str, what: str | None = None, stage: Stage | None = None) -> str:
    """A required attribute (``name`` may be ``{ns}local``), trimmed; WireError if missing or empty."""
    value = el.get(name)
    if value is None or not value.strip(XML_WS):
        local = name.rsplit("}", 1)[-1]
        raise WireError(f"<{what or qname(el)}> has no {local} attribute", stage)
    return value.strip(XML_WS)


def b64decode(text: str, what: str, stage: Stage | None = None) -> bytes:
    """Base64 with any XML whitespace/CRLF line breaks inside; WireError on bad alphabet or padding."""
    compact = text.translate({ord(c): None for c in XML_WS})
    try:
        raw = base64.b64decode(compact.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise WireError(f"<{what}> is not valid base64", stage) from None
    if not raw:
        raise WireError(f"<{what}> is empty", stage)
    return raw


def b64encode_lines(data: bytes, width: int = 76) -> str:
    """Base64 in ``width``-column lines joined by LF (what PEM-era clients send for CSRs)."""
    flat = base64.b64encode(data).decode("ascii")
    return "\n".join(flat[i : i + width] for i in range(0, len(flat), width))


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- xs:dateTime ----------------------------------------------------------------------------------

_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,12}))?(Z|[+-]\d{2}:\d{2})",
    re.ASCII,
)


def format_time(dt: datetime) -> str:
    """xs:dateTime in UTC with ``Z``; microseconds only when non-zero (so round trips are exact)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("format_time needs an aware datetime")
    utc = dt.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}"
    return text + "Z"


def parse_time(text: str | None, what: str, stage: Stage | None = None) -> datetime:
    """An xs:dateTime with an explicit zone (``Z`` or ±hh:mm) as aware UTC; fractions beyond µs are cut."""
    m = _DATETIME.fullmatch((text or "").strip(XML_WS))
    if m is None:
        raise WireError(
            f"<{what}> is not an xs:dateTime with a time zone: {one_line(text or '', 40)!r}", stage
        )
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, zone = m.group(7), m.group(8)
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        if zone == "Z":
            tz: timezone = UTC
        else:
            sign = 1 if zone[0] == "+" else -1
            tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        value = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
        return value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise WireError(f"<{what}> is not a valid date and time: {text!r}", stage) from None


# --- SOAP 1.1 faults ------------------------------------------------------------------------------

_FAULT_CODES = ("VersionMismatch", "MustUnderstand", "Client", "Server")


@dataclass(frozen=True)
class Fault:
    """A SOAP 1.1 fault. ``faultcode`` is the local part ("Client", "Server.Busy"); ``detail`` the element."""

    faultcode: str
    faultstring: str
    faultactor: str | None = None
    detail: etree._Element | None = field(default=None, compare=False, repr=False)


def build_fault(faultcode: str, faultstring: str, detail_children: Iterable[etree._Element] = ()) -> bytes:
    """A SOAP 1.1 fault envelope; ``faultcode`` is Client/Server/... (an ``s:`` prefix is accepted)."""
    local = faultcode.removeprefix("s:")
    if local.split(".", 1)[0] not in _FAULT_CODES:
        raise ValueError(f"not a SOAP 1.1 fault code: {faultcode!r}")
    fault = etree.Element(f"{{{SOAP_NS}}}Fault", nsmap={"s": SOAP_NS})
    etree.SubElement(fault, "faultcode").text = f"s:{local}"
    etree.SubElement(fault, "faultstring").text = faultstring
    children = list(detail_children)
    if children:
        etree.SubElement(fault, "detail").extend(children)
    return envelope(fault)


def parse_fault(body_or_bytes: etree._Element | bytes, stage: Stage | None = None) -> Fault | None:
    """The fault in a SOAP body (or whole envelope bytes); None when the body carries no fault."""
    if isinstance(body_or_bytes, etree._Element):
        body = body_or_bytes
    else:
        body = parse_envelope(body_or_bytes, stage)[1]
    fault = body.find("s:Fault", NS)
    if fault is None:
        return None
    code_el = fault.find("faultcode")
    if code_el is None:
        raise WireError("missing <faultcode> in <s:Fault>", stage)
    code = text_of(code_el, "faultcode", stage)
    prefix, _, local = code.rpartition(":")
    if prefix and code_el.nsmap.get(prefix) not in (SOAP_NS, None):
        # A faultcode QName in another namespace is an application code: keep it whole.
        local = code
    return Fault(
        faultcode=local,
        faultstring=(fault.findtext("faultstring") or "").strip(XML_WS),
        faultactor=find_text_optional(fault, "faultactor"),
        detail=fault.find("detail"),
    )
