"""Structured logging: JSON lines with correlation ids, text with extras, the rate limiter."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from logdist.control.logs import JsonFormatter, RateLimitFilter, TextFormatter, configure_logging


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def record(msg: str, *args: object, name: str = "logdist.test", **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_correlation_ids(restore_root: None) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    log = logging.getLogger("logdist.ingest")
    log.warning("closing emitter connection %s", 7, extra={"conn": 7, "peer": "10.0.0.2:5121", "batch": 3})
    log.debug("not shown")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("delivery failed", extra={"analyzer": "a1"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert first["level"] == "WARNING" and first["logger"] == "logdist.ingest"
    assert first["msg"] == "closing emitter connection 7"
    assert (first["conn"], first["peer"], first["batch"]) == (7, "10.0.0.2:5121", 3)
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["analyzer"] == "a1" and "ValueError: boom" in second["exc"]


def test_configure_replaces_its_own_handler(restore_root: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "json", stream=first)
    configure_logging("INFO", "text", stream=second)
    logging.getLogger("logdist.x").info("hello %s", "there", extra={"conn": 3})
    assert first.getvalue() == ""
    assert second.getvalue().rstrip().endswith("INFO logdist.x: hello there [conn=3]")
    with pytest.raises(ValueError):
        configure_logging("INFO", "xml")  # type: ignore[arg-type]


def test_text_formatter_without_extras() -> None:
    assert TextFormatter().format(record("plain %d", 5)).endswith("WARNING logdist.test: plain 5")


def test_non_json_values_are_stringified() -> None:
    line = json.loads(JsonFormatter().format(record("x", peer=("1.2.3.4", 5), obj=object())))
    assert line["peer"] == ["1.2.3.4", 5] and line["obj"].startswith("<object")


def test_rate_limiter_collapses_repeats() -> None:
    summaries: list[logging.LogRecord] = []
    clock = Clock()
    limiter = RateLimitFilter(summaries.append, limit=3, window_s=10.0, clock=clock)
    passed = [limiter.filter(record("analyzer %s down", i)) for i in range(8)]
    assert passed == [True] * 3 + [False] * 5
    assert limiter.filter(record("another template"))  # counted apart
    assert limiter.filter(record("analyzer %s down", 1, name="logdist.other"))  # another logger
    assert summaries == []
    clock.now += 10.0
    assert limiter.filter(record("analyzer %s down", 9))  # new window
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary.getMessage() == "suppressed 5 similar messages"
    assert summary.name == "logdist.test" and summary.levelno == logging.WARNING
    assert summary.suppressed == 5 and summary.template == "analyzer %s down"  # type: ignore[attr-defined]


def test_rate_limiter_summary_lines_and_flush(restore_root: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream, rate_limit=2)
    log = logging.getLogger("logdist.flood")
    for i in range(50):
        log.warning("retrying batch %d", i, extra={"batch": i})
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "_logdist_handler", False))
    limiter = next(f for f in handler.filters if isinstance(f, RateLimitFilter))
    limiter.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["msg"] for line in lines] == [
        "retrying batch 0",
        "retrying batch 1",
        "suppressed 48 similar messages",
    ]
    assert lines[2]["suppressed"] == 48 and lines[2]["logger"] == "logdist.flood"
    assert lines[2]["template"] == "retrying batch %d"
