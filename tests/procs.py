"""Test helpers: run ``logdist`` sub-commands as child processes, wait for their JSON lines, always reap them.

    from tests.procs import ProcessGroup, start_analyzer

    def test_something(tmp_path):
        with ProcessGroup() as procs:
            analyzer = procs.add(start_analyzer(stats_file=tmp_path / "a.json"))
            ... analyzer.port ...
            assert analyzer.terminate() == 0

Every wait has a timeout; a timeout or an early exit raises :class:`ProcError` with the child's stderr tail.
Children run in their own session (a Ctrl-C in the terminal does not hit them) and are stopped by pid only.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT = 20.0


class ProcError(AssertionError):
    """A child did not announce itself in time, exited unexpectedly, or would not stop."""


def logdist_argv(*args: str | os.PathLike[str]) -> list[str]:
    """The command line of ``logdist ARGS`` run with this interpreter."""
    return [sys.executable, "-m", "logdist.cli", *map(str, args)]


class LogdistProcess:
    """A running ``logdist`` child. Its stdout JSON lines are collected in :attr:`events` by a reader thread
    (other stdout lines in :attr:`stdout_lines`); stderr is drained into a bounded tail for error messages.
    """

    def __init__(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        env: dict[str, str] | None = None,
        argv: Sequence[str] | None = None,
    ) -> None:
        self.argv = list(argv) if argv is not None else logdist_argv(*args)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=full_env,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.events: list[dict[str, Any]] = []
        self.stdout_lines: list[str] = []
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=200)
        self.ready: dict[str, Any] = {}
        self._cond = threading.Condition()
        self._stdout_done = False
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- readers -----------------------------------------------------------------------------------------
    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            event = None
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
            with self._cond:
                if isinstance(event, dict):
                    self.events.append(event)
                else:
                    self.stdout_lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._stdout_done = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            self.stderr_tail.append(raw.decode("utf-8", "replace").rstrip("\n"))

    # -- state -------------------------------------------------------------------------------------------
    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def stderr_text(self) -> str:
        return "\n".join(self.stderr_tail)

    def describe(self) -> str:
        return (
            f"`{' '.join(self.argv[2:])}` (pid {self.pid}, exit code {self.returncode})\n"
            f"--- stdout (non-JSON) ---\n" + "\n".join(self.stdout_lines[-20:]) + "\n"
            "--- stderr tail ---\n" + "\n".join(list(self.stderr_tail)[-40:])
        )

    # -- waiting -----------------------------------------------------------------------------------------
    def wait_event(
        self,
        event: str,
        timeout: float = DEFAULT_TIMEOUT,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        start: int = 0,
    ) -> dict[str, Any]:
        """The first JSON line (from index ``start`` on) with ``"event": event`` (and matching ``predicate``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.events[start:]:
                    if item.get("event") == event and (predicate is None or predicate(item)):
                        return item
                if self._stdout_done:
                    self.popen.wait(5)
                    raise ProcError(f"no {event!r} line before the process ended: {self.describe()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProcError(f"no {event!r} line within {timeout} s: {self.describe()}")
                self._cond.wait(remaining)

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Wait for the ``{"event": "ready", ...}`` line and remember it in :attr:`ready`."""
        self.ready = self.wait_event("ready", timeout)
        return self.ready

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` from the ready line's ``listen`` field."""
        host, _, port = str(self.ready["listen"]).rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the process to exit by itself; its exit code."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ProcError(f"still running after {timeout} s: {self.describe()}") from None
        self._join_readers()
        return code

    def _join_readers(self) -> None:
        for thread in self._threads:
            thread.join(5)

    # -- stopping ----------------------------------------------------------------------------------------
    def signal(self, sig: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """SIGTERM, then wait up to ``timeout`` s (SIGKILL and ProcError if it would not stop); the exit code."""
        self.signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ProcError(f"did not stop within {timeout} s of SIGTERM: {self.describe()}") from None
        self._join_readers()
        return code

    def kill(self) -> int:
        """SIGKILL (kill -9) and reap; the exit code (negative: the signal)."""
        self.signal(signal.SIGKILL)
        code = self.popen.wait(10)
        self._join_readers()
        return code

    def stop(self) -> None:
        """Make sure the child is gone: SIGTERM, a short grace, then SIGKILL; never raises."""
        if self.alive:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(5)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> LogdistProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_logdist(
    *args: str | os.PathLike[str],
    ready: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    env: dict[str, str] | None = None,
) -> LogdistProcess:
    """Start ``logdist ARGS``; with ``ready``, wait for its ready line (stopping it if that fails)."""
    proc = LogdistProcess(args, env=env)
    if ready:
        try:
            proc.wait_ready(timeout)
        except BaseException:
            proc.stop()
            raise
    return proc


def start_analyzer(
    *extra: str | os.PathLike[str],
    listen: str = "127.0.0.1:0",
    name: str | None = None,
    stats_file: str | os.PathLike[str] | None = None,
    delay_ms: float | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> LogdistProcess:
    """Start ``logdist analyzer`` and wait until it listens (its port: ``.port``)."""
    args: list[str | os.PathLike[str]] = ["analyzer", "--listen", listen]
    if name is not None:
        args += ["--name", name]
    if stats_file is not None:
        args += ["--stats-file", stats_file]
    if delay_ms is not None:
        args += ["--delay-ms", str(delay_ms)]
    return start_logdist(*args, *extra, timeout=timeout)


def run_logdist(
    *args: str | os.PathLike[str], timeout: float = 60.0, env: dict[str, str] | None = None
) -> tuple[int, LogdistProcess]:
    """Run ``logdist ARGS`` to completion; ``(exit code, process)`` -- its JSON lines are in ``.events``."""
    proc = LogdistProcess(args, env=env)
    try:
        code = proc.wait(timeout)
    finally:
        proc.stop()
    return code, proc


def start_example(script: str, *args: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT) -> LogdistProcess:
    """Start ``examples/SCRIPT ARGS`` with this interpreter and wait for its ready line."""
    proc = LogdistProcess((), argv=[sys.executable, str(ROOT / "examples" / script), *map(str, args)])
    try:
        proc.wait_ready(timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


class ProcessGroup:
    """Owns children started in a test; ``stop_all`` (or leaving the ``with`` block) stops every one."""

    def __init__(self) -> None:
        self.procs: list[LogdistProcess] = []

    def add(self, proc: LogdistProcess) -> LogdistProcess:
        self.procs.append(proc)
        return proc

    def start(self, *args: str | os.PathLike[str], **kwargs: Any) -> LogdistProcess:
        """Like :func:`start_logdist`, but owned by the group."""
        return self.add(start_logdist(*args, **kwargs))

    def analyzer(self, *extra: str | os.PathLike[str], **kwargs: Any) -> LogdistProcess:
        """Like :func:`start_analyzer`, but owned by the group."""
        return self.add(start_analyzer(*extra, **kwargs))

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def wait_until(predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, what: str = "condition") -> Any:
    """Poll ``predicate`` (every 10 ms) until it returns something truthy; ProcError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise ProcError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON content of ``path`` (None when it does not exist yet)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def admin_stats(admin: str) -> dict[str, Any]:
    """The distributor's ``GET /stats`` snapshot from its admin address ``HOST:PORT``."""
    with urllib.request.urlopen(f"http://{admin}/stats", timeout=5) as response:
        return json.load(response)
