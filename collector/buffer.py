"""Lines waiting for InfluxDB: a bounded FIFO that drops the oldest only past its bound, and counts it.

Every line has a position: the n-th line ever appended is at position n. Writes in flight name
the lines they carry by position, so they stay right while newer lines arrive and while the
bound pushes old ones out. Pure and single-threaded: the collector's event loop appends and
removes; write threads only ever get a copied batch.
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
        # Lines pushed out past the bound before a write confirmed them: reported as collector
        # telemetry. Some of them may still reach InfluxDB in a write already under way.
        self.dropped = 0
        self.appended = 0  # lines ever appended: a message's lines end at this position
        self.removed = 0  # lines ever written or dropped: the position of the oldest line still here

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
        return self.appended

    def lines_from(self, position: int, count: int) -> tuple[int, list[str]]:
        """Up to `count` lines from `position` on, left in place until `remove_until` says they
        are written; and the position of the first. Lines the bound already pushed out are
        skipped: then the batch starts at the oldest line still here."""
        start = max(position, self.removed)
        offset = start - self.removed
        return start, list(islice(self._lines, offset, offset + count))

    def remove_until(self, position: int) -> None:
        """The lines before `position` are written: remove them (those the bound pushed out are gone already)."""
        written = min(position - self.removed, len(self._lines))
        for _ in range(written):
            self._lines.popleft()
        self.removed += max(0, written)
