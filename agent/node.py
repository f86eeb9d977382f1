"""One node's agent loop: sample GPUs, close a window every publish interval, publish it.

Sampling and publishing are separate tasks joined by a queue, so a slow broker acknowledgement
never delays a sample. Windows are contiguous: each starts where the previous one ended, so the
window lengths of a GPU add up to the time it was watched (the basis of GPU-seconds billing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gpufleet import wire
from gpufleet.mqtt import LastWill, MqttLink

from .readings import GpuEvent, GpuSource
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
    windows_published: int = 0
    gpu_windows_published: int = 0
    events_published: int = 0
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
        first_seq: int = 0,
        record: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = wire.check_name("cluster", cluster)
        self.node = wire.check_name("node", node)
        self._source = source
        self._cadence = cadence
        self._seq = first_seq
        self._record = record
        self._clock = clock
        self._aggregator = WindowAggregator(cadence.sample_ms)
        self._workloads = workloads
        self.stats = AgentStats()

    async def run(self, link: MqttLink, *, max_windows: int | None = None, stop: asyncio.Event | None = None) -> None:
        """Publish `online`, then windows until `stop` is set or `max_windows` were acknowledged."""
        stop = stop or asyncio.Event()
        await link.publish(wire.state_topic(self.cluster, self.node), self._state("online"), retain=True)
        outbox: asyncio.Queue[tuple[str, bytes, int] | None] = asyncio.Queue(maxsize=1000)
        publisher = asyncio.create_task(self._publish_all(link, outbox), name=f"publish[{self.node}]")
        try:
            await self._sample_windows(outbox, max_windows, stop)
        finally:
            await outbox.put(None)  # the publisher drains what is queued, then ends
            await publisher
        await link.publish(wire.state_topic(self.cluster, self.node), self._state("offline"), retain=True)

    def _state(self, state: str) -> bytes:
        return wire.encode_state(wire.NodeState(self.cluster, self.node, state, self._now_ms()))

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _sample_windows(self, outbox: asyncio.Queue, max_windows: int | None, stop: asyncio.Event) -> None:
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
                await self._queue_events(outbox, self._source.poll_events())
            t1_ms = t0_ms + tick * self._cadence.sample_ms
            await outbox.put(self._window_message(window_start_ms, t1_ms))
            window_start_ms, windows = t1_ms, windows + 1

    def _prime(self) -> int:
        """A first sample that only sets the counters' baselines, so window 1 counts from its start."""
        start_ms = self._now_ms()
        self._aggregator.add(start_ms, self._source.sample())
        self._aggregator.close()
        self._source.poll_events()
        return start_ms

    def _window_message(self, t0_ms: int, t1_ms: int) -> tuple[str, bytes, int]:
        closed = self._aggregator.close()
        if self._workloads is not None:
            gpus, workloads = self._workloads.annotate(closed)
        else:
            gpus, workloads = tuple(wire.GpuWindow(g.index, g.uuid, g.model, g.values) for g in closed), {}
        window = wire.TelemetryWindow(
            cluster=self.cluster,
            node=self.node,
            seq=self._seq,
            t0_ms=t0_ms,
            t1_ms=t1_ms,
            fields=self._aggregator.field_names,
            gpus=gpus,
            workloads=workloads,
        )
        self._seq += 1
        if self._record:
            self.stats.published.append(window)
        return wire.telemetry_topic(self.cluster, self.node), wire.encode_telemetry(window), len(window.gpus)

    async def _queue_events(self, outbox: asyncio.Queue, events: list[GpuEvent]) -> None:
        for event in events:
            message = wire.GpuEventMessage(
                self.cluster, self.node, event.time_ms, event.index, event.uuid, event.kind, event.code, event.detail
            )
            await outbox.put((wire.events_topic(self.cluster, self.node), wire.encode_event(message), 0))

    async def _publish_all(self, link: MqttLink, outbox: asyncio.Queue) -> None:
        while (item := await outbox.get()) is not None:
            topic, payload, gpu_count = item
            await link.publish(topic, payload)
            if topic.endswith("/telemetry"):
                self.stats.windows_published += 1
                self.stats.gpu_windows_published += gpu_count
            else:
                self.stats.events_published += 1


async def _sleep_until(deadline: float, stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> bool:
    """Sleep until `deadline` (loop time); True when `stop` was set first."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, deadline - loop.time()))
        return True
    except TimeoutError:
        return False
