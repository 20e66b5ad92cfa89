"""The spool under SIGKILL and a full disk, with real child processes.

A child appends blocks with the BATCH policy (and deletes a few) and prints every acknowledgement as soon as it
arrives; the test kills it at varying points and checks, on reopening, that nothing acknowledged was lost, that
nothing confirmed deleted came back, that every record left decodes to exactly what was written, and that the
id sequence keeps increasing.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from logdist.spool import FsyncPolicy, Spool, SpoolError
from logdist.wire.batch import HEADER_DTYPE, MessageBlock

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
QUEUES = ("q0", "q1", "q2")
CAP = 256 << 20  # far above what the tests store; keeps the preallocated disk reserve at 8 MiB


def make_block(i: int) -> MessageBlock:
    """Block number ``i``: its size and every byte depend on ``i``; ``stream`` holds ``i``."""
    count = 1 + (i * 37) % 900
    array = np.zeros(count, dtype=HEADER_DTYPE)
    array["stream"] = i
    array["seq"] = np.arange(count)
    array["ts"] = i
    lengths = 20 + (np.arange(count) + i) % 180
    array["length"] = lengths
    bodies = np.repeat(((np.arange(count) * 7 + i) % 251).astype(np.uint8), lengths).tobytes()
    return MessageBlock.from_buffer(count, array.tobytes() + bodies)


async def child_main(path: str, first: int) -> None:
    """Append forever (until killed); print ``A id i`` per ack, ``X id`` before and ``D id`` after a delete."""
    out = sys.stdout
    async with Spool(path, max_bytes=CAP, fsync=FsyncPolicy.BATCH) as spool:
        out.write("ready\n")
        out.flush()
        slots = asyncio.Semaphore(12)
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int) -> None:
            try:
                rid = await spool.append(QUEUES[i % 3], make_block(i))
                out.write(f"A {rid} {i}\n")
                out.flush()
            finally:
                slots.release()

        for i in range(first, first + 1_000_000):
            await slots.acquire()
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if i % 5 == 0:
                queue = QUEUES[i % 3]
                oldest = await spool.read(queue, 1)
                if oldest:
                    rid = oldest[0][0]
                    out.write(f"X {rid}\n")
                    out.flush()
                    await spool.delete(queue, [rid])
                    out.write(f"D {rid}\n")
                    out.flush()


def child_disk_full(path: str, limit: int) -> None:
    """Append until the file size limit stops the writes; report what happened as one JSON line."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG / short writes instead of being killed

    async def main() -> dict[str, object]:
        report: dict[str, object] = {}
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        async with Spool(path, max_bytes=1 << 30, fsync=FsyncPolicy.BATCH, disk_reserve=2 << 20) as spool:
            acked: list[int] = []
            try:
                for i in range(10_000):
                    acked.append(await spool.append("q", make_block(i)))
            except SpoolError as exc:
                report["error"] = type(exc).__name__
                report["message"] = str(exc)
            report["acked"] = acked
            results = await asyncio.gather(
                *(spool.append("q", make_block(i)) for i in range(4)), return_exceptions=True
            )
            report["burst"] = [type(r).__name__ if isinstance(r, BaseException) else "ok" for r in results]
            await spool.delete("q", acked[: len(acked) // 2])
            after: list[str] = []
            for i in range(3):
                try:
                    after.append(str(await spool.append("q", make_block(i))))
                except SpoolError as exc:
                    after.append(type(exc).__name__)
            report["after_delete"] = after
            report["depth"] = list(spool.depth("q"))
        return report

    print(json.dumps(asyncio.run(asyncio.wait_for(main(), 60))), flush=True)


@dataclass
class Log:
    """What children printed, over all rounds."""

    acked: dict[int, int] = field(default_factory=dict)  # record id -> block number
    delete_intents: set[int] = field(default_factory=set)
    deleted: set[int] = field(default_factory=set)
    rounds: list[set[int]] = field(default_factory=list)  # ids acked per round

    def parse(self, lines: list[str]) -> None:
        ids: set[int] = set()
        for line in lines:
            kind, *rest = line.split()
            if kind == "A":
                rid, i = map(int, rest)
                self.acked[rid] = i
                ids.add(rid)
            elif kind == "X":
                self.delete_intents.add(int(rest[0]))
            elif kind == "D":
                self.deleted.add(int(rest[0]))
        self.rounds.append(ids)


def spawn(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def run_and_kill(path: Path, first: int, kill_after_acks: int, timeout: float = 60.0) -> list[str]:
    """Start a child, SIGKILL it once it has acknowledged ``kill_after_acks`` appends; its complete stdout lines."""
    code = (
        "import asyncio; from tests.integration.test_spool_crash import child_main; "
        f"asyncio.run(child_main({str(path)!r}, {first}))"
    )
    proc = spawn(code)
    assert proc.stdout is not None and proc.stderr is not None
    buffer = b""
    acks = 0
    deadline = time.monotonic() + timeout
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            killed = False
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"child did not reach {kill_after_acks} acks in {timeout} s")
                if not selector.select(remaining):
                    continue
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                acks += chunk.count(b"\nA ") + chunk.startswith(b"A ")
                buffer += chunk
                if not killed and (acks >= kill_after_acks or (kill_after_acks == 0 and b"ready\n" in buffer)):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = True
        returncode = proc.wait(timeout=10)
        if not killed:
            raise AssertionError(f"child exited with {returncode} before the kill: {proc.stderr.read()[-2000:]!r}")
        assert returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    text = buffer.decode()
    lines = text.split("\n")[:-1]  # a line cut by the kill is not an acknowledgement
    assert lines and lines[0] == "ready", text[:200]
    return lines[1:]


async def check_store(path: Path, log: Log) -> dict[int, int]:
    """Reopen the store and check it against what was acknowledged; returns record id -> block number."""
    present: dict[int, int] = {}
    async with Spool(path, max_bytes=CAP) as spool:
        await spool.verify()  # every record decodes, counters and the id sequence match the records
        for queue in QUEUES:
            after = None
            records = 0
            while batch := await spool.read(queue, 50_000, after=after):
                for rid, block in batch:
                    i = int(block.array["stream"][0])
                    expected = make_block(i)
                    assert bytes(block.headers) == bytes(expected.headers), rid
                    assert bytes(block.bodies) == bytes(expected.bodies), rid
                    assert QUEUES[i % 3] == queue
                    assert rid not in log.acked or log.acked[rid] == i
                    present[rid] = i
                records += len(batch)
                after = batch[-1][0]
            assert spool.depth(queue)[0] == records
    lost = set(log.acked) - log.delete_intents - set(present)
    assert not lost, f"acknowledged records lost: {sorted(lost)[:20]}"
    resurrected = log.deleted & set(present)
    assert not resurrected, f"deleted records came back: {sorted(resurrected)[:20]}"
    return present


def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    log = Log()
    first = 0
    highest = 0  # highest id ever seen (acked or found on disk)
    for kill_after in (0, 1, 7, 40, 150, 3, 400):
        lines = run_and_kill(path, first, kill_after)
        log.parse(lines)
        new_ids = log.rounds[-1]
        if new_ids:
            assert min(new_ids) > highest, "record ids must keep increasing across restarts"
        assert len(new_ids) >= kill_after
        present = asyncio.run(asyncio.wait_for(check_store(path, log), 60))
        highest = max([highest, *present, *log.acked])
        first = max([first, *log.acked.values(), *present.values()]) + 1
    assert len(log.acked) > 500 and log.deleted


def test_disk_full_surfaces_as_error_and_spool_recovers(tmp_path: Path) -> None:
    """Writes that hit the file size limit (a stand-in for a full disk) fail with SpoolError; nothing crashes."""
    path = tmp_path / "spool"
    code = f"from tests.integration.test_spool_crash import child_disk_full; child_disk_full({str(path)!r}, {8 << 20})"
    proc = spawn(code)
    try:
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    assert report["error"] == "SpoolFull" and "disk full" in report["message"], report
    acked: list[int] = report["acked"]
    assert len(acked) > 10
    assert all(kind in ("SpoolError", "SpoolFull", "ok") for kind in report["burst"])
    assert all(v.isdigit() for v in report["after_delete"]), report["after_delete"]  # freed space is reused

    async def check() -> None:
        async with Spool(path, max_bytes=CAP) as spool:
            await spool.verify()
            records = await spool.read("q", 10**9)
            ids = [rid for rid, _ in records]
            assert set(acked[len(acked) // 2 :]) <= set(ids)
            assert not set(acked[: len(acked) // 2]) & set(ids)
            assert list(spool.depth("q")) == report["depth"]
            await spool.append("q", make_block(1))  # without the limit, writes work again

    asyncio.run(asyncio.wait_for(check(), 60))
