"""Durable per-queue FIFOs of :class:`MessageBlock` on LMDB, written by one background thread.

Layout (one LMDB environment under the spool directory):

* database ``records``: key ``queue name (UTF-8) + b"\\0" + big-endian u64 record id``, value
  ``u32 message count (little-endian) + headers + bodies`` (:meth:`MessageBlock.encode`). Keys of one queue are
  contiguous and sorted by id, so a queue is read oldest first with one cursor walk.
* database ``meta``: ``b"version"``, ``b"next_id"`` (u64) and, per non-empty queue, ``b"q\\0" + name`` ->
  ``(records, messages, bytes)`` as three u64. The counters change in the same transaction as the records they
  count, so they survive crashes exactly and opening a spool never scans it.

Threading: every LMDB call (open, put, get, commit, fsync, close) runs in one writer thread. The event loop only
encodes the block (one copy), checks the size cap, creates a future and queues an operation. The writer thread
drains everything queued into ONE write transaction (group commit), commits, syncs per :class:`FsyncPolicy`,
serves the reads queued with it from a fresh read transaction (so reads see only committed records), and then
resolves all the futures of the group with a single ``loop.call_soon_threadsafe``.

Full disk: LMDB runs without ``writemap`` (with it, a full disk is a SIGBUS), so write errors come back from
commit and fail only the operations of that transaction (:class:`SpoolFull` for ENOSPC/EDQUOT/EFBIG, for EIO
when the disk is nearly full, and for a full LMDB map; :class:`SpoolError` otherwise). To keep deletes working
on a full disk (LMDB needs fresh pages even to delete), the spool keeps ``disk_reserve`` to twice that
preallocated (``posix_fallocate``) past the last page in use. When the reserve cannot be renewed, the spool
enters low-space mode: appends are only admitted while they fit in space freed by deletes or leave a quarter of
the reserve untouched, the others fail with :class:`SpoolFull` (without touching the disk), and the mode ends as
soon as a reservation succeeds again. On copy-on-write file systems (btrfs, zfs) preallocation guarantees
nothing; there, a full disk can make deletes fail too (with :class:`SpoolError`, never a crash).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import queue as queue_mod
import shutil
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import lmdb

from logdist.wire.batch import HEADER_SIZE, MessageBlock
from logdist.wire.errors import ProtocolError

__all__ = ["FsyncPolicy", "Spool", "SpoolError", "SpoolFull"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_QUEUE_NAME_BYTES = 400
"""LMDB keys are at most 511 bytes; a key is the name, a NUL and 8 bytes of id."""
GROUP_MAX_BYTES = 64 << 20
"""At most this many appended bytes go into one write transaction (bounds commit latency and dirty memory)."""
DISK_RESERVE = 32 << 20
"""Most bytes kept preallocated past the end of the data by default (``max_bytes / 32``, at least 1 MiB)."""
GROUP_MAX_OPS = 8192
MAP_HEADROOM = 64 << 20

_ID = struct.Struct(">Q")
_COUNT = struct.Struct("<I")
_COUNTERS = struct.Struct("<QQQ")
_MAX_ID = (1 << 64) - 1
_VERSION_KEY = b"version"
_NEXT_ID_KEY = b"next_id"
_QUEUE_KEY = b"q\x00"
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

_APPEND, _DELETE, _READ, _VERIFY, _CLOSE = range(5)


class FsyncPolicy(StrEnum):
    """When an append counts as done.

    ``BATCH``: after the fsync of the group commit that holds it (safe against process crashes and power loss).
    ``INTERVAL``: after the commit; the data file is fsynced at most every ``interval_ms`` later. A process crash
    loses nothing (the commit is in the OS page cache); a power loss can lose what was not fsynced yet and, per
    LMDB's documentation of MDB_NOSYNC, can corrupt the store on file systems that reorder writes.
    ``NEVER``: like INTERVAL, but fsync only at close.
    """

    BATCH = "batch"
    INTERVAL = "interval"
    NEVER = "never"


class SpoolError(Exception):
    """The spool cannot do what was asked: closed, not open, an I/O error, or a corrupt record."""


class SpoolFull(SpoolError):
    """The size cap would be exceeded, or the disk (or the LMDB map) is full."""


class Spool:
    """Durable per-queue FIFO of MessageBlocks on LMDB under a data directory.

    Use it from one event loop (the one running :meth:`open`); it is not thread-safe. Record ids are unique and
    increasing over the whole spool (all queues) and across restarts. ``used_bytes`` counts stored record bytes
    (4 + :attr:`MessageBlock.nbytes` per record) and is what ``max_bytes`` caps; the LMDB file can be larger
    (B-tree pages, free pages) and never shrinks: the LMDB map is ``2 * max_bytes + 64 MiB`` and the file stays
    below that plus ``2 * disk_reserve``. Only one Spool may use a directory at a time (a lock file enforces it).

    ``interval_ms`` is the fsync period of the INTERVAL policy; ``disk_reserve`` the preallocated space that
    keeps deletes possible on a full disk (default ``max_bytes / 32``, 1 to 32 MiB; see the module docstring).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 1 << 30,
        fsync: FsyncPolicy = FsyncPolicy.BATCH,
        interval_ms: float = 50.0,
        disk_reserve: int | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if interval_ms <= 0:
            raise ValueError("interval_ms must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.policy = FsyncPolicy(fsync)
        self.interval_s = interval_ms / 1000.0
        if disk_reserve is None:
            disk_reserve = min(DISK_RESERVE, max_bytes // 32)
        self.disk_reserve = max(disk_reserve, 1 << 20)
        # event-loop side (only touched from the loop thread)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = "new"  # new -> open -> closing -> closed
        self._view: dict[str, tuple[int, int, int]] = {}  # committed (records, messages, bytes) per queue
        self._used = 0  # committed record bytes
        self._reserved = 0  # bytes of appends queued but not yet committed (or failed)
        self._prefixes: dict[str, bytes] = {}
        # shared
        self._ops: queue_mod.SimpleQueue[tuple[Any, ...]] = queue_mod.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._broken: SpoolError | None = None
        self._dead: SpoolError | None = None  # set by the writer thread when it stops after a failure
        self._fsyncs = 0
        self._commits = 0
        self._sync_errors = 0
        # writer-thread side
        self._env: Any = None
        self._records: Any = None
        self._meta: Any = None
        self._lock_fd = -1
        self._next_id = 1
        self._counts: dict[str, tuple[int, int, int]] = {}
        self._total = 0
        self._dirty = False
        self._last_sync = 0.0
        self._space_short = False  # an append failed for lack of space; see _nudge
        self._data_fd = -1
        self._psize = 4096
        self._allocated = 0  # bytes of data.mdb preallocated with posix_fallocate
        self._low_space = False  # the reserve could not be renewed: the disk is (nearly) full
        self._freed = 0  # in low-space mode: bytes deleted minus bytes appended since it began
        self._low_space_reason = ""

    # ------------------------------------------------------------------ event-loop API

    async def open(self) -> None:
        """Open (or create) the store, start the writer thread and recover counters and the id sequence."""
        if self._state != "new":
            raise SpoolError(f"spool {self.path} was already opened")
        self._loop = asyncio.get_running_loop()
        self._state = "open"
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(fut,), name=f"spool:{self.path.name}", daemon=True)
        self._thread.start()
        try:
            await fut
        except BaseException:
            self._state = "closed"
            raise

    async def __aenter__(self) -> Spool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def append_nowait(self, queue: str, block: MessageBlock) -> asyncio.Future[int]:
        """Queue ``block`` for ``queue``; the future resolves to its record id once durable per the policy.

        The block is copied before this returns, so the caller may reuse its buffers at once. Raises
        :class:`SpoolFull` right away if the cap would be exceeded (committed bytes + appends in flight + this
        one). Cancelling the future does not cancel the write.
        """
        self._check_open()
        count = block.count
        if count <= 0:
            raise ValueError("cannot spool an empty block")
        if len(block.headers) != count * HEADER_SIZE:
            raise ValueError(f"block of {count} messages has {len(block.headers)} header bytes")
        size = _COUNT.size + block.nbytes
        over = self._used + self._reserved + size - self.max_bytes
        if over > 0:
            raise SpoolFull(
                f"appending {size} bytes to queue {queue!r} would exceed the spool cap of {self.max_bytes} bytes "
                f"by {over} bytes (stored {self._used}, in flight {self._reserved})"
            )
        prefix = self._prefix(queue)
        value = b"".join((_COUNT.pack(count), block.headers, block.bodies))
        fut: asyncio.Future[int] = self._loop.create_future()  # type: ignore[union-attr]
        self._reserved += size
        self._submit((_APPEND, fut, queue, prefix, value, count))
        return fut

    async def append(self, queue: str, block: MessageBlock) -> int:
        """Store ``block`` at the tail of ``queue``; returns its record id once durable per the policy."""
        return await self.append_nowait(queue, block)

    async def read(self, queue: str, max_messages: int, after: int | None = None) -> list[tuple[int, MessageBlock]]:
        """The oldest records of ``queue`` (ids > ``after`` if given), without removing them.

        At most ``max_messages`` messages in total, but at least one record if there is any. Sees every append
        whose future resolved before the call (and possibly later ones, once committed).
        """
        self._check_open()
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        start = 0 if after is None else after + 1
        if start > _MAX_ID:
            return []
        fut: asyncio.Future[list[tuple[int, MessageBlock]]] = self._loop.create_future()  # type: ignore[union-attr]
        self._submit((_READ, fut, queue, self._prefix(queue), max_messages, max(start, 0)))
        return await fut

    async def delete(self, queue: str, ids: Sequence[int]) -> None:
        """Remove records of ``queue`` (unknown ids are ignored); resolves when durable per the policy."""
        self._check_open()
        prefix = self._prefix(queue)
        try:
            keys = [prefix + _ID.pack(i) for i in ids]
        except struct.error:
            raise ValueError(f"record ids must be integers in [0, 2**64): {ids!r}") from None
        if not keys:
            return
        fut: asyncio.Future[None] = self._loop.create_future()  # type: ignore[union-attr]
        self._submit((_DELETE, fut, queue, keys))
        await fut

    def depth(self, queue: str) -> tuple[int, int]:
        """``(records, messages)`` stored in ``queue`` (committed state)."""
        records, messages, _ = self._view.get(queue, (0, 0, 0))
        return records, messages

    @property
    def used_bytes(self) -> int:
        """Record bytes stored (committed); the quantity ``max_bytes`` caps."""
        return self._used

    def queues(self) -> list[str]:
        """Names of the queues that hold at least one record, sorted."""
        return sorted(self._view)

    @property
    def fsyncs(self) -> int:
        """Number of durable syncs done (BATCH: one per group commit; INTERVAL/NEVER: periodic/at close)."""
        return self._fsyncs

    @property
    def commits(self) -> int:
        """Number of write transactions committed."""
        return self._commits

    def stats(self) -> dict[str, Any]:
        """Counters for /stats."""
        return {
            "path": str(self.path),
            "policy": str(self.policy),
            "max_bytes": self.max_bytes,
            "used_bytes": self._used,
            "in_flight_bytes": self._reserved,
            "queues": {name: {"records": r, "messages": m, "bytes": b} for name, (r, m, b) in self._view.items()},
            "commits": self._commits,
            "fsyncs": self._fsyncs,
            "sync_errors": self._sync_errors,
            "low_space": self._low_space,
            "error": None if self._broken is None else str(self._broken),
        }

    async def verify(self) -> None:
        """Scan every record: check that each decodes and that the stored counters and id sequence match.

        Raises :class:`SpoolError` describing the first mismatch. Costs a full read of the store.
        """
        self._check_open()
        fut: asyncio.Future[None] = self._loop.create_future()  # type: ignore[union-attr]
        self._submit((_VERIFY, fut))
        await fut

    async def close(self) -> None:
        """Finish every queued operation, fsync, close the store and stop the writer thread. Idempotent."""
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        if self._state == "closing" or self._thread is None or not self._thread.is_alive():
            self._state = "closed"
            return
        self._state = "closing"
        fut: asyncio.Future[None] = self._loop.create_future()  # type: ignore[union-attr]
        self._submit((_CLOSE, fut))
        try:
            await fut
        except SpoolError:
            if self._dead is None:  # a writer that died has closed the store already
                raise
        finally:
            self._state = "closed"
            self._thread.join(timeout=5.0)  # the thread's last act was resolving ``fut``

    # ------------------------------------------------------------------ event-loop helpers

    def _check_open(self) -> None:
        if self._state != "open":
            raise SpoolError(f"spool {self.path} is {self._state}, not open")
        if self._broken is not None:
            raise SpoolError(str(self._broken))

    def _prefix(self, queue: str) -> bytes:
        prefix = self._prefixes.get(queue)
        if prefix is None:
            name = queue.encode()
            if not name or b"\x00" in name or len(name) > MAX_QUEUE_NAME_BYTES:
                raise ValueError(f"queue names are 1..{MAX_QUEUE_NAME_BYTES} UTF-8 bytes without NUL: {queue!r}")
            prefix = self._prefixes[queue] = name + b"\x00"
        return prefix

    def _submit(self, op: tuple[Any, ...]) -> None:
        self._ops.put(op)
        dead = self._dead  # the writer sets it before its last drain of the queue: no op can slip through
        if dead is not None and not op[1].done():
            op[1].set_exception(SpoolError(str(dead)))

    def _deliver(
        self,
        results: list[tuple[asyncio.Future[Any], Any]],
        counts: dict[str, tuple[int, int, int]],
        used: int,
        released: int,
    ) -> None:
        """Runs on the loop: publish the committed counters, then resolve the group's futures."""
        self._reserved -= released
        self._used = used
        view = self._view
        for name, counters in counts.items():
            if counters[0]:
                view[name] = counters
            else:
                view.pop(name, None)
        for fut, value in results:
            if fut.done():
                continue
            if isinstance(value, BaseException):
                fut.set_exception(value)
            else:
                fut.set_result(value)

    # ------------------------------------------------------------------ writer thread

    def _post(
        self,
        results: list[tuple[asyncio.Future[Any], Any]],
        counts: dict[str, tuple[int, int, int]] | None = None,
        released: int = 0,
    ) -> None:
        try:
            self._loop.call_soon_threadsafe(self._deliver, results, counts or {}, self._total, released)  # type: ignore[union-attr]
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _run(self, opened: asyncio.Future[None]) -> None:
        try:
            self._open_env()
        except BaseException as exc:
            error = exc if isinstance(exc, SpoolError) else SpoolError(f"cannot open spool {self.path}: {exc}")
            self._close_env()
            self._post([(opened, error)])
            return
        self._post([(opened, None)], dict(self._counts))
        pending: deque[tuple[Any, ...]] = deque()
        group: list[tuple[Any, ...]] = []
        try:
            while True:
                if not pending:
                    timeout = None
                    if self._dirty and self.policy is FsyncPolicy.INTERVAL:
                        timeout = max(0.0, self._last_sync + self.interval_s - time.monotonic())
                    try:
                        pending.append(self._ops.get(timeout=timeout))
                    except queue_mod.Empty:
                        self._sync()
                        continue
                while True:
                    try:
                        pending.append(self._ops.get_nowait())
                    except queue_mod.Empty:
                        break
                group = self._take_group(pending, self._group_budget())
                if self._process(group):
                    return
                group = []
        except BaseException as exc:  # a bug or a fatal LMDB error: fail everything, never hang a caller
            log.exception("spool %s: writer thread failed", self.path)
            error = SpoolError(f"spool {self.path} failed: {exc!r}")
            self._broken = self._dead = error
            failed: list[tuple[asyncio.Future[Any], Any]] = [(op[1], error) for op in (*group, *pending)]
            while True:
                try:
                    failed.append((self._ops.get_nowait()[1], error))
                except queue_mod.Empty:
                    break
            self._close_env()
            self._post(failed, released=0)

    @staticmethod
    def _take_group(pending: deque[tuple[Any, ...]], max_bytes: int) -> list[tuple[Any, ...]]:
        group = [pending.popleft()]
        if group[0][0] == _CLOSE:
            return group
        nbytes = len(group[0][4]) if group[0][0] == _APPEND else 0
        while pending and len(group) < GROUP_MAX_OPS:
            op = pending[0]
            if op[0] == _APPEND:
                nbytes += len(op[4])
                if nbytes > max_bytes:
                    break
            group.append(pending.popleft())
            if op[0] == _CLOSE:
                break
        return group

    def _process(self, group: list[tuple[Any, ...]]) -> bool:
        """Commit the group's writes, sync, answer its reads; True once the spool is closed."""
        writes = [op for op in group if op[0] <= _DELETE]
        results: list[tuple[asyncio.Future[Any], Any]] = []
        counts: dict[str, tuple[int, int, int]] = {}
        released = sum(len(op[4]) for op in writes if op[0] == _APPEND)
        if self._low_space and released:
            self._ensure_reserve()  # the disk may have room again
            if self._low_space:
                writes = self._admit(writes, results)
        if writes:
            try:
                results += self._commit(writes, counts)
            except lmdb.Error as exc:
                if len(writes) == 1:
                    results.append((writes[0][1], self._map_error(exc, writes)))
                else:  # isolate the failing operation(s): retry one transaction per operation
                    log.warning(
                        "spool %s: group commit of %d operations failed (%s); retrying one by one",
                        self.path,
                        len(writes),
                        exc,
                    )
                    for op in writes:
                        try:
                            results += self._commit([op], counts)
                        except lmdb.Error as one:
                            results.append((op[1], self._map_error(one, [op])))
            self._ensure_reserve()
            if self.policy is FsyncPolicy.INTERVAL and time.monotonic() - self._last_sync >= self.interval_s:
                self._sync()
        closing = None
        for op in group:
            kind = op[0]
            if kind == _READ:
                results.append((op[1], self._guard(self._read, *op[2:])))
            elif kind == _VERIFY:
                results.append((op[1], self._guard(self._verify)))
            elif kind == _CLOSE:
                closing = op[1]
        if closing is not None:
            self._sync()
            self._close_env()
            results.append((closing, None))
        self._post(results, counts, released)
        return closing is not None

    def _guard(self, func: Any, *args: Any) -> Any:
        try:
            return func(*args)
        except SpoolError as exc:
            return exc
        except lmdb.Error as exc:
            return SpoolError(f"spool {self.path}: read failed: {exc}")

    def _commit(self, ops: list[tuple[Any, ...]], counts: dict[str, tuple[int, int, int]]) -> list[tuple[Any, Any]]:
        """One write transaction for ``ops``; on success, update the thread's counters and ``counts``."""
        next_id = self._next_id
        changed: dict[str, list[int]] = {}
        results: list[tuple[Any, Any]] = []
        records = self._records
        unpack_count = _COUNT.unpack_from
        wrote = False
        txn = self._env.begin(write=True, buffers=True)
        try:
            for op in ops:
                name = op[2]
                c = changed.get(name)
                if c is None:
                    c = changed[name] = list(self._counts.get(name, (0, 0, 0)))
                if op[0] == _APPEND:
                    value = op[4]
                    txn.put(op[3] + _ID.pack(next_id), value, db=records)
                    c[0] += 1
                    c[1] += op[5]
                    c[2] += len(value)
                    results.append((op[1], next_id))
                    next_id += 1
                    wrote = True
                else:
                    for key in op[3]:
                        value = txn.get(key, db=records)
                        if value is None:
                            continue
                        c[0] -= 1
                        c[1] -= unpack_count(value)[0]
                        c[2] -= len(value)
                        txn.delete(key, db=records)
                        wrote = True
                    results.append((op[1], None))
            if not wrote:  # only unknown ids to delete: nothing to commit or sync
                txn.abort()
                return results
            meta = self._meta
            for name, c in changed.items():
                key = _QUEUE_KEY + name.encode()
                if c[0]:
                    txn.put(key, _COUNTERS.pack(*c), db=meta)
                else:
                    txn.delete(key, db=meta)
            if next_id != self._next_id:
                txn.put(_NEXT_ID_KEY, _ID.pack(next_id), db=meta)
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        self._commits += 1
        if self.policy is FsyncPolicy.BATCH:
            self._fsyncs += 1  # the environment syncs on commit
        else:
            self._dirty = True
        appended = next_id != self._next_id
        self._next_id = next_id
        delta = 0
        for name, c in changed.items():
            delta += c[2] - self._counts.get(name, (0, 0, 0))[2]
            counters = counts[name] = (c[0], c[1], c[2])
            if c[0]:
                self._counts[name] = counters
            else:
                self._counts.pop(name, None)
        self._total += delta
        if self._low_space:
            self._freed -= delta
        if appended:
            self._space_short = False
        elif self._space_short:
            self._nudge()
        return results

    def _nudge(self) -> None:
        """Commit a tiny transaction so that the pages freed by the last one become reusable.

        LMDB reuses the pages freed by transaction T only from transaction T + 2 on. Failed commits do not
        advance the transaction id, so when the store is out of space, records deleted to make room would stay
        unusable until some write succeeded; this write needs only a few pages and makes that progress.
        """
        try:
            with self._env.begin(write=True, db=self._meta) as txn:
                txn.put(_VERSION_KEY, _ID.pack(FORMAT_VERSION))
        except lmdb.Error as exc:
            log.debug("spool %s: nudge commit failed: %s", self.path, exc)
            return
        self._commits += 1
        if self.policy is FsyncPolicy.BATCH:
            self._fsyncs += 1
        else:
            self._dirty = True

    def _slack(self) -> int:
        """Preallocated bytes of data.mdb past the last page LMDB uses."""
        return self._allocated - (self._env.info()["last_pgno"] + 1) * self._psize

    def _ensure_reserve(self) -> None:
        """Keep ``disk_reserve`` to ``2 * disk_reserve`` bytes preallocated past the data; note when we cannot."""
        if self._data_fd < 0 or self._env is None:
            return
        slack = self._slack()
        if slack >= self.disk_reserve:
            return
        target = self._allocated - slack + 2 * self.disk_reserve
        try:
            os.posix_fallocate(self._data_fd, 0, target)
        except OSError as exc:
            if exc.errno not in _DISK_FULL_ERRNOS:  # e.g. EOPNOTSUPP: work without a reserve
                log.warning("spool %s: cannot preallocate (%s); running without a disk reserve", self.path, exc)
                os.close(self._data_fd)
                self._data_fd = -1
                self._low_space = False
                return
            if not self._low_space:
                log.warning(
                    "spool %s: cannot reserve disk space (%s); %d bytes left for deletes, appends limited",
                    self.path,
                    exc,
                    slack,
                )
                self._low_space = True
                self._freed = 0
            self._low_space_reason = exc.strerror or str(exc)
            return
        self._allocated = target
        if self._low_space:
            log.warning("spool %s: disk space reserved again; appends back to normal", self.path)
            self._low_space = False

    def _group_budget(self) -> int:
        """Append bytes allowed in the next transaction: within the reserve, so deletes always find room."""
        if self._data_fd < 0:
            return GROUP_MAX_BYTES
        if self._low_space:
            return max(self.disk_reserve // 16, 1)
        return max(min(GROUP_MAX_BYTES, self._slack() - self.disk_reserve // 4), 1)

    def _admit(self, writes: list[tuple[Any, ...]], results: list[tuple[Any, Any]]) -> list[tuple[Any, ...]]:
        """Low-space mode: keep the appends that fit in space freed by deletes or in the reserve above its floor.

        The last ``disk_reserve / 8`` bytes are never given to appends: they are what deletes need to free space.
        """
        slack = self._slack()
        floor = self.disk_reserve // 4
        admitted: list[tuple[Any, ...]] = []
        for op in writes:
            if op[0] == _APPEND:
                need = len(op[4]) + 4 * self._psize
                if slack - need < floor and not (self._freed >= need and slack - need >= self.disk_reserve // 8):
                    self._space_short = True
                    results.append(
                        (
                            op[1],
                            SpoolFull(
                                f"spool {self.path}: disk full ({self._low_space_reason}); "
                                f"the {slack} bytes left are kept for deletes"
                            ),
                        )
                    )
                    continue
                slack -= need
            admitted.append(op)
        return admitted

    def _map_error(self, exc: lmdb.Error, ops: list[tuple[Any, ...]]) -> SpoolError:
        nbytes = sum(len(op[4]) for op in ops if op[0] == _APPEND)
        if isinstance(exc, lmdb.MapFullError):
            self._space_short = True
            return SpoolFull(f"spool {self.path}: the LMDB map is full ({exc}); delete records to make room")
        code = getattr(exc, "code", 0)
        if nbytes:
            self._space_short = True  # possibly: a short write (EIO) is how a full disk usually shows up
        if code in _DISK_FULL_ERRNOS or (code == errno.EIO and self._disk_nearly_full(nbytes)):
            return SpoolFull(f"spool {self.path}: disk full while writing {nbytes} bytes ({exc})")
        if isinstance(exc, lmdb.PanicError):
            self._broken = SpoolError(f"spool {self.path}: LMDB panic ({exc}); reopen the spool")
            return self._broken
        return SpoolError(f"spool {self.path}: write failed ({exc})")

    def _disk_nearly_full(self, nbytes: int) -> bool:
        try:
            return shutil.disk_usage(self.path).free < nbytes + (16 << 20)
        except OSError:
            return False

    def _sync(self) -> None:
        if not self._dirty or self._env is None:
            return
        try:
            self._env.sync(True)
        except lmdb.Error as exc:  # the commits were acknowledged already; keep them dirty and retry later
            self._sync_errors += 1
            log.error("spool %s: fsync failed: %s", self.path, exc)
            self._last_sync = time.monotonic()
            return
        self._fsyncs += 1
        self._dirty = False
        self._last_sync = time.monotonic()

    def _read(self, name: str, prefix: bytes, max_messages: int, start: int) -> list[tuple[int, MessageBlock]]:
        out: list[tuple[int, MessageBlock]] = []
        total = 0
        plen = len(prefix)
        unpack_count = _COUNT.unpack_from
        with self._env.begin(db=self._records, buffers=True) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix + _ID.pack(start)):
                return out
            for key, value in cursor:
                if key[:plen] != prefix:
                    break
                count = unpack_count(value)[0]
                if out and total + count > max_messages:
                    break
                record_id = _ID.unpack_from(key, plen)[0]
                data = bytes(value)
                try:
                    block = MessageBlock.from_buffer(count, memoryview(data)[_COUNT.size :])
                except ProtocolError as exc:
                    raise SpoolError(
                        f"spool {self.path}: record {record_id} of queue {name!r} is corrupt: {exc}"
                    ) from None
                out.append((record_id, block))
                total += count
                if total >= max_messages:
                    break
        return out

    def _scan(self, decode: bool) -> tuple[dict[str, tuple[int, int, int]], int]:
        """Counters and the highest id, computed from the records themselves."""
        counts: dict[str, list[int]] = {}
        max_id = 0
        with self._env.begin(db=self._records, buffers=True) as txn:
            for key, value in txn.cursor():
                if len(key) < 10 or key[-9] != 0:
                    raise SpoolError(f"spool {self.path}: malformed key {bytes(key)!r}")
                name = bytes(key[:-9]).decode()
                record_id = _ID.unpack_from(key, len(key) - 8)[0]
                count = _COUNT.unpack_from(value)[0]
                if decode:
                    try:
                        MessageBlock.from_buffer(count, bytes(value[_COUNT.size :]))
                    except ProtocolError as exc:
                        raise SpoolError(
                            f"spool {self.path}: record {record_id} of {name!r} is corrupt: {exc}"
                        ) from None
                c = counts.setdefault(name, [0, 0, 0])
                c[0] += 1
                c[1] += count
                c[2] += len(value)
                max_id = max(max_id, record_id)
        return {name: (c[0], c[1], c[2]) for name, c in counts.items()}, max_id

    def _verify(self) -> None:
        counts, max_id = self._scan(decode=True)
        if counts != self._counts:
            raise SpoolError(f"spool {self.path}: stored counters {self._counts} != records {counts}")
        if max_id >= self._next_id:
            raise SpoolError(f"spool {self.path}: record id {max_id} >= next id {self._next_id}")
        with self._env.begin(db=self._meta, buffers=True) as txn:
            stored = {
                bytes(key[len(_QUEUE_KEY) :]).decode(): _COUNTERS.unpack(value)
                for key, value in txn.cursor()
                if key[: len(_QUEUE_KEY)] == _QUEUE_KEY
            }
        if stored != counts:
            raise SpoolError(f"spool {self.path}: meta counters {stored} != records {counts}")

    def _open_env(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "spool.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolError(f"spool {self.path} is in use by another Spool (lock held)") from None
        self._lock_fd = fd
        # writemap stays off: with it, a full disk turns into SIGBUS instead of an error from commit.
        self._env = lmdb.open(
            str(self.path),
            map_size=2 * self.max_bytes + MAP_HEADROOM,
            subdir=True,
            max_dbs=4,
            sync=self.policy is FsyncPolicy.BATCH,
            metasync=True,
            writemap=False,
            meminit=False,
            readahead=False,
            lock=True,
            mode=0o644,
        )
        self._env.reader_check()  # drop reader slots of dead processes: they would pin freed pages
        self._records = self._env.open_db(b"records")
        self._meta = self._env.open_db(b"meta")
        with self._env.begin(db=self._meta) as txn:
            version = txn.get(_VERSION_KEY)
            if version is not None:
                if _ID.unpack(version)[0] != FORMAT_VERSION:
                    raise SpoolError(f"spool {self.path} has format {_ID.unpack(version)[0]}, not {FORMAT_VERSION}")
                self._next_id = _ID.unpack(txn.get(_NEXT_ID_KEY, _ID.pack(1)))[0]
                for key, value in txn.cursor():
                    if key.startswith(_QUEUE_KEY):
                        self._counts[key[len(_QUEUE_KEY) :].decode()] = _COUNTERS.unpack(value)
        if version is None:  # a new store (or one without counters): derive them from the records
            self._counts, max_id = self._scan(decode=False)
            self._next_id = max_id + 1
            with self._env.begin(write=True, db=self._meta) as txn:
                txn.put(_VERSION_KEY, _ID.pack(FORMAT_VERSION))
                txn.put(_NEXT_ID_KEY, _ID.pack(self._next_id))
                for name, counters in self._counts.items():
                    txn.put(_QUEUE_KEY + name.encode(), _COUNTERS.pack(*counters))
        self._psize = self._env.stat()["psize"]
        self._data_fd = os.open(self.path / "data.mdb", os.O_RDWR | os.O_CLOEXEC)
        self._allocated = 0  # unknown (holes?): the first reservation covers the whole file
        self._ensure_reserve()
        self._total = sum(c[2] for c in self._counts.values())
        self._last_sync = time.monotonic()

    def _close_env(self) -> None:
        if self._env is not None:
            try:
                self._env.close()
            except lmdb.Error as exc:
                log.error("spool %s: close failed: %s", self.path, exc)
            self._env = None
        if self._data_fd >= 0:
            os.close(self._data_fd)
            self._data_fd = -1
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
