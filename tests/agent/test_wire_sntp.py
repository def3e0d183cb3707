"""SNTP codec: timestamp conversion, packet round trips, a full synthetic exchange, and every reason a
reply is refused (KoD, mismatch, unsynchronised, short)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.stages import Stage, WireError
from agent.wire import sntp
from agent.wire.sntp import SntpPacket

T1 = 1_700_000_000.25  # 2023-11-14, client clock


def _reply(tx_sent: int, **changes: object) -> bytes:
    base = SntpPacket(
        leap=0,
        version=4,
        mode=4,
        stratum=2,
        poll=6,
        precision=-20,
        root_delay=0x0000_0100,
        root_dispersion=0x0000_0200,
        ref_id=b"LOCL",
        ref_ts=sntp.to_ntp(T1 - 60),
        orig_ts=tx_sent,
        recv_ts=sntp.to_ntp(T1 + 1),
        tx_ts=sntp.to_ntp(T1 + 1.001),
    )
    return sntp.encode(replace(base, **changes))  # type: ignore[arg-type]


def _raises(fn: object, *args: object, match: str, code: str = "MALFORMED") -> WireError:
    with pytest.raises(WireError, match=match) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.stage is Stage.TIME
    assert info.value.code == code
    assert "\n" not in str(info.value)
    return info.value


# --- timestamps ----------------------------------------------------------------------------------------


def test_ntp_timestamp_known_values() -> None:
    assert sntp.to_ntp(0) == sntp.NTP_UNIX_OFFSET << 32
    assert sntp.to_ntp(0.5) == (sntp.NTP_UNIX_OFFSET << 32) | 0x8000_0000
    assert sntp.to_ntp(T1) == (3_908_988_800 << 32) | 0x4000_0000  # 1_700_000_000 + 2_208_988_800
    assert sntp.from_ntp((3_908_988_800 << 32) | 0x4000_0000) == T1
    era1_start = 2_085_978_496  # 2036-02-07T06:28:16Z, NTP seconds wrap to 0
    assert sntp.to_ntp(era1_start) == 0
    assert sntp.from_ntp(sntp.to_ntp(era1_start + 10.5)) == era1_start + 10.5
    for outside in (-3e9, 7e9, float("nan")):
        with pytest.raises(ValueError):
            sntp.to_ntp(outside)


@given(st.floats(min_value=-2.0e9, max_value=6.0e9, allow_nan=False))
def test_property_timestamp_round_trip(unix: float) -> None:
    try:
        ts = sntp.to_ntp(unix)
    except ValueError:
        assert not (1 << 31) - sntp.NTP_UNIX_OFFSET <= unix < (1 << 31) + (1 << 32) - sntp.NTP_UNIX_OFFSET
        return
    assert 0 <= ts < 1 << 64
    assert sntp.from_ntp(ts) == pytest.approx(unix, abs=2e-6)


# --- packets -------------------------------------------------------------------------------------------

_PACKETS = st.builds(
    SntpPacket,
    leap=st.integers(0, 3),
    version=st.integers(0, 7),
    mode=st.integers(0, 7),
    stratum=st.integers(0, 255),
    poll=st.integers(-128, 127),
    precision=st.integers(-128, 127),
    root_delay=st.integers(0, 2**32 - 1),
    root_dispersion=st.integers(0, 2**32 - 1),
    ref_id=st.binary(min_size=4, max_size=4),
    ref_ts=st.integers(0, 2**64 - 1),
    orig_ts=st.integers(0, 2**64 - 1),
    recv_ts=st.integers(0, 2**64 - 1),
    tx_ts=st.integers(0, 2**64 - 1),
)


@given(_PACKETS, st.binary(max_size=40))
def test_property_packet_round_trip_ignoring_trailer(pkt: SntpPacket, trailer: bytes) -> None:
    raw = sntp.encode(pkt)
    assert len(raw) == 48
    assert sntp.decode(raw + trailer) == pkt


def test_build_request_is_a_v4_client_packet() -> None:
    raw = sntp.build_request(T1)
    assert len(raw) == 48 and raw[0] == 0x23  # LI 0, VN 4, mode 3
    pkt = sntp.decode(raw)
    assert pkt.tx_ts == sntp.to_ntp(T1)
    assert (pkt.orig_ts, pkt.recv_ts, pkt.ref_ts, pkt.stratum) == (0, 0, 0, 0)


def test_short_packets() -> None:
    _raises(sntp.decode, bytes(47), match="too short: 47 bytes")
    _raises(sntp.parse_reply, b"", 0, match="too short: 0 bytes")
    _raises(sntp.build_reply, sntp.build_request(T1)[:40], T1, T1, match="too short: 40 bytes")


# --- exchange ------------------------------------------------------------------------------------------


def test_full_exchange_measures_a_known_offset() -> None:
    """Server 12.5 s ahead, 25 ms each way, 1 ms turnaround: offset 12.5 s, delay 50 ms."""
    ahead, one_way, turnaround = 12.5, 0.025, 0.001
    request = sntp.build_request(T1)
    t2 = T1 + one_way + ahead  # server clock
    t3 = t2 + turnaround
    reply = sntp.build_reply(request, t2, t3, stratum=3, ref_id=b"GPS\x00", ref_unix=T1 - 10)
    t4 = T1 + 2 * one_way + turnaround  # client clock
    pkt = sntp.parse_reply(reply, sntp.to_ntp(T1))
    offset, delay = sntp.offset_delay(T1, sntp.from_ntp(pkt.recv_ts), sntp.from_ntp(pkt.tx_ts), t4)
    assert offset == pytest.approx(ahead, abs=1e-3)
    assert delay == pytest.approx(2 * one_way, abs=1e-3)
    assert (pkt.mode, pkt.stratum, pkt.ref_id, pkt.version) == (4, 3, b"GPS\x00", 4)
    assert sntp.from_ntp(pkt.ref_ts) == pytest.approx(T1 - 10, abs=1e-6)


def test_offset_delay_formulas() -> None:
    assert sntp.offset_delay(10.0, 15.0, 15.5, 11.0) == (4.75, 0.5)
    assert sntp.offset_delay(0.0, -2.0, -2.0, 0.2) == pytest.approx((-2.1, 0.2))


def test_reply_echoes_version_poll_and_copies_transmit() -> None:
    request = sntp.encode(replace(sntp.decode(sntp.build_request(T1)), version=3, poll=10))
    pkt = sntp.decode(sntp.build_reply(request, T1 + 1, T1 + 2))
    assert (pkt.version, pkt.poll, pkt.leap, pkt.ref_id) == (3, 10, 0, b"LOCL")
    assert pkt.orig_ts == sntp.to_ntp(T1)
    assert pkt.ref_ts == pkt.recv_ts == sntp.to_ntp(T1 + 1)
    assert pkt.tx_ts == sntp.to_ntp(T1 + 2)


def test_build_reply_refuses_non_client_requests() -> None:
    server_packet = _reply(sntp.to_ntp(T1))
    _raises(sntp.build_reply, server_packet, T1, T1, match="mode 4, expected 3")
    v5 = sntp.encode(replace(sntp.decode(sntp.build_request(T1)), version=5))
    _raises(sntp.build_reply, v5, T1, T1, match="version 5")
    with pytest.raises(ValueError):
        sntp.build_reply(sntp.build_request(T1), T1, T1, stratum=0)
    with pytest.raises(ValueError):
        sntp.build_reply(sntp.build_request(T1), T1, T1, ref_id=b"LOCAL")


# --- refusals ------------------------------------------------------------------------------------------


def test_kiss_o_death_names_the_code() -> None:
    sent = sntp.to_ntp(T1)
    err = _raises(sntp.parse_reply, _reply(sent, stratum=0, ref_id=b"RATE"), sent, match="'RATE'", code="KOD")
    assert "Kiss-o'-Death" in err.detail


def test_reply_to_someone_else_is_refused() -> None:
    sent = sntp.to_ntp(T1)
    _raises(
        sntp.parse_reply,
        _reply(sent + 1),
        sent,
        match="reply does not match our request",
        code="MISMATCH",
    )
    # a spoofed KoD that does not match our request is a mismatch, not a reason to stop
    _raises(
        sntp.parse_reply, _reply(sent + 1, stratum=0, ref_id=b"DENY"), sent, match="match", code="MISMATCH"
    )


@pytest.mark.parametrize(
    ("changes", "match", "code"),
    [
        ({"mode": 3}, "mode 3", "MALFORMED"),
        ({"mode": 6}, "mode 6", "MALFORMED"),
        ({"version": 0}, "version 0", "MALFORMED"),
        ({"version": 5}, "version 5", "MALFORMED"),
        ({"stratum": 16}, "stratum 16", "UNSYNCHRONISED"),
        ({"leap": 3}, "leap indicator 3", "UNSYNCHRONISED"),
        ({"tx_ts": 0}, "zero transmit", "MALFORMED"),
    ],
)
def test_reply_refusals(changes: dict[str, int], match: str, code: str) -> None:
    sent = sntp.to_ntp(T1)
    _raises(sntp.parse_reply, _reply(sent, **changes), sent, match=match, code=code)


def test_broadcast_mode_and_old_versions_are_accepted() -> None:
    sent = sntp.to_ntp(T1)
    assert sntp.parse_reply(_reply(sent, mode=5, version=1, leap=1), sent).mode == 5


@settings(max_examples=300)
@given(st.binary(max_size=80), st.integers(0, 2**64 - 1))
def test_property_arbitrary_bytes_raise_only_wire_error(data: bytes, sent: int) -> None:
    for call in (
        lambda: sntp.decode(data),
        lambda: sntp.parse_reply(data, sent),
        lambda: sntp.build_reply(data, T1, T1 + 0.001),
    ):
        try:
            call()
        except WireError as exc:
            assert exc.stage is Stage.TIME
