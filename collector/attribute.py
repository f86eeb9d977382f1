"""Split one GPU's window among the workloads that held it, so that the books balance.

Pure: numbers in, integer shares out. One call covers one GPU, or one MIG instance, for one
window. Every total is split with the largest-remainder (Hamilton) method, so the integer shares
of gpu_ms, busy_ms and energy_mj add up to their totals exactly, whatever the rounding: a tenant's
bill and the node's meter never disagree by a millisecond or a millijoule.

Weights, per workload (holders with the same key are merged first):
  1. SM utilisation, when NVML gave per-process samples and they sum above 0. A holder without
     a sample counts 0: NVML leaves out processes that were not active in the period.
  2. else used memory, when it sums above 0 (a holder without a reading counts 0),
  3. else equal.
A holder never gets less than a holder with a strictly smaller weight (Hamilton's quota
property), and ties on the remainder go to the smaller key, so the same input gives the same bill.

busy_ms is the GPU's busy time (window x util_gpu%) split by the same weights, with each holder's
busy_ms capped at its own gpu_ms: plain Hamilton on two totals can round one holder's busy up and
its gpu time down (the Alabama paradox), which would bill more busy than held time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, TypeVar

UNALLOCATED = "unallocated"  # the key (and tenant) of a window nobody held

Holder = tuple[str, float | None, int | None]  # (workload_key, sm_util_pct, used_memory_bytes)
Basis = Literal["sm", "memory", "equal"]
_N = TypeVar("_N", int, Fraction)


@dataclass(frozen=True, slots=True)
class Share:
    workload_key: str
    gpu_ms: int  # held time
    busy_ms: int | None  # held time the GPU was busy; None when util_gpu is unsupported
    energy_mj: int | None  # None when the energy counter is unsupported
    peak_mem_bytes: int | None  # sum of the workload's processes' peaks; None when unknown


@dataclass(frozen=True, slots=True)
class TenantShare:
    tenant: str
    gpu_ms: int
    busy_ms: int | None
    energy_mj: int | None
    peak_mem_bytes: int | None  # sum over the merged shares: an upper bound of the true peak


# --- apportionment ---------------------------------------------------------------------------


def apportion(
    total: int, weights: Mapping[str, Fraction | int], caps: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Split `total` units in proportion to `weights`, exactly (largest remainder, Hamilton).

    Each key first gets the floor of its quota total*w/W; the units left over (fewer than the
    number of keys) go one each by largest remainder, ties to the smaller key. All-zero weights
    split equally. With `caps`, no key goes above its cap (sum(caps) must reach total); a
    capped key passes its unit to the next in line."""
    if not weights:
        raise ValueError("nothing to apportion among")
    keys = sorted(weights)
    scaled = _integer_weights({key: weights[key] for key in keys})
    whole = sum(scaled.values())
    if whole == 0:
        scaled, whole = {key: 1 for key in keys}, len(keys)
    seats = {key: total * scaled[key] // whole for key in keys}
    remainders = {key: total * scaled[key] % whole for key in keys}  # shared denominator `whole`
    if caps is not None:
        seats = {key: min(seats[key], caps[key]) for key in keys}
    order = sorted(keys, key=lambda key: (-remainders[key], key))
    _hand_out(total - sum(seats.values()), order, seats, caps)
    return seats


def _hand_out(left: int, order: Sequence[str], seats: dict[str, int], caps: Mapping[str, int] | None) -> None:
    # Without caps one pass suffices (left < len(order)); with caps, go round again until done.
    while left > 0:
        given = 0
        for key in order:
            if left == 0:
                break
            if caps is None or seats[key] < caps[key]:
                seats[key] += 1
                left -= 1
                given += 1
        if given == 0:
            raise ValueError("caps sum below the total")


def _integer_weights(weights: Mapping[str, Fraction | int]) -> dict[str, int]:
    """Exact weights on one integer scale: floats were made Fractions, so nothing is rounded."""
    fractions = {key: Fraction(value) for key, value in weights.items()}
    scale = math.lcm(*(f.denominator for f in fractions.values()))
    return {key: int(f * scale) for key, f in fractions.items()}


# --- weights ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Merged:  # one workload's processes on this GPU, added up; None: no process had a reading
    sm: Fraction | None
    memory: int | None


def merge_holders(holders: Iterable[Holder]) -> dict[str, Merged]:
    """One entry per workload: its processes' SM shares and memory added up."""
    merged: dict[str, Merged] = {}
    for key, sm, memory in holders:
        if not isinstance(key, str) or not key:
            raise ValueError(f"workload key must be a non-empty string, got {key!r}")
        before = merged.get(key, Merged(None, None))
        merged[key] = Merged(_add(before.sm, _valid_sm(sm)), _add(before.memory, _valid_memory(memory)))
    return merged


def _valid_sm(value: float | None) -> Fraction | None:
    # NaN, infinities and negative values are broken samples, not shares: treat as absent.
    if value is None or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        return None
    return Fraction(value)


def _valid_memory(value: int | None) -> int | None:
    if value is None or isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _add(a: _N | None, b: _N | None) -> _N | None:
    """A sum where None means "no reading": absent plus absent stays absent."""
    if a is None:
        return b
    return a if b is None else a + b


def split_basis(merged: Mapping[str, Merged]) -> tuple[Basis, dict[str, Fraction | int]]:
    """Which weights split this window, and their values per workload."""
    sm = {key: m.sm or 0 for key, m in merged.items()}
    if sum(sm.values()) > 0:
        return "sm", sm
    memory = {key: m.memory or 0 for key, m in merged.items()}
    if sum(memory.values()) > 0:
        return "memory", memory
    return "equal", {key: 1 for key in merged}


def holder_weights(holders: Iterable[Holder]) -> tuple[Basis, dict[str, Fraction | int]]:
    return split_basis(merge_holders(holders))


# --- one window ------------------------------------------------------------------------------


def busy_total(window_ms: int, util_gpu_pct: float | None) -> int | None:
    """window x util / 100 in whole ms, half rounded up; util outside 0..100 is clamped."""
    if util_gpu_pct is None or isinstance(util_gpu_pct, bool) or not math.isfinite(util_gpu_pct):
        return None
    util = min(max(Fraction(util_gpu_pct), Fraction(0)), Fraction(100))
    return math.floor(window_ms * util / 100 + Fraction(1, 2))


def attribute(
    window_ms: int,
    energy_mj: int | None,
    util_gpu_pct: float | None,
    holders: Sequence[Holder],
    idle_owners: Sequence[str] = (),
) -> list[Share]:
    """The window's shares, one per workload, sorted by key.

    `holders` are the processes NVML saw; `idle_owners` the workloads the job mapping says hold
    this GPU, used only when no process ran on it (allocated but idle GPUs are still paid for).
    With neither, the whole window goes to UNALLOCATED."""
    _check_total("window_ms", window_ms)
    if energy_mj is not None:
        _check_total("energy_mj", energy_mj)
    if not holders:
        holders = [(key, None, None) for key in idle_owners]
    busy = busy_total(window_ms, util_gpu_pct)
    if not holders:
        return [Share(UNALLOCATED, window_ms, busy, energy_mj, None)]
    merged = merge_holders(holders)
    _, weights = split_basis(merged)
    gpu = apportion(window_ms, weights)
    busy_split = apportion(busy, weights, caps=gpu) if busy is not None else None
    energy_split = apportion(energy_mj, weights) if energy_mj is not None else None
    return [
        Share(
            key,
            gpu[key],
            busy_split[key] if busy_split is not None else None,
            energy_split[key] if energy_split is not None else None,
            merged[key].memory,
        )
        for key in sorted(merged)
    ]


def _check_total(name: str, value: int) -> None:
    # A negative window or energy is a bug upstream (a counter reset must arrive as None or 0):
    # fail loudly rather than bill a negative amount.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


# --- tenants ---------------------------------------------------------------------------------


def by_tenant(shares: Iterable[Share], tenant_of: Callable[[str], str]) -> list[TenantShare]:
    """Merge workload shares into tenant shares, sorted by tenant. Sums stay exact: each
    total over tenants equals the total over the shares given. UNALLOCATED stays UNALLOCATED.
    Shares from several GPUs or windows may be mixed; a None is left out of a sum, and a sum of
    nothing but None stays None."""
    merged: dict[str, TenantShare] = {}
    for share in shares:
        tenant = UNALLOCATED if share.workload_key == UNALLOCATED else tenant_of(share.workload_key)
        before = merged.get(tenant, TenantShare(tenant, 0, None, None, None))
        merged[tenant] = TenantShare(
            tenant,
            before.gpu_ms + share.gpu_ms,
            _add(before.busy_ms, share.busy_ms),
            _add(before.energy_mj, share.energy_mj),
            _add(before.peak_mem_bytes, share.peak_mem_bytes),
        )
    return [merged[tenant] for tenant in sorted(merged)]
