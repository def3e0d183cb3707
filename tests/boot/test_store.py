"""The phone's state store: round trips, permissions, durability, that damage of any kind reads as "absent",
and that an interrupted write leaves the old or the new state."""

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
from boot.statecodec import Bundle, Unusable, decode_identity, encode_identity
from boot.store import (
    CERT_FILE,
    CHAIN_FILE,
    DEVICE_ID_FILE,
    DISCOVERY_FILE,
    FAULT_POINTS,
    IDENTITY_FILE,
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


def _legacy(root: Path, identity: Identity = IDENTITY_A) -> None:
    """The three identity files of the earlier firmware, as a phone upgraded in the field has them."""
    root.mkdir(parents=True, exist_ok=True)
    pkcs8 = serialization.PrivateFormat.PKCS8
    (root / KEY_FILE).write_bytes(identity.key.private_bytes(PEM, pkcs8, NO_PASSWORD))
    (root / CERT_FILE).write_bytes(identity.certificate.public_bytes(PEM))
    chain = b"".join(c.public_bytes(PEM) for c in identity.intermediates)
    (root / CHAIN_FILE).write_bytes(
        f"# phoneprov intermediates: {len(identity.intermediates)}\n".encode() + chain
    )


# Each file and how to load it on a fresh store; "absent" is what a loader returns for no usable file.
# The legacy files (user.key, user.crt, intermediates.pem) are read only when there is no identity.pem.
LOADERS: dict[str, tuple[Callable[[StateStore], object], object]] = {
    IDENTITY_FILE: (StateStore.load_identity, None),
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
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [MANIFEST_FILE, IDENTITY_FILE, DEVICE_ID_FILE, DISCOVERY_FILE, PROGRESS_FILE]
    )


def test_the_identity_is_one_file_with_a_header_and_an_end_marker(tmp_path: Path) -> None:
    StateStore(tmp_path).save_identity(IDENTITY_A)
    lines = (tmp_path / IDENTITY_FILE).read_text().splitlines()
    assert lines[0] == "# phoneprov identity: key 1, certificate 1, intermediates 2"
    assert lines[1] == "-----BEGIN PRIVATE KEY-----" and lines[-1] == "# end of phoneprov identity"
    assert [ln for ln in lines if ln.startswith("-----BEGIN")] == ["-----BEGIN PRIVATE KEY-----"] + [
        "-----BEGIN CERTIFICATE-----"
    ] * 3


@settings(max_examples=25, deadline=None)
@given(key=st.booleans(), cert=st.booleans(), chain=st.lists(st.sampled_from([CA1, CA2]), max_size=3))
def test_any_bundle_round_trips_and_no_line_prefix_of_it_decodes(
    key: bool, cert: bool, chain: list[x509.Certificate]
) -> None:
    bundle = Bundle(KEY_A if key else None, IDENTITY_A.certificate if cert else None, tuple(chain))
    data = encode_identity(bundle)
    got = decode_identity(data)
    assert (got.key is not None) == key and got.certificate == bundle.certificate
    assert got.intermediates == bundle.intermediates
    assert got.key is None or got.key.private_numbers() == KEY_A.private_numbers()
    for cut in [i + 1 for i, byte in enumerate(data[:-1]) if byte == ord("\n")]:
        with pytest.raises(Unusable):
            decode_identity(data[:cut])


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


def test_permissions_identity_and_key_0600_directory_0700(tmp_path: Path) -> None:
    root = tmp_path / "var" / "lib" / "phoneprov"
    store = StateStore(root)
    store.save_identity(IDENTITY_A)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / IDENTITY_FILE).stat().st_mode) == 0o600
    os.chmod(root / IDENTITY_FILE, 0o644)
    os.chmod(root, 0o755)
    StateStore(root).save_key(KEY_B)  # a new store tightens both again
    assert stat.S_IMODE((root / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    StateStore(root).save_certificate(IDENTITY_B.certificate)
    assert stat.S_IMODE((root / IDENTITY_FILE).stat().st_mode) == 0o600


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
    assert store.problems == [] and not (tmp_path / "never-written").exists()


@pytest.mark.parametrize("name", [*sorted(LOADERS), DEVICE_ID_FILE])
def test_every_prefix_of_a_file_reads_as_absent(tmp_path: Path, name: str) -> None:
    _populated(tmp_path)
    if name in (KEY_FILE, CERT_FILE, CHAIN_FILE):
        (tmp_path / IDENTITY_FILE).unlink()
        _legacy(tmp_path)
    whole = (tmp_path / name).read_bytes()
    load, absent = LOADERS.get(name, (StateStore.device_id, None))
    for cut in range(len(whole)):
        (tmp_path / name).write_bytes(whole[:cut])
        store = StateStore(tmp_path)
        if name == DEVICE_ID_FILE:
            fresh = store.device_id()  # a damaged id is replaced, not returned
            assert fresh != whole.decode().strip() and GUID.fullmatch(fresh), cut
            (tmp_path / name).unlink()
        else:
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
    "miscounted bundle": encode_identity(Bundle(KEY_A, None, (CA1,))).replace(b"key 1, certificate 0",
                                                                              b"key 1, certificate 1"),
    "marker inside": encode_identity(Bundle(None, CA1)).replace(b"-----BEGIN",
                                                               b"# end of phoneprov identity\n-----BEGIN"),
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
        (tmp_path / name).mkdir()
        (tmp_path / name / name).write_bytes(GARBAGE[what])
        store = StateStore(tmp_path / name)
        assert load(store) == absent, name
        assert len(store.problems) == 1 and "\n" not in store.problems[0], store.problems
        assert store.problems[0].startswith(f"{name}: ")


def test_a_foreign_key_label_and_curve_are_named(tmp_path: Path) -> None:
    for what in ("pkcs1 label", "ec key"):
        (tmp_path / KEY_FILE).write_bytes(GARBAGE[what])
        store = StateStore(tmp_path)
        assert store.load_key() is None
        assert "foreign" in store.problems[0]
        assert "PRIVATE KEY-----\n" not in store.problems[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode), bundle=st.booleans())
def test_arbitrary_bytes_never_raise(tmp_path: Path, data: bytes, bundle: bool) -> None:
    for name in [*LOADERS, MANIFEST_FILE, DEVICE_ID_FILE]:
        (tmp_path / name).unlink(missing_ok=True)
        if name != IDENTITY_FILE or bundle:
            (tmp_path / name).write_bytes(data)
    store = StateStore(tmp_path)
    assert store.load_identity() is None
    for load, absent in LOADERS.values():
        assert load(store) == absent
    assert GUID.fullmatch(store.device_id())


def test_unreadable_file_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    (tmp_path / IDENTITY_FILE).mkdir()
    store = StateStore(tmp_path)
    assert store.load_key() is None and store.load_identity() is None
    assert store.problems == [f"{IDENTITY_FILE}: cannot be read (Is a directory); treated as absent"]


def test_a_certificate_for_another_key_is_no_identity(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_identity(IDENTITY_A)
    store.save_certificate(IDENTITY_B.certificate)  # joined with the key held: A's
    again = StateStore(tmp_path)
    assert again.load_identity() is None
    assert not again.identity_valid_for(T0)
    assert again.problems == [f"{IDENTITY_FILE}: the certificate is for another key; no identity"]
    assert again.load_key() is not None and again.load_certificate() == IDENTITY_B.certificate
    _legacy(tmp_path / "legacy", Identity(KEY_A, IDENTITY_B.certificate))
    legacy = StateStore(tmp_path / "legacy")
    assert legacy.load_identity() is None
    assert legacy.problems == [f"{CERT_FILE}: certificate is for another key than {KEY_FILE}; no identity"]


def test_a_key_saved_alone_drops_the_identity_until_its_certificate_comes(tmp_path: Path) -> None:
    """The agent's on_key flow (demo, lab): save_key, later save_certificate; both end in one bundle."""
    store = StateStore(tmp_path)
    store.save_identity(IDENTITY_A)
    store.save_key(KEY_B)  # a new key: A's certificate is no longer the phone's
    assert store.load_identity() is None and store.load_certificate() is None
    assert store.problems == [f"{KEY_FILE}: no usable {CERT_FILE} to pair with; no identity"]
    store.save_certificate(IDENTITY_B.certificate)
    assert _same(StateStore(tmp_path).load_identity(), Identity(KEY_B, IDENTITY_B.certificate))
    assert not (tmp_path / KEY_FILE).exists()  # joined into identity.pem, no second copy of the key
    store.save_intermediates([CA2])
    assert StateStore(tmp_path).load_intermediates() == (CA2,)
    assert _same(StateStore(tmp_path).load_identity(), Identity(KEY_B, IDENTITY_B.certificate, (CA2,)))


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


def test_a_foreign_manifest_is_set_aside_once_never_overwritten(tmp_path: Path) -> None:
    """A firmware downgrade: newer state is hidden, then set aside whole by the first write."""
    device = _populated(tmp_path).device_id()
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"kind": "phoneprov-state", "schema": 2}) + "\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    store = StateStore(tmp_path)
    assert store.load_identity() is None and store.load_discovery() is None and store.load_progress() is None
    assert len(store.problems) == 1 and "foreign" in store.problems[0] and "ignored" in store.problems[0]
    assert store.device_id() != device  # a foreign device id is not adopted either
    assert "moved aside to foreign-" in store.problems[-1]
    (aside,) = tmp_path.glob("foreign-*")
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == before  # all of it, byte for byte
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["schema"] == 1
    again = StateStore(tmp_path)
    again.save_progress(PROGRESS)
    assert again.device_id() == store.device_id() and again.problems == []
    assert len(list(tmp_path.glob("foreign-*"))) == 1


def test_a_cut_while_setting_foreign_state_aside_keeps_it_foreign(tmp_path: Path) -> None:
    _populated(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"kind": "someone-else", "schema": 1}) + "\n")
    with pytest.raises(Crash):
        StateStore(tmp_path, fault=_crash_at("foreign:before-manifest")).save_progress(PROGRESS)
    store = StateStore(tmp_path)
    assert store.load_progress() is None and "foreign" in store.problems[0]  # still hidden, nothing adopted
    store.save_progress(PROGRESS)
    assert [p.name for p in tmp_path.glob("foreign-*/*")].count(MANIFEST_FILE) == 1
    assert sorted(p.name for p in tmp_path.glob("foreign-*/*")) == sorted(
        [MANIFEST_FILE, IDENTITY_FILE, DEVICE_ID_FILE, DISCOVERY_FILE, PROGRESS_FILE]
    )
    assert StateStore(tmp_path).load_progress() == PROGRESS


@pytest.mark.parametrize(
    "damage", [b"", b'{"kind": "phoneprov-state", "sch', b'{"kind": "phoneprov-state"}\n']
)
def test_a_damaged_manifest_leaves_each_file_to_be_judged(tmp_path: Path, damage: bytes) -> None:
    _populated(tmp_path)
    (tmp_path / MANIFEST_FILE).write_bytes(damage)
    store = StateStore(tmp_path)
    assert _same(store.load_identity(), IDENTITY_A)
    assert store.problems and store.problems[0].startswith(f"{MANIFEST_FILE}: ")


def test_legacy_files_still_load_and_the_first_bundle_replaces_them(tmp_path: Path) -> None:
    """A phone upgraded in the field: the three files of the earlier firmware, with or without a manifest."""
    _legacy(tmp_path)
    store = StateStore(tmp_path)
    assert _same(store.load_identity(), IDENTITY_A) and store.problems == []
    with pytest.raises(Crash):
        StateStore(tmp_path, fault=_crash_at("identity:before-rename")).save_identity(IDENTITY_B)
    assert _same(StateStore(tmp_path).load_identity(), IDENTITY_A)
    store.save_identity(IDENTITY_B)
    assert _same(StateStore(tmp_path).load_identity(), IDENTITY_B)
    assert not any((tmp_path / name).exists() for name in (KEY_FILE, CERT_FILE, CHAIN_FILE))


def test_fault_points_come_in_write_order(tmp_path: Path) -> None:
    points: list[str] = []
    store = StateStore(tmp_path, fault=points.append)
    store.save_identity(IDENTITY_A)
    assert points == [
        "manifest:before-rename", "manifest:after-rename", "identity:before-rename", "identity:after-rename",
    ]  # fmt: skip
    points.clear()
    store.save_progress(PROGRESS)
    store.clear_identity()
    store.save_key(KEY_B)
    assert points == [
        "progress:before-rename", "progress:after-rename", "identity:before-rename", "identity:after-rename",
        "key:before-rename", "key:after-rename",
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


def _renewal_points(root: Path) -> list[str]:
    """Every fault point a renewal (identity B over A) passes, in order: the points a cut can hit."""
    StateStore(root).save_identity(IDENTITY_A)
    points: list[str] = []
    StateStore(root, fault=points.append).save_identity(IDENTITY_B)
    assert points and set(points) <= set(FAULT_POINTS)
    return points


def test_a_renewal_cut_at_any_point_keeps_the_old_identity_or_the_new(tmp_path: Path) -> None:
    for point in _renewal_points(tmp_path / "probe"):
        root = tmp_path / point.replace(":", "_")
        StateStore(root).save_identity(IDENTITY_A)
        with pytest.raises(Crash):
            StateStore(root, fault=_crash_at(point)).save_identity(IDENTITY_B)
        got = StateStore(root).load_identity()
        assert _same(got, IDENTITY_B if point.endswith("after-rename") else IDENTITY_A), point


def test_sigkill_at_every_point_leaves_the_old_or_the_new_identity(tmp_path: Path) -> None:
    """The real thing: the process dies (SIGKILL) at each fault point of a renewal and of a clear."""
    for point in _renewal_points(tmp_path / "probe"):
        for clear in (False, True):
            root = tmp_path / f"{point.replace(':', '_')}-{clear}"
            StateStore(root).save_identity(IDENTITY_A)
            pid = os.fork()
            if pid == 0:  # child: never returns into pytest
                try:
                    store = StateStore(root, fault=_kill_at(point))
                    store.clear_identity() if clear else store.save_identity(IDENTITY_B)
                finally:
                    os._exit(3)
            _, status = os.waitpid(pid, 0)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, point
            store = StateStore(root)
            assert len(store.tidy()) == (1 if point.endswith("before-rename") else 0)
            got = store.load_identity()
            if point.endswith("before-rename"):
                assert _same(got, IDENTITY_A), point
            else:
                assert got is None if clear else _same(got, IDENTITY_B), point
            assert not [p for p in root.iterdir() if p.name.startswith(".")], point


def _stale(root: Path) -> bool:
    (root / f".{PROGRESS_FILE}.stale01").write_bytes(b"{")
    return True


def test_every_write_fsyncs_the_file_then_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durability: each rename follows an fsync of the renamed file and precedes an fsync of the directory,
    and so does each unlink; without them a power cut could lose a write that had "returned"."""
    events: list[tuple[str, int]] = []
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, os.unlink

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(("rename", os.stat(src).st_ino))
        real_replace(src, dst)

    def unlink(path: str) -> None:
        real_unlink(path)
        events.append(("unlink", 0))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    root, store = tmp_path / "state", StateStore(tmp_path / "state")
    ops: dict[str, Callable[[], object]] = {
        "device id (and manifest)": store.device_id,
        "identity": lambda: store.save_identity(IDENTITY_A),
        "key": lambda: store.save_key(KEY_B),
        "certificate": lambda: store.save_certificate(IDENTITY_B.certificate),
        "intermediates": lambda: store.save_intermediates([CA1]),
        "discovery": lambda: store.save_discovery(DISCOVERY),
        "progress": lambda: store.save_progress(PROGRESS),
        "clear": store.clear_identity,
        "tidy": lambda: _stale(root) and store.tidy(),
    }
    for what, op in ops.items():
        events.clear()
        op()
        changes = [i for i, (kind, _) in enumerate(events) if kind in ("rename", "unlink")]
        assert changes, what
        for n, i in enumerate(changes):
            kind, ino = events[i]
            if kind == "rename":
                assert ("file", ino) in events[changes[n - 1] if n else 0 : i], (what, events)
            until = changes[n + 1] if n + 1 < len(changes) and kind == "rename" else len(events)
            assert ("dir", root.stat().st_ino) in events[i:until], (what, events)


def test_tidy_removes_only_our_stale_temp_files(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_identity(IDENTITY_A)
    stale = [f".{IDENTITY_FILE}.k3y_tmp1", f".{CERT_FILE}.abcd1234", f".{MANIFEST_FILE}.zz9"]
    kept = [".bashrc", f".{IDENTITY_FILE}", f"{IDENTITY_FILE}.bak", ".other.file.abcd1234"]
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
