"""One link per analyzer: batching with linger, an in-flight window, acks, failure detection, reconnects."""

from __future__ import annotations

import asyncio
import logging
import time
from enum import StrEnum
from typing import Protocol

from logdist.config import DeliveryConfig
from logdist.delivery.backoff import Backoff
from logdist.delivery.coalescer import Coalescer
from logdist.runtime import parse_hostport
from logdist.wire.batch import MessageBlock
from logdist.wire.compression import SUPPORTED
from logdist.wire.errors import ProtocolError
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
    encode_error,
    encode_heartbeat,
    encode_hello,
)

log = logging.getLogger("logdist.link")


class LinkState(StrEnum):
    """Where a link is in its life."""

    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


class LinkOwner(Protocol):
    """What a link tells the distributor."""

    def link_up(self, link: AnalyzerLink) -> None: ...
    def link_down(self, link: AnalyzerLink, orphans: list[MessageBlock]) -> None: ...
    def delivered(self, link: AnalyzerLink, parts: list[MessageBlock]) -> None: ...
    def rejected(self, link: AnalyzerLink, parts: list[MessageBlock]) -> None: ...


class AnalyzerLink(asyncio.Protocol):
    """Delivers blocks to one analyzer over the native protocol.

    Messages wait in a coalescer; a batch leaves when ``max_batch_messages`` are queued or after the
    linger, while fewer than ``window`` batches await their ack. Connection loss, an error frame or
    silence past ``ack_timeout_s`` with work outstanding fails the link: every unacked and queued block
    goes back to the owner for rerouting, and reconnects start with jittered exponential backoff.
    """

    def __init__(self, name: str, address: str, weight: float, config: DeliveryConfig, owner: LinkOwner) -> None:
        self.name = name
        self.address = address
        self.host, self.port = parse_hostport(address)
        self.weight = weight
        self.config = config
        self.owner = owner
        self.state = LinkState.DOWN
        self.queue = Coalescer(config.max_batch_messages)
        self.in_flight: dict[int, list[MessageBlock]] = {}
        self.in_flight_messages = 0
        self.delivered_messages = 0
        self.delivered_batches = 0
        self.failures = 0
        self.last_failure: str | None = None
        self.up_since: float | None = None
        self.ever_up = False
        self._sent_at: dict[int, float] = {}
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._seq = 0
        self._codec: str | None = None
        self._welcomed: asyncio.Future[Welcome] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._last_rx = 0.0
        self._ping_token = 0
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        self._runner: asyncio.Task[None] | None = None
        self._lost: asyncio.Event = asyncio.Event()
        self._writable = True

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting (and reconnecting) in the background."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"link-{self.name}")

    async def close(self) -> list[MessageBlock]:
        """Stop for good; return whatever was not acknowledged."""
        self.state = LinkState.CLOSED
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
        if self._transport is not None:
            self._transport.abort()
        return self._take_orphans()

    @property
    def outstanding(self) -> int:
        """Messages queued or in flight."""
        return len(self.queue) + self.in_flight_messages

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.state != LinkState.CLOSED:
            self.state = LinkState.CONNECTING
            try:
                await asyncio.wait_for(self._connect(loop), self.config.connect_timeout_s)
            except (TimeoutError, OSError, ProtocolError, ConnectionError) as exc:
                reason = f"connect failed: {exc!r}"
                if self._transport is not None:
                    self._transport.abort()
                self._mark_down(reason)
                await asyncio.sleep(self._backoff.next())
                continue
            self._backoff.reset()
            self.state = LinkState.UP
            self.up_since = time.monotonic()
            self._last_rx = self.up_since
            self.owner.link_up(self)
            self.ever_up = True
            self._flush()
            await self._watch()
            if self.state == LinkState.CLOSED:
                return
            await asyncio.sleep(self._backoff.next())

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        self._lost = asyncio.Event()
        self._decoder = FrameDecoder()
        self._welcomed = loop.create_future()
        transport, _ = await loop.create_connection(lambda: self, self.host, self.port)
        self._transport = transport
        offered = [self.config.compression] if self.config.compression in SUPPORTED else []
        self._transport.write(encode_hello(Hello(role=Role.DISTRIBUTOR, client_id="logdist", compression=offered)))
        welcome = await self._welcomed
        self._codec = welcome.compression if welcome.compression in offered else None

    async def _watch(self) -> None:
        """Ping when idle; fail the link when the analyzer stays silent with work outstanding."""
        cfg = self.config
        tick = min(cfg.heartbeat_interval_s, cfg.ack_timeout_s / 4) or 0.05
        while self.state == LinkState.UP:
            try:
                await asyncio.wait_for(self._lost.wait(), tick)
            except TimeoutError:
                pass
            if self.state != LinkState.UP:
                return
            silent = time.monotonic() - self._last_rx
            if silent > cfg.ack_timeout_s and (self.in_flight or self._ping_token):
                self._fail(f"analyzer silent for {silent:.2f}s with work outstanding (hung?)")
                return
            if silent > cfg.heartbeat_interval_s and self._transport is not None and not self._ping_token:
                self._ping_token = int(time.monotonic_ns() & 0xFFFFFFFF) or 1
                self._transport.write(encode_heartbeat(self._ping_token))

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._writable = True
        transport.set_write_buffer_limits(high=8 * 1024 * 1024)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._welcomed is not None and not self._welcomed.done():
            self._welcomed.set_exception(ConnectionError(f"connection closed before WELCOME: {exc!r}"))
        if self.state == LinkState.UP:
            self._fail(f"connection lost: {exc!r}" if exc else "connection closed by analyzer")
        self._lost.set()

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._last_rx = time.monotonic()
        try:
            events = self._decoder.feed(data)
        except ProtocolError as exc:
            if self._transport is not None:
                self._transport.write(encode_error(exc.code, exc.reason))
            self._fail(f"protocol error from analyzer: {exc}")
            return
        for event in events:
            if isinstance(event, Ack):
                self._on_ack(event)
            elif isinstance(event, Heartbeat):
                if event.pong:
                    self._ping_token = 0
                elif self._transport is not None:
                    self._transport.write(encode_heartbeat(event.token, pong=True))
            elif isinstance(event, Welcome):
                if self._welcomed is not None and not self._welcomed.done():
                    self._welcomed.set_result(event)
            elif isinstance(event, Error):
                self._fail(f"analyzer reported {event.code.name}: {event.reason}")
                return
            else:
                self._fail(f"unexpected {type(event).__name__} frame from analyzer")
                return
        if self.queue.messages:
            self._flush()

    # -- delivery ----------------------------------------------------------------------------------

    def enqueue(self, block: MessageBlock) -> None:
        """Queue ``block`` for this analyzer; it leaves when a batch fills or the linger expires."""
        self.queue.add(block)
        if self.state != LinkState.UP:
            return
        if self.queue.messages >= self.config.max_batch_messages or self.config.linger_ms <= 0:
            self._flush()
        elif self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self.config.linger_ms / 1000, self._linger_expired)

    def _linger_expired(self) -> None:
        self._linger = None
        self._flush()

    def _flush(self) -> None:
        """Send queued messages while the window and the socket allow."""
        transport = self._transport
        if self.state != LinkState.UP or transport is None:
            return
        window = self.config.window
        while self.queue.messages and len(self.in_flight) < window and self._writable:
            parts = self.queue.take()
            self._seq += 1
            seq = self._seq
            self.in_flight[seq] = parts
            self._sent_at[seq] = time.monotonic()
            self.in_flight_messages += sum(part.count for part in parts)
            if self._codec is None:
                transport.writelines(encode_batch_blocks(seq, parts))
            else:
                transport.write(encode_batch(seq, MessageBlock.concat(parts), self._codec))
        if self._linger is not None and not self.queue.messages:
            self._linger.cancel()
            self._linger = None

    def _on_ack(self, ack: Ack) -> None:
        parts = self.in_flight.pop(ack.seq, None)
        if parts is None:
            return  # a late ack for a batch already rerouted
        self._sent_at.pop(ack.seq, None)
        count = sum(part.count for part in parts)
        self.in_flight_messages -= count
        if ack.status == AckStatus.OK:
            self.delivered_messages += count
            self.delivered_batches += 1
            self.owner.delivered(self, parts)
        elif ack.status == AckStatus.RETRY:
            for part in reversed(parts):
                self.queue.push_front(part)
        else:
            self.owner.rejected(self, parts)

    # -- failure -----------------------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        if self.state != LinkState.UP:
            return
        if self._transport is not None:
            self._transport.abort()
        self._mark_down(reason)
        self._lost.set()

    def _mark_down(self, reason: str) -> None:
        was_up = self.state == LinkState.UP
        self.state = LinkState.DOWN
        self.up_since = None
        self._ping_token = 0
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.last_failure = reason
        if was_up:
            self.failures += 1
            log.warning("analyzer %s (%s) down: %s", self.name, self.address, reason)
        if was_up or self.outstanding:
            self.owner.link_down(self, self._take_orphans())

    def _take_orphans(self) -> list[MessageBlock]:
        orphans = [part for seq in sorted(self.in_flight) for part in self.in_flight[seq]]
        self.in_flight.clear()
        self._sent_at.clear()
        self.in_flight_messages = 0
        orphans.extend(self.queue.drain())
        return orphans

    @property
    def oldest_in_flight_age(self) -> float:
        """Seconds since the oldest unacked batch left (0 when none)."""
        if not self._sent_at:
            return 0.0
        return time.monotonic() - next(iter(self._sent_at.values()))

