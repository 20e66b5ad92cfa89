"""Logging setup: one JSON object per line (or classic text), with a rate limiter against log floods.

JSON lines carry ``ts`` (UTC, ISO 8601, ms), ``level``, ``logger`` and ``msg``, then every ``extra`` field given
at the call site -- the correlation ids: ``log.warning("...", extra={"conn": 7, "peer": "10.0.0.2:5121"})``.

:class:`RateLimitFilter` lets through at most ``limit`` records of one (logger, message template) per window;
the rest are counted, and when the window is over one line ``suppressed K similar messages`` replaces them.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_MARK = "_logdist_handler"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields of ``record`` (private ones, starting with ``_``, left out)."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")}


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(extra_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` with the extra fields appended."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = extra_fields(record)
        if not extras:
            return text
        head, sep, tail = text.partition("\n")  # keep tracebacks after the fields
        fields = " ".join(f"{key}={value}" for key, value in extras.items())
        return f"{head} [{fields}]{sep}{tail}"


class _Window:
    __slots__ = ("level", "passed", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.passed = 0
        self.suppressed = 0
        self.level = logging.NOTSET


class RateLimitFilter(logging.Filter):
    """At most ``limit`` records per (logger, message template) per ``window_s``; a summary line for the rest.

    ``emit`` receives the summary records (a handler's ``handle``); they are emitted when the next record of any
    kind arrives after the window ends, or on :meth:`flush`.
    """

    def __init__(
        self,
        emit: Callable[[logging.LogRecord], object],
        limit: int = 20,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.emit = emit
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._next_sweep = 0.0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_logdist_summary", False):
            return True
        ended: list[tuple[tuple[str, str], _Window]] = []
        with self._lock:
            now = self.clock()
            if now >= self._next_sweep:
                self._next_sweep = now + min(1.0, self.window_s)
                ended = [(k, w) for k, w in self._windows.items() if now - w.start >= self.window_s]
                for key, _ in ended:
                    del self._windows[key]
            key = (record.name, str(record.msg))
            window = self._windows.get(key)
            if window is None or now - window.start >= self.window_s:
                if window is not None:
                    ended.append((key, window))
                window = self._windows[key] = _Window(now)
            allowed = window.passed < self.limit
            if allowed:
                window.passed += 1
            else:
                window.suppressed += 1
                window.level = max(window.level, record.levelno)
        for key, old in ended:
            self._summarise(key, old)
        return allowed

    def flush(self) -> None:
        """Emit the summaries of every window with suppressed records, ended or not."""
        with self._lock:
            windows = list(self._windows.items())
            self._windows.clear()
        for key, window in windows:
            self._summarise(key, window)

    def _summarise(self, key: tuple[str, str], window: _Window) -> None:
        if not window.suppressed:
            return
        name, template = key
        summary = logging.LogRecord(
            name, window.level, __file__, 0, "suppressed %d similar messages", (window.suppressed,), None
        )
        summary.suppressed = window.suppressed
        summary.template = template
        summary.window_s = self.window_s
        summary._logdist_summary = True
        self.emit(summary)


def configure_logging(
    level: str = "INFO",
    fmt: Literal["json", "text"] = "text",
    *,
    stream: TextIO | None = None,
    rate_limit: int = 20,
    window_s: float = 10.0,
) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) as JSON lines or text, rate limited.

    Replaces the handler an earlier call installed (not handlers others added); returns the new handler.
    ``rate_limit`` <= 0 turns the limiter off.
    """
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be 'json' or 'text', not {fmt!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        for flt in old.filters:
            if isinstance(flt, RateLimitFilter):
                atexit.unregister(flt.flush)
                flt.flush()
        old.close()
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    setattr(handler, _MARK, True)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if rate_limit > 0:
        limiter = RateLimitFilter(handler.handle, rate_limit, window_s)
        handler.addFilter(limiter)
        atexit.register(limiter.flush)
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    return handler
