"""A simulated fleet: N node agents in one process, each its own MQTT client (`gpufleet simulate`).

It runs the same NodeAgent code as a real node, with SimulatedGpuSource in place of NVML.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from gpufleet import wire
from gpufleet.mqtt import BrokerAddress, MqttLink, TlsFiles

from .node import AgentStats, Cadence, NodeAgent, last_will
from .simulate import DEFAULT_TENANTS, SimulatedGpuSource
from .workloads import WorkloadResolver

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FleetPlan:
    cluster: str
    nodes: int
    gpus_per_node: int
    cadence: Cadence
    windows: int  # per node
    seed: int = 0
    tenants: tuple[str, ...] = DEFAULT_TENANTS  # () for GPUs that nobody holds
    xid_rate_per_gpu_hour: float = 0.5
    drain_timeout_s: float | None = 30.0  # after the last window, how long to wait for the broker
    until_stored: bool = False  # wait for collectors' stored confirmations, not just the broker's PUBACK
    resend_after_s: float = 60.0  # a window not confirmed stored by then is sent again

    def node_names(self) -> list[str]:
        return [f"node{i:05d}" for i in range(self.nodes)]


@dataclass
class FleetResult:
    plan: FleetPlan
    stats: dict[str, AgentStats] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # node -> why it stopped early
    sources: dict[str, SimulatedGpuSource] = field(default_factory=dict)  # their `truth` is the ground truth

    @property
    def windows_acknowledged(self) -> int:
        return sum(s.windows_published for s in self.stats.values())

    @property
    def gpu_windows_acknowledged(self) -> int:
        return sum(s.gpu_windows_published for s in self.stats.values())

    @property
    def complete(self) -> bool:
        return not self.failures and self.windows_acknowledged == self.plan.nodes * self.plan.windows

    def published(self) -> list[wire.TelemetryWindow]:
        return [w for s in self.stats.values() for w in s.published]


async def run_fleet(
    plan: FleetPlan,
    broker: BrokerAddress,
    *,
    tls: TlsFiles | None = None,
    record: bool = False,
    result: FleetResult | None = None,
) -> FleetResult:
    """Run the plan; `result` (optional) is filled as the fleet starts, so a caller can watch the
    agents' live stats while it runs."""
    result = result if result is not None else FleetResult(plan)
    agents = {}
    for i, node in enumerate(plan.node_names()):
        source = SimulatedGpuSource(
            node, plan.gpus_per_node, seed=plan.seed * 1_000_003 + i, tenants=plan.tenants,
            xid_rate_per_gpu_hour=plan.xid_rate_per_gpu_hour,
        )
        workloads = WorkloadResolver(source.identity_of, source.allocations)
        agents[node] = NodeAgent(
            plan.cluster, node, source, plan.cadence, workloads=workloads, record=record,
            resend_after_s=plan.resend_after_s,
        )
        result.stats[node] = agents[node].stats
        result.sources[node] = source
    outcomes = await asyncio.gather(
        *(_run_node(agent, broker, tls, plan) for agent in agents.values()), return_exceptions=True
    )
    for node, outcome in zip(agents, outcomes):
        if isinstance(outcome, BaseException):
            result.failures[node] = f"{type(outcome).__name__}: {outcome}"
        elif not outcome:
            result.failures[node] = f"{len(agents[node].spool)} messages not acknowledged in time"
    return result


def node_link(broker: BrokerAddress, cluster: str, node: str, tls: TlsFiles | None, prefix: str) -> MqttLink:
    """A node's MQTT connection, with its `offline` last will."""
    return MqttLink(broker, f"{prefix}-{cluster}-{node}", will=last_will(cluster, node), tls=tls)


async def _run_node(agent: NodeAgent, broker: BrokerAddress, tls: TlsFiles | None, plan: FleetPlan) -> bool:
    return await agent.run(
        lambda: node_link(broker, agent.cluster, agent.node, tls, "gpufleet-sim"),
        max_windows=plan.windows,
        drain_timeout_s=plan.drain_timeout_s,
        until_stored=plan.until_stored,
    )
