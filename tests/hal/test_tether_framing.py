"""The tether codec (frames, messages) and the phone's state machine, sans-IO: bytes and messages only."""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import enroll
from agent.clocks import SystemClock
from agent.phone import StoredIdentity
from agent.truststore import TrustStore
from hal.errors import FrameError
from hal.tether.device import Install, PhoneTether, ServeOutcome, State, serve, thumbprint
from hal.tether.framing import (
    CRC,
    HEADER,
    MAGIC,
    MAX_PAYLOAD,
    Ack,
    Csr,
    CsrRequest,
    ErrorMsg,
    Frame,
    FrameDecoder,
    Hello,
    IssuedCertificate,
    Message,
    MsgType,
    decode_message,
    encode_frame,
    encode_message,
)
from hal.tether.link import Refused, Requester, memory_pair
from tools.pool.ca import PoolCA

ALICE = "sip:alice@lab.test"
NOW = datetime.now(UTC)

# -- strategies --------------------------------------------------------------------------------------

_printable = st.text(
    st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S")) | st.just(" "), max_size=30
)
_der = st.binary(min_size=1, max_size=2000)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, st.integers(0, 0xFFFF), _printable, _printable),
    st.builds(CsrRequest, _printable),
    st.builds(Csr, _der),
    st.builds(IssuedCertificate, _der, st.lists(_der, max_size=15).map(tuple)),
    st.builds(Ack, st.from_regex(r"[0-9A-F]{40}", fullmatch=True)),
    st.builds(
        ErrorMsg,
        st.from_regex(r"[A-Za-z0-9_]{1,32}", fullmatch=True),
        _printable.map(lambda s: " ".join(s.split())),
    ),
)


def chunks(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``data`` split at the given offsets (as a serial port would deliver it)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    start = 0
    for point in [*points, len(data)]:
        yield data[start:point]
        start = point


def feed_all(decoder: FrameDecoder, data: bytes) -> list[Frame | FrameError]:
    return decoder.events(data)


# -- frames ------------------------------------------------------------------------------------------


@given(messages)
def test_every_message_round_trips(msg: Message) -> None:
    wire = encode_message(msg)
    frames = FrameDecoder().feed(wire)
    assert len(frames) == 1
    assert decode_message(frames[0]) == msg


@given(st.lists(messages, min_size=1, max_size=5), st.lists(st.integers(0, 50_000), max_size=8))
def test_a_stream_split_anywhere_yields_the_same_messages(msgs: list[Message], cuts: list[int]) -> None:
    wire = b"".join(encode_message(m) for m in msgs)
    decoder = FrameDecoder()
    got: list[Frame] = []
    for piece in chunks(wire, cuts):
        got.extend(decoder.feed(piece))
    assert [decode_message(f) for f in got] == msgs
    assert decoder.buffered == 0 and decoder.skipped == 0


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000), st.lists(st.integers(0, 4000), max_size=6))
def test_arbitrary_bytes_give_only_frames_or_frame_errors(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder()
    for piece in chunks(data, cuts):
        while True:
            try:
                frames = decoder.feed(piece)
            except FrameError as exc:
                assert "\n" not in str(exc)
                piece = b""
                continue
            for frame in frames:
                try:
                    decode_message(frame)
                except FrameError as exc:
                    assert "\n" not in str(exc)
            if not frames:
                break
            piece = b""
        assert decoder.buffered <= HEADER.size + MAX_PAYLOAD + CRC.size


@given(st.integers(0, 255), st.binary(max_size=3000))
def test_arbitrary_payloads_decode_to_a_message_or_a_frame_error(msg_type: int, payload: bytes) -> None:
    try:
        msg = decode_message(Frame(msg_type, payload))
    except FrameError:
        return
    assert encode_message(msg) == encode_frame(msg_type, payload)  # what parses is canonical


@given(st.binary(max_size=500).filter(lambda g: MAGIC not in g and not g.endswith(MAGIC[:1])), messages)
def test_garbage_before_a_frame_is_skipped(garbage: bytes, msg: Message) -> None:
    decoder = FrameDecoder()
    assert [decode_message(f) for f in decoder.feed(garbage + encode_message(msg))] == [msg]
    assert decoder.skipped == len(garbage)


def test_a_false_header_in_garbage_does_not_swallow_the_next_frame() -> None:
    false_header = HEADER.pack(MAGIC, 1, MsgType.HELLO, 6) + b"ab"  # claims 6 bytes: eats the real frame
    real = encode_message(CsrRequest(ALICE))
    events = FrameDecoder().events(false_header + real)
    assert isinstance(events[0], FrameError) and "bad CRC" in events[0].detail
    assert [decode_message(e) for e in events[1:] if isinstance(e, Frame)] == [CsrRequest(ALICE)]


def test_an_oversized_length_is_refused_at_the_header_without_buffering() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match=r"frame of 2147483648 bytes refused \(cap 65536\)"):
        decoder.feed(HEADER.pack(MAGIC, 1, MsgType.CSR, 2**31))
    assert decoder.buffered < HEADER.size
    assert decoder.feed(b"\x00" * 1_000_000) == []  # the "payload" is noise, never held
    assert decoder.buffered <= 1
    assert decoder.feed(encode_message(Ack("A" * 40))) == [Frame(MsgType.ACK, Ack("A" * 40).to_payload())]


def test_a_payload_one_over_the_cap_is_refused_and_one_at_the_cap_accepted() -> None:
    decoder = FrameDecoder(max_payload=100)
    with pytest.raises(FrameError, match="cap 100"):
        decoder.feed(HEADER.pack(MAGIC, 1, MsgType.CSR, 101))
    assert decoder.feed(encode_frame(MsgType.CSR, b"x" * 100)) == [Frame(MsgType.CSR, b"x" * 100)]
    with pytest.raises(ValueError):
        encode_frame(MsgType.CSR, b"x" * (MAX_PAYLOAD + 1))


@given(messages, st.data())
def test_any_single_bit_flip_is_never_delivered_and_the_next_frame_survives(
    msg: Message, data: st.DataObject
) -> None:
    wire = bytearray(encode_message(msg))
    bit = data.draw(st.integers(0, len(wire) * 8 - 1))
    wire[bit // 8] ^= 1 << (bit % 8)
    good = encode_message(Ack("F" * 40))
    events = FrameDecoder().events(bytes(wire) + good + b"\x00" * (MAX_PAYLOAD + 20))
    frames = [e for e in events if isinstance(e, Frame)]
    assert [decode_message(f) for f in frames] == [Ack("F" * 40)]


def test_a_bad_crc_is_refused_once_and_named() -> None:
    wire = bytearray(encode_message(Csr(b"\x30\x03\x02\x01\x00")))
    wire[-1] ^= 0xFF
    decoder = FrameDecoder("ttyACM0")
    with pytest.raises(FrameError, match=r"ttyACM0: bad CRC on a CSR frame of 5 bytes; dropped"):
        decoder.feed(bytes(wire))
    assert decoder.events(b"") == []  # refused once, then gone


def test_frames_before_a_refused_one_come_first_then_the_refusal() -> None:
    bad = bytearray(encode_message(Hello(1)))
    bad[-1] ^= 1
    decoder = FrameDecoder()
    assert decoder.feed(encode_message(Hello(1)) + bytes(bad)) == [
        Frame(MsgType.HELLO, Hello(1).to_payload())
    ]
    with pytest.raises(FrameError, match="bad CRC"):
        decoder.feed(b"")


def test_another_frame_version_is_refused() -> None:
    body = HEADER.pack(MAGIC, 2, MsgType.HELLO, 0)
    with pytest.raises(FrameError, match="frame version 2 is not supported"):
        FrameDecoder().feed(body + CRC.pack(zlib.crc32(body)))


@pytest.mark.parametrize(
    ("msg_type", "payload", "reason"),
    [
        (MsgType.HELLO, b"\x00\x01\x00", "device id needs 2 bytes, 1 left"),
        (MsgType.HELLO, b"\x00\x01\x00\x00\x00\x00!", "1 trailing bytes"),
        (MsgType.HELLO, b"\x00\x01\x00\x02\xff\xfe\x00\x00", "not UTF-8"),
        (MsgType.CSR_REQUEST, b"\x00\x02a\n", "control characters"),
        (MsgType.CSR, b"", "empty payload"),
        (MsgType.CERTIFICATE, b"\x00", "0 certificates"),
        (MsgType.CERTIFICATE, b"\x01\x00\x00\x00\x00", "certificate 0 is empty"),
        (MsgType.CERTIFICATE, b"\x01\xff\xff\xff\xff", "needs 4294967295 bytes"),
        (MsgType.ACK, b"\x00\x03abc", "not 40 upper-case hex"),
        (MsgType.ERROR, b"\x00\x02a-\x00\x00", "code is not"),
        (99, b"", "unknown message type 99"),
    ],
)
def test_malformed_payloads_are_named(msg_type: int, payload: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode_message(Frame(msg_type, payload))


def test_our_own_bad_values_are_value_errors_not_frames() -> None:
    with pytest.raises(ValueError):
        encode_message(Ack("not a thumbprint"))
    with pytest.raises(ValueError):
        encode_message(ErrorMsg("no spaces allowed", "x"))
    with pytest.raises(ValueError):
        encode_message(IssuedCertificate(b"x", (b"y",) * 16))


def test_an_error_reason_is_sent_as_one_printable_line() -> None:
    sent = ErrorMsg("INSTALL", "disk\nfull\x00 " + "é" * 300)
    got = decode_message(FrameDecoder().feed(encode_message(sent))[0])
    assert isinstance(got, ErrorMsg)
    assert got.reason.startswith("disk full? ") and got.reason.isprintable()
    assert len(got.reason.encode()) <= 400


def test_the_header_layout_is_the_documented_one() -> None:
    wire = encode_frame(MsgType.ACK, b"xyz")
    assert wire[:2] == MAGIC and wire[2] == 1 and wire[3] == 5
    assert struct.unpack(">I", wire[4:8]) == (3,) and wire[8:11] == b"xyz"
    assert struct.unpack(">I", wire[11:]) == (zlib.crc32(wire[:11]),)


# -- the phone's state machine (sans-IO: messages in, messages out) ------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PoolCA:
    return PoolCA.load_or_create(tmp_path_factory.mktemp("ca"), "pool.lab.test", at=NOW)


@pytest.fixture(scope="module")
def keys() -> list[rsa.RSAPrivateKey]:
    return [enroll.generate_key(2048) for _ in range(2)]


def phone(ca: PoolCA, keys: list[rsa.RSAPrivateKey]) -> PhoneTether:
    pool = iter(keys)
    return PhoneTether("{DEVICE}", "SERIAL1", TrustStore([ca.root]), key_source=lambda: next(pool))


def issue(ca: PoolCA, csr: Message | Install | None, sip: str = ALICE) -> x509.Certificate:
    assert isinstance(csr, Csr)
    return ca.issue_user_cert(x509.load_der_x509_csr(csr.der), sip, 8, NOW)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def test_a_session_hello_csr_certificate_install_ack(ca: PoolCA, keys: list[rsa.RSAPrivateKey]) -> None:
    p = phone(ca, keys)
    assert p.receive(Hello(1), NOW) == Hello(1, "{DEVICE}", "SERIAL1")
    csr = p.receive(CsrRequest(ALICE), NOW)
    assert p.in_session
    cert = issue(ca, csr)
    out = p.receive(IssuedCertificate(der(cert), (der(ca.issuing),)), NOW)
    assert isinstance(out, Install) and p.installed_thumbprint is None
    assert out.identity.certificate == cert and out.identity.key is keys[0]
    assert out.identity.intermediates == (ca.issuing,) and out.thumbprint == thumbprint(cert)
    assert p.installed() == Ack(thumbprint(cert)) and p.installed_thumbprint == thumbprint(cert)
    assert p.state.value == "installed" and not p.in_session
    again = p.receive(IssuedCertificate(der(cert), (der(ca.issuing),)), NOW)
    assert again == Ack(thumbprint(cert))  # a resend after a lost ACK is answered, not re-installed


def test_a_repeated_csr_request_gets_the_same_csr(ca: PoolCA, keys: list[rsa.RSAPrivateKey]) -> None:
    p = phone(ca, keys)
    p.receive(Hello(1), NOW)
    first = p.receive(CsrRequest(ALICE), NOW)
    assert p.receive(CsrRequest(ALICE), NOW) == first
    other = p.receive(CsrRequest("sip:bob@lab.test"), NOW)
    assert isinstance(other, Csr) and other != first  # another user: a new key


@pytest.mark.parametrize(
    ("first", "expect"),
    [
        (CsrRequest(ALICE), "STATE"),
        (IssuedCertificate(b"x"), "STATE"),
        (Ack("A" * 40), "STATE"),
        (Hello(2), "VERSION"),
    ],
)
def test_out_of_order_or_foreign_messages_are_refused(
    ca: PoolCA, keys: list[rsa.RSAPrivateKey], first: Message, expect: str
) -> None:
    p = phone(ca, keys)
    out = p.receive(first, NOW)
    assert isinstance(out, ErrorMsg) and out.code == expect
    assert p.state is State.IDLE


def test_a_certificate_for_another_key_is_refused_and_nothing_installed(
    ca: PoolCA, keys: list[rsa.RSAPrivateKey]
) -> None:
    p = phone(ca, keys)
    p.receive(Hello(1), NOW)
    p.receive(CsrRequest(ALICE), NOW)
    stranger = Csr(enroll.build_csr(keys[1], ALICE))
    out = p.receive(IssuedCertificate(der(issue(ca, stranger)), (der(ca.issuing),)), NOW)
    assert isinstance(out, ErrorMsg) and out.code == "BadCertificate"
    assert "not for this phone's key" in out.reason and p.state is State.AWAIT_CERT


def test_a_certificate_without_its_intermediate_is_refused(ca: PoolCA, keys: list[rsa.RSAPrivateKey]) -> None:
    p = phone(ca, keys)
    p.receive(Hello(1), NOW)
    cert = issue(ca, p.receive(CsrRequest(ALICE), NOW))
    out = p.receive(IssuedCertificate(der(cert)), NOW)
    assert isinstance(out, ErrorMsg) and out.code == "BadCertificate"
    assert "missing issuer CN=Communications Server" in out.reason
    garbage = p.receive(IssuedCertificate(der(cert), (b"not der",)), NOW)
    assert isinstance(garbage, ErrorMsg) and garbage.code == "BadCertificate"


def test_an_abort_from_the_pc_drops_the_key(ca: PoolCA, keys: list[rsa.RSAPrivateKey]) -> None:
    p = phone(ca, keys)
    p.receive(Hello(1), NOW)
    cert = issue(ca, p.receive(CsrRequest(ALICE), NOW))
    assert p.receive(ErrorMsg("ABORTED", "WEB_TICKET CREDENTIAL"), NOW) is None
    assert p.state is State.READY and not p.in_session
    out = p.receive(IssuedCertificate(der(cert), (der(ca.issuing),)), NOW)
    assert isinstance(out, ErrorMsg) and out.code == "STATE"


def test_a_failed_install_is_reported_and_the_session_ends(ca: PoolCA, keys: list[rsa.RSAPrivateKey]) -> None:
    p = phone(ca, keys)
    p.receive(Hello(1), NOW)
    cert = issue(ca, p.receive(CsrRequest(ALICE), NOW))
    assert isinstance(p.receive(IssuedCertificate(der(cert), (der(ca.issuing),)), NOW), Install)
    out = p.install_failed("No space left on device")
    assert out.code == "INSTALL" and "No space left" in out.reason
    assert p.state is State.READY and p.installed_thumbprint is None


def test_hello_restarts_a_session(ca: PoolCA, keys: list[rsa.RSAPrivateKey], tmp_path: Path) -> None:
    p = phone(ca, keys)
    p.receive(Hello(1), NOW)
    p.receive(CsrRequest(ALICE), NOW)
    assert p.receive(Hello(1), NOW) == Hello(1, "{DEVICE}", "SERIAL1")
    assert p.state is State.READY and not p.in_session


def test_the_runner_reports_a_failed_install_and_installs_nothing(
    ca: PoolCA, keys: list[rsa.RSAPrivateKey]
) -> None:
    """serve() on an in-memory cable: storage failing is an ERROR INSTALL, and the phone keeps serving."""
    phone_end, pc_end = memory_pair()

    def install(new: StoredIdentity) -> None:
        raise OSError(28, "No space left on device")

    done: list[ServeOutcome] = []
    stop = threading.Event()
    runner = threading.Thread(
        target=lambda: done.append(serve(phone_end, phone(ca, keys), install, SystemClock(), stop=stop))
    )
    runner.start()
    try:
        pc = Requester(pc_end, 5.0)
        pc.request(Hello(1), Hello)
        cert = issue(ca, pc.request(CsrRequest(ALICE), Csr))
        with pytest.raises(Refused) as err:
            pc.request(IssuedCertificate(der(cert), (der(ca.issuing),)), Ack)
        assert err.value.peer_code == "INSTALL" and "No space left on device" in err.value.detail
        assert pc.request(Hello(1), Hello).phone_serial == "SERIAL1"  # still answering
    finally:
        stop.set()
        runner.join(5)
    assert done and not done[0].ok and done[0].detail == "stopped"
