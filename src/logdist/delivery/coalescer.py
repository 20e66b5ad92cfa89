"""Pending messages for one analyzer: a bounded, priority-aware queue cut into outgoing batches of bounded size.

Severity 0 is the most urgent, 255 the least; the priority class of a message is ``severity >> 5`` (0 .. 7, the
syslog levels, since syslog severity ``s`` maps to ``s * 32``). While no backlog exists the queue is a plain FIFO
of whole blocks, exactly as cheap as before. Once a block arrives at a queue that already holds a full batch, it
is split by class and urgent messages overtake less urgent ones; within a class the order is always FIFO.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Literal, get_args

import numpy as np

from logdist.wire.batch import HEADER_SIZE, MessageBlock

CLASS_SHIFT = 5
"""``severity >> CLASS_SHIFT`` is the priority class."""
CLASSES = 256 >> CLASS_SHIFT

WhenFull = Literal["block", "drop_newest", "drop_lowest_priority"]
WHEN_FULL: tuple[str, ...] = get_args(WhenFull)


_RECORD = np.dtype((np.void, HEADER_SIZE))  # a header as one opaque item: gathering these is a plain memcpy


def _classes(block: MessageBlock) -> np.ndarray:
    return block.array["severity"] >> CLASS_SHIFT


def _partition(block: MessageBlock, classes: np.ndarray, counts: list[int]) -> list[tuple[int, MessageBlock]]:
    """``block``'s messages grouped by class, each group a compact block of its own (with ``block``'s ticket).

    One stable sort by class and one pass of buffer slices for the whole block (one slice per run of adjacent
    messages of the same class), then one join per class: cheaper than a ``take`` per class, and unlike slices
    of a single sorted copy each group owns its memory, so dropping one group really frees it.
    """
    order = np.argsort(classes, kind="stable")
    offsets = block.offsets
    starts = offsets[order]
    stops = offsets[order + 1]
    in_class = classes[order]
    cut = (stops[:-1] != starts[1:]) | (in_class[:-1] != in_class[1:])  # a new run starts after position i
    first = np.concatenate(([True], cut))
    last = np.concatenate((cut, [True]))
    runs_before = np.concatenate(([0], np.cumsum(first))).tolist()
    bodies = memoryview(block.bodies)
    runs = [bodies[a:b] for a, b in zip(starts[first].tolist(), stops[last].tolist(), strict=True)]
    headers = np.frombuffer(block.headers, dtype=_RECORD, count=block.count)[order].tobytes()
    groups: list[tuple[int, MessageBlock]] = []
    pos = 0
    for c, n in enumerate(counts):
        if n:
            end = pos + n
            body = b"".join(runs[runs_before[pos] : runs_before[end]])
            group = MessageBlock(n, headers[pos * HEADER_SIZE : end * HEADER_SIZE], body)
            group.ticket = block.ticket
            groups.append((c, group))
            pos = end
    return groups


class Coalescer:
    """Priority-aware queue; ``take`` returns the blocks holding the next ``max_messages`` messages at most.

    Sending order: blocks pushed back with :meth:`push_front` (retries), then blocks added while there was no
    backlog (plain FIFO, older than any backlog), then the backlog by class 0 .. 7, FIFO within each class.

    With ``max_queue_messages`` set, ``when_full`` decides what :meth:`add` does when the bound would be exceeded:
    ``"block"`` queues anyway (the caller watches :attr:`full` and applies backpressure), ``"drop_newest"`` drops
    the tail of the incoming block, ``"drop_lowest_priority"`` drops the least urgent queued messages, newest
    first within a class, the incoming block's own messages included. Retries (:meth:`push_front`) are never
    refused, but may be dropped later by ``"drop_lowest_priority"`` like any queued message.
    """

    def __init__(self, max_messages: int, max_queue_messages: int | None = None, when_full: str = "block") -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, not {max_messages}")
        if max_queue_messages is not None and max_queue_messages < 0:
            raise ValueError(f"max_queue_messages must not be negative, not {max_queue_messages}")
        if when_full not in WHEN_FULL:
            raise ValueError(f"when_full must be one of {', '.join(WHEN_FULL)}, not {when_full!r}")
        self.max_messages = max_messages
        self.max_queue_messages = max_queue_messages
        self.when_full = when_full
        self._front: deque[MessageBlock] = deque()  # retries: out before anything else
        self._fifo: deque[MessageBlock] = deque()  # whole blocks added while there was no backlog
        self._classes: list[deque[MessageBlock]] = [deque() for _ in range(CLASSES)]  # the backlog, by class
        self._backlog = 0  # messages held in ``_classes``
        self.messages = 0
        self.nbytes = 0
        self.dropped_newest = 0
        self.dropped_lowest_priority = 0
        self.last_dropped: list[MessageBlock] = []
        """The messages dropped by the latest :meth:`add`, as blocks keeping their source block's ticket."""
        self.last_dropped_bytes = 0
        """Bytes dropped by the latest :meth:`add` (the caller releases its memory accounting by this much)."""

    def __len__(self) -> int:
        return self.messages

    @property
    def full(self) -> bool:
        """Whether the queue holds ``max_queue_messages`` or more (never, without a bound)."""
        return self.max_queue_messages is not None and self.messages >= self.max_queue_messages

    @property
    def backlog(self) -> int:
        """Messages queued by priority class (those that arrived while a full batch was already waiting)."""
        return self._backlog

    # -- adding ------------------------------------------------------------------------------------

    def add(self, block: MessageBlock) -> int:
        """Queue ``block``; return how many messages were dropped to respect the bound (0 normally)."""
        self.last_dropped_bytes = 0
        self.last_dropped = []
        count = block.count
        if not count:
            return 0
        bound = self.max_queue_messages
        if bound is None or self.when_full == "block" or self.messages + count <= bound:
            self._enqueue(block)
            return 0
        if self.when_full == "drop_newest":
            room = max(bound - self.messages, 0)
            self.dropped_newest += count - room
            self.last_dropped = [block.slice(room, count) if room else block]
            self.last_dropped_bytes = self.last_dropped[0].nbytes
            if room:
                self._enqueue(block.slice(0, room))
            return count - room
        self._enqueue(block)
        self.last_dropped = self._drop_lowest(self.messages - bound)
        self.last_dropped_bytes = sum(part.nbytes for part in self.last_dropped)
        dropped = sum(part.count for part in self.last_dropped)
        self.dropped_lowest_priority += dropped
        return dropped

    def push_front(self, block: MessageBlock) -> None:
        """Queue ``block`` ahead of everything (a batch that must go out again first); never refused."""
        if block.count:
            self._front.appendleft(block)
            self.messages += block.count
            self.nbytes += block.nbytes

    def _enqueue(self, block: MessageBlock) -> None:
        if self.messages < self.max_messages and not self._backlog:
            self._fifo.append(block)  # no backlog, no cost: the block stays whole
        else:
            self._split(block)
        self.messages += block.count
        self.nbytes += block.nbytes

    def _split(self, block: MessageBlock) -> None:
        """Append ``block``'s messages to the backlog of their class (one compact block per class present)."""
        classes = _classes(block)
        counts = np.bincount(classes, minlength=CLASSES).tolist()
        if max(counts) == block.count:
            self._classes[counts.index(block.count)].append(block)  # one class: no copy
        else:
            for c, group in _partition(block, classes, counts):
                self._classes[c].append(group)
        self._backlog += block.count

    # -- dropping ----------------------------------------------------------------------------------

    def _drop_lowest(self, excess: int) -> list[MessageBlock]:
        """Drop ``excess`` messages, least urgent class first and newest first within it; return them."""
        gone: list[MessageBlock] = []
        left = excess
        for c in range(CLASSES - 1, -1, -1):
            queue = self._classes[c]  # the newest messages of class ``c``, then the plain FIFO, then retries
            while queue and left:
                block = queue[-1]
                if block.count <= left:
                    gone.append(queue.pop())
                else:
                    queue[-1] = block.slice(0, block.count - left)
                    gone.append(block.slice(block.count - left, block.count))
                self._backlog -= gone[-1].count
                left -= gone[-1].count
            for mixed in (self._fifo, self._front):
                if left:
                    left -= self._drop_class(mixed, c, left, gone)
            if not left:
                break
        self.messages -= excess - left
        self.nbytes -= sum(block.nbytes for block in gone)
        return gone

    @staticmethod
    def _drop_class(queue: deque[MessageBlock], c: int, limit: int, gone: list[MessageBlock]) -> int:
        """Drop up to ``limit`` messages of class ``c`` from blocks of mixed classes, newest first, into ``gone``."""
        dropped = 0
        for i in range(len(queue) - 1, -1, -1):
            block = queue[i]
            hits = np.flatnonzero(_classes(block) == c)
            if not len(hits):
                continue
            hits = hits[max(len(hits) - (limit - dropped), 0) :]
            if len(hits) == block.count:
                del queue[i]
                gone.append(block)
            else:
                keep = np.ones(block.count, dtype=bool)
                keep[hits] = False
                queue[i] = block.take(np.flatnonzero(keep))
                gone.append(block.take(hits))
            dropped += len(hits)
            if dropped == limit:
                break
        return dropped

    # -- taking ------------------------------------------------------------------------------------

    def _queues(self) -> Iterator[deque[MessageBlock]]:
        yield self._front
        yield self._fifo
        if self._backlog:
            yield from self._classes

    def take(self) -> list[MessageBlock]:
        """Up to ``max_messages`` queued messages, in sending order, as the blocks that hold them ([] when empty)."""
        parts: list[MessageBlock] = []
        room = self.max_messages
        nbytes = 0
        for c, queue in enumerate(self._queues()):
            before = room
            while queue and room:
                block = queue[0]
                if block.count <= room:
                    queue.popleft()
                    room -= block.count
                else:
                    queue[0] = block.slice(room, block.count)
                    block = block.slice(0, room)
                    room = 0
                parts.append(block)
                nbytes += block.nbytes
            if c >= 2:  # one of the class queues
                self._backlog -= before - room
            if not room:
                break
        self.messages -= self.max_messages - room
        self.nbytes -= nbytes
        return parts

    def pending(self) -> list[MessageBlock]:
        """Every queued block in sending order, left in place."""
        return [block for queue in self._queues() for block in queue]

    def drain(self) -> list[MessageBlock]:
        """Remove and return every queued block, in the order :meth:`take` would send them."""
        blocks = self.pending()
        for queue in (self._front, self._fifo, *self._classes):
            queue.clear()
        self._backlog = 0
        self.messages = 0
        self.nbytes = 0
        return blocks
