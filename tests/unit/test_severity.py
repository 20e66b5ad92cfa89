"""The severity mapping (logdist.wire.severity): syslog severities, level names and numbers onto 0-255."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logdist.wire.severity import (
    INFO,
    LEVELS,
    NOTICE,
    SYSLOG_SEVERITY_NAMES,
    TRACE,
    level_to_severity,
    syslog_to_severity,
)

BUCKETS = {
    "emergency": 0, "alert": 32, "critical": 64, "error": 96, "warning": 128, "notice": 160, "info": 192,
    "debug": 224,
}  # fmt: skip


def test_syslog_severities_map_to_buckets_of_32() -> None:
    assert [syslog_to_severity(s) for s in range(8)] == [0, 32, 64, 96, 128, 160, 192, 224]
    for bad in (-1, 8, 255):
        with pytest.raises(ValueError, match="outside 0-7"):
            syslog_to_severity(bad)


def test_level_names_and_aliases() -> None:
    for index, name in enumerate(SYSLOG_SEVERITY_NAMES):
        assert level_to_severity(name) == syslog_to_severity(index) == BUCKETS[name]
    aliases = {"emerg": 0, "crit": 64, "fatal": 64, "err": 96, "warn": 128, "information": 192, "trace": 240}
    for name, value in aliases.items():
        assert level_to_severity(name) == value
    assert (INFO, NOTICE, TRACE) == (192, 160, 240)


@given(st.sampled_from(sorted(LEVELS)), st.lists(st.booleans(), min_size=16, max_size=16))
def test_names_are_case_insensitive(name: str, upper: list[bool]) -> None:
    mixed = "".join(c.upper() if up else c for c, up in zip(name, upper, strict=False))
    assert level_to_severity(mixed) == LEVELS[name]


@given(st.integers(0, 255))
def test_numbers_pass_through(number: int) -> None:
    assert level_to_severity(number) == number
    assert level_to_severity(str(number)) == number


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=256)))
def test_numbers_out_of_range_are_refused(number: int) -> None:
    with pytest.raises(ValueError, match="outside 0-255"):
        level_to_severity(number)


def test_unknown_names_and_types_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match=r"unknown level 'verbose'; use a number 0-255 or one of .*debug"):
        level_to_severity("verbose")
    for bad in ("", " info", "²", "1e3", "-1"):
        with pytest.raises(ValueError):
            level_to_severity(bad)
    with pytest.raises(ValueError, match="name or a number"):
        level_to_severity(True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name or a number"):
        level_to_severity(1.5)  # type: ignore[arg-type]


@given(st.text(max_size=20))
def test_any_text_maps_into_range_or_raises_value_error(text: str) -> None:
    try:
        value = level_to_severity(text)
    except ValueError as exc:
        assert str(exc)
    else:
        assert 0 <= value <= 255
