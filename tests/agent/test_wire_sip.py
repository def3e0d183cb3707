"""SIP message codec: the protocol.md §8.2 exchange (A–D and their answers) as fixtures, RFC 3261 framing
details (folding, compact forms, LF-only lines, keep-alives), limits, stream framing under random chunking,
name-addr / CSeq / Expires, the response builder, and property tests (round trips; arbitrary bytes raise only
WireError)."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.stages import Stage, WireError
from agent.wire import sip
from agent.wire.sip import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    NameAddr,
    SipMessage,
    SipStreamParser,
    build_request,
    build_response,
    cseq,
    decode,
    encode,
    expires,
    format_name_addr,
    parse_name_addr,
)

REALM = "SIP Communications Service"
TARGET = "pool.lab.test"
STS = "https://pool.lab.test:443/CertProv/CertProvisioningService.svc"
CLIENT_HELLO = base64.b64encode(
    bytes.fromhex("16030100310100002d0301") + bytes(32) + b"\x00\x04\x00\x2f\x00\x35"
)
SERVER_FLIGHT = base64.b64encode(bytes.fromhex("160301004a0200004603015f") + bytes(60) + b"\x0b\x00\x00\x03")
CLIENT_FLIGHT = base64.b64encode(
    bytes.fromhex("16030100071000000301") + bytes(40) + b"\x14\x03\x01\x00\x01\x01"
)
SERVER_FINISHED = base64.b64encode(bytes.fromhex("140301000101160301003000") + bytes(48))
RESPONSE_SIG = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
RSPAUTH_SIG = "f0e1d2c3b4a5968778695a4b3c2d1e0f12345678"


def _wire(start: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [start, *headers, f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def _register(cseq_no: int, *auth: str) -> bytes:
    return _wire(
        "REGISTER sip:lab.test SIP/2.0",
        "Via: SIP/2.0/TLS 192.0.2.10:50123;branch=z9hG4bK6a1f0c" + str(cseq_no),
        "Max-Forwards: 70",
        "From: <sip:alice@lab.test>;tag=8f3c1a5e;epid=01010101aa",
        "To: <sip:alice@lab.test>",
        "Call-ID: 5c6f9d2e4b1a47c3",
        f"CSeq: {cseq_no} REGISTER",
        'Contact: <sip:192.0.2.10:50123;transport=tls;ms-opaque=d3470f2e1d>;methods="INVITE, MESSAGE, INFO, '
        'OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER, BENOTIFY";proxy=replace;'
        '+sip.instance="<urn:uuid:3b7a9c52-66f1-5a41-9b3f-0d4f1c2e8a10>"',
        "User-Agent: phoneprov-agent/1.0 (Lync 2010 Phone Edition compatible)",
        "Supported: gruu-10, adhoclist, msrtc-event-categories",
        "Supported: ms-forking",
        "ms-keep-alive: UAC;hop-hop=yes",
        "Event: registration",
        *auth,
        "Expires: 600",
    )


def _answer(cseq_no: int, status: str, *extra: str) -> bytes:
    return _wire(
        f"SIP/2.0 {status}",
        *extra,
        "From: <sip:alice@lab.test>;tag=8f3c1a5e;epid=01010101aa",
        "To: <sip:alice@lab.test>;tag=B1D3E8F0A2",
        "Call-ID: 5c6f9d2e4b1a47c3",
        f"CSeq: {cseq_no} REGISTER",
        "Via: SIP/2.0/TLS 192.0.2.10:50123;branch=z9hG4bK6a1f0c"
        + str(cseq_no)
        + ";ms-received-port=50123;ms-received-cid=1A00",
        "Server: RTC/4.0",
    )


# protocol.md §8.2, step by step
A = _register(1)
A_401 = _answer(
    1,
    "401 Unauthorized",
    f'WWW-Authenticate: TLS-DSK realm="{REALM}", targetname="{TARGET}", version=4, sts-uri="{STS}"',
)
B = _register(
    2,
    f'Authorization: TLS-DSK qop="auth", realm="{REALM}", targetname="{TARGET}", '
    f'gssapi-data="{CLIENT_HELLO.decode()}", version=4',
)
B_401 = _answer(
    2,
    "401 Unauthorized",
    f'WWW-Authenticate: TLS-DSK opaque="A1B2C3D4", gssapi-data="{SERVER_FLIGHT.decode()}", '
    f'targetname="{TARGET}", realm="{REALM}", version=4',
)
C = _register(
    3,
    f'Authorization: TLS-DSK qop="auth", opaque="A1B2C3D4", realm="{REALM}", targetname="{TARGET}", '
    f'gssapi-data="{CLIENT_FLIGHT.decode()}", version=4',
)
C_401 = _answer(
    3,
    "401 Unauthorized",
    f'WWW-Authenticate: TLS-DSK opaque="A1B2C3D4", gssapi-data="{SERVER_FINISHED.decode()}", '
    f'targetname="{TARGET}", realm="{REALM}", version=4',
)
D = _register(
    4,
    f'Authorization: TLS-DSK qop="auth", opaque="A1B2C3D4", realm="{REALM}", targetname="{TARGET}", '
    f'crand="1a2b3c4d", cnum="1", response="{RESPONSE_SIG}"',
)
D_200 = _answer(
    4,
    "200 OK",
    f'Authentication-Info: TLS-DSK qop="auth", opaque="A1B2C3D4", srand="9f8e7d6c", snum="1", '
    f'rspauth="{RSPAUTH_SIG}", targetname="{TARGET}", realm="{REALM}", version=4',
    "Contact: <sip:192.0.2.10:50123;transport=tls;ms-opaque=d3470f2e1d>;expires=600;"
    '+sip.instance="<urn:uuid:3b7a9c52-66f1-5a41-9b3f-0d4f1c2e8a10>"',
    "Expires: 600",
    "P-Asserted-Identity: <sip:alice@lab.test>, <tel:+15551230001>",
)
REDIRECT = _answer(
    1, "301 Redirect request to Home Server", "Contact: <sip:homepool.lab.test:5061;transport=tls>"
)
FORBIDDEN = _answer(
    4, "403 Forbidden", 'ms-diagnostics: 4101;reason="Certificate unknown";source="pool.lab.test"'
)
FIXTURES = [A, A_401, B, B_401, C, C_401, D, D_200, REDIRECT, FORBIDDEN]
FIXTURE_IDS = ["A", "A-401", "B", "B-401", "C", "C-401", "D", "D-200", "301", "403"]


def _fails(data: bytes, match: str) -> WireError:
    with pytest.raises(WireError, match=match) as info:
        decode(data)
    assert info.value.stage is Stage.REGISTER
    assert "\n" not in str(info.value) and "\r" not in str(info.value)
    return info.value


# --- the §8.2 exchange ----------------------------------------------------------------------------------


@pytest.mark.parametrize("data", FIXTURES, ids=FIXTURE_IDS)
def test_fixtures_decode_and_encode_byte_for_byte(data: bytes) -> None:
    msg = decode(data)
    assert encode(msg) == data
    assert msg.header("Call-ID") == "5c6f9d2e4b1a47c3"


def test_register_fields() -> None:
    msg = decode(D)
    assert msg.is_request and (msg.method, msg.uri, msg.status) == ("REGISTER", "sip:lab.test", None)
    assert msg.start_line == "REGISTER sip:lab.test SIP/2.0"
    assert cseq(msg) == (4, "REGISTER")
    assert expires(msg) == 600
    assert msg.header("authorization") == (
        f'TLS-DSK qop="auth", opaque="A1B2C3D4", realm="{REALM}", targetname="{TARGET}", '
        f'crand="1a2b3c4d", cnum="1", response="{RESPONSE_SIG}"'
    )
    assert msg.header_values("Authorization") == [msg.header("Authorization")]
    assert msg.body == b""


def test_response_fields() -> None:
    msg = decode(D_200)
    assert not msg.is_request and (msg.status, msg.reason, msg.method, msg.uri) == (200, "OK", None, None)
    assert msg.start_line == "SIP/2.0 200 OK"
    assert parse_name_addr(msg.header("To") or "").tag == "B1D3E8F0A2"
    assert msg.header_values("P-Asserted-Identity") == ["<sip:alice@lab.test>", "<tel:+15551230001>"]
    assert decode(REDIRECT).reason == "Redirect request to Home Server"
    assert (
        parse_name_addr(decode(REDIRECT).header("m") or "").uri == "sip:homepool.lab.test:5061;transport=tls"
    )


def test_contact_list_with_quoted_commas() -> None:
    msg = decode(A)
    (contact,) = msg.header_values("Contact")
    addr = parse_name_addr(contact)
    assert addr.uri == "sip:192.0.2.10:50123;transport=tls;ms-opaque=d3470f2e1d"
    assert addr.params["methods"].startswith("INVITE, MESSAGE, INFO")
    assert addr.params["+sip.instance"] == "<urn:uuid:3b7a9c52-66f1-5a41-9b3f-0d4f1c2e8a10>"
    assert addr.params["proxy"] == "replace"
    assert msg.header_values("Supported") == ["gruu-10", "adhoclist", "msrtc-event-categories", "ms-forking"]
    assert msg.header("Supported") == "gruu-10"  # first item of a list header
    assert msg.with_header("Allow", "").header("Allow") == ""


def test_list_splitting_respects_quotes_and_angles() -> None:
    msg = SipMessage(
        status=200,
        reason="OK",
        headers=(
            ("Contact", '"Smith, Bob" <sip:bob@x;a=1,2>;q=0.5, <sip:c@y>, "Say \\"hi, there\\"" <sip:d@z>'),
            ("Route", "<sip:p1;lr>,<sip:p2;lr>"),
            ("Subject", "one, two"),
            ("WWW-Authenticate", 'NTLM realm="a, b", version=3'),
        ),
    )
    assert msg.header_values("m") == [
        '"Smith, Bob" <sip:bob@x;a=1,2>;q=0.5',
        "<sip:c@y>",
        '"Say \\"hi, there\\"" <sip:d@z>',
    ]
    assert msg.header_values("route") == ["<sip:p1;lr>", "<sip:p2;lr>"]
    assert msg.header_values("s") == ["one, two"]  # not a list header
    assert msg.header_values("WWW-Authenticate") == ['NTLM realm="a, b", version=3']
    assert msg.header_values("Allow") == []


# --- header access and editing --------------------------------------------------------------------------


def test_compact_forms_and_case() -> None:
    data = _wire(
        "INVITE sip:bob@lab.test SIP/2.0",
        "v: SIP/2.0/TLS a;branch=z9hG4bK1",
        "v: SIP/2.0/TLS b;branch=z9hG4bK2, SIP/2.0/TLS c;branch=z9hG4bK3",
        "f: Alice <sip:alice@lab.test>;tag=1",
        "t: <sip:bob@lab.test>",
        "i: abc@host",
        "CSEQ: 7 INVITE",
        "m: <sip:alice@192.0.2.1>",
        "k: path",
        "s: hello",
        "c: application/sdp",
        "e: gzip",
        body=b"v=0\r\n",
    ).replace(b"Content-Length: 5", b"l: 5")
    msg = decode(data)
    assert msg.headers[0] == ("v", "SIP/2.0/TLS a;branch=z9hG4bK1")
    assert msg.header("Via") == "SIP/2.0/TLS a;branch=z9hG4bK1"
    assert len(msg.header_values("VIA")) == 3
    assert (
        msg.without_header("v").with_header("Via", "SIP/2.0/TLS b, SIP/2.0/TLS c").header("v")
        == "SIP/2.0/TLS b"
    )
    assert msg.header("Call-ID") == msg.header("i") == "abc@host"
    assert msg.header("cseq") == "7 INVITE"
    assert (msg.header("Supported"), msg.header("Subject")) == ("path", "hello")
    assert (msg.header("Content-Type"), msg.header("Content-Encoding")) == ("application/sdp", "gzip")
    assert msg.header("Content-Length") == "5" and msg.body == b"v=0\r\n"
    assert parse_name_addr(msg.header("From") or "") == NameAddr("Alice", "sip:alice@lab.test", {"tag": "1"})
    assert msg.header("X-Missing") is None


def test_with_replace_without() -> None:
    msg = SipMessage(method="OPTIONS", uri="sip:x", headers=(("Via", "a"), ("v", "b"), ("To", "<sip:x>")))
    assert msg.with_header("Via", "c").header_values("Via") == ["a", "b", "c"]
    replaced = msg.replace_header("Via", "z")
    assert replaced.headers == (("Via", "z"), ("To", "<sip:x>"))
    assert msg.replace_header("Expires", "60").headers[-1] == ("Expires", "60")
    assert msg.without_header("VIA").headers == (("To", "<sip:x>"),)
    assert msg.headers == (("Via", "a"), ("v", "b"), ("To", "<sip:x>"))  # frozen: copies only


def test_encode_always_sets_content_length() -> None:
    msg = SipMessage(
        method="MESSAGE",
        uri="sip:bob@lab.test",
        headers=(("l", "999"), ("Call-ID", "x"), ("Content-Length", "3")),
        body=b"hello",
    )
    wire = encode(msg)
    assert wire == b"MESSAGE sip:bob@lab.test SIP/2.0\r\nContent-Length: 5\r\nCall-ID: x\r\n\r\nhello"
    assert (
        encode(SipMessage(status=100, reason="Trying")) == b"SIP/2.0 100 Trying\r\nContent-Length: 0\r\n\r\n"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"method": "REGISTER"},
        {"method": "REGISTER", "uri": "sip:x", "status": 200},
        {"method": "REGISTER", "uri": "sip:x", "reason": "OK"},
        {"method": "REG ISTER", "uri": "sip:x"},
        {"method": "REGISTER", "uri": "sip:a b"},
        {"status": 200, "uri": "sip:x"},
        {"status": 99},
        {"status": 700},
        {"status": True},
        {"status": 200, "reason": "O\r\nK"},
        {"status": 200, "headers": (("Bad Name", "x"),)},
        {"status": 200, "headers": (("X", "a\r\nInjected: yes"),)},
        {"status": 200, "headers": (("X", " padded"),)},
        {"status": 200, "headers": (("X", "\ud800"),)},
        {"status": 200, "body": bytes(MAX_BODY_BYTES + 1)},
    ],
)
def test_invalid_messages_are_value_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SipMessage(**kwargs)  # type: ignore[arg-type]


# --- lenient parsing ------------------------------------------------------------------------------------


def test_folding_lf_only_and_leading_crlf() -> None:
    data = (
        b"\r\n\r\nSIP/2.0 401 Unauthorized\n"
        b'WWW-Authenticate: TLS-DSK realm="SIP Communications Service",\n'
        b'   targetname="pool.lab.test",\r\n'
        b"\tversion=4\n"
        b"Subject :   spaced   out  \n"
        b"Empty:\n"
        b"Content-Length: 2\n\nok"
    )
    msg = decode(data)
    assert msg.header("WWW-Authenticate") == (
        'TLS-DSK realm="SIP Communications Service", targetname="pool.lab.test", version=4'
    )
    assert msg.header("Subject") == "spaced   out"
    assert msg.header("Empty") == "" and msg.body == b"ok"
    assert decode(encode(msg)) == msg


def test_status_line_without_reason() -> None:
    assert decode(b"SIP/2.0 200\r\nContent-Length: 0\r\n\r\n").reason == ""
    assert decode(b"sip/2.0 180 Ringing\r\nl: 0\r\n\r\n").status == 180
    assert decode(b"OPTIONS sip:x SIP/2.0\r\n\r\n").headers == ()  # no body, no Content-Length needed


def test_utf8_values() -> None:
    msg = SipMessage(status=200, reason="Très bien", headers=(("From", '"Zoë Ærø" <sip:zoe@lab.test>'),))
    assert decode(encode(msg)).reason == "Très bien"
    assert parse_name_addr(decode(encode(msg)).header("From") or "").display == "Zoë Ærø"


# --- errors ---------------------------------------------------------------------------------------------

OK_HEAD = "Call-ID: x\r\n"
ERRORS = [
    (b"", "empty"),
    (b"\r\n\r\n", "empty"),
    (b"REGISTER sip:x SIP/2.0\r\nContent-Length: 0\r\n", "no empty line"),
    (b"HELLO\r\n\r\n", "bad SIP start line"),
    (b"REGISTER sip:x SIP/3.0\r\n\r\n", "bad SIP start line"),
    (b"REGISTER sip:x  SIP/2.0\r\n\r\n", "bad SIP start line"),
    (b"REG@ISTER sip:x SIP/2.0\r\n\r\n", "bad SIP request line"),
    (b"REGISTER \x01 SIP/2.0\r\n\r\n", "bad SIP request line"),
    (b"SIP/2.1 200 OK\r\n\r\n", "unsupported SIP version"),
    (b"SIP/2.0 20 OK\r\n\r\n", "bad SIP status code"),
    (b"SIP/2.0 800 OK\r\n\r\n", "bad SIP status code"),
    (b"SIP/2.0 2x0 OK\r\n\r\n", "bad SIP status code"),
    (b"SIP/2.0 200 O\x00K\r\n\r\n", "reason phrase"),
    (b"SIP/2.0 200 OK\r\nNo colon here\r\n\r\n", "bad SIP header line"),
    (b"SIP/2.0 200 OK\r\nBad Name: x\r\n\r\n", "bad SIP header line"),
    (b"SIP/2.0 200 OK\r\n: x\r\n\r\n", "bad SIP header line"),
    (b"SIP/2.0 200 OK\r\n folded: first\r\n\r\n", "continuation line before the first header"),
    (b"SIP/2.0 200 OK\r\nX: a\rb\r\n\r\n", "control character"),
    (b"SIP/2.0 200 OK\r\nX: a\x00b\r\n\r\n", "control character"),
    (b"SIP/2.0 200 OK\r\nX: caf\xe9\r\n\r\n", "not UTF-8"),
    (b"SIP/2.0 200 OK\r\n\r\nbody", "no Content-Length"),
    (b"SIP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nabc", "Content-Length is 5 but the body has 3"),
    (b"SIP/2.0 200 OK\r\nContent-Length: 1\r\n\r\nabc", "Content-Length is 1 but the body has 3"),
    (b"SIP/2.0 200 OK\r\nContent-Length: abc\r\n\r\n", "bad Content-Length"),
    (b"SIP/2.0 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
    (b"SIP/2.0 200 OK\r\nContent-Length: \xd9\xa3\r\n\r\n", "bad Content-Length"),  # Arabic-Indic 3
    (b"SIP/2.0 200 OK\r\nContent-Length: 99999999999\r\n\r\n", "bad Content-Length"),
    (b"SIP/2.0 200 OK\r\nContent-Length: 1\r\nl: 2\r\n\r\nab", "conflicting Content-Length"),
    (b"SIP/2.0 200 OK\r\nContent-Length: 70000\r\n\r\n", "over the 65536-byte limit"),
    (b"SIP/2.0 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "more than 100 headers"),
    (b"SIP/2.0 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", "over 16384 bytes"),
    (b"SIP/2.0 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES, "over 16384 bytes"),
]


@pytest.mark.parametrize(("data", "match"), ERRORS, ids=[m for _, m in ERRORS])
def test_decode_errors(data: bytes, match: str) -> None:
    _fails(data, match)


def test_limits_are_inclusive() -> None:
    head = b"SIP/2.0 200 OK\r\nContent-Length: 65536\r\nX: "
    filler = MAX_HEAD_BYTES - len(head) - 4
    msg = decode(head + b"a" * filler + b"\r\n\r\n" + bytes(MAX_BODY_BYTES))
    assert len(msg.body) == MAX_BODY_BYTES
    assert len(decode(b"SIP/2.0 200 OK\r\n" + b"X: y\r\n" * 100 + b"\r\n").headers) == 100
    _fails(head + b"a" * (filler + 1) + b"\r\n\r\n" + bytes(MAX_BODY_BYTES), "over 16384 bytes")


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(WireError, match="must be bytes"):
        decode("SIP/2.0 200 OK\r\n\r\n")  # type: ignore[arg-type]


# --- stream framing -------------------------------------------------------------------------------------


def test_stream_whole_exchange_with_keepalives() -> None:
    stream = b"\r\n\r\n".join(FIXTURES) + b"\r\n"
    parser = SipStreamParser()
    assert parser.feed(stream) == [decode(x) for x in FIXTURES]
    assert parser.buffered == 0
    assert parser.feed(b"\r\n\r\n") == [] and parser.feed(b"\r\n") == []


def test_stream_keeps_partial_data_and_body_crlf() -> None:
    body = b"\r\n\r\nbody starting with CRLFs"
    data = encode(SipMessage(method="MESSAGE", uri="sip:x", headers=(("Call-ID", "1"),), body=body))
    parser = SipStreamParser()
    cut = data.index(b"\r\n\r\n") + 4
    assert parser.feed(data[:cut]) == []
    assert parser.feed(body[:2]) == [] and parser.buffered == cut + 2
    (msg,) = parser.feed(body[2:] + data[:10])
    assert msg.body == body and parser.buffered == 10


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FIXTURES), min_size=1, max_size=4), st.data())
def test_stream_random_splits_equal_whole_parsing(messages: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(m + data.draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"])) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    parser, out = SipStreamParser(), []
    for lo, hi in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += parser.feed(stream[lo:hi])
    assert out == [decode(m) for m in messages]
    assert parser.buffered == 0


def test_stream_requires_content_length_and_dies() -> None:
    parser = SipStreamParser()
    with pytest.raises(WireError, match="no Content-Length") as first:
        parser.feed(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\n\r\n")
    assert first.value.stage is Stage.REGISTER and parser.buffered == 0
    with pytest.raises(WireError) as again:
        parser.feed(A)
    assert again.value is first.value


def test_stream_refuses_endless_header_line_early() -> None:
    parser = SipStreamParser()
    parser.feed(b"SIP/2.0 200 OK\r\nX: ")
    chunk, fed = b"a" * 1024, 0
    with pytest.raises(WireError, match="over 16384 bytes"):
        for _ in range(1024):  # 1 MiB on offer
            fed += len(chunk)
            parser.feed(chunk)
            assert parser.buffered <= MAX_HEAD_BYTES + len(chunk)
    assert fed <= MAX_HEAD_BYTES + len(chunk)
    assert parser.buffered == 0


def test_stream_refuses_oversized_body_before_it_arrives() -> None:
    parser = SipStreamParser()
    with pytest.raises(WireError, match="over the 65536-byte limit"):
        parser.feed(b"SIP/2.0 200 OK\r\nContent-Length: 1000000\r\n\r\n")


def test_stream_error_after_good_message_in_same_feed() -> None:
    parser = SipStreamParser()
    assert parser.feed(A[:-5]) == []
    with pytest.raises(WireError, match="bad SIP start line"):
        parser.feed(A[-5:] + b"GARBAGE\r\n\r\n")


# --- property tests -------------------------------------------------------------------------------------

_TOKEN_CHARS = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~")
_token = st.text(_TOKEN_CHARS, min_size=1, max_size=12)
_value_chars = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"))
_value = st.text(_value_chars | st.just("\t"), max_size=40).map(lambda v: v.strip(" \t"))
_headers = st.lists(st.tuples(_token, _value), max_size=20).map(tuple)
_requests = st.builds(
    lambda m, u, h, b: SipMessage(method=m, uri=u, headers=h, body=b),
    _token,
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30),
    _headers,
    st.binary(max_size=2048),
)
_responses = st.builds(
    lambda s, r, h, b: SipMessage(status=s, reason=r, headers=h, body=b),
    st.integers(100, 699),
    st.text(_value_chars | st.just("\t"), max_size=30),
    _headers,
    st.binary(max_size=2048),
)


@settings(max_examples=150, deadline=None)
@given(_requests | _responses)
def test_round_trip(msg: SipMessage) -> None:
    expected = msg.replace_header("Content-Length", str(len(msg.body)))
    assert decode(encode(msg)) == expected
    assert encode(decode(encode(msg))) == encode(msg)


@settings(max_examples=40, deadline=None)
@given(st.lists(_requests | _responses, min_size=1, max_size=3), st.data())
def test_stream_round_trip_random_messages(messages: list[SipMessage], data: st.DataObject) -> None:
    stream = b"".join(encode(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    parser, out = SipStreamParser(), []
    for lo, hi in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += parser.feed(stream[lo:hi])
    assert out == [decode(encode(m)) for m in messages]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        decode(data)
    except WireError as exc:
        assert exc.stage is Stage.REGISTER
    parser = SipStreamParser()
    try:
        parser.feed(data)
        parser.feed(data)
    except WireError as exc:
        assert exc.stage is Stage.REGISTER


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(FIXTURES), st.lists(st.tuples(st.integers(0, 2000), st.binary(max_size=3)), max_size=4)
)
def test_mutated_fixtures_raise_only_wire_error(data: bytes, edits: list[tuple[int, bytes]]) -> None:
    for at, junk in edits:
        at %= len(data) + 1
        data = data[:at] + junk + data[at + len(junk) :]
    try:
        msg = decode(data)
    except WireError:
        return
    assert decode(encode(msg)) == msg.replace_header("Content-Length", str(len(msg.body)))


# --- name-addr, CSeq, Expires ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"Alice" <sip:alice@lab.test>;tag=abc', NameAddr("Alice", "sip:alice@lab.test", {"tag": "abc"})),
        ("<sip:x@y>", NameAddr(None, "sip:x@y", {})),
        ("sip:x@y;tag=1", NameAddr(None, "sip:x@y", {"tag": "1"})),
        ("sip:x@y", NameAddr(None, "sip:x@y", {})),
        (
            "Bob Smith <sip:bob@y;transport=tls>;TAG=Q1",
            NameAddr("Bob Smith", "sip:bob@y;transport=tls", {"tag": "Q1"}),
        ),
        ('"Say \\"hi\\"" <tel:+1555>', NameAddr('Say "hi"', "tel:+1555", {})),
        ("  <sip:x@y> ; tag = 7 ; lr ", NameAddr(None, "sip:x@y", {"tag": "7", "lr": ""})),
        (
            '<sip:x@y>;+sip.instance="<urn:uuid:1>"',
            NameAddr(None, "sip:x@y", {"+sip.instance": "<urn:uuid:1>"}),
        ),
        ('"" <sip:x@y>', NameAddr("", "sip:x@y", {})),
    ],
)
def test_parse_name_addr(text: str, expected: NameAddr) -> None:
    addr = parse_name_addr(text)
    assert addr == expected
    assert parse_name_addr(format_name_addr(addr)) == addr


def test_name_addr_tag_and_format() -> None:
    addr = parse_name_addr("sip:alice@lab.test;tag=8f3c;epid=01")
    assert addr.tag == "8f3c" and parse_name_addr("<sip:a@b>").tag is None
    assert format_name_addr(addr) == "<sip:alice@lab.test>;tag=8f3c;epid=01"
    assert format_name_addr(NameAddr("Al", "sip:a@b", {"x": "a b", "maddr": "[2001:db8::1]", "lr": ""})) == (
        '"Al" <sip:a@b>;x="a b";maddr=[2001:db8::1];lr'
    )
    with pytest.raises(ValueError):
        NameAddr(None, "sip:a b")
    with pytest.raises(ValueError):
        format_name_addr(NameAddr(None, "sip:a", {"bad name": "1"}))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<sip:x@y",
        '"Alice <sip:x@y>',
        '"Alice" sip:x@y',
        "<>",
        "<sip:x@y>;tag=1;tag=2",
        "<sip:x@y>;=1",
        "<sip:x@y> junk",
        "<sip:x@y>;tag=",
        "sip:a b;tag=1",
        '<sip:x@y>;tag="a\x01"',
    ],
)
def test_parse_name_addr_errors(text: str) -> None:
    with pytest.raises(WireError) as info:
        parse_name_addr(text)
    assert info.value.stage is Stage.REGISTER


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_parse_name_addr_only_wire_error(text: str) -> None:
    with contextlib.suppress(WireError):
        parse_name_addr(text)


def _with(*headers: tuple[str, str]) -> SipMessage:
    return SipMessage(status=200, reason="OK", headers=headers)


def test_cseq() -> None:
    assert cseq(_with(("CSeq", "2147483647 REGISTER"))) == (2147483647, "REGISTER")
    assert cseq(_with(("CSeq", "01\t  INVITE"))) == (1, "INVITE")
    for bad in [
        "",
        "1",
        "REGISTER 1",
        "x REGISTER",
        "1 REGISTER extra",
        "2147483648 REGISTER",
        "-1 REGISTER",
    ]:
        with pytest.raises(WireError, match="CSeq"):
            cseq(_with(("CSeq", bad)))
    with pytest.raises(WireError, match="no CSeq"):
        cseq(_with())


def test_expires() -> None:
    assert expires(_with()) is None
    assert expires(_with(("Expires", "600"))) == 600
    assert expires(_with(("Expires", "99999999999999999999999"))) == 2**32 - 1
    assert expires(_with(("Expires", "0" * 5000 + "7"))) == 7
    both = _with(("Contact", "<sip:a@h>;expires=300, <sip:b@h>;expires=900"), ("Expires", "600"))
    assert expires(both) == 300
    assert expires(both, contact_uri="sip:b@h") == 900
    assert expires(both, contact_uri="sip:c@h") == 600
    assert expires(_with(("Contact", "*"), ("Expires", "0"))) == 0
    assert expires(decode(D_200)) == 600
    for bad in [
        ("Expires", "soon"),
        ("Expires", "-1"),
        ("Contact", "<sip:a@h>;expires=1.5"),
        ("Expires", "²"),
    ]:
        with pytest.raises(WireError):
            expires(_with(bad))


# --- builders -------------------------------------------------------------------------------------------


def test_build_request_round_trips() -> None:
    msg = build_request("REGISTER", "sip:lab.test", [("Call-ID", "1"), ("CSeq", "1 REGISTER")], body=b"xy")
    assert msg.headers[-1] == ("Content-Length", "2")
    assert decode(encode(msg)) == msg


def test_build_response_copies_dialog_headers() -> None:
    request = decode(
        _wire(
            "REGISTER sip:lab.test SIP/2.0",
            "Via: SIP/2.0/TLS proxy;branch=z9hG4bKp",
            "v: SIP/2.0/TLS a;branch=z9hG4bKa, SIP/2.0/TLS b;branch=z9hG4bKb",
            "f: <sip:alice@lab.test>;tag=f1",
            "t: sip:alice@lab.test",
            "i: call-1",
            "CSeq: 9 REGISTER",
            "Max-Forwards: 70",
        )
    )
    extra = (("WWW-Authenticate", f'TLS-DSK realm="{REALM}", version=4'),)
    answer = build_response(request, 401, "Unauthorized", extra, to_tag="srv1")
    assert answer.headers == (
        ("Via", "SIP/2.0/TLS proxy;branch=z9hG4bKp"),
        ("Via", "SIP/2.0/TLS a;branch=z9hG4bKa, SIP/2.0/TLS b;branch=z9hG4bKb"),
        ("From", "<sip:alice@lab.test>;tag=f1"),
        ("To", "sip:alice@lab.test;tag=srv1"),
        ("Call-ID", "call-1"),
        ("CSeq", "9 REGISTER"),
        *extra,
        ("Content-Length", "0"),
    )
    assert decode(encode(answer)) == answer
    assert parse_name_addr(answer.header("To") or "").uri == "sip:alice@lab.test"
    tagged = request.replace_header("To", "<sip:alice@lab.test>;tag=old")
    assert build_response(tagged, 200, "OK", to_tag="new").header("To") == "<sip:alice@lab.test>;tag=old"
    assert build_response(request, 100, "Trying").header("To") == "sip:alice@lab.test"


def test_build_response_errors() -> None:
    request = decode(A)
    with pytest.raises(ValueError):
        build_response(decode(A_401), 200, "OK")
    with pytest.raises(ValueError):
        build_response(request, 200, "OK", to_tag="bad tag")
    with pytest.raises(ValueError):
        build_response(request, 1000, "OK")
    for missing in ["Via", "From", "To", "Call-ID", "CSeq"]:
        with pytest.raises(WireError, match=f"no {missing}"):
            build_response(request.without_header(missing), 200, "OK")


def test_module_exports() -> None:
    assert set(sip.__all__) <= set(dir(sip))
