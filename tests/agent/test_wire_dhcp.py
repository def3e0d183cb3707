"""DHCP codec: real captures from Kea and dnsmasq, the protocol.md examples, RFC 3396, option 120
compression, and property tests (round trips; arbitrary bytes raise only WireError)."""

from __future__ import annotations

import json
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.stages import Stage, WireError
from agent.wire import dhcp
from agent.wire.dhcp import DhcpMessage, MessageType, UcVendorInfo

CAPTURES = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "dhcp" / "captures.json"
CERTPROV_URL = "https://webpool.uclab.test:443/CertProv/CertProvisioningService.svc"
PATH_HEX = "2f4365727450726f762f4365727450726f766973696f6e696e67536572766963652e737663"
CANONICAL_43 = bytes.fromhex(
    "010c4d532d55432d436c69656e74020568747470730312776562706f6f6c2e75636c61622e74657374"
    "040334343305252f4365727450726f762f4365727450726f766973696f6e696e67536572766963652e737663"
)
# protocol.md §3: the 80-byte example for pool.lab.test
POOL_LAB_43 = bytes.fromhex(
    "010C4D532D55432D436C69656E7402056874747073030D706F6F6C2E6C61622E7465737404033434330525" + PATH_HEX
)
POOL_LAB_120 = bytes.fromhex("00 04 70 6F 6F 6C 03 6C 61 62 04 74 65 73 74 00")
SIP_UCLAB_120 = bytes.fromhex("00 03 736970 05 75636c6162 04 74657374 00")


def _messages() -> list[dict[str, Any]]:
    if not CAPTURES.is_file():
        return []
    messages: list[dict[str, Any]] = json.loads(CAPTURES.read_text())["messages"]
    return messages


MESSAGES = _messages()
NO_CAPTURES = f"capture vectors not found at {CAPTURES} (shared/vectors is outside the repo)"
CAPTURE_PARAMS = [
    pytest.param(m, id=f"{i}-{m['dhcp_message_type']}-{m['capture'][:20]}") for i, m in enumerate(MESSAGES)
] or [pytest.param(None, marks=pytest.mark.skip(reason=NO_CAPTURES))]


def _capture(server: str, msg_type: str, capture_part: str = "") -> bytes:
    if not MESSAGES:
        pytest.skip(NO_CAPTURES)
    for m in MESSAGES:
        if (
            m["capture"].startswith(server)
            and capture_part in m["capture"]
            and m["dhcp_message_type"] == msg_type
        ):
            return bytes.fromhex(m["hex"])
    raise AssertionError(f"no {msg_type} from {server} in the captures")


def _raises(fn: Any, *args: Any, match: str, code: str = "MALFORMED") -> WireError:
    with pytest.raises(WireError, match=match) as info:
        fn(*args)
    assert info.value.stage is Stage.DHCP_INFORM
    assert info.value.code == code
    assert "\n" not in str(info.value)
    return info.value


# --- captures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", CAPTURE_PARAMS)
def test_capture_decodes_and_round_trips_byte_exact(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    msg = dhcp.decode(raw)
    assert msg.message_type is MessageType[vector["dhcp_message_type"]]
    assert msg.op == (1 if vector["direction"] == "client->server" else 2)
    assert dhcp.encode(msg) == raw


@pytest.mark.parametrize(
    ("server", "part"),
    [("Kea", "dhcpcd"), ("dnsmasq", "vendor:"), ("dnsmasq", "raw hex"), ("Kea", "udhcpc")],
)
def test_real_acks_give_the_lab_pool(server: str, part: str) -> None:
    msg = dhcp.decode(_capture(server, "ACK", part))
    answer = dhcp.parse_inform_answer(msg)
    assert answer.vendor is not None
    assert answer.vendor.certprov_url == CERTPROV_URL
    assert answer.registrars == ("sip.uclab.test",)
    assert answer.ntp_servers == (IPv4Address("192.0.2.1"),)
    assert answer.server_id == IPv4Address("192.0.2.1")


def test_dnsmasq_vendor_form_is_reversed_with_end_inside_option_43() -> None:
    msg = dhcp.decode(_capture("dnsmasq", "ACK", "vendor:"))
    opt43 = msg.option(43)
    assert opt43 is not None and len(opt43) == 86 and opt43[0] == 5 and opt43[-1] == 0xFF
    assert opt43 != CANONICAL_43
    assert dhcp.encode_option43(dhcp.decode_option43(opt43) or pytest.fail("no vendor info")) == CANONICAL_43
    assert msg.option(60) == b"MS-UC-Client"  # dnsmasq echoes the vendor class; Kea does not


def test_kea_ack_carries_canonical_option_43_and_no_lease() -> None:
    msg = dhcp.decode(_capture("Kea", "ACK", "dhcpcd"))
    assert msg.option(43) == CANONICAL_43
    assert msg.yiaddr == IPv4Address(0)
    assert msg.option(51) is None


def test_captured_informs_are_uc_informs_and_other_vendor_is_not() -> None:
    assert dhcp.is_uc_inform(dhcp.decode(_capture("Kea", "INFORM", "dhcpcd")))
    assert not dhcp.is_uc_inform(dhcp.decode(_capture("Kea", "DISCOVER", "SomeOther")))
    other_ack = dhcp.parse_inform_answer(dhcp.decode(_capture("Kea", "ACK", "SomeOther")))
    assert other_ack.vendor is None and other_ack.registrars == ()


# --- option 43 -----------------------------------------------------------------------------------------


def test_canonical_option_43_from_dhcp_peers() -> None:
    info = UcVendorInfo.for_pool("webpool.uclab.test")
    assert len(CANONICAL_43) == 85
    assert dhcp.encode_option43(info) == CANONICAL_43
    assert dhcp.decode_option43(CANONICAL_43) == info
    assert info.certprov_url == CERTPROV_URL


def test_protocol_md_pool_lab_example_is_80_bytes() -> None:
    info = UcVendorInfo(
        "MS-UC-Client", "https", "pool.lab.test", "443", "/CertProv/CertProvisioningService.svc"
    )
    assert len(POOL_LAB_43) == 80
    assert dhcp.encode_option43(info) == POOL_LAB_43
    assert dhcp.decode_option43(POOL_LAB_43) == info
    assert info.certprov_url == "https://pool.lab.test:443/CertProv/CertProvisioningService.svc"


def test_option_43_skips_pad_and_stops_at_end() -> None:
    data = b"\x00\x00" + CANONICAL_43[:14] + b"\x00" + CANONICAL_43[14:] + b"\xff\x01\x03bad-garbage"
    info = dhcp.decode_option43(data)
    assert info is not None and info.web_server_fqdn == "webpool.uclab.test"


def test_option_43_repeated_sub_option_is_concatenated() -> None:
    path = bytes.fromhex(PATH_HEX)
    data = CANONICAL_43[:46] + b"\x05\x09" + path[:9] + b"\x05" + bytes((len(path) - 9,)) + path[9:]
    info = dhcp.decode_option43(data)
    assert info is not None and info.certprov_rel_path == "/CertProv/CertProvisioningService.svc"


@pytest.mark.parametrize(
    "data",
    [
        CANONICAL_43[14:],  # sub-option 1 missing
        b"\x01\x0cms-uc-client" + CANONICAL_43[14:],  # case-sensitive
        b"\x01\x0dMS-UC-Client2" + CANONICAL_43[14:],
        b"",
        b"\xff" + CANONICAL_43,
    ],
)
def test_option_43_of_another_vendor_is_ignored(data: bytes) -> None:
    assert dhcp.decode_option43(data) is None


def test_option_43_sub_option_running_past_the_end() -> None:
    _raises(dhcp.decode_option43, CANONICAL_43[:-1], match="sub-option 5 at offset 46 claims 37 bytes")
    _raises(dhcp.decode_option43, CANONICAL_43[:14] + b"\x02", match="sub-option 2 .* no length byte")


def test_option_43_missing_required_sub_option() -> None:
    without_fqdn = CANONICAL_43[:21] + CANONICAL_43[41:]
    err = _raises(dhcp.decode_option43, without_fqdn, match="lacks sub-option 3 \\(WebServerFqdn\\)")
    assert err.detail.endswith("lacks sub-option 3 (WebServerFqdn)")


@pytest.mark.parametrize("port", [b"0", b"65536", b"44a", b"-1", b" 443"])
def test_option_43_port_must_be_decimal_1_to_65535(port: bytes) -> None:
    data = CANONICAL_43[:41] + bytes((4, len(port))) + port + CANONICAL_43[46:]
    _raises(dhcp.decode_option43, data, match="WebServerPort|not printable")


def test_option_43_encoder_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="WebServerPort"):
        dhcp.encode_option43(UcVendorInfo.for_pool("pool.lab.test", port=0))
    with pytest.raises(ValueError, match="CertProvRelPath"):
        dhcp.encode_option43(UcVendorInfo.for_pool("pool.lab.test", path="CertProv"))


# --- option 120 ----------------------------------------------------------------------------------------


def test_option_120_examples() -> None:
    assert dhcp.encode_option120(["pool.lab.test"]) == POOL_LAB_120
    assert dhcp.decode_option120(POOL_LAB_120) == ("pool.lab.test",)
    assert dhcp.encode_option120(["sip.uclab.test."]) == SIP_UCLAB_120
    assert len(SIP_UCLAB_120) == 17
    assert dhcp.decode_option120(POOL_LAB_120[:-1]) == ("pool.lab.test",)  # missing final zero


def test_option_120_several_names_and_compression_pointers() -> None:
    body = b"\x03sip\x05uclab\x04test\x00" + b"\x04sip2\xc0\x04" + b"\xc0\x00" + b"\x02ws\xc0\x0a"
    assert dhcp.decode_option120(b"\x00" + body) == (
        "sip.uclab.test",
        "sip2.uclab.test",
        "sip.uclab.test",
        "ws.test",
    )
    assert dhcp.encode_option120(["a.b", "c.d"]) == b"\x00\x01a\x01b\x00\x01c\x01d\x00"


@pytest.mark.timeout(5)  # a broken loop guard would spin forever
@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\xc0\x00", "loop"),
        (b"\x03abc\xc0\x00", "loop"),
        (b"\x03abc\xc0\x06\x01x\xc0\x00", "loop"),
        (b"\x03abc\xc0\x40", "points past the end"),
        (b"\x03abc\xc0", "cut short"),
        (b"\x05ab", "runs past the end"),
        (b"\x43abc", "reserved type bits"),
        (b"\x00", "empty name"),
        (b"", "carries no name"),
        (b"\x03a.c\x00", "not printable ASCII"),
        (b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63 + b"\x3f" + b"d" * 63, "255 bytes"),
    ],
)
def test_option_120_malformed(body: bytes, match: str) -> None:
    _raises(dhcp.decode_option120, b"\x00" + body, match=match)


def test_option_120_addresses_are_refused_with_a_reason() -> None:
    err = _raises(dhcp.decode_option120, b"\x01\xc0\x00\x02\x01", match="name", code="OPT120_ADDRESSES")
    assert "Lync" in err.detail
    _raises(dhcp.decode_option120, b"\x02\x00", match="unknown encoding 2")
    _raises(dhcp.decode_option120, b"", match="empty")


def test_option_120_encoder_refuses_bad_names() -> None:
    for bad in (["a..b"], ["x" * 64 + ".test"], ["é.test"], [], "sip.lab.test"):
        with pytest.raises(ValueError):
            dhcp.encode_option120(bad)


# --- message codec -------------------------------------------------------------------------------------


def test_decode_errors_are_one_line_wire_errors() -> None:
    inform = dhcp.encode(dhcp.build_inform(1, "192.0.2.50", bytes(6)))
    _raises(dhcp.decode, inform[:239], match="too short: 239 bytes")
    _raises(dhcp.decode, inform[:236] + b"\x63\x82\x53\x64" + inform[240:], match="magic cookie is 63825364")
    _raises(dhcp.decode, inform[:240] + b"\x2b\x10abc", match="option 43 at offset 240 .* claims 16 bytes")
    _raises(dhcp.decode, inform[:240] + b"\x35", match="option 53 at offset 240 .* no length byte")


def test_rfc3396_split_and_concatenation() -> None:
    value = bytes(range(256)) * 2 + b"tail"
    opts = dhcp.with_option(((53, b"\x05"),), 43, value)
    assert [(c, len(v)) for c, v in opts] == [(53, 1), (43, 255), (43, 255), (43, 6)]
    msg = DhcpMessage(op=2, xid=7, options=(*opts, (3, b"\xc0\x00\x02\x01")))
    back = dhcp.decode(dhcp.encode(msg))
    assert back.option(43) == value
    assert back.options[:4] == opts
    assert dhcp.with_option((), 80, b"") == ((80, b""),)
    with pytest.raises(ValueError):
        dhcp.with_option((), 255, b"x")


def test_long_option_43_survives_a_round_trip_through_an_ack() -> None:
    info = UcVendorInfo.for_pool("w" * 200 + ".lab.test", path="/" + "p" * 120)
    payload = dhcp.encode_option43(info)
    assert len(payload) > 255
    request = dhcp.build_inform(9, "192.0.2.50", bytes.fromhex("02005e000091"))
    ack = dhcp.build_inform_ack(request, [(43, payload)], IPv4Address("192.0.2.1"))
    assert sum(1 for c, _ in ack.options if c == 43) == 2
    assert dhcp.parse_inform_answer(dhcp.decode(dhcp.encode(ack))).vendor == info


def test_option_overload_reads_file_then_sname() -> None:
    file = (b"\x78" + bytes((len(SIP_UCLAB_120[:8]),)) + SIP_UCLAB_120[:8] + b"\xff").ljust(128, b"\x00")
    sname = (b"\x78" + bytes((len(SIP_UCLAB_120[8:]),)) + SIP_UCLAB_120[8:] + b"\xff").ljust(64, b"\x00")
    msg = DhcpMessage(op=2, file=file, sname=sname, options=((53, b"\x05"), (52, b"\x03")))
    back = dhcp.decode(dhcp.encode(msg))
    assert back.option(120) == SIP_UCLAB_120
    assert dhcp.parse_inform_answer(back).registrars == ("sip.uclab.test",)
    bad = dhcp.encode(replace(msg, options=((52, b"\x04"),)))
    _raises(dhcp.decode, bad, match="option 52")
    cut = dhcp.encode(replace(msg, file=b"\x78\x7f".ljust(128, b"\x00")))
    _raises(dhcp.decode, cut, match="option 120 at offset 0 of the file field")


def test_missing_end_is_tolerated_and_kept() -> None:
    msg = DhcpMessage(op=2, options=((53, b"\x05"),), end=False, padding=b"")
    raw = dhcp.encode(msg)
    assert len(raw) == 243
    assert dhcp.decode(raw) == msg
    with pytest.raises(ValueError):
        DhcpMessage(op=2, end=False, padding=b"\x00")


def test_message_type_absent_or_unknown() -> None:
    assert DhcpMessage(op=1).message_type is None
    assert DhcpMessage(op=1, options=((53, b"\x09"),)).message_type is None
    assert DhcpMessage(op=1, options=((53, b"\x05\x05"),)).message_type is None


# --- INFORM / ACK --------------------------------------------------------------------------------------


def test_build_inform_bytes() -> None:
    mac = bytes.fromhex("02005e000091")
    msg = dhcp.build_inform(0xE4E60569, IPv4Address("192.0.2.50"), mac)
    raw = dhcp.encode(msg)
    assert len(raw) == 300
    assert raw[:12] == bytes.fromhex("01010600e4e6056900000000")
    assert raw[12:16] == IPv4Address("192.0.2.50").packed and raw[28:44] == mac + bytes(10)
    assert raw[240:] == (
        b"\x35\x01\x08"
        + b"\x39\x02\x05\xdc"
        + b"\x3c\x0cMS-UC-Client"
        + b"\x37\x08"
        + bytes(dhcp.DEFAULT_PARAMS)
        + b"\xff"
    ).ljust(60, b"\x00")
    assert dhcp.is_uc_inform(dhcp.decode(raw))
    with_id = dhcp.build_inform(1, "192.0.2.50", mac, client_id=b"\x01" + mac)
    assert with_id.options[-1] == (61, b"\x01" + mac)


def test_is_uc_inform_needs_inform_vendor_class_and_43() -> None:
    base = dhcp.build_inform(1, "192.0.2.50", bytes(6))
    assert dhcp.is_uc_inform(base)
    assert not dhcp.is_uc_inform(dhcp.build_inform(1, "192.0.2.50", bytes(6), vendor_class=b"MS-UC-Client "))
    assert not dhcp.is_uc_inform(dhcp.build_inform(1, "192.0.2.50", bytes(6), params=(1, 3, 120)))
    assert not dhcp.is_uc_inform(replace(base, options=((53, b"\x01"), *base.options[1:])))
    assert not dhcp.is_uc_inform(replace(base, op=2))


def test_pool_answers_phone_end_to_end() -> None:
    request = dhcp.decode(dhcp.encode(dhcp.build_inform(0x1234, "192.0.2.77", bytes.fromhex("02005e0000aa"))))
    assert dhcp.is_uc_inform(request)
    options = [
        (43, dhcp.encode_option43(UcVendorInfo.for_pool("pool.lab.test"))),
        (120, dhcp.encode_option120(["pool.lab.test"])),
        (42, dhcp.encode_ip_list(["192.0.2.1", "192.0.2.2"])),
        (6, dhcp.encode_ip_list([IPv4Address("192.0.2.53")])),
        (15, b"lab.test\x00"),
        (3, dhcp.encode_ip_list(["192.0.2.254"])),
    ]
    ack = dhcp.build_inform_ack(request, options, IPv4Address("192.0.2.1"))
    assert (ack.op, ack.xid, ack.yiaddr, ack.chaddr) == (2, 0x1234, IPv4Address(0), request.chaddr)
    assert ack.ciaddr == IPv4Address("192.0.2.77")
    assert ack.options[:2] == ((53, b"\x05"), (54, IPv4Address("192.0.2.1").packed))
    answer = dhcp.parse_inform_answer(dhcp.decode(dhcp.encode(ack)))
    assert answer == dhcp.InformAnswer(
        vendor=UcVendorInfo.for_pool("pool.lab.test"),
        registrars=("pool.lab.test",),
        ntp_servers=(IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")),
        dns_servers=(IPv4Address("192.0.2.53"),),
        domain="lab.test",
        routers=(IPv4Address("192.0.2.254"),),
        server_id=IPv4Address("192.0.2.1"),
    )


def test_inform_ack_refuses_lease_options() -> None:
    request = dhcp.build_inform(1, "192.0.2.50", bytes(6))
    for code in (51, 58, 59, 53, 54):
        with pytest.raises(ValueError, match=f"option {code}"):
            dhcp.build_inform_ack(request, [(code, b"\x00\x00\x0e\x10")], IPv4Address("192.0.2.1"))


@pytest.mark.parametrize(
    ("code", "value", "match"),
    [
        (42, b"\xc0\x00\x02", "option 42 is 3 bytes"),
        (6, b"", "option 6 is 0 bytes"),
        (3, b"\xc0\x00\x02\x01\x01", "option 3 is 5 bytes"),
        (54, b"\xc0\x00", "option 54"),
        (15, b"lab\xfftest", "option 15"),
    ],
)
def test_inform_answer_rejects_malformed_lists(code: int, value: bytes, match: str) -> None:
    _raises(dhcp.parse_inform_answer, DhcpMessage(op=2, options=((code, value),)), match=match)


# --- properties ----------------------------------------------------------------------------------------

_ADDRESSES = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
_OPTIONS = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 254).filter(lambda c: c != 52), st.binary(max_size=255)),
        st.just((0, b"")),
    ),
    max_size=8,
).map(tuple)


@st.composite
def _messages_st(draw: st.DrawFn) -> DhcpMessage:
    end = draw(st.booleans())
    padding = draw(st.one_of(st.none(), st.binary(max_size=80))) if end else b""
    op, htype, hlen, hops, xid, secs, flags = (
        draw(st.integers(0, 2**b - 1)) for b in (8, 8, 8, 8, 32, 16, 16)
    )
    ci, yi, si, gi = (draw(_ADDRESSES) for _ in range(4))
    chaddr, sname, file = (draw(st.binary(min_size=n, max_size=n)) for n in (16, 64, 128))
    options = draw(_OPTIONS)
    fields = (op, htype, hlen, hops, xid, secs, flags, ci, yi, si, gi, chaddr, sname, file, options)
    return DhcpMessage(*fields, end=end, padding=padding)


@settings(max_examples=200)
@given(_messages_st())
def test_property_message_round_trip(msg: DhcpMessage) -> None:
    raw = dhcp.encode(msg)
    back = dhcp.decode(raw)
    assert dhcp.encode(back) == raw
    assert replace(back, padding=msg.padding) == msg
    if msg.padding is None:
        assert len(raw) >= dhcp.BOOTP_MIN_SIZE


_PRINTABLE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60)
_LABEL = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-"), min_size=1, max_size=63)
_NAME = st.lists(_LABEL, min_size=1, max_size=3).map(".".join)


@given(
    scheme=st.sampled_from(["https", "http", "x-lab+s"]),
    fqdn=_PRINTABLE.filter(lambda s: not any(ch in "/?#@" for ch in s)),
    port=st.integers(1, 65535).map(str),
    path=_PRINTABLE.map(lambda s: "/" + s),
)
def test_property_vendor_info_round_trip(scheme: str, fqdn: str, port: str, path: str) -> None:
    info = UcVendorInfo("MS-UC-Client", scheme, fqdn, port, path)
    assert dhcp.decode_option43(dhcp.encode_option43(info)) == info


@given(st.lists(_NAME, min_size=1, max_size=4))
def test_property_option_120_round_trip(names: list[str]) -> None:
    assert dhcp.decode_option120(dhcp.encode_option120(names)) == tuple(names)


_HEADER = st.binary(min_size=236, max_size=236).map(lambda h: h + dhcp.MAGIC_COOKIE)


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=400), st.tuples(_HEADER, st.binary(max_size=300)).map(b"".join)))
def test_property_decode_arbitrary_bytes_raises_only_wire_error(data: bytes) -> None:
    try:
        msg = dhcp.decode(data)
        dhcp.parse_inform_answer(msg)
        dhcp.is_uc_inform(msg)
    except WireError as exc:
        assert exc.stage is Stage.DHCP_INFORM and "\n" not in str(exc)


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=120), st.tuples(st.just(CANONICAL_43[:41]), st.binary()).map(b"".join)))
def test_property_decode_option43_arbitrary_bytes(data: bytes) -> None:
    try:
        dhcp.decode_option43(data)
    except WireError as exc:
        assert exc.stage is Stage.DHCP_INFORM


@settings(max_examples=300)
@given(st.binary(max_size=120).map(lambda b: b"\x00" + b), st.binary(max_size=60))
def test_property_decode_option120_arbitrary_bytes(data: bytes, other: bytes) -> None:
    for candidate in (data, other):
        try:
            names = dhcp.decode_option120(candidate)
            assert all(0 < len(n) < 255 for n in names)
        except WireError as exc:
            assert exc.stage is Stage.DHCP_INFORM
