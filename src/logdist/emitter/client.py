"""Emitter client library: send message blocks to a logdist distributor (or an analyzer) with at-least-once delivery.

    client = EmitterClient("127.0.0.1", 7000, client_id="web-1")
    await client.connect()
    stream = StreamStamper()
    await client.send(stream.block([b"GET /index.html 200", b"GET /missing 404"], severity=[6, 4]))
    await client.flush(10.0)
    await client.close()

Each ``send`` gives the block the next batch sequence number and waits while ``window`` batches are unacked.
Unacked batches are kept; when the connection is lost (or the server sends ERROR) the client reconnects
with jittered exponential backoff (50 ms doubling to 2 s) and retransmits every unacked batch in order.
ACK RETRY resends the batch after a backoff; ACK REJECTED drops it (counted, logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from logdist.delivery.backoff import Backoff
from logdist.wire.batch import FLAG_CRC, HEADER_DTYPE, MessageBlock
from logdist.wire.errors import ErrorCode, ProtocolError
from logdist.wire.native import (
    Ack,
    AckStatus,
    Error,
    FrameDecoder,
    Heartbeat,
    Hello,
    Welcome,
    encode_batch,
    encode_batch_parts,
    encode_error,
    encode_heartbeat,
    encode_hello,
)

log = logging.getLogger("logdist.emitter")

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class _Pending:
    """A sent, not yet acknowledged batch."""

    seq: int
    block: MessageBlock
    frame: list[Buffer]  # the encoded BATCH frame, ready for writelines
    codec: str | None  # the codec ``frame`` was encoded with
    in_flight: bool = False  # written on the current connection and not answered with RETRY
    attempts: int = 0  # times written to a connection
    retry: Backoff | None = None  # per-batch backoff for ACK RETRY
    retry_handle: asyncio.TimerHandle | None = None


class _ClientProtocol(asyncio.Protocol):
    """The I/O side of one connection; all decisions are the client's."""

    def __init__(self, client: EmitterClient) -> None:
        self.client = client
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.welcome: asyncio.Future[Welcome] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._can_write = asyncio.Event()
        self._can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        transport.set_write_buffer_limits(high=4 * 1024 * 1024)

    def connection_lost(self, exc: Exception | None) -> None:
        self._can_write.set()
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionError(f"connection lost before WELCOME: {exc or 'closed by peer'}"))
            self.welcome.exception()  # mark retrieved
        if not self.lost.done():
            self.lost.set_result(None)
        self.client._on_connection_lost(self, exc)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    async def drain(self) -> None:
        if not self._can_write.is_set():
            await self._can_write.wait()

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def write(self, data: Buffer) -> None:
        if self.open:
            self.transport.write(data)  # type: ignore[union-attr]

    def writelines(self, parts: list[Buffer]) -> None:
        if self.open:
            self.transport.writelines(parts)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.decoder.feed(data)
        except ProtocolError as exc:
            log.warning("protocol error from server: %s: %s", exc.code.name, exc.reason)
            self.write(encode_error(exc.code, exc.reason))
            self.close()
            return
        for event in events:
            if isinstance(event, Ack):
                self.client._on_ack(event)
            elif isinstance(event, Heartbeat):
                if not event.pong:
                    self.write(encode_heartbeat(event.token, pong=True))
            elif isinstance(event, Welcome):
                if self.welcome.done():
                    self._unexpected("second WELCOME")
                    return
                self.welcome.set_result(event)
            elif isinstance(event, Error):
                log.warning("server error %s (%d): %s; reconnecting", event.code.name, event.code, event.reason)
                self.client.server_errors += 1
                self.client.last_error = f"{event.code.name}: {event.reason}"
                self.close()
                return
            else:
                self._unexpected(f"unexpected {type(event).__name__} frame")
                return

    def _unexpected(self, reason: str) -> None:
        log.warning("protocol error from server: %s", reason)
        self.write(encode_error(ErrorCode.UNEXPECTED_FRAME, reason))
        self.close()


class EmitterClient:
    """At-least-once sender of message blocks over one native-protocol connection (reconnecting as needed).

    Counters: ``sent_batches``/``sent_messages`` (each batch once, at ``send``), ``acked_batches``/
    ``acked_messages`` (ACK OK), ``retried`` (batch retransmissions: after reconnects and ACK RETRY),
    ``rejected``/``rejected_messages`` (ACK REJECTED: dropped), ``reconnects``, ``server_errors``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        window: int = 64,
        compression: str | None = None,
        token: str | None = None,
        connect_timeout: float = 5.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.host = host
        self.port = port
        self.client_id = client_id
        self.session = secrets.token_hex(8)  # with client_id: lets the distributor spot retransmitted batches
        self.window = window
        self.compression = compression
        self.token = token
        self.connect_timeout = connect_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._backoff = Backoff(backoff_initial, backoff_max)

        self.sent_batches = 0
        self.sent_messages = 0
        self.acked_batches = 0
        self.acked_messages = 0
        self.retried = 0
        self.rejected = 0
        self.rejected_messages = 0
        self.reconnects = 0
        self.server_errors = 0
        self.last_error: str | None = None
        self.welcome: Welcome | None = None

        self._next_seq = 0
        self._unacked: dict[int, _Pending] = {}  # insertion order == seq order
        self._codec: str | None = None  # negotiated on the current connection
        self._proto: _ClientProtocol | None = None  # set while connected (after WELCOME)
        self._runner: asyncio.Task[None] | None = None
        self._closed = False
        self._connected = asyncio.Event()
        self._space = asyncio.Event()  # set while fewer than ``window`` batches are unacked
        self._space.set()
        self._idle = asyncio.Event()  # set while nothing is unacked
        self._idle.set()

    # -- public API -------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._proto is not None and self._proto.open

    @property
    def unacked(self) -> int:
        """Batches sent and not yet acknowledged (or rejected)."""
        return len(self._unacked)

    @property
    def unacked_messages(self) -> int:
        return sum(p.block.count for p in self._unacked.values())

    def unacked_seqs(self) -> list[int]:
        return list(self._unacked)

    async def connect(self, timeout: float | None = 10.0) -> None:
        """Start the connection (and its reconnect loop); return once the first handshake is done.

        Raises ConnectionError when no handshake succeeded within ``timeout`` seconds.
        """
        if self._closed:
            raise RuntimeError("client is closed")
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name=f"emitter-{self.client_id}")
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            await self.close()
            raise ConnectionError(
                f"could not connect to {self.host}:{self.port} within {timeout} s: {self.last_error}"
            ) from None

    async def send(self, block: MessageBlock) -> int:
        """Queue ``block`` as the next batch (waiting while ``window`` batches are unacked); return its seq.

        The batch is written at once when connected, else on the next (re)connection.
        """
        while len(self._unacked) >= self.window:
            if self._closed:
                raise RuntimeError("client is closed")
            self._space.clear()
            await self._space.wait()
        if self._closed:
            raise RuntimeError("client is closed")
        seq = self._next_seq
        self._next_seq += 1
        pending = _Pending(seq, block, *self._encode(seq, block))
        self._unacked[seq] = pending
        self._idle.clear()
        if len(self._unacked) >= self.window:
            self._space.clear()
        self.sent_batches += 1
        self.sent_messages += block.count
        proto = self._proto
        if proto is not None and proto.open:
            self._transmit(proto, pending)
            await proto.drain()
        return seq

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every sent batch is acknowledged (or rejected); False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop the connection and its reconnect loop; unacked batches stay unacked (see :meth:`flush`)."""
        self._closed = True
        for pending in self._unacked.values():
            if pending.retry_handle is not None:
                pending.retry_handle.cancel()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if self._proto is not None:
            self._proto.close()
            self._proto = None
        self._space.set()  # wake blocked senders: they raise
        self._connected.clear()

    def stats(self) -> dict[str, int]:
        return {
            "sent_batches": self.sent_batches,
            "sent_messages": self.sent_messages,
            "acked_batches": self.acked_batches,
            "acked_messages": self.acked_messages,
            "retried": self.retried,
            "rejected": self.rejected,
            "rejected_messages": self.rejected_messages,
            "reconnects": self.reconnects,
            "unacked": len(self._unacked),
        }

    # -- connection management --------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        while not self._closed:
            if not first:
                await asyncio.sleep(self._backoff.next())
            first = False
            proto: _ClientProtocol | None = None
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: _ClientProtocol(self), self.host, self.port),
                    self.connect_timeout,
                )
                proto.write(
                    encode_hello(
                        Hello(
                            role="emitter",
                            client_id=self.client_id,
                            compression=[self.compression] if self.compression else [],
                            token=self.token,
                            options={"session": self.session},
                        )
                    )
                )
                welcome = await asyncio.wait_for(asyncio.shield(proto.welcome), self.connect_timeout)
            except (TimeoutError, OSError, ConnectionError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.debug("connect to %s:%s failed: %s", self.host, self.port, self.last_error)
                if proto is not None:
                    proto.close()
                continue
            if not proto.open:
                continue
            self.welcome = welcome
            self._codec = welcome.compression if welcome.compression == self.compression else None
            self._proto = proto
            if self._connected.is_set():
                self.reconnects += 1
            self._backoff.reset()
            # retransmit everything unacked, in order, before any new send can write
            for pending in self._unacked.values():
                if pending.retry_handle is not None:
                    pending.retry_handle.cancel()
                    pending.retry_handle = None
                self._transmit(proto, pending)
            self._connected.set()
            await proto.lost
            self._proto = None

    def _on_connection_lost(self, proto: _ClientProtocol, exc: Exception | None) -> None:
        if proto is not self._proto:
            return
        if not self._closed:
            log.info("connection to %s:%s lost (%s); %d batches unacked", self.host, self.port, exc, self.unacked)
        for pending in self._unacked.values():
            pending.in_flight = False

    def _encode(self, seq: int, block: MessageBlock) -> tuple[list[Buffer], str | None]:
        codec = self._codec
        if codec is None:
            return encode_batch_parts(seq, block.count, block.headers, block.bodies), None
        return [encode_batch(seq, block, codec)], codec

    def _transmit(self, proto: _ClientProtocol, pending: _Pending) -> None:
        if pending.codec != self._codec:
            pending.frame, pending.codec = self._encode(pending.seq, pending.block)
        if pending.attempts:
            self.retried += 1
        pending.attempts += 1
        pending.in_flight = True
        proto.writelines(pending.frame)

    # -- acknowledgements -------------------------------------------------------------------------------
    def _on_ack(self, ack: Ack) -> None:
        pending = self._unacked.get(ack.seq)
        if pending is None:
            return  # an ack for a batch already settled (e.g. answered twice after a retransmit)
        if ack.status == AckStatus.RETRY:
            pending.in_flight = False
            if pending.retry is None:
                pending.retry = Backoff(self._backoff_initial, self._backoff_max)
            if pending.retry_handle is None:
                delay = pending.retry.next()
                pending.retry_handle = asyncio.get_running_loop().call_later(delay, self._resend, pending)
            return
        del self._unacked[ack.seq]
        if pending.retry_handle is not None:
            pending.retry_handle.cancel()
        if ack.status == AckStatus.OK:
            self.acked_batches += 1
            self.acked_messages += pending.block.count
        else:
            self.rejected += 1
            self.rejected_messages += pending.block.count
            log.warning("batch %d (%d messages) rejected by the server; not resending", ack.seq, pending.block.count)
        if len(self._unacked) < self.window:
            self._space.set()
        if not self._unacked:
            self._idle.set()

    def _resend(self, pending: _Pending) -> None:
        pending.retry_handle = None
        if self._unacked.get(pending.seq) is not pending or pending.in_flight:
            return
        proto = self._proto
        if proto is None or not proto.open:
            return  # the reconnect will retransmit it
        self._transmit(proto, pending)


class StreamStamper:
    """Stamps payloads into blocks for one stream: a random 64-bit stream id and consecutive seqs from 0.

    ``block(payloads)`` gives every message the next seq, the current time (unix ns), a severity
    (one value or one per payload) and the CRC-32 of its payload.
    """

    def __init__(self, stream: int | None = None, first_seq: int = 0) -> None:
        self.stream = secrets.randbits(64) if stream is None else stream
        self.next_seq = first_seq

    def block(
        self, payloads: Sequence[bytes], severity: int | Sequence[int] = 128, ts_ns: int | None = None
    ) -> MessageBlock:
        block = build_block(payloads, stream=self.stream, first_seq=self.next_seq, severity=severity, ts_ns=ts_ns)
        self.next_seq += len(payloads)
        return block


def build_block(
    payloads: Sequence[bytes],
    *,
    stream: int,
    first_seq: int,
    severity: int | Sequence[int] = 128,
    ts_ns: int | None = None,
) -> MessageBlock:
    """A block of ``payloads`` with ids ``(stream, first_seq + i)``, one timestamp, CRC-32s, no attributes."""
    n = len(payloads)
    array = np.zeros(n, dtype=HEADER_DTYPE)
    array["stream"] = stream
    array["seq"] = np.arange(first_seq, first_seq + n, dtype=np.uint64)
    array["ts"] = time.time_ns() if ts_ns is None else ts_ns
    array["severity"] = severity
    array["flags"] = FLAG_CRC
    array["crc"] = [zlib.crc32(p) for p in payloads]
    array["length"] = [len(p) for p in payloads]
    return MessageBlock(n, array.tobytes(), b"".join(payloads), array)
