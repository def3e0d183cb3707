"""`phoneprov dhcp-config`: every format carries the dhcp-peers.md example exactly, bad settings fail in one
line, random valid settings always render, and real servers accept the output when they are installed."""

from __future__ import annotations

import json
import os
import subprocess
from ipaddress import IPv4Address, IPv4Network, ip_address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.wire.dhcp import decode_ip_list, decode_option43, decode_option120
from tests.servers import binary
from tools.dhcpconfig import DEFAULT_SUBNET, FORMATS, DhcpConfigError, UcDhcpSettings, kea_config, render

# dhcp-peers.md, "Canonical option 43 payload ... as one string", and its option 120 bytes.
CANONICAL_43 = (
    "010c4d532d55432d436c69656e74020568747470730312776562706f6f6c2e75636c61622e74657374040334343305252f43"
    "65727450726f762f4365727450726f766973696f6e696e67536572766963652e737663"
)
OPT_120 = "00037369700575636c6162047465737400"
PATH = "/CertProv/CertProvisioningService.svc"
LAB = UcDhcpSettings("webpool.uclab.test", "sip.uclab.test", ntp=(IPv4Address("192.0.2.1"),))
URL = "https://webpool.uclab.test:443/CertProv/CertProvisioningService.svc"

# dhcp-peers.md's Kea option-def and client class, transcribed.
PEERS_OPTION_DEF = [
    {"space": "ms-uc", "name": "uc-identifier", "code": 1, "type": "string"},
    {"space": "ms-uc", "name": "url-scheme", "code": 2, "type": "string"},
    {"space": "ms-uc", "name": "web-server-fqdn", "code": 3, "type": "string"},
    {"space": "ms-uc", "name": "web-server-port", "code": 4, "type": "string"},
    {"space": "ms-uc", "name": "cert-prov-path", "code": 5, "type": "string"},
    {"space": "dhcp4", "name": "sip-server", "code": 120, "type": "record", "record-types": "uint8, fqdn"},
]
PEERS_CLASSES = [
    {
        "name": "ms-uc-client",
        "test": "option[60].text == 'MS-UC-Client'",
        "option-def": [
            {"name": "vendor-encapsulated-options", "code": 43, "type": "empty", "encapsulate": "ms-uc"}
        ],
        "option-data": [
            {"name": "vendor-encapsulated-options"},
            {"space": "ms-uc", "name": "uc-identifier", "data": "MS-UC-Client"},
            {"space": "ms-uc", "name": "url-scheme", "data": "https"},
            {"space": "ms-uc", "name": "web-server-fqdn", "data": "webpool.uclab.test"},
            {"space": "ms-uc", "name": "web-server-port", "data": "443"},
            {"space": "ms-uc", "name": "cert-prov-path", "data": PATH},
            {"name": "sip-server", "data": "0, sip.uclab.test."},
            {"name": "ntp-servers", "data": "192.0.2.1"},
        ],
    }
]


def lines(fmt: str, s: UcDhcpSettings = LAB) -> list[str]:
    return render(s, fmt).splitlines()


def kea_json(text: str) -> Any:
    """The JSON body of the kea format: everything after the leading // comment lines."""
    body = [ln for ln in text.splitlines() if not ln.startswith("//")]
    return json.loads("\n".join(body))


def hex_options(text: str) -> dict[int, bytes]:
    """``code: hex`` lines joined per code, the RFC 3396 way."""
    out: dict[int, bytes] = {}
    for ln in text.splitlines():
        if not ln.startswith("#"):
            code, value = ln.split(": ")
            out[int(code)] = out.get(int(code), b"") + bytes.fromhex(value)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_opens_with_a_comment_header_naming_the_values(fmt: str) -> None:
    text = render(LAB, fmt)
    mark = "//" if fmt == "kea" else "#"
    header = []
    for ln in text.splitlines():
        if not ln.startswith(mark):
            break
        header.append(ln)
    joined = "\n".join(header)
    assert header and text.endswith("\n")
    for value in (URL, "webpool.uclab.test", "443", PATH, "sip.uclab.test", "192.0.2.1", "MS-UC-Client"):
        assert value in joined
    assert "85 bytes" in joined and "fits in one option" in joined


def test_dnsmasq_is_the_dhcp_peers_form() -> None:
    out = lines("dnsmasq")
    expected = [
        "dhcp-vendorclass=set:msuc,MS-UC-Client",
        'dhcp-option=vendor:MS-UC-Client,1,"MS-UC-Client"',
        'dhcp-option=vendor:MS-UC-Client,2,"https"',
        'dhcp-option=vendor:MS-UC-Client,3,"webpool.uclab.test"',
        'dhcp-option=vendor:MS-UC-Client,4,"443"',
        f'dhcp-option=vendor:MS-UC-Client,5,"{PATH}"',
        "dhcp-option=tag:msuc,option:sip-server,sip.uclab.test",
        "dhcp-option=tag:msuc,option:ntp-server,192.0.2.1",
    ]
    active = [ln for ln in out if ln and not ln.startswith("#")]
    assert active == expected  # no range/interface unless asked: nothing else to paste over
    assert any("reverse order" in ln and ln.startswith("#") for ln in out)
    assert "# dhcp-range=192.0.2.100,192.0.2.250,255.255.255.0,1h" in out


def test_dnsmasq_hex_carries_the_canonical_bytes() -> None:
    out = lines("dnsmasq-hex")
    (opt43,) = [ln for ln in out if ln.startswith("dhcp-option=tag:msuc,43,")]
    assert opt43.removeprefix("dhcp-option=tag:msuc,43,").replace(":", "") == CANONICAL_43
    assert "dhcp-option=tag:msuc,option:sip-server,sip.uclab.test" in out
    assert "dhcp-option=tag:msuc,option:ntp-server,192.0.2.1" in out
    assert not any(ln.startswith("dhcp-option=vendor:") for ln in out)


def test_dnsmasq_range_and_interface_when_given() -> None:
    s = UcDhcpSettings("pool.lab.test", "pool.lab.test", subnet=IPv4Network("10.7.0.0/16"), interface="eth1")
    out = lines("dnsmasq", s)
    assert "dhcp-range=10.7.0.100,10.7.0.250,255.255.0.0,1h" in out
    assert "interface=eth1" in out and "bind-interfaces" in out
    assert not any("ntp-server" in ln for ln in out)


def test_kea_is_valid_json_matching_dhcp_peers() -> None:
    doc = kea_json(render(LAB, "kea"))
    assert doc == kea_config(LAB)
    dhcp4 = doc["Dhcp4"]
    assert dhcp4["option-def"] == PEERS_OPTION_DEF
    assert dhcp4["client-classes"] == PEERS_CLASSES
    assert dhcp4["interfaces-config"] == {"interfaces": ["*"], "dhcp-socket-type": "raw"}
    assert dhcp4["lease-database"] == {"type": "memfile", "persist": False}
    (subnet,) = dhcp4["subnet4"]
    assert subnet["subnet"] == "192.0.2.0/24" and subnet["pools"] == [{"pool": "192.0.2.100 - 192.0.2.250"}]
    assert "CHANGE" in subnet["comment"] and "interface" not in subnet


def test_kea_with_interface_subnet_and_no_ntp() -> None:
    s = UcDhcpSettings("pool.lab.test", "reg.lab.test", subnet=IPv4Network("10.9.8.0/29"), interface="lo")
    dhcp4 = kea_json(render(s, "kea"))["Dhcp4"]
    assert dhcp4["interfaces-config"]["interfaces"] == ["lo"]
    assert dhcp4["subnet4"] == [
        {"id": 1, "subnet": "10.9.8.0/29", "interface": "lo", "pools": [{"pool": "10.9.8.4 - 10.9.8.6"}]}
    ]
    data = dhcp4["client-classes"][0]["option-data"]
    assert {"name": "sip-server", "data": "0, reg.lab.test."} in data
    assert not any(d.get("name") == "ntp-servers" for d in data)


def test_isc_defines_the_space_the_class_and_option_120() -> None:
    out = [ln.strip() for ln in lines("isc")]
    for expected in (
        "option space ms-uc;",
        "option ms-uc.uc-identifier code 1 = text;",
        "option ms-uc.cert-prov-path code 5 = text;",
        "option uc-sip-server code 120 = string;",
        'class "ms-uc-client" {',
        'match if option vendor-class-identifier = "MS-UC-Client";',
        "vendor-option-space ms-uc;",
        'option ms-uc.web-server-port "443";',
        f'option ms-uc.cert-prov-path "{PATH}";',
        f"option uc-sip-server {bytes.fromhex(OPT_120).hex(':')};",
        "option ntp-servers 192.0.2.1;",
        "subnet 192.0.2.0 netmask 255.255.255.0 {",
        "range 192.0.2.100 192.0.2.250;",
    ):
        assert expected in out
    assert any(ln.startswith("authoritative;") for ln in out)  # dhcpd answers no INFORM without it
    (alt,) = [ln for ln in out if "vendor-encapsulated-options" in ln and ln.startswith("# option")]
    assert alt.split()[-1].rstrip(";").replace(":", "") == CANONICAL_43


def test_windows_powershell_and_dhcputil_netsh() -> None:
    out = lines("windows")
    ps_hex = ",".join(f"0x{b:02X}" for b in b"443")
    for expected in (
        'Add-DhcpServerv4Class -Name "MSUCClient" -Type Vendor -Description "UC Vendor Class Id" '
        '-Data "MS-UC-Client"',
        'Add-DhcpServerv4OptionDefinition -VendorClass "MSUCClient" -OptionId 4 -Name "WebServerPort" '
        '-Type BinaryData -Description "Web Server Port"',
        f'Set-DhcpServerv4OptionValue -VendorClass "MSUCClient" -OptionId 4 -Value {ps_hex}',
        'Add-DhcpServerv4OptionDefinition -OptionId 120 -Name "UCSipServer" -Type BinaryData '
        '-Description "Sip Server Fqdn"',
        "Set-DhcpServerv4OptionValue -OptionId 120 -Value "
        + ",".join(f"0x{b:02X}" for b in bytes.fromhex(OPT_120)),
        "Set-DhcpServerv4OptionValue -OptionId 42 -Value 192.0.2.1",
        '# netsh dhcp server add class MSUCClient "UC Vendor Class Id" "MS-UC-Client" 1',
        '# netsh dhcp server add optiondef 1 UCIdentifier Binary 0 Vendor=MSUCClient comment="UC Identifier"',
        "# netsh dhcp server set optionvalue 1 Binary vendor=MSUCClient 4D532D55432D436C69656E74",
        "# netsh dhcp server set optionvalue 4 Binary vendor=MSUCClient 343433",
        "# netsh dhcp server add optiondef 5 CertProvRelPath Binary 0 Vendor=MSUCClient "
        'comment="Cert Prov Relative Path"',
        "# netsh dhcp server set optionvalue 5 Binary vendor=MSUCClient " + PATH.encode().hex().upper(),
        '# netsh dhcp server add optiondef 120 UCSipServer Binary 0 comment="Sip Server Fqdn"',
        f"# netsh dhcp server set optionvalue 120 Binary {OPT_120.upper()}",
    ):
        assert expected in out
    for code in range(1, 6):  # every sub-option is defined and set, both ways
        assert sum(f"-OptionId {code} " in ln for ln in out) == 2
        assert sum("Binary vendor=MSUCClient " in ln and f"optionvalue {code} " in ln for ln in out) == 1


def test_hex_is_one_line_per_option() -> None:
    body = [ln for ln in lines("hex") if not ln.startswith("#")]
    assert body == [f"43: {CANONICAL_43}", f"120: {OPT_120}", "42: c0000201"]


def test_long_option43_is_split_and_said_so() -> None:
    s = UcDhcpSettings("webpool.uclab.test", "sip.uclab.test", certprov_path="/" + "a" * 250)
    text = render(s, "hex")
    body = [ln for ln in text.splitlines() if ln.startswith("43: ")]
    assert [len(bytes.fromhex(ln[4:])) for ln in body] == [255, 44]
    assert "299 bytes: sent as 2 option-43 instances (RFC 3396)" in text and "option 57" in text
    info = decode_option43(hex_options(text)[43])
    assert info is not None and info.certprov_rel_path == "/" + "a" * 250
    with pytest.raises(DhcpConfigError, match="299 bytes") as err:  # dnsmasq refuses hex over 255
        render(s, "dnsmasq-hex")
    assert "\n" not in str(err.value)
    for fmt in ("dnsmasq", "kea", "isc", "windows"):
        assert "sent as 2 option-43 instances" in render(s, fmt)


def test_names_lose_a_trailing_dot_and_text_values_are_parsed() -> None:
    s = UcDhcpSettings("pool.lab.test.", "reg.lab.test.", ntp=["192.0.2.9"], subnet="10.0.0.0/8")  # type: ignore[arg-type]
    assert (s.web_fqdn, s.sip_server) == ("pool.lab.test", "reg.lab.test")
    assert s.ntp == (IPv4Address("192.0.2.9"),) and s.subnet == IPv4Network("10.0.0.0/8")
    assert UcDhcpSettings("a.test", "b.test").network == DEFAULT_SUBNET


def test_custom_vendor_class_changes_only_the_match() -> None:
    s = UcDhcpSettings("pool.lab.test", "pool.lab.test", vendor_class="LAB-UC-Phone")
    assert "dhcp-vendorclass=set:msuc,LAB-UC-Phone" in lines("dnsmasq", s)
    assert 'dhcp-option=vendor:LAB-UC-Phone,1,"MS-UC-Client"' in lines("dnsmasq", s)
    cls = kea_json(render(s, "kea"))["Dhcp4"]["client-classes"][0]
    assert cls["test"] == "option[60].text == 'LAB-UC-Phone'"
    assert cls["option-data"][1]["data"] == "MS-UC-Client"


BAD = [
    ({"web_fqdn": "bad_name.test"}, "bad_name"),
    ({"web_fqdn": "-lead.test"}, "-lead"),
    ({"web_fqdn": "a..test"}, "a..test"),
    ({"web_fqdn": ""}, "web FQDN"),
    ({"web_fqdn": "x" * 64 + ".test"}, "x" * 64),
    ({"web_fqdn": ".".join(["abcdefgh"] * 30)}, "253"),
    ({"web_fqdn": "192.0.2.7"}, "192.0.2.7"),
    ({"web_fqdn": "bücher.test"}, "bücher"),
    ({"sip_server": "sip server.test"}, "sip server"),
    ({"web_port": 0}, "0"),
    ({"web_port": 65536}, "65536"),
    ({"web_port": "443"}, "'443'"),
    ({"web_port": True}, "True"),
    ({"certprov_path": "CertProv/x.svc"}, "must start with '/'"),
    ({"certprov_path": "/Cert Prov"}, "' '"),
    ({"certprov_path": "/a,b"}, "','"),
    ({"certprov_path": '/a"b'}, "'\"'"),
    ({"certprov_path": "/é"}, "'é'"),
    ({"certprov_path": "/" + "a" * 255}, "256"),
    ({"ntp": (IPv4Address("192.0.2.1"), "2001:db8::1")}, "2001:db8::1"),
    ({"ntp": ("ntp.lab.test",)}, "ntp.lab.test"),
    ({"ntp": "192.0.2.1"}, "192.0.2.1"),
    ({"url_scheme": "ht tp"}, "ht tp"),
    ({"url_scheme": "1http"}, "1http"),
    ({"vendor_class": "MS UC"}, "MS UC"),
    ({"vendor_class": "MS'UC"}, "MS'UC"),
    ({"vendor_class": ""}, "vendor class"),
    ({"subnet": "192.0.2.1/24"}, "192.0.2.1/24"),
    ({"subnet": "192.0.2.0/31"}, "192.0.2.0/31"),
    ({"interface": "eth0; rm"}, "eth0; rm"),
    ({"interface": "a" * 16}, "a" * 16),
]


@pytest.mark.parametrize(("change", "named"), BAD, ids=[str(c) for c, _ in BAD])
def test_bad_settings_fail_in_one_line_naming_the_value(change: dict[str, object], named: str) -> None:
    args: dict[str, object] = {"web_fqdn": "pool.lab.test", "sip_server": "pool.lab.test", **change}
    with pytest.raises(DhcpConfigError) as err:
        UcDhcpSettings(**args)  # type: ignore[arg-type]
    message = str(err.value)
    assert named in message and "\n" not in message and isinstance(err.value, ValueError)


def test_unknown_format_is_refused_by_name() -> None:
    with pytest.raises(DhcpConfigError, match="'yaml' is not one of dnsmasq, dnsmasq-hex, kea"):
        render(LAB, "yaml")


# --- property: any valid settings render everywhere and the bytes say what was asked ----------------------


def _is_ip(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_fqdns = st.lists(_label, min_size=1, max_size=5).map(".".join).filter(lambda n: not _is_ip(n))  # names only
_path_chars = st.sampled_from("abcXYZ019-._~/!()*+=:@%?&")
_paths = st.lists(_path_chars, max_size=120).map(lambda cs: "/" + "".join(cs))
_ntps = st.lists(st.integers(1, 2**32 - 2).map(IPv4Address), max_size=3).map(tuple)


@settings(max_examples=60, deadline=None)
@given(web=_fqdns, sip=_fqdns, port=st.integers(1, 65535), path=_paths, ntp=_ntps)
def test_valid_settings_render_and_round_trip(
    web: str, sip: str, port: int, path: str, ntp: tuple[IPv4Address, ...]
) -> None:
    s = UcDhcpSettings(web, sip, port, path, ntp)
    for fmt in FORMATS:
        if fmt == "dnsmasq-hex" and len(s.option43) > 255:
            continue
        assert render(s, fmt).startswith(("#", "//"))
    opts = hex_options(render(s, "hex"))
    info = decode_option43(opts[43])
    assert info is not None
    assert (info.web_server_fqdn, info.web_server_port, info.certprov_rel_path) == (web, str(port), path)
    assert info.certprov_url == f"https://{web}:{port}{path}"
    assert decode_option120(opts[120]) == (sip,)
    assert (decode_ip_list(opts[42], 42) if ntp else ()) == ntp and (42 in opts) == bool(ntp)
    kea = kea_json(render(s, "kea"))
    assert kea["Dhcp4"]["client-classes"][0]["option-data"][5]["data"] == path


# --- the real servers, when installed (CI installs dnsmasq-base and kea-dhcp4-server) ---------------------

SERVER_CASES = [
    UcDhcpSettings("webpool.uclab.test", "sip.uclab.test", ntp=(IPv4Address("192.0.2.1"),), interface="lo"),
    UcDhcpSettings(
        "pool.lab.test",
        "pool.lab.test",
        4443,
        "/" + "p" * 230,
        subnet=IPv4Network("10.1.0.0/16"),
        interface="lo",
    ),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", SERVER_CASES, ids=["lab", "long"])
def test_dnsmasq_accepts_the_config(case: UcDhcpSettings, tmp_path: Path) -> None:
    binary("dnsmasq", "dnsmasq-base")
    for fmt in ("dnsmasq", "dnsmasq-hex"):
        if fmt == "dnsmasq-hex" and len(case.option43) > 255:
            continue
        conf = tmp_path / f"{fmt}.conf"
        conf.write_text(render(case, fmt))
        done = subprocess.run(
            ["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True, text=True, timeout=20
        )
        assert done.returncode == 0, done.stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", SERVER_CASES, ids=["lab", "long"])
def test_kea_accepts_the_config(case: UcDhcpSettings, tmp_path: Path) -> None:
    binary("kea-dhcp4", "kea-dhcp4-server")
    conf = tmp_path / "kea.conf"
    conf.write_text(render(case, "kea"))  # with its // header: Kea reads comments
    env = {**os.environ, "KEA_LOCKFILE_DIR": str(tmp_path), "KEA_PIDFILE_DIR": str(tmp_path)}
    done = subprocess.run(["kea-dhcp4", "-t", str(conf)], capture_output=True, text=True, env=env, timeout=20)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", SERVER_CASES, ids=["lab", "long"])
def test_isc_dhcpd_accepts_the_config(case: UcDhcpSettings, tmp_path: Path) -> None:
    binary("dhcpd", "isc-dhcp-server")
    conf = tmp_path / "dhcpd.conf"
    conf.write_text(render(case, "isc"))
    done = subprocess.run(["dhcpd", "-4", "-t", "-cf", str(conf)], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
