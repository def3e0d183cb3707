"""Our own pool's DHCP responder on a real interface: the phone discovers it, and an independent client
(dhcpcd's INFORM mode) is answered correctly."""

from __future__ import annotations

import sys

import pytest

from agent.wire import dhcp
from tests.interop.conftest import discover, need, run_dhcpcd
from tests.interop.netns import SERVER_IP, NetLab

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def start_pool(lab: NetLab) -> None:
    cfg = lab.workdir / "pool.toml"
    cfg.write_text(
        f'[pool]\nfqdn = "pool.lab.test"\ndomain = "lab.test"\nbind = "{SERVER_IP}"\nvoice_vlan = 222\n'
        f'dhcp_interface = "{lab.srv_if}"\nstate_dir = "{lab.workdir / "pool"}"\n'
    )
    lab.start(
        lab.srv,
        [sys.executable, "-m", "tools.cli", "pool", "serve", "--config", str(cfg)],
        lab.workdir / "pool.log",
    )
    lab.wait_udp_listener(lab.srv, 67, timeout_s=30)


def test_phone_discovers_our_responder_on_an_interface(netlab: NetLab) -> None:
    start_pool(netlab)
    code, doc = discover(netlab)
    assert code == 0, doc
    found = doc["found"]
    assert found["certprov_url"] == "https://pool.lab.test:443/CertProv/CertProvisioningService.svc"  # type: ignore[index]
    assert found["registrar"] == "pool.lab.test" and found["ntp"] == [SERVER_IP]  # type: ignore[index]
    assert found["domain"] == "lab.test" and found["answered_by"] == SERVER_IP  # type: ignore[index]
    assert found["vlan"] is None  # not asked


def test_voice_vlan_from_the_cpe_ocphone_inform(netlab: NetLab) -> None:
    start_pool(netlab)
    code, doc = discover(netlab, "--vlan")
    assert code == 0, doc
    assert doc["found"]["vlan"] == 222  # type: ignore[index]
    assert "CPE-OCPHONE" in doc["sources"]["vlan"]  # type: ignore[index]


def test_dhcpcd_inform_is_answered_by_our_responder(netlab: NetLab) -> None:
    need("dhcpcd")
    start_pool(netlab)
    env = run_dhcpcd(netlab, "MS-UC-Client", "-T", "-s", "192.0.2.50/24")
    assert env, "dhcpcd got no answer"
    info = dhcp.decode_option43(bytes.fromhex(env["new_vendor_encapsulated_options"].replace(":", "")))
    assert info is not None and info.certprov_url.startswith("https://pool.lab.test:443/")
    assert env.get("new_sip_server", "").rstrip(".") == "pool.lab.test"
    assert env.get("new_ntp_servers") == SERVER_IP


def test_no_answer_is_a_clear_dhcp_inform_diagnosis(netlab: NetLab) -> None:
    code, doc = discover(netlab)
    assert code == 1
    assert doc["diagnosis"]["stage"] == "DHCP_INFORM" and doc["diagnosis"]["code"] == "NO_ANSWER"  # type: ignore[index]
    assert "2 INFORMs" in str(doc["detail"])
