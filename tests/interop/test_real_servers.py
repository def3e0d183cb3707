"""The phone discovers the pool through real DHCP servers — dnsmasq (both option-43 forms) and Kea — each
configured from `phoneprov dhcp-config` output, so the generator is proven by the servers themselves."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.interop.conftest import discover, need, run_dhcpcd
from tests.interop.netns import SERVER_IP, NetLab

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
CERTPROV = "https://webpool.uclab.test:443/CertProv/CertProvisioningService.svc"


def dhcp_config(fmt: str, *extra: str) -> str:
    import subprocess

    argv = [
        sys.executable,
        "-m",
        "tools.cli",
        "dhcp-config",
        "--web-fqdn",
        "webpool.uclab.test",
        "--sip-server",
        "sip.uclab.test",
        "--ntp",
        SERVER_IP,
        "--format",
        fmt,
        *extra,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def dnsmasq_base(lab: NetLab, dns: bool = False) -> str:
    return (
        f"port={'53' if dns else '0'}\ninterface={lab.srv_if}\nbind-interfaces\ndhcp-authoritative\n"
        "dhcp-range=192.0.2.100,192.0.2.250,255.255.255.0,1h\n"
        f"dhcp-leasefile={lab.workdir / 'dnsmasq.leases'}\nno-ping\nlog-dhcp\nuser=root\n"
    )


def start_dnsmasq(lab: NetLab, conf_text: str) -> None:
    conf = lab.workdir / "dnsmasq.conf"
    conf.write_text(conf_text)
    checked = lab.run(lab.srv, [need("dnsmasq"), "--test", f"--conf-file={conf}"])
    assert checked.returncode == 0, checked.stderr
    lab.start(
        lab.srv, [need("dnsmasq"), "--keep-in-foreground", f"--conf-file={conf}"], lab.workdir / "dnsmasq.log"
    )
    lab.wait_udp_listener(lab.srv, 67)


def assert_found(doc: dict[str, object], registrar: str = "sip.uclab.test") -> None:
    found = doc["found"]
    assert found["certprov_url"] == CERTPROV, doc  # type: ignore[index]
    assert found["registrar"] == registrar and found["ntp"] == [SERVER_IP], doc  # type: ignore[index]


@pytest.mark.parametrize("fmt", ["dnsmasq", "dnsmasq-hex"])
def test_through_dnsmasq(netlab: NetLab, fmt: str) -> None:
    start_dnsmasq(netlab, dnsmasq_base(netlab) + dhcp_config(fmt))
    code, doc = discover(netlab)
    assert code == 0, doc
    assert_found(doc)
    assert "option 43" in doc["sources"]["certprov_url"]  # type: ignore[index]


def test_through_kea(netlab: NetLab) -> None:
    kea = need("kea-dhcp4")
    conf = netlab.workdir / "kea.json"
    conf.write_text(dhcp_config("kea", "--interface", netlab.srv_if, "--subnet", "192.0.2.0/24"))
    env = {
        "KEA_LOCKFILE_DIR": str(netlab.workdir),
        "KEA_PIDFILE_DIR": str(netlab.workdir),
        "KEA_LOGGER_DESTINATION": str(netlab.workdir / "kea.log"),
    }
    checked = netlab.run(netlab.srv, ["env", *(f"{k}={v}" for k, v in env.items()), kea, "-t", str(conf)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    netlab.start(netlab.srv, [kea, "-c", str(conf)], netlab.workdir / "kea.out", env=env)
    netlab.wait_udp_listener(netlab.srv, 67)
    code, doc = discover(netlab)
    assert code == 0, doc
    assert_found(doc)


def test_other_vendor_class_gets_no_option_43(netlab: NetLab) -> None:
    need("dhcpcd")
    start_dnsmasq(netlab, dnsmasq_base(netlab) + dhcp_config("dnsmasq"))
    env = run_dhcpcd(netlab, "MSFT 5.0", "-T", "-s", "192.0.2.50/24")
    assert env.get("reason") == "TEST" and "new_ntp_servers" not in env  # dnsmasq answered the INFORM …
    assert "new_vendor_encapsulated_options" not in env  # … without the phone's options


def test_missing_option_43_is_diagnosed(netlab: NetLab) -> None:
    start_dnsmasq(netlab, dnsmasq_base(netlab) + "dhcp-option=option:ntp-server,192.0.2.1\n")
    code, doc = discover(netlab)
    assert code == 1
    assert doc["diagnosis"]["code"] == "NO_OPTION_43", doc  # type: ignore[index]


def test_missing_option_120_falls_back_to_dns_srv(netlab: NetLab) -> None:
    config = "\n".join(line for line in dhcp_config("dnsmasq").splitlines() if "sip-server" not in line)
    dns = (
        f"dhcp-option=tag:msuc,option:dns-server,{SERVER_IP}\ndhcp-option=tag:msuc,option:domain-name,uclab.test\n"
        "srv-host=_sipinternaltls._tcp.uclab.test,sippool.uclab.test,5062,0,100\n"
        f"host-record=sippool.uclab.test,{SERVER_IP}\nno-resolv\n"
    )
    start_dnsmasq(netlab, dnsmasq_base(netlab, dns=True) + config + "\n" + dns)
    code, doc = discover(netlab)
    assert code == 0, doc
    assert_found(doc, registrar="sippool.uclab.test")
    assert doc["found"]["registrar_port"] == 5062  # type: ignore[index]
    assert doc["sources"]["registrar"] == "DNS SRV _sipinternaltls._tcp.uclab.test"  # type: ignore[index]


def test_lease_the_os_holds_is_used_when_inform_goes_unanswered(netlab: NetLab) -> None:
    """dhcpcd takes a real lease from dnsmasq; the server goes away; the phone reads dhcpcd's lease file."""
    need("dhcpcd")
    start_dnsmasq(netlab, dnsmasq_base(netlab) + dhcp_config("dnsmasq"))
    lease = Path("/var/lib/dhcpcd") / f"{netlab.cli_if}.lease"
    try:
        run_dhcpcd(netlab, "MS-UC-Client", "-1")
        assert lease.exists(), "dhcpcd wrote no lease"
        for proc in netlab.procs:  # the DHCP server goes away
            proc.terminate()
            proc.wait(5)
        code, doc = discover(netlab)
        assert code == 0, doc
        assert_found(doc)
        assert doc["sources"]["certprov_url"] == f"lease {lease}, option 43"  # type: ignore[index]
    finally:
        lease.unlink(missing_ok=True)
