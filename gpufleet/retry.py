"""Backoff between retries of a service that went away (broker, database)."""

from __future__ import annotations


class Backoff:
    """0.5 s, 1 s, 2 s ... up to max_s; back to 0.5 s after a success."""

    def __init__(self, max_s: float) -> None:
        self._max_s = max_s
        self._next_s = 0.5

    def reset(self) -> None:
        self._next_s = 0.5

    def next(self) -> float:
        delay, self._next_s = self._next_s, min(self._max_s, self._next_s * 2)
        return delay
