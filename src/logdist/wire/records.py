"""Shared pieces of the text ingest codecs (HTTP JSON, lines, syslog): stream ids, bulk block building,
attribute encoding and timestamp parsing.

Every decoded request or chunk becomes **one** :class:`MessageBlock`, built column by column with numpy.
"""

from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import chain

import msgspec
import numpy as np

from logdist.wire.batch import FLAG_CRC, HEADER_DTYPE, MessageBlock
from logdist.wire.errors import ProtocolError

_attr_encoder = msgspec.msgpack.Encoder()
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH = datetime(1970, 1, 1)
_NS = 1_000_000_000
MAX_UNIX_SECONDS = 10**11  # below: unix seconds (up to year ~5138)
MIN_UNIX_NS = 10**17  # from here on: unix nanoseconds (1973-03-03 on); in between is ambiguous (milliseconds?)
_MAX_U63 = 2**63 - 1

_DATE_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})", re.ASCII)
_FRACTION_OFFSET = re.compile(r"(?:\.([0-9]{1,9}))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))", re.ASCII)
_seconds_cache: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" -> unix seconds before the UTC offset
_SECONDS_CACHE_SIZE = 4096


def new_stream_id() -> int:
    """A random 63-bit stream id."""
    return secrets.randbits(63)


@dataclass(slots=True)
class StreamIds:
    """One message stream: its random id and the next sequence number to hand out."""

    stream: int = field(default_factory=new_stream_id)
    next_seq: int = 0

    def take(self, count: int) -> int:
        """Reserve ``count`` consecutive sequence numbers; the first one."""
        first = self.next_seq
        self.next_seq += count
        return first


@dataclass(frozen=True, slots=True)
class Decoded:
    """What a stream decoder produced from one chunk: a block of whole messages, and/or the error that ended
    the stream (the messages before the error are still in ``block``)."""

    block: MessageBlock | None = None
    error: ProtocolError | None = None


def encode_attributes(attributes: dict[str, str]) -> bytes:
    """Attributes as carried in a block body (msgpack map; empty -> no bytes)."""
    return _attr_encoder.encode(attributes) if attributes else b""


def build_block(
    ids: StreamIds, ts_ns: int, payloads: list[bytes], severities: list[int] | int, attributes: list[bytes]
) -> MessageBlock:
    """One block of ``len(payloads)`` messages of stream ``ids`` stamped ``ts_ns``, with CRC-32 of each payload.

    ``attributes`` holds each message's encoded attributes (``b""`` for none).
    """
    count = len(payloads)
    array = np.zeros(count, dtype=HEADER_DTYPE)
    first = ids.take(count)
    array["stream"] = ids.stream
    array["seq"] = np.arange(first, first + count, dtype=np.uint64)
    array["ts"] = ts_ns
    array["severity"] = severities
    array["flags"] = FLAG_CRC
    crc32 = zlib.crc32
    array["crc"] = np.fromiter(map(crc32, payloads), dtype=np.uint32, count=count)
    array["attr_len"] = np.fromiter(map(len, attributes), dtype=np.uint32, count=count)
    array["length"] = np.fromiter(map(len, payloads), dtype=np.uint32, count=count)
    bodies = b"".join(chain.from_iterable(zip(attributes, payloads, strict=True)))
    return MessageBlock(count, array.tobytes(), bodies, array)


def parse_rfc3339(text: str) -> int:
    """An RFC 3339 timestamp (``2024-05-01T12:00:00.123456789+02:00``) -> unix nanoseconds, exactly.

    Raises ValueError naming what is wrong. The date and time of day are cached per second (emitters send runs
    of nearby timestamps), so most calls cost one dict lookup and one small regex match.
    """
    head = text[:19]
    seconds = _seconds_cache.get(head)
    if seconds is None:
        seconds = _date_time_seconds(head, text)
        if len(_seconds_cache) >= _SECONDS_CACHE_SIZE:
            _seconds_cache.clear()
        _seconds_cache[head] = seconds
    match = _FRACTION_OFFSET.fullmatch(text, 19)
    if match is None:
        raise ValueError(f"{text[:64]!r} is not an RFC 3339 timestamp (like 2024-05-01T12:00:00.5Z)")
    fraction, sign, off_h, off_m = match.groups()
    if sign is not None:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            raise ValueError(f"{text[:64]!r}: no such UTC offset")
        offset = oh * 3600 + om * 60
        seconds += -offset if sign == "+" else offset
    ns = seconds * _NS
    if fraction:
        ns += int(fraction.ljust(9, "0"))
    return ns


def _date_time_seconds(head: str, text: str) -> int:
    match = _DATE_TIME.fullmatch(head)
    if match is None:
        raise ValueError(f"{text[:64]!r} is not an RFC 3339 timestamp (like 2024-05-01T12:00:00.5Z)")
    year, month, day, hour, minute, second = map(int, match.groups())
    try:
        days = date(year, month, day).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise ValueError(f"{text[:64]!r}: no such date") from None
    if hour > 23 or minute > 59 or second > 60:  # 60: a leap second
        raise ValueError(f"{text[:64]!r}: no such time of day")
    return days * 86400 + hour * 3600 + minute * 60 + second


def number_to_ns(value: int | float) -> int:
    """A unix timestamp number -> unix nanoseconds: seconds below 1e11, nanoseconds from 1e17 on.

    Raises ValueError for negative numbers and for the ambiguous range in between (milliseconds, microseconds).
    """
    if value < 0:
        raise ValueError(f"timestamp {value} is negative")
    if value < MAX_UNIX_SECONDS:
        if isinstance(value, int):
            return value * _NS
        whole = int(value)
        return whole * _NS + round((value - whole) * _NS)
    if MIN_UNIX_NS <= value <= _MAX_U63:
        return int(value)
    raise ValueError(
        f"timestamp {value} is neither unix seconds (< 1e11) nor unix nanoseconds (1e17 .. 2^63-1); "
        "milliseconds and microseconds are not accepted"
    )


def ns_to_rfc3339(ns: int) -> str:
    """Unix nanoseconds -> RFC 3339 text in UTC, with as many fraction digits as needed (up to 9)."""
    seconds, fraction = divmod(ns, _NS)
    text = (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"
