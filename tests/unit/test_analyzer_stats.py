"""Analyzer bookkeeping: dedup bitmaps, seq runs, latency histograms, summaries and merging."""

from __future__ import annotations

import json
import random
import zlib

import numpy as np
import pytest

from logdist.analyzer.stats import (
    MAX_TRACKED_SEQ,
    AnalyzerStats,
    LatencyHistogram,
    SeqBitmap,
    bitmap_runs,
    covered_within,
    merge,
    merge_runs,
    runs_from_seqs,
)
from logdist.emitter.client import StreamStamper, build_block
from logdist.wire.batch import FLAG_CRC, HEADER_DTYPE, MessageBlock


def block_of(stream: int, seqs, ts_ns: int = 1, payload: bytes = b"x") -> MessageBlock:
    seqs = np.asarray(seqs, dtype=np.uint64)
    array = np.zeros(len(seqs), dtype=HEADER_DTYPE)
    array["stream"] = stream
    array["seq"] = seqs
    array["ts"] = ts_ns
    array["flags"] = FLAG_CRC
    array["crc"] = zlib.crc32(payload)
    array["length"] = len(payload)
    return MessageBlock(len(seqs), array.tobytes(), payload * len(seqs), array)


# -- SeqBitmap ---------------------------------------------------------------------------------------------


def test_bitmap_contiguous_batches_and_repeats():
    bm = SeqBitmap()
    assert bm.add(np.arange(0, 1000)) == 1000
    assert bm.add(np.arange(1000, 2000)) == 1000
    assert bm.add(np.arange(500, 1500)) == 0  # all seen
    assert bm.add(np.arange(1990, 2010)) == 10  # half seen
    assert bm.count == 2010
    assert bm.runs().tolist() == [[0, 2009]]


def test_bitmap_unordered_with_in_batch_duplicates():
    bm = SeqBitmap()
    assert bm.add(np.array([7, 3, 3, 9, 7, 100])) == 4
    assert bm.add(np.array([3, 4, 100, 101])) == 2
    assert bm.count == 6
    assert bm.runs().tolist() == [[3, 4], [7, 7], [9, 9], [100, 101]]
    assert bm.contains(np.array([2, 3, 4, 5, 101, 10**9])).tolist() == [False, True, True, False, True, False]


def test_bitmap_grows_far_beyond_its_initial_size():
    bm = SeqBitmap()
    start = bm.capacity
    assert bm.add(np.array([0, 5_000_000])) == 2
    assert bm.capacity > 5_000_000 > start
    assert bm.add(np.array([5_000_000])) == 0
    assert bm.runs().tolist() == [[0, 0], [5_000_000, 5_000_000]]


def test_bitmap_matches_a_python_set_on_random_batches():
    rng = np.random.default_rng(7)
    bm = SeqBitmap()
    seen: set[int] = set()
    for _ in range(300):
        kind = rng.integers(3)
        if kind == 0:  # a contiguous range
            lo = int(rng.integers(0, 20_000))
            seqs = np.arange(lo, lo + int(rng.integers(1, 300)))
        elif kind == 1:  # random, repeats likely
            seqs = rng.integers(0, 20_000, size=int(rng.integers(1, 300)))
        else:  # sorted, strictly increasing, with gaps
            seqs = np.unique(rng.integers(0, 20_000, size=int(rng.integers(1, 300))))
        expected_new = len(set(seqs.tolist()) - seen)
        assert bm.add(seqs) == expected_new
        seen |= set(seqs.tolist())
    assert bm.count == len(seen)
    assert bm.runs().tolist() == runs_from_seqs(sorted(seen)).tolist()


@pytest.mark.parametrize(
    "bits, limit, expected",
    [
        ([], 0, []),
        ([1, 1, 1], 3, [[0, 2]]),
        ([0, 1, 1, 0, 1], 5, [[1, 2], [4, 4]]),
        ([1, 0, 0, 0, 0, 0, 0, 0, 0, 1], 10, [[0, 0], [9, 9]]),
        ([0, 0, 0], 3, []),
    ],
)
def test_bitmap_runs(bits, limit, expected):
    packed = np.packbits(np.array(bits + [0] * 16, dtype=np.uint8), bitorder="little")
    assert bitmap_runs(packed, limit).tolist() == expected


def test_merge_runs_and_coverage():
    runs = np.array([[10, 20], [0, 4], [5, 7], [15, 30], [40, 40], [32, 35]])
    merged = merge_runs(runs)
    assert merged.tolist() == [[0, 7], [10, 30], [32, 35], [40, 40]]
    assert covered_within(merged, 0, 9) == 8
    assert covered_within(merged, 5, 12) == 3 + 3
    assert covered_within(merged, 100, 200) == 0
    assert covered_within(merged, 5, 4) == 0


# -- LatencyHistogram --------------------------------------------------------------------------------------


def test_histogram_buckets_are_about_one_percent_wide():
    values = np.array([1_000, 10_000, 1_234_567, 50_000_000, 3_000_000_000], dtype=np.int64)
    idx = LatencyHistogram.bucket_of(values)
    mid = LatencyHistogram.bucket_value_ns(idx)
    assert np.all(np.abs(mid / values - 1) < 0.0051)
    assert [LatencyHistogram.bucket_index(int(v)) for v in values] == idx.tolist()
    # below the base and negative (clock skew) go to bucket 0; absurd values to the last bucket
    assert LatencyHistogram.bucket_of(np.array([-5, 0, 999])).tolist() == [0, 0, 0]
    assert LatencyHistogram.bucket_of(np.array([10**18]))[0] == LatencyHistogram.BUCKETS - 1


def test_histogram_percentiles_of_a_known_distribution():
    hist = LatencyHistogram()
    latencies_ns = np.arange(1, 100_001) * 1_000  # 1 us .. 100 ms, uniform
    hist.add(latencies_ns)
    p = hist.percentiles_ms()
    for name, q in {"p50": 0.5, "p95": 0.95, "p99": 0.99, "p999": 0.999}.items():
        exact = float(np.quantile(latencies_ns, q)) / 1e6
        assert p[name] == pytest.approx(exact, rel=0.011), name
    assert LatencyHistogram().percentiles_ms() == {"p50": None, "p95": None, "p99": None, "p999": None}


def test_histogram_add_repeated_equals_add():
    a, b = LatencyHistogram(), LatencyHistogram()
    a.add(np.full(37, 4_567_890))
    b.add_repeated(4_567_890, 37)
    assert np.array_equal(a.counts, b.counts)


def test_histogram_sparse_round_trip_and_merge():
    a, b = LatencyHistogram(), LatencyHistogram()
    a.add(np.full(990, 1_000_000))  # 1 ms
    b.add(np.full(10, 1_000_000_000))  # 1 s
    restored = LatencyHistogram.from_sparse(json.loads(json.dumps(a.to_sparse())))
    assert np.array_equal(restored.counts, a.counts)
    restored.merge(b)
    p = restored.percentiles_ms()
    assert p["p50"] == pytest.approx(1.0, rel=0.01)
    assert p["p99"] == pytest.approx(1.0, rel=0.01)
    assert p["p999"] == pytest.approx(1000.0, rel=0.01)
    with pytest.raises(ValueError):
        LatencyHistogram.from_sparse({"base_ns": 1, "growth": 2.0, "buckets": []})


# -- AnalyzerStats -----------------------------------------------------------------------------------------


def test_stats_counts_duplicates_within_and_across_batches():
    stats = AnalyzerStats("a")
    assert stats.record(block_of(1, [0, 1, 2, 2, 3])) == 4
    assert stats.record(block_of(1, [3, 4])) == 1
    assert stats.record(block_of(2, [0, 1])) == 2
    s = stats.summary()
    assert (s["received"], s["unique"], s["duplicates"], s["batches"]) == (9, 7, 2, 3)
    assert s["streams"] == {"1": [[0, 4]], "2": [[0, 1]]}
    assert s["checksum_failures"] == 0


def test_stats_mixed_streams_in_one_block():
    stats = AnalyzerStats("a")
    streams = np.array([5, 9, 5, 9, 5, 2**64 - 1], dtype=np.uint64)
    array = np.zeros(6, dtype=HEADER_DTYPE)
    array["stream"] = streams
    array["seq"] = [0, 0, 1, 0, 2, 7]
    array["ts"] = 1
    block = MessageBlock(6, array.tobytes(), b"", array)
    assert stats.record(block) == 5
    assert stats.summary()["streams"] == {"5": [[0, 2]], "9": [[0, 0]], str(2**64 - 1): [[7, 7]]}


def test_stats_checksum_failures_and_no_verify():
    good = StreamStamper(stream=3).block([b"alpha", b"beta", b"gamma"])
    array = good.array.copy()
    array["crc"][1] ^= 1
    bad = MessageBlock(3, array.tobytes(), good.bodies, array)
    verifying, trusting = AnalyzerStats("v"), AnalyzerStats("t", verify=False)
    for stats in (verifying, trusting):
        stats.record(good)
        stats.record(bad)
    assert verifying.checksum_failures == 1
    assert trusting.checksum_failures == 0


def test_stats_latency_uses_the_emit_timestamps():
    stats = AnalyzerStats("a")
    now = 10**18
    stats.record(block_of(1, range(100), ts_ns=now - 5_000_000), now_ns=now)  # 5 ms, one stamp per batch
    array = block_of(1, range(100, 200)).array.copy()
    array["ts"] = now - np.arange(1, 101) * 100_000  # 0.1 .. 10 ms
    array["ts"][:10] = 0  # unstamped: not measured
    stats.record(MessageBlock(100, array.tobytes(), b"x" * 100, array), now_ns=now)
    assert stats.latency.total == 190
    assert stats.summary()["latency_ms"]["p50"] == pytest.approx(5.0, rel=0.02)


def test_stats_untracked_huge_seqs_are_counted():
    stats = AnalyzerStats("a")
    assert stats.record(block_of(1, [1, MAX_TRACKED_SEQ + 5])) == 2
    assert stats.untracked == 1
    assert stats.summary()["streams"] == {"1": [[1, 1]]}


def test_summary_is_json():
    stats = AnalyzerStats("a")
    stats.record(build_block([b"x" * 10] * 5, stream=2**63 + 1, first_seq=0))
    text = json.dumps(stats.summary())
    assert json.loads(text)["streams"] == {str(2**63 + 1): [[0, 4]]}


# -- merge -------------------------------------------------------------------------------------------------


def summary_of(name: str, blocks: list[MessageBlock]) -> dict:
    stats = AnalyzerStats(name)
    for block in blocks:
        stats.record(block, now_ns=10**18)
    return json.loads(json.dumps(stats.summary()))


def test_merge_counts_cross_analyzer_duplicates_and_losses():
    a = summary_of("a", [block_of(1, range(0, 60)), block_of(2, range(0, 10))])
    b = summary_of("b", [block_of(1, range(50, 90)), block_of(1, range(50, 55))])  # 10 overlap a, 5 repeat
    sent = {"1": 100, "2": 12, "3": 4}
    m = merge([a, b], sent)
    assert m["sent"] == 116
    assert m["received"] == 60 + 10 + 40 + 5
    assert m["delivered_unique"] == 90 + 10
    assert m["duplicates"] == 10 + 5
    assert m["lost"] == 10 + 2 + 4
    assert m["lost_by_stream"] == {"1": 10, "2": 2, "3": 4}
    assert m["unexpected"] == 0
    assert m["analyzers"]["b"]["duplicates"] == 5


def test_merge_unexpected_seqs_and_latency():
    a = summary_of("a", [block_of(1, range(0, 10), ts_ns=10**18 - 2_000_000)])  # 2 ms
    b = summary_of("b", [block_of(7, range(0, 3), ts_ns=10**18 - 8_000_000)])  # 8 ms, unknown stream
    m = merge([a, b], {"1": 8})
    assert m["lost"] == 0
    assert m["unexpected"] == 2 + 3
    assert m["delivered_unique"] == 13
    assert m["latency_samples"] == 13
    assert m["latency_ms"]["p50"] == pytest.approx(2.0, rel=0.01)
    assert m["latency_ms"]["p99"] == pytest.approx(8.0, rel=0.01)


def test_merge_random_split_against_sets():
    rng = random.Random(3)
    sent = {str(s): rng.randrange(50, 400) for s in (11, 22, 33)}
    received: list[list[MessageBlock]] = [[], [], []]
    seen: dict[str, set[int]] = {s: set() for s in sent}
    copies = 0
    for stream, count in sent.items():
        for seq in range(count):
            for analyzer in rng.sample(range(3), rng.choice([0, 1, 1, 1, 2])):
                received[analyzer].append(block_of(int(stream), [seq]))
                seen[stream].add(seq)
                copies += 1
    m = merge([summary_of(str(i), blocks) for i, blocks in enumerate(received)], sent)
    delivered = sum(len(v) for v in seen.values())
    assert m["delivered_unique"] == delivered
    assert m["duplicates"] == copies - delivered
    assert m["lost"] == sum(sent.values()) - delivered


def test_merge_of_nothing():
    m = merge([], {"1": 5})
    assert (m["delivered_unique"], m["duplicates"], m["lost"]) == (0, 0, 5)
    assert m["latency_ms"]["p50"] is None


def test_restore_keeps_the_dedup_window_and_counters_across_a_restart() -> None:
    from logdist.analyzer.stats import AnalyzerStats
    from logdist.emitter.client import StreamStamper

    block = StreamStamper(stream=77).block([b"m%d" % i for i in range(100)])
    before = AnalyzerStats("a")
    assert before.record(block) == 100
    after = AnalyzerStats("a")
    assert after.restore(before.summary()) == 100
    assert after.record(block) == 0, "ids seen before the restart are duplicates after it"
    assert (after.unique, after.duplicates, after.received) == (100, 100, 200)
