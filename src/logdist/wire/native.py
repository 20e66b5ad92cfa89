"""Sans-IO codec for logdist's native protocol (see docs/protocol.md).

Bytes go in through :class:`FrameDecoder.feed`, events come out; ``encode_*`` functions
turn events back into bytes.  Nothing here touches a socket.  Every malformed input
raises :class:`ProtocolError` (and nothing else), carrying an error code and a reason.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

import msgspec

from logdist.wire.batch import MessageBlock
from logdist.wire.compression import CODEC_IDS, CODEC_NAMES, compress, decompress
from logdist.wire.errors import ErrorCode, ProtocolError

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
_MAX_CONTROL_FRAME = 64 * 1024

_FRAME_HEADER = struct.Struct("<IB")  # length of (type + body), frame type
_BATCH_HEADER = struct.Struct("<QIB")  # batch sequence, message count, compression codec
_ACK = struct.Struct("<QB")  # batch sequence, status
_HEARTBEAT = struct.Struct("<BQ")  # 0 = ping / 1 = pong, token
_ERROR_CODE = struct.Struct("<H")


class FrameType(IntEnum):
    """Frame types of the native protocol."""

    HELLO = 1
    WELCOME = 2
    BATCH = 3
    ACK = 4
    HEARTBEAT = 5
    ERROR = 6


class AckStatus(IntEnum):
    """Outcome of a batch, as told by its receiver."""

    OK = 0  # the receiver took responsibility for every message of the batch
    RETRY = 1  # not taken (overload, shutting down): send it again later
    REJECTED = 2  # invalid batch: sending it again will not help


class Role(StrEnum):
    """Handshake roles."""

    EMITTER = "emitter"
    ANALYZER = "analyzer"
    DISTRIBUTOR = "distributor"


ROLES = frozenset(Role)


class Hello(msgspec.Struct, frozen=True, kw_only=True):
    """First frame a client sends: who it is and what it can do."""

    version: int = PROTOCOL_VERSION
    role: str
    client_id: str
    compression: list[str] = []
    token: str | None = None
    options: dict[str, str] = {}


class Welcome(msgspec.Struct, frozen=True, kw_only=True):
    """The server's answer to a Hello: the chosen options."""

    version: int = PROTOCOL_VERSION
    server_id: str
    compression: str | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    options: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch of messages; ``block`` holds them in columnar form."""

    seq: int
    block: MessageBlock


@dataclass(frozen=True, slots=True)
class Ack:
    """Acknowledgement of one batch."""

    seq: int
    status: AckStatus = AckStatus.OK


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Liveness probe (``pong=False``) or its answer (``pong=True``)."""

    token: int
    pong: bool = False


@dataclass(frozen=True, slots=True)
class Error:
    """An error report; the sender closes the connection after it."""

    code: ErrorCode
    reason: str = field(default="")


Event = Hello | Welcome | Batch | Ack | Heartbeat | Error

_hello_decoder = msgspec.json.Decoder(Hello)
_welcome_decoder = msgspec.json.Decoder(Welcome)
_json_encoder = msgspec.json.Encoder()


def _frame(frame_type: FrameType, body: bytes) -> bytes:
    return _FRAME_HEADER.pack(len(body) + 1, frame_type) + body


def encode_hello(hello: Hello) -> bytes:
    """Encode a HELLO frame."""
    return _frame(FrameType.HELLO, _json_encoder.encode(hello))


def encode_welcome(welcome: Welcome) -> bytes:
    """Encode a WELCOME frame."""
    return _frame(FrameType.WELCOME, _json_encoder.encode(welcome))


def encode_batch(seq: int, block: MessageBlock, codec: str | None = None) -> bytes:
    """Encode a BATCH frame, compressing the message data with ``codec`` if given."""
    data = block.encode()
    if codec is not None:
        data = compress(codec, data)
    head = _BATCH_HEADER.pack(seq, block.count, CODEC_IDS[codec])
    return _FRAME_HEADER.pack(len(head) + len(data) + 1, FrameType.BATCH) + head + data


def encode_batch_parts(seq: int, count: int, headers: bytes, bodies: bytes) -> list[bytes]:
    """Uncompressed BATCH frame as a list of buffers, for ``transport.writelines`` without a join."""
    head = _BATCH_HEADER.pack(seq, count, 0)
    size = len(head) + len(headers) + len(bodies) + 1
    return [_FRAME_HEADER.pack(size, FrameType.BATCH) + head, headers, bodies]


def encode_batch_blocks(seq: int, blocks: Sequence[MessageBlock]) -> list[bytes | memoryview]:
    """Uncompressed BATCH frame carrying ``blocks`` back to back, as buffers for ``writelines`` (no join)."""
    count = sum(block.count for block in blocks)
    size = sum(block.nbytes for block in blocks)
    head = _BATCH_HEADER.pack(seq, count, 0)
    return [
        _FRAME_HEADER.pack(len(head) + size + 1, FrameType.BATCH) + head,
        *[block.headers for block in blocks],
        *[block.bodies for block in blocks],
    ]


def encode_ack(seq: int, status: AckStatus = AckStatus.OK) -> bytes:
    """Encode an ACK frame."""
    return _frame(FrameType.ACK, _ACK.pack(seq, status))


def encode_heartbeat(token: int, pong: bool = False) -> bytes:
    """Encode a HEARTBEAT frame (a ping, or with ``pong`` its answer)."""
    return _frame(FrameType.HEARTBEAT, _HEARTBEAT.pack(1 if pong else 0, token))


def encode_error(code: ErrorCode, reason: str) -> bytes:
    """Encode an ERROR frame; the reason is cut to 1000 UTF-8 bytes (at a character boundary)."""
    text = reason.encode("utf-8", "replace")[:1000].decode("utf-8", "ignore").encode("utf-8")
    return _frame(FrameType.ERROR, _ERROR_CODE.pack(code) + text)


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes, get complete events back.

    After a :class:`ProtocolError` the stream cannot be resynchronised; the caller
    reports the error and closes the connection.
    """

    __slots__ = ("_chunks", "_failed", "_need", "_size", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._need = _FRAME_HEADER.size  # bytes needed before the next frame can be decoded
        self.max_frame = max_frame
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded into an event."""
        return self._size

    def feed(self, data: bytes) -> list[Event]:
        """Add ``data`` and return every event it completes, in order.

        Received chunks are kept as they are until a frame is complete, then joined once; frame bodies
        are zero-copy views of that buffer.
        """
        if self._failed:
            raise ProtocolError(ErrorCode.BAD_FRAME, "decoder already failed; the stream cannot resume")
        if not data:
            return []
        self._chunks.append(data if type(data) is bytes else bytes(data))
        self._size += len(data)
        if self._size < self._need:
            return []
        chunks = self._chunks
        buf = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        view = memoryview(buf)
        events: list[Event] = []
        pos = 0
        end = len(buf)
        need = _FRAME_HEADER.size
        try:
            while end - pos >= need:
                size, frame_type = _FRAME_HEADER.unpack_from(buf, pos)
                if size < 1:
                    raise ProtocolError(ErrorCode.BAD_FRAME, f"frame length {size} is below the minimum of 1")
                limit = self.max_frame if frame_type == FrameType.BATCH else _MAX_CONTROL_FRAME
                if size > limit:
                    raise ProtocolError(
                        ErrorCode.FRAME_TOO_LARGE, f"frame of {size} bytes exceeds the limit of {limit} bytes"
                    )
                if end - pos < 4 + size:
                    need = 4 + size
                    break
                body = view[pos + _FRAME_HEADER.size : pos + 4 + size]
                pos += 4 + size
                events.append(_decode_body(frame_type, body, self.max_frame))
        except ProtocolError:
            self._failed = True
            raise
        rest = buf[pos:] if pos else buf
        self._chunks = [rest] if rest else []
        self._size = len(rest)
        self._need = need
        return events


def decode_frames(data: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> list[Event]:
    """Decode a buffer holding whole frames (a convenience for tests and tools)."""
    decoder = FrameDecoder(max_frame)
    events = decoder.feed(data)
    if decoder.buffered:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"{decoder.buffered} trailing bytes do not form a whole frame")
    return events


def _decode_body(frame_type: int, body: memoryview, max_frame: int) -> Event:
    if frame_type == FrameType.BATCH:
        return _decode_batch(body, max_frame)
    if frame_type == FrameType.ACK:
        if len(body) != _ACK.size:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"ACK body must be {_ACK.size} bytes, got {len(body)}")
        seq, status = _ACK.unpack(body)
        try:
            return Ack(seq, AckStatus(status))
        except ValueError:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"unknown ACK status {status}") from None
    if frame_type == FrameType.HEARTBEAT:
        if len(body) != _HEARTBEAT.size:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"HEARTBEAT body must be {_HEARTBEAT.size} bytes, got {len(body)}")
        kind, token = _HEARTBEAT.unpack(body)
        if kind > 1:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"unknown HEARTBEAT kind {kind}")
        return Heartbeat(token, pong=kind == 1)
    if frame_type == FrameType.HELLO:
        try:
            hello = _hello_decoder.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:  # bad UTF-8, deep nesting
            raise ProtocolError(ErrorCode.BAD_HANDSHAKE, f"invalid HELLO: {exc}") from None
        if hello.role not in ROLES:
            raise ProtocolError(ErrorCode.BAD_HANDSHAKE, f"invalid HELLO: unknown role {hello.role!r}")
        return hello
    if frame_type == FrameType.WELCOME:
        try:
            return _welcome_decoder.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ProtocolError(ErrorCode.BAD_HANDSHAKE, f"invalid WELCOME: {exc}") from None
    if frame_type == FrameType.ERROR:
        if len(body) < _ERROR_CODE.size:
            raise ProtocolError(ErrorCode.BAD_FRAME, "ERROR body is shorter than its 2-byte code")
        (code,) = _ERROR_CODE.unpack_from(body)
        try:
            error_code = ErrorCode(code)
        except ValueError:
            error_code = ErrorCode.UNKNOWN
        return Error(error_code, bytes(body[_ERROR_CODE.size :]).decode("utf-8", "replace"))
    raise ProtocolError(ErrorCode.BAD_FRAME, f"unknown frame type {frame_type}")


def _decode_batch(body: memoryview, max_frame: int) -> Batch:
    if len(body) < _BATCH_HEADER.size:
        raise ProtocolError(ErrorCode.BAD_BATCH, f"BATCH body of {len(body)} bytes is shorter than its header")
    seq, count, codec_id = _BATCH_HEADER.unpack_from(body)
    data = body[_BATCH_HEADER.size :]
    if codec_id:
        name = CODEC_NAMES.get(codec_id)
        if name is None:
            raise ProtocolError(ErrorCode.BAD_BATCH, f"unknown compression codec id {codec_id}")
        data = decompress(name, data, max_frame)
    return Batch(seq, MessageBlock.from_buffer(count, data))
