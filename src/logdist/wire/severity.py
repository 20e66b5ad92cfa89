"""Severity mapping: syslog severities, level names and numbers onto logdist's 0-255 (0 = most urgent).

Syslog severity ``s`` (0 emergency .. 7 debug) maps to ``s * 32``; level names map to the same buckets,
``trace`` (below debug) to 240; numbers 0-255 pass through unchanged.
"""

from __future__ import annotations

SYSLOG_SEVERITY_NAMES = ("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug")
TRACE = 240
INFO = 6 * 32
NOTICE = 5 * 32

LEVELS: dict[str, int] = {
    "emergency": 0,
    "emerg": 0,
    "panic": 0,
    "alert": 32,
    "critical": 64,
    "crit": 64,
    "fatal": 64,
    "error": 96,
    "err": 96,
    "warning": 128,
    "warn": 128,
    "notice": 160,
    "info": 192,
    "information": 192,
    "informational": 192,
    "debug": 224,
    "trace": TRACE,
}
_CASED = {**LEVELS, **{name.upper(): value for name, value in LEVELS.items()}}  # fast path: no .lower()


def syslog_to_severity(syslog_severity: int) -> int:
    """Syslog severity 0-7 -> logdist severity (``* 32``)."""
    if not 0 <= syslog_severity <= 7:
        raise ValueError(f"syslog severity {syslog_severity} is outside 0-7")
    return syslog_severity * 32


def level_to_severity(value: str | int) -> int:
    """A level name (any case), a number 0-255 or a decimal string of one -> logdist severity 0-255."""
    if isinstance(value, str):
        found = _CASED.get(value)
        if found is not None:
            return found
        found = LEVELS.get(value.lower())
        if found is not None:
            return found
        if value.isascii() and value.isdigit():
            number = int(value)
            if number <= 255:
                return number
            raise ValueError(f"level {value!r} is outside 0-255")
        raise ValueError(f"unknown level {value!r}; use a number 0-255 or one of {', '.join(LEVELS)}")
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 255:
            return value
        raise ValueError(f"level {value} is outside 0-255")
    raise ValueError(f"level must be a name or a number 0-255, got {type(value).__name__}")
