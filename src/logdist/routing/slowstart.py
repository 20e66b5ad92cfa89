"""Slow start: ramp a recovered analyzer's weight up instead of flooding it at once."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SlowStart:
    """Ramp for a recovered analyzer: its weight grows linearly from `floor` to full over `window_s`."""

    window_s: float = 5.0
    floor: float = 0.05

    def __post_init__(self) -> None:
        if not math.isfinite(self.window_s) or self.window_s < 0:
            raise ValueError(f"SlowStart window_s must be finite and >= 0, got {self.window_s!r}")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"SlowStart floor must be within [0, 1], got {self.floor!r}")

    def factor(self, elapsed_s: float) -> float:
        """Weight multiplier ``elapsed_s`` seconds after recovery: `floor` at 0, 1.0 from `window_s` on."""
        if self.window_s == 0 or elapsed_s >= self.window_s:
            return 1.0
        if not elapsed_s > 0:  # also catches NaN
            return self.floor
        return self.floor + (1.0 - self.floor) * (elapsed_s / self.window_s)
