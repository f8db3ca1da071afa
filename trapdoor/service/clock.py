"""Clocks are passed in: services take a ``Callable[[], float]`` of UNIX seconds.

Production passes :func:`time.time`; tests pass a :class:`ManualClock` and move time
forward explicitly (token expiry, round deadlines, challenge freshness).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Clock", "ManualClock"]

Clock = Callable[[], float]


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
