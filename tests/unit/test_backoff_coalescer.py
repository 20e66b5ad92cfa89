"""Backoff growth and jitter; coalescing queued blocks into bounded batches."""

from __future__ import annotations

import random

import pytest

from logdist.delivery.backoff import Backoff
from logdist.delivery.coalescer import Coalescer
from logdist.model import Message
from logdist.wire.batch import MessageBlock


def _block(first: int, count: int) -> MessageBlock:
    return MessageBlock.from_messages([Message(payload=b"m%d" % i, seq=i) for i in range(first, first + count)])


def test_backoff_doubles_up_to_the_cap_and_jitters_below_it() -> None:
    backoff = Backoff(0.1, 1.0, jitter=0.5, rng=random.Random(1))
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for ceiling in ceilings:
        delay = backoff.next()
        assert ceiling * 0.5 <= delay <= ceiling
    backoff.reset()
    assert backoff.next() <= 0.1


def test_backoff_without_jitter_is_exact() -> None:
    backoff = Backoff(0.05, 0.3, jitter=0)
    assert [backoff.next() for _ in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(1.0, 0.5)


def test_coalescer_joins_blocks_and_cuts_at_max_messages_in_order() -> None:
    queue = Coalescer(max_messages=7)
    for first in range(0, 20, 5):
        queue.add(_block(first, 5))
    assert len(queue) == 20
    sizes, seqs = [], []
    while parts := queue.take():
        batch = MessageBlock.concat(parts)
        sizes.append(batch.count)
        seqs.extend(batch.array["seq"].tolist())
    assert sizes == [7, 7, 6]
    assert seqs == list(range(20))
    assert queue.nbytes == 0 and len(queue) == 0


def test_coalescer_push_front_goes_out_first_and_drain_empties() -> None:
    queue = Coalescer(max_messages=100)
    queue.add(_block(10, 3))
    queue.push_front(_block(0, 2))
    assert MessageBlock.concat(queue.take()).array["seq"].tolist() == [0, 1, 10, 11, 12]
    queue.add(_block(0, 4))
    assert [b.count for b in queue.drain()] == [4]
    assert queue.take() == []
