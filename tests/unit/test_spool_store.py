"""The durable spool store: round trips, FIFO per queue, exact depth, restarts, the size cap, fsync policies."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest

from logdist.spool import FsyncPolicy, Spool, SpoolError, SpoolFull
from logdist.wire.batch import HEADER_DTYPE, MessageBlock

pytestmark = pytest.mark.timeout(60)

CAP = 64 << 20
"""Spool cap used by most tests: it keeps the preallocated disk reserve small (2 MiB)."""


def make_block(tag: int, count: int, payload: int = 200) -> MessageBlock:
    """``count`` messages whose headers and bodies all depend on ``tag`` (built with numpy, no per-message loop)."""
    array = np.zeros(count, dtype=HEADER_DTYPE)
    array["stream"] = tag
    array["seq"] = np.arange(count)
    array["ts"] = tag * 1_000_000
    array["severity"] = tag % 256
    lengths = payload + (np.arange(count) % 7)
    array["length"] = lengths
    bodies = np.repeat(((np.arange(count) + tag) % 251).astype(np.uint8), lengths).tobytes()
    return MessageBlock.from_buffer(count, array.tobytes() + bodies)


def same(a: MessageBlock, b: MessageBlock) -> bool:
    return a.count == b.count and bytes(a.headers) == bytes(b.headers) and bytes(a.bodies) == bytes(b.bodies)


def record_size(block: MessageBlock) -> int:
    return 4 + block.nbytes


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 30))


async def read_all(spool: Spool, queue: str) -> list[tuple[int, MessageBlock]]:
    out: list[tuple[int, MessageBlock]] = []
    after = None
    while batch := await spool.read(queue, 10_000, after=after):
        out += batch
        after = batch[-1][0]
    return out


def test_round_trip_preserves_blocks_exactly(tmp_path: Path) -> None:
    async def body() -> None:
        blocks = [make_block(i, count) for i, count in enumerate([1, 2, 1000, 37, 5])]
        async with Spool(tmp_path / "spool", max_bytes=CAP) as spool:
            ids = [await spool.append("q", block) for block in blocks]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            got = await read_all(spool, "q")
            assert [rid for rid, _ in got] == ids
            assert all(same(a, b) for (_, a), b in zip(got, blocks, strict=True))
            assert all(
                isinstance(block, MessageBlock) and block.array["stream"][0] == i for i, (_, block) in enumerate(got)
            )
            await spool.delete("q", ids[:2])
            assert [rid for rid, _ in await read_all(spool, "q")] == ids[2:]
            await spool.delete("q", ids[2:])
            assert await spool.read("q", 100) == []
            assert spool.queues() == [] and spool.used_bytes == 0
            await spool.verify()

    run(body)


def test_buffers_may_be_reused_after_append_nowait(tmp_path: Path) -> None:
    async def body() -> None:
        block = make_block(1, 10)
        headers = bytearray(block.headers)
        bodies = bytearray(block.bodies)
        mutable = MessageBlock(10, headers, bodies)
        async with Spool(tmp_path / "spool", max_bytes=CAP) as spool:
            fut = spool.append_nowait("q", mutable)
            headers[:] = bytes(len(headers))  # the spool copied the block before append_nowait returned
            bodies[:] = bytes(len(bodies))
            rid = await fut
            ((got_id, got),) = await spool.read("q", 100)
            assert got_id == rid and same(got, block)

    run(body)


def test_fifo_per_queue_and_queues_independent(tmp_path: Path) -> None:
    async def body() -> None:
        async with Spool(tmp_path / "spool", max_bytes=CAP) as spool:
            names = ["a", "b", "ünïcode queue"]
            futures = [(names[i % 3], i, spool.append_nowait(names[i % 3], make_block(i, 3))) for i in range(30)]
            expected: dict[str, list[tuple[int, int]]] = {name: [] for name in names}
            for name, i, fut in futures:
                expected[name].append((await fut, i))
            for name in names:
                got = await read_all(spool, name)
                assert [(rid, int(block.array["stream"][0])) for rid, block in got] == expected[name]
            await spool.delete("a", [rid for rid, _ in expected["a"]])
            assert await read_all(spool, "a") == []
            assert [rid for rid, _ in await read_all(spool, "b")] == [rid for rid, _ in expected["b"]]
            # ids of another queue are not this queue's records: deleting them is a no-op
            await spool.delete("b", [rid for rid, _ in expected["ünïcode queue"]])
            assert spool.depth("ünïcode queue") == (10, 30)
            assert spool.queues() == ["b", "ünïcode queue"]

    run(body)


def test_read_limits_and_after(tmp_path: Path) -> None:
    async def body() -> None:
        async with Spool(tmp_path / "spool", max_bytes=CAP) as spool:
            ids = [await spool.append("q", make_block(i, 10)) for i in range(5)]
            assert [rid for rid, _ in await spool.read("q", 25)] == ids[:2]
            assert [rid for rid, _ in await spool.read("q", 30)] == ids[:3]
            assert [rid for rid, _ in await spool.read("q", 5)] == ids[:1]  # at least one record
            assert [rid for rid, _ in await spool.read("q", 20, after=ids[1])] == ids[2:4]
            assert [rid for rid, _ in await spool.read("q", 1000, after=0)] == ids
            assert await spool.read("q", 1000, after=ids[-1]) == []
            assert await spool.read("q", 1000, after=2**64 - 1) == []
            assert await spool.read("other", 10) == []
            with pytest.raises(ValueError):
                await spool.read("q", 0)

    run(body)


def test_depth_and_used_bytes_exact(tmp_path: Path) -> None:
    async def body() -> None:
        async with Spool(tmp_path / "spool", max_bytes=CAP) as spool:
            blocks = [make_block(i, 1 + i) for i in range(20)]
            ids = await asyncio.gather(*(spool.append("q", block) for block in blocks))
            assert spool.depth("q") == (20, sum(b.count for b in blocks))
            assert spool.used_bytes == sum(record_size(b) for b in blocks)
            await spool.delete("q", [ids[0], ids[0], ids[3], 10**9])  # duplicates and unknown ids are ignored
            kept = [b for i, b in enumerate(blocks) if i not in (0, 3)]
            assert spool.depth("q") == (18, sum(b.count for b in kept))
            assert spool.used_bytes == sum(record_size(b) for b in kept)
            assert spool.depth("nothing") == (0, 0)
            await spool.delete("q", [])
            await spool.verify()

    run(body)


def test_reopen_keeps_records_and_ids_keep_increasing(tmp_path: Path) -> None:
    path = tmp_path / "spool"

    async def first() -> list[int]:
        async with Spool(path, max_bytes=CAP) as spool:
            ids = [await spool.append(f"q{i % 2}", make_block(i, 5)) for i in range(6)]
            gone = await spool.append("gone", make_block(99, 1))
            await spool.delete("gone", [gone])
            return [*ids, gone]

    async def second(old: list[int]) -> list[int]:
        async with Spool(path, max_bytes=CAP) as spool:
            assert spool.queues() == ["q0", "q1"]
            assert spool.depth("q0") == (3, 15) and spool.depth("q1") == (3, 15)
            assert spool.used_bytes == 6 * record_size(make_block(0, 5))
            got = await read_all(spool, "q0") + await read_all(spool, "q1")
            assert sorted(rid for rid, _ in got) == sorted(old[:6])
            for rid, block in got:
                assert same(block, make_block(old.index(rid), 5))
            new = await spool.append("q0", make_block(7, 1))
            assert new > max(old)  # also above the id of a record deleted before the restart
            await spool.verify()
            return [new]

    async def third(old: list[int]) -> None:
        async with Spool(path, max_bytes=CAP) as spool:
            everything = await read_all(spool, "q0") + await read_all(spool, "q1")
            await spool.delete("q0", [rid for rid, _ in everything])
            await spool.delete("q1", [rid for rid, _ in everything])
            assert spool.queues() == []
        async with Spool(path, max_bytes=CAP) as spool:  # an empty store still remembers the id sequence
            assert await spool.append("q0", make_block(8, 1)) > max(old)

    old = run(first)
    old += run(lambda: second(old))
    run(lambda: third(old))


def test_spool_full_at_cap_and_space_reusable(tmp_path: Path) -> None:
    async def body() -> None:
        block = make_block(1, 100)
        size = record_size(block)
        async with Spool(tmp_path / "spool", max_bytes=3 * size + 10) as spool:
            for cycle in range(5):
                ids = [await spool.append("q", block) for _ in range(3)]
                with pytest.raises(
                    SpoolFull, match=rf"exceed the spool cap of {3 * size + 10} bytes by {size - 10} bytes"
                ):
                    await spool.append("q", block)
                with pytest.raises(SpoolFull):  # append_nowait raises at once, before anything is queued
                    spool.append_nowait("q", block)
                assert spool.depth("q") == (3, 300), cycle
                await spool.delete("q", ids)
            # appends in flight count against the cap too
            futures = [spool.append_nowait("q", block) for _ in range(3)]
            with pytest.raises(SpoolFull, match=f"by {size - 10} bytes"):
                spool.append_nowait("q", block)
            await asyncio.gather(*futures)
            assert isinstance(SpoolFull("x"), SpoolError)
            await spool.verify()

    run(body)


def test_lmdb_map_full_surfaces_as_spool_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the LMDB map (here: a cap raised after open), appends fail with SpoolFull and the spool recovers."""
    monkeypatch.setattr("logdist.spool.store.MAP_HEADROOM", 4 << 20)

    async def body() -> None:
        big = make_block(2, 4000)  # ~850 kB
        async with Spool(tmp_path / "spool", max_bytes=1 << 20, fsync=FsyncPolicy.NEVER) as spool:
            spool.max_bytes = 1 << 40  # the map stays 2 * 1 MiB + 4 MiB
            ids: list[int] = []
            with pytest.raises(SpoolFull, match="map is full"):
                for _ in range(20):
                    ids.append(await spool.append("q", big))
            assert 3 <= len(ids) < 20
            # a group holding a failing append still commits its other operations
            results = await asyncio.gather(
                spool.append_nowait("q", big), spool.delete("q", ids[:2]), return_exceptions=True
            )
            assert isinstance(results[0], SpoolFull) and results[1] is None
            assert spool.depth("q") == (len(ids) - 2, (len(ids) - 2) * 4000)
            await spool.append("q", big)  # the space of the deleted records is usable again
            await spool.append("q", make_block(3, 1))
            await spool.verify()

    run(body)


@pytest.mark.parametrize("policy", list(FsyncPolicy))
def test_fsync_policies(tmp_path: Path, policy: FsyncPolicy) -> None:
    path = tmp_path / "spool"

    async def body() -> None:
        spool = Spool(path, max_bytes=CAP, fsync=policy, interval_ms=1e-3)
        await spool.open()
        ids = await asyncio.gather(*(spool.append("q", make_block(i, 10)) for i in range(10)))
        await spool.delete("q", ids[:3])
        if policy is FsyncPolicy.NEVER:
            assert spool.fsyncs == 0
        else:
            assert spool.fsyncs >= 1  # BATCH: every commit; INTERVAL: the interval (1 us) had passed
        before = spool.fsyncs
        await spool.close()
        assert spool.fsyncs == before + (policy is FsyncPolicy.NEVER)
        async with Spool(path, max_bytes=CAP, fsync=policy) as again:
            assert [rid for rid, _ in await read_all(again, "q")] == ids[3:]

    run(body)


def test_interval_policy_acks_before_fsync(tmp_path: Path) -> None:
    async def body() -> None:
        async with Spool(tmp_path / "spool", max_bytes=CAP, fsync=FsyncPolicy.INTERVAL, interval_ms=3_600_000) as spool:
            await spool.append("q", make_block(1, 10))
            assert spool.commits >= 1 and spool.fsyncs == 0
        assert spool.fsyncs == 1  # close flushes

    run(body)


def test_group_commit_needs_far_fewer_fsyncs_than_appends(tmp_path: Path) -> None:
    async def body() -> None:
        block = make_block(1, 1000)
        async with Spool(tmp_path / "spool", max_bytes=CAP) as spool:
            ids = await asyncio.gather(*(spool.append(f"q{i % 4}", block) for i in range(100)))
            assert len(set(ids)) == 100
            assert spool.fsyncs < 100 and spool.commits < 100
            assert sum(spool.depth(f"q{i}")[1] for i in range(4)) == 100_000

    run(body)


def test_misuse_raises_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "spool"

    async def body() -> None:
        spool = Spool(path, max_bytes=CAP)
        with pytest.raises(SpoolError, match="not open"):
            spool.append_nowait("q", make_block(1, 1))
        await spool.open()
        with pytest.raises(SpoolError, match="in use"):
            await Spool(path, max_bytes=CAP).open()  # one Spool per directory (it owns the counters)
        for name in ["", "a\x00b", "x" * 401]:
            with pytest.raises(ValueError):
                spool.append_nowait(name, make_block(1, 1))
        with pytest.raises(ValueError):
            spool.append_nowait("q", MessageBlock(0, b"", b""))
        with pytest.raises(ValueError):
            spool.append_nowait("q", MessageBlock(2, b"x" * 10, b""))
        with pytest.raises(ValueError):
            await spool.delete("q", [-1])
        cancelled = spool.append_nowait("q", make_block(1, 1))
        cancelled.cancel()  # the write still happens; nothing breaks
        await spool.append("q", make_block(2, 1))
        assert spool.depth("q") == (2, 2)
        await spool.close()
        await spool.close()
        with pytest.raises(SpoolError, match="closed"):
            await spool.append("q", make_block(1, 1))
        async with Spool(path, max_bytes=CAP) as again:  # the lock was released
            assert again.depth("q") == (2, 2)

    run(body)


def test_corrupt_record_is_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "spool"

    async def fill() -> list[int]:
        async with Spool(path, max_bytes=CAP) as spool:
            return [await spool.append("q", make_block(i, 3)) for i in range(3)]

    ids = run(fill)
    env = lmdb.open(str(path), max_dbs=4)  # damage the middle record behind the spool's back
    records = env.open_db(b"records")
    with env.begin(write=True, db=records) as txn:
        txn.put(b"q\x00" + struct.pack(">Q", ids[1]), struct.pack("<I", 3) + b"garbage")
    env.close()

    async def check() -> None:
        async with Spool(path, max_bytes=CAP) as spool:
            assert [rid for rid, _ in await spool.read("q", 3)] == [ids[0]]
            with pytest.raises(SpoolError, match=f"record {ids[1]} of queue 'q' is corrupt"):
                await spool.read("q", 100, after=ids[0])
            with pytest.raises(SpoolError):
                await spool.verify()
            await spool.delete("q", [ids[1]])  # the integrator can drop it (with a counter) and go on
            assert [rid for rid, _ in await spool.read("q", 100, after=ids[0])] == [ids[2]]

    run(check)


def test_writer_failure_fails_callers_instead_of_hanging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        spool = Spool(tmp_path / "spool", max_bytes=CAP)
        await spool.open()
        await spool.append("q", make_block(1, 1))

        def bug(*args: object) -> None:
            raise RuntimeError("injected bug")

        monkeypatch.setattr(Spool, "_commit", bug)
        futures = [spool.append_nowait("q", make_block(i, 1)) for i in range(5)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(r, SpoolError) and "injected bug" in str(r) for r in results)
        with pytest.raises(SpoolError, match="injected bug"):
            spool.append_nowait("q", make_block(1, 1))
        assert "injected bug" in spool.stats()["error"]
        await spool.close()
        monkeypatch.undo()
        async with Spool(tmp_path / "spool", max_bytes=CAP) as again:  # what was committed is intact
            assert again.depth("q") == (1, 1)

    run(body)
