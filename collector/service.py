"""The collector process: MQTT shared subscription in, InfluxDB batches out, its own telemetry too.

Three tasks share one event loop: `receive` (broker -> Pipeline -> WriteBuffer), `flush` (buffer
-> InfluxDB, a sliding window of batches in worker threads so the loop keeps receiving) and `report` (the collector's
counters as a `collector` point). A broker or database that is down is waited for with backoff,
and the log says what is awaited.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gpufleet import wire
from gpufleet.mqtt import BrokerAddress, MqttError, MqttSubscriber, Received, TlsFiles
from gpufleet.retry import Backoff

from . import lineproto
from .buffer import WriteBuffer
from .influx import InfluxWriter, WriteFailed
from .pipeline import Accepted, Pipeline
from .tenants import TenantRules

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CollectorOptions:
    client_id: str
    group: str = "gpufleet"
    cluster: str = "+"
    batch_lines: int = 5000
    parallel_writes: int = 2  # batches in flight to InfluxDB at once
    flush_interval_s: float = 1.0
    max_buffer_lines: int = 2_000_000
    stats_interval_s: float = 10.0
    drain_timeout_s: float = 60.0
    max_backoff_s: float = 30.0


@dataclass(frozen=True, slots=True)
class _Write:
    """A batch on its way to InfluxDB: it ends before buffer position `end`."""

    end: int
    lines: int
    task: asyncio.Future[WriteFailed | None]


class RateLimitedLog:
    """Log a rejection once per reason per period, with how many were not logged in between."""

    def __init__(self, period_s: float = 60.0) -> None:
        self._period_s = period_s
        self._last: dict[str, tuple[float, int]] = {}

    def rejected(self, topic: str, rejection: wire.Rejected, now: float) -> None:
        last_time, suppressed = self._last.get(rejection.reason, (-self._period_s, 0))
        if now - last_time >= self._period_s:
            more = f" (+{suppressed} more since last report)" if suppressed else ""
            log.warning("dropped message on %s: %s%s", topic[:200], rejection, more)
            self._last[rejection.reason] = (now, 0)
        else:
            self._last[rejection.reason] = (last_time, suppressed + 1)


class Collector:
    def __init__(
        self,
        broker: BrokerAddress,
        writer: InfluxWriter,
        options: CollectorOptions,
        tls: TlsFiles | None = None,
        tenant_rules: Callable[[], TenantRules] = TenantRules,
    ):
        self.pipeline = Pipeline(tenant_rules)
        self.buffer = WriteBuffer(options.max_buffer_lines)
        self.points_written = 0
        self.flush_progress = 0  # flush rounds and finished writes: what the systemd watchdog is fed from
        self.lines_refused = 0  # lines InfluxDB refused for good (400): counted, never retried
        self.write_retries = 0
        self.failure: BaseException | None = None  # why a task of run() ended on its own, if one did
        self._broker = broker
        self._writer = writer
        self._options = options
        self._tls = tls
        self._wake_flush = asyncio.Event()
        self._rejections = RateLimitedLog()
        self.subscribed = asyncio.Event()
        self._link: MqttSubscriber | None = None
        self._draining = False
        # (buffer position of its last line, message, what to confirm to its agent once stored)
        self._unacked: deque[tuple[int, Received, Accepted | None]] = deque()
        # per (cluster, node): window seqs and event digests stored since the last confirmation
        self._stored: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        self._confirmed_at = 0.0  # time.monotonic() of the last confirmation round

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`; then take no more messages, write out what is buffered (bounded by
        drain_timeout_s) while the connection stays open for its acknowledgements, then leave.
        Messages that arrive meanwhile are not acknowledged: the agents send them again."""
        receive = asyncio.create_task(self._receive(stop), name="collector.receive")
        report = asyncio.create_task(self._report(stop), name="collector.report")
        flush = asyncio.create_task(self._flush(stop), name="collector.flush")
        stopping = asyncio.create_task(stop.wait(), name="collector.stopping")
        done, _ = await asyncio.wait({stopping, receive, report, flush}, return_when=asyncio.FIRST_COMPLETED)
        if stopping not in done:
            # A task ended by itself: a bug. Without this the flush loop would go on feeding the
            # systemd watchdog while nothing is received; instead, drain, exit non-zero, be restarted.
            stopping.cancel()
            crashed = next(iter(done))
            self.failure = crashed.exception() or RuntimeError(f"{crashed.get_name()} returned")
            log.critical("%s stopped: %r; draining and exiting", crashed.get_name(), self.failure, exc_info=self.failure)
            stop.set()
        self._draining = True
        report.cancel()
        self.buffer.extend([self._stats_line()])
        self._wake_flush.set()
        try:
            await asyncio.wait_for(flush, self._options.drain_timeout_s)
        except TimeoutError:
            log.error("gave up writing %d buffered lines after %.0f s", len(self.buffer), self._options.drain_timeout_s)
        receive.cancel()
        await asyncio.gather(receive, report, flush, return_exceptions=True)

    # ---------------------------------------------------------------------------------- receive

    async def _receive(self, stop: asyncio.Event) -> None:
        backoff = Backoff(self._options.max_backoff_s)
        while not stop.is_set():
            try:
                await self._receive_connected(backoff)
            except MqttError as exc:
                self.subscribed.clear()
                delay = backoff.next()
                log.warning("waiting for the MQTT broker at %s (%s); retrying in %.1f s", self._broker, exc, delay)
                await asyncio.sleep(delay)

    async def _receive_connected(self, backoff: Backoff) -> None:
        # A clean session: Mosquitto hands a shared subscription's messages to a member's stored
        # session even while it is offline, so a dead collector with a session would swallow its
        # share. Without one, the live members take everything; what a crash had in flight is
        # sent again by the agents, which keep each window until a collector confirms it stored.
        link = MqttSubscriber(self._broker, self._options.client_id, tls=self._tls)
        async with link:
            self._link = link
            await link.subscribe(wire.subscription(self._options.group, self._options.cluster))
            backoff.reset()
            self.subscribed.set()
            log.info("subscribed to %s on %s", wire.subscription(self._options.group, self._options.cluster), self._broker)
            try:
                async for message in link.messages():
                    self._accept(message)
            finally:
                # Acknowledgements belong to this connection; the broker redelivers the rest.
                self._link = None
                self._unacked.clear()

    def _accept(self, message: Received) -> None:
        if self._draining:
            return  # stopping: unacknowledged, so it is sent again to a collector that stays
        now = time.time()
        lines, rejection = self.pipeline.handle(message.topic, message.payload, int(now * 1000))
        if rejection is not None:
            self._rejections.rejected(message.topic, rejection, now)
        # Acknowledged (PUBACK, and `stored` to the agent) only once its lines are in InfluxDB or it
        # was refused: the broker's in-flight limit then holds the stream back while InfluxDB is away.
        self._unacked.append((self.buffer.extend(lines), message, self.pipeline.accepted))
        self._ack_written()
        if len(self.buffer) >= self._options.batch_lines:
            self._wake_flush.set()

    def _ack_written(self) -> None:
        while self._unacked and self._unacked[0][0] <= self.buffer.removed:
            _, message, accepted = self._unacked.popleft()
            if self._link is not None:
                self._link.ack(message)
            if accepted is not None:
                seqs, events = self._stored.setdefault((accepted.cluster, accepted.node), ([], []))
                if accepted.seq is not None:
                    seqs.append(accepted.seq)
                else:
                    events.append(accepted.event_digest)

    async def _confirm_stored(self) -> None:
        """Tell each agent which of its windows and events are now stored (one message per node per flush)."""
        stored, self._stored = self._stored, {}
        if self._link is None:
            return  # the agents will send those windows again; InfluxDB keeps one copy
        for (cluster, node), (seqs, events) in stored.items():
            try:
                # QoS 0: nothing to wait for; a lost confirmation only costs the agent a resend.
                await self._link.publish(wire.stored_topic(cluster, node), wire.encode_stored(seqs, events), qos=0)
            except MqttError:
                return

    # ------------------------------------------------------------------------------------ flush

    async def _flush(self, stop: asyncio.Event) -> None:
        backoff = Backoff(self._options.max_backoff_s)
        while True:
            try:
                await asyncio.wait_for(self._wake_flush.wait(), self._options.flush_interval_s)
            except TimeoutError:
                pass
            self._wake_flush.clear()
            self.flush_progress += 1
            if len(self.buffer):
                await self._write_out(backoff)
            if stop.is_set() and not len(self.buffer):
                return

    async def _write_out(self, backoff: Backoff) -> bool:
        """Write the buffer out through a sliding window of up to `parallel_writes` batches: when
        one is written the next starts at once, so InfluxDB always has a batch to parse while
        another is on the wire. Batches are committed in order, so that a message is acknowledged
        only when every line before it is stored too. True: the buffer ran dry; False: a write
        failed for now and its backoff was slept, to be retried from the oldest line on."""
        in_flight: deque[_Write] = deque()
        next_position = self.buffer.removed
        try:
            while True:
                next_position = self._start_writes(in_flight, next_position)
                if not in_flight:
                    return True
                # Only those still under way: one finished out of order waits to be committed.
                under_way = [write.task for write in in_flight if not write.task.done()]
                await asyncio.wait(under_way, return_when=asyncio.FIRST_COMPLETED)
                self.flush_progress += 1
                failure = self._commit_written(in_flight)
                if failure is not None:
                    await self._wait_for_rest(in_flight)
                    await self._back_off(failure, backoff)
                    return False
                backoff.reset()
                # Under load batches follow each other closely: confirm once per flush interval (or
                # when the buffer runs dry), not per batch, so that a node gets one message a second.
                if not len(self.buffer) or time.monotonic() - self._confirmed_at >= self._options.flush_interval_s:
                    self._confirmed_at = time.monotonic()
                    await self._confirm_stored()
        finally:
            for write in in_flight:  # cancelled (drain timeout): the threads finish on their own
                write.task.cancel()

    def _start_writes(self, in_flight: deque[_Write], next_position: int) -> int:
        """Fill the window with the next batches; returns the position after the last line sent.
        A batch may be short: if InfluxDB is the bottleneck they fill up while it is busy."""
        size = self._options.batch_lines
        while len(in_flight) < self._options.parallel_writes:
            start, batch = self.buffer.lines_from(next_position, size)
            if not batch:
                break
            next_position = start + len(batch)
            # InfluxDB's HTTP write blocks; worker threads keep the loop receiving meanwhile, and
            # InfluxDB parses concurrent requests on several cores.
            in_flight.append(_Write(next_position, len(batch), asyncio.ensure_future(asyncio.to_thread(self._write, batch))))
        return next_position

    def _commit_written(self, in_flight: deque[_Write]) -> WriteFailed | None:
        """Commit the finished writes at the front of the window, in order, up to the first that
        may be retried, and return its failure (it stays in the window). A refused batch is
        counted and committed: a retry would be refused again. A later batch already stored is
        written again with the retry, and InfluxDB keeps one point per series and time."""
        committed = False
        while in_flight and in_flight[0].task.done():
            failure = in_flight[0].task.result()
            if failure is not None and failure.retryable:
                break
            write = in_flight.popleft()
            if failure is not None:
                log.error("InfluxDB refused a batch of %d lines: %s", write.lines, failure)
                self.lines_refused += write.lines
            else:
                self.points_written += write.lines
            self.buffer.remove_until(write.end)
            committed = True
        if committed:
            self._ack_written()
        if in_flight and in_flight[0].task.done():
            return in_flight[0].task.result()
        return None

    @staticmethod
    async def _wait_for_rest(in_flight: deque[_Write]) -> None:
        """Let the writes still under way finish before the retry sends their lines again."""
        await asyncio.gather(*(write.task for write in in_flight))
        in_flight.clear()

    async def _back_off(self, failure: WriteFailed, backoff: Backoff) -> None:
        self.write_retries += 1
        delay = backoff.next()
        log.warning("waiting for InfluxDB (%s); %d lines buffered; retrying in %.1f s", failure, len(self.buffer), delay)
        await asyncio.sleep(delay)

    def _write(self, batch: list[str]) -> WriteFailed | None:
        try:
            self._writer.write(batch)
        except WriteFailed as exc:
            return exc
        return None

    # ----------------------------------------------------------------------------------- report

    async def _report(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self._options.stats_interval_s)
            self.buffer.extend([self._stats_line()])

    def _stats_line(self) -> str:
        counters = self.pipeline.counters.as_fields()
        counters.update(
            points_written=self.points_written,
            lines_refused=self.lines_refused,
            write_retries=self.write_retries,
            buffered_lines=len(self.buffer),
            dropped_lines=self.buffer.dropped,
        )
        return lineproto.stats_line("collector", {"collector": self._options.client_id}, counters, int(time.time() * 1000))
