"""A telemetry window into `gpu` and `tenant_usage` lines, fast: what repeats is made once.

Pure: no I/O. The same GPUs come back every window with the same jobs, so everything about a
GPU-window except its numbers is worked out once and kept, as a `GpuPlan`: the tags of its lines,
which tenant each workload bills, the workloads text of each tenant line, and how holders merge
into workloads. Per window what is left is integer arithmetic and number formatting. Plans are
keyed by everything they were made from (GPU, holders, owners, each workload's tenant and
identity text), so a changed job, identity or tenant rule finds no plan and gets a fresh one.

The lines are those of lineproto.gpu_lines and lineproto.tenant_usage_line fed with
attribute.attribute() and attribute.by_tenant(), byte for byte (tests/unit/test_telemetry.py
checks it on random windows): those stay the readable definition, this is the fast path.
MIG instances take that definition's path (collector/pipeline.py), being few.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from gpufleet.wire import GpuWindow, Rejected, TelemetryWindow

from . import lineproto
from .attribute import UNALLOCATED, hamilton

_NS_PER_MS = 1_000_000
MAX_PLANS = 1 << 18  # ~0.5 kB each: a 200,000-GPU fleet's plans fit in ~130 MB; full means start over
MAX_FORMATS = 256


class FieldFormat:
    """How the values of one field list become the field set of a `gpu` line: one `%` template
    for all fields, so that C does the formatting; integers as `42i`, the others as the wire
    integer and its decimal exponent (`312460e-3`), as lineproto.gpu_lines writes them."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        plan, self.unknown = lineproto.field_plan(fields)
        self.energy_at = fields.index("energy_j") if "energy_j" in fields else None  # what attribution reads
        self.util_at = fields.index("util_gpu_pct") if "util_gpu_pct" in fields else None
        self._positions = None if len(plan) == len(fields) else [pos for pos, _, _ in plan]
        self._pieces = [f"{name}=%d{lineproto.value_suffix(div)}," for _, name, div in plan]
        self._template = "".join(self._pieces)
        self._sparse: dict[tuple[bool, ...], str] = {}  # which values are present -> template

    def fields(self, values: tuple[int | None, ...]) -> str:
        """`name=value,` for each present known field (with the trailing comma)."""
        args = values if self._positions is None else tuple([values[pos] for pos in self._positions])
        if None not in args:
            return self._template % args
        mask = tuple([arg is not None for arg in args])
        template = self._sparse.get(mask)
        if template is None:
            template = "".join(piece for piece, present in zip(self._pieces, mask) if present)
            if len(self._sparse) < MAX_FORMATS:
                self._sparse[mask] = template
        return template % tuple([arg for arg in args if arg is not None])


class GpuPlan(NamedTuple):  # a NamedTuple: made for every changed job, and read field by field
    """What a GPU-window's lines need besides its numbers."""

    gpu_head: str  # `gpu,<tags> `
    keys: tuple[str, ...]  # the workloads that share the window, sorted; (UNALLOCATED,) for nobody
    holder_slots: tuple[int, ...] | None  # each holder's position in keys; None: owners share equally
    tenant_of_slot: tuple[int, ...]  # each key's position in tenant_lines
    slot_of_tenant: tuple[int, ...] | None  # each tenant's one key, when no tenant has two
    tenant_lines: tuple[tuple[str, str], ...]  # per tenant, sorted: (`tenant_usage,<tags> `, `uuid=..,workloads=.. `)


# A workload's (tenant, JSON piece of the workloads field), made once per message or kept longer.
Party = Callable[[str, str], tuple[str, str]]  # (workload key, GPU UUID) -> (tenant, JSON piece)


class TelemetryLines:
    """Lines for the non-MIG GPUs of telemetry windows, with plans and formats kept across messages."""

    def __init__(self) -> None:
        self._plans: dict[tuple, GpuPlan] = {}
        self._tags: dict[tuple, GpuTags] = {}
        self._formats: dict[tuple[str, ...], FieldFormat] = {}

    def forget(self) -> None:
        """Drop the plans (tenant rules changed): memory, not correctness, since keys hold tenants."""
        self._plans = {}

    def field_format(self, fields: tuple[str, ...]) -> FieldFormat:
        found = self._formats.get(fields)
        if found is None:
            found = FieldFormat(fields)
            if len(self._formats) >= MAX_FORMATS:
                self._formats = {}
            self._formats[fields] = found
        return found

    def plan(self, window: TelemetryWindow, gpu: GpuWindow, party: Party) -> GpuPlan:
        holder_keys = tuple([holder[0] for holder in gpu.holders])  # Holder.workload
        involved = holder_keys or gpu.owners
        uuid = gpu.uuid
        parties = tuple([party(key, uuid) for key in involved])
        key = (window.cluster, window.node, gpu.index, gpu.uuid, gpu.model, holder_keys, gpu.owners, parties)
        found = self._plans.get(key)
        if found is None:
            found = _make_plan(self._gpu_tags(window, gpu), holder_keys, dict(zip(involved, parties)))
            if len(self._plans) >= MAX_PLANS:
                self._plans = {}
            self._plans[key] = found
        return found

    def _gpu_tags(self, window: TelemetryWindow, gpu: GpuWindow) -> GpuTags:
        """A GPU's escaped tags, kept apart from its plans: a new job on it needs a new plan only."""
        key = (window.cluster, window.node, gpu.index, gpu.uuid, gpu.model)
        found = self._tags.get(key)
        if found is None:
            found = GpuTags.of(window, gpu)
            if len(self._tags) >= MAX_PLANS:
                self._tags = {}
            self._tags[key] = found
        return found

    def gpu_line(self, window_tail: str, plan: GpuPlan, fields: FieldFormat, gpu: GpuWindow) -> str:
        return f"{plan.gpu_head}{fields.fields(gpu.values)}{window_tail}"

    def tenant_lines(
        self, plan: GpuPlan, gpu: GpuWindow, window_ms: int, energy_mj: int | None, util_centi: int | None, stamp: str
    ) -> list[str]:
        """The window split among the plan's workloads (attribute.attribute, in integers), summed
        per tenant (attribute.by_tenant), one line per tenant."""
        if energy_mj is not None and energy_mj < 0:
            raise Rejected("bad_value", f"GPU {gpu.index} energy_j {energy_mj} is negative")
        busy = None if util_centi is None else _busy_ms(window_ms, util_centi)
        shares = _split(plan, gpu, window_ms, busy, energy_mj)
        if len(plan.tenant_lines) == 1:
            return [_tenant_line(plan.tenant_lines[0], *_sum(shares), stamp)]
        if plan.slot_of_tenant is not None:  # a tenant per workload: nothing to add up
            return [_tenant_line(texts, *shares[slot], stamp) for texts, slot in zip(plan.tenant_lines, plan.slot_of_tenant)]
        per_tenant: list[list] = [[] for _ in plan.tenant_lines]
        for slot, share in enumerate(shares):
            per_tenant[plan.tenant_of_slot[slot]].append(share)
        return [_tenant_line(texts, *_sum(group), stamp) for texts, group in zip(plan.tenant_lines, per_tenant)]


def window_tail(window: TelemetryWindow) -> str:
    """What ends every `gpu` line of a window: its sequence number, length and timestamp."""
    window_s = (window.t1_ms - window.t0_ms) / 1000
    return f"seq={window.seq}i,window_s={window_s!r} {window.t0_ms * _NS_PER_MS}"


def _busy_ms(window_ms: int, util_centi: int) -> int:
    """attribute.busy_total(window_ms, util_centi / 100) in exact integers: window x util, half up."""
    util_centi = min(max(util_centi, 0), 10_000)
    return (2 * window_ms * util_centi + 10_000) // 20_000


Share = tuple[int, "int | None", "int | None", "int | None"]  # gpu_ms, busy_ms, energy_mj, peak_mem_bytes


def _split(plan: GpuPlan, gpu: GpuWindow, window_ms: int, busy: int | None, energy_mj: int | None) -> list[Share]:
    count = len(plan.keys)
    memory: list[int | None] = [None] * count
    if plan.holder_slots is None:
        weights = [1] * count  # idle owners, or nobody: equal shares, no memory reading
    else:
        sm = [0] * count
        for slot, holder in zip(plan.holder_slots, gpu.holders):
            if holder.sm_util_centi is not None:
                sm[slot] += holder.sm_util_centi
            if holder.mem_bytes is not None:
                before = memory[slot]
                memory[slot] = holder.mem_bytes if before is None else before + holder.mem_bytes
        weights = sm if sum(sm) > 0 else [m or 0 for m in memory]
    if count == 1:
        return [(window_ms, busy, energy_mj, memory[0])]
    gpu_ms = hamilton(window_ms, weights)
    busy_ms = hamilton(busy, weights, caps=gpu_ms) if busy is not None else [None] * count
    energy = hamilton(energy_mj, weights) if energy_mj is not None else [None] * count
    return list(zip(gpu_ms, busy_ms, energy, memory))


def _sum(shares: list[Share]) -> Share:
    if len(shares) == 1:
        return shares[0]
    gpu_ms, busy, energy, memory = zip(*shares)
    return sum(gpu_ms), _sum_present(busy), _sum_present(energy), _sum_present(memory)


def _sum_present(values: tuple[int | None, ...]) -> int | None:
    present = [value for value in values if value is not None]
    return sum(present) if present else None


def _tenant_line(
    texts: tuple[str, str], gpu_ms: int, busy_ms: int | None, energy_mj: int | None, memory: int | None, stamp: str
) -> str:
    head, tail = texts
    # lineproto.tenant_usage_line's fields, thousandths written as `n e-3`
    busy = "" if busy_ms is None else f",busy_gpu_s={busy_ms}e-3,idle_gpu_s={gpu_ms - busy_ms}e-3"
    energy = "" if energy_mj is None else f",energy_j={energy_mj}e-3"
    peak = "" if memory is None else f",peak_mem_bytes={memory}i"
    return f"{head}gpu_s={gpu_ms}e-3{busy}{energy}{peak},{tail}{stamp}"


class GpuTags(NamedTuple):
    gpu_head: str  # `gpu,<tags> `
    tenant_head: str  # `tenant_usage,<tags but tenant>,tenant=`
    uuid_field: str  # `uuid="<uuid>",workloads=`

    @classmethod
    def of(cls, window: TelemetryWindow, gpu: GpuWindow) -> GpuTags:
        cluster, model, node = lineproto.tag(window.cluster), lineproto.tag(gpu.model), lineproto.tag(window.node)
        return cls(
            gpu_head=f"gpu,cluster={cluster},gpu={gpu.tag},model={model},node={node},uuid={lineproto.tag(gpu.uuid)} ",
            tenant_head=f"tenant_usage,cluster={cluster},gpu={gpu.tag},model={model},node={node},tenant=",
            uuid_field=f"uuid={lineproto.string_field(gpu.uuid)},workloads=",
        )


def _make_plan(tags: GpuTags, holder_keys: tuple[str, ...], parties: dict[str, tuple[str, str]]) -> GpuPlan:
    keys = tuple(sorted(parties)) or (UNALLOCATED,)
    # attribute.by_tenant: the UNALLOCATED share stays UNALLOCATED whatever the rules say
    tenant_of_key = {key: UNALLOCATED if key == UNALLOCATED else parties[key][0] for key in keys}
    tenants = sorted(set(tenant_of_key.values()))
    tenant_lines = []
    for tenant in tenants:
        pieces = [parties[key][1] for key in keys if key != UNALLOCATED and tenant_of_key[key] == tenant]
        head = f"{tags.tenant_head}{lineproto.tag_few(tenant)} "
        tenant_lines.append((head, f"{tags.uuid_field}{lineproto.workloads_json_field(pieces)} "))
    tenant_of_slot = tuple(tenants.index(tenant_of_key[key]) for key in keys)
    return GpuPlan(
        gpu_head=tags.gpu_head,
        keys=keys,
        holder_slots=tuple(keys.index(key) for key in holder_keys) if holder_keys else None,
        tenant_of_slot=tenant_of_slot,
        slot_of_tenant=tuple(tenant_of_slot.index(t) for t in range(len(tenants))) if len(tenants) == len(keys) else None,
        tenant_lines=tuple(tenant_lines),
    )
