"""Cold sign-in with RSA key generation overlapped with the network stages (boot/) vs generated in
CERT_REQUEST (the plain agent): the overlap should bring a cold sign-in towards max(keygen, network)."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from agent.clocks import SystemClock
from agent.enroll import generate_key
from agent.phone import Phone
from boot.identity import KeyPrefetch
from tools.bench.timing import ratio
from tools.demo import DEMO_LINE, DEMO_PIN, DEMO_USER, loopback_phone
from tools.pool.config import PoolConfig, Ports
from tools.pool.node import PoolNode

ROUNDS = 8


def _cold(node: PoolNode, root: Path, key_source: Callable[[], Callable[[], rsa.RSAPrivateKey]]) -> float:
    cfg, trust = loopback_phone(node, root)
    started = time.perf_counter()
    run = Phone(cfg, trust, SystemClock(), key_source=key_source()).run()
    assert run.ok, run.diagnosis
    return (time.perf_counter() - started) * 1000


def run() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = PoolConfig(state_dir=root / "pool", ports=Ports(0, 0, 0, 0, 0))
        with PoolNode(cfg) as node:
            node.add_user(DEMO_USER, DEMO_LINE, DEMO_PIN)
            inline, overlapped = [], []
            for _ in range(ROUNDS):
                inline.append(_cold(node, root, lambda: generate_key))
                overlapped.append(_cold(node, root, lambda: KeyPrefetch(2048).get))
            keygen = statistics.median(_time_keygen() for _ in range(ROUNDS))
    a, b = statistics.median(overlapped), statistics.median(inline)
    return [
        f"Cold sign-in, DHCP … SIGNED_IN on loopback ({ROUNDS} boots each, medians; RSA 2048 keygen alone {keygen:.0f} ms)",
        f"  key generated at power-on, overlapped (boot/)   {a:8.1f} ms",
        f"  key generated in CERT_REQUEST (plain agent)      {b:8.1f} ms   ratio {ratio(a, b)}",
    ]


def _time_keygen() -> float:
    started = time.perf_counter()
    generate_key(2048)
    return (time.perf_counter() - started) * 1000
