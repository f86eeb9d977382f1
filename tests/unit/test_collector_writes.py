"""Batches in flight at once are committed in order: a message's lines count as stored only
when every line before them is stored too (what the collector's acknowledgements rely on)."""

import asyncio

from gpufleet.collector.influx import WriteFailed
from gpufleet.collector.service import Collector, CollectorOptions
from gpufleet.mqtt import BrokerAddress
from gpufleet.retry import Backoff


class ScriptedInflux:
    """An InfluxWriter stand-in: each write takes the next answer (None: stored)."""

    def __init__(self, answers: list[WriteFailed | None]) -> None:
        self.answers = answers
        self.stored: list[str] = []

    def write(self, lines: list[str]) -> None:
        answer = self.answers.pop(0)
        if answer is not None:
            raise answer
        self.stored += lines


def collector_with(writer: ScriptedInflux, lines: int) -> Collector:
    options = CollectorOptions(client_id="t", batch_lines=2, parallel_writes=2, max_backoff_s=0.01)
    collector = Collector(BrokerAddress.parse("mqtt://127.0.0.1:1"), writer, options)  # type: ignore[arg-type]
    collector.buffer.extend([f"m v={i}i" for i in range(lines)])
    return collector


def test_a_later_batch_stored_before_an_earlier_failed_one_is_not_committed():
    writer = ScriptedInflux([WriteFailed("busy", retryable=True), None])
    collector = collector_with(writer, 4)
    assert not asyncio.run(collector._write_batches(Backoff(0.01)))
    assert collector.buffer.removed == 0 and len(collector.buffer) == 4  # all four will be written again
    writer.answers = [None, None]
    assert asyncio.run(collector._write_batches(Backoff(0.01)))
    assert collector.buffer.removed == 4 and collector.points_written == 4  # counted once, when committed


def test_an_earlier_batch_stored_and_a_later_failed_commits_the_earlier_only():
    writer = ScriptedInflux([None, WriteFailed("down", retryable=True)])
    collector = collector_with(writer, 4)
    assert not asyncio.run(collector._write_batches(Backoff(0.01)))
    assert collector.buffer.removed == 2 and collector.buffer.peek(2) == ["m v=2i", "m v=3i"]


def test_a_refused_batch_is_counted_and_dropped_and_the_next_goes_on():
    writer = ScriptedInflux([WriteFailed("bad line", retryable=False), None])
    collector = collector_with(writer, 4)
    assert asyncio.run(collector._write_batches(Backoff(0.01)))
    assert (collector.lines_refused, collector.points_written, collector.buffer.removed) == (2, 2, 4)
