"""Links to analyzers: batching with linger, an in-flight window, acks, failure detection, reconnects.

``LinkCore`` is the bookkeeping every analyzer kind shares (queue, window, acks, orphans on failure).
``StreamLink`` carries it over one TCP connection speaking a :mod:`logdist.delivery.wires` protocol, either
dialling the analyzer (reconnecting with jittered exponential backoff) or on a connection the analyzer
opened (the original system's dial-in analyzers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from logdist.config import DeliveryConfig
from logdist.control import metrics, tracing
from logdist.delivery.backoff import Backoff
from logdist.delivery.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from logdist.delivery.coalescer import Coalescer
from logdist.delivery.wires import Acked, Alive, LinkWire, Ready, Reply, WeightChanged
from logdist.runtime import parse_hostport
from logdist.wire.batch import MessageBlock
from logdist.wire.errors import ProtocolError
from logdist.wire.native import AckStatus

log = logging.getLogger("logdist.link")


class LinkState(StrEnum):
    """Where a link is in its life."""

    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


class LinkOwner(Protocol):
    """What a link tells the distributor."""

    def link_up(self, link: LinkCore) -> None: ...
    def link_down(self, link: LinkCore, orphans: list[MessageBlock]) -> None: ...
    def link_gone(self, link: LinkCore) -> None: ...
    def weight_changed(self, link: LinkCore) -> None: ...
    def breaker_opened(self, link: LinkCore) -> None: ...
    def reroute(self, link: LinkCore, blocks: list[MessageBlock]) -> None: ...
    def dropped(self, link: LinkCore, blocks: list[MessageBlock], reason: str) -> None: ...
    def delivered(self, link: LinkCore, parts: list[MessageBlock]) -> None: ...
    def rejected(self, link: LinkCore, parts: list[MessageBlock]) -> None: ...


class LinkCore:
    """Queue, in-flight window and outcomes of the batches sent to one analyzer."""

    kind = "native"

    def __init__(
        self,
        name: str,
        address: str,
        weight: float,
        config: DeliveryConfig,
        owner: LinkOwner,
        breaker_policy: BreakerPolicy | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self.weight = weight
        self.config = config
        self.owner = owner
        self.state = LinkState.DOWN
        self.queue = Coalescer(config.max_batch_messages, config.max_queue_messages or None, config.when_full)
        self.in_flight: dict[int, list[MessageBlock]] = {}
        self.in_flight_messages = 0
        self.delivered_messages = 0
        self.delivered_batches = 0
        self.failures = 0
        self.last_failure: str | None = None
        self.up_since: float | None = None
        self.ever_up = False
        self.drained = False  # operator took it out of routing; what it holds still completes
        self.hold = False  # failure_policy "hold": while down, its share is spooled for it, not rerouted
        self.breaker = CircuitBreaker(breaker_policy)
        self._sent_at: dict[int, float] = {}
        self._trace_spans: dict[int, Any] = {}  # tracing: deliver spans by batch seq (sampled batches only)
        self._seq = 0
        self._linger: asyncio.TimerHandle | None = None

    @property
    def outstanding(self) -> int:
        """Messages queued or in flight."""
        return len(self.queue) + self.in_flight_messages

    @property
    def oldest_in_flight_age(self) -> float:
        """Seconds since the oldest unacked batch left (0 when none)."""
        if not self._sent_at:
            return 0.0
        return time.monotonic() - next(iter(self._sent_at.values()))

    def start(self) -> None:
        """Begin delivering (connect in the background where the link dials)."""

    async def close(self) -> list[MessageBlock]:
        """Stop for good; return whatever was not acknowledged."""
        self.state = LinkState.CLOSED
        return self._take_orphans()

    def enqueue(self, block: MessageBlock) -> None:
        """Queue ``block``; it leaves when a batch fills or the linger expires. At the queue bound the
        drop policy may drop messages (the owner counts them); "block" leaves backpressure to the owner."""
        if self.queue.add(block):
            self.owner.dropped(self, self.queue.last_dropped, f"queue_full_{self.queue.when_full}")
        if self.state != LinkState.UP:
            return
        if self.queue.messages >= self.config.max_batch_messages or self.config.linger_ms <= 0:
            self._flush()
        elif self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self.config.linger_ms / 1000, self._linger_expired)

    def _linger_expired(self) -> None:
        self._linger = None
        self._flush()

    def _can_send(self) -> bool:
        return self.state == LinkState.UP

    def _send(self, seq: int, parts: list[MessageBlock]) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        """Send queued messages while the window and the transport allow."""
        window = self.config.window
        tracer = tracing.tracer
        while self.queue.messages and len(self.in_flight) < window and self._can_send():
            parts = self.queue.take()
            self._seq += 1
            seq = self._seq
            self.in_flight[seq] = parts
            self._sent_at[seq] = time.monotonic()
            self.in_flight_messages += sum(part.count for part in parts)
            if tracer is not None:  # tracing: deliver span from written to acked (sampled batches)
                tracer.deliver_started(self._trace_spans, self.name, seq, parts)
            self._send(seq, parts)
        if self._linger is not None and not self.queue.messages:
            self._linger.cancel()
            self._linger = None

    def _outcome(self, seq: int, status: AckStatus) -> None:
        parts = self.in_flight.pop(seq, None)
        if parts is None:
            return  # a late ack for a batch already rerouted
        sent_at = self._sent_at.pop(seq, None)
        if self._trace_spans:  # tracing: end this batch's deliver span
            tracing.deliver_ended(self._trace_spans.pop(seq, None), status.name.lower())
        count = sum(part.count for part in parts)
        self.in_flight_messages -= count
        if status == AckStatus.OK:
            if sent_at is not None and parts:
                oldest_ns = int(parts[0].array["ts"][0])  # queues are FIFO per class: the first is the oldest
                age = max(0.0, (time.time_ns() - oldest_ns) / 1e9) if oldest_ns else 0.0
                metrics.observe_delivery(self.name, time.monotonic() - sent_at, age, count)
            self.delivered_messages += count
            self.delivered_batches += 1
            self.breaker.success()
            self.owner.delivered(self, parts)
        elif status == AckStatus.RETRY:
            for part in reversed(parts):
                self.queue.push_front(part)
            self._breaker_failure("analyzer asked to retry a batch")
            if self.breaker.state == BreakerState.OPEN and self.queue.messages:
                self.owner.reroute(self, self.queue.drain())  # ejected: what waits for it goes elsewhere
        else:
            self._breaker_failure("analyzer rejected a batch")
            self.owner.rejected(self, parts)

    def _breaker_failure(self, reason: str) -> None:
        if self.breaker.failure(time.monotonic(), reason):
            log.warning(
                "analyzer %s ejected for %.1fs (circuit open, ejection %d): %s",
                self.name, self.breaker.ejection_s, self.breaker.ejections, reason,
            )  # fmt: skip
            self.owner.breaker_opened(self)

    def _became_up(self) -> None:
        self.state = LinkState.UP
        self.up_since = time.monotonic()
        self.owner.link_up(self)
        self.ever_up = True
        self._flush()

    def _mark_down(self, reason: str) -> None:
        was_up = self.state == LinkState.UP
        if self.state != LinkState.CLOSED:
            self.state = LinkState.DOWN
        self.up_since = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.last_failure = reason
        if was_up:
            self.failures += 1
            log.warning("analyzer %s (%s) down: %s", self.name, self.address, reason)
            self.breaker.failure(time.monotonic(), reason)
        if was_up or self.outstanding:
            self.owner.link_down(self, self._take_orphans())

    def _take_orphans(self) -> list[MessageBlock]:
        orphans = [part for seq in sorted(self.in_flight) for part in self.in_flight[seq]]
        self.in_flight.clear()
        self._sent_at.clear()
        if self._trace_spans:  # tracing: in-flight batches are orphaned
            tracing.end_all(self._trace_spans, "orphaned")
        self.in_flight_messages = 0
        orphans.extend(self.queue.drain())
        return orphans


class StreamLink(LinkCore, asyncio.Protocol):
    """A link over one TCP connection, speaking the protocol of ``wire_factory``'s wires.

    Connection loss, a protocol error, or silence past ``ack_timeout_s`` while a batch or a ping is
    outstanding fails the link: every unacked and queued block goes back to the owner for rerouting.
    A dialling link then reconnects with jittered exponential backoff; an accepted (dial-in) link is gone.
    """

    def __init__(
        self,
        name: str,
        address: str,
        weight: float,
        config: DeliveryConfig,
        owner: LinkOwner,
        wire_factory: Callable[[], LinkWire],
        kind: str = "native",
        dial: bool = True,
        breaker_policy: BreakerPolicy | None = None,
    ) -> None:
        super().__init__(name, address, weight, config, owner, breaker_policy)
        self.kind = kind
        self.dial = dial
        self._wire_factory = wire_factory
        self._wire: LinkWire = wire_factory()
        self._transport: asyncio.Transport | None = None
        self._ready: asyncio.Future[None] | None = None
        self._last_rx = 0.0
        self._last_buffered = 0
        self._ping_token = 0
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        self._runner: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._writable = True

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._runner is None:
            run = self._run_dialling() if self.dial else self._watch()
            self._runner = asyncio.get_running_loop().create_task(run, name=f"link-{self.name}")

    async def close(self) -> list[MessageBlock]:
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

    async def _run_dialling(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = parse_hostport(self.address)
        while self.state != LinkState.CLOSED:
            self.state = LinkState.CONNECTING
            try:
                await asyncio.wait_for(self._connect(loop, host, port), self.config.connect_timeout_s)
            except (TimeoutError, OSError, ProtocolError, ConnectionError) as exc:
                if self._transport is not None:
                    self._transport.abort()
                self._mark_down(f"connect failed: {exc!r}")
                await asyncio.sleep(self._backoff.next())
                continue
            self._backoff.reset()
            self._became_up()
            await self._watch()
            if self.state == LinkState.CLOSED:
                return
            await asyncio.sleep(self._backoff.next())

    async def _connect(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self._lost = asyncio.Event()
        self._wire = self._wire_factory()
        self._ready = loop.create_future()
        transport, _ = await loop.create_connection(lambda: self, host, port)
        self._transport = transport
        hello = self._wire.hello()
        if hello is None:
            self._ready.set_result(None)
        else:
            transport.write(hello)
        await self._ready

    def _became_up(self) -> None:
        self._last_rx = time.monotonic()
        super()._became_up()

    async def _watch(self) -> None:
        """Ping when idle; fail the link when the analyzer stays silent with work outstanding."""
        cfg = self.config
        tick = min(cfg.heartbeat_interval_s, cfg.ack_timeout_s / 4) or 0.05
        while self.state in (LinkState.UP, LinkState.CONNECTING):
            try:
                await asyncio.wait_for(self._lost.wait(), tick)
            except TimeoutError:
                pass
            if self.state != LinkState.UP:
                if self._lost.is_set() or self.state == LinkState.CLOSED:
                    return
                continue  # a dial-in link waiting for its weight
            now = time.monotonic()
            if self._transport is not None:  # bytes still leaving on a slow link: not hung
                buffered = self._transport.get_write_buffer_size()
                if buffered < self._last_buffered:
                    self._last_rx = max(self._last_rx, now - cfg.heartbeat_interval_s)
                self._last_buffered = buffered
            silent = now - self._last_rx
            if silent > cfg.ack_timeout_s and (self.in_flight or self._ping_token):
                self._fail(f"analyzer silent for {silent:.2f}s with work outstanding (hung?)")
                return
            if silent > cfg.heartbeat_interval_s and self._transport is not None and not self._ping_token:
                token = int(time.monotonic_ns() & 0xFFFFFFFF) or 1
                ping = self._wire.ping(token)
                if ping is not None:
                    self._ping_token = token
                    self._transport.write(ping)

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._writable = True
        self._last_rx = time.monotonic()
        transport.set_write_buffer_limits(high=8 * 1024 * 1024)  # type: ignore[attr-defined]
        if not self.dial:
            self.state = LinkState.CONNECTING
            hello = self._wire.hello()
            if hello is not None:
                transport.write(hello)  # type: ignore[attr-defined]
            self.start()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ConnectionError(f"connection closed during the handshake: {exc!r}"))
        if self.state == LinkState.UP:
            self._fail(f"connection lost: {exc!r}" if exc else "connection closed by analyzer")
        self._lost.set()
        if not self.dial:
            self.state = LinkState.CLOSED
            self.owner.link_gone(self)

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._last_rx = time.monotonic()
        try:
            events = self._wire.feed(data)
        except ProtocolError as exc:
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(exc)
            self._fail(f"protocol error: {exc}")
            if self._transport is not None:
                self._transport.abort()
            return
        for event in events:
            if isinstance(event, Acked):
                self._outcome(event.seq, event.status)
            elif isinstance(event, Reply):
                if self._transport is not None:
                    self._transport.write(event.data)
            elif isinstance(event, Alive):
                self._ping_token = 0
            elif isinstance(event, Ready):
                if self.dial:
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_result(None)
                else:
                    self._became_up()
            elif isinstance(event, WeightChanged):
                self.weight = event.weight
                if self.state == LinkState.UP:
                    self.owner.weight_changed(self)
        if self.queue.messages:
            self._flush()

    # -- delivery ----------------------------------------------------------------------------------

    def _can_send(self) -> bool:
        return self.state == LinkState.UP and self._transport is not None and self._writable

    def _send(self, seq: int, parts: list[MessageBlock]) -> None:
        assert self._transport is not None
        self._transport.writelines(self._wire.encode(seq, parts))
        if not self._wire.acks:
            self._outcome(seq, AckStatus.OK)  # at-most-once: written is as good as it gets

    def _fail(self, reason: str) -> None:
        if self.state != LinkState.UP:
            return
        if self._transport is not None:
            self._transport.abort()
        self._mark_down(reason)
        self._lost.set()
