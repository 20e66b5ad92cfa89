"""Run and autoscale a pool of local analyzer processes behind a distributor.

Starts ``--min`` analyzers from ``--command`` (``{name}`` becomes pool-1, pool-2, ...), learns each one's port
from its ready line, registers it through the distributor's admin API, then every ``--interval`` reads
``/stats``: backlog = queued + in_flight (+ lag) summed over the pool's analyzers. Sustained backlog above
``--scale-up-backlog`` adds one analyzer (up to ``--max``); sustained backlog below ``--scale-down-backlog``
drains, removes and stops the newest one (down to ``--min``). One JSON line per change:
{"event": "scale", "to": N, "reason": ...}. SIGINT/SIGTERM: every pool analyzer is drained and removed from the
distributor, the children are stopped, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from logdist.pool.scaler import ScalePolicy, Scaler
from logdist.runtime import announce, parse_hostport, run

log = logging.getLogger("logdist.pool")
_PR_SET_PDEATHSIG = 1


class PoolError(RuntimeError):
    """A child did not start or the distributor refused a change."""


@dataclass
class Member:
    """One analyzer process of the pool."""

    name: str
    proc: asyncio.subprocess.Process
    address: str = ""
    reader: asyncio.Task[None] | None = field(default=None, repr=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``logdist pool``."""
    parser.add_argument("--admin", required=True, metavar="HOST:PORT", help="the distributor's admin API address")
    parser.add_argument("--token", default=None, help="admin API bearer token")
    parser.add_argument("--min", type=int, default=1, dest="min_size", help="fewest analyzers (default 1)")
    parser.add_argument("--max", type=int, default=8, dest="max_size", help="most analyzers (default 8)")
    parser.add_argument(
        "--command",
        required=True,
        help='analyzer command line template, {name} is replaced, e.g. "logdist analyzer --listen 127.0.0.1:0 '
        '--name {name}"; it must print {"event": "ready", "listen": "HOST:PORT"}',
    )
    parser.add_argument("--scale-up-backlog", type=float, default=20_000, help="add above this backlog (20000)")
    parser.add_argument("--scale-down-backlog", type=float, default=1_000, help="remove below this backlog (1000)")
    parser.add_argument("--scale-up-readings", type=int, default=2, help="consecutive readings to add (2)")
    parser.add_argument("--scale-down-readings", type=int, default=5, help="consecutive readings to remove (5)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between readings (default 1)")
    parser.add_argument("--cooldown", type=float, default=5.0, help="seconds between two changes (default 5)")
    parser.add_argument("--weight", type=float, default=1.0, help="weight of each pool analyzer (default 1)")
    parser.add_argument("--kind", default="native", help="analyzer kind for the admin API (default native)")
    parser.add_argument("--ready-timeout", type=float, default=20.0, help="seconds to wait for a ready line (20)")
    parser.add_argument("--log-level", default="INFO", help="stderr log level (default INFO)")


def backlog_of(stats: dict[str, Any], names: set[str]) -> int:
    """queued + in_flight (+ lag when reported) summed over the analyzers named in ``names``."""
    total = 0
    for analyzer in stats.get("analyzers", []):
        if analyzer.get("name") in names:
            total += int(analyzer.get("queued", 0)) + int(analyzer.get("in_flight", 0)) + int(analyzer.get("lag", 0))
    return total


class Pool:
    """The children and their registration with the distributor."""

    def __init__(self, args: argparse.Namespace, session: aiohttp.ClientSession) -> None:
        self.args = args
        self.session = session
        self.base = f"http://{args.admin}"
        self.headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
        self.members: list[Member] = []

    # -- admin API ---------------------------------------------------------------------------------------
    async def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        async with self.session.request(
            method, self.base + path, json=body, headers=self.headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def stats(self) -> dict[str, Any]:
        status, body = await self.call("GET", "/stats")
        if status != 200:
            raise PoolError(f"GET /stats: HTTP {status} {body}")
        return body

    async def register(self, member: Member) -> None:
        body = {"name": member.name, "address": member.address, "weight": self.args.weight, "kind": self.args.kind}
        status, reply = await self.call("POST", "/v1/analyzers", body)
        if status == 409:  # left over from an earlier run: replace it
            await self.unregister(member.name)
            status, reply = await self.call("POST", "/v1/analyzers", body)
        if status != 201:
            raise PoolError(f"registering {member.name}: HTTP {status} {reply}")

    async def unregister(self, name: str) -> None:
        """Drain and remove ``name`` from the distributor (404: already gone)."""
        status, reply = await self.call("DELETE", f"/v1/analyzers/{name}?drain=true", timeout=120.0)
        if status not in (200, 404):
            raise PoolError(f"removing {name}: HTTP {status} {reply}")

    # -- children ----------------------------------------------------------------------------------------
    def next_name(self) -> str:
        used = {m.name for m in self.members}
        return next(f"pool-{i}" for i in range(1, len(used) + 2) if f"pool-{i}" not in used)

    async def spawn(self, name: str) -> Member:
        """Start one analyzer and wait for its ready line (its address)."""
        argv = [word.replace("{name}", name) for word in shlex.split(self.args.command)]
        if argv and argv[0] == "logdist":  # the same installation as this process
            argv = [sys.executable, "-m", "logdist.cli", *argv[1:]]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        member = Member(name, proc)
        try:
            member.address = await asyncio.wait_for(self._ready_line(proc), self.args.ready_timeout)
        except BaseException:
            await stop_process(proc)
            raise
        member.reader = asyncio.create_task(_discard(proc.stdout))
        return member

    @staticmethod
    async def _ready_line(proc: asyncio.subprocess.Process) -> str:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == "ready" and event.get("listen"):
                    return str(event["listen"])
        raise PoolError(f"analyzer exited with code {await proc.wait()} before its ready line")

    async def grow(self) -> Member:
        """Start, then register one more analyzer."""
        member = await self.spawn(self.next_name())
        try:
            await self.register(member)
        except BaseException:
            await self._stop(member)
            raise
        self.members.append(member)
        return member

    async def shrink(self, member: Member | None = None) -> Member:
        """Drain and remove the newest (or the given) analyzer, then stop its process."""
        member = member or self.members[-1]
        await self.unregister(member.name)
        self.members.remove(member)
        await self._stop(member)
        return member

    async def reap_dead(self) -> list[Member]:
        """Members whose process exited by itself: removed from the distributor and the pool."""
        dead = [m for m in self.members if m.proc.returncode is not None]
        for member in dead:
            log.warning("%s exited with code %s", member.name, member.proc.returncode)
            with contextlib.suppress(PoolError, aiohttp.ClientError, TimeoutError):
                await self.unregister(member.name)
            self.members.remove(member)
            await self._stop(member)
        return dead

    async def _stop(self, member: Member) -> None:
        await stop_process(member.proc)
        if member.reader is not None:
            member.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await member.reader

    async def close(self) -> None:
        """Drain and remove every member (newest first), then stop them all."""
        for member in reversed(list(self.members)):
            try:
                await self.unregister(member.name)
            except (TimeoutError, PoolError, aiohttp.ClientError) as exc:
                log.error("could not remove %s from the distributor: %s", member.name, exc)
        await asyncio.gather(*(self._stop(m) for m in self.members))
        self.members.clear()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the pool dies without stopping it (Linux; else nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def _discard(stream: asyncio.StreamReader | None) -> None:
    """Keep reading a child's stdout so that it never blocks on a full pipe."""
    if stream is not None:
        while await stream.read(65536):
            pass


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 10.0) -> int:
    """SIGTERM, wait up to ``grace`` s, then SIGKILL; always reaped. The exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _main(args: argparse.Namespace, stop: asyncio.Event) -> int:
    policy = ScalePolicy(
        min_size=args.min_size,
        max_size=args.max_size,
        up_backlog=args.scale_up_backlog,
        down_backlog=args.scale_down_backlog,
        up_readings=args.scale_up_readings,
        down_readings=args.scale_down_readings,
        cooldown_s=args.cooldown,
    )
    async with aiohttp.ClientSession() as session:
        pool = Pool(args, session)
        try:
            return await _operate(pool, policy, args, stop)
        except (TimeoutError, PoolError, aiohttp.ClientError, OSError) as exc:
            log.error("%s", exc)
            return 1
        finally:
            await asyncio.shield(pool.close())


async def _operate(pool: Pool, policy: ScalePolicy, args: argparse.Namespace, stop: asyncio.Event) -> int:
    while len(pool.members) < policy.min_size and not stop.is_set():
        member = await pool.grow()
        log.info("started %s on %s", member.name, member.address)
    if stop.is_set():
        return 0
    announce("ready", admin=args.admin, size=len(pool.members), analyzers=[m.name for m in pool.members])
    scaler = Scaler(policy, len(pool.members))
    while not stop.is_set():
        await _sleep_or_stop(stop, args.interval)
        if stop.is_set():
            break
        if await pool.reap_dead():
            scaler.resync(len(pool.members))
        try:
            backlog = backlog_of(await pool.stats(), {m.name for m in pool.members})
        except (TimeoutError, PoolError, aiohttp.ClientError, ValueError) as exc:
            log.warning("no reading: %s", exc)
            continue
        decision = scaler.observe(backlog, time.monotonic())
        if not decision.delta:
            continue
        try:
            member = await (pool.grow() if decision.delta > 0 else pool.shrink())
        except (TimeoutError, PoolError, aiohttp.ClientError, OSError) as exc:
            log.error("scaling by %+d failed: %s", decision.delta, exc)
            scaler.resync(len(pool.members))
            continue
        announce(
            "scale",
            to=len(pool.members),
            delta=decision.delta,
            analyzer=member.name,
            backlog=backlog,
            reason=decision.reason,
        )
    return 0


def main(args: argparse.Namespace) -> int:
    """Entry point of ``logdist pool``."""
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s pool %(message)s")
    try:
        parse_hostport(args.admin)
        ScalePolicy(
            args.min_size, args.max_size, args.scale_up_backlog, args.scale_down_backlog,
            args.scale_up_readings, args.scale_down_readings, args.cooldown,
        ).validate()  # fmt: skip
        if not shlex.split(args.command):
            raise ValueError("--command is empty")
    except ValueError as exc:
        print(f"logdist pool: {exc}", file=sys.stderr)
        return 2
    return run(lambda stop: _main(args, stop))
