"""A phone configuration (agent.toml as a dict) pointing at a lab pool on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from boot.config import AgentConfig, from_dict
from tests.e2e.conftest import ALICE_NUMBER, ALICE_PIN, Lab


def agent_config(
    lab: Lab, state_dir: Path, *, pin: bool = True, tether: dict[str, Any] | None = None, **retry: Any
) -> AgentConfig:
    """``pin=False`` with ``tether={"port": ...}``: a phone whose certificates come over the USB tether only."""
    roots = lab.root / "boot-roots"
    roots.mkdir(exist_ok=True)
    (roots / "lab.pem").write_bytes(lab.node.ca.root.public_bytes(Encoding.PEM))
    ports = lab.node.ports
    doc: dict[str, Any] = {
        "phone": {"username": ALICE_NUMBER, "pin": ALICE_PIN, "state_dir": str(state_dir)},
        "network": {
            "dhcp_server": f"127.0.0.1:{ports.dhcp}",
            "hosts": {lab.node.cfg.fqdn: "127.0.0.1"},
            "anon_http_port": ports.http,
            "ntp_port": ports.sntp,
            "ntp_fallback": [],
            "registrar_port": ports.sip,
            "set_system_clock": False,  # never touch the test machine's clock
        },
        "trust": {"extra_roots_dirs": [str(roots)]},
        "retry": {"base_s": 0.01, "cap_s": 0.05, **retry},
        "status": {"listen": ""},
    }
    if not pin:
        del doc["phone"]["pin"]
    if tether is not None:
        doc["tether"] = tether
    return from_dict(doc, where="test-agent.toml")
