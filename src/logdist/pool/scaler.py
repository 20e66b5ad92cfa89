"""The pool's scaling decision: a pure state machine fed with backlog readings (no I/O, no clock of its own)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    """When to add or remove one analyzer.

    Scale up after ``up_readings`` consecutive readings above ``up_backlog``; scale down after ``down_readings``
    consecutive readings below ``down_backlog``; never within ``cooldown_s`` of the last change, never outside
    ``[min_size, max_size]``. ``down_backlog < up_backlog`` gives the hysteresis band.
    """

    min_size: int = 1
    max_size: int = 8
    up_backlog: float = 20_000
    down_backlog: float = 1_000
    up_readings: int = 2
    down_readings: int = 5
    cooldown_s: float = 5.0

    def validate(self) -> None:
        """Raise ValueError when the policy cannot work."""
        if not 0 <= self.min_size <= self.max_size or self.max_size < 1:
            raise ValueError(f"need 0 <= min ({self.min_size}) <= max ({self.max_size}) and max >= 1")
        if not 0 <= self.down_backlog < self.up_backlog:
            raise ValueError(f"need 0 <= scale-down backlog ({self.down_backlog}) < scale-up ({self.up_backlog})")
        if self.up_readings < 1 or self.down_readings < 1:
            raise ValueError("readings must be at least 1")
        if self.cooldown_s < 0:
            raise ValueError("cooldown must not be negative")


@dataclass(frozen=True, slots=True)
class Decision:
    """``delta``: +1 (add one), -1 (remove one) or 0; ``reason``: why, for the scale event line."""

    delta: int
    reason: str = ""


class Scaler:
    """Turns backlog readings over time into +1/-1/0 decisions.

    Each :meth:`observe` assumes the previous decision was applied (``size`` follows it); :meth:`resync` sets
    the real size when it differs (a failed change, a child that died).
    """

    def __init__(self, policy: ScalePolicy, size: int) -> None:
        policy.validate()
        self.policy = policy
        self.size = size
        self.above = 0  # consecutive readings above up_backlog
        self.below = 0  # consecutive readings below down_backlog
        self.last_change: float | None = None

    def resync(self, size: int) -> None:
        """The pool really has ``size`` analyzers."""
        self.size = size

    def observe(self, backlog: float, now: float) -> Decision:
        """One reading of the backlog at time ``now`` (seconds, monotonic) -> the decision."""
        p = self.policy
        self.above = self.above + 1 if backlog > p.up_backlog else 0
        self.below = self.below + 1 if backlog < p.down_backlog else 0
        if self.size < p.min_size:
            return self._change(+1, now, f"below minimum {p.min_size}")
        if self.size > p.max_size:
            return self._change(-1, now, f"above maximum {p.max_size}")
        if self.last_change is not None and now - self.last_change < p.cooldown_s:
            return Decision(0)
        if self.above >= p.up_readings and self.size < p.max_size:
            return self._change(+1, now, f"backlog {backlog:g} > {p.up_backlog:g} for {self.above} readings")
        if self.below >= p.down_readings and self.size > p.min_size:
            return self._change(-1, now, f"backlog {backlog:g} < {p.down_backlog:g} for {self.below} readings")
        return Decision(0)

    def _change(self, delta: int, now: float, reason: str) -> Decision:
        self.size += delta
        self.last_change = now
        self.above = self.below = 0
        return Decision(delta, reason)
