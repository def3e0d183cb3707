"""USB-tethered provisioning end to end: the phone's runner on one end of a pty, the PC on the other (opened
with pyserial like a real ttyACM), a real lab pool on loopback. Plus the link conformance suite, which the
pty pair and the in-memory pair must both pass."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from agent.clocks import SystemClock
from agent.net import Resolver
from agent.phone import StoredIdentity
from agent.stages import Stage
from boot.store import IDENTITY_FILE, Identity, StateStore
from boot.tether import read_phone_serial, tether_serve
from hal.errors import HalError
from hal.tether.device import PhoneTether, ServeOutcome, serve
from hal.tether.framing import (
    HEADER,
    MAGIC,
    ErrorMsg,
    FrameDecoder,
    Hello,
    Message,
    MsgType,
    decode_message,
    encode_message,
)
from hal.tether.host import ProvisionResult, find_phone, provision
from hal.tether.link import FdLink, Link, LinkClosed, Requester, memory_pair, pty_pair
from tests.e2e.conftest import ALICE, Lab, start_lab
from tools.pool.pinpolicy import hash_pin
from tools.pool.store import store_blocker
from tools.tether import tether_provision

pytestmark = pytest.mark.timeout(60)
PASSWORD = "tether-password-1"
CREDENTIAL = ("alice@lab.test", PASSWORD)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = start_lab(tmp_path_factory.mktemp("tether-lab"))
    lab.node.store.set_password(ALICE, hash_pin(PASSWORD))
    try:
        yield lab
    finally:
        lab.node.stop()


Wire = list[tuple[str, bytes]]


class Tap:
    """A link that records every byte it sends and receives (the wire, as a USB analyser would see it)."""

    def __init__(self, inner: Link, wire: Wire, on_send: Callable[[Tap, bytes], bytes] | None = None) -> None:
        self.inner, self.wire, self.on_send = inner, wire, on_send
        self.name = inner.name

    def send(self, data: bytes) -> None:
        data = self.on_send(self, data) if self.on_send else data
        self.wire.append(("send", data))
        self.inner.send(data)

    def recv(self, max_bytes: int, timeout_s: float) -> bytes:
        data = self.inner.recv(max_bytes, timeout_s)
        self.wire.append(("recv", data))
        return data

    def close(self) -> None:
        self.inner.close()


@dataclass
class Rig:
    """A phone serving on one end of a pty; the PC end, both tapped."""

    store: StateStore
    pc: Tap
    wire: Wire
    stop: threading.Event = field(default_factory=threading.Event)
    outcome: list[ServeOutcome] = field(default_factory=list)
    thread: threading.Thread | None = None

    def finish(self) -> ServeOutcome:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.outcome[0]

    def provision(
        self, lab: Lab, credential: tuple[str, str] = CREDENTIAL, timeout: float = 5.0
    ) -> ProvisionResult:
        return provision(
            self.pc,
            lab.node.certprov_url,
            ALICE,
            credential,
            lab.trust(),
            Resolver({lab.node.cfg.fqdn: "127.0.0.1"}),
            lab.node.ports.http,
            timeout,
        )

    def nothing_installed(self) -> bool:
        names = sorted(p.name for p in self.store.root.iterdir()) if self.store.root.exists() else []
        return self.store.load_identity() is None and names in ([], ["device-id", "state.json"])


@pytest.fixture
def rig(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(on_send: Callable[[Tap, bytes], bytes] | None = None, start: bool = True) -> Rig:
        lab.node.store.reset_local_failures(ALICE)  # a wrong password earlier must not leak into this test
        phone_end, pc_end = pty_pair(write_timeout_s=2.0)
        wire: Wire = []
        store = StateStore(tmp_path / f"phone-state-{len(made)}")
        r = Rig(store, Tap(pc_end, wire, on_send), wire)
        phone = PhoneTether(store.device_id(), "SERIAL1", lab.trust())

        def install(new: StoredIdentity) -> None:
            store.save_identity(Identity(new.key, new.certificate, new.intermediates))

        def run() -> None:
            try:
                link = Tap(phone_end, wire)
                r.outcome.append(
                    serve(link, phone, install, SystemClock(), linger_s=0.3, poll_s=0.05, stop=r.stop)
                )
            finally:
                phone_end.close()

        r.thread = threading.Thread(target=run, daemon=True)
        if start:
            r.thread.start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop.set()
        r.pc.close()
        if r.thread is not None and r.thread.is_alive():
            r.thread.join(5)


def secrets_of(key: rsa.RSAPrivateKey) -> list[bytes]:
    """Every form the private key could cross the cable in."""
    nums = key.private_numbers()
    raw = [
        n.to_bytes((n.bit_length() + 7) // 8, "big") for n in (nums.d, nums.p, nums.q, nums.dmp1, nums.iqmp)
    ]
    forms = [
        key.private_bytes(Encoding.DER, f, serialization.NoEncryption())
        for f in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL)
    ]
    pem = key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return [*raw, *forms, pem, pem.split(b"\n")[1]]


def messages_on(wire: Wire) -> list[str]:
    """Every well-formed message either end sent (one frame per send), by type and, for errors, code."""
    out = []
    for way, chunk in wire:
        for event in FrameDecoder().events(chunk) if way == "send" else []:
            if not isinstance(event, HalError):
                msg = decode_message(event)
                out.append(f"{msg.TYPE.name}:{msg.code}" if isinstance(msg, ErrorMsg) else msg.TYPE.name)
    return out


def crossed(wire: Wire) -> bytes:
    return b"".join(chunk for _, chunk in wire)


# -- provisioning end to end ---------------------------------------------------------------------------


def test_provisioning_installs_an_identity_and_the_key_never_crosses(
    lab: Lab, rig: Callable[..., Rig]
) -> None:
    r = rig()
    result = r.provision(lab)
    outcome = r.finish()
    assert result.ok and result.diagnosis is None, result.as_dict()
    assert [s.step for s in result.steps] == ["HELLO", "CSR", "INSTALL"]
    assert [(s.stage, s.result) for s in result.stages] == [
        (Stage.ROOT_CHAIN, "ok"),
        (Stage.WEB_TICKET, "ok"),
        (Stage.CERT_REQUEST, "ok"),
        (Stage.CERT_PUBLISH, "ok"),
    ]
    assert outcome.ok and outcome.thumbprint == result.thumbprint
    identity = r.store.load_identity()
    assert identity is not None and identity.intermediates == (lab.node.ca.issuing,)
    assert result.thumbprint == identity.certificate.fingerprint(hashes.SHA1()).hex().upper()
    assert stat.S_IMODE(os.stat(r.store.root / IDENTITY_FILE).st_mode) == 0o600
    published = {c.thumbprint: c for c in lab.node.store.certificates(ALICE)}
    assert published[result.thumbprint].device_id.strip("{}") == r.store.device_id().strip("{}")
    assert result.phone_serial == "SERIAL1" and result.device_id == r.store.device_id()
    everything = crossed(r.wire)
    assert all(secret not in everything for secret in secrets_of(identity.key))
    assert messages_on(r.wire) == ["HELLO", "HELLO", "CSR_REQUEST", "CSR", "CERTIFICATE", "ACK"]


def test_a_wrong_credential_fails_web_ticket_and_installs_nothing(lab: Lab, rig: Callable[..., Rig]) -> None:
    r = rig()
    result = r.provision(lab, ("alice@lab.test", "not-the-password"))
    outcome = r.finish()
    assert not result.ok and result.diagnosis is not None
    assert (result.diagnosis.stage, result.diagnosis.code) == (Stage.WEB_TICKET, "CREDENTIAL")
    assert [s.result for s in result.stages] == ["ok", "failed", "skipped", "skipped"]
    assert [s.result for s in result.steps] == ["ok", "ok", "skipped"]
    assert "ERROR:ABORTED" in messages_on(r.wire)  # the phone was told to drop its key
    assert not outcome.ok and r.nothing_installed()
    assert b"not-the-password" not in crossed(r.wire)


def test_data_store_down_fails_cert_publish_3005_and_installs_nothing(
    lab: Lab, rig: Callable[..., Rig]
) -> None:
    r = rig()
    with store_blocker(lab.node.cfg.store):
        result = r.provision(lab)
    outcome = r.finish()
    assert result.diagnosis is not None
    assert (result.diagnosis.stage, result.diagnosis.code) == (Stage.CERT_PUBLISH, "3005")
    assert "Power-cycle" in result.diagnosis.remedy
    assert not outcome.ok and r.nothing_installed()


def test_a_cable_pulled_during_the_certificate_leaves_nothing_half_installed(
    lab: Lab, rig: Callable[..., Rig]
) -> None:
    def pull(tap: Tap, data: bytes) -> bytes:
        if data[3] == MsgType.CERTIFICATE:
            tap.inner.send(data[: len(data) // 2])
            tap.inner.close()  # the plug comes out; the first half is still readable on the phone's side
        return data

    r = rig(on_send=pull)
    result = r.provision(lab)
    assert r.thread is not None
    r.thread.join(10)
    outcome = r.outcome[0]
    assert result.diagnosis is not None and result.diagnosis.code == "TETHER_LINK_LOST"
    assert (
        result.steps[-1].step == "INSTALL"
        and "link lost while sending CERTIFICATE" in result.steps[-1].detail
    )
    assert not outcome.ok
    assert "link lost while awaiting certificate" in outcome.detail
    assert "unfinished frame discarded; nothing installed" in outcome.detail
    assert r.nothing_installed()
    assert not [p for p in r.store.root.iterdir() if p.name.startswith(".")]  # no temp file either


def test_a_corrupted_certificate_frame_is_refused_then_resent(lab: Lab, rig: Callable[..., Rig]) -> None:
    flipped: list[int] = []

    def corrupt_once(tap: Tap, data: bytes) -> bytes:
        if data[3] == MsgType.CERTIFICATE and not flipped:
            flipped.append(1)
            return data[:-1] + bytes([data[-1] ^ 0x01])
        return data

    r = rig(on_send=corrupt_once)
    result = r.provision(lab)
    outcome = r.finish()
    assert result.ok and outcome.ok and r.store.load_identity() is not None
    assert "ERROR:FRAME" in messages_on(r.wire)


def test_a_certificate_corrupted_every_time_fails_and_installs_nothing(
    lab: Lab, rig: Callable[..., Rig]
) -> None:
    def corrupt(tap: Tap, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 0x01]) if data[3] == MsgType.CERTIFICATE else data

    r = rig(on_send=corrupt)
    result = r.provision(lab)
    outcome = r.finish()
    assert result.diagnosis is not None and result.diagnosis.code == "TETHER_FRAME"
    assert not outcome.ok and r.nothing_installed()


def test_oversized_and_corrupted_frames_are_refused_and_the_phone_keeps_answering(
    rig: Callable[..., Rig],
) -> None:
    r = rig()
    decoder = FrameDecoder()
    r.pc.send(HEADER.pack(MAGIC, 1, MsgType.CSR_REQUEST, 2**31))  # no payload follows: refused at once
    bad = bytearray(encode_message(Hello(1)))
    bad[-2] ^= 0x40
    r.pc.send(bytes(bad))
    replies: list[Message] = []
    deadline = time.monotonic() + 5
    while len(replies) < 2 and time.monotonic() < deadline:
        replies += [decode_message(f) for f in decoder.feed(r.pc.recv(4096, 0.2))]
    assert all(isinstance(m, ErrorMsg) and m.code == "FRAME" for m in replies) and len(replies) == 2
    reasons = [m.reason for m in replies if isinstance(m, ErrorMsg)]
    assert "cap 65536" in reasons[0] and "bad CRC" in reasons[1]
    hello = Requester(r.pc, 5.0).request(Hello(1), Hello)
    assert hello.phone_serial == "SERIAL1"
    assert not r.finish().ok and r.nothing_installed()


def test_no_phone_on_the_port_is_no_answer(lab: Lab, rig: Callable[..., Rig]) -> None:
    r = rig(start=False)
    result = r.provision(lab, timeout=0.3)
    assert result.diagnosis is not None and result.diagnosis.code == "TETHER_NO_ANSWER"
    assert [s.result for s in result.stages] == ["skipped"] * 4


def test_tether_provision_command_against_a_serving_phone(lab: Lab, tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "lab.pem").write_bytes(lab.node.ca.root.public_bytes(Encoding.PEM))
    phone_end, pc_path, hold = _bare_pty()
    store = StateStore(tmp_path / "cmd-phone")
    phone = PhoneTether(store.device_id(), "SERIAL2", lab.trust())
    done: list[ServeOutcome] = []

    def install(new: StoredIdentity) -> None:
        store.save_identity(Identity(new.key, new.certificate, new.intermediates))

    t = threading.Thread(
        target=lambda: done.append(serve(phone_end, phone, install, SystemClock(), linger_s=0.2))
    )
    t.start()
    out = StringIO()
    resolve = {lab.node.cfg.fqdn: "127.0.0.1"}
    try:
        code = tether_provision(
            pc_path,
            ALICE,
            CREDENTIAL,
            lab.node.certprov_url,
            resolve,
            lab.node.ports.http,
            [roots],
            True,
            out=out,
        )
        t.join(10)
    finally:
        phone_end.close()
        os.close(hold)
    doc = json.loads(out.getvalue())
    assert code == 0 and doc["result"] == "ok" and doc["phone"]["serial"] == "SERIAL2"
    assert doc["thumbprint"] == done[0].thumbprint and store.load_identity() is not None


def test_tether_serve_command_installs_into_its_state_dir(lab: Lab, tmp_path: Path) -> None:
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(lab.node.ca.root.public_bytes(Encoding.PEM))
    pc_end, phone_path, hold = _bare_pty()
    codes: list[int] = []
    out = StringIO()
    state = tmp_path / "serve-state"
    t = threading.Thread(
        target=lambda: codes.append(
            tether_serve(phone_path, state, [anchors], phone_serial="SERIAL3", out=out)
        )
    )
    t.start()
    try:
        # The PC talks at once: a HELLO that lands before the phone opens its port is flushed by pyserial's
        # open, and the PC's repeated HELLO is what gets answered.
        result = provision(
            pc_end,
            lab.node.certprov_url,
            ALICE,
            CREDENTIAL,
            lab.trust(),
            Resolver({lab.node.cfg.fqdn: "127.0.0.1"}),
            lab.node.ports.http,
            5.0,
        )
        t.join(15)
    finally:
        pc_end.close()
        os.close(hold)
    assert result.ok and codes == [0] and "installed" in out.getvalue()
    assert StateStore(state).load_identity() is not None and result.phone_serial == "SERIAL3"


def _bare_pty() -> tuple[FdLink, str, int]:
    """The master as a link, the slave's path for a command to open, and a slave fd held open (raw) so the
    master sees no hang-up before the command opens the path; close it when done."""
    master, slave = os.openpty()
    tty.setraw(slave)
    return FdLink(master, "pty-master"), os.ttyname(slave), slave


def test_a_missing_port_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = tether_provision(
        "/dev/no-such-tty", ALICE, CREDENTIAL, "https://pool.lab.test/x", {}, 80, [], False
    )
    err = capsys.readouterr().err
    assert code == 2 and err == "phoneprov: error: /dev/no-such-tty: cannot open: No such file or directory\n"


def test_the_phone_serial_is_read_like_the_gadget_script(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    assert read_phone_serial(tmp_path) == "0123456789abcdef"
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("model name\t: ARMv8\nSerial\t\t: 10000000deadbeef\n")
    assert read_phone_serial(tmp_path) == "10000000deadbeef"
    (tmp_path / "proc/device-tree").mkdir()
    (tmp_path / "proc/device-tree/serial-number").write_bytes(b"a1b2c3d4e5f60718\0")
    assert read_phone_serial(tmp_path) == "a1b2c3d4e5f60718"


# -- find_phone ------------------------------------------------------------------------------------------


def _port(
    device: str, vid: int | None, pid: int | None, serial: str | None, maker: str | None = "phoneprov"
) -> SimpleNamespace:
    return SimpleNamespace(device=device, vid=vid, pid=pid, serial_number=serial, manufacturer=maker)


def test_find_phone_by_vid_pid_and_serial() -> None:
    ports = [
        _port("/dev/ttyUSB0", 0x1A86, 0x7523, None),  # a relay board
        _port("/dev/ttyACM0", 0x1D6B, 0x0104, "100000001"),
        _port("/dev/ttyACM1", 0x1D6B, 0x0104, "100000002"),
        _port("/dev/ttyACM2", 0x1D6B, 0x0104, "100000003", "Linux Foundation"),  # somebody else's gadget
    ]
    assert find_phone(serial="100000002", comports=lambda: ports) == "/dev/ttyACM1"
    with pytest.raises(
        HalError, match="2 phones 1d6b:0104 from 'phoneprov' on USB \\(100000001, 100000002\\)"
    ) as err:
        find_phone(comports=lambda: ports)
    assert err.value.code == "AMBIGUOUS"
    with pytest.raises(HalError, match="no phone 1d6b:0104 from 'phoneprov' with serial 9 on USB"):
        find_phone(serial="9", comports=lambda: ports)
    assert find_phone(serial="100000003", manufacturer=None, comports=lambda: ports) == "/dev/ttyACM2"
    assert (
        find_phone(0x1209, 0x0001, manufacturer=None, comports=lambda: [_port("/dev/x", 0x1209, 1, "s")])
        == "/dev/x"
    )


# -- link conformance: the pty pair and the memory pair behave alike -------------------------------------


@pytest.fixture(params=["pty", "memory"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Link, Link]]:
    a, b = pty_pair(write_timeout_s=2.0) if request.param == "pty" else memory_pair()
    yield a, b
    for end in (a, b):
        with contextlib.suppress(OSError):
            end.close()


def read_exactly(link: Link, n: int, timeout_s: float = 5.0) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        got += link.recv(n - len(got), 0.1)
    return bytes(got)


def test_link_carries_bytes_both_ways_unchanged(pair: tuple[Link, Link]) -> None:
    a, b = pair
    every_byte = bytes(range(256)) * 2  # CR, LF, XON/XOFF, ^C, NUL: a raw line translates none of them
    a.send(every_byte)
    assert read_exactly(b, len(every_byte)) == every_byte
    b.send(b"pong")
    assert read_exactly(a, 4) == b"pong"


def test_link_recv_times_out_empty(pair: tuple[Link, Link]) -> None:
    a, _ = pair
    start = time.monotonic()
    assert a.recv(10, 0.1) == b""
    assert 0.05 <= time.monotonic() - start < 1.0


def test_link_carries_more_than_a_frame_with_a_slow_reader(pair: tuple[Link, Link]) -> None:
    a, b = pair
    blob = os.urandom(200_000)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_exactly(b, len(blob), 10)))
    reader.start()
    a.send(blob)
    reader.join(15)
    assert got == [blob]


def test_link_closed_here_refuses_both_directions(pair: tuple[Link, Link]) -> None:
    a, _ = pair
    a.close()
    with pytest.raises(LinkClosed):
        a.send(b"x")
    with pytest.raises(LinkClosed):
        a.recv(1, 0.1)


@pytest.mark.parametrize("closer", [0, 1])
def test_link_peer_hang_up_is_link_closed(pair: tuple[Link, Link], closer: int) -> None:
    ends = list(pair)
    ends[closer].close()
    with pytest.raises(LinkClosed) as err:
        for _ in range(20):
            ends[1 - closer].recv(10, 0.1)
    assert err.value.code == "LINK_LOST"
