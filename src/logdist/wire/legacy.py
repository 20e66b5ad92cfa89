"""Sans-IO codec for the original (seed) Go system's wire protocol.

Frames, emitter -> distributor and distributor -> analyzer, all integers big-endian::

    u32 length (the whole frame, these 4 bytes included; minimum 5) | u8 severity | payload

Analyzer -> distributor: first a float32 weight (bit 31 clear), then 4-byte control words: bit 31 set
is a cumulative ACK (low 31 bits: messages processed on this connection so far), bit 31 clear is a new
float32 weight.
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass

import numpy as np

from logdist.wire.batch import HEADER_DTYPE, MessageBlock
from logdist.wire.errors import ErrorCode, ProtocolError

_FRAME_HEAD = struct.Struct(">IB")
_WORD = struct.Struct(">I")
_FLOAT = struct.Struct(">f")
ACK_BIT = 0x8000_0000
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024


class LegacyFrameDecoder:
    """Turns a stream of legacy frames into message blocks stamped with ``stream`` ids and receive times."""

    __slots__ = ("_buf", "max_message", "stream", "next_seq", "_failed")

    def __init__(self, stream: int, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self.max_message = max_message
        self.stream = stream
        self.next_seq = 0
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> MessageBlock | None:
        """Add ``data``; return the whole frames it completes as one block (None if none)."""
        if self._failed:
            raise ProtocolError(ErrorCode.BAD_FRAME, "decoder already failed; the stream cannot resume")
        buf = self._buf
        buf += data
        end = len(buf)
        pos = 0
        starts: list[int] = []
        lengths: list[int] = []
        unpack = _FRAME_HEAD.unpack_from
        limit = self.max_message + 5
        try:
            while end - pos >= 5:
                length, _severity = unpack(buf, pos)
                if length < 5:
                    raise ProtocolError(ErrorCode.BAD_FRAME, f"legacy frame length {length} is below the minimum 5")
                if length > limit:
                    raise ProtocolError(
                        ErrorCode.FRAME_TOO_LARGE, f"legacy frame of {length} bytes exceeds the limit of {limit}"
                    )
                if end - pos < length:
                    break
                starts.append(pos)
                lengths.append(length)
                pos += length
        except ProtocolError:
            self._failed = True
            raise
        if not starts:
            return None
        chunk = bytes(buf[:pos])
        del buf[:pos]
        return self._to_block(chunk, starts, lengths)

    def _to_block(self, chunk: bytes, starts: list[int], lengths: list[int]) -> MessageBlock:
        count = len(starts)
        raw = np.frombuffer(chunk, dtype=np.uint8)
        start_arr = np.asarray(starts, dtype=np.int64)
        len_arr = np.asarray(lengths, dtype=np.int64) - 5
        array = np.zeros(count, dtype=HEADER_DTYPE)
        array["stream"] = self.stream
        array["seq"] = np.arange(self.next_seq, self.next_seq + count, dtype=np.uint64)
        array["ts"] = time.time_ns()
        array["severity"] = raw[start_arr + 4]
        array["length"] = len_arr
        self.next_seq += count
        # payloads: drop the 5-byte head of every frame with one boolean mask
        keep = np.ones(len(chunk), dtype=bool)
        heads = (start_arr[:, None] + np.arange(5)).ravel()
        keep[heads] = False
        bodies = raw[keep].tobytes()
        return MessageBlock(count, array.tobytes(), bodies, array)


def encode_frames(block: MessageBlock) -> bytes:
    """The payloads of ``block`` as legacy frames (attributes are not carried by this protocol)."""
    array = block.array
    offsets = block.offsets
    attr = array["attr_len"]
    bodies = memoryview(block.bodies)
    lengths = (array["length"].astype(np.int64) + 5).tolist()
    severities = array["severity"].tolist()
    starts = (offsets[:-1] + attr).tolist()
    ends = offsets[1:].tolist()
    pack = _FRAME_HEAD.pack
    parts: list[bytes | memoryview] = []
    for length, severity, start, stop in zip(lengths, severities, starts, ends, strict=True):
        parts.append(pack(length, severity))
        parts.append(bodies[start:stop])
    return b"".join(parts)


def encode_frame(severity: int, payload: bytes) -> bytes:
    """One legacy frame."""
    return _FRAME_HEAD.pack(len(payload) + 5, severity) + payload


@dataclass(frozen=True, slots=True)
class WeightUpdate:
    """The analyzer announced (first word) or changed its weight."""

    weight: float


@dataclass(frozen=True, slots=True)
class CumulativeAck:
    """The analyzer has processed ``count`` messages on this connection so far."""

    count: int


def encode_weight(weight: float) -> bytes:
    """A weight word, as a legacy analyzer sends it."""
    return _FLOAT.pack(weight)


def encode_ack(count: int) -> bytes:
    """A cumulative ACK word, as a legacy analyzer sends it."""
    return _WORD.pack(ACK_BIT | (count & 0x7FFF_FFFF))


class ControlWordDecoder:
    """Decodes an analyzer's 4-byte control words; the first must be a weight."""

    __slots__ = ("_buf", "registered")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.registered = False

    def feed(self, data: bytes) -> list[WeightUpdate | CumulativeAck]:
        """Add ``data``; return the words it completes."""
        buf = self._buf
        buf += data
        events: list[WeightUpdate | CumulativeAck] = []
        whole = len(buf) - len(buf) % 4
        for (word,) in _WORD.iter_unpack(bytes(buf[:whole])):
            if word & ACK_BIT:
                if not self.registered:
                    raise ProtocolError(ErrorCode.BAD_HANDSHAKE, "legacy analyzer sent an ACK before its weight")
                events.append(CumulativeAck(word & 0x7FFF_FFFF))
            else:
                (weight,) = _FLOAT.unpack(_WORD.pack(word))
                if not math.isfinite(weight) or weight <= 0:
                    raise ProtocolError(ErrorCode.BAD_HANDSHAKE, f"legacy analyzer weight {weight} is not positive")
                self.registered = True
                events.append(WeightUpdate(weight))
        del buf[:whole]
        return events
