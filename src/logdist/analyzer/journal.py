"""An append-only journal of received message ids, written before each ack.

Each record is three little-endian u64: ``stream, first_seq, last_seq`` (an inclusive run of ids in one batch).
The journal is written with plain ``write`` (no fsync) before the batch is acked, so it survives ``kill -9`` of
the analyzer: tests and benchmarks use it to prove that nothing acknowledged was lost.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from logdist.wire.batch import MessageBlock

RECORD = np.dtype([("stream", "<u8"), ("first", "<u8"), ("last", "<u8")])


def batch_runs(block: MessageBlock) -> np.ndarray:
    """The ids of ``block`` as journal records: one per run of consecutive seqs of one stream."""
    array = block.array
    if not block.count:
        return np.empty(0, dtype=RECORD)
    streams = array["stream"]
    seqs = array["seq"]
    breaks = np.flatnonzero((streams[1:] != streams[:-1]) | (seqs[1:] != seqs[:-1] + np.uint64(1))) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks - 1, [block.count - 1]))
    records = np.empty(len(starts), dtype=RECORD)
    records["stream"] = streams[starts]
    records["first"] = seqs[starts]
    records["last"] = seqs[ends]
    return records


class Journal:
    """Appends id runs to a file opened with O_APPEND (a restarted analyzer keeps appending)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(self, block: MessageBlock) -> None:
        """Append the ids of ``block``."""
        os.write(self._fd, batch_runs(block).tobytes())

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_journal(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Stream id (decimal string) -> ``(k, 2)`` int64 runs as received, duplicates kept, in arrival order."""
    data = Path(path).read_bytes() if Path(path).exists() else b""
    usable = len(data) - len(data) % RECORD.itemsize  # a torn last record (kill -9 mid-write) is ignored
    records = np.frombuffer(data[:usable], dtype=RECORD)
    out: dict[str, np.ndarray] = {}
    for stream in np.unique(records["stream"]):
        mine = records[records["stream"] == stream]
        out[str(int(stream))] = np.stack([mine["first"], mine["last"]], axis=1).astype(np.int64)
    return out
