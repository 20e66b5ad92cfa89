"""Analyzer bookkeeping, batch at a time: dedup bitmaps, seq runs, latency histograms, summaries, merging.

Everything here works on whole numpy columns of a :class:`~logdist.wire.batch.MessageBlock`; the only
per-message Python step is CRC verification (``MessageBlock.checksum_failures``).

* :class:`SeqBitmap` remembers which sequence numbers of one stream were seen (one bit per seq, growable),
  with a vectorised check-and-set per batch, and turns itself into ``[first, last]`` runs.
* :class:`LatencyHistogram` counts latencies in log-spaced buckets (1 % wide), so percentiles are within
  ~0.5 % and histograms of several analyzers merge by adding counts.
* :class:`AnalyzerStats` ties them together for one analyzer process and produces the JSON summary.
* :func:`merge` combines the summaries of several analyzers with what the emitters sent: globally delivered,
  duplicated (within and across analyzers) and lost messages, and merged latency percentiles.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from logdist.wire.batch import MessageBlock

PERCENTILES: dict[str, float] = {"p50": 0.50, "p95": 0.95, "p99": 0.99, "p999": 0.999}

# Sequence numbers at or above this are counted but not deduplicated (the bitmap would need > 512 MiB).
MAX_TRACKED_SEQ = 1 << 32
_MIN_BITMAP_BYTES = 256


class SeqBitmap:
    """The set of sequence numbers seen on one stream: a growable numpy uint8 bitmap (bit ``s`` = seq ``s``)."""

    __slots__ = ("_bits", "_runs", "count", "high")

    def __init__(self) -> None:
        self._bits = np.zeros(_MIN_BITMAP_BYTES, dtype=np.uint8)
        self.count = 0  # distinct seqs set
        self.high = -1  # highest seq set
        self._runs: np.ndarray | None = np.empty((0, 2), dtype=np.int64)  # cache; None when stale

    @property
    def capacity(self) -> int:
        """How many seqs fit without growing."""
        return len(self._bits) * 8

    def _grow(self, high: int) -> None:
        need = (high >> 3) + 1
        if need <= len(self._bits):
            return
        size = max(need, 2 * len(self._bits))
        bits = np.zeros(size, dtype=np.uint8)
        bits[: len(self._bits)] = self._bits
        self._bits = bits

    def add(self, seqs: np.ndarray) -> int:
        """Set the bits of ``seqs`` (any order, repeats allowed, all < MAX_TRACKED_SEQ); return how many were new.

        A seq repeated within ``seqs`` counts as new at most once.
        """
        n = len(seqs)
        if not n:
            return 0
        seqs = seqs.astype(np.int64, copy=False)
        first, last = int(seqs[0]), int(seqs[-1])
        if last - first == n - 1 and (n < 3 or bool(np.all(np.diff(seqs) == 1))):
            return self._add_range(first, last)
        if n > 1 and not bool(np.all(seqs[1:] > seqs[:-1])):
            seqs = np.unique(seqs)  # sorted, without in-batch repeats
        high = int(seqs[-1])
        self._grow(high)
        bits = self._bits
        index = seqs >> 3
        mask = np.left_shift(np.uint8(1), (seqs & 7).astype(np.uint8))
        fresh = (bits[index] & mask) == 0
        added = int(np.count_nonzero(fresh))
        if added:
            if added != len(seqs):
                index = index[fresh]
                mask = mask[fresh]
            # seqs are sorted, so equal byte indices are adjacent: OR their masks together, then store once.
            group = np.empty(len(index), dtype=bool)
            group[0] = True
            np.not_equal(index[1:], index[:-1], out=group[1:])
            starts = np.flatnonzero(group)
            bits[index[starts]] |= np.bitwise_or.reduceat(mask, starts)
            self._added(added, high)
        return added

    def _add_range(self, first: int, last: int) -> int:
        """Set seqs ``first..last`` (the common case: a batch of consecutive seqs); return how many were new."""
        self._grow(last)
        lo, hi = first >> 3, last >> 3
        segment = np.unpackbits(self._bits[lo : hi + 1], bitorder="little")
        window = segment[first - 8 * lo : last - 8 * lo + 1]
        added = len(window) - int(np.count_nonzero(window))
        if added:
            window[:] = 1
            self._bits[lo : hi + 1] = np.packbits(segment, bitorder="little")
            self._added(added, last)
        return added

    def _added(self, added: int, high: int) -> None:
        self.count += added
        if high > self.high:
            self.high = high
        self._runs = None

    def contains(self, seqs: np.ndarray) -> np.ndarray:
        """Boolean array: which of ``seqs`` are set."""
        seqs = np.asarray(seqs, dtype=np.int64)
        result = np.zeros(len(seqs), dtype=bool)
        inside = (seqs >= 0) & (seqs < self.capacity)
        s = seqs[inside]
        result[inside] = (self._bits[s >> 3] & np.left_shift(np.uint8(1), (s & 7).astype(np.uint8))) != 0
        return result

    def runs(self) -> np.ndarray:
        """``(k, 2)`` int64 array of inclusive ``[first, last]`` runs of consecutive set seqs, ascending."""
        if self._runs is None:
            self._runs = bitmap_runs(self._bits, self.high + 1)
        return self._runs


def bitmap_runs(bits: np.ndarray, limit: int) -> np.ndarray:
    """Runs of set bits among the first ``limit`` bits of a little-endian bitmap, as inclusive ``[first, last]``."""
    if limit <= 0:
        return np.empty((0, 2), dtype=np.int64)
    flags = np.unpackbits(bits[: (limit + 7) >> 3], bitorder="little")[:limit].view(bool)
    edges = np.flatnonzero(flags[1:] != flags[:-1]) + 1  # positions where the value changes
    bounds = np.concatenate(([0], edges, [limit]))
    starts = bounds[:-1]
    set_runs = flags[starts]
    out = np.empty((int(np.count_nonzero(set_runs)), 2), dtype=np.int64)
    out[:, 0] = starts[set_runs]
    out[:, 1] = bounds[1:][set_runs] - 1
    return out


def runs_from_seqs(seqs: Iterable[int] | np.ndarray) -> np.ndarray:
    """Inclusive runs of a set of sequence numbers (a helper for tests and tools)."""
    values = np.unique(np.asarray(list(seqs) if not isinstance(seqs, np.ndarray) else seqs, dtype=np.int64))
    if not len(values):
        return np.empty((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(values) != 1) + 1
    firsts = values[np.concatenate(([0], breaks))]
    lasts = values[np.concatenate((breaks - 1, [len(values) - 1]))]
    return np.stack([firsts, lasts], axis=1)


def merge_runs(runs: np.ndarray) -> np.ndarray:
    """Union of inclusive runs (any order, overlapping or adjacent) as sorted, disjoint, non-adjacent runs."""
    runs = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    if not len(runs):
        return runs
    runs = runs[np.argsort(runs[:, 0], kind="stable")]
    starts, ends = runs[:, 0], runs[:, 1]
    reach = np.maximum.accumulate(ends)  # furthest seq covered by runs 0..i
    new_group = np.concatenate(([True], starts[1:] > reach[:-1] + 1))
    group_starts = np.flatnonzero(new_group)
    group_ends = np.concatenate((group_starts[1:] - 1, [len(runs) - 1]))
    return np.stack([starts[group_starts], reach[group_ends]], axis=1)


def runs_length(runs: np.ndarray) -> int:
    """How many seqs disjoint inclusive runs cover."""
    runs = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    return int((runs[:, 1] - runs[:, 0] + 1).sum())


def covered_within(runs: np.ndarray, first: int, last: int) -> int:
    """How many seqs of ``first..last`` (inclusive) disjoint runs cover."""
    runs = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    if last < first or not len(runs):
        return 0
    lo = np.maximum(runs[:, 0], first)
    hi = np.minimum(runs[:, 1], last)
    return int(np.clip(hi - lo + 1, 0, None).sum())


class LatencyHistogram:
    """Latencies in log-spaced buckets: bucket 0 is below ``base_ns``; bucket ``i >= 1`` covers
    ``[base_ns * growth**(i-1), base_ns * growth**i)``; the last bucket also takes everything above.
    """

    BASE_NS = 1_000  # 1 us
    GROWTH = 1.01
    BUCKETS = 2400  # up to ~2.3e13 ns (6 hours)

    __slots__ = ("counts",)

    def __init__(self, counts: np.ndarray | None = None) -> None:
        self.counts = np.zeros(self.BUCKETS, dtype=np.int64) if counts is None else counts

    @classmethod
    def bucket_of(cls, latency_ns: np.ndarray) -> np.ndarray:
        """Bucket index of each latency (ns; negative values land in bucket 0)."""
        lat = np.maximum(np.asarray(latency_ns, dtype=np.float64), 1.0)
        raw = np.floor(np.log(lat * (1.0 / cls.BASE_NS)) * (1.0 / math.log(cls.GROWTH))) + 1
        return np.minimum(np.maximum(raw, 0), cls.BUCKETS - 1).astype(np.intp)

    @classmethod
    def bucket_index(cls, latency_ns: int) -> int:
        """Bucket index of one latency (scalar version of :meth:`bucket_of`)."""
        if latency_ns < cls.BASE_NS:
            return 0
        return min(int(math.log(latency_ns / cls.BASE_NS) / math.log(cls.GROWTH)) + 1, cls.BUCKETS - 1)

    @classmethod
    def bucket_value_ns(cls, index: np.ndarray | int) -> np.ndarray:
        """A representative latency of each bucket: its geometric middle (half of ``base_ns`` for bucket 0)."""
        idx = np.asarray(index, dtype=np.float64)
        return np.where(idx < 1, cls.BASE_NS / 2, cls.BASE_NS * cls.GROWTH ** (idx - 0.5))

    def add(self, latency_ns: np.ndarray) -> None:
        """Count every latency of the array."""
        if len(latency_ns):
            self.counts += np.bincount(self.bucket_of(latency_ns), minlength=self.BUCKETS)

    def add_repeated(self, latency_ns: int, times: int) -> None:
        """Count one latency ``times`` times (a batch stamped with one timestamp)."""
        self.counts[self.bucket_index(latency_ns)] += times

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def percentiles_ms(self, points: Mapping[str, float] = PERCENTILES) -> dict[str, float | None]:
        """``{name: latency in ms}`` for each quantile of ``points``; None values when empty."""
        total = self.total
        if not total:
            return {name: None for name in points}
        cumulative = np.cumsum(self.counts)
        out: dict[str, float | None] = {}
        for name, q in points.items():
            rank = max(1, math.ceil(q * total))
            index = int(np.searchsorted(cumulative, rank, side="left"))
            out[name] = round(float(self.bucket_value_ns(index)) / 1e6, 4)
        return out

    def to_sparse(self) -> dict[str, Any]:
        """JSON form: the layout and ``[[bucket, count], ...]`` for the non-empty buckets."""
        nonzero = np.flatnonzero(self.counts)
        return {
            "base_ns": self.BASE_NS,
            "growth": self.GROWTH,
            "buckets": np.stack([nonzero, self.counts[nonzero]], axis=1).tolist(),
        }

    @classmethod
    def from_sparse(cls, data: Mapping[str, Any] | None) -> LatencyHistogram:
        """Inverse of :meth:`to_sparse`; refuses another bucket layout."""
        hist = cls()
        if not data:
            return hist
        if data.get("base_ns", cls.BASE_NS) != cls.BASE_NS or data.get("growth", cls.GROWTH) != cls.GROWTH:
            raise ValueError("latency histogram has a different bucket layout")
        pairs = np.asarray(data.get("buckets", []), dtype=np.int64).reshape(-1, 2)
        if len(pairs):
            if pairs[:, 0].min() < 0 or pairs[:, 0].max() >= cls.BUCKETS:
                raise ValueError("latency histogram bucket out of range")
            np.add.at(hist.counts, pairs[:, 0], pairs[:, 1])
        return hist

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s counts to this histogram."""
        self.counts += other.counts


class AnalyzerStats:
    """Counters of one analyzer; :meth:`record` takes a whole block."""

    def __init__(self, name: str, verify: bool = True) -> None:
        self.name = name
        self.verify = verify
        self.received = 0  # messages, duplicates included
        self.unique = 0
        self.duplicates = 0
        self.untracked = 0  # messages whose seq is too large to deduplicate (counted as unique)
        self.checksum_failures = 0
        self.bytes = 0  # message data bytes (headers + attributes + payloads)
        self.batches = 0
        self.connections = 0  # connections accepted, ever
        self.active_connections = 0
        self.protocol_errors = 0
        self.started_ns = time.time_ns()
        self.latency = LatencyHistogram()
        self.streams: dict[int, SeqBitmap] = {}

    def restore(self, summary: Mapping[str, Any]) -> int:
        """Resume from a previous summary (its ``streams`` runs): ids seen before a restart stay duplicates,
        and the counters go on from where they were. Returns the ids restored."""
        restored = 0
        for stream, runs in (summary.get("streams") or {}).items():
            bitmap = self.streams.setdefault(int(stream), SeqBitmap())
            for first, last in runs:
                if last >= MAX_TRACKED_SEQ:
                    continue
                restored += bitmap.add(np.arange(int(first), int(last) + 1, dtype=np.int64))
        for key in ("received", "unique", "duplicates", "checksum_failures", "bytes", "batches"):
            setattr(self, key, getattr(self, key) + int(summary.get(key, 0)))
        self.latency.merge(LatencyHistogram.from_sparse(summary.get("latency_hist")))
        return restored

    def record(self, block: MessageBlock, now_ns: int | None = None) -> int:
        """Account for one received block; return how many of its messages were new (not duplicates)."""
        n = block.count
        self.batches += 1
        self.bytes += block.nbytes
        if not n:
            return 0
        if now_ns is None:
            now_ns = time.time_ns()
        array = block.array
        self.received += n
        if self.verify:
            self.checksum_failures += block.checksum_failures()
        new = self._dedup(array["stream"], array["seq"])
        self.unique += new
        self.duplicates += n - new
        self._record_latency(array["ts"], now_ns)
        return new

    def _dedup(self, streams: np.ndarray, seqs: np.ndarray) -> int:
        first = streams[0]
        if streams[-1] == first and bool(np.all(streams == first)):
            return self._dedup_stream(int(first), seqs)
        keys, inverse = np.unique(streams, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(keys) + 1))
        sorted_seqs = seqs[order]
        new = 0
        for i, key in enumerate(keys.tolist()):  # one step per stream in the batch, not per message
            new += self._dedup_stream(key, sorted_seqs[bounds[i] : bounds[i + 1]])
        return new

    def _dedup_stream(self, stream: int, seqs: np.ndarray) -> int:
        bitmap = self.streams.get(stream)
        if bitmap is None:
            bitmap = self.streams[stream] = SeqBitmap()
        if int(seqs.max()) >= MAX_TRACKED_SEQ:
            tracked = seqs[seqs < MAX_TRACKED_SEQ]
            untracked = len(seqs) - len(tracked)
            self.untracked += untracked
            return bitmap.add(tracked) + untracked
        return bitmap.add(seqs)

    def _record_latency(self, ts: np.ndarray, now_ns: int) -> None:
        first = int(ts[0])
        if first and int(ts[-1]) == first and bool(np.all(ts == first)):
            self.latency.add_repeated(now_ns - first, len(ts))
            return
        stamped = ts[ts != 0]  # 0 means "not stamped"
        if len(stamped):
            self.latency.add(np.int64(now_ns) - stamped.astype(np.int64))

    def summary(self) -> dict[str, Any]:
        """The JSON-ready summary (see the module docstring of :mod:`logdist.analyzer.server`)."""
        return {
            "name": self.name,
            "received": self.received,
            "unique": self.unique,
            "duplicates": self.duplicates,
            "untracked": self.untracked,
            "checksum_failures": self.checksum_failures,
            "verify": self.verify,
            "bytes": self.bytes,
            "batches": self.batches,
            "connections": self.connections,
            "active_connections": self.active_connections,
            "protocol_errors": self.protocol_errors,
            "uptime_s": round((time.time_ns() - self.started_ns) / 1e9, 3),
            "latency_ms": self.latency.percentiles_ms(),
            "latency_hist": self.latency.to_sparse(),
            "streams": {str(stream): bitmap.runs().tolist() for stream, bitmap in self.streams.items()},
        }


def merge(summaries: list[dict[str, Any]], sent: Mapping[str, int]) -> dict[str, Any]:
    """Combine analyzer summaries with what was sent (``{stream id as decimal string: messages sent}``).

    A message is identified by ``(stream, seq)``; stream ``s`` sent seqs ``0 .. sent[s] - 1``.

    * ``delivered_unique``: distinct messages seen by at least one analyzer;
    * ``duplicates``: every other copy received (within one analyzer or across several), i.e.
      ``received - delivered_unique`` -- a seq seen by two analyzers counts once in each;
    * ``lost``: sent seqs that no analyzer saw;
    * ``unexpected``: distinct seqs seen that were not sent (unknown stream or beyond ``sent``);
    * ``latency_ms``: percentiles of the merged histograms.
    """
    per_stream: dict[str, list[np.ndarray]] = {}
    hist = LatencyHistogram()
    received = checksum_failures = untracked = 0
    analyzers: dict[str, dict[str, Any]] = {}
    for index, summary in enumerate(summaries):
        received += int(summary.get("received", 0))
        checksum_failures += int(summary.get("checksum_failures", 0))
        untracked += int(summary.get("untracked", 0))
        hist.merge(LatencyHistogram.from_sparse(summary.get("latency_hist")))
        for stream, runs in (summary.get("streams") or {}).items():
            if runs:
                per_stream.setdefault(str(stream), []).append(np.asarray(runs, dtype=np.int64).reshape(-1, 2))
        name = str(summary.get("name") or f"analyzer-{index}")
        if name in analyzers:
            name = f"{name}#{index}"
        analyzers[name] = {
            "received": int(summary.get("received", 0)),
            "unique": int(summary.get("unique", 0)),
            "duplicates": int(summary.get("duplicates", 0)),
        }
    delivered = lost = unexpected = 0
    lost_by_stream: dict[str, int] = {}
    for stream in set(per_stream) | {str(s) for s in sent}:
        runs = merge_runs(np.concatenate(per_stream[stream])) if stream in per_stream else np.empty((0, 2), np.int64)
        seen = runs_length(runs)
        expected = int(sent.get(stream, 0))
        inside = covered_within(runs, 0, expected - 1)
        delivered += seen
        unexpected += seen - inside
        if expected - inside:
            lost_by_stream[stream] = expected - inside
            lost += expected - inside
    delivered += untracked
    total_sent = sum(int(v) for v in sent.values())
    return {
        "sent": total_sent,
        "received": received,
        "delivered_unique": delivered,
        "duplicates": received - delivered,
        "lost": lost,
        "lost_by_stream": lost_by_stream,
        "unexpected": unexpected,
        "checksum_failures": checksum_failures,
        "analyzers": analyzers,
        "latency_ms": hist.percentiles_ms(),
        "latency_samples": hist.total,
    }
