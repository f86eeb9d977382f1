"""A telemetry window into `gpu` and `tenant_usage` lines, fast: what repeats is made once.

Pure: no I/O. The same GPUs come back every window with the same jobs, so everything about a
GPU-window except its numbers is worked out once and kept, as a `GpuPlan`: the tags of its lines,
which tenant each workload bills, the workloads text of each tenant line, and how holders merge
into workloads. Per window what is left is integer arithmetic and number formatting. Plans are
kept per node by GPU and by a number for each of its workloads' identities, new whenever one
changes, and dropped when the tenant rules change, so a changed job, identity or rule finds no
plan and gets a fresh one. What does not depend on the GPU (a `Sharing`) is made once per set of
workloads and shared by the plans of all GPUs that set holds.

The lines are those of lineproto.gpu_lines and lineproto.tenant_usage_line fed with
attribute.attribute() and attribute.by_tenant(), byte for byte (tests/unit/test_telemetry.py
checks it on random windows): those stay the readable definition, this is the fast path.
MIG instances take that definition's path (collector/pipeline.py), being few. Where
gpufleet._native is built, the per-window part (the `gpu` lines' numbers, the tenant split and its
lines) runs in C (gpufleet/native.c), which hands back to the Python here what it does not take.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import NamedTuple

from gpufleet.wire import GpuWindow, Holder, Rejected, TelemetryWindow, _native

from . import lineproto
from .attribute import UNALLOCATED, hamilton

_NS_PER_MS = 1_000_000
# Nodes, workload identities and plans kept; full means start over, every plan made again. A
# 200,000-GPU fleet keeps 275,000 of them (one job per GPU; the collector's core then holds ~380
# MiB, bench/memory.py) to 375,000 (1-3 workloads per GPU; ~760 MiB). The bound used to be
# 1 << 18, so such a fleet started over every window.
MAX_PLANS = 1 << 19
# A node whose jobs come and go piles up plans and identities of ended jobs: past this many a
# GPU it starts over alone, so that churn on some nodes does not fill MAX_PLANS for all.
KEPT_PER_GPU = 4
MAX_FORMATS = 256


class FieldFormat:
    """How the values of one field list become the field set of a `gpu` line: one `%` template
    for all fields, so that C does the formatting; integers as `42i`, the others as the wire
    integer and its decimal exponent (`312460e-3`), as lineproto.gpu_lines writes them.
    The template says `%s`, not `%d`: the values are ints (wire validation refuses anything else,
    bools too), which str() writes as %d does, a fifth faster. `native` writes whole lines the
    same way in C (gpufleet/native.c), several times faster; None where that is not built."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        plan, self.unknown = lineproto.field_plan(fields)
        self.energy_at = fields.index("energy_j") if "energy_j" in fields else None  # what attribution reads
        self.util_at = fields.index("util_gpu_pct") if "util_gpu_pct" in fields else None
        positions = tuple([pos for pos, _, _ in plan])
        self._positions = None if len(plan) == len(fields) else positions
        heads = tuple([f"{name}=" for _, name, _ in plan])
        suffixes = tuple([f"{lineproto.value_suffix(div)}," for _, _, div in plan])
        self._pieces = [f"{head}%s{suffix}" for head, suffix in zip(heads, suffixes)]
        self.native = None if _native is None else _native.LineFormat(heads, suffixes, positions)
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


class Sharing(NamedTuple):  # a NamedTuple: made for every changed job, and read field by field
    """How a GPU-window is split and billed, whatever the GPU: the same for every GPU that holds the
    same workloads (holders in the same order) with the same tenants, so a job on 8 GPUs makes one."""

    keys: tuple[str, ...]  # the workloads that share the window, sorted; (UNALLOCATED,) for nobody
    holder_slots: tuple[int, ...] | None  # each holder's position in keys; None: owners share equally
    # With two keys or more, each one held by one holder (none to merge): those holders in key
    # order, as itemgetter(*positions) picks them, in C.
    holders_in_key_order: Callable[[tuple[Holder, ...]], tuple[Holder, ...]] | None
    slots_of_tenant: tuple[tuple[int, ...], ...]  # per tenant, sorted: the positions of its keys
    tenant_texts: tuple[tuple[str, str], ...]  # per tenant, sorted: (`<tenant tag> `, `<workloads field> `)


class GpuPlan(NamedTuple):
    """What a GPU-window's lines need besides its numbers."""

    gpu_head: str  # `gpu,<tags> `
    sharing: Sharing
    # Per tenant, sorted: the pieces of its line but the numbers, (`tenant_usage,<tags but tenant>,tenant=`,
    # `<tenant tag> `, `uuid=..,workloads=`, `<workloads field> `). Strings shared with GpuTags and
    # Sharing, not joined here: joined, they took ~0.4-0.8 kB a GPU (bench/memory.py: 458 -> 382 MiB
    # at 200,000 GPUs), and joining them in the line's f-string costs nothing measurable.
    tenant_lines: tuple[tuple[str, str, str, str], ...]


_workload_of = itemgetter(0)  # Holder.workload, read in C


class _NodePlans:
    """One node's plans, kept by GPU (index, UUID, model) and the numbers of its holders or idle
    owners: each identity a workload key has on the node gets a number, a new one whenever it
    changes, so that a plan is found without looking at identities GPU by GPU."""

    __slots__ = ("identities", "issued", "numbers", "plans", "workloads")

    def __init__(self) -> None:
        self.workloads: dict[str, dict] = {}  # the last message's
        self.identities: dict[str, dict] = {}  # each workload key's last identity on the node
        self.numbers: dict[str, int] = {}  # and its number
        self.issued = 0  # numbers given so far
        self.plans: dict[tuple, GpuPlan] = {}

    def kept(self) -> int:
        """What this node adds to TelemetryLines._kept: itself, its identities and its plans."""
        return 1 + len(self.identities) + len(self.plans)

    def number(self, workloads: dict[str, dict]) -> int:
        """Number the identities of a message; how many keys are new. Identities passed wire
        validation (values str, int or None), so == is exact."""
        if workloads == self.workloads:  # the usual case, one comparison in C
            return 0
        self.workloads, new = workloads, 0
        for key, identity in workloads.items():
            if self.identities.get(key) != identity:
                new += key not in self.identities
                self.identities[key] = identity
                self.issued += 1
                self.numbers[key] = self.issued
        return new


# A workload's (tenant, JSON piece of the workloads field), made once per message or kept longer.
Party = Callable[[str, str], tuple[str, str]]  # (workload key, GPU UUID) -> (tenant, JSON piece)


class TelemetryLines:
    """Lines for the non-MIG GPUs of telemetry windows, with plans and formats kept across messages."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[str, str], _NodePlans] = {}
        self._kept = 0  # nodes, numbered identities and plans in _nodes: bounded by MAX_PLANS
        self._sharings: dict[tuple, Sharing] = {}
        self._tags: dict[tuple, GpuTags] = {}
        self._formats: dict[tuple[str, ...], FieldFormat] = {}

    def forget(self) -> None:
        """Drop the plans (tenant rules changed): they are kept by identity, and the rules say its tenant."""
        self._nodes, self._kept, self._sharings = {}, 0, {}

    def field_format(self, fields: tuple[str, ...]) -> FieldFormat:
        found = self._formats.get(fields)
        if found is None:
            found = FieldFormat(fields)
            if len(self._formats) >= MAX_FORMATS:
                self._formats = {}
            self._formats[fields] = found
        return found

    def plans(self, window: TelemetryWindow, party: Party) -> list[GpuPlan]:
        """A plan per GPU of the window, kept by node, GPU and the numbers of its workloads'
        identities (_NodePlans): the same identities have the same tenants and JSON, the rules
        being the same (forget()). Cheaper than asking every workload its tenant again."""
        if self._kept >= MAX_PLANS:
            self._nodes, self._kept = {}, 0
        node = self._nodes.get((window.cluster, window.node))
        if node is None or max(len(node.plans), len(node.identities)) > KEPT_PER_GPU * len(window.gpus):
            if node is not None:
                self._kept -= node.kept()
            node = self._nodes[(window.cluster, window.node)] = _NodePlans()
            self._kept += 1
        self._kept += node.number(window.workloads)
        if _native is not None:  # the same keys and lookups in C; the plans still to make here
            plans, missing = _native.find_plans(window.gpus, node.numbers, node.plans)
            for at, key in missing:
                found = node.plans.get(key)  # (a GPU listed twice finds the plan its first row made)
                if found is None:
                    found = node.plans[key] = self._new_plan(window, window.gpus[at], party)
                    self._kept += 1
                plans[at] = found
            return plans
        number_of = node.numbers.__getitem__
        plans = []
        for gpu in window.gpus:
            # A number stands for one workload key with one identity: the holders' numbers, in
            # order, say who shares the window; the owners' only when nothing ran.
            holders = tuple(map(number_of, map(_workload_of, gpu.holders)))
            idle_owners = () if holders else tuple(map(number_of, gpu.owners))
            key = (gpu.index, gpu.uuid, gpu.model, holders, idle_owners)
            found = node.plans.get(key)
            if found is None:
                found = node.plans[key] = self._new_plan(window, gpu, party)
                self._kept += 1
            plans.append(found)
        return plans

    def _new_plan(self, window: TelemetryWindow, gpu: GpuWindow, party: Party) -> GpuPlan:
        holder_keys = tuple(map(_workload_of, gpu.holders))
        idle_owners = () if holder_keys else gpu.owners  # they share the window only when nothing ran
        uuid = gpu.uuid
        parties = tuple([party(key, uuid) for key in holder_keys or idle_owners])
        return _gpu_plan(self._gpu_tags(window, gpu), self._sharing(holder_keys, idle_owners, parties))

    def _sharing(self, holder_keys: tuple[str, ...], idle_owners: tuple[str, ...], parties: tuple[tuple[str, str], ...]) -> Sharing:
        """The sharing of a GPU's window, kept apart from its plans: the other GPUs of a job find it made."""
        key = (holder_keys, idle_owners, parties)
        found = self._sharings.get(key)
        if found is None:
            found = _make_sharing(holder_keys, dict(zip(holder_keys or idle_owners, parties)))
            if len(self._sharings) >= MAX_PLANS:
                self._sharings = {}
            self._sharings[key] = found
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

    def gpu_lines(self, window_tail: str, plans: list[GpuPlan], fields: FieldFormat, gpus: tuple[GpuWindow, ...]) -> list[str]:
        if fields.native is not None:
            lines = fields.native.gpu_lines(plans, gpus, window_tail)
            if lines is not None:
                return lines
        return [f"{plan.gpu_head}{fields.fields(gpu.values)}{window_tail}" for plan, gpu in zip(plans, gpus)]

    def tenant_usage_lines(
        self, plans: list[GpuPlan], gpus: tuple[GpuWindow, ...], window_ms: int, fields: FieldFormat, stamp: str
    ) -> list[str]:
        """tenant_lines of every GPU of a window without MIG instances, in order: a GPU billed to
        one tenant (the usual case) in C where that is built (gpufleet/native.c), the others here."""
        energy_at, util_at = fields.energy_at, fields.util_at

        def split(plan: GpuPlan, gpu: GpuWindow) -> list[str]:
            energy_mj = gpu.values[energy_at] if energy_at is not None else None
            util_centi = gpu.values[util_at] if util_at is not None else None
            return self.tenant_lines(plan, gpu, window_ms, energy_mj, util_centi, stamp)

        if _native is not None:
            return _native.tenant_lines(
                plans, gpus, window_ms, -1 if energy_at is None else energy_at, -1 if util_at is None else util_at, stamp, split
            )
        return [line for plan, gpu in zip(plans, gpus) for line in split(plan, gpu)]

    def tenant_lines(
        self, plan: GpuPlan, gpu: GpuWindow, window_ms: int, energy_mj: int | None, util_centi: int | None, stamp: str
    ) -> list[str]:
        """The window split among the plan's workloads (attribute.attribute, in integers), summed
        per tenant (attribute.by_tenant), one line per tenant."""
        if energy_mj is not None and energy_mj < 0:
            raise Rejected("bad_value", f"GPU {gpu.index} energy_j {energy_mj} is negative")
        busy = None if util_centi is None else _busy_ms(window_ms, util_centi)
        sharing = plan.sharing
        if len(plan.tenant_lines) == 1:
            # One tenant: its workloads' shares add up to the totals exactly (Hamilton), so no split.
            holders = gpu.holders
            memory = holders[0][2] if len(holders) == 1 else _memory_total(sharing, holders)  # Holder.mem_bytes
            return [_tenant_line(plan.tenant_lines[0], window_ms, busy, energy_mj, memory, stamp)]
        gpu_ms, busy_ms, energy, memory = _split(sharing, gpu.holders, window_ms, busy, energy_mj)
        lines = []
        for texts, slots in zip(plan.tenant_lines, sharing.slots_of_tenant):
            if len(slots) == 1:
                [slot] = slots
                lines.append(_tenant_line(texts, gpu_ms[slot], busy_ms[slot], energy[slot], memory[slot], stamp))
            else:
                lines.append(_tenant_line(texts, *_tenant_total(slots, gpu_ms, busy_ms, energy, memory), stamp))
        return lines


def window_tail(window: TelemetryWindow) -> str:
    """What ends every `gpu` line of a window: its sequence number, length and timestamp."""
    window_s = (window.t1_ms - window.t0_ms) / 1000
    return f"seq={window.seq}i,window_s={window_s!r} {window.t0_ms * _NS_PER_MS}"


def _busy_ms(window_ms: int, util_centi: int) -> int:
    """attribute.busy_total(window_ms, util_centi / 100) in exact integers: window x util, half up."""
    util_centi = min(max(util_centi, 0), 10_000)
    return (2 * window_ms * util_centi + 10_000) // 20_000


Share = tuple[int, "int | None", "int | None", "int | None"]  # gpu_ms, busy_ms, energy_mj, peak_mem_bytes


def _memory_total(sharing: Sharing, holders: tuple[Holder, ...]) -> int | None:
    """The holders' memory added up, None without a reading: what by_tenant sums for one tenant."""
    if sharing.holder_slots is None:
        return None  # idle owners, or nobody: no memory reading
    present = [holder[2] for holder in holders if holder[2] is not None]  # Holder.mem_bytes
    return sum(present) if present else None


Column = Sequence["int | None"]  # a quantity per key of a Sharing


def _split(
    sharing: Sharing, holders: tuple[Holder, ...], window_ms: int, busy: int | None, energy_mj: int | None
) -> tuple[Column, Column, Column, Column]:
    """attribute.attribute's shares, as columns: gpu_ms, busy_ms, energy_mj and peak_mem_bytes per key."""
    weights, memory = _weights(sharing, holders)
    gpu_ms = hamilton(window_ms, weights)
    absent = (None,) * len(weights)
    if busy is None:
        busy_ms: Column = absent
    elif busy == 0 or busy == window_ms:  # idle, or busy throughout: no split needed
        busy_ms = gpu_ms if busy else [0] * len(weights)
    else:
        busy_ms = hamilton(busy, weights, caps=gpu_ms)
    energy = hamilton(energy_mj, weights) if energy_mj is not None else absent
    return gpu_ms, busy_ms, energy, memory


def _weights(sharing: Sharing, holders: tuple[Holder, ...]) -> tuple[Sequence[int], Sequence[int | None]]:
    """Each key's weight and memory, as attribute() finds them: holders merged per workload, SM
    shares if any, else memory, else equal. A holder without a reading counts 0."""
    count = len(sharing.keys)
    if sharing.holder_slots is None:
        return [1] * count, [None] * count  # idle owners, or nobody: equal shares, no memory reading
    if sharing.holders_in_key_order is not None:  # a holder per workload: nothing to merge
        _, sm, memory = zip(*sharing.holders_in_key_order(holders))  # (workload, sm_util_centi, mem_bytes)
        if None in sm:
            sm = [centi or 0 for centi in sm]
    else:
        sm = [0] * count
        memory = [None] * count
        for slot, (_, sm_util_centi, mem_bytes) in zip(sharing.holder_slots, holders):
            if sm_util_centi is not None:
                sm[slot] += sm_util_centi
            if mem_bytes is not None:
                before = memory[slot]
                memory[slot] = mem_bytes if before is None else before + mem_bytes
    if sum(sm) > 0:
        return sm, memory
    return [m or 0 for m in memory], memory


def _tenant_total(slots: tuple[int, ...], gpu_ms: Column, busy_ms: Column, energy: Column, memory: Column) -> Share:
    """attribute.by_tenant's sums over the keys at `slots`. busy_ms and energy_mj are the GPU's
    readings split, so absent for every key or for none; memory may be absent for some."""
    memory_present = [memory[slot] for slot in slots if memory[slot] is not None]
    return (
        sum([gpu_ms[slot] for slot in slots]),
        None if busy_ms[0] is None else sum([busy_ms[slot] for slot in slots]),
        None if energy[0] is None else sum([energy[slot] for slot in slots]),
        sum(memory_present) if memory_present else None,
    )


def _tenant_line(
    texts: tuple[str, str, str, str], gpu_ms: int, busy_ms: int | None, energy_mj: int | None, memory: int | None, stamp: str
) -> str:
    tags, tenant, uuid, workloads = texts
    # lineproto.tenant_usage_line's fields, thousandths written as `n e-3`
    if busy_ms is not None and energy_mj is not None and memory is not None:  # the usual case, in one piece
        return (
            f"{tags}{tenant}gpu_s={gpu_ms}e-3,busy_gpu_s={busy_ms}e-3,idle_gpu_s={gpu_ms - busy_ms}e-3,energy_j={energy_mj}e-3"
            f",peak_mem_bytes={memory}i,{uuid}{workloads}{stamp}"
        )
    busy = "" if busy_ms is None else f",busy_gpu_s={busy_ms}e-3,idle_gpu_s={gpu_ms - busy_ms}e-3"
    energy = "" if energy_mj is None else f",energy_j={energy_mj}e-3"
    peak = "" if memory is None else f",peak_mem_bytes={memory}i"
    return f"{tags}{tenant}gpu_s={gpu_ms}e-3{busy}{energy}{peak},{uuid}{workloads}{stamp}"


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


def _gpu_plan(tags: GpuTags, sharing: Sharing) -> GpuPlan:
    """A GPU's tags beside a sharing's texts."""
    tenant_lines = tuple([(tags.tenant_head, tenant, tags.uuid_field, workloads) for tenant, workloads in sharing.tenant_texts])
    return GpuPlan(tags.gpu_head, sharing, tenant_lines)


def _make_sharing(holder_keys: tuple[str, ...], parties: dict[str, tuple[str, str]]) -> Sharing:
    if len(parties) <= 1:
        return _sharing_of_one(holder_keys, *parties.items() or [(UNALLOCATED, (UNALLOCATED, ""))])
    keys = tuple(sorted(parties))
    # attribute.by_tenant: the UNALLOCATED share stays UNALLOCATED whatever the rules say
    tenant_of_key = [UNALLOCATED if key == UNALLOCATED else parties[key][0] for key in keys]
    tenants = sorted(set(tenant_of_key))
    slots_of_tenant: list[list[int]] = [[] for _ in tenants]
    for slot, tenant in enumerate(tenant_of_key):
        slots_of_tenant[tenants.index(tenant)].append(slot)
    tenant_texts = []
    for tenant, slots in zip(tenants, slots_of_tenant):
        pieces = [parties[keys[slot]][1] for slot in slots if keys[slot] != UNALLOCATED]
        tenant_texts.append((f"{lineproto.tag_few(tenant)} ", f"{lineproto.workloads_json_field(pieces)} "))
    holder_slots = tuple([keys.index(key) for key in holder_keys]) if holder_keys else None
    return Sharing(
        keys,
        holder_slots,
        _holders_in_key_order(holder_slots, len(keys)),
        tuple([tuple(slots) for slots in slots_of_tenant]),
        tuple(tenant_texts),
    )


def _sharing_of_one(holder_keys: tuple[str, ...], party: tuple[str, tuple[str, str]]) -> Sharing:
    """_make_sharing for one workload, the usual case (a GPU per job), or for nobody (UNALLOCATED)."""
    key, (tenant, piece) = party
    if key == UNALLOCATED:  # as in _make_sharing: a workload of that name stays UNALLOCATED, and unbilled
        tenant, pieces = UNALLOCATED, []
    else:
        pieces = [piece]
    texts = (f"{lineproto.tag_few(tenant)} ", f"{lineproto.workloads_json_field(pieces)} ")
    holder_slots = (0,) * len(holder_keys) if holder_keys else None
    return Sharing((key,), holder_slots, None, ((0,),), (texts,))


def _holders_in_key_order(holder_slots: tuple[int, ...] | None, count: int) -> Callable | None:
    """Sharing.holders_in_key_order: None with one key, or when a workload has several holders."""
    if count < 2 or holder_slots is None or len(holder_slots) != count:  # (every key is a holder's: counts tell)
        return None
    return itemgetter(*[holder_slots.index(slot) for slot in range(count)])
