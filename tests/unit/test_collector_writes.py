"""The collector's sliding window of writes: the next batch starts as soon as one is written, yet
batches are committed in order, so a message's lines count as stored only when every line before
them is stored too (what the collector's acknowledgements rely on)."""

import asyncio
import threading

from gpufleet.collector.influx import WriteFailed
from gpufleet.collector.service import Collector, CollectorOptions
from gpufleet.mqtt import BrokerAddress
from gpufleet.retry import Backoff

WAIT_S = 5.0  # bound on any wait below; a hang fails the test instead


class ScriptedInflux:
    """An InfluxWriter stand-in, answering by a batch's first line so that the order in which the
    worker threads happen to run cannot change the script: each write of a batch takes the next
    answer for it (None: stored; a threading.Event: stored once it is set). Unscripted: stored."""

    def __init__(self, answers: dict[str, list[WriteFailed | threading.Event | None]] | None = None) -> None:
        self.answers = answers or {}
        self.stored: list[str] = []
        self.writes: list[str] = []  # first line of each batch, in the order writes were made
        self._lock = threading.Lock()

    def write(self, lines: list[str]) -> None:
        with self._lock:
            self.writes.append(lines[0])
            script = self.answers.get(lines[0])
            answer = script.pop(0) if script else None
        if isinstance(answer, threading.Event):
            assert answer.wait(WAIT_S), "the write it waits for never came"
        elif answer is not None:
            raise answer
        with self._lock:
            self.stored += lines


def line(i: int) -> str:
    return f"m v={i}i"


def collector_with(writer: ScriptedInflux, lines: int, parallel_writes: int = 2) -> Collector:
    options = CollectorOptions(client_id="t", batch_lines=2, parallel_writes=parallel_writes, max_backoff_s=0.01)
    collector = Collector(BrokerAddress.parse("mqtt://127.0.0.1:1"), writer, options)  # type: ignore[arg-type]
    collector.buffer.extend([line(i) for i in range(lines)])
    return collector


def write_out(collector: Collector) -> bool:
    return asyncio.run(asyncio.wait_for(collector._write_out(Backoff(0.01)), WAIT_S))


def test_a_later_batch_stored_before_an_earlier_failed_one_is_not_committed():
    writer = ScriptedInflux({line(0): [WriteFailed("busy", retryable=True)]})
    collector = collector_with(writer, 4)
    assert not write_out(collector)
    assert collector.buffer.removed == 0 and len(collector.buffer) == 4  # all four will be written again
    assert collector.points_written == 0 and collector.write_retries == 1
    assert write_out(collector)
    assert collector.buffer.removed == 4 and collector.points_written == 4  # counted once, when committed


def test_an_earlier_batch_stored_and_a_later_failed_commits_the_earlier_only():
    writer = ScriptedInflux({line(2): [WriteFailed("down", retryable=True)]})
    collector = collector_with(writer, 4)
    assert not write_out(collector)
    assert collector.buffer.removed == 2 and collector.buffer.lines_from(0, 2) == (2, [line(2), line(3)])


def test_a_refused_batch_is_counted_and_dropped_and_the_next_goes_on():
    writer = ScriptedInflux({line(0): [WriteFailed("bad line", retryable=False)]})
    collector = collector_with(writer, 4)
    assert write_out(collector)
    assert (collector.lines_refused, collector.points_written, collector.buffer.removed) == (2, 2, 4)


def test_the_next_batch_starts_when_one_is_written_not_when_both_are():
    """Batch 1 (lines 2-3) is held until batch 2 (lines 4-5) is stored. With two writes at a time
    that can only happen if batch 2 starts while batch 1 is still under way, as soon as batch 0 is
    written: a window that waited for both of 0 and 1 would never get there (the bounded wait
    fails it)."""
    batch_2_stored = threading.Event()
    writer = ScriptedInflux({line(2): [batch_2_stored]})
    original_write = writer.write

    def write(lines: list[str]) -> None:
        original_write(lines)
        if lines[0] == line(4):
            batch_2_stored.set()

    writer.write = write  # type: ignore[method-assign]
    collector = collector_with(writer, 6)
    assert write_out(collector)
    assert writer.stored == [line(0), line(1), line(4), line(5), line(2), line(3)]
    assert (collector.buffer.removed, collector.points_written, len(collector.buffer)) == (6, 6, 0)


def test_lines_that_arrive_while_writing_go_out_in_the_same_round():
    writer = ScriptedInflux()
    collector = collector_with(writer, 2, parallel_writes=1)
    original_write = writer.write
    loop_calls: list[int] = []

    def write(lines: list[str]) -> None:
        original_write(lines)
        if not loop_calls:  # the event loop receives more while the first batch is written
            loop_calls.append(1)
            loop.call_soon_threadsafe(collector.buffer.extend, [line(2), line(3), line(4)])

    writer.write = write  # type: ignore[method-assign]

    async def run() -> bool:
        nonlocal loop
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(collector._write_out(Backoff(0.01)), WAIT_S)

    loop: asyncio.AbstractEventLoop
    assert asyncio.run(run())
    assert writer.stored == [line(i) for i in range(5)]
    assert writer.writes == [line(0), line(2), line(4)]  # in batches of two; the last one short
    assert collector.flush_progress == 3  # one step per write: what the systemd watchdog sees move


def test_a_short_batch_does_not_skip_lines_when_the_window_refills():
    writer = ScriptedInflux()
    collector = collector_with(writer, 3, parallel_writes=4)
    assert write_out(collector)
    assert writer.stored == [line(i) for i in range(3)] and collector.buffer.removed == 3
