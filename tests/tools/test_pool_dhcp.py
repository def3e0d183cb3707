"""The pool's DHCP responder answers only MS-UC-Client INFORMs asking for option 43, and answers them right."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from agent.wire import dhcp
from tools.pool.dhcp import UcOptions, inform_handler

UC = UcOptions(
    "pool.lab.test", 4443, "pool.lab.test", IPv4Address("192.0.2.1"), "lab.test", IPv4Address("192.0.2.1")
)
HANDLE = inform_handler(lambda: UC)
PHONE = IPv4Address("192.0.2.50")


def inform(**kw: object) -> bytes:
    return dhcp.encode(dhcp.build_inform(0x1234, PHONE, b"\x02\x00\x00\x00\x00\x07", **kw))  # type: ignore[arg-type]


def test_uc_inform_gets_an_ack_to_ciaddr_port_68() -> None:
    answer = HANDLE(inform(), ("192.0.2.50", 68))
    assert answer is not None
    data, dest = answer
    assert dest == ("192.0.2.50", 68)
    ack = dhcp.decode(data)
    assert (
        ack.message_type is dhcp.MessageType.ACK
        and ack.xid == 0x1234
        and ack.yiaddr == IPv4Address("0.0.0.0")
    )
    found = dhcp.parse_inform_answer(ack)
    assert found.vendor is not None
    assert found.vendor.certprov_url == "https://pool.lab.test:4443/CertProv/CertProvisioningService.svc"
    assert found.registrars == ("pool.lab.test",)
    assert found.ntp_servers == (IPv4Address("192.0.2.1"),) and found.domain == "lab.test"
    assert found.server_id == IPv4Address("192.0.2.1")
    assert ack.option(51) is None  # no lease options for an INFORM


def test_unprivileged_test_client_is_answered_at_its_source_port() -> None:
    answer = HANDLE(inform(), ("127.0.0.1", 40000))
    assert answer is not None and answer[1] == ("127.0.0.1", 40000)


def test_other_vendor_classes_are_ignored() -> None:
    assert HANDLE(inform(vendor_class=b"MSFT 5.0"), ("192.0.2.50", 68)) is None
    assert HANDLE(inform(vendor_class=b"ms-uc-client"), ("192.0.2.50", 68)) is None  # case-sensitive


def test_inform_not_asking_for_43_is_ignored() -> None:
    assert HANDLE(inform(params=(1, 3, 6, 120)), ("192.0.2.50", 68)) is None


def test_discover_and_replies_are_ignored() -> None:
    discover = dhcp.DhcpMessage(
        op=1,
        xid=7,
        chaddr=b"\x02" * 6 + bytes(10),
        options=((53, bytes([dhcp.MessageType.DISCOVER])), (60, dhcp.VENDOR_CLASS), (55, bytes([43, 120]))),
    )
    assert HANDLE(dhcp.encode(discover), ("0.0.0.0", 68)) is None
    ack = dhcp.decode(HANDLE(inform(), ("192.0.2.50", 68))[0])  # type: ignore[index]
    assert HANDLE(dhcp.encode(ack), ("192.0.2.1", 67)) is None


def test_garbage_is_ignored() -> None:
    for junk in (b"", b"\x01", bytes(300), b"\x01\x01\x06\x00" + bytes(232) + b"\x63\x82\x53\x63\x35\xff"):
        assert HANDLE(junk, ("192.0.2.50", 68)) is None


def test_cpe_ocphone_inform_gets_the_voice_vlan_only_when_configured() -> None:
    request = inform(vendor_class=dhcp.VLAN_VENDOR_CLASS, params=(43,))
    assert HANDLE(request, ("192.0.2.50", 68)) is None
    with_vlan = inform_handler(lambda: replace(UC, voice_vlan=222))
    answer = with_vlan(request, ("192.0.2.50", 68))
    assert answer is not None
    ack = dhcp.decode(answer[0])
    assert dhcp.decode_vlan_option43(ack.option(43) or b"") == 222
    assert ack.option(120) is None  # the VLAN answer carries nothing else
