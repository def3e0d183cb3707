"""A pool of two nodes sharing one PostgreSQL — the setting of field failure 1, where the data store lives on
another server. Phones are served by either node for any user; PostgreSQL stopped in the middle of a sign-in
gives 3005 (and 4104 at the registrar) with nothing half-published; when it returns the nodes recover by
themselves and the same phones sign in; the logs collected from both nodes show every request."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from agent.phone import Phone, PhoneConfig, PhoneRun, StoredIdentity
from agent.stages import Stage, StageResult
from tests.e2e.conftest import ALICE, ALICE_NUMBER, ALICE_PIN, BOB, BOB_PIN, Lab, ShiftedClock
from tests.pgserver import PgServer
from tools.cli import main
from tools.pool.ca import PoolCA
from tools.pool.config import AdminConfig, PoolConfig, Ports
from tools.pool.node import PoolNode
from tools.pool.pinpolicy import PinPolicy

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
BOB_NUMBER = "+14255550124"
TOKEN = "two-node-pool-admin-token-0123456789"


@dataclass
class Pool:
    root: Path
    fe1: Lab
    fe2: Lab

    def phone(self, enrol_at: Lab, register_at: Lab, username: str, pin: str) -> PhoneConfig:
        """CertProv at ``enrol_at``, REGISTER at ``register_at`` (the same pool name, another node). fe1 serves
        DHCP for the subnet; a phone sent to fe2 is configured with its URL, as with the cmdlets' -TargetUri."""
        cfg = replace(enrol_at.phone_config(username, pin), registrar_port=register_at.node.ports.sip)
        if enrol_at.node.dhcp is not None:
            return cfg
        here = replace(
            cfg.discovery, certprov_url=enrol_at.node.certprov_url, registrar_fqdn=enrol_at.node.cfg.fqdn
        )
        return replace(cfg, discovery=here, time=replace(cfg.time, fallback=("127.0.0.1",)))

    def collect(self, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
        nodes = "".join(
            f'[[nodes]]\nname = "{lab.node.cfg.node}"\nadmin_url = "https://127.0.0.1:{lab.node.ports.admin}"\n'
            for lab in (self.fe1, self.fe2)
        )
        pool_file = self.root / "pool.toml"
        pool_file.write_text(
            f'[pool]\nstate_dir = "{self.root / "fe1"}"\n[admin]\ntoken_file = "{self.root / "admin.token"}"\n{nodes}'
        )
        capsys.readouterr()
        assert main(["logs", "collect", "--pool", str(pool_file), "--json"]) == 0
        doc: dict[str, object] = json.loads(capsys.readouterr().out)
        return doc


@pytest.fixture
def pool(tmp_path: Path, pg_url: str) -> Iterator[Pool]:
    token = tmp_path / "admin.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    clock = ShiftedClock()
    base = PoolConfig(
        state_dir=tmp_path / "fe1",
        ports=Ports(0, 0, 0, 0, 0),
        store_url=pg_url,  # ONE PostgreSQL database for both nodes
        store_timeout_s=1.0,
        pin_policy=PinPolicy(max_logon_attempts=3),
        admin=AdminConfig(token_file=token),
    )
    PoolCA.load_or_create(tmp_path / "fe1" / "ca", base.fqdn, at=clock.now())
    shutil.copytree(tmp_path / "fe1" / "ca", tmp_path / "fe2" / "ca")  # one pool, one CA
    with ExitStack() as stack:
        labs = []
        for name in ("fe1", "fe2"):
            one = replace(
                base, state_dir=tmp_path / name, node=name, serve_dhcp=name == "fe1"
            )  # one per subnet
            node = stack.enter_context(PoolNode(one, clock))
            (tmp_path / f"phone-{name}").mkdir()
            labs.append(Lab(node, clock, tmp_path / f"phone-{name}"))
        labs[0].node.add_user(ALICE, "tel:+14255550123;ext=123", ALICE_PIN, "Alice")
        labs[1].node.add_user(BOB, "tel:+14255550124;ext=124", BOB_PIN, "Bob")  # added on the other node
        yield Pool(tmp_path, labs[0], labs[1])


def _identity(run: PhoneRun) -> StoredIdentity:
    assert run.ok and run.key is not None and run.certificate is not None and run.trust is not None
    return StoredIdentity(run.key, run.certificate, run.trust.intermediates)


def test_any_node_serves_any_user(pool: Pool) -> None:
    alice = pool.fe1.boot(
        pool.phone(pool.fe1, pool.fe2, ALICE_NUMBER, ALICE_PIN)
    )  # enrol at fe1, register at fe2
    bob = pool.fe2.boot(pool.phone(pool.fe2, pool.fe1, BOB_NUMBER, BOB_PIN))  # and the other way round
    assert alice.ok, alice.diagnosis
    assert bob.ok, bob.diagnosis
    for lab in (pool.fe1, pool.fe2):  # both nodes see both publications and both bindings
        assert len(lab.node.store.certificates(ALICE)) == 1 and len(lab.node.store.certificates(BOB)) == 1
        assert lab.node.store.registrations(ALICE, lab.clock.now()) and lab.node.store.registrations(
            BOB, lab.clock.now()
        )


def test_postgres_stopped_mid_sign_in_then_back(
    pool: Pool, pg_server: PgServer, capsys: pytest.CaptureFixture[str]
) -> None:
    bob_cfg = pool.phone(pool.fe2, pool.fe2, BOB_NUMBER, BOB_PIN)
    bob = _identity(pool.fe2.boot(bob_cfg))  # Bob signed in earlier: his phone keeps its certificate
    alice_cfg = pool.phone(pool.fe1, pool.fe1, ALICE_NUMBER, ALICE_PIN)

    with ExitStack() as outage:

        def stop_after_ticket(result: StageResult) -> None:
            if result.stage is Stage.WEB_TICKET and result.result == "ok":
                outage.enter_context(pg_server.stopped())  # the database server goes away right now

        alice_run = Phone(alice_cfg, pool.fe1.trust(), pool.fe1.clock, on_stage=stop_after_ticket).run()
        assert alice_run.diagnosis is not None
        assert (alice_run.diagnosis.stage, alice_run.diagnosis.code) == (Stage.CERT_PUBLISH, "3005")
        bob_run = Phone(bob_cfg, pool.fe2.trust(), pool.fe2.clock, stored=bob).run()  # straight to REGISTER
        assert bob_run.diagnosis is not None
        assert (bob_run.diagnosis.stage, bob_run.diagnosis.code) == (Stage.REGISTER, "4104")

    # PostgreSQL is back: nothing of Alice's failed attempt was published, and the nodes recover by themselves
    assert pool.fe1.node.store.certificates(ALICE) == []
    again = pool.fe1.boot(alice_cfg)
    assert again.ok, again.diagnosis
    bob_again = Phone(bob_cfg, pool.fe2.trust(), pool.fe2.clock, stored=bob).run()
    assert bob_again.ok, bob_again.diagnosis
    assert [c.thumbprint for c in pool.fe2.node.store.certificates(ALICE)] == [
        c.thumbprint for c in pool.fe1.node.store.certificates(ALICE)
    ]

    doc = pool.collect(capsys)
    lines = doc["lines"]
    assert isinstance(lines, list)
    seen = {(e["source"], e["stage"], e["result"], e["code"]) for e in lines}
    assert ("fe1", "CERT_PUBLISH", "failed", "3005") in seen
    assert ("fe2", "REGISTER", "failed", "4104") in seen
    assert ("fe1", "CERT_PUBLISH", "ok", "-") in seen and ("fe2", "REGISTER", "ok", "200") in seen
    for lab in (pool.fe1, pool.fe2):  # every request each node logged is in the merged timeline
        logged = (lab.logs / "provisioning.log").read_text().splitlines()
        assert sum(1 for e in lines if e["source"] == lab.node.cfg.node) == len(logged)
    assert "data store unavailable" in " ".join(str(e["detail"]) for e in lines)


def test_bootstrap_with_postgres_down_is_persistent_and_says_restore(
    pool: Pool, pg_server: PgServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The database server gone entirely (not just locked): the Web Ticket service cannot read the user."""
    roots = pool.root / "bootstrap-roots"
    roots.mkdir()
    (roots / "lab.pem").write_bytes(pool.fe1.node.ca.root.public_bytes(Encoding.PEM))
    ports = pool.fe1.node.ports
    argv = ["test-bootstrap", "--phone-or-ext", ALICE_NUMBER, "--pin", ALICE_PIN, "--dhcp-server",
            f"127.0.0.1:{ports.dhcp}", "--registrar-port", str(ports.sip), "--anon-port", str(ports.http),
            "--ntp-port", str(ports.sntp), "--resolve", f"{pool.fe1.node.cfg.fqdn}=127.0.0.1",
            "--roots-dir", str(roots), "--retry-after", "0.2", "--json"]  # fmt: skip
    with pg_server.stopped():
        code = main(argv)
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["verdict"] == "persistent", doc
    assert doc["Diagnosis"].startswith("WEB_TICKET 2099: ")
    assert (
        "power-cycling will not help" in doc["Diagnosis"]
        and "Remedy: Restore the home pool's data store" in doc["Diagnosis"]
    )
    assert "Power-cycle" not in doc["Diagnosis"]
    assert main(argv) == 0  # back: the same transaction succeeds, no node restarted
