"""Property tests of the native protocol codec (logdist.wire.native, batch, compression).

The contract under test: every frame type round-trips; the decoder yields the same events however the
byte stream is chunked; malformed input of any kind raises ``ProtocolError`` and nothing else, without
buffering or allocating memory beyond the frame limits; and ``MessageBlock`` operations keep messages intact.
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from itertools import pairwise

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from logdist.model import Message
from logdist.wire.batch import FLAG_CRC, HEADER_DTYPE, KNOWN_FLAGS, MessageBlock
from logdist.wire.compression import SUPPORTED, compress, decompress, negotiate
from logdist.wire.errors import ErrorCode, ProtocolError
from logdist.wire.native import (
    _MAX_CONTROL_FRAME,
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    ROLES,
    Ack,
    AckStatus,
    Batch,
    Error,
    Event,
    FrameDecoder,
    FrameType,
    Heartbeat,
    Hello,
    Welcome,
    decode_frames,
    encode_ack,
    encode_batch,
    encode_batch_parts,
    encode_error,
    encode_heartbeat,
    encode_hello,
    encode_welcome,
)

U64 = 2**64 - 1
CODECS = [None, *SUPPORTED]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MEDIUM = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------------------------------

short_text = st.text(max_size=12)
messages_st = st.builds(
    Message,
    payload=st.one_of(st.just(b""), st.binary(max_size=64), st.binary(min_size=200, max_size=600)),
    severity=st.integers(0, 255),
    ts_ns=st.integers(0, U64),
    stream=st.one_of(st.integers(0, U64), st.sampled_from([0, 1, U64])),
    seq=st.one_of(st.integers(0, U64), st.sampled_from([0, 1, U64])),
    attributes=st.dictionaries(short_text, st.text(max_size=24), max_size=4),
)
message_lists = st.lists(messages_st, max_size=12)
codecs = st.sampled_from(CODECS)
seqs = st.integers(0, U64)

hellos = st.builds(
    Hello,
    version=st.integers(0, 2**31),
    role=st.sampled_from(sorted(ROLES)),
    client_id=short_text,
    compression=st.lists(st.sampled_from(["zstd", "lz4", "gzip", ""]), max_size=3),
    token=st.none() | short_text,
    options=st.dictionaries(short_text, short_text, max_size=3),
)
welcomes = st.builds(
    Welcome,
    version=st.integers(0, 2**31),
    server_id=short_text,
    compression=st.none() | st.sampled_from(["zstd", "lz4"]),
    max_frame=st.integers(0, 2**63 - 1),
    options=st.dictionaries(short_text, short_text, max_size=3),
)
acks = st.builds(Ack, seq=seqs, status=st.sampled_from(AckStatus))
heartbeats = st.builds(Heartbeat, token=st.integers(0, U64), pong=st.booleans())
errors = st.builds(Error, code=st.sampled_from(ErrorCode), reason=st.text(max_size=200))


def encode_event(event: object) -> bytes:
    if isinstance(event, Hello):
        return encode_hello(event)
    if isinstance(event, Welcome):
        return encode_welcome(event)
    if isinstance(event, Ack):
        return encode_ack(event.seq, event.status)
    if isinstance(event, Heartbeat):
        return encode_heartbeat(event.token, event.pong)
    if isinstance(event, Error):
        return encode_error(event.code, event.reason)
    raise AssertionError(event)


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, object]:
    """One encoded frame of any type, with its expected (normalised) event."""
    kind = draw(st.sampled_from(["batch", "hello", "welcome", "ack", "heartbeat", "error"]))
    if kind == "batch":
        msgs = draw(st.lists(messages_st, max_size=5))
        block = MessageBlock.from_messages(msgs, checksums=draw(st.booleans()))
        seq = draw(seqs)
        return encode_batch(seq, block, draw(codecs)), ("batch", seq, block.count, block.encode())
    event = draw({"hello": hellos, "welcome": welcomes, "ack": acks, "heartbeat": heartbeats, "error": errors}[kind])
    return encode_event(event), event


streams = st.lists(frames(), max_size=6)


def norm(event: Event) -> object:
    if isinstance(event, Batch):
        return ("batch", event.seq, event.block.count, event.block.encode())
    return event


def join(stream: list[tuple[bytes, object]]) -> tuple[bytes, list[object]]:
    return b"".join(data for data, _ in stream), [expected for _, expected in stream]


def feed_chunks(data: bytes, cuts: list[int], max_frame: int = DEFAULT_MAX_FRAME) -> list[Event]:
    decoder = FrameDecoder(max_frame)
    events: list[Event] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        events += decoder.feed(data[start:cut])
        start = cut
    assert decoder.buffered == 0
    return events


def exercise(events: list[Event]) -> None:
    """Use every decoded batch the way receivers do; anything malformed must be a ProtocolError."""
    for event in events:
        if isinstance(event, Batch):
            block = event.block
            block.checksum_failures()
            for i in range(block.count):
                block.payload(i)
            list(block.messages())
            if block.count:
                block.slice(0, block.count // 2 + 1)
                block.take(np.arange(block.count)[::-1])


def batch_frame(body: bytes) -> bytes:
    return struct.pack("<IB", len(body) + 1, FrameType.BATCH) + body


def raw_batch(seq: int, count: int, codec_id: int, data: bytes) -> bytes:
    return batch_frame(struct.pack("<QIB", seq, count, codec_id) + data)


def expect_error(data: bytes, code: ErrorCode, max_frame: int = DEFAULT_MAX_FRAME) -> ProtocolError:
    decoder = FrameDecoder(max_frame)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(data)
    assert info.value.code == code, info.value
    return info.value


# -- round trips -----------------------------------------------------------------------------------


@MEDIUM
@given(msgs=message_lists, seq=seqs, codec=codecs, checksums=st.booleans())
def test_batch_round_trip(msgs: list[Message], seq: int, codec: str | None, checksums: bool) -> None:
    block = MessageBlock.from_messages(msgs, checksums=checksums)
    (event,) = decode_frames(encode_batch(seq, block, codec))
    assert isinstance(event, Batch)
    assert event.seq == seq
    assert event.block.count == len(msgs)
    assert event.block.encode() == block.encode()
    assert list(event.block.messages()) == msgs
    assert [event.block.payload(i) for i in range(len(msgs))] == [m.payload for m in msgs]
    assert event.block.checksum_failures() == 0
    assert int(np.count_nonzero(event.block.array["flags"] & FLAG_CRC)) == (len(msgs) if checksums else 0)


@FAST
@given(msgs=message_lists, seq=seqs)
def test_batch_parts_equal_encode_batch(msgs: list[Message], seq: int) -> None:
    block = MessageBlock.from_messages(msgs)
    assert b"".join(encode_batch_parts(seq, block.count, block.headers, block.bodies)) == encode_batch(seq, block)


@MEDIUM
@given(event=st.one_of(hellos, welcomes, acks, heartbeats, errors))
def test_control_frame_round_trip(event: object) -> None:
    assert decode_frames(encode_event(event)) == [event]


@FAST
@given(code=st.sampled_from(ErrorCode), reason=st.text(min_size=200, max_size=1500))
def test_error_reason_is_cut_to_1000_bytes_at_a_character_boundary(code: ErrorCode, reason: str) -> None:
    (event,) = decode_frames(encode_error(code, reason))
    assert isinstance(event, Error)
    assert event.code == code
    assert len(event.reason.encode()) <= 1000
    assert reason.startswith(event.reason)
    assert len(reason.encode()) <= 1000 or len(event.reason.encode()) > 996


def test_unknown_error_code_decodes_as_unknown() -> None:
    (event,) = decode_frames(struct.pack("<IBH", 6, FrameType.ERROR, 999) + b"why")
    assert event == Error(ErrorCode.UNKNOWN, "why")


def test_hello_ignores_unknown_fields_and_fills_defaults() -> None:
    body = b'{"role":"emitter","client_id":"c","future":{"x":[1,2]}}'
    (event,) = decode_frames(struct.pack("<IB", len(body) + 1, FrameType.HELLO) + body)
    assert event == Hello(role="emitter", client_id="c")
    assert event.version == PROTOCOL_VERSION


# -- chunking --------------------------------------------------------------------------------------


@MEDIUM
@given(stream=streams, data=st.data())
def test_any_chunking_gives_the_same_events(stream: list[tuple[bytes, object]], data: st.DataObject) -> None:
    raw, expected = join(stream)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert [norm(e) for e in feed_chunks(raw, cuts)] == expected


def test_split_at_every_point_and_byte_by_byte() -> None:
    msgs = [
        Message(payload=bytes(range(i * 7 % 256)) * 3, severity=i, seq=i, attributes={"k": str(i)}) for i in range(6)
    ]
    block = MessageBlock.from_messages(msgs)
    events: list[object] = [
        Hello(role="emitter", client_id="e1", compression=["zstd", "lz4"]),
        Welcome(server_id="s", compression="zstd"),
        Heartbeat(7),
        Heartbeat(7, pong=True),
        Ack(3, AckStatus.RETRY),
        Error(ErrorCode.SHUTTING_DOWN, "bye"),
    ]
    raw = b"".join(encode_event(e) for e in events)
    expected = [norm(e) for e in events]
    for codec in CODECS:
        raw += encode_batch(9, block, codec)
        expected.append(("batch", 9, block.count, block.encode()))
    raw += encode_batch(10, MessageBlock.from_messages([]))
    expected.append(("batch", 10, 0, b""))
    for cut in range(len(raw) + 1):
        assert [norm(e) for e in feed_chunks(raw, [cut])] == expected, cut
    assert [norm(e) for e in feed_chunks(raw, list(range(len(raw))))] == expected


def test_incomplete_frame_waits_and_decode_frames_refuses_leftovers() -> None:
    frame = encode_ack(5)
    decoder = FrameDecoder()
    assert decoder.feed(frame[:-1]) == []
    assert decoder.buffered == len(frame) - 1
    assert decoder.feed(frame[-1:]) == [Ack(5)]
    assert decoder.buffered == 0
    with pytest.raises(ProtocolError) as info:
        decode_frames(frame + frame[:3])
    assert info.value.code == ErrorCode.BAD_FRAME


# -- malformed input -------------------------------------------------------------------------------


def decode_only_protocol_errors(data: bytes, cuts: list[int], max_frame: int) -> None:
    """Decode ``data`` fed in pieces and use every batch; any failure must be a ProtocolError."""
    decoder = FrameDecoder(max_frame)
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        try:
            events = decoder.feed(data[start:cut])
        except ProtocolError as exc:
            assert isinstance(exc.code, ErrorCode)
            with pytest.raises(ProtocolError):
                decoder.feed(encode_ack(1))  # a failed decoder stays failed
            return
        start = cut
        try:
            exercise(events)
        except ProtocolError as exc:
            assert exc.code == ErrorCode.BAD_BATCH  # invalid attributes, found when messages are decoded
        assert decoder.buffered <= max(max_frame, _MAX_CONTROL_FRAME) + 4


@MANY
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=3))
def test_garbage_raises_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    decode_only_protocol_errors(data, [c for c in cuts if c <= len(data)], 4096)


@st.composite
def plausible_batch_bodies(draw: st.DrawFn) -> bytes:
    """BATCH bodies that get past the first checks: headers with small sizes, random flags and bodies."""
    count = draw(st.integers(0, 4))
    array = np.zeros(count, dtype=HEADER_DTYPE)
    for i in range(count):
        array["flags"][i] = draw(st.sampled_from([0, 1, 2, 255]))
        array["crc"][i] = draw(st.integers(0, 2**32 - 1))
        array["attr_len"][i] = draw(st.integers(0, 12))
        array["length"][i] = draw(st.integers(0, 12))
    size = int(array["attr_len"].sum() + array["length"].sum())
    size = max(0, size + draw(st.sampled_from([0, 0, 0, -1, 1, 5])))
    bodies = draw(st.binary(min_size=size, max_size=size))
    data = array.tobytes() + bodies
    codec_id = draw(st.sampled_from([0, 0, 1, 2, 3, 200]))
    if codec_id in (1, 2):
        data = compress({1: "zstd", 2: "lz4"}[codec_id], data)
    declared = draw(st.sampled_from([count, count, count + 1, max(0, count - 1), 2**32 - 1]))
    return struct.pack("<QIB", draw(seqs), declared, codec_id) + data


@MANY
@given(
    frame_type=st.integers(0, 255),
    body=st.one_of(st.binary(max_size=120), plausible_batch_bodies()),
    max_frame=st.sampled_from([64, 4096, DEFAULT_MAX_FRAME]),
)
def test_random_bodies_of_every_frame_type_raise_only_protocol_errors(
    frame_type: int, body: bytes, max_frame: int
) -> None:
    frame = struct.pack("<IB", len(body) + 1, frame_type) + body
    decode_only_protocol_errors(frame, [], max_frame)


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]),
        st.integers(0, 2**16),
        st.integers(0, 7),
        st.binary(min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, ops: list[tuple[str, int, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for op, where, bit, blob in ops:
        pos = where % (len(buf) + 1)
        if op == "flip" and buf:
            buf[pos % len(buf)] ^= 1 << bit
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = blob
        elif op == "delete":
            del buf[pos : pos + bit + 1]
        elif op == "overwrite":
            buf[pos : pos + len(blob)] = blob
    return bytes(buf)


@MANY
@given(stream=streams, ops=mutations, cuts=st.lists(st.integers(0, 4000), max_size=3))
def test_mutated_streams_raise_only_protocol_errors(
    stream: list[tuple[bytes, object]], ops: list[tuple[str, int, int, bytes]], cuts: list[int]
) -> None:
    data = mutate(join(stream)[0], ops)
    decode_only_protocol_errors(data, [c for c in cuts if c <= len(data)], 64 * 1024)


@FAST
@given(stream=streams, ops=mutations)
def test_mutated_streams_stay_within_memory_bounds(
    stream: list[tuple[bytes, object]], ops: list[tuple[str, int, int, bytes]]
) -> None:
    data = mutate(join(stream)[0], ops)
    tracemalloc.start()
    try:
        decode_only_protocol_errors(data, [], 64 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024 + 64 * len(data), peak


@pytest.mark.parametrize("frame_type", [FrameType.HELLO, FrameType.WELCOME])
@pytest.mark.parametrize("bad", [b"\x80", b"\xc2", b"\xed\xa0\x80", b"\xff"])
def test_invalid_utf8_in_handshake_json_is_a_bad_handshake(frame_type: FrameType, bad: bytes) -> None:
    field = b"client_id" if frame_type == FrameType.HELLO else b"server_id"
    body = b'{"role":"emitter","' + field + b'":"' + bad + b'"}'
    expect_error(struct.pack("<IB", len(body) + 1, frame_type) + body, ErrorCode.BAD_HANDSHAKE)


@pytest.mark.parametrize("attrs", [b"\x81\xa1\x80\xa1a", b"\x81\xa1a\xa2\xc3(", b"\x81\xa1a\x01", b"\x91\xa1a"])
def test_invalid_attributes_are_a_bad_batch_when_decoded(attrs: bytes) -> None:
    array = np.zeros(1, dtype=HEADER_DTYPE)
    array["attr_len"] = len(attrs)
    array["length"] = 2
    (event,) = decode_frames(raw_batch(1, 1, 0, array.tobytes() + attrs + b"hi"))
    assert isinstance(event, Batch) and event.block.payload(0) == b"hi"  # the hot path never parses attributes
    with pytest.raises(ProtocolError) as info:
        list(event.block.messages())
    assert info.value.code == ErrorCode.BAD_BATCH


def test_deeply_nested_json_is_a_bad_handshake() -> None:
    for frame_type in (FrameType.HELLO, FrameType.WELCOME):
        body = b'{"role":"emitter","client_id":"c","server_id":"s","x":' + b"[" * 20000 + b"]" * 20000 + b"}"
        expect_error(struct.pack("<IB", len(body) + 1, frame_type) + body, ErrorCode.BAD_HANDSHAKE)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (struct.pack("<IB", 0, 1), ErrorCode.BAD_FRAME),  # length below 1 (a 4-byte header is enough)
        (struct.pack("<IB", 1, 0), ErrorCode.BAD_FRAME),  # unknown frame type
        (struct.pack("<IB", 1, 77), ErrorCode.BAD_FRAME),
        (struct.pack("<IBQ", 9, FrameType.ACK, 1), ErrorCode.BAD_FRAME),  # ACK body too short
        (struct.pack("<IBQBB", 11, FrameType.ACK, 1, 0, 0), ErrorCode.BAD_FRAME),  # ... too long
        (struct.pack("<IBQB", 10, FrameType.ACK, 1, 3), ErrorCode.BAD_FRAME),  # unknown status
        (struct.pack("<IBBQ", 10, FrameType.HEARTBEAT, 2, 1), ErrorCode.BAD_FRAME),  # unknown kind
        (struct.pack("<IBB", 2, FrameType.HEARTBEAT, 0), ErrorCode.BAD_FRAME),
        (struct.pack("<IBB", 2, FrameType.ERROR, 0), ErrorCode.BAD_FRAME),  # no 2-byte code
        (struct.pack("<IB", 3, FrameType.HELLO) + b"{}", ErrorCode.BAD_HANDSHAKE),
        (encode_hello(Hello(role="spy", client_id="x")), ErrorCode.BAD_HANDSHAKE),
        (struct.pack("<IB", 3, FrameType.HELLO) + b"\xff\xfe", ErrorCode.BAD_HANDSHAKE),
        (struct.pack("<IB", 3, FrameType.WELCOME) + b"{}", ErrorCode.BAD_HANDSHAKE),  # no server_id
        (batch_frame(b"\x00" * 12), ErrorCode.BAD_BATCH),  # shorter than the 13-byte batch header
        (raw_batch(1, 0, 3, b""), ErrorCode.BAD_BATCH),  # unknown codec id
        (raw_batch(1, 2**32 - 1, 0, b""), ErrorCode.BAD_BATCH),  # absurd count, no headers
        (raw_batch(1, 0, 0, b"x"), ErrorCode.BAD_BATCH),  # stray bytes in an empty batch
        (raw_batch(1, 0, 1, b""), ErrorCode.BAD_BATCH),  # empty "zstd" data
        (raw_batch(1, 0, 2, b""), ErrorCode.BAD_BATCH),  # empty "lz4" data
    ],
)
def test_malformed_frames_get_the_right_code(frame: bytes, code: ErrorCode) -> None:
    expect_error(frame, code)


# -- limits ----------------------------------------------------------------------------------------


@MEDIUM
@given(frame_type=st.integers(0, 255), size=st.integers(_MAX_CONTROL_FRAME + 1, 2**32 - 1))
def test_oversized_control_frames_are_refused_by_their_header(frame_type: int, size: int) -> None:
    assume(frame_type != FrameType.BATCH or size > DEFAULT_MAX_FRAME)
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        decoder.feed(struct.pack("<IB", size, frame_type))  # the 5-byte header alone suffices
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


@MEDIUM
@given(max_frame=st.integers(2, 2**32 - 2), excess=st.integers(1, 2**20))
def test_batch_frames_are_limited_by_max_frame(max_frame: int, excess: int) -> None:
    size = min(max_frame + excess, 2**32 - 1)
    expect_error(struct.pack("<IB", size, FrameType.BATCH), ErrorCode.FRAME_TOO_LARGE, max_frame)
    decoder = FrameDecoder(max_frame)  # exactly at the limit: accepted, waits for the body
    assert decoder.feed(struct.pack("<IB", max_frame, FrameType.BATCH)) == []
    assert decoder.buffered == 5


def test_control_limit_is_inclusive_and_independent_of_max_frame() -> None:
    body = struct.pack("<H", ErrorCode.INTERNAL) + b"x" * (_MAX_CONTROL_FRAME - 3)
    frame = struct.pack("<IB", len(body) + 1, FrameType.ERROR) + body
    assert len(frame) - 4 == _MAX_CONTROL_FRAME
    (event,) = FrameDecoder(max_frame=100).feed(frame)
    assert isinstance(event, Error) and len(event.reason) == _MAX_CONTROL_FRAME - 3
    body += b"x"
    expect_error(struct.pack("<IB", len(body) + 1, FrameType.ERROR) + body, ErrorCode.FRAME_TOO_LARGE, 2**30)


def test_four_gigabyte_frame_is_refused_before_buffering() -> None:
    tracemalloc.start()
    try:
        decoder = FrameDecoder()
        with pytest.raises(ProtocolError) as info:
            decoder.feed(struct.pack("<IB", 2**32 - 1, FrameType.BATCH) + b"\0" * 100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert peak < 1024 * 1024


def test_announced_length_is_not_preallocated() -> None:
    tracemalloc.start()
    try:
        decoder = FrameDecoder()
        assert decoder.feed(struct.pack("<IB", DEFAULT_MAX_FRAME, FrameType.BATCH) + b"\0" * 100) == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoder.buffered == 105
    assert peak < 1024 * 1024


def test_encoded_batch_above_max_frame_is_refused() -> None:
    block = MessageBlock.from_messages([Message(payload=b"x" * 5000)])
    expect_error(encode_batch(1, block), ErrorCode.FRAME_TOO_LARGE, max_frame=4096)


@pytest.mark.parametrize("codec", SUPPORTED)
def test_decompression_bomb_is_refused(codec: str) -> None:
    block = MessageBlock.from_messages([Message(payload=b"\0" * (4 * 1024 * 1024))])
    frame = encode_batch(1, block, codec)
    assert len(frame) < 64 * 1024  # the frame itself is well within the limit ...
    expect_error(frame, ErrorCode.FRAME_TOO_LARGE, max_frame=1024 * 1024)  # ... its content is not
    (event,) = decode_frames(frame, max_frame=8 * 1024 * 1024)
    assert isinstance(event, Batch) and event.block.payload(0) == b"\0" * (4 * 1024 * 1024)


def test_streamed_zstd_bomb_without_content_size_is_refused() -> None:
    compressor = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    data = compressor.compress(b"\0" * (4 * 1024 * 1024)) + compressor.flush()
    with pytest.raises(ProtocolError) as info:
        decompress("zstd", data, 1024 * 1024)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert decompress("zstd", data, 4 * 1024 * 1024) == b"\0" * (4 * 1024 * 1024)


def test_zstd_frame_announcing_4_gb_is_refused_without_allocating() -> None:
    # magic, descriptor (8-byte content size, single segment), content size 4 GiB, one empty last raw block
    data = b"\x28\xb5\x2f\xfd\xe0" + struct.pack("<Q", 4 * 2**30) + b"\x01\x00\x00"
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            decode_frames(raw_batch(1, 1, 1, data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert peak < 1024 * 1024


@pytest.mark.parametrize("codec", SUPPORTED)
def test_truncated_or_padded_compressed_data_is_a_bad_batch(codec: str) -> None:
    block = MessageBlock.from_messages([Message(payload=bytes(range(256)) * 8, attributes={"a": "b"})])
    data = compress(codec, block.encode())
    for bad in (data[:-1], data[: len(data) // 2], data + b"\0", data + data):
        expect_error(raw_batch(1, 1, {"zstd": 1, "lz4": 2}[codec], bad), ErrorCode.BAD_BATCH)


@FAST
@given(data=st.binary(max_size=200), codec=st.sampled_from(SUPPORTED))
def test_decompressing_garbage_raises_only_protocol_errors(data: bytes, codec: str) -> None:
    magic = b"\x28\xb5\x2f\xfd" if codec == "zstd" else b"\x04\x22\x4d\x18"
    for candidate in (data, magic + data):
        try:
            assert len(decompress(codec, candidate, 4096)) <= 4096
        except ProtocolError as exc:
            assert exc.code in (ErrorCode.BAD_BATCH, ErrorCode.FRAME_TOO_LARGE)


@FAST
@given(offered=st.lists(st.sampled_from(["zstd", "lz4", "gzip", "br"]), max_size=4))
def test_negotiation_picks_the_first_offered_codec_the_server_accepts(offered: list[str]) -> None:
    chosen = negotiate(offered, SUPPORTED)
    accepted = [name for name in offered if name in SUPPORTED]
    assert chosen == (accepted[0] if accepted else None)


# -- batch validation ------------------------------------------------------------------------------


@FAST
@given(msgs=st.lists(messages_st, min_size=1, max_size=6), data=st.data(), codec=codecs)
def test_headers_declaring_more_body_bytes_than_present_is_bad_batch(
    msgs: list[Message], data: st.DataObject, codec: str | None
) -> None:
    msgs[0].payload += b"p"  # at least one body byte to leave out
    block = MessageBlock.from_messages(msgs)
    missing = data.draw(st.integers(1, len(block.bodies)))
    raw = block.encode()[:-missing]
    if codec is not None:
        raw = compress(codec, raw)
    expect_error(raw_batch(1, block.count, {None: 0, "zstd": 1, "lz4": 2}[codec], raw), ErrorCode.BAD_BATCH)


@FAST
@given(msgs=st.lists(messages_st, min_size=1, max_size=6), extra=st.binary(min_size=1, max_size=20))
def test_body_bytes_beyond_the_declared_sizes_are_bad_batch(msgs: list[Message], extra: bytes) -> None:
    block = MessageBlock.from_messages(msgs)
    expect_error(raw_batch(1, block.count, 0, block.encode() + extra), ErrorCode.BAD_BATCH)


@FAST
@given(msgs=st.lists(messages_st, min_size=1, max_size=6), more=st.integers(1, 2**32 - 1))
def test_count_beyond_the_headers_is_bad_batch(msgs: list[Message], more: int) -> None:
    block = MessageBlock.from_messages(msgs)
    count = min(block.count + more, 2**32 - 1)
    expect_error(raw_batch(1, count, 0, block.encode()), ErrorCode.BAD_BATCH)


@FAST
@given(msgs=st.lists(messages_st, min_size=1, max_size=6), data=st.data())
def test_unknown_flag_bits_are_rejected(msgs: list[Message], data: st.DataObject) -> None:
    block = MessageBlock.from_messages(msgs)
    array = block.array.copy()
    index = data.draw(st.integers(0, len(msgs) - 1))
    flags = data.draw(st.integers(0, 255).filter(lambda f: f & ~KNOWN_FLAGS))
    array["flags"][index] = flags
    frame = raw_batch(1, block.count, 0, array.tobytes() + bytes(block.bodies))
    error = expect_error(frame, ErrorCode.BAD_BATCH)
    assert "flag" in error.reason


@MEDIUM
@given(msgs=st.lists(messages_st, min_size=1, max_size=8), data=st.data())
def test_checksum_failures_counts_corrupted_payloads(msgs: list[Message], data: st.DataObject) -> None:
    assume(any(m.payload for m in msgs))
    block = MessageBlock.from_messages(msgs)
    with_payload = [i for i, m in enumerate(msgs) if m.payload]
    corrupt = data.draw(st.lists(st.sampled_from(with_payload), min_size=1, unique=True))
    bodies = bytearray(block.bodies)
    offsets = block.offsets
    for i in corrupt:
        start = int(offsets[i]) + int(block.array["attr_len"][i])
        pos = start + data.draw(st.integers(0, len(msgs[i].payload) - 1))
        bodies[pos] ^= 1 << data.draw(st.integers(0, 7))
    (event,) = decode_frames(raw_batch(1, block.count, 0, bytes(block.headers) + bytes(bodies)))
    assert isinstance(event, Batch)
    assert event.block.checksum_failures() == len(corrupt)
    unchecked = MessageBlock.from_messages(msgs, checksums=False)
    (event,) = decode_frames(raw_batch(1, block.count, 0, bytes(unchecked.headers) + bytes(bodies)))
    assert event.block.checksum_failures() == 0  # without FLAG_CRC there is nothing to check


def test_checksum_failure_in_a_slice_and_crc_values() -> None:
    msgs = [Message(payload=b"abc"), Message(payload=b"def", attributes={"k": "v"})]
    block = MessageBlock.from_messages(msgs)
    assert list(block.array["crc"]) == [zlib.crc32(b"abc"), zlib.crc32(b"def")]
    bodies = bytearray(block.bodies)
    bodies[-1] ^= 0x01
    (event,) = decode_frames(raw_batch(1, 2, 0, bytes(block.headers) + bytes(bodies)))
    assert event.block.slice(0, 1).checksum_failures() == 0
    assert event.block.slice(1, 2).checksum_failures() == 1


# -- MessageBlock operations -----------------------------------------------------------------------


def wire_block(msgs: list[Message]) -> MessageBlock:
    """The block as a receiver has it: decoded from a frame (memoryviews over the frame body)."""
    (event,) = decode_frames(encode_batch(1, MessageBlock.from_messages(msgs)))
    assert isinstance(event, Batch)
    return event.block


@MEDIUM
@given(msgs=message_lists, data=st.data(), from_wire=st.booleans())
def test_slices_concatenate_back_to_the_block(msgs: list[Message], data: st.DataObject, from_wire: bool) -> None:
    block = wire_block(msgs) if from_wire else MessageBlock.from_messages(msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(msgs)), max_size=5)))
    bounds = list(pairwise([0, *cuts, len(msgs)]))
    parts = [block.slice(a, b) for a, b in bounds]
    for (a, b), part in zip(bounds, parts, strict=True):
        assert part.count == b - a
        assert list(part.messages()) == msgs[a:b]
    joined = MessageBlock.concat(parts)
    assert joined.count == len(msgs)
    assert joined.encode() == block.encode()
    assert joined.nbytes == block.nbytes
    assert list(joined.messages()) == msgs
    (event,) = decode_frames(encode_batch(2, joined))  # and it travels as a batch again
    assert list(event.block.messages()) == msgs


@MEDIUM
@given(msgs=message_lists, data=st.data(), from_wire=st.booleans())
def test_take_picks_messages_in_the_given_order(msgs: list[Message], data: st.DataObject, from_wire: bool) -> None:
    block = wire_block(msgs) if from_wire else MessageBlock.from_messages(msgs)
    picks = data.draw(st.lists(st.integers(0, len(msgs) - 1), max_size=2 * len(msgs))) if msgs else []
    taken = block.take(np.array(picks, dtype=np.int64))
    assert taken.count == len(picks)
    assert list(taken.messages()) == [msgs[i] for i in picks]
    assert taken.checksum_failures() == 0
    (event,) = decode_frames(encode_batch(3, taken, data.draw(codecs)))
    assert list(event.block.messages()) == [msgs[i] for i in picks]


@FAST
@given(groups=st.lists(message_lists, max_size=4))
def test_concat_of_independent_blocks(groups: list[list[Message]]) -> None:
    blocks = [wire_block(g) for g in groups]
    joined = MessageBlock.concat(blocks)
    flat = [m for g in groups for m in g]
    assert joined.count == len(flat)
    assert list(joined.messages()) == flat


# -- failed decoder --------------------------------------------------------------------------------


@FAST
@given(stream=streams, garbage_type=st.sampled_from([0, 7, 255]))
def test_decoder_refuses_input_after_an_error(stream: list[tuple[bytes, object]], garbage_type: int) -> None:
    raw, _ = join(stream)
    decoder = FrameDecoder()
    decoder.feed(raw)
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack("<IB", 1, garbage_type))
    with pytest.raises(ProtocolError) as info:
        decoder.feed(raw)
    assert info.value.code == ErrorCode.BAD_FRAME
    with pytest.raises(ProtocolError):
        decoder.feed(b"")
