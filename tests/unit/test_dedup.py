"""Dedup windows per emitter session and tickets that hold acks until delivery."""

from __future__ import annotations

from logdist.ingest.dedup import DedupWindow, Ticket
from logdist.wire.native import AckStatus


def test_window_recognises_recent_seqs_per_session_only() -> None:
    window = DedupWindow(window=3)
    for seq in (1, 2, 3, 4):
        window.record(("c", "s1"), seq)
    assert window.seen(("c", "s1"), 4) == (True, None)
    assert window.seen(("c", "s1"), 1)[0] is False, "older than the window"
    assert window.seen(("c", "s2"), 4)[0] is False, "another session of the same client"
    assert window.duplicates == 1


def test_sessions_are_bounded_least_recent_first() -> None:
    window = DedupWindow(window=10, max_sessions=2)
    window.record("a", 1)
    window.record("b", 1)
    window.seen("a", 1)  # a is now more recent than b
    window.record("c", 1)
    assert window.seen("a", 1)[0] and window.seen("c", 1)[0]
    assert not window.seen("b", 1)[0]


def test_ticket_acks_every_waiter_once_all_messages_settle() -> None:
    acks: list[tuple[str, int, AckStatus]] = []
    ticket = Ticket(10)
    ticket.waiters.append((7, lambda seq, status: acks.append(("first", seq, status))))
    ticket.waiters.append((9, lambda seq, status: acks.append(("retransmit", seq, status))))
    done: list[bool] = []
    ticket.callbacks.append(lambda: done.append(True))
    ticket.settle(4)
    assert acks == [] and not ticket.done
    assert not done
    ticket.settle(6)
    assert acks == [("first", 7, AckStatus.OK), ("retransmit", 9, AckStatus.OK)]
    assert done == [True]


def test_rejected_part_makes_the_ack_rejected() -> None:
    acks: list[AckStatus] = []
    ticket = Ticket(2)
    ticket.waiters.append((1, lambda seq, status: acks.append(status)))
    ticket.settle(1, rejected=True)
    ticket.settle(1)
    assert acks == [AckStatus.REJECTED]


def test_export_load_round_trip_keeps_settled_seqs() -> None:
    window = DedupWindow()
    window.record(("emit-1", "abc"), 5)
    restored = DedupWindow()
    restored.load(window.export())
    assert restored.seen(("emit-1", "abc"), 5) == (True, None)
