"""`phoneprov demo`: a lab pool on loopback and an emulated phone signing in, every stage shown.

With ``--fault`` the demo shows one field failure of design.md §1, checks that the phone's diagnosis names
the right stage and code, then repairs the fault and boots the phone again (the field's power-cycle) to
show the recovery. The exit status is non-zero only when a sign-in that should work fails or a fault is
diagnosed wrongly — so CI and lab scripts can rely on it.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

import certs
from agent.clock import TimeConfig
from agent.clocks import SystemClock
from agent.discovery import DiscoveryConfig
from agent.phone import Phone, PhoneConfig, PhoneRun
from agent.stages import Stage
from agent.truststore import TrustStore
from boot.store import StateStore
from tools.pool.config import PoolConfig, Ports
from tools.pool.node import PoolNode
from tools.pool.store import store_blocker

FAULTS = ("datastore", "chain", "registrar")
DEMO_USER = "sip:alice@lab.test"
DEMO_LINE = "tel:+14255550123;ext=123"
DEMO_NUMBER = "+14255550123"
DEMO_PIN = "80613"
# fault → (stage, code) the diagnosis must name, and whether the certificate is published despite the fault
EXPECTED = {
    "datastore": (Stage.CERT_PUBLISH, "3005", False),
    "chain": (Stage.ROOT_CHAIN, "CHAIN_INCOMPLETE", False),
    "registrar": (Stage.REGISTER, "4105", True),
}


@dataclass(frozen=True)
class Attempt:
    title: str
    run: PhoneRun
    published: tuple[dict[str, Any], ...]
    registrations: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class DemoOutcome:
    fault: str | None
    attempts: tuple[Attempt, ...]
    diagnosis_correct: bool | None
    pool: dict[str, Any]

    @property
    def exit_code(self) -> int:
        if self.fault is None:
            return 0 if self.attempts[-1].run.ok else 1
        return 0 if self.diagnosis_correct and self.attempts[-1].run.ok else 1


def run_demo(
    fault: str | None,
    workdir: Path | None = None,
    on_event: Callable[[str, object], None] = lambda kind, value: None,
    store_timeout_s: float = 1.5,
) -> DemoOutcome:
    """Start the pool, boot the phone (twice with a fault: broken, then repaired) and report."""
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")
    with demo_workdir(workdir) as root:
        cfg = demo_pool_config(root, store_timeout_s, incomplete_chain=fault == "chain")
        with demo_pool(cfg) as node:
            on_event("pool", node)
            if fault is None:
                return DemoOutcome(
                    None,
                    (_boot("sign-in", node, root, on_event),),
                    None,
                    pool_info(cfg, workdir is not None),
                )
            if fault == "datastore":
                with store_blocker(cfg.store):
                    first = _boot("data store unavailable", node, root, on_event)
                on_event("repair", "the data store is back")
                second = _boot("phone power-cycled", node, root, on_event)
            elif fault == "registrar":
                node.registrar.unhealthy = True
                first = _boot("registrar unhealthy", node, root, on_event)
                node.registrar.unhealthy = False
                on_event("repair", "the registrar is healthy again")
                second = _boot("phone power-cycled", node, root, on_event)
            else:
                first = _boot("web chain served without its issuing CA", node, root, on_event)
        if fault == "chain":
            on_event("repair", "pool restarted serving the full chain")
            with PoolNode(replace(cfg, incomplete_chain=False)) as node:
                on_event("pool", node)
                second = _boot("phone power-cycled", node, root, on_event)
    diag = first.run.diagnosis
    stage, code, published = EXPECTED[fault]
    correct = (
        diag is not None and (diag.stage, diag.code) == (stage, code) and bool(first.published) == published
    )
    on_event("verdict", correct)
    return DemoOutcome(fault, (first, second), correct, pool_info(cfg, workdir is not None))


def demo_pool_config(root: Path, store_timeout_s: float, incomplete_chain: bool = False) -> PoolConfig:
    """A pool on loopback with free ports, its state under ``root``."""
    return PoolConfig(
        state_dir=root / "pool",
        ports=Ports(dhcp=0, sntp=0, http=0, https=0, sip=0),
        store_timeout_s=store_timeout_s,
        incomplete_chain=incomplete_chain,
    )


@contextmanager
def demo_pool(cfg: PoolConfig) -> Iterator[PoolNode]:
    """The pool node, started, with the demo user (number + PIN) added."""
    with PoolNode(cfg) as node:
        node.add_user(DEMO_USER, DEMO_LINE, DEMO_PIN, "Alice (demo)")
        yield node


def pool_info(cfg: PoolConfig, kept: bool) -> dict[str, Any]:
    info: dict[str, Any] = {"fqdn": cfg.fqdn, "node": cfg.node}
    if kept:  # a temporary workdir is gone by the time anyone reads this
        info.update(state_dir=str(cfg.state_dir), store=cfg.store, logs=str(cfg.state_dir / "logs"))
    return info


def loopback_phone(node: PoolNode, root: Path) -> tuple[PhoneConfig, TrustStore]:
    """An emulated phone for a pool on loopback: the lab root among its shipped roots, the pool's free ports."""
    lab_roots = root / "phone" / "roots"
    lab_roots.mkdir(parents=True, exist_ok=True)
    (lab_roots / "lab-root.pem").write_bytes(node.ca.root.public_bytes(Encoding.PEM))
    trust = TrustStore.from_pem_files(certs.anchor_files(extra_dirs=(lab_roots,)))
    ports = node.ports
    cfg = PhoneConfig(
        username=DEMO_NUMBER,
        pin=DEMO_PIN,
        device_id="{" + str(uuid.uuid5(uuid.NAMESPACE_DNS, "demo-phone.lab.test")).upper() + "}",
        discovery=DiscoveryConfig(
            ciaddr=IPv4Address("127.0.0.1"),
            server=("127.0.0.1", ports.dhcp or 67),  # the demo's pool always serves DHCP
            bind=("127.0.0.1", 0),
            interval_s=1.0,
        ),
        time=TimeConfig(port=ports.sntp, fallback=()),
        anon_http_port=ports.http,
        registrar_port=ports.sip,
        hosts={node.cfg.fqdn: "127.0.0.1"},
    )
    return cfg, trust


def _boot(title: str, node: PoolNode, root: Path, on_event: Callable[[str, object], None]) -> Attempt:
    on_event("attempt", title)
    phone_dir = root / "phone"
    cfg, trust = loopback_phone(node, root)
    state = StateStore(phone_dir / "state")
    phone = Phone(cfg, trust, SystemClock(), on_key=state.save_key, on_stage=lambda r: on_event("stage", r))
    run = phone.run()
    if run.certificate is not None:
        state.save_certificate(run.certificate)
    published = tuple(c.as_row() for c in node.store.certificates(DEMO_USER))
    bindings = tuple(r.as_row() for r in node.store.registrations(DEMO_USER, node.clock.now()))
    attempt = Attempt(title, run, published, bindings)
    on_event("result", attempt)
    return attempt


@contextmanager
def demo_workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="phoneprov-demo-") as tmp:
        yield Path(tmp)
