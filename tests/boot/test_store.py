"""The phone's state store: round trips, permissions, and that damage of any kind reads as "absent"."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.discovery import Discovery
from agent.stages import Stage, StageResult
from boot.store import (
    CERT_FILE,
    CHAIN_FILE,
    DEVICE_ID_FILE,
    DISCOVERY_FILE,
    KEY_FILE,
    MANIFEST_FILE,
    PROGRESS_FILE,
    Identity,
    LastDiscovery,
    StageProgress,
    StateStore,
)

PEM, NO_PASSWORD = serialization.Encoding.PEM, serialization.NoEncryption()
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
GUID = re.compile(r"\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}")


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def _cert(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    cn: str,
    signer: rsa.RSAPrivateKey | None = None,
    hours: float = 2.0,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0 - timedelta(minutes=5))
        .not_valid_after(T0 + timedelta(hours=hours))
        .sign(signer or key, hashes.SHA256())
    )


KEY_A, KEY_B, CA_KEY = _key(), _key(), _key()
CA1, CA2 = _cert(CA_KEY, "Lab Issuing CA 1"), _cert(CA_KEY, "Lab Issuing CA 2")
IDENTITY_A = Identity(KEY_A, _cert(KEY_A, "alice@lab.test", CA_KEY), (CA1, CA2))
IDENTITY_B = Identity(KEY_B, _cert(KEY_B, "bob@lab.test", CA_KEY), (CA1,))
DISCOVERY = LastDiscovery(
    "https://pool.lab.test:443/CertProv/CertProvisioningService.svc", "pool.lab.test", 5061,
    ("ntp1.lab.test", "ntp2.lab.test"), "lab.test", 42, T0,
)  # fmt: skip
PROGRESS = StageProgress(Stage.CERT_PUBLISH, "failed", "3005", T0, 3)


def _spki(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _same(got: Identity | None, want: Identity) -> bool:
    return (
        got is not None
        and _spki(got.key) == _spki(want.key)
        and got.key.private_numbers() == want.key.private_numbers()
        and got.certificate == want.certificate
        and got.intermediates == want.intermediates
    )


def _populated(root: Path) -> StateStore:
    store = StateStore(root)
    store.save_identity(IDENTITY_A)
    store.save_discovery(DISCOVERY)
    store.save_progress(PROGRESS)
    store.device_id()
    return store


# Each file and how to load it on a fresh store; "absent" is what a loader returns for no usable file.
LOADERS: dict[str, tuple[Callable[[StateStore], object], object]] = {
    KEY_FILE: (StateStore.load_key, None),
    CERT_FILE: (StateStore.load_certificate, None),
    CHAIN_FILE: (StateStore.load_intermediates, ()),
    DISCOVERY_FILE: (StateStore.load_discovery, None),
    PROGRESS_FILE: (StateStore.load_progress, None),
}


def test_everything_round_trips_through_a_new_store(tmp_path: Path) -> None:
    device = _populated(tmp_path).device_id()
    again = StateStore(tmp_path)
    assert _same(again.load_identity(), IDENTITY_A)
    assert again.load_discovery() == DISCOVERY
    assert again.load_progress() == PROGRESS
    assert again.device_id() == device
    assert again.problems == []
    assert json.loads((tmp_path / MANIFEST_FILE).read_text()) == {"kind": "phoneprov-state", "schema": 1}


def test_records_are_built_from_what_the_agent_produces() -> None:
    found = Discovery(
        DISCOVERY.certprov_url, "pool.lab.test", 5061, ("ntp1.lab.test", "ntp2.lab.test"), domain="lab.test",
        vlan=42,
    )  # fmt: skip
    assert LastDiscovery.from_discovery(found, T0) == DISCOVERY
    result = StageResult(Stage.CERT_PUBLISH, "failed", "3005", "data store unavailable", 12.0)
    assert StageProgress.from_result(result, T0, 3) == PROGRESS


def test_empty_intermediates_and_a_replaced_identity(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_identity(IDENTITY_A)
    store.save_identity(Identity(KEY_B, IDENTITY_B.certificate))
    assert _same(StateStore(tmp_path).load_identity(), Identity(KEY_B, IDENTITY_B.certificate))


def test_permissions_key_0600_directory_0700(tmp_path: Path) -> None:
    root = tmp_path / "var" / "lib" / "phoneprov"
    store = StateStore(root)
    store.save_identity(IDENTITY_A)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / KEY_FILE).stat().st_mode) == 0o600
    os.chmod(root / KEY_FILE, 0o644)
    os.chmod(root, 0o755)
    StateStore(root).save_key(KEY_B)  # a new store tightens both again
    assert stat.S_IMODE((root / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_device_id_is_created_once_and_stable(tmp_path: Path) -> None:
    first = StateStore(tmp_path / "a").device_id()
    assert GUID.fullmatch(first)
    assert StateStore(tmp_path / "a").device_id() == first
    assert StateStore(tmp_path / "a").device_id() == first
    assert StateStore(tmp_path / "b").device_id() != first


def test_a_missing_directory_is_simply_empty(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "never-written")
    assert store.load_identity() is None
    assert [load(store) for load, _ in LOADERS.values()] == [absent for _, absent in LOADERS.values()]
    assert not store.identity_valid_for(T0)
    store.clear_identity()
    assert store.tidy() == ()
    assert store.problems == []


@pytest.mark.parametrize("name", [*sorted(LOADERS), DEVICE_ID_FILE])
def test_every_prefix_of_a_file_reads_as_absent(tmp_path: Path, name: str) -> None:
    _populated(tmp_path)
    whole = (tmp_path / name).read_bytes()
    for cut in range(len(whole)):
        (tmp_path / name).write_bytes(whole[:cut])
        store = StateStore(tmp_path)
        if name == DEVICE_ID_FILE:
            fresh = store.device_id()  # a damaged id is replaced, not returned
            assert fresh != whole.decode().strip() and GUID.fullmatch(fresh), cut
            (tmp_path / name).unlink()
        else:
            load, absent = LOADERS[name]
            assert load(store) == absent, cut
        assert len(store.problems) == 1 and store.problems[0].startswith(f"{name}: "), (cut, store.problems)
    (tmp_path / name).write_bytes(whole)
    assert _same(StateStore(tmp_path).load_identity(), IDENTITY_A)


GARBAGE: dict[str, bytes] = {
    "binary": b"\x00\xff\x10garbage\n",
    "pkcs1 label": KEY_A.private_bytes(PEM, serialization.PrivateFormat.TraditionalOpenSSL, NO_PASSWORD),
    "ec key": ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ),
    "two certs": CA1.public_bytes(serialization.Encoding.PEM) * 2,
    "bad base64": b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    "not DER": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    "mismatched end": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END CERTIFICATE-----\n",
    "json list": b"[1, 2]\n",
    "deep json": b"[" * 100_000 + b"\n",
    "wrong kind": b'{"kind": "phoneprov-discovery"}\n',
    "naive time": json.dumps({"kind": "phoneprov-progress", "stage": "TIME", "result": "ok",
                              "code": None, "time": "2025-03-01T12:00:00", "attempt": 0}).encode() + b"\n",
    "bad stage": json.dumps({"kind": "phoneprov-progress", "stage": "BOOT", "result": "ok",
                             "code": None, "time": T0.isoformat(), "attempt": 0}).encode() + b"\n",
    "bool port": json.dumps({"kind": "phoneprov-discovery", "certprov_url": "https://x", "registrar": None,
                             "registrar_port": True, "ntp": [], "domain": None, "vlan": None,
                             "when": T0.isoformat()}).encode() + b"\n",
    "huge": b"#" * (2 << 20) + b"\n",
}  # fmt: skip


@pytest.mark.parametrize("what", sorted(GARBAGE))
def test_garbage_in_any_file_reads_as_absent_with_a_one_line_reason(tmp_path: Path, what: str) -> None:
    for name, (load, absent) in LOADERS.items():
        (tmp_path / name).write_bytes(GARBAGE[what])
        store = StateStore(tmp_path)
        assert load(store) == absent, name
        assert len(store.problems) == 1 and "\n" not in store.problems[0], store.problems


def test_a_foreign_key_label_and_curve_are_named(tmp_path: Path) -> None:
    for what in ("pkcs1 label", "ec key"):
        (tmp_path / KEY_FILE).write_bytes(GARBAGE[what])
        store = StateStore(tmp_path)
        assert store.load_key() is None
        assert "foreign" in store.problems[0]
        assert "PRIVATE KEY-----\n" not in store.problems[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_never_raise(tmp_path: Path, data: bytes) -> None:
    for name in [*LOADERS, MANIFEST_FILE, DEVICE_ID_FILE]:
        (tmp_path / name).write_bytes(data)
    store = StateStore(tmp_path)
    assert store.load_identity() is None
    for load, absent in LOADERS.values():
        assert load(store) == absent
    assert GUID.fullmatch(store.device_id())


def test_unreadable_file_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).mkdir()
    store = StateStore(tmp_path)
    assert store.load_key() is None
    assert store.problems == [f"{KEY_FILE}: cannot be read (Is a directory); treated as absent"]


def test_certificate_for_another_key_is_no_identity(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_identity(IDENTITY_A)
    store.save_certificate(IDENTITY_B.certificate)
    again = StateStore(tmp_path)
    assert again.load_identity() is None
    assert not again.identity_valid_for(T0)
    assert again.problems == [f"{CERT_FILE}: certificate is for another key than {KEY_FILE}; no identity"]
    assert again.load_key() is not None and again.load_certificate() == IDENTITY_B.certificate


def test_half_an_identity_is_none_with_a_reason(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_key(KEY_A)  # what on_key leaves when enrolment stops before the certificate
    assert store.load_identity() is None
    assert store.problems == [f"{KEY_FILE}: no usable {CERT_FILE} to pair with; no identity"]


def test_validity_needs_the_margin_left(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_identity(IDENTITY_A)  # valid T0-5min .. T0+2h
    assert store.identity_valid_for(T0)
    assert store.identity_valid_for(T0 + timedelta(hours=1))  # exactly 1 h left
    assert not store.identity_valid_for(T0 + timedelta(hours=1, seconds=1))
    assert not store.identity_valid_for(T0 - timedelta(minutes=6))  # not yet valid
    assert store.identity_valid_for(T0 + timedelta(hours=1, minutes=30), margin=timedelta(minutes=30))
    with pytest.raises(ValueError, match="timezone"):
        store.identity_valid_for(datetime(2025, 3, 1, 12, 0))


def test_clear_identity_keeps_the_rest(tmp_path: Path) -> None:
    store = _populated(tmp_path)
    device = store.device_id()
    store.clear_identity()
    again = StateStore(tmp_path)
    assert again.load_identity() is None and again.load_key() is None and again.load_certificate() is None
    assert again.load_intermediates() == IDENTITY_A.intermediates
    assert again.device_id() == device and again.load_discovery() == DISCOVERY
    assert again.problems == []


@pytest.mark.parametrize(
    "manifest",
    [{"kind": "phoneprov-state", "schema": 2}, {"kind": "someone-else", "schema": 1}],
    ids=["future-schema", "other-kind"],
)
def test_a_foreign_manifest_hides_all_state_until_rewritten(tmp_path: Path, manifest: object) -> None:
    device = _populated(tmp_path).device_id()
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest) + "\n")
    store = StateStore(tmp_path)
    assert store.load_identity() is None and store.load_discovery() is None and store.load_progress() is None
    assert len(store.problems) == 1 and "foreign" in store.problems[0] and "ignored" in store.problems[0]
    assert store.device_id() != device  # a foreign device id is not adopted either
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["schema"] == 1  # the write re-stamped it


@pytest.mark.parametrize(
    "damage", [b"", b'{"kind": "phoneprov-state", "sch', b'{"kind": "phoneprov-state"}\n']
)
def test_a_damaged_manifest_leaves_each_file_to_be_judged(tmp_path: Path, damage: bytes) -> None:
    _populated(tmp_path)
    (tmp_path / MANIFEST_FILE).write_bytes(damage)
    store = StateStore(tmp_path)
    assert _same(store.load_identity(), IDENTITY_A)
    assert store.problems and store.problems[0].startswith(f"{MANIFEST_FILE}: ")


def test_files_without_a_manifest_still_load(tmp_path: Path) -> None:
    """The layout of the first StateStore (key + certificate, no manifest) is still read."""
    pkcs8 = serialization.PrivateFormat.PKCS8
    pem = KEY_A.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
    (tmp_path / KEY_FILE).write_bytes(pem)
    (tmp_path / CERT_FILE).write_bytes(IDENTITY_A.certificate.public_bytes(serialization.Encoding.PEM))
    store = StateStore(tmp_path)
    assert _same(store.load_identity(), Identity(KEY_A, IDENTITY_A.certificate))
    assert store.problems == []


def test_fault_points_come_in_write_order(tmp_path: Path) -> None:
    points: list[str] = []
    store = StateStore(tmp_path, fault=points.append)
    store.save_identity(IDENTITY_A)
    assert points == [
        "manifest:before-rename", "manifest:after-rename", "key:before-rename", "key:after-rename",
        "chain:before-rename", "chain:after-rename", "cert:before-rename", "cert:after-rename",
    ]  # fmt: skip
    points.clear()
    store.save_progress(PROGRESS)
    store.clear_identity()
    assert points == [
        "progress:before-rename", "progress:after-rename",
        "cert:before-unlink", "cert:after-unlink", "key:before-unlink", "key:after-unlink",
    ]  # fmt: skip


class Crash(Exception):
    pass


def _crash_at(point: str) -> Callable[[str], None]:
    def fault(at: str) -> None:
        if at == point:
            raise Crash(at)

    return fault


def _kill_at(point: str) -> Callable[[str], None]:
    def fault(at: str) -> None:
        if at == point:
            os.kill(os.getpid(), signal.SIGKILL)

    return fault


REPLACE_POINTS = [f"{t}:{w}-rename" for t in ("key", "chain", "cert") for w in ("before", "after")]


@pytest.mark.parametrize("point", REPLACE_POINTS)
def test_an_interrupted_replacement_is_old_new_or_nothing(tmp_path: Path, point: str) -> None:
    StateStore(tmp_path).save_identity(IDENTITY_A)
    with pytest.raises(Crash):
        StateStore(tmp_path, fault=_crash_at(point)).save_identity(IDENTITY_B)
    got = StateStore(tmp_path).load_identity()
    if point in ("key:before-rename",):
        assert _same(got, IDENTITY_A)
    elif point == "cert:after-rename":
        assert _same(got, IDENTITY_B)
    else:  # the new key is in place, the certificate still the old one's
        assert got is None


def test_sigkill_at_every_point_leaves_a_loadable_state(tmp_path: Path) -> None:
    """The real thing: the process dies (SIGKILL) at each fault point of a replacement and of a clear."""
    for point in [*REPLACE_POINTS, "cert:after-unlink", "key:after-unlink"]:
        root = tmp_path / point.replace(":", "_")
        StateStore(root).save_identity(IDENTITY_A)
        pid = os.fork()
        if pid == 0:  # child: never returns into pytest
            try:
                store = StateStore(root, fault=_kill_at(point))
                if point.endswith("unlink"):
                    store.clear_identity()
                else:
                    store.save_identity(IDENTITY_B)
            finally:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, point
        store = StateStore(root)
        store.tidy()
        got = store.load_identity()
        assert got is None or _same(got, IDENTITY_A) or _same(got, IDENTITY_B), point
        assert not [p for p in root.iterdir() if p.name.startswith(".")], point


def test_tidy_removes_only_our_stale_temp_files(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_identity(IDENTITY_A)
    stale = [f".{KEY_FILE}.k3y_tmp1", f".{CERT_FILE}.abcd1234", f".{MANIFEST_FILE}.zz9"]
    kept = [".bashrc", f".{KEY_FILE}", f"{KEY_FILE}.bak", ".other.file.abcd1234"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"-----BEGIN PRIVATE KEY-----\ntorn")
    assert _same(StateStore(tmp_path).load_identity(), IDENTITY_A)  # loaders never look at temp files
    assert store.tidy() == tuple(sorted(stale))
    assert all((tmp_path / name).exists() for name in kept)
    assert not any((tmp_path / name).exists() for name in stale)
    assert store.tidy() == ()


def test_writes_refuse_what_they_cannot_store_faithfully(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with pytest.raises(ValueError, match="attempt"):
        store.save_progress(StageProgress(Stage.TIME, "ok", None, T0, -1))
    with pytest.raises(ValueError, match="timezone"):
        store.save_discovery(LastDiscovery("https://x", None, None, (), None, None, datetime(2025, 1, 1)))
    assert store.load_progress() is None and store.load_discovery() is None
