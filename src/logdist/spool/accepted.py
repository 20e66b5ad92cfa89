"""The log of accepted batches: what the distributor holds but analyzers have not yet acknowledged, on disk.

* ``durable`` ack mode: each accepted batch is appended (group commit, fsync per the policy) and the emitter
  is acked once it is on disk; the record is deleted when every message of the batch was delivered.
* Graceful shutdown: whatever is still undelivered at the drain deadline is appended too.
* Start-up: every record left by the previous run is replayed through the router, paced by the memory bound.

Records are deleted in groups (every 50 ms) to keep the writer's transactions few.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from logdist.config import SpoolConfig
from logdist.ingest.dedup import DedupWindow, Ticket
from logdist.spool.store import FsyncPolicy, Spool, SpoolError
from logdist.wire.batch import MessageBlock
from logdist.wire.native import AckStatus

log = logging.getLogger("logdist.spool")

QUEUE = "accepted"
_DELETE_DELAY_S = 0.05


class AcceptedLog:
    """Durability for accepted batches on top of a :class:`Spool`."""

    def __init__(self, config: SpoolConfig) -> None:
        assert config.path is not None
        self.dir = Path(config.path)
        self.spool = Spool(
            self.dir / "lmdb",
            max_bytes=int(config.max_mb * 1024 * 1024),
            fsync=FsyncPolicy(config.fsync),
            interval_ms=config.interval_ms,
        )
        self.failures = 0
        self.replayed = 0
        self.spooled_at_shutdown = 0
        self._deletes: list[int] = []
        self._delete_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog = 0

    async def open(self) -> None:
        """Open the store; remember how many records the previous run left for :meth:`replay`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        await self.spool.open()
        self._backlog = self.spool.depth(QUEUE)[0]
        if self._backlog:
            log.info("spool holds %d batches (%d messages) from the previous run: replaying", *self.spool.depth(QUEUE))

    def make_durable(self, block: MessageBlock, ack: Callable[[AckStatus], None]) -> None:
        """Append ``block`` (its ticket must be set); ``ack`` gets OK once it is on disk, RETRY if it failed."""
        ticket = block.ticket
        assert ticket is not None
        try:
            future = self.spool.append_nowait(QUEUE, block)
        except SpoolError as exc:
            self._failed(exc, ack)
            return

        def written(done: asyncio.Future[int]) -> None:
            exc = done.exception()
            if exc is not None:
                self._failed(exc, ack)
                return
            record = done.result()
            ticket.spool_id = record
            ack(AckStatus.OK)
            if ticket.done:
                self.forget(record)
            else:
                ticket.callbacks.append(lambda: self.forget(record))

        future.add_done_callback(written)

    def _failed(self, exc: BaseException, ack: Callable[[AckStatus], None]) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 1000 == 0:
            log.error("spool append failed (%d so far); the emitter is told to retry: %s", self.failures, exc)
        ack(AckStatus.RETRY)  # the batch stays routed in memory: a retransmission may duplicate, never lose

    def forget(self, record: int) -> None:
        """The batch of ``record`` was delivered: delete it (batched)."""
        self._deletes.append(record)
        if self._delete_timer is None:
            self._delete_timer = asyncio.get_running_loop().call_later(_DELETE_DELAY_S, self._flush_deletes)

    def _flush_deletes(self) -> None:
        self._delete_timer = None
        ids, self._deletes = self._deletes, []
        if ids:
            task = asyncio.get_running_loop().create_task(self._delete(ids))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _delete(self, ids: list[int]) -> None:
        try:
            await self.spool.delete(QUEUE, ids)
        except SpoolError as exc:
            log.error("spool delete of %d records failed (they will be replayed, duplicates): %s", len(ids), exc)

    async def replay(self, route: Callable[[MessageBlock], None], room: Callable[[], Awaitable[None]]) -> None:
        """Route every record the previous run left, oldest first; ``room()`` waits for memory to allow more."""
        after: int | None = None
        left = self._backlog
        while left > 0:
            await room()
            records = await self.spool.read(QUEUE, max_messages=65_536, after=after)
            if not records:
                break
            for record, block in records[:left]:
                after = record
                ticket = Ticket(block.count)
                ticket.spool_id = record
                ticket.callbacks.append(lambda record=record: self.forget(record))
                block.ticket = ticket
                self.replayed += block.count
                route(block)
            left -= len(records)
        if self._backlog:
            log.info("replayed %d messages from the spool", self.replayed)

    async def keep(self, blocks: list[MessageBlock]) -> int:
        """Append undelivered ``blocks`` not already on disk (shutdown); returns the messages kept."""
        futures = []
        for block in blocks:
            if block.ticket is not None and block.ticket.spool_id is not None:
                continue  # its whole batch is on disk already, and stays until delivered
            try:
                futures.append((block.count, self.spool.append_nowait(QUEUE, block)))
            except SpoolError as exc:
                log.error("cannot spool %d messages at shutdown: %s", block.count, exc)
        kept = 0
        for count, future in futures:
            try:
                await future
                kept += count
            except SpoolError as exc:
                log.error("cannot spool %d messages at shutdown: %s", count, exc)
        self.spooled_at_shutdown = kept
        return kept

    def put(self, queue: str, block: MessageBlock, written: Callable[[int | None], None]) -> None:
        """Append ``block`` to ``queue`` (spill, hold); ``written(record)`` gets the id, or None on failure."""
        try:
            future = self.spool.append_nowait(queue, block)
        except SpoolError as exc:
            self._put_failed(queue, exc)
            written(None)
            return

        def done(f: asyncio.Future[int]) -> None:
            exc = f.exception()
            if exc is not None:
                self._put_failed(queue, exc)
                written(None)
            else:
                written(f.result())

        future.add_done_callback(done)

    def _put_failed(self, queue: str, exc: BaseException) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 1000 == 0:
            log.error(
                "spool append to %s failed (%d so far); keeping the batch in memory: %s", queue, self.failures, exc
            )

    async def drain(
        self,
        queue: str,
        deliver: Callable[[int, MessageBlock], None],
        room: Callable[[], Awaitable[None]],
        after: int | None = None,
    ) -> int | None:
        """Hand every record of ``queue`` to ``deliver(record, block)``, oldest first, until it is empty;
        ``room()`` paces it. The caller deletes each record (:meth:`forget_from`) once delivered. Starts
        after record ``after``; returns the last record handed (or ``after``)."""
        while True:
            await room()
            records = await self.spool.read(queue, max_messages=16_384, after=after)
            if not records:
                return after
            for record, block in records:
                after = record
                deliver(record, block)

    def forget_from(self, queue: str, record: int) -> None:
        """Delete ``record`` of ``queue`` (not batched: spill and hold records are few and large)."""
        task = asyncio.get_running_loop().create_task(self._delete_from(queue, [record]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delete_from(self, queue: str, ids: list[int]) -> None:
        try:
            await self.spool.delete(queue, ids)
        except SpoolError as exc:
            log.error("spool delete from %s failed (the batch will be replayed, duplicates): %s", queue, exc)

    def depth(self, queue: str) -> int:
        """Messages stored in ``queue``."""
        return self.spool.depth(queue)[1]

    def covered(self, blocks: list[MessageBlock]) -> int:
        """Messages of ``blocks`` whose batch is already on disk."""
        return sum(b.count for b in blocks if b.ticket is not None and b.ticket.spool_id is not None)

    def load_dedup(self, window: DedupWindow) -> None:
        """Restore the emitter dedup window saved by the previous run."""
        path = self.dir / "dedup.json"
        try:
            window.load(json.loads(path.read_text()))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable dedup window %s: %s", path, exc)

    def save_dedup(self, window: DedupWindow) -> None:
        """Save the emitter dedup window (atomically) for the next run."""
        path = self.dir / "dedup.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(window.export()))
        os.replace(tmp, path)

    async def close(self) -> None:
        """Flush pending deletes and close the store (fsync)."""
        if self._delete_timer is not None:
            self._delete_timer.cancel()
        self._flush_deletes()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.spool.close()

    def readiness(self) -> str | None:
        """None while the spool can take writes, else why not (for /readyz)."""
        stats = self.spool.stats()
        if stats["error"]:
            return f"spool is broken: {stats['error']}"
        if stats["low_space"]:
            return "spool is out of disk space"
        return None

    def stats(self) -> dict[str, object]:
        """Spool counters for /stats."""
        records, messages = self.spool.depth(QUEUE)
        return {
            **self.spool.stats(),
            "records": records,
            "messages": messages,
            "append_failures": self.failures,
            "replayed": self.replayed,
            "spooled_at_shutdown": self.spooled_at_shutdown,
        }
