"""Jittered exponential backoff for reconnects and retries."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, each drawn from [(1 - jitter) * d, d]."""

    def __init__(self, initial: float, maximum: float, jitter: float = 0.5, rng: random.Random | None = None) -> None:
        if initial < 0 or maximum < initial or not 0 <= jitter <= 1:
            raise ValueError("backoff needs 0 <= initial <= maximum and 0 <= jitter <= 1")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._current = initial
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt; later calls grow it."""
        ceiling = self._current
        self._current = min(self.maximum, max(self._current * 2, self.initial))
        self.attempts += 1
        return ceiling * (1 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """Start over after a success."""
        self._current = self.initial
        self.attempts = 0
