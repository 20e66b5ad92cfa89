"""Error codes shared by every wire codec."""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Codes carried in ERROR frames (and mapped to HTTP statuses by HTTP ingest)."""

    UNKNOWN = 0
    BAD_FRAME = 1
    FRAME_TOO_LARGE = 2
    UNSUPPORTED_VERSION = 3
    BAD_HANDSHAKE = 4
    BAD_BATCH = 5
    UNEXPECTED_FRAME = 6
    UNAUTHORIZED = 7
    SHUTTING_DOWN = 8
    INTERNAL = 9


class ProtocolError(Exception):
    """Malformed or unexpected input; the connection cannot continue."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason
