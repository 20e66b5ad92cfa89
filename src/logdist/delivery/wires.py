"""What a link says on the wire, per analyzer kind: sans-IO adapters between batches and bytes.

A wire turns outgoing batches into buffers and incoming bytes into link events. The link owns the socket,
the queue, the in-flight window and the failure handling; the wire owns only the protocol.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import msgspec

from logdist.wire import legacy
from logdist.wire.batch import MessageBlock
from logdist.wire.compression import SUPPORTED
from logdist.wire.errors import ErrorCode, ProtocolError
from logdist.wire.native import (
    Ack,
    AckStatus,
    Error,
    FrameDecoder,
    Heartbeat,
    Hello,
    Role,
    Welcome,
    encode_batch,
    encode_batch_blocks,
    encode_heartbeat,
    encode_hello,
)

Buffers = list[bytes | memoryview]


@dataclass(frozen=True, slots=True)
class Ready:
    """The handshake is complete: batches may flow."""


@dataclass(frozen=True, slots=True)
class Acked:
    """Batch ``seq`` has an outcome."""

    seq: int
    status: AckStatus = AckStatus.OK


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes to send back at once (a pong)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Alive:
    """The peer answered a ping."""


@dataclass(frozen=True, slots=True)
class WeightChanged:
    """The analyzer announced a new weight (legacy protocol)."""

    weight: float


LinkEvent = Ready | Acked | Reply | Alive | WeightChanged


class LinkWire(Protocol):
    """One analyzer protocol, seen from the distributor."""

    acks: bool  # False: a batch counts as delivered once written (at-most-once on a crash)

    def hello(self) -> bytes | None:
        """Bytes to send right after connecting; None when the link is ready at once."""
        ...

    def encode(self, seq: int, parts: list[MessageBlock]) -> Buffers:
        """Buffers carrying one outgoing batch."""
        ...

    def feed(self, data: bytes) -> list[LinkEvent]:
        """Events in ``data``; raises ProtocolError on malformed input or a peer's error report."""
        ...

    def ping(self, token: int) -> bytes | None:
        """A liveness probe, or None when the protocol has none (silence then counts only with work out)."""
        ...


class NativeWire:
    """logdist's native protocol: HELLO/WELCOME, acked batches, heartbeats, optional compression."""

    acks = True

    def __init__(self, client_id: str = "logdist", compression: str | None = None) -> None:
        self._decoder = FrameDecoder()
        self._offered = [compression] if compression in SUPPORTED else []
        self._client_id = client_id
        self.codec: str | None = None

    def hello(self) -> bytes:
        return encode_hello(Hello(role=Role.DISTRIBUTOR, client_id=self._client_id, compression=self._offered))

    def encode(self, seq: int, parts: list[MessageBlock]) -> Buffers:
        if self.codec is None:
            return encode_batch_blocks(seq, parts)
        return [encode_batch(seq, MessageBlock.concat(parts), self.codec)]

    def feed(self, data: bytes) -> list[LinkEvent]:
        events: list[LinkEvent] = []
        for event in self._decoder.feed(data):
            if isinstance(event, Ack):
                events.append(Acked(event.seq, event.status))
            elif isinstance(event, Heartbeat):
                events.append(Alive() if event.pong else Reply(encode_heartbeat(event.token, pong=True)))
            elif isinstance(event, Welcome):
                self.codec = event.compression if event.compression in self._offered else None
                events.append(Ready())
            elif isinstance(event, Error):
                raise ProtocolError(event.code, f"analyzer reported {event.code.name}: {event.reason}")
            else:
                raise ProtocolError(ErrorCode.UNEXPECTED_FRAME, f"unexpected {type(event).__name__} from an analyzer")
        return events

    def ping(self, token: int) -> bytes:
        return encode_heartbeat(token)


class LegacyWire:
    """The original Go system's analyzer protocol: length+severity frames out, cumulative ACK words in.

    ``dial_in``: the analyzer connected to us and must announce its weight before anything flows; a
    configured analyzer (we dial) is ready at once and may still announce or change its weight.
    """

    acks = True

    def __init__(self, dial_in: bool = False) -> None:
        self._words = legacy.ControlWordDecoder()
        self._dial_in = dial_in
        self._ready = not dial_in
        self._sent = 0  # messages written on this connection
        self._ends: deque[tuple[int, int]] = deque()  # (cumulative count at the end of batch, seq)
        self._acked = 0

    def _unwrap(self, count: int) -> int:
        """The 31-bit counter as a full count (it wraps after 2**31 messages)."""
        full = (self._acked & ~0x7FFF_FFFF) | count
        if full < self._acked:
            full += 1 << 31
        self._acked = full
        return full

    def hello(self) -> bytes | None:
        return None

    def encode(self, seq: int, parts: list[MessageBlock]) -> Buffers:
        self._sent += sum(part.count for part in parts)
        self._ends.append((self._sent, seq))
        return [legacy.encode_frames(part) for part in parts]

    def feed(self, data: bytes) -> list[LinkEvent]:
        events: list[LinkEvent] = []
        if not self._dial_in:
            self._words.registered = True  # a configured analyzer may ack before announcing a weight
        for word in self._words.feed(data):
            if isinstance(word, legacy.WeightUpdate):
                if not self._ready:
                    self._ready = True
                    events.append(WeightChanged(word.weight))
                    events.append(Ready())
                else:
                    events.append(WeightChanged(word.weight))
                continue
            full = self._unwrap(word.count)
            if full > self._sent:
                raise ProtocolError(ErrorCode.BAD_FRAME, f"legacy analyzer acked {full} of {self._sent} messages")
            while self._ends and self._ends[0][0] <= full:  # every batch whose last message the count reaches
                events.append(Acked(self._ends.popleft()[1]))
        return events

    def ping(self, token: int) -> bytes | None:
        return None


class _LineRecord(msgspec.Struct, omit_defaults=True):
    id: str
    ts_ns: int
    severity: int
    message: str | None = None
    message_b64: str | None = None
    attributes: dict[str, str] = {}


class LinesWire:
    """NDJSON lines over TCP, no acks: a batch counts as delivered once written (at-most-once on a crash).

    Each line: ``{"id": "STREAM:SEQ", "ts_ns": ..., "severity": ..., "message": "...", "attributes": {...}}``;
    a payload that is not UTF-8 travels as ``message_b64`` instead, so bytes are preserved exactly.
    """

    acks = False

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()

    def hello(self) -> bytes | None:
        return None

    def encode(self, seq: int, parts: list[MessageBlock]) -> Buffers:
        lines: list[bytes] = []
        encode = self._encoder.encode
        for part in parts:
            for message in part.messages():
                try:
                    record = _LineRecord(
                        f"{message.stream}:{message.seq}", message.ts_ns, message.severity,
                        message=message.payload.decode("utf-8"), attributes=message.attributes,
                    )  # fmt: skip
                except UnicodeDecodeError:
                    record = _LineRecord(
                        f"{message.stream}:{message.seq}", message.ts_ns, message.severity,
                        message_b64=base64.b64encode(message.payload).decode(), attributes=message.attributes,
                    )  # fmt: skip
                lines.append(encode(record))
        return [b"\n".join(lines) + b"\n"] if lines else []

    def feed(self, data: bytes) -> list[LinkEvent]:
        return []  # the peer has nothing to say; bytes from it are ignored

    def ping(self, token: int) -> bytes | None:
        return None


WIRES = {"native": NativeWire, "legacy": LegacyWire, "lines": LinesWire}
