"""Messages waiting for the broker's acknowledgement, in order, bounded, drops counted.

The sampler appends every window and event here; the publisher sends the oldest, and removes it
only once the broker acknowledged it (PUBACK). So a broker that is away costs nothing but spool
space: the agent keeps sampling and delivers everything, in order, when the broker returns.
Past the bound the OLDEST message is dropped (the newest windows matter most to an SRE) and
counted.

DiskSpool survives an agent restart (one small file per message, written atomically: write to a
temporary name, fsync, rename); MemorySpool is for the simulator and tests.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Spooled:
    id: int
    topic: str
    payload: bytes


class Spool(Protocol):
    dropped: int

    def append(self, topic: str, payload: bytes) -> int: ...

    def peek(self) -> Spooled | None: ...

    def ack(self, item: Spooled) -> None: ...

    def __len__(self) -> int: ...


class MemorySpool:
    def __init__(self, max_messages: int = 100_000) -> None:
        self._items: deque[Spooled] = deque()
        self._next_id = 0
        self._max_messages = max_messages
        self.dropped = 0

    def append(self, topic: str, payload: bytes) -> int:
        item_id, self._next_id = self._next_id, self._next_id + 1
        self._items.append(Spooled(item_id, topic, payload))
        while len(self._items) > self._max_messages:
            self._items.popleft()
            self.dropped += 1
        return item_id

    def peek(self) -> Spooled | None:
        return self._items[0] if self._items else None

    def ack(self, item: Spooled) -> None:
        if self._items and self._items[0].id == item.id:
            self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)


_SUFFIX = ".msg"


class DiskSpool:
    """One file per message, named by a zero-padded counter so that names sort in order.
    File: 2-byte big-endian topic length, topic (UTF-8), payload."""

    def __init__(self, directory: Path, max_messages: int = 100_000) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._max_messages = max_messages
        self._ids: deque[int] = deque(sorted(int(p.stem) for p in self._dir.glob(f"*{_SUFFIX}") if p.stem.isdigit()))
        self._next_id = (self._ids[-1] + 1) if self._ids else 0
        self.dropped = 0
        for leftover in self._dir.glob("*.tmp"):  # a crash between write and rename
            leftover.unlink(missing_ok=True)

    def _path(self, item_id: int) -> Path:
        return self._dir / f"{item_id:020d}{_SUFFIX}"

    def append(self, topic: str, payload: bytes) -> int:
        encoded = topic.encode()
        item_id, self._next_id = self._next_id, self._next_id + 1
        path = self._path(item_id)
        temporary = path.with_suffix(".tmp")
        with temporary.open("wb") as file:
            file.write(len(encoded).to_bytes(2, "big") + encoded + payload)
            file.flush()
            os.fsync(file.fileno())
        temporary.rename(path)
        self._ids.append(item_id)
        while len(self._ids) > self._max_messages:
            self._path(self._ids.popleft()).unlink(missing_ok=True)
            self.dropped += 1
        return item_id

    def peek(self) -> Spooled | None:
        while self._ids:
            item_id = self._ids[0]
            try:
                data = self._path(item_id).read_bytes()
            except FileNotFoundError:  # removed by hand: nothing to send
                self._ids.popleft()
                continue
            length = int.from_bytes(data[:2], "big")
            return Spooled(item_id, data[2 : 2 + length].decode(), data[2 + length :])
        return None

    def ack(self, item: Spooled) -> None:
        if self._ids and self._ids[0] == item.id:
            self._ids.popleft()
            self._path(item.id).unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._ids)


class SeqFile:
    """The next sequence number, kept across restarts so that a node's numbers only go up."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def load(self) -> int:
        try:
            return int(self._path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            raise ValueError(f"{self._path} does not hold a sequence number; remove it to start at 0") from None

    def save(self, next_seq: int) -> None:
        temporary = self._path.with_suffix(".tmp")
        temporary.write_text(str(next_seq))
        temporary.rename(self._path)
