"""Lines waiting for InfluxDB: a bounded FIFO that drops the oldest only past its bound, and counts it.

Pure and single-threaded: the collector's event loop appends and commits; the write thread only
ever gets a copied batch.
"""

from __future__ import annotations

from collections import deque
from itertools import islice


class WriteBuffer:
    def __init__(self, max_lines: int) -> None:
        if max_lines <= 0:
            raise ValueError("max_lines must be positive")
        self._lines: deque[str] = deque()
        self._max_lines = max_lines
        self.dropped = 0  # lines pushed out past the bound: data lost, reported as collector telemetry
        self._dropped_since_peek = 0  # head lines that vanished while a peeked batch was in flight
        self.appended = 0  # lines ever appended: a message's lines end at this position
        self.removed = 0  # lines ever written or dropped: messages ending at or before it are done

    def __len__(self) -> int:
        return len(self._lines)

    def extend(self, lines: list[str]) -> int:
        """Append; returns the position after the last line (compare with `removed`)."""
        self._lines.extend(lines)
        self.appended += len(lines)
        overflow = len(self._lines) - self._max_lines
        if overflow > 0:
            for _ in range(overflow):
                self._lines.popleft()
            self.dropped += overflow
            self.removed += overflow
            self._dropped_since_peek += overflow
        return self.appended

    def peek(self, count: int) -> list[str]:
        """The oldest `count` lines, left in place until `commit` says they are written."""
        self._dropped_since_peek = 0
        return list(islice(self._lines, count))

    def commit(self, count: int) -> None:
        """Remove the `count` lines of the last peek (minus any the bound already pushed out)."""
        remaining = min(max(0, count - self._dropped_since_peek), len(self._lines))
        self._dropped_since_peek = 0
        for _ in range(remaining):
            self._lines.popleft()
        self.removed += remaining
