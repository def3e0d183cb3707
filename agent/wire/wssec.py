"""The WS-Security header of GetAndPublishCert (protocol.md §7.2): a Timestamp signed with HMAC-SHA1 under the
web ticket's proof key, exclusive C14N throughout, the key named by the SAML AssertionID.

Verification works on the *received* document: the digest is recomputed over exc-C14N of the Timestamp element
as found, the HMAC over exc-C14N of the SignedInfo as found. To stop signature wrapping, the Reference's
``#id`` must name exactly one element in the whole document, and that element must be the one Timestamp that
is a direct child of the one ``wsse:Security`` header block (the Timestamp whose times the server checks).
A second Security header is refused outright: which ticket would count is ambiguous.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

from lxml import etree

from agent.stages import Stage, WireError
from agent.wire.soap import (
    DS_NS,
    NS,
    WSSE_NS,
    WSU_NS,
    attr,
    b64decode,
    b64encode,
    exc_c14n,
    find_one,
    find_text,
    format_time,
    parse_xml,
    qname,
    sub,
    text_of,
)

EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
HMAC_SHA1 = "http://www.w3.org/2000/09/xmldsig#hmac-sha1"
SHA1_DIGEST = "http://www.w3.org/2000/09/xmldsig#sha1"
SAML_ASSERTION_ID_TYPE = "http://docs.oasis-open.org/wss/oasis-wss-saml-token-profile-1.0#SAMLAssertionID"
TIMESTAMP_ID = "timestamp"
_ID_ATTRS = (f"{{{WSU_NS}}}Id", "Id", "ID", "{http://www.w3.org/XML/1998/namespace}id")


@dataclass(frozen=True, repr=False)
class SignatureInfo:
    """Everything needed to check the signature, captured from the received document at parse time.

    ``problem`` is set when the document's structure already rules the signature out (duplicate Security or
    Timestamp, a Reference that does not resolve to exactly that Timestamp).
    """

    key_identifier: str
    key_identifier_type: str | None
    c14n_method: str
    signature_method: str
    reference_uri: str
    transforms: tuple[str, ...]
    digest_method: str
    digest_value: bytes
    signature_value: bytes
    signed_info_c14n: bytes
    referenced_c14n: bytes | None
    problem: str | None = None

    def __repr__(self) -> str:
        return (
            f"SignatureInfo(key_identifier={self.key_identifier!r}, reference_uri={self.reference_uri!r}, "
            f"problem={self.problem!r})"
        )


def build_security(
    security: etree._Element,
    created: datetime,
    expires: datetime,
    assertion_xml: bytes,
    assertion_id: str,
    proof_key: bytes,
) -> None:
    """Fill an empty ``wsse:Security`` element: Timestamp, the Assertion as given, and the Signature."""
    timestamp = sub(security, WSU_NS, "Timestamp", **{f"{{{WSU_NS}}}Id": TIMESTAMP_ID})
    sub(timestamp, WSU_NS, "Created", format_time(created))
    sub(timestamp, WSU_NS, "Expires", format_time(expires))
    security.append(parse_xml(assertion_xml))
    signature = etree.SubElement(security, f"{{{DS_NS}}}Signature", nsmap={"ds": DS_NS})
    signed_info = sub(signature, DS_NS, "SignedInfo")
    sub(signed_info, DS_NS, "CanonicalizationMethod", Algorithm=EXC_C14N)
    sub(signed_info, DS_NS, "SignatureMethod", Algorithm=HMAC_SHA1)
    reference = sub(signed_info, DS_NS, "Reference", URI=f"#{TIMESTAMP_ID}")
    sub(sub(reference, DS_NS, "Transforms"), DS_NS, "Transform", Algorithm=EXC_C14N)
    sub(reference, DS_NS, "DigestMethod", Algorithm=SHA1_DIGEST)
    sub(reference, DS_NS, "DigestValue", b64encode(hashlib.sha1(exc_c14n(timestamp)).digest()))
    mac = hmac.digest(proof_key, exc_c14n(signed_info), "sha1")
    sub(signature, DS_NS, "SignatureValue", b64encode(mac))
    str_el = sub(sub(signature, DS_NS, "KeyInfo"), WSSE_NS, "SecurityTokenReference")
    sub(str_el, WSSE_NS, "KeyIdentifier", assertion_id, ValueType=SAML_ASSERTION_ID_TYPE)


def _elements_with_id(root: etree._Element, ident: str) -> list[etree._Element]:
    found = []
    for el in root.iter("*"):
        if any(el.get(name) == ident for name in _ID_ATTRS):
            found.append(el)
    return found


def _reference_problem(root: etree._Element, timestamps: list[etree._Element], uri: str) -> str | None:
    if len(timestamps) > 1:
        return f"{len(timestamps)} wsu:Timestamp elements in wsse:Security (expected one)"
    if not uri.startswith("#") or len(uri) < 2:
        return f"Reference URI {uri[:60]!r} is not a same-document #id"
    targets = _elements_with_id(root, uri[1:])
    if len(targets) != 1:
        return f"Reference {uri[:60]!r} matches {len(targets)} elements (signature wrapping?)"
    if targets[0] is not timestamps[0]:
        return f"Reference {uri[:60]!r} names <{qname(targets[0])}>, not the wsu:Timestamp in wsse:Security"
    return None


def _algorithm(el: etree._Element, path: str, stage: Stage | None) -> str:
    return attr(find_one(el, path, path, stage), "Algorithm", path, stage)


def parse_security(
    root: etree._Element, header: etree._Element, stage: Stage | None
) -> tuple[etree._Element, etree._Element, SignatureInfo]:
    """``(Timestamp, Assertion, SignatureInfo)`` of the Security header; WireError if one is missing."""
    securities = header.findall("wsse:Security", NS)
    if not securities:
        raise WireError("missing <wsse:Security> header", stage)
    if len(securities) > 1:
        raise WireError("more than one <wsse:Security> header (ambiguous ticket)", stage)
    security = securities[0]
    timestamps = security.findall("wsu:Timestamp", NS)
    if not timestamps:
        raise WireError("missing <wsu:Timestamp> in <wsse:Security>", stage)
    assertion = find_one(security, "saml:Assertion", "saml:Assertion", stage)
    signature = find_one(security, "ds:Signature", "ds:Signature", stage)
    signed_info = find_one(signature, "ds:SignedInfo", "ds:SignedInfo", stage)
    references = signed_info.findall("ds:Reference", NS)
    if not references:
        raise WireError("missing <ds:Reference> in <ds:SignedInfo>", stage)
    reference = references[0]
    uri = reference.get("URI", "")
    problem = _reference_problem(root, timestamps, uri)
    if problem is None and len(references) > 1:
        problem = f"ds:SignedInfo has {len(references)} References (expected one)"
    key_id = find_one(
        signature, "ds:KeyInfo/wsse:SecurityTokenReference/wsse:KeyIdentifier", "wsse:KeyIdentifier", stage
    )
    info = SignatureInfo(
        key_identifier=text_of(key_id, "wsse:KeyIdentifier", stage),
        key_identifier_type=key_id.get("ValueType"),
        c14n_method=_algorithm(signed_info, "ds:CanonicalizationMethod", stage),
        signature_method=_algorithm(signed_info, "ds:SignatureMethod", stage),
        reference_uri=uri,
        transforms=tuple(
            attr(t, "Algorithm", "ds:Transform", stage)
            for t in reference.iterfind("ds:Transforms/ds:Transform", NS)
        ),
        digest_method=_algorithm(reference, "ds:DigestMethod", stage),
        digest_value=b64decode(
            find_text(reference, "ds:DigestValue", "ds:DigestValue", stage), "ds:DigestValue", stage
        ),
        signature_value=b64decode(
            find_text(signature, "ds:SignatureValue", "ds:SignatureValue", stage), "ds:SignatureValue", stage
        ),
        signed_info_c14n=exc_c14n(signed_info, stage),
        referenced_c14n=exc_c14n(timestamps[0], stage) if problem is None else None,
        problem=problem,
    )
    return timestamps[0], assertion, info


def signature_problem(info: SignatureInfo, assertion_id: str, proof_key: bytes) -> str | None:
    """Why the signature does not hold (one line, no key material), or None when it verifies."""
    if info.problem is not None:
        return info.problem
    if info.c14n_method != EXC_C14N:
        return f"CanonicalizationMethod {info.c14n_method!r} is not exclusive C14N"
    if info.signature_method != HMAC_SHA1:
        return f"SignatureMethod {info.signature_method!r} is not hmac-sha1"
    if info.transforms != (EXC_C14N,):
        return "Reference Transforms are not exactly one exclusive C14N"
    if info.digest_method != SHA1_DIGEST:
        return f"DigestMethod {info.digest_method!r} is not sha1"
    if info.key_identifier_type not in (None, SAML_ASSERTION_ID_TYPE):
        return f"KeyIdentifier ValueType {info.key_identifier_type!r} is not SAMLAssertionID"
    if info.key_identifier != assertion_id:
        return "KeyIdentifier does not name the Assertion in the header"
    if info.referenced_c14n is None:
        return "the signed Timestamp could not be located"
    if not hmac.compare_digest(hashlib.sha1(info.referenced_c14n).digest(), info.digest_value):
        return "Timestamp digest does not match (Timestamp altered)"
    expected = hmac.digest(proof_key, info.signed_info_c14n, "sha1")
    if not hmac.compare_digest(expected, info.signature_value):
        return "SignatureValue does not match (wrong proof key or SignedInfo altered)"
    return None
