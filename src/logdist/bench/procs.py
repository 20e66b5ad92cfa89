"""Run logdist roles as child processes: start, await the ready line, sample /proc, stop, always reap."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")


class ProcError(RuntimeError):
    """A child did not start, did not announce itself, or exited unexpectedly."""


@dataclass(frozen=True, slots=True)
class Sample:
    """Resource use of one process: CPU seconds (user + system), resident and peak resident MiB."""

    cpu_s: float
    rss_mb: float
    hwm_mb: float


def read_sample(pid: int) -> Sample | None:
    """CPU and memory of ``pid`` from /proc; memory is 0 for a zombie; None once it is reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # fields after "pid (comm) "; utime/stime are 14/15
    cpu_s = (int(fields[11]) + int(fields[12])) / _TICKS
    mem = {"VmRSS": 0.0, "VmHWM": 0.0}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in mem:
            mem[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return Sample(cpu_s, mem["VmRSS"], mem["VmHWM"])


def http_json(url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class Child:
    """One ``logdist`` sub-command running as a child process.

    Its stdout is read by a thread: JSON lines become :attr:`events` (and are also queued for
    :meth:`wait_event`), other lines are ignored; stderr goes to a log file under ``log_dir``.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        module: str = "logdist.cli",
    ) -> None:
        self.name = name
        self.argv = [sys.executable, "-m", module, *argv]
        self.log_path = log_dir / f"{name}.stderr.log"
        self.events: list[dict[str, Any]] = []
        self.ready: dict[str, Any] = {}
        self.peak = Sample(0.0, 0.0, 0.0)  # largest values seen by sample()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env
            )
        self._reader = threading.Thread(target=self._read_stdout, name=f"stdout-{name}", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, name: str, argv: Sequence[str], log_dir: Path, ready_timeout: float = 20.0, **kwargs: Any) -> Child:
        """Start ``logdist ARGV`` and wait for its ``{"event": "ready"}`` line; kill it if none comes."""
        child = cls(name, argv, log_dir, **kwargs)
        try:
            child.ready = child.wait_event("ready", ready_timeout)
        except BaseException:
            child.kill()
            raise
        return child

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        with self.popen.stdout:
            for raw in self.popen.stdout:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    self.events.append(event)
                    self._queue.put(event)
        self._queue.put(None)  # end of output

    def wait_event(self, event: str, timeout: float) -> dict[str, Any]:
        """The next stdout JSON line whose ``event`` is ``event``; ProcError on timeout or end of output."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=max(remaining, 0.0)) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                raise ProcError(f"{self.name}: no {event!r} line within {timeout:g} s{self.stderr_note()}") from None
            if item is None:
                self._queue.put(None)  # keep end-of-output visible to later callers
                code = self.popen.wait()
                raise ProcError(f"{self.name}: exited with {code} before {event!r}{self.stderr_note()}")
            if item.get("event") == event:
                return item

    def last_event(self, event: str) -> dict[str, Any] | None:
        """The latest stdout JSON line with this ``event`` seen so far."""
        return next((e for e in reversed(self.events) if e.get("event") == event), None)

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stderr_note(self) -> str:
        tail = self.stderr_tail()
        return f"; stderr ({self.log_path}):\n{tail}" if tail else ""

    def sample(self) -> Sample | None:
        """Current CPU/RSS of the child; also raises :attr:`peak`."""
        current = read_sample(self.pid) if self.popen.returncode is None else None
        if current is not None:
            self.peak = Sample(
                max(self.peak.cpu_s, current.cpu_s),
                max(self.peak.rss_mb, current.rss_mb),
                max(self.peak.hwm_mb, current.hwm_mb),
            )
        return current

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float | None) -> int | None:
        """Wait for exit; take a last CPU sample from the zombie, then reap. None if still running."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        if not self._await_exit(timeout):
            return None
        self.sample()  # a zombie still reports its CPU time
        code = self.popen.wait()
        self._reader.join(timeout=5.0)  # stdout is complete once the reader reaches EOF
        return code

    def _await_exit(self, timeout: float | None) -> bool:
        """Block until the child exits, without reaping it (a pidfd poll), or until ``timeout``."""
        try:
            fd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd: fall back to reaping wait
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(None if timeout is None else max(int(timeout * 1000), 0)))
        finally:
            os.close(fd)

    def signal(self, signum: int) -> None:
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; always reaps. Returns the exit code."""
        self.signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            print(f"{self.name}: still running {timeout:g} s after SIGTERM; sending SIGKILL", file=sys.stderr)
            return self.kill()
        return code

    def kill(self) -> int:
        """SIGKILL and reap."""
        self.signal(signal.SIGKILL)
        code = self.wait(None)
        assert code is not None
        return code


class Children:
    """Children stopped in reverse start order when the ``with`` block ends, however it ends."""

    def __init__(self) -> None:
        self.items: list[Child] = []

    def add(self, child: Child) -> Child:
        self.items.append(child)
        return child

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        for child in reversed(self.items):
            if child.returncode is None:
                with contextlib.suppress(Exception):
                    child.stop(timeout=5.0)
