"""Circuit breaker per analyzer: closed -> open (ejected) -> half-open (probing) -> closed.

Pure state machine: the caller passes the time and reports outcomes. Opens on ``consecutive`` failures in a
row or when the failure rate over the last ``window`` outcomes reaches ``rate`` (with at least
``min_samples`` outcomes). While open the analyzer gets no traffic; the ejection lasts ``base_ejection_s``
times the number of ejections so far (capped at ``max_ejection_s``), so a flapping analyzer stays out longer
each time. Then it is half-open: a little probe traffic flows, and ``probes`` successes close it again while
any failure reopens it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    """Where a circuit breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    """When to open, for how long, and how to close again."""

    consecutive: int = 5
    rate: float = 0.5
    window: int = 20
    min_samples: int = 10
    base_ejection_s: float = 1.0
    max_ejection_s: float = 60.0
    probes: int = 2


class CircuitBreaker:
    """One analyzer's breaker."""

    def __init__(self, policy: BreakerPolicy | None = None) -> None:
        self.policy = policy or BreakerPolicy()
        self.state = BreakerState.CLOSED
        self.ejections = 0
        self.opened_at = 0.0
        self._consecutive = 0
        self._outcomes: deque[bool] = deque(maxlen=self.policy.window)
        self._probe_successes = 0
        self.last_reason: str | None = None

    @property
    def ejection_s(self) -> float:
        """How long the current (or next) ejection lasts."""
        return min(self.policy.max_ejection_s, self.policy.base_ejection_s * max(1, self.ejections))

    def allows(self, now: float) -> bool:
        """Whether the analyzer may get traffic now (moves open -> half-open once the ejection is over)."""
        if self.state == BreakerState.OPEN and now - self.opened_at >= self.ejection_s:
            self.state = BreakerState.HALF_OPEN
            self._probe_successes = 0
        return self.state != BreakerState.OPEN

    def success(self) -> None:
        """A batch was acknowledged."""
        self._consecutive = 0
        self._outcomes.append(True)
        if self.state == BreakerState.HALF_OPEN:
            self._probe_successes += 1
            if self._probe_successes >= self.policy.probes:
                self.state = BreakerState.CLOSED
                self._outcomes.clear()

    def failure(self, now: float, reason: str) -> bool:
        """A batch or the connection failed; returns True when this opened the breaker."""
        self.last_reason = reason
        self._consecutive += 1
        self._outcomes.append(False)
        if self.state == BreakerState.OPEN:
            return False
        policy = self.policy
        failed = self._outcomes.count(False)
        too_many = self._consecutive >= policy.consecutive
        too_often = len(self._outcomes) >= policy.min_samples and failed / len(self._outcomes) >= policy.rate
        if self.state == BreakerState.HALF_OPEN or too_many or too_often:
            self.state = BreakerState.OPEN
            self.ejections += 1
            self.opened_at = now
            self._consecutive = 0
            return True
        return False


def ejection_budget(total: int, max_fraction: float) -> int:
    """Panic threshold: how many of ``total`` analyzers may be ejected at once (never all of them)."""
    return min(total - 1, int(total * max_fraction)) if total > 0 else 0
