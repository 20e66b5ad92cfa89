"""Pending messages for one analyzer, cut into outgoing batches of bounded size."""

from __future__ import annotations

from collections import deque

from logdist.wire.batch import MessageBlock


class Coalescer:
    """A FIFO of blocks; ``take`` returns the blocks holding the next ``max_messages`` messages at most."""

    def __init__(self, max_messages: int) -> None:
        self.max_messages = max_messages
        self._blocks: deque[MessageBlock] = deque()
        self.messages = 0
        self.nbytes = 0

    def __len__(self) -> int:
        return self.messages

    def add(self, block: MessageBlock) -> None:
        """Queue ``block`` at the back."""
        if block.count:
            self._blocks.append(block)
            self.messages += block.count
            self.nbytes += block.nbytes

    def push_front(self, block: MessageBlock) -> None:
        """Queue ``block`` at the front (a batch that must go out again first)."""
        if block.count:
            self._blocks.appendleft(block)
            self.messages += block.count
            self.nbytes += block.nbytes

    def take(self) -> list[MessageBlock]:
        """Up to ``max_messages`` queued messages, in order, as the blocks that hold them ([] when empty)."""
        blocks = self._blocks
        parts: list[MessageBlock] = []
        room = self.max_messages
        while blocks and room:
            block = blocks[0]
            if block.count <= room:
                parts.append(blocks.popleft())
                room -= block.count
            else:
                parts.append(block.slice(0, room))
                blocks[0] = block.slice(room, block.count)
                room = 0
        self.messages -= self.max_messages - room
        self.nbytes -= sum(part.nbytes for part in parts)
        return parts

    def drain(self) -> list[MessageBlock]:
        """Remove and return every queued block."""
        blocks = list(self._blocks)
        self._blocks.clear()
        self.messages = 0
        self.nbytes = 0
        return blocks
