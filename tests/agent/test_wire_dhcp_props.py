"""Property tests for long (RFC 3396), overloaded (option 52) and duplicated DHCP options."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.stages import WireError
from agent.wire import dhcp

CODES = st.integers(min_value=1, max_value=254).filter(lambda c: c not in (52, 53))


def _tlv(code: int, value: bytes) -> bytes:
    out = b""
    for i in range(0, max(len(value), 1), 255):
        chunk = value[i : i + 255]
        out += bytes([code, len(chunk)]) + chunk
    return out


@given(st.dictionaries(CODES, st.binary(min_size=1, max_size=700), min_size=1, max_size=6))
def test_long_values_split_and_rejoin(values: dict[int, bytes]) -> None:
    options: tuple[tuple[int, bytes], ...] = ((53, b"\x05"),)
    for code, value in values.items():
        options = dhcp.with_option(options, code, value)
    msg = dhcp.decode(dhcp.encode(dhcp.DhcpMessage(op=2, options=options)))
    for code, value in values.items():
        assert msg.option(code) == value
    assert all(len(v) <= 255 for _, v in msg.options)


@given(
    st.binary(min_size=1, max_size=60),
    st.binary(min_size=1, max_size=120),
    st.binary(min_size=1, max_size=50),
    st.sampled_from([1, 2, 3]),
)
def test_overloaded_fields_continue_an_option(
    head: bytes, in_file: bytes, in_sname: bytes, overload: int
) -> None:
    """Option 43 split over the options field, ``file`` (overload 1/3) and ``sname`` (2/3), in that order."""
    file_field = (_tlv(43, in_file) + b"\xff").ljust(128, b"\x00") if overload & 1 else bytes(128)
    sname_field = (_tlv(43, in_sname) + b"\xff").ljust(64, b"\x00") if overload & 2 else bytes(64)
    msg = dhcp.DhcpMessage(
        op=2, sname=sname_field, file=file_field, options=((53, b"\x05"), (52, bytes([overload])), (43, head))
    )
    got = dhcp.decode(dhcp.encode(msg)).option(43)
    expected = head + (in_file if overload & 1 else b"") + (in_sname if overload & 2 else b"")
    assert got == expected


@given(st.lists(st.tuples(CODES, st.binary(max_size=20)), max_size=12), st.binary(max_size=64))
def test_duplicates_and_trailing_garbage_never_escape_as_other_errors(
    pairs: list[tuple[int, bytes]], tail: bytes
) -> None:
    body = b"".join(bytes([c, len(v)]) + v for c, v in pairs)
    raw = dhcp.encode(dhcp.DhcpMessage(op=2, options=((53, b"\x05"),)))[:240] + body + tail
    try:
        msg = dhcp.decode(raw)
        dhcp.parse_inform_answer(msg)
    except WireError:
        pass
