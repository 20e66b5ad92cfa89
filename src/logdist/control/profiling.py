"""On-demand CPU profiling of the running event loop: ``GET /debug/profile?seconds=N`` on the admin API.

cProfile hooks the thread that enables it, so a profile started from an admin handler (which runs on the event
loop thread) records every callback, protocol method and coroutine step the loop runs meanwhile. One profile at
a time per process: a second request gets 409 while one runs.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import time

from aiohttp import web

DEFAULT_SECONDS = 5.0
MAX_SECONDS = 60.0
DEFAULT_TOP = 30
MAX_TOP = 500

_active = False  # process-wide: cProfile hooks conflict across profilers on one thread


class ProfileBusy(RuntimeError):
    """A profile is already running."""


def profile_active() -> bool:
    """Whether a profile is running now."""
    return _active


async def profile_loop(seconds: float, top: int = DEFAULT_TOP) -> str:
    """Profile the event loop thread for ``seconds``; a pstats report of the ``top`` functions, by cumulative and by
    internal time. Raises :class:`ProfileBusy` when a profile is already running."""
    global _active
    if _active:
        raise ProfileBusy("a profile is already running")
    _active = True
    profiler = cProfile.Profile()
    started = time.monotonic()
    try:
        try:
            profiler.enable()
        except ValueError as exc:  # another profiler (not ours) holds the hook
            raise ProfileBusy(str(exc)) from None
        try:
            await asyncio.sleep(seconds)
        finally:
            profiler.disable()
    finally:
        _active = False
    return format_report(profiler, time.monotonic() - started, top)


def format_report(profiler: cProfile.Profile, elapsed_s: float, top: int) -> str:
    """Text report: a header, then the ``top`` entries sorted by cumulative time, then by internal time."""
    out = io.StringIO()
    out.write(f"# logdist event loop profile: {elapsed_s:.2f} s of wall time, top {top} functions\n")
    out.write("# only Python code run by the loop thread counts: time idle in the (C) event loop does not\n")
    stats = pstats.Stats(profiler, stream=out)
    if not stats.stats:  # type: ignore[attr-defined]
        out.write("# no function calls recorded\n")
        return out.getvalue()
    out.write("\n## by cumulative time\n")
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(top)
    out.write("\n## by internal time\n")
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
    return out.getvalue()


def _number(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a number, got {text!r}\n") from None
    if not low < value <= high:
        raise web.HTTPBadRequest(text=f"{name} must be > {low:g} and <= {high:g}, got {text}\n")
    return value


async def handle_profile(request: web.Request) -> web.Response:
    """``GET /debug/profile?seconds=N&top=K``: profile the loop for N s (default 5, max 60); text/plain pstats."""
    seconds = _number(request, "seconds", DEFAULT_SECONDS, 0.0, MAX_SECONDS)
    top = int(_number(request, "top", DEFAULT_TOP, 0.0, MAX_TOP))
    try:
        report = await profile_loop(seconds, top)
    except ProfileBusy as exc:
        return web.Response(status=409, text=f"profile refused: {exc}\n", content_type="text/plain")
    return web.Response(text=report, content_type="text/plain")
