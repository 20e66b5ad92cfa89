"""Shared text-ingest pieces (logdist.wire.records): bulk block building, stream ids, timestamp parsing."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logdist.wire.batch import FLAG_CRC, MessageBlock
from logdist.wire.records import (
    StreamIds,
    build_block,
    encode_attributes,
    new_stream_id,
    ns_to_rfc3339,
    number_to_ns,
    parse_rfc3339,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
attrs_st = st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4)


@given(st.lists(st.tuples(st.binary(max_size=64), st.integers(0, 255), attrs_st), max_size=40), st.integers(0, 2**63))
def test_build_block_round_trips_and_validates(rows: list[tuple[bytes, int, dict[str, str]]], ts: int) -> None:
    ids = StreamIds(stream=12345, next_seq=7)
    payloads = [p for p, _, _ in rows]
    block = build_block(ids, ts, payloads, [s for _, s, _ in rows], [encode_attributes(a) for _, _, a in rows])
    again = MessageBlock.from_buffer(block.count, block.encode())  # what a receiver checks
    assert again.checksum_failures() == 0
    messages = list(again.messages())
    assert [m.payload for m in messages] == payloads
    assert [m.severity for m in messages] == [s for _, s, _ in rows]
    assert [m.attributes for m in messages] == [a for _, _, a in rows]
    assert [m.seq for m in messages] == list(range(7, 7 + len(rows)))
    assert {m.stream for m in messages} <= {12345}
    assert {m.ts_ns for m in messages} <= {ts}
    assert ids.next_seq == 7 + len(rows)
    if rows:
        assert set(again.array["flags"].tolist()) == {FLAG_CRC}
        assert again.array["crc"].tolist() == [zlib.crc32(p) for p in payloads]


def test_stream_ids_are_random_63_bit() -> None:
    ids = {new_stream_id() for _ in range(100)}
    assert len(ids) == 100 and all(0 <= i < 2**63 for i in ids)
    a = StreamIds()
    assert a.take(3) == 0 and a.take(2) == 3 and a.next_seq == 5


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(0, 999_999_999),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
)
def test_parse_rfc3339_is_exact_to_the_nanosecond(naive: datetime, nanos: int, offset_min: int) -> None:
    naive = naive.replace(microsecond=0)
    tz = timezone(timedelta(minutes=offset_min))
    aware = naive.replace(tzinfo=tz)
    digits = f"{nanos:09d}".rstrip("0")
    stamp = naive.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0") + (f".{digits}" if digits else "")
    sign = "+" if offset_min >= 0 else "-"
    stamp += "Z" if offset_min == 0 else f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    expected = ((aware - EPOCH) // timedelta(seconds=1)) * 1_000_000_000 + nanos
    assert parse_rfc3339(stamp) == expected


@given(st.integers(0, 2**63 - 1))
def test_ns_to_rfc3339_round_trips(ns: int) -> None:
    assert parse_rfc3339(ns_to_rfc3339(ns)) == ns


def test_parse_rfc3339_refuses_invalid_timestamps() -> None:
    for bad in (
        "2024-05-01", "2024-05-01T12:00:00", "2024-02-30T00:00:00Z", "2024-05-01T24:00:00Z", "2024-05-01T12:61:00Z",
        "2024-05-01T12:00:00.Z", "2024-05-01T12:00:00.1234567890Z", "2024-05-01T12:00:00+24:00", "yesterday", "",
        "\uff12\uff10\uff12\uff14-05-01T12:00:00Z", "2024-05-01T12:00:00Zjunk",
    ):  # fmt: skip
        with pytest.raises(ValueError):
            parse_rfc3339(bad)
    assert parse_rfc3339("1970-01-01T00:00:00Z") == 0
    assert parse_rfc3339("1970-01-01t01:00:00.5+01:00") == 500_000_000
    assert parse_rfc3339("2016-12-31T23:59:60Z") == parse_rfc3339("2017-01-01T00:00:00Z")  # a leap second


@given(st.text(max_size=40))
def test_parse_rfc3339_raises_only_value_error(text: str) -> None:
    try:
        assert parse_rfc3339(text) >= -(10**20)
    except ValueError:
        pass


def test_number_to_ns_takes_seconds_or_nanoseconds() -> None:
    assert number_to_ns(0) == 0
    assert number_to_ns(1_700_000_000) == 1_700_000_000 * 10**9
    assert number_to_ns(1_700_000_000.25) == 1_700_000_000_250_000_000
    assert number_to_ns(1_700_000_000_123_456_789) == 1_700_000_000_123_456_789
    for bad in (-1, 1_700_000_000_000, 1_700_000_000_000_000, 2**63, 1e300):
        with pytest.raises(ValueError):
            number_to_ns(bad)
