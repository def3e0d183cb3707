"""DHCP: decode a real DHCPACK and read the phone's options — ours vs dpkt (decode only, no sub-options)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address
from pathlib import Path

from agent.wire import dhcp
from tools.bench.timing import per_call_us, ratio

CAPTURES = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "dhcp" / "captures.json"
COUNT = 5000


def _acks() -> list[bytes]:
    if CAPTURES.exists():
        msgs = json.loads(CAPTURES.read_text())["messages"]
        return [bytes.fromhex(m["hex"]) for m in msgs if m["dhcp_message_type"] == "ACK"]
    info = dhcp.UcVendorInfo(
        "MS-UC-Client", "https", "pool.lab.test", "443", "/CertProv/CertProvisioningService.svc"
    )
    req = dhcp.build_inform(1, IPv4Address("192.0.2.50"), b"\x02" * 6)
    ack = dhcp.build_inform_ack(req, [(43, dhcp.encode_option43(info))], IPv4Address("192.0.2.1"))
    return [dhcp.encode(ack)]


def run() -> list[str]:
    import dpkt  # a peer, installed with the dev extra

    acks = _acks()

    def ours() -> None:
        for raw in acks:
            dhcp.parse_inform_answer(dhcp.decode(raw))

    def peer() -> None:
        for raw in acks:
            dict(dpkt.dhcp.DHCP(raw).opts)

    a, b = per_call_us(ours, COUNT) / len(acks), per_call_us(peer, COUNT) / len(acks)
    return [
        f"DHCP ACK ({len(acks)} real captures, {COUNT} rounds)",
        f"  ours  decode + opt 43/120/42 parse   {a:8.1f} µs/msg",
        f"  dpkt {dpkt.__version__} decode only              {b:8.1f} µs/msg   ratio {ratio(a, b)}",
    ]
