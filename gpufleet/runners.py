"""Glue between checked configuration and the running parts: builds objects, runs the event loop,
maps expected failures to exit codes. Each function returns the process's exit code."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from gpufleet import config as cfg
from gpufleet import sdnotify

log = logging.getLogger("gpufleet")
T = TypeVar("T")


async def _feed_watchdog(progress: Callable[[], int], stop: asyncio.Event, step_s: float) -> None:
    """WATCHDOG=1 to systemd while `progress()` moves (at least once per `step_s` x 2): a loop
    that hangs, or an event loop that blocks, stops the feeding and systemd restarts the service
    (WatchdogSec in the unit)."""
    interval = sdnotify.watchdog_interval_s()
    if interval is None:
        return
    loop = asyncio.get_running_loop()
    seen, moved_at = -1, loop.time()
    while not stop.is_set():
        if progress() != seen:
            seen, moved_at = progress(), loop.time()
        if loop.time() - moved_at <= 2 * step_s + interval:
            sdnotify.notify("WATCHDOG=1")
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass


def _run_until_signalled(main: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run `main(stop)`; SIGTERM or SIGINT set `stop` so that services shut down cleanly."""

    async def wrapper() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(wrapper())


def simulate_fleet(settings: cfg.SimulateConfig) -> int:
    from gpufleet.agent.fleet import FleetPlan, run_fleet  # noqa: PLC0415

    plan = FleetPlan(
        cluster=settings.cluster,
        nodes=settings.nodes,
        gpus_per_node=settings.gpus_per_node,
        cadence=_cadence(settings),
        windows=settings.windows,
        seed=settings.seed,
        drain_timeout_s=settings.drain_timeout,
    )
    log.info(
        "simulating %d nodes x %d GPUs, %d windows of %.3g s each, to %s",
        plan.nodes, plan.gpus_per_node, plan.windows, settings.interval, settings.broker,
    )
    result = asyncio.run(run_fleet(plan, settings.broker_address, tls=settings.tls))
    expected = plan.nodes * plan.windows
    print(
        f"published and acknowledged {result.windows_acknowledged}/{expected} windows "
        f"({result.gpu_windows_acknowledged} GPU-windows) from {plan.nodes} nodes"
    )
    for node, why in sorted(result.failures.items())[:10]:
        print(f"  {node}: {why}")
    return 0 if result.complete else 1


def _cadence(settings: cfg.AgentConfig | cfg.SimulateConfig):  # -> agent.node.Cadence
    from gpufleet.agent.node import Cadence  # noqa: PLC0415

    return Cadence(round(settings.effective_sample_interval * 1000), round(settings.interval * 1000))


def sample_once(capture: Path | None) -> int:
    """One sample of every counter, as JSON keyed by GPU UUID: of this node's GPUs through NVML,
    or of a `nvidia-smi -q -x` capture through the fake driver. The time it took goes to stderr."""
    from gpufleet.agent import capture as captures  # noqa: PLC0415
    from gpufleet.agent.nvml import NvmlUnavailable, open_nvml  # noqa: PLC0415

    if capture is not None:
        try:
            print(json.dumps(captures.sample_capture(capture), indent=2, sort_keys=True))
        except (OSError, captures.CaptureError) as exc:
            log.error("cannot use capture %s: %s", capture, exc)
            return 2
        return 0
    try:
        source = open_nvml(watch_events=False)
    except NvmlUnavailable as exc:
        log.error("%s", exc)
        return 1
    try:
        source.sample()  # the first sample also primes NVML's per-process utilisation cursor
        started = time.perf_counter()
        readings = source.sample()
        took_ms = (time.perf_counter() - started) * 1000
    finally:
        source.close()
    print(json.dumps({r.uuid: captures.reading_json(r) for r in readings}, indent=2, sort_keys=True))
    print(f"one sample of {len(readings)} GPUs took {took_ms:.2f} ms", file=sys.stderr)
    return 0


def run_agent(settings: cfg.AgentConfig) -> int:
    from gpufleet.agent.node import NodeAgent  # noqa: PLC0415

    source = _gpu_source(settings)
    if source is None:
        return 1
    try:
        workloads = _workload_resolver(settings, source)
    except ValueError as exc:
        log.error("static_job_map: %s", exc)
        return 2
    from gpufleet.agent.spool import DiskSpool, SeqFile  # noqa: PLC0415

    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True)
    agent = NodeAgent(
        settings.cluster, settings.node, source, _cadence(settings), workloads=workloads,
        spool=DiskSpool(state / "spool", settings.spool_max_messages), seq_file=SeqFile(state / "next-seq"),
        resend_after_s=settings.resend_after,
    )
    try:
        _run_until_signalled(lambda stop: _agent_forever(agent, settings, stop))
    finally:
        source.close()
    return 0


def _workload_resolver(settings: cfg.AgentConfig, source):  # -> WorkloadResolver
    """Simulated GPUs know their own workloads; real ones are looked up in /proc and the job mapping."""
    from gpufleet.agent import identity, jobmap  # noqa: PLC0415
    from gpufleet.agent.workloads import WorkloadResolver  # noqa: PLC0415

    if settings.simulate:
        return WorkloadResolver(source.identity_of, source.allocations)
    gpus = [(index, uuid) for index, uuid, _ in source.gpus]
    jobmap.static_job_mapping(settings.static_job_map, gpus)  # a bad workload key stops us at start
    pods = _pod_resources(settings)

    def identify(pid: int) -> dict:
        found = identity.resolve(pid, settings.proc_root)
        return pods.enrich(found) if pods is not None and found.get("kind") == "k8s_pod" else found

    def allocations() -> dict:
        mapping = jobmap.read_job_mapping(settings.job_mapping_dir, gpus, static=settings.static_job_map)
        for index, owners in (pods.gpu_allocations(gpus) if pods is not None else {}).items():
            mapping.setdefault(index, []).extend(owners)
        return mapping

    return WorkloadResolver(identify, allocations)


def _pod_resources(settings: cfg.AgentConfig):  # -> PodResources | None
    """The kubelet's pod-resources socket, on Kubernetes nodes: pod names and namespaces, and
    the GPUs each container was given (also when nothing runs on them)."""
    if settings.kubelet_socket is None:
        return None
    from gpufleet.agent.podresources import PodResources  # noqa: PLC0415  # grpc only where needed

    return PodResources(str(settings.kubelet_socket), pod_logs_dir=str(settings.kubelet_pod_logs_dir))


def _gpu_source(settings: cfg.AgentConfig):  # -> GpuSource | None
    if settings.simulate:
        from gpufleet.agent.simulate import SimulatedGpuSource  # noqa: PLC0415

        return SimulatedGpuSource(settings.node, settings.simulate)
    from gpufleet.agent.nvml import NvmlUnavailable, open_nvml  # noqa: PLC0415

    try:
        return open_nvml()
    except NvmlUnavailable as exc:
        log.error("%s (use --simulate N on a machine without NVIDIA GPUs)", exc)
        return None


async def _agent_forever(agent, settings: cfg.AgentConfig, stop: asyncio.Event) -> None:
    from gpufleet.agent.fleet import node_link  # noqa: PLC0415

    log.info("agent %s/%s publishing to %s every %g s", agent.cluster, agent.node, settings.broker, settings.interval)
    sdnotify.notify("READY=1")  # sampling starts now; the broker may come later (the spool waits)
    watchdog = asyncio.create_task(_feed_watchdog(lambda: agent.stats.samples, stop, settings.effective_sample_interval), name="agent.watchdog")
    delivered = await agent.run(
        lambda: node_link(settings.broker_address, agent.cluster, agent.node, settings.tls, "gpufleet-agent"),
        stop=stop,
        drain_timeout_s=settings.drain_timeout,
    )
    sdnotify.notify("STOPPING=1")
    await watchdog
    if not delivered:
        log.warning("stopped with %d messages spooled; they are sent on the next start", len(agent.spool))


def _tenant_rules(settings: cfg.CollectorConfig):  # -> Callable[[], TenantRules]
    from gpufleet.collector.tenants import RulesFile, TenantRules  # noqa: PLC0415

    if settings.tenants_file is None:
        log.warning("no tenants_file: every workload is billed to 'unallocated'")
        return TenantRules
    return RulesFile(settings.tenants_file).current


def run_collector(settings: cfg.CollectorConfig) -> int:
    from gpufleet.collector.influx import InfluxWriter, read_token  # noqa: PLC0415
    from gpufleet.collector.service import Collector, CollectorOptions  # noqa: PLC0415
    from gpufleet.wire import NATIVE_CORE  # noqa: PLC0415

    token = read_token(settings.influx_token.get_secret_value() if settings.influx_token else None, settings.influx_token_file)
    writer = InfluxWriter(settings.influx_url, token, settings.influx_org, settings.bucket)
    options = CollectorOptions(
        client_id=settings.client_id,
        group=settings.group,
        cluster=settings.cluster,
        batch_lines=settings.batch_lines,
        parallel_writes=settings.parallel_writes,
        flush_interval_s=settings.flush_interval,
        max_buffer_lines=settings.max_buffer_lines,
    )
    try:
        rules = _tenant_rules(settings)
    except (OSError, ValueError) as exc:
        log.error("tenant rules: %s", exc)
        return 2
    collector = Collector(settings.broker_address, writer, options, tls=settings.tls, tenant_rules=rules)
    log.info("collector %s: %s -> %s bucket %s", settings.client_id, settings.broker, settings.influx_url, settings.bucket)
    if not NATIVE_CORE:  # the same lines, at about half the GPU-windows a core can take
        log.warning("C fast paths off (gpufleet._native not built, or GPUFLEET_NATIVE=0): decoding and lines run in Python")
    async def run(stop: asyncio.Event) -> None:
        sdnotify.notify("READY=1")  # configured; the log says what it waits for (broker, InfluxDB)
        watchdog = asyncio.create_task(_feed_watchdog(lambda: collector.flush_progress, stop, settings.flush_interval), name="collector.watchdog")
        await collector.run(stop)
        sdnotify.notify("STOPPING=1")
        await watchdog

    try:
        _run_until_signalled(run)
    finally:
        writer.close()
    log.info(
        "stopped: %d points written, %d lines refused, %d dropped, %d still buffered",
        collector.points_written, collector.lines_refused, collector.buffer.dropped, len(collector.buffer),
    )
    if collector.failure is not None:
        return 3  # a bug stopped it: systemd's Restart= brings it back, the log has the traceback
    return 0 if not len(collector.buffer) else 1
