"""The per-analyzer queue: FIFO without a backlog, priority classes with one, bounds and drop policies."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from logdist.delivery.coalescer import Coalescer
from logdist.model import Message
from logdist.wire.batch import MessageBlock

Id = tuple[int, int]


def _payload(stream: int, seq: int) -> bytes:
    return b"%d:%d:" % (stream, seq) + b"x" * (seq % 7)


def _block(seqs: Sequence[int], severities: Sequence[int], stream: int = 1) -> MessageBlock:
    """Messages with distinct payload lengths and some attributes, so a misplaced body byte shows up."""
    return MessageBlock.from_messages(
        [
            Message(
                payload=_payload(stream, seq),
                severity=sev,
                stream=stream,
                seq=seq,
                attributes={"k": "v" * (seq % 3)} if seq % 2 else {},
            )
            for seq, sev in zip(seqs, severities, strict=True)
        ]
    )


def _ids(blocks: Sequence[MessageBlock]) -> list[Id]:
    """``(stream, seq)`` of every message, after checking each decodes to the body it was built with."""
    out: list[Id] = []
    for block in blocks:
        for msg in block.messages():
            assert msg.payload == _payload(msg.stream, msg.seq)
            assert msg.attributes == ({"k": "v" * (msg.seq % 3)} if msg.seq % 2 else {})
            out.append((msg.stream, msg.seq))
    return out


def _seqs(blocks: Sequence[MessageBlock]) -> list[int]:
    return [seq for _, seq in _ids(blocks)]


def _size(block: MessageBlock, index: int) -> int:
    return block.slice(index, index + 1).nbytes


def _check_tickets(blocks: Sequence[MessageBlock], tickets: dict[Id, object]) -> None:
    """Every message travels in a block that carries the ticket of the block it arrived in."""
    for block in blocks:
        for i in _ids([block]):
            assert block.ticket is tickets[i]


def _check_totals(queue: Coalescer) -> None:
    pending = queue.pending()
    assert queue.messages == len(queue) == sum(b.count for b in pending)
    assert queue.nbytes == sum(b.nbytes for b in pending)


def test_without_backlog_blocks_pass_whole_in_fifo_order() -> None:
    queue = Coalescer(max_messages=10)
    blocks = [_block(range(i * 3, i * 3 + 3), [224, 0, 128]) for i in range(3)]
    last = _block([9, 10, 11], [0, 0, 0])  # arrives with 9 < 10 queued: still whole, even though it overshoots
    for block in [*blocks, last]:
        assert queue.add(block) == 0
    assert queue.backlog == 0
    parts = queue.take()
    assert parts[:3] == blocks and all(a is b for a, b in zip(parts, blocks, strict=False))
    assert len(parts) == 4 and _seqs(parts) == list(range(10))  # the last block cut by slice, as before
    assert _seqs(queue.take()) == [10, 11]
    assert queue.take() == [] and queue.nbytes == 0 and len(queue) == 0


def test_with_backlog_urgent_messages_leave_first_and_each_class_is_fifo() -> None:
    queue = Coalescer(max_messages=4)
    first = _block([0, 1, 2, 3], [200, 200, 200, 200])
    queue.add(first)  # no backlog: plain FIFO
    queue.add(_block(range(10, 18), [224, 0, 96, 0, 224, 96, 0, 32]))  # 4 queued: backlog, split by class
    queue.add(_block(range(20, 24), [0, 224, 32, 96]))
    assert queue.backlog == 12
    _check_totals(queue)
    batch = queue.take()
    assert batch == [first] and batch[0] is first  # the FIFO is older than the backlog
    out = []
    while parts := queue.take():
        assert sum(p.count for p in parts) <= 4
        out.extend(_seqs(parts))
        _check_totals(queue)
    assert out == [11, 13, 16, 20, 17, 22, 12, 15, 23, 10, 14, 21]
    assert queue.backlog == 0 and queue.nbytes == 0


def test_a_block_arriving_after_a_backlog_queues_behind_its_class() -> None:
    queue = Coalescer(max_messages=4)
    queue.add(_block([0, 1, 2, 3], [128] * 4))
    queue.add(_block([4, 5], [128, 0]))  # backlog
    assert _seqs(queue.take()) == [0, 1, 2, 3]
    queue.add(_block([6], [128]))  # 2 < 4 queued, but seq 4 (same class) still waits: it must go first
    queue.add(_block([7], [64]))
    assert _seqs(queue.take()) == [5, 7, 4, 6]


def test_a_large_mixed_block_is_split_stably_and_trimmed_from_its_least_urgent_tail() -> None:
    rng = np.random.default_rng(5)
    severities = rng.integers(0, 256, 600).tolist()
    queue = Coalescer(max_messages=50, max_queue_messages=550, when_full="drop_lowest_priority")
    queue.add(_block([1000], [0], stream=2))
    queue.add(_block(range(1001, 1050), [0] * 49, stream=2))  # 1 queued: no backlog yet
    assert queue.backlog == 0 and len(queue) == 50
    big = _block(range(600), severities)
    big.ticket = marker = object()  # type: ignore[assignment]  # stands for the emitter batch's ack ticket
    expected = sorted(range(600), key=lambda i: (severities[i] >> 5, i))  # by class, FIFO within a class
    dropped = expected[500:]  # 100 over the bound: the tail of the least urgent classes goes
    assert queue.add(big) == 100
    assert queue.last_dropped_bytes == sum(_size(big, i) for i in dropped)
    assert queue.backlog == 500
    _check_totals(queue)
    assert all(part.ticket is marker for part in queue.last_dropped)
    out = []
    while parts := queue.take():
        out.extend(_ids(parts))
        assert all(part.ticket is (marker if part.array["stream"][0] == 1 else None) for part in parts)
    assert out[:50] == [(2, seq) for seq in range(1000, 1050)]  # the FIFO is older than the backlog
    assert [seq for _, seq in out[50:]] == expected[:500]


def test_push_front_goes_out_before_fifo_and_backlog() -> None:
    queue = Coalescer(max_messages=3)
    queue.add(_block([0, 1, 2], [224, 224, 224]))
    queue.add(_block([3, 4], [0, 0]))
    retry = [_block([100], [224]), _block([101, 102], [224, 224])]
    for part in reversed(retry):  # as the link re-queues a batch the analyzer asked to retry
        queue.push_front(part)
    assert _seqs(queue.take()) == [100, 101, 102]
    assert _seqs(queue.take()) == [0, 1, 2]
    assert _seqs(queue.take()) == [3, 4]


def test_drain_returns_everything_in_sending_order() -> None:
    queue = Coalescer(max_messages=2)
    queue.add(_block([0, 1], [224, 0]))
    queue.add(_block([2, 3, 4], [224, 0, 96]))
    queue.push_front(_block([9], [255]))
    assert _seqs(queue.drain()) == [9, 0, 1, 3, 4, 2]
    assert queue.take() == [] and len(queue) == 0 and queue.nbytes == 0 and queue.backlog == 0


def test_block_policy_never_drops_and_reports_full() -> None:
    queue = Coalescer(max_messages=2, max_queue_messages=3)
    assert not queue.full
    assert queue.add(_block([0, 1], [0, 0])) == 0 and not queue.full
    assert queue.add(_block([2, 3], [224, 224])) == 0 and queue.full
    assert len(queue) == 4 and queue.dropped_newest == queue.dropped_lowest_priority == 0
    assert not Coalescer(max_messages=2).full


def test_drop_newest_keeps_the_oldest_and_counts_exactly() -> None:
    queue = Coalescer(max_messages=2, max_queue_messages=5, when_full="drop_newest")
    queue.add(_block([0, 1, 2], [0, 0, 0]))
    incoming = _block([3, 4, 5, 6], [0, 224, 0, 0])
    assert queue.add(incoming) == 2
    assert queue.dropped_newest == 2 and queue.last_dropped_bytes == _size(incoming, 2) + _size(incoming, 3)
    assert _seqs(queue.last_dropped) == [5, 6]
    _check_totals(queue)
    rejected = _block([7], [0])
    assert queue.add(rejected) == 1 and queue.last_dropped_bytes == rejected.nbytes  # full: all of it goes
    assert queue.dropped_newest == 3
    assert queue.add(_block([], [])) == 0 and queue.last_dropped_bytes == 0
    queue.push_front(_block([99], [0]))  # a retry is never refused, even past the bound
    assert len(queue) == 6
    assert _seqs(queue.drain()) == [99, 0, 1, 2, 3, 4]


def test_drop_lowest_priority_drops_least_urgent_newest_first_incoming_included() -> None:
    queue = Coalescer(max_messages=2, max_queue_messages=6, when_full="drop_lowest_priority")
    head = _block([0, 1, 2, 3], [0, 224, 96, 224])
    assert queue.add(head) == 0  # plain FIFO
    second = _block([4, 5, 6], [224, 0, 96])
    assert queue.add(second) == 1  # seq 4: the newest of the least urgent class
    assert queue.last_dropped_bytes == _size(second, 0)
    _check_totals(queue)
    assert queue.add(_block([7, 8], [32, 32])) == 2  # class 7 is left only in the FIFO: seqs 3 then 1
    assert sorted(_seqs(queue.last_dropped)) == [1, 3]
    assert queue.last_dropped_bytes == _size(head, 3) + _size(head, 1)
    assert queue.dropped_lowest_priority == 3
    _check_totals(queue)
    trivial = _block([9, 10], [255, 250])
    assert queue.add(trivial) == 2 and queue.last_dropped_bytes == trivial.nbytes  # the incoming block itself
    assert queue.add(_block([11], [0])) == 1  # class 3 now least urgent: newest is seq 6 (backlog), not 2 (FIFO)
    assert queue.dropped_lowest_priority == 6
    _check_totals(queue)
    assert _seqs(queue.drain()) == [0, 2, 5, 11, 7, 8]


def test_drop_lowest_priority_reaches_retried_messages_last_within_their_class() -> None:
    queue = Coalescer(max_messages=1, max_queue_messages=3, when_full="drop_lowest_priority")
    queue.push_front(_block([0, 1], [224, 0]))
    assert queue.add(_block([2], [224])) == 0
    assert queue.add(_block([3], [0])) == 1 and _seqs(queue.pending()) == [0, 1, 3]  # seq 2: the newest class 7
    assert queue.add(_block([4], [0])) == 1 and _seqs(queue.pending()) == [1, 3, 4]  # then the retried class 7
    assert queue.dropped_lowest_priority == 2


def test_drop_lowest_priority_takes_the_fifo_before_retries_and_the_newest_of_a_mixed_block() -> None:
    queue = Coalescer(max_messages=8, max_queue_messages=6, when_full="drop_lowest_priority")
    queue.push_front(_block([0, 1], [224, 0]))
    queue.add(_block([2, 3, 4, 5], [224, 0, 224, 0]))  # 2 < 8 queued: plain FIFO, one mixed block
    assert queue.add(_block([6], [0])) == 1 and _seqs(queue.pending()) == [0, 1, 2, 3, 5, 6]  # seq 4
    assert queue.add(_block([7], [0])) == 1 and _seqs(queue.pending()) == [0, 1, 3, 5, 6, 7]  # seq 2
    assert queue.add(_block([8], [0])) == 1 and _seqs(queue.pending()) == [1, 3, 5, 6, 7, 8]  # seq 0, retried
    _check_totals(queue)


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Coalescer(0)
    with pytest.raises(ValueError):
        Coalescer(4, max_queue_messages=-1)
    with pytest.raises(ValueError):
        Coalescer(4, when_full="drop_oldest")


# -- property: every message taken exactly once, in the promised order ----------------------------

_add = st.tuples(
    st.just("add"),
    st.integers(1, 2),  # stream
    st.lists(st.integers(0, 255) | st.sampled_from([0, 32, 224, 255]), min_size=0, max_size=12),
)
_ops = st.lists(st.one_of(_add, st.just(("take",)), st.just(("retry",))), max_size=40)


class _Model:
    """The queue's documented behaviour over message ids, one message at a time."""

    def __init__(self, max_messages: int, bound: int | None, when_full: str) -> None:
        self.max, self.bound, self.when_full = max_messages, bound, when_full
        self.front: list[Id] = []
        self.fifo: list[Id] = []
        self.classes: list[list[Id]] = [[] for _ in range(8)]
        self.cls: dict[Id, int] = {}

    def queued(self) -> list[Id]:
        return self.front + self.fifo + [i for c in self.classes for i in c]

    def add(self, ids: list[Id]) -> list[Id]:
        dropped: list[Id] = []
        if not ids:
            return dropped
        if self.bound is not None and self.when_full == "drop_newest":
            room = max(self.bound - len(self.queued()), 0)
            ids, dropped = ids[:room], ids[room:]
        if ids:
            if len(self.queued()) < self.max and not any(self.classes):
                self.fifo += ids
            else:
                for i in ids:
                    self.classes[self.cls[i]].append(i)
        if self.bound is not None and self.when_full == "drop_lowest_priority":
            excess = len(self.queued()) - self.bound
            for c in range(7, -1, -1):
                for queue in (self.classes[c], self.fifo, self.front):
                    for pos in range(len(queue) - 1, -1, -1):
                        if excess > 0 and self.cls[queue[pos]] == c:
                            dropped.append(queue.pop(pos))
                            excess -= 1
        return dropped

    def take(self) -> list[Id]:
        out = self.queued()[: self.max]
        n = len(out)
        for queue in (self.front, self.fifo, *self.classes):
            k = min(n, len(queue))
            del queue[:k]
            n -= k
        return out


@settings(max_examples=300, deadline=None)
@given(
    max_messages=st.integers(1, 8),
    bound=st.none() | st.integers(0, 16),
    when_full=st.sampled_from(["block", "drop_newest", "drop_lowest_priority"]),
    ops=_ops,
)
def test_every_message_leaves_exactly_once_in_priority_order(
    max_messages: int, bound: int | None, when_full: str, ops: list[tuple]
) -> None:
    queue = Coalescer(max_messages, max_queue_messages=bound, when_full=when_full)
    model = _Model(max_messages, bound, when_full)
    arrival: dict[Id, int] = {}
    size: dict[Id, int] = {}
    ticket: dict[Id, object] = {}
    added: list[Id] = []
    dropped: list[Id] = []
    in_flight: list[list[MessageBlock]] = []  # taken batches; a retry pushes back the latest, like a RETRY ack
    bytes_in = bytes_dropped = 0
    seq = 0
    for op in ops:
        if op[0] == "add":
            _, stream, severities = op
            block = _block(range(seq, seq + len(severities)), severities, stream)
            block.ticket = object()  # type: ignore[assignment]  # any marker: it must follow every message
            ids = [(stream, s) for s in range(seq, seq + len(severities))]
            seq += len(severities)
            for k, i in enumerate(ids):
                arrival[i] = len(arrival)
                model.cls[i] = severities[k] >> 5
                size[i] = _size(block, k)
                ticket[i] = block.ticket
            before = set(_ids(queue.pending()))
            count = queue.add(block)
            after = set(_ids(queue.pending()))
            gone = (before | set(ids)) - after
            expected = model.add(ids)
            assert gone == set(expected) and count == len(gone)
            assert sorted(_ids(queue.last_dropped)) == sorted(gone)
            assert queue.last_dropped_bytes == sum(size[i] for i in gone) == sum(b.nbytes for b in queue.last_dropped)
            _check_tickets(queue.last_dropped, ticket)
            if when_full == "block" or bound is None:
                assert not gone
            if when_full == "drop_newest":
                assert all(i in ids for i in gone) and [i for i in ids if i not in gone] == ids[: len(ids) - count]
            if when_full == "drop_lowest_priority":  # never drops a message more urgent (or older) than one kept
                for g in gone:
                    assert all((model.cls[g], arrival[g]) > (model.cls[k], arrival[k]) for k in after)
            if bound is not None and when_full != "block":
                assert len(queue) <= max(bound, len(before))
            added += ids
            dropped += gone
            bytes_in += block.nbytes
            bytes_dropped += queue.last_dropped_bytes
        elif op[0] == "take":
            parts = queue.take()
            assert _ids(parts) == model.take()
            _check_tickets(parts, ticket)
            assert sum(p.count for p in parts) <= max_messages
            if parts:
                in_flight.append(parts)
        elif in_flight:
            parts = in_flight.pop()
            for part in reversed(parts):
                queue.push_front(part)
            model.front[:0] = _ids(parts)
        _check_totals(queue)
        assert _ids(queue.pending()) == model.queued()
        assert queue.dropped_newest + queue.dropped_lowest_priority == len(dropped)
        bytes_out = sum(p.nbytes for parts in in_flight for p in parts)
        assert bytes_in == bytes_out + bytes_dropped + queue.nbytes
    delivered = [i for parts in in_flight for i in _ids(parts)]
    rest = _ids(queue.drain())
    assert sorted(delivered + rest + dropped) == sorted(added)  # each message exactly once
    assert len(set(delivered + rest)) == len(delivered) + len(rest)
    for c in range(8):  # FIFO within a class, across batches, retries and the leftovers
        order = [arrival[i] for i in delivered + rest if model.cls[i] == c]
        assert order == sorted(order)


# -- the split relies on MessageBlock.take, which copies runs of adjacent bodies as one slice ----------


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 5), min_size=1, max_size=80),
    runs=st.lists(st.tuples(st.integers(0, 79), st.integers(0, 40)), max_size=6),
)
@example(sizes=[3] * 40, runs=[(0, 40)])
@example(sizes=[1, 0] * 30, runs=[(5, 20), (2, 3), (30, 30), (0, 1)])
def test_take_copies_runs_of_adjacent_messages_exactly(sizes: list[int], runs: list[tuple[int, int]]) -> None:
    msgs = [Message(payload=bytes([i % 251]) * n, seq=i, severity=i % 256) for i, n in enumerate(sizes)]
    block = MessageBlock.from_buffer(len(msgs), MessageBlock.from_messages(msgs).encode())
    picks = [i % len(msgs) for start, length in runs for i in range(start, start + length)]
    taken = block.take(np.array(picks, dtype=np.int64))
    assert taken.count == len(picks) and list(taken.messages()) == [msgs[i] for i in picks]
    assert taken.nbytes == sum(block.slice(i, i + 1).nbytes for i in picks)
