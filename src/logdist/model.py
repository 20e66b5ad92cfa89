"""The log message as users see it (the hot path uses columnar blocks instead)."""

from __future__ import annotations

import msgspec


class Message(msgspec.Struct, kw_only=True):
    """One log message.

    ``(stream, seq)`` is its id: ``stream`` is a random 64-bit id of the emitting stream and
    ``seq`` counts that stream's messages, so receivers can drop duplicates.  ``severity`` runs
    from 0 (most urgent) to 255 (least urgent).
    """

    payload: bytes
    severity: int = 128
    ts_ns: int = 0
    stream: int = 0
    seq: int = 0
    attributes: dict[str, str] = {}
