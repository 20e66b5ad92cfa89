"""Native-protocol ingest: emitters connect, say HELLO, send batches, get an ACK per batch."""

from __future__ import annotations

import asyncio
import itertools
import logging

from logdist.control import tracing
from logdist.ingest.base import IngestSink, TcpIngest
from logdist.ingest.dedup import DedupWindow, Ticket
from logdist.wire.compression import SUPPORTED, negotiate
from logdist.wire.errors import ErrorCode, ProtocolError
from logdist.wire.native import (
    PROTOCOL_VERSION,
    Ack,
    AckStatus,
    Batch,
    Error,
    FrameDecoder,
    Heartbeat,
    Hello,
    Role,
    Welcome,
    encode_ack,
    encode_error,
    encode_heartbeat,
    encode_welcome,
)

log = logging.getLogger("logdist.ingest")
_connection_ids = itertools.count(1)


class NativeIngest(TcpIngest):
    """One emitter connection. A malformed frame gets an ERROR frame and closes only this connection."""

    def __init__(
        self,
        sink: IngestSink,
        server_id: str,
        max_frame: int,
        ack_mode: str = "accepted",
        dedup: DedupWindow | None = None,
    ) -> None:
        self.sink = sink
        self.ack_mode = ack_mode
        self.dedup = dedup
        self.session: tuple[str, str] | None = None
        self.server_id = server_id
        self.conn_id = next(_connection_ids)
        self.peer = "?"
        self.client_id: str | None = None
        self.messages = 0
        self.batches = 0
        self._decoder = FrameDecoder(max_frame)
        self._transport: asyncio.Transport | None = None
        self._closing = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.sink.unregister(self)

    def close(self) -> None:
        """Close after what was written so far (acks included) has been sent."""
        self._fail(None, "")

    def _fail(self, code: ErrorCode | None, reason: str) -> None:
        if self._transport is None or self._closing:
            return
        self._closing = True
        if code is not None:
            self._transport.write(encode_error(code, reason))
        self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        replies: list[bytes] = []
        try:
            for event in self._decoder.feed(data):
                reply = self._handle(event)
                if reply:
                    replies.append(reply)
        except ProtocolError as exc:
            self._write(replies)  # acks for the batches taken before the bad frame
            self.sink.bad_input(self, exc)
            self._fail(exc.code, exc.reason)
            return
        self._write(replies)

    def _on_batch(self, event: Batch) -> bytes | None:
        seq, block = event.seq, event.block
        if self.session is not None:
            assert self.dedup is not None
            seen, ticket = self.dedup.seen(self.session, seq)
            if seen:  # a retransmission of a batch accepted before: never route it twice
                if ticket is None:
                    return encode_ack(seq)
                ticket.waiters.append((seq, self.send_ack))
                return None
        self.messages += block.count
        self.batches += 1
        if (tracer := tracing.tracer) is not None:  # tracing: receive span (sampled batches); off: this check only
            tracer.received(block, self.client_id, seq)
        reply: bytes | None = encode_ack(seq)
        if block.count and self.ack_mode != "accepted":
            block.ticket = Ticket(block.count)
            reply = None
            if self.ack_mode == "delivered":
                block.ticket.waiters.append((seq, self.send_ack))
                self.sink.accept(block)
            else:  # durable: ack once the spool has it on disk; only then is a retransmission a duplicate
                self.sink.accept(block, durable=lambda status: self._durable(seq, status))
                return None
        else:
            self.sink.accept(block)
        if self.session is not None:
            assert self.dedup is not None
            self.dedup.record(self.session, seq, block.ticket if self.ack_mode == "delivered" else None)
        return reply

    def _durable(self, seq: int, status: AckStatus) -> None:
        if status == AckStatus.OK and self.session is not None and self.dedup is not None:
            self.dedup.record(self.session, seq)
        self.send_ack(seq, status)

    def send_ack(self, seq: int, status: AckStatus = AckStatus.OK) -> None:
        """Acknowledge batch ``seq`` now (used when its ack waited for delivery)."""
        if self._transport is not None and not self._closing:
            self._transport.write(encode_ack(seq, status))

    def _write(self, replies: list[bytes]) -> None:
        if replies and self._transport is not None:
            self._transport.write(b"".join(replies))

    def _handle(self, event: object) -> bytes | None:
        if isinstance(event, Batch):
            if self.client_id is None:
                raise ProtocolError(ErrorCode.UNEXPECTED_FRAME, "BATCH before HELLO")
            return self._on_batch(event)
        if isinstance(event, Heartbeat):
            return None if event.pong else encode_heartbeat(event.token, pong=True)
        if isinstance(event, Hello):
            if self.client_id is not None:
                raise ProtocolError(ErrorCode.UNEXPECTED_FRAME, "second HELLO on one connection")
            if event.version != PROTOCOL_VERSION:
                raise ProtocolError(
                    ErrorCode.UNSUPPORTED_VERSION, f"protocol version {event.version} is not supported (1 is)"
                )
            if event.role != Role.EMITTER:
                raise ProtocolError(ErrorCode.BAD_HANDSHAKE, f"role {event.role!r} cannot send to an ingest port")
            self.client_id = event.client_id
            session = event.options.get("session")
            self.session = (event.client_id, session) if session and self.dedup is not None else None
            chosen = negotiate(event.compression, SUPPORTED)
            return encode_welcome(
                Welcome(server_id=self.server_id, compression=chosen, max_frame=self._decoder.max_frame)
            )
        if isinstance(event, Error):
            log.warning("emitter %s (%s) reported %s: %s", self.client_id, self.peer, event.code.name, event.reason)
            self.close()
            return None
        if isinstance(event, Ack):
            raise ProtocolError(ErrorCode.UNEXPECTED_FRAME, "emitters do not send ACK frames")
        raise ProtocolError(ErrorCode.UNEXPECTED_FRAME, f"unexpected {type(event).__name__} frame from an emitter")
