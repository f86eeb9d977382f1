"""One node's agent: sample GPUs, close a window every publish interval, deliver it.

Two tasks joined by a spool (agent/spool.py): the sampler never waits for the network, and the
publisher sends the spool in order, reconnecting with backoff when the broker goes away. A window
or event leaves the spool when a collector says it is stored (gpufleet/ack/v1/<cluster>/<node>:
windows by sequence number, events by a digest of their bytes), and one unconfirmed after
`resend_after_s` is sent again, so that nothing is lost to a broker restart, a collector crash or
a time without any collector (InfluxDB keeps one point per series and time, so a repeat is
harmless).

Windows are contiguous: each starts where the previous one ended, so the window lengths of a GPU
add up to the time it was watched (the basis of GPU-seconds billing). Sequence numbers continue
across restarts when a SeqFile is given.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from collections import deque
from dataclasses import dataclass, field

from gpufleet import wire
from gpufleet.mqtt import LastWill, MqttError, MqttLink
from gpufleet.retry import Backoff

from .readings import GpuEvent, GpuSource
from .spool import MemorySpool, SeqFile, Spool
from .window import WindowAggregator
from .workloads import WorkloadResolver

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Cadence:
    sample_ms: int
    publish_ms: int

    def __post_init__(self) -> None:
        if self.sample_ms <= 0 or self.publish_ms < self.sample_ms or self.publish_ms % self.sample_ms:
            raise ValueError(
                f"publish interval ({self.publish_ms} ms) must be a whole multiple of the sample interval "
                f"({self.sample_ms} ms)"
            )

    @property
    def samples_per_window(self) -> int:
        return self.publish_ms // self.sample_ms


@dataclass
class AgentStats:
    windows_published: int = 0  # acknowledged by the broker (PUBACK), each window once
    gpu_windows_published: int = 0
    windows_stored: int = 0  # confirmed stored by a collector
    windows_resent: int = 0
    events_published: int = 0  # acknowledged by the broker, each event once
    events_stored: int = 0  # confirmed stored by a collector
    events_resent: int = 0
    connects: int = 0
    samples: int = 0  # progress of the sampling loop: what the systemd watchdog is fed from
    # window end -> stored confirmation received, ms, for the latest windows (bench/latency.py)
    stored_latency_ms: deque[int] = field(default_factory=lambda: deque(maxlen=100_000))
    published: list[wire.TelemetryWindow] = field(default_factory=list)  # kept only when recording


def last_will(cluster: str, node: str) -> LastWill:
    return LastWill(wire.state_topic(cluster, node), wire.encode_state(wire.NodeState(cluster, node, "offline", None)))


class NodeAgent:
    def __init__(
        self,
        cluster: str,
        node: str,
        source: GpuSource,
        cadence: Cadence,
        *,
        workloads: WorkloadResolver | None = None,
        spool: Spool | None = None,
        seq_file: SeqFile | None = None,
        record: bool = False,
        max_backoff_s: float = 30.0,
        resend_after_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = wire.check_name("cluster", cluster)
        self.node = wire.check_name("node", node)
        self._source = source
        self._cadence = cadence
        self._workloads = workloads
        self.spool = spool if spool is not None else MemorySpool()
        self._seq_file = seq_file
        self._seq = seq_file.load() if seq_file else 0
        self._record = record
        self._max_backoff_s = max_backoff_s
        self._resend_after_s = resend_after_s
        self._sent_at: dict[int, float] = {}  # spool id -> loop time its next send is due
        self._sends: dict[int, int] = {}  # spool id -> times sent: resends back off, 1x 2x 4x .. 16x
        self._acknowledged: set[int] = set()  # spool ids the broker acknowledged at least once
        self._clock = clock
        self._aggregator = WindowAggregator(cadence.sample_ms)
        self._gpu_counts: dict[int, int] = {}  # spool id -> GPUs in that window, for the stats
        self._window_ends: dict[int, int] = {}  # seq -> t1_ms of windows not yet confirmed
        self._event_ids: dict[int, int] = {}  # wire.event_digest -> spool id, of events sent
        self._spooled = asyncio.Event()
        self.stats = AgentStats()

    async def run(
        self,
        connect: Callable[[], MqttLink],
        *,
        max_windows: int | None = None,
        stop: asyncio.Event | None = None,
        drain_timeout_s: float | None = None,
        until_stored: bool = True,
    ) -> bool:
        """Sample until `stop` or `max_windows`; deliver what is spooled, then say `offline`.

        Delivered means stored by a collector, or with `until_stored=False` acknowledged by the
        broker (what `gpufleet simulate` promises). True when everything was delivered; False when
        `drain_timeout_s` ran out after sampling ended (a disk spool keeps the rest for next time)."""
        stop = stop or asyncio.Event()
        sampling_done = asyncio.Event()
        self._until_stored = until_stored
        publisher = asyncio.create_task(self._deliver(connect, sampling_done), name=f"agent.publish[{self.node}]")
        try:
            await self._sample_windows(max_windows, stop)
        finally:
            sampling_done.set()
            self._spooled.set()
        try:
            await asyncio.wait_for(asyncio.shield(publisher), drain_timeout_s)
        except TimeoutError:
            publisher.cancel()
            log.warning("%s: gave up delivering %d spooled messages after %s s", self.node, len(self.spool), drain_timeout_s)
            return False
        return True

    # ------------------------------------------------------------------------------- sampling

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _sample_windows(self, max_windows: int | None, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        # Schedule on the monotonic clock so that the cadence does not drift; stamp with wall time.
        start_mono, t0_ms = loop.time(), self._prime()
        window_start_ms, tick, windows = t0_ms, 0, 0
        while max_windows is None or windows < max_windows:
            for _ in range(self._cadence.samples_per_window):
                tick += 1
                if await _sleep_until(start_mono + tick * self._cadence.sample_ms / 1000, stop, loop):
                    return
                self._aggregator.add(t0_ms + tick * self._cadence.sample_ms, self._source.sample())
                self.stats.samples += 1
                self._spool_events(self._source.poll_events())
            t1_ms = t0_ms + tick * self._cadence.sample_ms
            self._spool_window(window_start_ms, t1_ms)
            window_start_ms, windows = t1_ms, windows + 1

    def _prime(self) -> int:
        """A first sample that only sets the counters' baselines, so window 1 counts from its start."""
        start_ms = self._now_ms()
        self._aggregator.add(start_ms, self._source.sample())
        self._aggregator.close()
        self._spool_events(self._source.poll_events())  # a GPU lost at start is news too
        return start_ms

    def _spool_window(self, t0_ms: int, t1_ms: int) -> None:
        closed = self._aggregator.close()
        if self._workloads is not None:
            gpus, workloads = self._workloads.annotate(closed)
        else:
            gpus, workloads = tuple(wire.GpuWindow(g.index, g.uuid, g.model, g.values) for g in closed), {}
        window = wire.TelemetryWindow(
            self.cluster, self.node, self._seq, t0_ms, t1_ms, self._aggregator.field_names, gpus, workloads
        )
        self._seq += 1
        if self._seq_file is not None:
            self._seq_file.save(self._seq)
        if self._record:
            self.stats.published.append(window)
        payload = wire.encode_telemetry(window)
        item_id = self.spool.append(wire.telemetry_topic(self.cluster, self.node), payload, seq=window.seq)
        self._window_ends[window.seq] = t1_ms
        if len(self._window_ends) > len(self.spool):  # windows the spool's bound pushed out
            self._window_ends = {s: t for s, t in self._window_ends.items() if s >= window.seq - len(self.spool)}
        self._gpu_counts[item_id] = len(gpus)
        self._spooled.set()

    def _spool_events(self, events: list[GpuEvent]) -> None:
        for event in events:
            message = wire.GpuEventMessage(
                self.cluster, self.node, event.time_ms, event.index, event.uuid, event.kind, event.code, event.detail
            )
            self.spool.append(wire.events_topic(self.cluster, self.node), wire.encode_event(message))
            self._spooled.set()

    # ----------------------------------------------------------------------------- delivering

    async def _deliver(self, connect: Callable[[], MqttLink], sampling_done: asyncio.Event) -> None:
        backoff = Backoff(self._max_backoff_s)
        while True:
            try:
                async with connect() as link:
                    self.stats.connects += 1
                    await link.subscribe(wire.stored_topic(self.cluster, self.node))
                    await self._publish_state(link, "online")
                    backoff.reset()
                    acks = asyncio.create_task(self._receive_stored(link), name=f"agent.stored[{self.node}]")
                    try:
                        await self._send_until_delivered(link, sampling_done)
                    finally:
                        acks.cancel()
                    await self._publish_state(link, "offline")
                    return
            except MqttError as exc:
                delay = backoff.next()
                log.warning(
                    "%s: waiting for the MQTT broker (%s); %d messages spooled; retrying in %.1f s",
                    self.node, exc, len(self.spool), delay,
                )
                await asyncio.sleep(delay)

    async def _publish_state(self, link: MqttLink, state: str) -> None:
        payload = wire.encode_state(wire.NodeState(self.cluster, self.node, state, self._now_ms()))
        await link.publish(wire.state_topic(self.cluster, self.node), payload, retain=True)

    async def _receive_stored(self, link: MqttLink) -> None:
        async for message in link.messages():
            try:
                stored = wire.decode_stored(message.payload)
            except wire.Rejected as rejection:
                log.warning("%s: ignored a bad stored acknowledgement: %s", self.node, rejection)
                continue
            now_ms = self._now_ms()
            for seq in stored.seqs:
                if (end_ms := self._window_ends.pop(seq, None)) is not None:
                    self.stats.stored_latency_ms.append(now_ms - end_ms)
            for item_id in self.spool.remove_seqs(stored.seqs):
                self._forget(item_id)
                self.stats.windows_stored += 1
            for digest in stored.events:
                if (item_id := self._event_ids.pop(digest, None)) is not None and item_id in self.spool:
                    self.spool.remove(item_id)
                    self._forget(item_id)
                    self.stats.events_stored += 1
            self._spooled.set()  # the sender may be waiting for the spool to empty

    def _forget(self, item_id: int) -> None:
        self._sent_at.pop(item_id, None)
        self._sends.pop(item_id, None)
        self._acknowledged.discard(item_id)
        self._gpu_counts.pop(item_id, None)

    def _delivered(self) -> bool:
        if self._until_stored:
            return len(self.spool) == 0
        return all(item_id in self._acknowledged for item_id in self.spool.ids())

    async def _send_until_delivered(self, link: MqttLink, sampling_done: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not (sampling_done.is_set() and self._delivered()):
            now = loop.time()
            if len(self._sent_at) > len(self.spool):  # windows the spool's bound pushed out
                for gone in set(self._sent_at).difference(self.spool.ids()):
                    self._forget(gone)
                self._event_ids = {digest: i for digest, i in self._event_ids.items() if i in self.spool}
            due = [i for i in self.spool.ids() if self._sent_at.get(i, now) <= now]
            if not due:
                self._spooled.clear()
                next_due = min(self._sent_at.values(), default=None)
                timeout = None if next_due is None else max(0.0, next_due - now)
                try:
                    await asyncio.wait_for(self._spooled.wait(), timeout)
                except TimeoutError:
                    pass
                continue
            for item_id in due:
                await self._send(link, item_id, loop)

    async def _send(self, link: MqttLink, item_id: int, loop: asyncio.AbstractEventLoop) -> None:
        item = self.spool.get(item_id)
        if item is None:
            return  # stored (or dropped past the bound) meanwhile
        first_time = item_id not in self._sent_at
        gpus = self._gpu_counts.get(item_id, 0)
        if item.seq is None:  # an event: confirmed by its digest (a resend has the same bytes),
            self._event_ids[wire.event_digest(item.payload)] = item_id  # which may beat the PUBACK
        await link.publish(item.topic, item.payload)
        if item.seq is None:
            if first_time:
                self.stats.events_published += 1
            else:
                self.stats.events_resent += 1
        elif first_time:
            self.stats.windows_published += 1
            self.stats.gpu_windows_published += gpus
        else:
            self.stats.windows_resent += 1
        if item_id in self.spool:  # not confirmed stored while we waited for the PUBACK
            sends = self._sends[item_id] = self._sends.get(item_id, 0) + 1
            # While a collector or InfluxDB is away, resending every window at the same pace
            # would multiply the backlog; back off per window instead.
            self._sent_at[item_id] = loop.time() + self._resend_after_s * min(16, 2 ** (sends - 1))
            self._acknowledged.add(item_id)


async def _sleep_until(deadline: float, stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> bool:
    """Sleep until `deadline` (loop time); True when `stop` was set first."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, deadline - loop.time()))
        return True
    except TimeoutError:
        return False
