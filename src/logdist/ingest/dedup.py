"""Recognising retransmitted emitter batches, and acks that wait for delivery.

An emitter that reconnects sends its unacknowledged batches again with the same sequence numbers. The
distributor remembers, per emitter session (client id + a random session id from its HELLO), the last
``window`` batch sequence numbers it accepted; a batch seen again is acknowledged without being routed twice.
A batch's :class:`Ticket` counts its messages down as analyzers acknowledge them; at zero it sends the
emitter's ack (``delivered`` ack mode) and deletes the batch's spool record (``durable`` mode).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from logdist.wire.native import AckStatus

AckSender = Callable[[int, AckStatus], None]  # (batch seq, status) -> write the ACK on the emitter connection


class Ticket:
    """The outstanding messages of one accepted batch; at zero it acks every waiting emitter connection and
    runs its callbacks (such as deleting the batch's spool record)."""

    __slots__ = ("callbacks", "remaining", "rejected", "spool_id", "spool_queue", "waiters")

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.rejected = False
        self.waiters: list[tuple[int, AckSender]] = []
        self.callbacks: list[Callable[[], None]] = []
        self.spool_id: int | None = None  # set once the batch is durable in the spool
        self.spool_queue: str | None = None  # the spool queue holding it (spill, hold) until delivered

    @property
    def done(self) -> bool:
        """Whether every message has an outcome."""
        return self.remaining <= 0

    def settle(self, count: int, rejected: bool = False) -> None:
        """``count`` messages have an outcome (delivered, or rejected by an analyzer)."""
        self.rejected |= rejected
        self.remaining -= count
        if self.remaining == 0:
            status = AckStatus.REJECTED if self.rejected else AckStatus.OK
            for seq, send in self.waiters:
                send(seq, status)
            self.waiters.clear()
            for callback in self.callbacks:
                callback()
            self.callbacks.clear()


class DedupWindow:
    """Per emitter session, the last ``window`` accepted batch seqs (each with its ticket, if any)."""

    def __init__(self, window: int = 4096, max_sessions: int = 100_000) -> None:
        self.window = window
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[Any, OrderedDict[int, Ticket | None]] = OrderedDict()
        self.duplicates = 0

    def seen(self, session: Any, seq: int) -> tuple[bool, Ticket | None]:
        """``(True, ticket)`` when ``seq`` was accepted before in ``session`` (ticket None once settled)."""
        batches = self._sessions.get(session)
        if batches is None or seq not in batches:
            return False, None
        self._sessions.move_to_end(session)
        self.duplicates += 1
        ticket = batches[seq]
        return True, None if ticket is None or ticket.done else ticket

    def record(self, session: Any, seq: int, ticket: Ticket | None = None) -> None:
        """Remember that ``seq`` was accepted in ``session``."""
        batches = self._sessions.get(session)
        if batches is None:
            batches = self._sessions[session] = OrderedDict()
            if len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)  # the least recently active session
        else:
            self._sessions.move_to_end(session)
        batches[seq] = ticket
        if len(batches) > self.window:
            batches.popitem(last=False)

    def export(self) -> dict[str, list[int]]:
        """JSON-ready ``{session: [seqs]}`` for persisting the window across restarts."""
        return {f"{key[0]}\x1f{key[1]}": list(batches) for key, batches in self._sessions.items()}

    def load(self, data: dict[str, list[int]]) -> None:
        """Restore a window saved by :meth:`export` (settled batches: retransmissions are acked at once)."""
        for text, seqs in data.items():
            client, _, session = text.partition("\x1f")
            for seq in seqs:
                self.record((client, session), int(seq))
