"""Messages not yet safe, in order, bounded, drops counted.

The sampler appends every window and event here. The publisher sends them in order; an event
leaves the spool once the broker acknowledged it (PUBACK), a telemetry window only once a
collector says it is stored in InfluxDB (the `stored` acknowledgement, by sequence number), and
windows that stay unconfirmed are sent again. So a broker or a collector that is away, restarts
or dies costs nothing but spool space. Past the bound the OLDEST message is dropped (the newest
windows matter most to an SRE) and counted.

DiskSpool survives an agent restart (one small file per message, written atomically: write to a
temporary name, fsync, rename); MemorySpool is for the simulator and tests.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Spooled:
    id: int
    topic: str
    payload: bytes
    seq: int | None  # a telemetry window's sequence number: it stays until a collector stored it


class Spool(Protocol):
    dropped: int

    def append(self, topic: str, payload: bytes, seq: int | None = None) -> int: ...

    def ids(self) -> list[int]: ...

    def get(self, item_id: int) -> Spooled | None: ...

    def remove(self, item_id: int) -> None: ...

    def remove_seqs(self, seqs: Iterable[int]) -> list[int]: ...

    def __contains__(self, item_id: int) -> bool: ...

    def __len__(self) -> int: ...


class _Index:
    """Spooled ids in order, with their sequence numbers; what both spools share."""

    def __init__(self, max_messages: int) -> None:
        self._seqs: OrderedDict[int, int | None] = OrderedDict()
        self._by_seq: dict[int, int] = {}
        self._max_messages = max_messages
        self.dropped = 0

    def add(self, item_id: int, seq: int | None) -> list[int]:
        """Index an item; returns the ids pushed out past the bound (oldest first)."""
        self._seqs[item_id] = seq
        if seq is not None:
            self._by_seq[seq] = item_id
        evicted = []
        while len(self._seqs) > self._max_messages:
            evicted.append(next(iter(self._seqs)))
            self.discard(evicted[-1])
            self.dropped += 1
        return evicted

    def discard(self, item_id: int) -> bool:
        if item_id not in self._seqs:
            return False
        seq = self._seqs.pop(item_id)
        if seq is not None:
            self._by_seq.pop(seq, None)
        return True

    def ids_of(self, seqs: Iterable[int]) -> list[int]:
        return [self._by_seq[seq] for seq in seqs if seq in self._by_seq]

    def ids(self) -> list[int]:
        return list(self._seqs)

    def seq(self, item_id: int) -> int | None:
        return self._seqs.get(item_id)

    def __contains__(self, item_id: int) -> bool:
        return item_id in self._seqs

    def __len__(self) -> int:
        return len(self._seqs)


class _IndexedSpool(ABC):
    """What both spools do the same way, through their index."""

    _index: _Index

    @property
    def dropped(self) -> int:
        return self._index.dropped

    def ids(self) -> list[int]:
        return self._index.ids()

    @abstractmethod
    def remove(self, item_id: int) -> None:
        """Forget one message (each spool removes its own storage)."""

    def remove_seqs(self, seqs: Iterable[int]) -> list[int]:
        removed = self._index.ids_of(seqs)
        for item_id in removed:
            self.remove(item_id)
        return removed

    def __contains__(self, item_id: int) -> bool:
        return item_id in self._index

    def __len__(self) -> int:
        return len(self._index)


class MemorySpool(_IndexedSpool):
    def __init__(self, max_messages: int = 100_000) -> None:
        self._index = _Index(max_messages)
        self._items: dict[int, Spooled] = {}
        self._next_id = 0

    def append(self, topic: str, payload: bytes, seq: int | None = None) -> int:
        item_id, self._next_id = self._next_id, self._next_id + 1
        self._items[item_id] = Spooled(item_id, topic, payload, seq)
        for evicted in self._index.add(item_id, seq):
            del self._items[evicted]
        return item_id

    def get(self, item_id: int) -> Spooled | None:
        return self._items.get(item_id)

    def remove(self, item_id: int) -> None:
        if self._index.discard(item_id):
            del self._items[item_id]



_SUFFIX = ".msg"


class DiskSpool(_IndexedSpool):
    """One file per message, named `<id>-<seq or e>.msg` with a zero-padded id so that names sort
    in order. File: 2-byte big-endian topic length, topic (UTF-8), payload."""

    def __init__(self, directory: Path, max_messages: int = 100_000) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        for leftover in self._dir.glob("*.tmp"):  # a crash between write and rename
            leftover.unlink(missing_ok=True)
        self._index = _Index(max_messages)
        for item_id, seq in sorted(_parse_name(p.name) for p in self._dir.glob(f"*{_SUFFIX}") if _parse_name(p.name)):
            self._index.add(item_id, seq)
        ids = self._index.ids()
        self._next_id = ids[-1] + 1 if ids else 0

    def _path(self, item_id: int, seq: int | None) -> Path:
        return self._dir / f"{item_id:020d}-{'e' if seq is None else seq}{_SUFFIX}"

    def append(self, topic: str, payload: bytes, seq: int | None = None) -> int:
        encoded = topic.encode()
        item_id, self._next_id = self._next_id, self._next_id + 1
        path = self._path(item_id, seq)
        temporary = path.with_suffix(".tmp")
        with temporary.open("wb") as file:
            file.write(len(encoded).to_bytes(2, "big") + encoded + payload)
            file.flush()
            os.fsync(file.fileno())
        temporary.rename(path)
        for evicted in self._index.add(item_id, seq):
            self._unlink(evicted)
        return item_id

    def _unlink(self, item_id: int) -> None:
        for path in self._dir.glob(f"{item_id:020d}-*{_SUFFIX}"):
            path.unlink(missing_ok=True)

    def get(self, item_id: int) -> Spooled | None:
        if item_id not in self._index:
            return None
        seq = self._index.seq(item_id)
        try:
            data = self._path(item_id, seq).read_bytes()
        except FileNotFoundError:  # removed by hand: nothing to send
            self._index.discard(item_id)
            return None
        length = int.from_bytes(data[:2], "big")
        return Spooled(item_id, data[2 : 2 + length].decode(), data[2 + length :], seq)

    def remove(self, item_id: int) -> None:
        seq = self._index.seq(item_id)
        if self._index.discard(item_id):
            self._path(item_id, seq).unlink(missing_ok=True)



def _parse_name(name: str) -> tuple[int, int | None] | None:
    stem = name.removesuffix(_SUFFIX)
    item_id, _, seq = stem.partition("-")
    if not item_id.isdigit() or not (seq == "e" or seq.isdigit()):
        return None
    return int(item_id), None if seq == "e" else int(seq)


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
