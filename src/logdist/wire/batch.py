"""Columnar message blocks: the unit that flows through logdist.

A block of ``count`` messages is two buffers:

* ``headers``: ``count`` fixed-size records (:data:`HEADER_DTYPE`, 38 bytes each, little-endian);
* ``bodies``: for each message in order, its attribute bytes followed by its payload bytes.

Routing cuts blocks into contiguous runs and joins runs into outgoing blocks with a handful of
buffer slices per block, never a Python step per message.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from logdist.model import Message

if TYPE_CHECKING:
    from logdist.ingest.dedup import Ticket
from logdist.wire.errors import ErrorCode, ProtocolError

HEADER_DTYPE = np.dtype(
    [
        ("stream", "<u8"),  # emitter stream id (random per emitter stream)
        ("seq", "<u8"),  # message sequence number within the stream
        ("ts", "<u8"),  # emit time, unix nanoseconds
        ("severity", "u1"),  # 0 = most urgent .. 255 = least
        ("flags", "u1"),  # bit 0: crc holds the CRC-32 of the payload
        ("crc", "<u4"),
        ("attr_len", "<u4"),  # bytes of msgpack-encoded attributes before the payload
        ("length", "<u4"),  # payload bytes
    ]
)
HEADER_SIZE = HEADER_DTYPE.itemsize
_HEADER_RECORD = np.dtype((np.void, HEADER_SIZE))  # a header as one opaque item: gathering these is a memcpy each
FLAG_CRC = 1
KNOWN_FLAGS = FLAG_CRC

_attr_encoder = msgspec.msgpack.Encoder()
_attr_decoder = msgspec.msgpack.Decoder(dict[str, str])

Buffer = bytes | bytearray | memoryview


class MessageBlock:
    """``count`` messages in columnar form; validated on construction from the wire."""

    __slots__ = ("_array", "_offsets", "bodies", "count", "headers", "ticket")

    def __init__(self, count: int, headers: Buffer, bodies: Buffer, array: np.ndarray | None = None) -> None:
        self.count = count
        self.headers = headers
        self.bodies = bodies
        self._array = array
        self._offsets: np.ndarray | None = None
        self.ticket: Ticket | None = None  # set in "delivered" ack mode: settled as analyzers ack

    @classmethod
    def from_buffer(cls, count: int, data: Buffer) -> MessageBlock:
        """Split ``data`` (headers then bodies) and check that the declared sizes add up."""
        head_size = count * HEADER_SIZE
        if head_size > len(data):
            raise ProtocolError(
                ErrorCode.BAD_BATCH, f"batch declares {count} messages but holds only {len(data)} bytes"
            )
        view = memoryview(data)
        block = cls(count, view[:head_size], view[head_size:])
        array = block.array
        if count:
            if int(np.bitwise_or.reduce(array["flags"])) & ~KNOWN_FLAGS:
                raise ProtocolError(ErrorCode.BAD_BATCH, "a message header has unknown flag bits set")
            total = int(block.offsets[-1])
            if total != len(block.bodies):
                raise ProtocolError(
                    ErrorCode.BAD_BATCH,
                    f"message headers declare {total} body bytes but the batch holds {len(block.bodies)}",
                )
        elif len(block.bodies):
            raise ProtocolError(ErrorCode.BAD_BATCH, f"empty batch carries {len(block.bodies)} stray bytes")
        return block

    @property
    def array(self) -> np.ndarray:
        """The headers as a read-only numpy structured array."""
        if self._array is None:
            self._array = np.frombuffer(self.headers, dtype=HEADER_DTYPE, count=self.count)
        return self._array

    @property
    def offsets(self) -> np.ndarray:
        """``count + 1`` body offsets: message ``i`` spans ``bodies[offsets[i]:offsets[i + 1]]``."""
        if self._offsets is None:
            array = self.array
            sizes = array["attr_len"].astype(np.int64) + array["length"]
            offsets = np.zeros(self.count + 1, dtype=np.int64)
            np.cumsum(sizes, out=offsets[1:])
            self._offsets = offsets
        return self._offsets

    @property
    def nbytes(self) -> int:
        """Bytes held by the block."""
        return len(self.headers) + len(self.bodies)

    def slice(self, start: int, stop: int) -> MessageBlock:
        """Messages ``start`` .. ``stop - 1`` as a new block sharing this block's memory."""
        offsets = self.offsets
        headers = memoryview(self.headers)[start * HEADER_SIZE : stop * HEADER_SIZE]
        bodies = memoryview(self.bodies)[int(offsets[start]) : int(offsets[stop])]
        block = MessageBlock(stop - start, headers, bodies)
        block.ticket = self.ticket
        if self._array is not None:
            block._array = self._array[start:stop]
        return block

    def take(self, indices: np.ndarray) -> MessageBlock:
        """The messages at ``indices`` (in that order) as a new, compact block (with this block's ticket).

        Bodies are copied with one ``b"".join`` of buffer slices, one slice per run of messages whose
        bodies lie back to back (consecutive indices), so long runs cost one slice, not one per message.
        """
        indices = np.asarray(indices, dtype=np.intp)
        offsets = self.offsets
        starts = offsets[indices]
        stops = offsets[indices + 1]
        if len(indices) > 1:
            joined = stops[:-1] == starts[1:]  # the next body follows this one directly
            if np.count_nonzero(joined) >= 16:  # merging costs a few numpy calls: worth it for real runs only
                cut = ~joined
                starts = starts[np.concatenate(([True], cut))]
                stops = stops[np.concatenate((cut, [True]))]
        bodies = memoryview(self.bodies)
        body = b"".join([bodies[a:b] for a, b in zip(starts.tolist(), stops.tolist(), strict=True)])
        headers = np.frombuffer(self.headers, dtype=_HEADER_RECORD, count=self.count)[indices].tobytes()
        block = MessageBlock(len(indices), headers, body)
        block.ticket = self.ticket
        return block

    @staticmethod
    def concat(blocks: Sequence[MessageBlock]) -> MessageBlock:
        """One block holding ``blocks`` in order."""
        if len(blocks) == 1:
            return blocks[0]
        return MessageBlock(
            sum(b.count for b in blocks),
            b"".join([b.headers for b in blocks]),
            b"".join([b.bodies for b in blocks]),
        )

    def encode(self) -> bytes:
        """Headers followed by bodies, as carried in a BATCH frame."""
        return b"".join((self.headers, self.bodies))

    def payload(self, index: int) -> bytes:
        """The payload bytes of message ``index``."""
        offsets = self.offsets
        start = int(offsets[index]) + int(self.array["attr_len"][index])
        return bytes(memoryview(self.bodies)[start : int(offsets[index + 1])])

    def checksum_failures(self) -> int:
        """How many messages carry a CRC-32 that does not match their payload."""
        array = self.array
        flagged = np.flatnonzero(array["flags"] & FLAG_CRC)
        if not len(flagged):
            return 0
        offsets = self.offsets.tolist()
        attr = array["attr_len"].tolist()
        crcs = array["crc"].tolist()
        bodies = memoryview(self.bodies)
        crc32 = zlib.crc32
        bad = 0
        for i in flagged.tolist():
            if crc32(bodies[offsets[i] + attr[i] : offsets[i + 1]]) != crcs[i]:
                bad += 1
        return bad

    def messages(self) -> Iterator[Message]:
        """Decode every message (slow path: for SDKs, translation and tests)."""
        array = self.array
        offsets = self.offsets
        bodies = memoryview(self.bodies)
        for i in range(self.count):
            row = array[i]
            start = int(offsets[i])
            attr_end = start + int(row["attr_len"])
            try:
                attributes = _attr_decoder.decode(bodies[start:attr_end]) if attr_end > start else {}
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec raises the latter for bad UTF-8
                raise ProtocolError(ErrorCode.BAD_BATCH, f"message {i}: invalid attributes: {exc}") from None
            yield Message(
                payload=bytes(bodies[attr_end : int(offsets[i + 1])]),
                severity=int(row["severity"]),
                ts_ns=int(row["ts"]),
                stream=int(row["stream"]),
                seq=int(row["seq"]),
                attributes=attributes,
            )

    @classmethod
    def from_messages(cls, messages: Sequence[Message], checksums: bool = True) -> MessageBlock:
        """Build a block from message objects (slow path: for SDKs and tests)."""
        array = np.zeros(len(messages), dtype=HEADER_DTYPE)
        parts: list[bytes] = []
        for i, msg in enumerate(messages):
            attrs = _attr_encoder.encode(msg.attributes) if msg.attributes else b""
            array[i] = (
                msg.stream,
                msg.seq,
                msg.ts_ns,
                msg.severity,
                FLAG_CRC if checksums else 0,
                zlib.crc32(msg.payload) if checksums else 0,
                len(attrs),
                len(msg.payload),
            )
            parts.append(attrs)
            parts.append(msg.payload)
        return cls(len(messages), array.tobytes(), b"".join(parts), array)


EMPTY_BLOCK = MessageBlock(0, b"", b"")
