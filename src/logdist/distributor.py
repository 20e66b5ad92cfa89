"""The distributor: accepts batches from emitters and routes every message to exactly one analyzer by weight.

Runs until SIGINT/SIGTERM, then stops accepting, delivers what it holds for up to the drain deadline and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from logdist.config import (
    AnalyzerConfig,
    Config,
    ConfigError,
    LimitsConfig,
    ListenerConfig,
    load,
    parse_analyzer_flag,
    parse_ingest_flag,
)
from logdist.control import metrics, tracing
from logdist.control.logs import configure_logging
from logdist.delivery.breaker import BreakerPolicy, BreakerState, ejection_budget
from logdist.delivery.link import LinkCore, LinkState, StreamLink
from logdist.delivery.webhook import WebhookLink
from logdist.delivery.wires import LegacyWire, LinesWire, NativeWire
from logdist.ingest.base import IngestConnection
from logdist.ingest.dedup import DedupWindow, Ticket
from logdist.ingest.listeners import STARTERS, Listener, ServerListener
from logdist.routing.plan import RoutingPlan
from logdist.routing.rules import Rule
from logdist.routing.slowstart import SlowStart
from logdist.routing.table import Router
from logdist.runtime import announce, parse_hostport, run
from logdist.spool.accepted import AcceptedLog
from logdist.wire.batch import MessageBlock
from logdist.wire.errors import ProtocolError
from logdist.wire.native import AckStatus

log = logging.getLogger("logdist.distributor")


class Distributor:
    """Owns the route table, the analyzer links, the unrouted backlog and the memory bound."""

    def __init__(self, config: Config, server_id: str = "logdist") -> None:
        self.config = config
        self.server_id = server_id
        self.plan = RoutingPlan(config.group_weights(), config.rules)
        self.group_of = {a.name: a.group for a in config.analyzers}
        self.slow_start = SlowStart(window_s=config.delivery.slow_start_s)
        b = config.breaker
        self.breaker_policy = BreakerPolicy(
            b.consecutive_failures,
            b.failure_rate,
            b.window,
            b.min_samples,
            b.base_ejection_s,
            b.max_ejection_s,
            b.probes,
        )
        self.links: dict[str, LinkCore] = {}
        self.parked: deque[MessageBlock] = deque()  # accepted while no analyzer was up
        self.parked_messages = 0
        self.pending_bytes = 0  # bytes of accepted, not yet acknowledged messages held in memory
        self.max_pending = 0
        self.resume_below = 0
        self.backpressured = False  # pending_bytes went over the bound
        self.operator_paused = False  # paused through the admin API
        self.queue_blocked = False  # an analyzer queue reached delivery.max_queue_messages ("block" policy)
        self.set_limits(config.limits)
        self.connections: set[IngestConnection] = set()
        self.accepted_messages = 0
        self.accepted_batches = 0
        self.rerouted_messages = 0
        self.bad_frames = 0
        self.drops: Counter[str] = Counter()
        self._closed_emitters: Counter[str] = Counter()  # messages of closed connections, by client id
        self.spilled_messages = 0
        self.held_messages = 0
        self._spooled_tickets: dict[tuple[str, int], Ticket] = {}  # spill/hold records whose emitter waits
        self._spill_wake = asyncio.Event()
        self._spill_after: int | None = None
        self._unspill_task: asyncio.Task[None] | None = None
        self.listen_address: str | None = None
        self.dedup = DedupWindow(config.dedup_window) if config.dedup_window else None
        self.accepted_log: AcceptedLog | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self.listeners: list[Listener] = []
        self._ramp_task: asyncio.Task[None] | None = None
        self._table_version = 0
        self._dial_ins = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.started_at = time.monotonic()

    # -- start / stop ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool (if any), start dialling the analyzers, open the listeners, replay the spool."""
        if self.config.spool.path:
            self.accepted_log = AcceptedLog(self.config.spool)
            await self.accepted_log.open()
            if self.dedup is not None:
                self.accepted_log.load_dedup(self.dedup)
        for analyzer in self.config.analyzers:
            self.add_analyzer(analyzer)
        max_frame = int(self.config.limits.max_frame_mb * 1024 * 1024)
        wanted = [ListenerConfig(kind="native", address=self.config.listen), *self.config.listeners]
        for spec in wanted:
            listener = await STARTERS[spec.kind](spec.address, self, self.server_id, max_frame)
            self.listeners.append(listener)
        self.listen_address = self.listeners[0].address
        if self.config.legacy_analyzers:
            host, port = parse_hostport(self.config.legacy_analyzers)
            server = await asyncio.get_running_loop().create_server(
                self._accept_legacy_analyzer, host, port, reuse_address=True
            )
            self.listeners.append(ServerListener("legacy_analyzers", server))
        if self.accepted_log is not None:
            self._replay_task = asyncio.get_running_loop().create_task(
                self.accepted_log.replay(self._take_replayed, self._room)
            )
            if self.accepted_log.depth("spill"):  # spilled by the previous run
                self._unspill_task = asyncio.get_running_loop().create_task(self._unspill())

    def _take_replayed(self, block: MessageBlock) -> None:
        self.pending_bytes += block.nbytes
        self._route(block)

    async def _room(self) -> None:
        """Wait until memory allows more replayed batches (the same bound ingest respects)."""
        while self.pending_bytes > self.resume_below:
            await asyncio.sleep(0.02)

    def add_analyzer(self, spec: AnalyzerConfig) -> LinkCore:
        """Start a link to a new analyzer; it joins the route table once connected."""
        if spec.name in self.links:
            raise ValueError(f"analyzer {spec.name!r} already exists")
        if spec.group not in self.plan.group_weights:
            raise ValueError(f"unknown route group {spec.group!r}")
        self.group_of[spec.name] = spec.group
        delivery = self.config.delivery
        link: LinkCore
        if spec.kind == "webhook":
            link = WebhookLink(spec.name, spec.address, spec.weight, delivery, self, spec.content_encoding)
            link.breaker.policy = self.breaker_policy
        else:
            wires = {
                "native": lambda: NativeWire(self.server_id, delivery.compression),
                "legacy": LegacyWire,
                "lines": LinesWire,
            }
            link = StreamLink(
                spec.name, spec.address, spec.weight, delivery, self, wires[spec.kind], kind=spec.kind,
                breaker_policy=self.breaker_policy,
            )  # fmt: skip
        link.hold = spec.failure_policy == "hold"
        self.links[spec.name] = link
        link.start()
        return link

    async def remove_analyzer(self, name: str, drain: bool = True, timeout_s: float = 30.0) -> int:
        """Take ``name`` out of routing; with ``drain`` let its in-flight and queued batches finish first.

        Whatever is still unacknowledged when it is closed is rerouted to the others. Returns how many
        messages were rerouted.
        """
        link = self.links[name]
        link.drained = True
        self.rebuild_table()
        if drain:
            deadline = time.monotonic() + timeout_s
            while link.outstanding and link.state == LinkState.UP and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        orphans = await link.close()
        del self.links[name]
        metrics.forget_analyzer(name)
        self.rebuild_table()
        self.reroute(link, orphans)
        log.info("analyzer %s removed (%d messages rerouted)", name, sum(b.count for b in orphans))
        return sum(b.count for b in orphans)

    def set_routing(self, group_weights: dict[str, float], rules: list[Rule]) -> None:
        """Swap in new route groups and rules (validated by the caller); applies from the next batch."""
        self.plan = RoutingPlan(group_weights, rules)
        self._table_version += 1
        self.rebuild_table()
        self._unpark()

    def set_limits(self, limits: LimitsConfig) -> None:
        """Apply new memory bounds now."""
        self.max_pending = int(limits.max_pending_mb * 1024 * 1024)
        self.resume_below = int(self.max_pending * limits.resume_pending_fraction)
        was = self.backpressured
        self.backpressured = self.pending_bytes > self.max_pending or (was and self.pending_bytes > self.resume_below)
        if was != self.backpressured:
            self._apply_reading()

    def drain_analyzer(self, name: str) -> None:
        """Stop routing new messages to ``name``; what it holds still completes."""
        self.links[name].drained = True
        self.rebuild_table()

    def restore_analyzer(self, name: str) -> None:
        """Route to a drained analyzer again."""
        self.links[name].drained = False
        self.rebuild_table()

    def set_weight(self, name: str, weight: float) -> None:
        """Change an analyzer's configured weight; the new route table applies from the next batch."""
        if not weight > 0 or weight == float("inf"):
            raise ValueError(f"weight must be a positive finite number, got {weight}")
        self.links[name].weight = weight
        self.rebuild_table()

    def _accept_legacy_analyzer(self) -> StreamLink:
        """A link for an original-system analyzer that dialled in; it joins once it announces its weight."""
        self._dial_ins += 1
        name = f"legacy-{self._dial_ins}"
        return StreamLink(
            name, "dial-in", 0.0, self.config.delivery, self, lambda: LegacyWire(dial_in=True), "legacy",
            dial=False, breaker_policy=self.breaker_policy,
        )  # fmt: skip

    async def shutdown(self, deadline_s: float) -> int:
        """Stop accepting, deliver what is held for up to ``deadline_s``, spool the rest (when there is a
        spool) and fsync; returns the messages left neither delivered nor spooled."""
        for listener in self.listeners:
            await listener.close()
        for conn in list(self.connections):
            conn.close()
        for task in (self._replay_task, self._unspill_task):
            if task is not None:
                task.cancel()  # what is still in the spool stays there for the next start
        try:
            await asyncio.wait_for(self._wait_idle(), deadline_s)
        except TimeoutError:
            pass
        held: list[MessageBlock] = list(self.parked)
        self.parked.clear()
        for link in self.links.values():
            held.extend(await link.close())
        if self._ramp_task is not None:
            self._ramp_task.cancel()
        left = sum(block.count for block in held)
        if self.accepted_log is not None:
            left -= self.accepted_log.covered(held) + await self.accepted_log.keep(held)
            if left == 0 and held:
                log.info("spooled what was not delivered in time; the next start replays it")
            if self.dedup is not None:
                self.accepted_log.save_dedup(self.dedup)
            await self.accepted_log.close()
        return left

    async def _wait_idle(self) -> None:
        while self.parked_messages or any(link.outstanding for link in self.links.values()):
            self._idle.clear()
            await self._idle.wait()

    # -- ingest side (IngestSink) ------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """Whether ingest is paused (backpressure or operator)."""
        return self.backpressured or self.operator_paused or self.queue_blocked

    def _apply_reading(self) -> None:
        for conn in self.connections:
            if self.paused:
                conn.pause()
            else:
                conn.resume()

    def pause_ingest(self) -> None:
        """Operator pause: stop reading from every emitter until resume_ingest()."""
        self.operator_paused = True
        self._apply_reading()

    def resume_ingest(self) -> None:
        """Undo pause_ingest() (backpressure, if any, still applies)."""
        self.operator_paused = False
        self._apply_reading()

    def register(self, conn: IngestConnection) -> None:
        self.connections.add(conn)
        if self.paused:
            # uvloop ignores pause_reading() inside connection_made: pause right after it returns
            asyncio.get_running_loop().call_soon(self._pause_if_paused, conn)

    def _pause_if_paused(self, conn: IngestConnection) -> None:
        if self.paused and conn in self.connections:
            conn.pause()

    def unregister(self, conn: IngestConnection) -> None:
        self.connections.discard(conn)
        client = getattr(conn, "client_id", None) or "anonymous"
        self._closed_emitters[client] += getattr(conn, "messages", 0)
        if len(self._closed_emitters) > 4 * metrics.EMITTER_SERIES:  # bounded: fold the smallest into "other"
            for name, count in self._closed_emitters.most_common()[metrics.EMITTER_SERIES :]:
                del self._closed_emitters[name]
                self._closed_emitters["other"] += count

    def emitter_totals(self, top: int) -> dict[str, int]:
        """Messages accepted per emitter client id (open and closed connections): the ``top`` busiest and the
        rest summed as "other" (bounded label cardinality for metrics)."""
        totals = Counter(self._closed_emitters)
        for conn in self.connections:
            totals[getattr(conn, "client_id", None) or "anonymous"] += getattr(conn, "messages", 0)
        other = totals.pop("other", 0)
        busiest = totals.most_common(top)
        other += sum(totals.values()) - sum(count for _, count in busiest)
        return {**dict(busiest), **({"other": other} if other else {})}

    def bad_input(self, conn: IngestConnection, error: ProtocolError) -> None:
        self.bad_frames += 1
        log.warning(
            "bad input from emitter connection %s (%s): %s", conn.conn_id, conn.peer, error,
            extra={"conn": conn.conn_id, "peer": conn.peer},
        )  # fmt: skip

    def accept(self, block: MessageBlock, durable: Callable[[AckStatus], None] | None = None) -> None:
        """Take responsibility for ``block``: route it, or park it while no analyzer is up. With ``durable``,
        also write it to the spool and call ``durable`` once it is on disk (ingest then acks the emitter)."""
        self.accepted_messages += block.count
        self.accepted_batches += 1
        if not block.count:
            if durable is not None:
                durable(AckStatus.OK)
            return
        if (
            self.accepted_log is not None
            and self.pending_bytes > self.max_pending
            and self.config.limits.when_full == "spill"
        ):
            self._spill(block, durable)
            return
        if durable is not None:
            if self.accepted_log is None:
                durable(AckStatus.RETRY)
                return
            self.accepted_log.make_durable(block, durable)
        self.pending_bytes += block.nbytes
        if (tracer := tracing.tracer) is None:  # tracing off: this check is its only cost
            self._route(block)
        else:  # tracing: a route span around routing (sampled batches)
            tracer.route(block, self._route)
        spilling = self.accepted_log is not None and self.config.limits.when_full == "spill"
        if self.pending_bytes > self.max_pending and not self.backpressured and not spilling:
            self.backpressured = True
            self._apply_reading()

    @property
    def router(self) -> Router:
        """The root router (messages no rule takes)."""
        return self.plan.root

    def _route(self, block: MessageBlock) -> None:
        if not block.count:
            return
        routed = self.plan.route(block)
        links = self.links
        for name, part in routed.runs:
            link = links[name]
            if link.hold and link.state != LinkState.UP and self.accepted_log is not None:
                self._hold(link, part)
                continue
            link.enqueue(part)
            # "block" policy: a full analyzer queue stops ingest until it has drained to half
            if link.queue.full and link.queue.when_full == "block" and not self.queue_blocked:
                self.queue_blocked = True
                self._apply_reading()
        for part in routed.unroutable:
            self.parked.append(part)
            self.parked_messages += part.count
        for rule, part in routed.dropped:
            self.drops[f"rule:{rule}"] += part.count
            if part.ticket is not None:
                part.ticket.settle(part.count)
            self._release(part.nbytes)

    # -- spill (limits.when_full = "spill") and hold (failure_policy = "hold") ---------------------------

    def _spill(self, block: MessageBlock, durable: Callable[[AckStatus], None] | None) -> None:
        """Past the memory bound: write ``block`` to the spool instead of holding it; it is routed later."""
        assert self.accepted_log is not None
        ticket = block.ticket

        def written(record: int | None) -> None:
            if record is None:  # the spool is full too: not accepted when durable, else held in memory
                if durable is not None:
                    durable(AckStatus.RETRY)
                    return
                self.pending_bytes += block.nbytes
                self._route(block)
                if not self.backpressured:
                    self.backpressured = True
                    self._apply_reading()
                return
            if durable is not None:
                durable(AckStatus.OK)
            if ticket is not None:
                self._spooled_tickets[("spill", record)] = ticket
            self.spilled_messages += block.count
            self._spill_wake.set()
            if self._unspill_task is None or self._unspill_task.done():
                self._unspill_task = asyncio.get_running_loop().create_task(self._unspill())

        self.accepted_log.put("spill", block, written)

    async def _unspill(self) -> None:
        """Route spilled batches back, oldest first, as memory allows."""
        assert self.accepted_log is not None
        while True:
            self._spill_wake.clear()
            self._spill_after = await self.accepted_log.drain(
                "spill", lambda record, block: self._from_spool("spill", record, block, None), self._room,
                self._spill_after,
            )  # fmt: skip
            if not self._spill_wake.is_set():
                return

    def _from_spool(self, queue: str, record: int, block: MessageBlock, link: LinkCore | None) -> None:
        """A batch read back from a spill or hold queue: routed (or sent to ``link``); its record is deleted
        once every message was delivered."""
        assert self.accepted_log is not None
        ticket = self._spooled_tickets.pop((queue, record), None) or Ticket(block.count)
        ticket.spool_queue = queue
        ticket.callbacks.append(lambda: self.accepted_log.forget_from(queue, record))  # type: ignore[union-attr]
        block.ticket = ticket
        self.pending_bytes += block.nbytes
        if link is None:
            self._route(block)
        else:
            link.enqueue(block)

    def _hold(self, link: LinkCore, part: MessageBlock) -> None:
        """``link`` is down and holds its share: spool ``part`` for it instead of rerouting."""
        assert self.accepted_log is not None
        queue = f"hold:{link.name}"
        ticket = part.ticket
        if ticket is not None and ticket.spool_queue == queue:
            self._release(part.nbytes)  # read back from this very queue: its record is still on disk
            return

        def written(record: int | None) -> None:
            if record is None:  # spool full: keep it in the link's memory queue until it is back
                link.enqueue(part)
                return
            if ticket is not None:
                self._spooled_tickets[(queue, record)] = ticket
            self.held_messages += part.count
            self._release(part.nbytes)

        self.accepted_log.put(queue, part, written)

    async def _replay_held(self, link: LinkCore) -> None:
        """Send ``link`` what was held for it while it was down, paced by its queue and the memory bound."""
        assert self.accepted_log is not None
        queue = f"hold:{link.name}"
        limit = 2 * self.config.delivery.max_batch_messages

        async def room() -> None:
            while link.state == LinkState.UP and (len(link.queue) > limit or self.pending_bytes > self.resume_below):
                await asyncio.sleep(0.02)
            if link.state != LinkState.UP:
                raise asyncio.CancelledError  # down again: the rest stays on disk for next time

        try:
            await self.accepted_log.drain(
                queue, lambda record, block: self._from_spool(queue, record, block, link), room
            )
        except asyncio.CancelledError:
            pass

    def dropped(self, link: LinkCore, blocks: list[MessageBlock], reason: str) -> None:
        """A link dropped ``blocks`` by its queue policy: count them by reason, release their memory."""
        count = sum(block.count for block in blocks)
        self.drops[reason] += count
        for block in blocks:
            if block.ticket is not None:
                block.ticket.settle(block.count, rejected=True)
        if self.drops[reason] == count or self.drops[reason] // 100_000 != (self.drops[reason] - count) // 100_000:
            log.warning(
                "analyzer %s queue full: %d messages dropped so far (%s)", link.name, self.drops[reason], reason
            )
        self._release(sum(block.nbytes for block in blocks))

    def _release(self, nbytes: int) -> None:
        self.pending_bytes -= nbytes
        if self.queue_blocked and not any(
            len(link.queue) > (link.queue.max_queue_messages or 0) // 2 for link in self.links.values()
        ):
            self.queue_blocked = False
            self._apply_reading()
        if self.backpressured and self.pending_bytes <= self.resume_below:
            self.backpressured = False
            self._apply_reading()
        if (
            not self._idle.is_set()
            and not self.parked_messages
            and not any(link.outstanding for link in self.links.values())
        ):
            self._idle.set()

    # -- delivery side (LinkOwner) -----------------------------------------------------------------

    def ack_mode_for(self, address: str) -> str:
        """The ack mode of the native listener bound to ``address``."""
        for listener in self.config.listeners:
            if listener.address == address and listener.ack is not None:
                return listener.ack
        return self.config.ack

    def delivered(self, link: LinkCore, parts: list[MessageBlock]) -> None:
        for part in parts:
            if part.ticket is not None:
                part.ticket.settle(part.count)
        self._release(sum(part.nbytes for part in parts))

    def rejected(self, link: LinkCore, parts: list[MessageBlock]) -> None:
        for part in parts:
            if part.ticket is not None:
                part.ticket.settle(part.count, rejected=True)
        count = sum(part.count for part in parts)
        self.drops["rejected_by_analyzer"] += count
        log.error("analyzer %s rejected a batch of %d messages; counted as dropped", link.name, count)
        self._release(sum(part.nbytes for part in parts))

    def link_up(self, link: LinkCore) -> None:
        if self.links.get(link.name) is not link:  # a dial-in analyzer announced its weight
            self.links[link.name] = link
        log.info("analyzer %s (%s, %s) up with weight %g", link.name, link.kind, link.address, link.weight)
        self.rebuild_table()
        if link.ever_up and self.slow_start.window_s > 0:
            self._ensure_ramp()
        if link.hold and self.accepted_log is not None and self.accepted_log.depth(f"hold:{link.name}"):
            asyncio.get_running_loop().create_task(self._replay_held(link))
        self._unpark()

    def link_down(self, link: LinkCore, orphans: list[MessageBlock]) -> None:
        self.rebuild_table()
        if link.breaker.state != BreakerState.CLOSED:
            self._ensure_ramp()
        if link.hold and self.accepted_log is not None:
            for block in orphans:
                self._hold(link, block)  # its own partition: kept for it, not rerouted
            return
        self.reroute(link, orphans)

    def link_gone(self, link: LinkCore) -> None:
        """A dial-in analyzer disconnected: it leaves for good (its batches were rerouted already)."""
        if self.links.get(link.name) is link:
            del self.links[link.name]
            metrics.forget_analyzer(link.name)
            self.rebuild_table()

    def weight_changed(self, link: LinkCore) -> None:
        log.info("analyzer %s announced weight %g", link.name, link.weight)
        self.rebuild_table()

    def _unpark(self) -> None:
        blocks = list(self.parked)
        self.parked.clear()
        self.parked_messages = 0
        for block in blocks:
            self._route(block)  # what still has no analyzer up is parked again

    # -- route table -------------------------------------------------------------------------------

    def effective_weight(self, link: LinkCore, now: float, ejectable: frozenset[str] = frozenset()) -> float:
        """Configured weight, ramped by slow start after a recovery, probe-sized while half-open; 0 while
        down, drained or ejected by its circuit breaker (unless the panic threshold keeps it in)."""
        if link.hold and link.state in (LinkState.DOWN, LinkState.CONNECTING) and self.accepted_log is not None:
            return 0.0 if link.drained else link.weight  # its share is spooled for it while it is away
        if link.state != LinkState.UP or link.up_since is None or link.drained:
            return 0.0
        breaker = link.breaker
        if not breaker.allows(now):
            if link.name in ejectable:
                return 0.0
            return link.weight * self.slow_start.floor  # panic threshold: kept in, at probe weight
        if breaker.state == BreakerState.HALF_OPEN:
            return link.weight * self.slow_start.floor
        if link.failures == 0:
            return link.weight
        return link.weight * self.slow_start.factor(now - link.up_since)

    def _ejectable(self, now: float) -> frozenset[str]:
        """Names whose open breaker may keep them out: the most recently opened, within the panic budget."""
        opened = [link for link in self.links.values() if not link.breaker.allows(now)]
        budget = ejection_budget(len(self.links), self.config.breaker.max_ejected_fraction)
        if len(opened) > budget:
            log.warning("panic threshold: %d analyzers ejected, %d allowed; keeping the rest in", len(opened), budget)
        opened.sort(key=lambda link: link.breaker.opened_at, reverse=True)
        return frozenset(link.name for link in opened[:budget])

    def rebuild_table(self) -> None:
        """Swap in a route table built from the links' current effective weights."""
        now = time.monotonic()
        ejectable = self._ejectable(now)
        weights = {name: self.effective_weight(link, now, ejectable) for name, link in self.links.items()}
        if self.plan.rebuild(weights, self.group_of):
            self._table_version += 1

    def breaker_opened(self, link: LinkCore) -> None:
        self.rebuild_table()
        self._ensure_ramp()
        if link.queue.messages:
            self.reroute(link, link.queue.drain())

    def reroute(self, link: LinkCore, blocks: list[MessageBlock]) -> None:
        """Send ``blocks`` (taken from ``link``) through the current route table again."""
        for block in blocks:
            self.rerouted_messages += block.count
            self._route(block)

    def _ensure_ramp(self) -> None:
        if self._ramp_task is None or self._ramp_task.done():
            self._ramp_task = asyncio.get_running_loop().create_task(self._ramp())

    async def _ramp(self) -> None:
        """Rebuild the table every 250 ms while some analyzer ramps up or has a breaker not closed."""
        while True:
            await asyncio.sleep(0.25)
            self.rebuild_table()
            now = time.monotonic()
            busy = any(
                self.in_slow_start(link, now) or link.breaker.state != BreakerState.CLOSED
                for link in self.links.values()
            )
            if not busy:
                self.rebuild_table()
                return

    def in_slow_start(self, link: LinkCore, now: float) -> bool:
        """Whether ``link`` is still ramping up after a recovery."""
        return (
            link.state == LinkState.UP
            and link.failures > 0
            and link.up_since is not None
            and now - link.up_since < self.slow_start.window_s
        )

    # -- observability -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot for the admin API, the demo and the bench."""
        now = time.monotonic()
        total_delivered = sum(link.delivered_messages for link in self.links.values()) or 1
        total_weight = sum(link.weight for link in self.links.values()) or 1.0
        analyzers = []
        for name, link in self.links.items():
            state = link.state.value
            if self.in_slow_start(link, now):
                state = "slow_start"
            if link.drained and link.state == LinkState.UP:
                state = "drained"
            analyzers.append(
                {
                    "name": name,
                    "address": link.address,
                    "kind": link.kind,
                    "weight": link.weight,
                    "configured_share": link.weight / total_weight,
                    "effective_weight": self.effective_weight(link, now),
                    "route_share": self.router.table.share_of(name),
                    "state": state,
                    "delivered": link.delivered_messages,
                    "share": link.delivered_messages / total_delivered,
                    "in_flight": link.in_flight_messages,
                    "queued": len(link.queue),
                    "failures": link.failures,
                    "circuit": link.breaker.state.value,
                    "ejections": link.breaker.ejections,
                    "last_failure": link.last_failure,
                }
            )
        return {
            "server_id": self.server_id,
            "uptime_s": now - self.started_at,
            "listen": self.listen_address,
            "listeners": {listener.kind: listener.address for listener in self.listeners},
            "analyzers": analyzers,
            "ingest": {
                "messages": self.accepted_messages,
                "batches": self.accepted_batches,
                "bad_frames": self.bad_frames,
                "connections": len(self.connections),
            },
            "rerouted": self.rerouted_messages,
            "spilled": self.spilled_messages,
            "held": self.held_messages,
            "deduplicated_batches": self.dedup.duplicates if self.dedup else 0,
            "drops": dict(self.drops),
            "parked": self.parked_messages,
            "pending_bytes": self.pending_bytes,
            "paused": self.paused,
            "backpressured": self.backpressured,
            "operator_paused": self.operator_paused,
            "queue_blocked": self.queue_blocked,
            "route_table_version": self._table_version,
            "route_tables": self.plan.tables(),
            "spool": self.accepted_log.stats() if self.accepted_log is not None else None,
        }


# -- command line ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``logdist serve``."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (flags below override it)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="native ingest address (default 127.0.0.1:7400)")
    parser.add_argument("--admin", metavar="HOST:PORT", help="admin HTTP address for /stats, /healthz, /readyz")
    parser.add_argument(
        "--ingest",
        action="append",
        default=[],
        metavar="KIND=HOST:PORT",
        help="an extra ingest listener (repeatable); KIND: legacy (the original emitters' frames), http "
        "(POST /v1/packets, /v1/logs), lines (NDJSON or text over TCP), syslog (RFC 6587 over TCP)",
    )
    parser.add_argument(
        "--analyzer",
        action="append",
        default=[],
        metavar="NAME=[KIND://]ADDRESS@WEIGHT",
        help="an analyzer to deliver to (repeatable); weights are relative; KIND: native (default), legacy, "
        "lines; an http:// URL is a webhook",
    )
    parser.add_argument(
        "--legacy-analyzers",
        metavar="HOST:PORT",
        help="accept the original system's analyzers here (they dial in and announce a float32 weight)",
    )
    parser.add_argument(
        "--admin-token", help="bearer token for the admin API (or LOGDIST_ADMIN_TOKEN); health and metrics stay open"
    )
    parser.add_argument(
        "--max-ejected-fraction", type=float, help="panic threshold: most analyzers ejected at once (0.5)"
    )
    parser.add_argument(
        "--ack",
        choices=("accepted", "durable", "delivered"),
        help="when emitters get their ack: accepted (in memory, default), durable (in the spool, on disk) "
        "or delivered (analyzers acked)",
    )
    parser.add_argument("--spool-dir", metavar="DIR", help="durable spool directory (needed for --ack durable)")
    parser.add_argument("--spool-fsync", choices=("batch", "interval", "never"), help="spool fsync policy (batch)")
    parser.add_argument("--window", type=int, help="batches in flight per analyzer (default 16)")
    parser.add_argument("--max-queue-messages", type=int, help="per-analyzer queue bound (0: none, the default)")
    parser.add_argument(
        "--when-full",
        choices=("block", "drop_newest", "drop_lowest_priority"),
        help="at the per-analyzer bound: block (backpressure, default), drop_newest or drop_lowest_priority",
    )
    parser.add_argument("--linger-ms", type=float, help="max time a message waits to fill a batch (default 2)")
    parser.add_argument("--ack-timeout", type=float, help="seconds of analyzer silence that count as hung (0.75)")
    parser.add_argument("--slow-start", type=float, help="seconds a recovered analyzer takes to reach its weight (5)")
    parser.add_argument("--max-pending-mb", type=float, help="memory bound before ingest is paused (default 64)")
    parser.add_argument("--drain-timeout", type=float, help="seconds to deliver held messages on SIGTERM (10)")
    parser.add_argument(
        "--tracing", choices=("off", *tracing.EXPORTERS), help="OpenTelemetry per-batch spans: exporter (default off)"
    )
    parser.add_argument("--tracing-sample-ratio", type=float, help="share of batches traced (default 0.01)")
    parser.add_argument("--otlp-endpoint", metavar="URL", help="OTLP/HTTP collector, e.g. http://127.0.0.1:4318")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="stderr log lines: text or one JSON object each"
    )


def build_config(args: argparse.Namespace) -> Config:
    """Merge the config file (if any) and flags into one validated Config."""
    config = load(args.config) if args.config else Config()
    if args.listen:
        config.listen = args.listen
    if args.admin:
        config.admin = args.admin
    if args.admin_token:
        config.admin_token = args.admin_token
    if args.legacy_analyzers:
        config.legacy_analyzers = args.legacy_analyzers
    if args.ingest:
        config.listeners = [parse_ingest_flag(text) for text in args.ingest]
    if args.analyzer:
        config.analyzers = [parse_analyzer_flag(text) for text in args.analyzer]
    if args.max_ejected_fraction is not None:
        config.breaker.max_ejected_fraction = args.max_ejected_fraction
    if args.ack:
        config.ack = args.ack
    if args.spool_dir:
        config.spool.path = args.spool_dir
    if args.spool_fsync:
        config.spool.fsync = args.spool_fsync
    if args.window is not None:
        config.delivery.window = args.window
    if args.max_queue_messages is not None:
        config.delivery.max_queue_messages = args.max_queue_messages
    if args.when_full:
        config.delivery.when_full = args.when_full
    if args.linger_ms is not None:
        config.delivery.linger_ms = args.linger_ms
    if args.ack_timeout is not None:
        config.delivery.ack_timeout_s = args.ack_timeout
    if args.slow_start is not None:
        config.delivery.slow_start_s = args.slow_start
    if args.max_pending_mb is not None:
        config.limits.max_pending_mb = args.max_pending_mb
    if args.drain_timeout is not None:
        config.drain_timeout_s = args.drain_timeout
    if args.tracing:  # tracing flags
        config.tracing.enabled = args.tracing != "off"
        config.tracing.exporter = args.tracing if args.tracing != "off" else config.tracing.exporter
    if args.tracing_sample_ratio is not None:
        config.tracing.sample_ratio = args.tracing_sample_ratio
    if args.otlp_endpoint:
        config.tracing.otlp_endpoint = args.otlp_endpoint
    return config.validate()


def main(args: argparse.Namespace) -> int:
    """Run the distributor until SIGINT/SIGTERM."""
    configure_logging(args.log_level, args.log_format)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"logdist serve: configuration error: {exc}", file=sys.stderr)
        return 2
    if not config.analyzers and not config.legacy_analyzers:
        print("logdist serve: no analyzers configured (use --analyzer or a config file)", file=sys.stderr)
        return 2
    return run(lambda stop: serve(config, stop, args.config))


async def serve(config: Config, stop: asyncio.Event, config_path: str | None = None) -> int:
    """Start the distributor and its admin API, wait for ``stop``, then drain."""
    from logdist.control.admin import AdminServer
    from logdist.control.api import add_routes, token_middleware
    from logdist.control.dashboard import add_dashboard_routes
    from logdist.control.reload import ConfigReloader

    distributor = Distributor(config)
    tracing.setup(config.tracing)  # tracing: off (tracer None) unless enabled
    try:
        await distributor.start()
    except OSError as exc:
        print(f"logdist serve: cannot listen: {exc}", file=sys.stderr)
        tracing.shutdown()
        return 1
    reloader = ConfigReloader(distributor, config_path) if config_path else None
    loop = asyncio.get_running_loop()
    if reloader is not None:
        reloader.start()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reloader.reload()))
    admin = None
    if config.admin:
        token = config.admin_token or os.environ.get("LOGDIST_ADMIN_TOKEN")
        if token is None:
            log.warning("the admin API on %s has no token: anyone who can reach it can change routing", config.admin)
        admin = AdminServer(distributor, middlewares=[token_middleware(token)])
        add_routes(admin.app, distributor, reloader)
        if distributor.accepted_log is not None:
            admin.add_readiness_check("spool", distributor.accepted_log.readiness)
        add_dashboard_routes(admin.app)
        await admin.start(config.admin)
    announce(
        "ready",
        listen=distributor.listen_address,
        listeners={listener.kind: listener.address for listener in distributor.listeners},
        admin=admin.address if admin else None,
    )
    await stop.wait()
    log.info("shutting down: draining for up to %.1fs", config.drain_timeout_s)
    if reloader is not None:
        await reloader.stop()
    left = await distributor.shutdown(config.drain_timeout_s)
    if left:
        log.error("shutdown deadline passed with %d messages undelivered", left)
    else:
        log.info("drained: every accepted message was delivered")
    if admin is not None:
        await admin.stop()
    tracing.shutdown()  # tracing: flush the spans still buffered
    return 0
