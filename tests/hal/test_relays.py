"""Relay codecs with plain bytes (and hypothesis), the twins' exact bytes, the drivers against the twins."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hal.emulators.gpiochip import FakeGpiod
from hal.emulators.relays import DevantechModel, KmtronicModel, LcusModel, NumatoModel, PtyEmulator
from hal.emulators.usbrelay import DcttechModel, FakeUsbDevice, FakeUsbRelayBackend
from hal.errors import FrameError, HalError
from hal.power import hidrelay, serialboard
from hal.power.boards import BoardSpec, Seams, board_kinds, open_switch
from hal.power.codecs import RelayCodec, hexstr
from hal.power.devantech import DevantechCodec
from hal.power.gpio import GpioSwitch, load_gpiod
from hal.power.hidrelay import DcttechCodec, channels_from_product, parse_report
from hal.power.kmtronic import KmtronicCodec
from hal.power.lcus import LcusCodec, LcusStatusReply, frame, parse_status
from hal.power.numato import NumatoCodec, relay_index
from hal.power.serialboard import find_port, open_serial_relay

CODECS: list[RelayCodec] = [
    *(LcusCodec(n) for n in (1, 2, 4, 8)),
    *(KmtronicCodec(n) for n in (1, 2, 4, 8)),
    *(NumatoCodec(n) for n in (1, 2, 4, 8, 16, 32, 64)),
    *(DevantechCodec(n) for n in (2, 8)),
]


@pytest.fixture(autouse=True)
def no_board_left_open() -> Iterator[None]:
    yield
    assert not serialboard._OPEN and not hidrelay._OPEN, "a board was left open"


@pytest.fixture
def emulators() -> Iterator[list[PtyEmulator]]:
    running: list[PtyEmulator] = []
    yield running
    for emulator in running:
        emulator.stop()


def start(
    emulators: list[PtyEmulator], model: LcusModel | KmtronicModel | NumatoModel | DevantechModel
) -> PtyEmulator:
    emulator = PtyEmulator(model).start()
    emulators.append(emulator)
    return emulator


# --- codecs: plain bytes --------------------------------------------------------------------------


def test_lcus_frames_match_the_datasheet_examples() -> None:
    assert frame(1, True) == bytes.fromhex("A0 01 01 A2")
    assert frame(1, False) == bytes.fromhex("A0 01 00 A1")
    assert LcusCodec(4).switch(3, True).request == bytes.fromhex("A0 03 01 A4")
    assert LcusCodec(4).query(3) is not None and LcusCodec(1).query(1) is None
    assert not LcusCodec(1).observes and LcusCodec(2).observes


def test_lcus_status_parses_both_firmware_forms() -> None:
    assert parse_status("lcus", b"CH1: ON \r\nCH2: OFF\r\n", 2) == (True, False)
    assert parse_status("lcus", b"\x01\x00", 2) == (True, False)
    assert parse_status("lcus", b"ch2:off\nCH1 : on\n", 2) == (True, False)
    assert LcusCodec(4).decode_state(4, b"\x00\x00\x00\x01") is True


@pytest.mark.parametrize(
    "reply",
    [
        b"",
        b"CH1: ON \r\n",
        b"CH1: ON \r\nCH1: OFF\r\n",
        b"CH1: ON \r\nCH3: OFF\r\n",
        b"\x01\x02",
        b"\x01",
        b"\xfe\xff",
    ],
)
def test_lcus_status_rejects_what_no_firmware_sends(reply: bytes) -> None:
    with pytest.raises(FrameError):
        parse_status("lcus-2", reply, 2)


def test_lcus_status_frame_knows_when_either_form_is_complete() -> None:
    frame_rule = LcusStatusReply(2)
    assert not frame_rule.complete(b"") and not frame_rule.complete(b"\x01")
    assert frame_rule.complete(b"\x01\x00")
    assert not frame_rule.complete(b"CH1: ON \r\nCH2: O") and frame_rule.complete(b"CH1: ON \r\nCH2: OFF\r\n")
    assert frame_rule.complete(b"\x07")  # garbage ends the read; the parser names it


def test_kmtronic_status_forms_differ_by_board_size() -> None:
    small, large = KmtronicCodec(2), KmtronicCodec(8)
    assert small.switch(2, True).request == bytes.fromhex("FF 02 01")
    assert small.switch(2, False).request == bytes.fromhex("FF 02 00")
    assert (q := small.query(2)) is not None and q.request == bytes.fromhex("FF 02 03")
    assert (q := large.query(5)) is not None and q.request == bytes.fromhex("FF 09 00")
    assert small.decode_state(2, bytes.fromhex("FF 02 01")) is True
    assert large.decode_state(5, bytes.fromhex("00 00 00 00 01 00 00 00")) is True
    with pytest.raises(FrameError, match="FF 01 01"):
        small.decode_state(2, bytes.fromhex("FF 01 01"))  # the status of another relay


def test_numato_relay_names_are_zero_based() -> None:
    assert [relay_index(ch, 8) for ch in (1, 8)] == ["0", "7"]
    assert [relay_index(ch, 16) for ch in (10, 11, 16)] == ["9", "A", "F"]
    assert [relay_index(ch, 32) for ch in (11, 32)] == ["A", "V"]
    assert [relay_index(ch, 64) for ch in (1, 64)] == ["00", "63"]
    assert NumatoCodec(16).switch(11, True).request == b"relay on A\r"


def test_numato_reads_the_console_reply() -> None:
    codec = NumatoCodec(8)
    assert codec.decode_state(1, b"relay read 0\n\ron\n\r>") is True
    assert codec.decode_state(1, b"relay read 0\n\roff\n\r>") is False
    codec.check_ack(1, True, b"relay on 0\n\r>")
    for bad in (b"relay read 0\n\ron\n\r", b"relay read 0\n\rmaybe\n\r>", b"\xff>"):
        with pytest.raises(FrameError):
            codec.decode_state(1, bad)
    with pytest.raises(FrameError, match="did not echo"):
        codec.check_ack(1, True, b"relay off 0\n\r>")


def test_devantech_single_bytes_and_bitmask() -> None:
    codec = DevantechCodec(8)
    assert [codec.switch(ch, True).request[0] for ch in (1, 8)] == [0x65, 0x6C]
    assert [codec.switch(ch, False).request[0] for ch in (1, 8)] == [0x6F, 0x76]
    assert codec.decode_state(3, b"\x04") is True and codec.decode_state(2, b"\x04") is False


def test_dcttech_reports() -> None:
    codec = DcttechCodec(2)
    assert codec.set_report(2, True)[:2] == b"\xff\x02" and codec.set_report(1, False)[:2] == b"\xfd\x01"
    report = parse_report(b"AB12Z\x00\x00\x02")
    assert (report.serial, report.relays) == ("AB12Z", 2)
    assert codec.decode_state(2, b"AB12Z\x00\x00\x02") is True
    assert channels_from_product("USBRelay4") == 4
    for product in ("USBRelay3", "USBRelay", "Other8", None):
        with pytest.raises(FrameError):
            channels_from_product(product)


def test_bad_channels_and_sizes_are_refused_before_any_byte() -> None:
    with pytest.raises(HalError) as caught:
        LcusCodec(2).switch(3, True)
    assert caught.value.code == "BAD_CHANNEL" and not isinstance(caught.value, FrameError)
    with pytest.raises(HalError, match="does not exist"):
        NumatoCodec(3)


@settings(max_examples=60, deadline=None)
@given(codec=st.sampled_from(CODECS), channel=st.integers(1, 64), reply=st.binary(max_size=80))
def test_arbitrary_replies_decode_or_raise_frame_error(codec: RelayCodec, channel: int, reply: bytes) -> None:
    channel = min(channel, codec.channels)
    with contextlib.suppress(FrameError):
        assert isinstance(codec.decode_state(channel, reply), bool)
    with contextlib.suppress(FrameError):
        codec.check_ack(channel, True, reply)
    query = codec.query(channel)
    if query is not None:
        assert isinstance(query.reply.complete(reply), bool)


@settings(max_examples=60, deadline=None)
@given(reply=st.binary(max_size=16), product=st.text(max_size=12))
def test_arbitrary_hid_reports_parse_or_raise_frame_error(reply: bytes, product: str) -> None:
    with contextlib.suppress(FrameError):
        assert len(parse_report(reply).serial) <= 5
    with contextlib.suppress(FrameError):
        assert isinstance(DcttechCodec(8).decode_state(8, reply), bool)
    with contextlib.suppress(FrameError):
        assert channels_from_product(product) in (1, 2, 4, 8)


def twin_of(codec: RelayCodec, lcus_form: str) -> LcusModel | KmtronicModel | NumatoModel | DevantechModel:
    if isinstance(codec, LcusCodec):
        return LcusModel(codec.channels, "bytes" if lcus_form == "bytes" else "lines")
    if isinstance(codec, KmtronicCodec):
        return KmtronicModel(codec.channels)
    if isinstance(codec, NumatoCodec):
        return NumatoModel(codec.channels)
    return DevantechModel(codec.channels)


@settings(max_examples=60, deadline=None)
@given(
    codec=st.sampled_from([c for c in CODECS if c.observes]),
    form=st.sampled_from(["lines", "bytes"]),
    commands=st.lists(st.tuples(st.integers(1, 64), st.booleans()), max_size=12),
)
def test_codec_and_twin_back_to_back(codec: RelayCodec, form: str, commands: list[tuple[int, bool]]) -> None:
    """h11-style: the codec's bytes drive the twin; the twin's status bytes decode to its register."""
    twin = twin_of(codec, form)
    if (hello := codec.hello()) is not None:
        assert hello.reply.complete(twin.feed(hello.request))
    for channel, on in commands:
        channel = (channel - 1) % codec.channels + 1
        exchange = codec.switch(channel, on)
        codec.check_ack(channel, on, twin.feed(exchange.request))
    for channel in range(1, codec.channels + 1):
        query = codec.query(channel)
        assert query is not None
        reply = twin.feed(query.request)
        assert query.reply.complete(reply)
        assert codec.decode_state(channel, reply) is twin.relays[channel - 1]
    expected = [False] * codec.channels
    for channel, on in commands:
        expected[(channel - 1) % codec.channels] = on
    assert twin.relays == expected


# --- the twins speak exactly what the boards speak ------------------------------------------------


def test_lcus_twin_ignores_bad_frames_and_answers_in_either_form() -> None:
    lines, raw, single = LcusModel(2), LcusModel(2, "bytes"), LcusModel(1)
    assert lines.feed(bytes.fromhex("A0 01 01 A3")) == b"" and lines.relays == [False, False]  # bad sum
    assert lines.feed(bytes.fromhex("A0 02 01 A3 FF")) == b"CH1: OFF\r\nCH2: ON \r\n"
    assert raw.feed(bytes.fromhex("A0 01 01 A2 FF")) == b"\x01\x00"
    assert single.feed(b"\xff") == b""  # LCUS-1 has no status


def test_kmtronic_twin_answers_only_its_own_status_form() -> None:
    small, large = KmtronicModel(2), KmtronicModel(4)
    assert small.feed(bytes.fromhex("FF 01 01 FF 01 03")) == bytes.fromhex("FF 01 01")
    assert small.feed(bytes.fromhex("FF 09 00")) == b""
    assert large.feed(bytes.fromhex("FF 03 01 FF 09 00")) == bytes.fromhex("00 00 01 00")
    assert large.feed(bytes.fromhex("FF 03 03")) == b""


def test_numato_twin_echoes_and_prompts() -> None:
    twin = NumatoModel(16)
    assert twin.feed(b"\r") == b"\n\r>"
    assert twin.feed(b"relay on A\r") == b"relay on A\n\r>"
    assert twin.feed(b"relay read a\r") == b"relay read a\n\ron\n\r>"
    assert twin.feed(b"relay readall\r") == b"relay readall\n\r0400\n\r>"
    assert twin.feed(b"relay writeall 0003\r") == b"relay writeall 0003\n\r>"
    assert twin.relays[:3] == [True, True, False] and not twin.relays[10]
    assert twin.feed(b"ver\r") == b"ver\n\r00000008\n\r>"


def test_devantech_twin_commands() -> None:
    twin = DevantechModel(8)
    assert twin.feed(b"\x5a") == bytes((8, 3))
    assert twin.feed(b"\x64\x6f\x5b") == b"\xfe"
    assert twin.feed(b"\x5c\x81\x5b") == b"\x81"
    assert twin.feed(b"\x6e\x5b") == b"\x00"


# --- serial drivers against the pty twins ---------------------------------------------------------


def test_driver_sends_exact_bytes_and_reads_back(emulators: list[PtyEmulator]) -> None:
    emulator = start(emulators, LcusModel(4))
    switch = open_switch(BoardSpec("lcus-4", 2, port=emulator.port, timeout_s=0.5))
    try:
        assert switch.on().knowledge == "observed"
        assert bytes(emulator.received) == bytes.fromhex("A0 02 01 A3 FF")
    finally:
        switch.close()


def test_numato_resyncs_once_before_the_first_command(emulators: list[PtyEmulator]) -> None:
    emulator = start(emulators, NumatoModel(8))
    with emulator.lock:
        emulator.model.feed(b"relay on")  # someone left a half-typed command on the console
    switch = open_switch(BoardSpec("numato-8", 3, port=emulator.port, timeout_s=0.5))
    try:
        switch.on()
        switch.off()
        assert bytes(emulator.received) == b"\rrelay on 2\rrelay read 2\rrelay off 2\rrelay read 2\r"
        assert emulator.relays() == [False] * 8
    finally:
        switch.close()


@pytest.mark.parametrize(
    ("kind", "model", "garble", "expect"),
    [
        ("lcus-2", LcusModel, lambda r: b"\x99" if r else r, "neither ASCII lines nor 00/01 bytes: 99"),
        ("lcus-2", LcusModel, lambda r: b"CH1: ON \r\nCH2: MAYBE\r\n" if r else r, "'CH2: MAYBE'"),
        ("kmtronic-2", KmtronicModel, lambda r: b"\xff\x01\x05" if r else r, "FF 01 05"),
        ("kmtronic-8", KmtronicModel, lambda r: r[:3], "incomplete reply to FF 09 00: got 00 00 00"),
        ("numato-4", NumatoModel, lambda r: r.replace(b"off", b"of"), "on/off"),
    ],
)
def test_malformed_replies_raise_one_line_frame_error(
    emulators: list[PtyEmulator], kind: str, model: type[LcusModel], garble: object, expect: str
) -> None:
    emulator = start(emulators, model(int(kind.rsplit("-", 1)[1])))
    switch = open_switch(BoardSpec(kind, 1, port=emulator.port, timeout_s=0.3))
    emulator.reply_filter = garble  # type: ignore[assignment]
    try:
        with pytest.raises(FrameError) as caught:
            switch.state()
        message = str(caught.value)
        assert message.startswith(f"{kind} at {emulator.port}:") and expect in message and "\n" not in message
    finally:
        switch.close()


def test_silent_board_times_out_within_the_deadline(emulators: list[PtyEmulator]) -> None:
    emulator = start(emulators, DevantechModel(2))
    emulator.muted = True
    switch = open_switch(BoardSpec("devantech-2", 1, port=emulator.port, timeout_s=0.2))
    started = time.monotonic()
    try:
        with pytest.raises(HalError) as caught:
            switch.on()
        assert caught.value.code == "NO_REPLY" and "5B" in str(caught.value)
        assert 0.15 < time.monotonic() - started < 0.6
    finally:
        switch.close()


def test_relay_that_does_not_move_is_not_reported_as_switched(emulators: list[PtyEmulator]) -> None:
    emulator = start(emulators, DevantechModel(8))
    emulator.reply_filter = lambda reply: b"\x00" if reply else reply  # the relay stays off whatever we send
    switch = open_switch(BoardSpec("devantech-8", 4, port=emulator.port, timeout_s=0.3))
    try:
        with pytest.raises(HalError) as caught:
            switch.on()
        assert caught.value.code == "NOT_SWITCHED"
    finally:
        switch.close()


def test_channels_share_one_board_until_the_last_closes(emulators: list[PtyEmulator]) -> None:
    emulator = start(emulators, KmtronicModel(4))
    first = open_serial_relay(KmtronicCodec(4), 1, emulator.port, timeout_s=0.3)
    second = open_serial_relay(KmtronicCodec(4), 2, emulator.port, timeout_s=0.3)
    assert first.board is second.board
    with pytest.raises(HalError) as caught:
        open_serial_relay(LcusCodec(4), 3, emulator.port)
    assert caught.value.code == "CONFLICT"
    first.close()
    assert second.on().on is True
    with pytest.raises(HalError, match="closed"):
        first.on()
    second.close()
    third = open_serial_relay(KmtronicCodec(4), 3, emulator.port, timeout_s=0.3)
    assert third.board is not first.board and third.off().on is False
    third.close()


def test_missing_port_is_a_clear_open_error(tmp_path: Path) -> None:
    with pytest.raises(HalError) as caught:
        open_switch(BoardSpec("lcus-2", 1, port=str(tmp_path / "ttyUSB9")))
    assert caught.value.code == "OPEN_FAILED" and "dialout" in caught.value.remedy


def ports(*rows: tuple[str, str | None, str | None]) -> list[SimpleNamespace]:
    return [SimpleNamespace(device=d, serial_number=s, location=loc) for d, s, loc in rows]


def test_find_port_by_serial_or_usb_path_never_guesses() -> None:
    listing = ports(("/dev/ttyUSB0", None, "1-1.2:1.0"), ("/dev/ttyACM0", "N123", "1-1.3:1.0"))
    assert find_port(serial_number="N123", comports=lambda: listing) == "/dev/ttyACM0"
    assert find_port(usb_path="1-1.2", comports=lambda: listing) == "/dev/ttyUSB0"
    assert find_port(port="/dev/serial/by-path/x") == "/dev/serial/by-path/x"
    with pytest.raises(HalError, match=r"/dev/ttyACM0 \(serial N123") as caught:
        find_port(serial_number="NOPE", comports=lambda: listing)
    assert caught.value.code == "NOT_FOUND"
    twins = ports(("/dev/ttyUSB0", "SAME", "1-1:1.0"), ("/dev/ttyUSB1", "SAME", "1-2:1.0"))
    with pytest.raises(HalError, match="bind by USB path"):
        find_port(serial_number="SAME", comports=lambda: twins)
    for bad in ({}, {"port": "/dev/x", "usb_path": "1-1"}):
        with pytest.raises(HalError, match="exactly one"):
            find_port(comports=lambda: listing, **bad)


def test_open_switch_finds_the_board_by_serial_number(emulators: list[PtyEmulator]) -> None:
    emulator = start(emulators, NumatoModel(2))
    listing = ports((emulator.port, "NUM42", "3-1:1.0"))
    switch = open_switch(BoardSpec("numato-2", 2, serial_number="NUM42"), Seams(comports=lambda: listing))
    try:
        assert switch.on().on is True and emulator.relays() == [False, True]
        assert switch.name == "numato-2 serial NUM42 ch2"
    finally:
        switch.close()


def test_board_specs_are_validated() -> None:
    with pytest.raises(HalError, match="off_s"):
        BoardSpec("lcus-2", 1, port="/dev/x", off_s=-1)
    with pytest.raises(HalError, match="timeout_s"):
        BoardSpec("lcus-2", 1, port="/dev/x", timeout_s=0)
    with pytest.raises(HalError) as caught:
        open_switch(BoardSpec("lcus-3", 1, port="/dev/x"))
    assert caught.value.code == "UNKNOWN_KIND" and "lcus-4" in str(caught.value)
    with pytest.raises(HalError, match="relay number"):
        open_switch(BoardSpec("lcus-2", "GPIO17", port="/dev/x"))
    with pytest.raises(HalError, match="line name"):
        open_switch(BoardSpec("gpio", 17))
    assert {"lcus-1", "kmtronic-2", "numato-64", "devantech-2", "dcttech", "gpio", "memory"} <= set(
        board_kinds()
    )


# --- dcttech HID driver against the fake pyusb backend --------------------------------------------


def test_hid_relay_finds_claims_and_switches() -> None:
    device = FakeUsbDevice(DcttechModel("ABCDE", 4), port_numbers=(1, 4))
    other = FakeUsbDevice(DcttechModel("ZZZZZ", 2), address=9)
    seams = Seams(usb_backend=FakeUsbRelayBackend(other, device))
    by_serial = open_switch(BoardSpec("dcttech", 3, serial_number="ABCDE", timeout_s=0.2), seams)
    by_path = open_switch(BoardSpec("dcttech", 1, usb_path="1-1.4", timeout_s=0.2), seams)
    try:
        assert not device.kernel_driver and device.claimed == {0} and not other.claimed
        assert by_serial.on().knowledge == "observed" and by_path.on().on is True
        assert device.model.relays == [True, False, True, False] and other.model.relays == [False, False]
        assert by_path.off().on is False and by_serial.state().on is True
    finally:
        by_serial.close()
        by_path.close()
    assert device.claimed == set()


def test_hid_relay_errors_name_the_board() -> None:
    device = FakeUsbDevice(DcttechModel("ABCDE", 2))
    seams = Seams(usb_backend=FakeUsbRelayBackend(device))
    with pytest.raises(HalError, match="serial ABCDE") as caught:
        open_switch(BoardSpec("dcttech", 1, serial_number="QQQQQ"), seams)
    assert caught.value.code == "NOT_FOUND"
    with pytest.raises(HalError, match="channel 3"):
        open_switch(BoardSpec("dcttech", 3, serial_number="ABCDE"), seams)
    switch = open_switch(BoardSpec("dcttech", 2, serial_number="ABCDE"), seams)
    try:
        device.model.set_report = lambda payload: None  # type: ignore[method-assign]
        with pytest.raises(HalError) as caught:
            switch.on()
        assert caught.value.code == "NOT_SWITCHED"
        device.model.get_report = lambda: b"\x01\x02"  # type: ignore[method-assign]
        with pytest.raises(FrameError, match="dcttech-2 ABCDE: feature report should be 8 bytes, got 01 02"):
            switch.state()
    finally:
        switch.close()


def test_hid_relay_without_pyusb_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("usb", "usb.core", "usb.util"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(HalError) as caught:
        open_switch(BoardSpec("dcttech", 1, serial_number="ABCDE"))
    assert caught.value.code == "PYUSB_MISSING" and "lab" in caught.value.remedy


# --- GPIO driver against the fake gpiod -----------------------------------------------------------


@pytest.fixture
def gpio(tmp_path: Path) -> tuple[FakeGpiod, str]:
    for name in ("gpiochip0", "gpiochip4", "gpiochip10"):
        (tmp_path / name).touch()
    chips = {str(tmp_path / "gpiochip0"): ["ID_SDA"], str(tmp_path / "gpiochip10"): ["X"]}
    chips[str(tmp_path / "gpiochip4")] = ["GPIO0", "GPIO17"]
    return FakeGpiod(chips), str(tmp_path)


def test_gpio_finds_the_line_by_name_and_holds_it(gpio: tuple[FakeGpiod, str]) -> None:
    gpiod, dev_dir = gpio
    chip = f"{dev_dir}/gpiochip4"
    switch = GpioSwitch("GPIO17", gpiod=gpiod, dev_dir=dev_dir, off_s=1.0)
    assert switch.chip == chip and gpiod.owner(chip, "GPIO17") == "phoneprov"
    assert gpiod.level(chip, "GPIO17") == 0  # active-low module: powered from the first moment
    assert switch.off().on is False and gpiod.level(chip, "GPIO17") == 1
    with pytest.raises(HalError) as caught:
        GpioSwitch("GPIO17", gpiod=gpiod, dev_dir=dev_dir)
    assert caught.value.code == "LINE_BUSY"
    switch.close()
    assert gpiod.owner(chip, "GPIO17") is None
    with pytest.raises(HalError, match="released"):
        switch.on()


def test_gpio_active_high_and_missing_lines(gpio: tuple[FakeGpiod, str]) -> None:
    gpiod, dev_dir = gpio
    switch = open_switch(BoardSpec("gpio-active-high", "GPIO0"), Seams(gpiod=gpiod, gpio_dev_dir=dev_dir))
    try:
        assert gpiod.level(f"{dev_dir}/gpiochip4", "GPIO0") == 1
        switch.off()
        assert gpiod.level(f"{dev_dir}/gpiochip4", "GPIO0") == 0
    finally:
        switch.close()
    with pytest.raises(HalError) as caught:
        GpioSwitch("GPIO99", gpiod=gpiod, dev_dir=dev_dir)
    assert caught.value.code == "LINE_NOT_FOUND"


def test_gpio_without_gpiod_v2_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)
    with pytest.raises(HalError) as caught:
        load_gpiod()
    assert caught.value.code == "GPIOD_MISSING" and "gpiod" in caught.value.remedy
    with pytest.raises(HalError) as caught:
        load_gpiod(SimpleNamespace(Chip=object))  # the 1.x package: no request_lines
    assert caught.value.code == "GPIOD_TOO_OLD"


def test_hexstr_is_short_and_readable() -> None:
    assert hexstr(b"") == "nothing" and hexstr(b"\xa0\x01") == "A0 01"
    assert hexstr(bytes(100)).endswith("… (100 bytes)")


def test_a_board_held_by_another_process_is_waited_for_then_busy() -> None:
    """pyserial's exclusive lock is flock(2): a second open of the port — another `phoneprov rig` command —
    waits while the first holds the board (a power cycle's off time), and says BUSY after its deadline."""
    with PtyEmulator(LcusModel(4)) as emu:
        holder = serialboard.SerialBoard(LcusCodec(4), emu.port)
        try:
            with pytest.raises(HalError) as busy:
                serialboard.SerialBoard(LcusCodec(4), emu.port, busy_wait_s=0.2)
            assert busy.value.code == "BUSY" and "more than 0.2 s" in str(busy.value)
            threading.Timer(0.3, holder.close).start()
            started = time.monotonic()
            waiter = serialboard.SerialBoard(LcusCodec(4), emu.port, busy_wait_s=5)
            assert 0.2 < time.monotonic() - started < 5  # it waited for the holder, then got the board
            assert waiter.switch(2, True).on
            waiter.close()
        finally:
            holder.close()
