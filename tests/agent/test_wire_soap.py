"""The hardened XML parser, SOAP envelopes and faults, exclusive C14N and xs:dateTime (agent/wire/soap.py)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from agent.stages import Stage, WireError
from agent.wire import soap
from agent.wire.soap import (
    MAX_XML_BYTES,
    NS,
    build_fault,
    envelope,
    exc_c14n,
    find_one,
    format_time,
    parse_envelope,
    parse_fault,
    parse_time,
    parse_xml,
)

BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol0 "lol">\n'
    + b"".join(b' <!ENTITY lol%d "%s">\n' % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10))
    + b"]>\n<lolz>&lol9;</lolz>"
)
XXE = b'<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>'
XXE_PARAM = b'<!DOCTYPE foo [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><foo/>'


# --- the hardened parser --------------------------------------------------------------------------


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, XXE, XXE_PARAM, b"<!DOCTYPE a><a/>"])
def test_doctype_and_entities_are_refused(doc: bytes) -> None:
    with pytest.raises(WireError, match="DOCTYPE"):
        parse_xml(doc)


def test_doctype_hidden_in_utf16_is_still_refused() -> None:
    doc = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY x "expanded">]><a>&x;</a>'
    with pytest.raises(WireError, match="DOCTYPE"):
        parse_xml(doc.encode("utf-16"))


def test_entities_never_expand_even_if_parsed() -> None:
    """The lxml settings alone (no pre-scan) leave entity references unexpanded: defence in depth."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    root = etree.fromstring(XXE, parser)
    assert b"root:" not in etree.tostring(root)
    assert root.text is None


def test_oversize_is_refused_before_parsing() -> None:
    doc = b"<a>" + b"x" * MAX_XML_BYTES + b"</a>"
    with pytest.raises(WireError, match="over the 262144-byte limit"):
        parse_xml(doc)
    with pytest.raises(WireError, match="limit"):
        parse_xml(b"<a>xx</a>", max_bytes=5)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"", "empty"),
        (b"  \n", "empty"),
        (b"<a>", "not well-formed"),
        (b"<a/><b/>", "not well-formed"),
        (b"<a>\x00</a>", "not well-formed"),
        (b"<a>&undefined;</a>", "not well-formed"),
        (b"<a>" * 300 + b"</a>" * 300, "not well-formed"),
        (b"\xff\xfe\x00", "not well-formed"),
    ],
)
def test_malformed_xml_is_one_line_wire_error(doc: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message) as info:
        parse_xml(doc, stage=Stage.WEB_TICKET)
    assert "\n" not in str(info.value)
    assert info.value.stage is Stage.WEB_TICKET


def test_non_bytes_is_refused() -> None:
    with pytest.raises(WireError, match="bytes"):
        parse_xml("<a/>")  # type: ignore[arg-type]


def test_comments_and_processing_instructions_are_harmless() -> None:
    root = parse_xml(b"<?xml version='1.0'?><!-- c --><?pi x?><a><!-- in --><b/></a>")
    assert root.tag == "a"


# --- envelopes ------------------------------------------------------------------------------------


def test_envelope_round_trip() -> None:
    body = etree.Element("{urn:x}Thing", nsmap={"x": "urn:x"})
    body.text = "value"
    head = etree.Element("{urn:h}Block", nsmap={"h": "urn:h"})
    data = envelope(body, [head])
    assert data.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    header, parsed_body = parse_envelope(data)
    assert header is not None and header[0].tag == "{urn:h}Block"
    assert parsed_body[0].tag == "{urn:x}Thing" and parsed_body[0].text == "value"
    assert parse_envelope(envelope(etree.Element("x")))[0] is None


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"<Envelope/>", "not a SOAP 1.1"),
        (
            b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body/></s:Envelope>',
            "not a SOAP",
        ),
        (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"/>', "missing <s:Body>"),
        (
            b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/><s:Body/></s:Envelope>',
            "more than one <s:Body>",
        ),
    ],
)
def test_bad_envelopes(doc: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        parse_envelope(doc)


def test_find_one_names_the_missing_element() -> None:
    root = parse_xml(b'<r xmlns:wst="http://docs.oasis-open.org/ws-sx/ws-trust/200512"/>')
    with pytest.raises(WireError) as info:
        find_one(root, "wst:Lifetime")
    assert info.value.detail == "missing <wst:Lifetime>"
    with pytest.raises(WireError, match=r"missing <Lifetime of the ticket>"):
        find_one(root, "wst:Lifetime", "Lifetime of the ticket")


# --- exclusive C14N -------------------------------------------------------------------------------


def test_exc_c14n_of_a_subtree_renders_only_used_namespaces() -> None:
    doc = (
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:wsu="urn:u" '
        b'xmlns:x="urn:unused">'
        b'<s:Header><wsu:Timestamp wsu:Id="timestamp" xmlns:wsu="urn:u"><wsu:Created>1</wsu:Created>'
        b'<Expires xmlns="urn:u" >2</Expires ><!-- gone --></wsu:Timestamp></s:Header><s:Body/></s:Envelope>'
    )
    ts = parse_xml(doc).find(".//{urn:u}Timestamp")
    assert ts is not None
    assert exc_c14n(ts) == (
        b'<wsu:Timestamp xmlns:wsu="urn:u" wsu:Id="timestamp"><wsu:Created>1</wsu:Created>'
        b'<Expires xmlns="urn:u">2</Expires></wsu:Timestamp>'
    )


def test_exc_c14n_failure_is_a_wire_error() -> None:
    el = parse_xml(b'<a xmlns:x="relative"><x:b/></a>')
    with pytest.raises(WireError, match="cannot be canonicalised"):
        exc_c14n(el)


# --- xs:dateTime ----------------------------------------------------------------------------------

T0 = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T14:00:00Z", T0),
        (" 2026-11-26T14:00:00Z\n", T0),
        ("2026-11-26T14:00:00+00:00", T0),
        ("2026-11-26T16:00:00+02:00", T0),
        ("2026-11-26T09:30:00-04:30", T0),
        ("2026-11-26T14:00:00.5Z", T0 + timedelta(milliseconds=500)),
        ("2026-11-26T14:00:00.1234567Z", T0 + timedelta(microseconds=123456)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    value = parse_time(text, "wsu:Created")
    assert value == expected and value.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "",
        None,
        "2026-11-26T14:00:00",
        "2026-11-26 14:00:00Z",
        "2026-02-30T14:00:00Z",
        "2026-11-26T25:00:00Z",
        "yesterday",
    ],
)
def test_parse_time_rejects(text: str | None) -> None:
    with pytest.raises(WireError, match="wsu:Expires"):
        parse_time(text, "wsu:Expires", Stage.WEB_TICKET)


def test_format_time() -> None:
    assert format_time(T0) == "2026-11-26T14:00:00Z"
    assert format_time(T0.astimezone(timezone(timedelta(hours=5)))) == "2026-11-26T14:00:00Z"
    assert format_time(T0 + timedelta(microseconds=5)) == "2026-11-26T14:00:00.000005Z"
    with pytest.raises(ValueError):
        format_time(datetime(2026, 11, 26))


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)))
def test_time_round_trip(dt: datetime) -> None:
    assert parse_time(format_time(dt), "t") == dt


# --- faults ---------------------------------------------------------------------------------------


def test_fault_round_trip() -> None:
    detail = etree.Element("{urn:d}Why", nsmap={"d": "urn:d"})
    detail.text = "because"
    fault = parse_fault(build_fault("s:Server", "it broke", [detail]))
    assert fault is not None
    assert (fault.faultcode, fault.faultstring, fault.faultactor) == ("Server", "it broke", None)
    assert fault.detail is not None and fault.detail.findtext("{urn:d}Why") == "because"
    assert parse_fault(build_fault("Client.Auth", "no")) == soap.Fault("Client.Auth", "no")


def test_parse_fault_none_for_a_normal_body_and_rejects_bad_codes() -> None:
    assert parse_fault(envelope(etree.Element("x"))) is None
    with pytest.raises(ValueError):
        build_fault("Nonsense", "x")
    no_code = b'<s:Envelope xmlns:s="%s"><s:Body><s:Fault/></s:Body></s:Envelope>' % NS["s"].encode()
    with pytest.raises(WireError, match="faultcode"):
        parse_fault(no_code)


def test_fault_code_in_an_application_namespace_is_kept_whole() -> None:
    doc = (
        b'<s:Envelope xmlns:s="%s"><s:Body><s:Fault><faultcode xmlns:a="urn:app">a:Locked</faultcode>'
        b"<faultstring>x</faultstring></s:Fault></s:Body></s:Envelope>" % NS["s"].encode()
    )
    fault = parse_fault(doc)
    assert fault is not None and fault.faultcode == "a:Locked"


# --- arbitrary input ------------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.binary(max_size=300) | st.text(max_size=200).map(lambda t: ("<a>" + t).encode("utf-8", "replace")))
def test_arbitrary_bytes_raise_only_wire_error(data: bytes) -> None:
    for parse in (parse_xml, parse_envelope, parse_fault):
        with contextlib.suppress(WireError):
            parse(data)


@given(st.text(max_size=40))
def test_arbitrary_time_text_raises_only_wire_error(text: str) -> None:
    with contextlib.suppress(WireError):
        parse_time(text, "t")
