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
import operator
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
    key_caps = None if caps is None else [caps[key] for key in keys]
    return dict(zip(keys, hamilton(total, [scaled[key] for key in keys], key_caps)))


def hamilton(total: int, weights: Sequence[int], caps: Sequence[int] | None = None) -> list[int]:
    """apportion on integer weights listed in key order; ties on the remainder go to the lower
    position, that is the smaller key. Lists and plain loops, not dicts or comprehensions: the
    collector calls this three times a GPU-window, mostly for two or three keys."""
    if len(weights) == 2:
        seats = _hamilton_pair(total, weights[0], weights[1], caps)
        if seats is not None:
            return seats
    elif len(weights) == 3:
        seats = _hamilton_three(total, weights[0], weights[1], weights[2], caps)
        if seats is not None:
            return seats
    whole = sum(weights)
    if whole == 0:
        weights, whole = [1] * len(weights), len(weights)
    seats, remainders = [], []
    for weight in weights:
        seat, remainder = divmod(total * weight, whole)  # remainders share the denominator `whole`
        seats.append(seat)
        remainders.append(remainder)
    # A cap below a key's whole seats is rare (never for busy_ms capped at gpu_ms): test before copying.
    if caps is not None and any(map(operator.gt, seats, caps)):
        seats = [min(seat, cap) for seat, cap in zip(seats, caps)]
    left = total - sum(seats)
    if left == 1:  # the usual case: the unit goes to the first largest remainder, if it has room
        first = remainders.index(max(remainders))
        if caps is None or seats[first] < caps[first]:
            seats[first] += 1
            return seats
    if left > 0:
        # Largest remainder first; sorted() is stable under reverse=True, so ties keep the lower position.
        order = sorted(range(len(weights)), key=remainders.__getitem__, reverse=True)
        if caps is None:
            for i in order[:left]:  # fewer units left than keys: one pass
                seats[i] += 1
        else:
            _hand_out(left, order, seats, caps)
    return seats


def _hamilton_pair(total: int, a: int, b: int, caps: Sequence[int] | None) -> list[int] | None:
    """hamilton for two keys: the remainders add up to the denominator times the units left, so at
    most one unit is left, and it goes to the larger remainder (the first key on a tie), or with
    `caps` to the other key when that one is full. None where caps cut a key below its whole
    seats, or leave the unit no room: the general path decides (and raises)."""
    whole = a + b
    if whole == 0:
        a, b, whole = 1, 1, 2
    seat_a, remainder_a = divmod(total * a, whole)
    seat_b, remainder_b = divmod(total * b, whole)
    if caps is None:
        room_a = room_b = True
    else:
        room_a, room_b = seat_a < caps[0], seat_b < caps[1]
        if seat_a > caps[0] or seat_b > caps[1]:
            return None
    if seat_a + seat_b < total:
        if room_a and (remainder_a >= remainder_b or not room_b):
            seat_a += 1
        elif room_b:
            seat_b += 1
        else:
            return None
    return [seat_a, seat_b]


def _hamilton_three(total: int, a: int, b: int, c: int, caps: Sequence[int] | None) -> list[int] | None:
    """hamilton for three keys: at most two units are left; one goes to the first largest
    remainder, two to all but the last smallest. None where caps cut a key below its whole seats
    or leave a unit's key full: the general path decides (and raises)."""
    whole = a + b + c
    if whole == 0:
        a, b, c, whole = 1, 1, 1, 3
    seat_a, remainder_a = divmod(total * a, whole)
    seat_b, remainder_b = divmod(total * b, whole)
    seat_c, remainder_c = divmod(total * c, whole)
    seats = [seat_a, seat_b, seat_c]
    left = total - seat_a - seat_b - seat_c
    if left == 1:
        if remainder_a >= remainder_b and remainder_a >= remainder_c:
            seats[0] += 1
        elif remainder_b >= remainder_c:
            seats[1] += 1
        else:
            seats[2] += 1
    elif left == 2:
        if remainder_c <= remainder_a and remainder_c <= remainder_b:
            seats[0] += 1
            seats[1] += 1
        elif remainder_b <= remainder_a:
            seats[0] += 1
            seats[2] += 1
        else:
            seats[1] += 1
            seats[2] += 1
    if caps is not None and (seats[0] > caps[0] or seats[1] > caps[1] or seats[2] > caps[2]):
        return None
    return seats


def _hand_out(left: int, order: Sequence[int], seats: list[int], caps: list[int]) -> None:
    # A capped key passes its unit to the next in line; go round again until all are given.
    while left > 0:
        given = 0
        for i in order:
            if left == 0:
                break
            if seats[i] < caps[i]:
                seats[i] += 1
                left -= 1
                given += 1
        if given == 0:
            raise ValueError("caps sum below the total")


def _integer_weights(weights: Mapping[str, Fraction | int]) -> dict[str, int]:
    """Exact weights on one integer scale: floats were made Fractions, so nothing is rounded."""
    if all(type(value) is int for value in weights.values()):
        return dict(weights)  # already on one integer scale (lcm of denominators 1): the hot path
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
    if type(window_ms) is int and type(util_gpu_pct) in (int, float):
        # The same exact sum in integers: util = n/d, so floor(w*n/(100 d) + 1/2) = (2wn + 100d) // 200d.
        n, d = util_gpu_pct.as_integer_ratio()
        n, d = (0, 1) if n < 0 else (100, 1) if n > 100 * d else (n, d)
        return (2 * window_ms * n + 100 * d) // (200 * d)
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
    fast = _integer_split(holders)
    if fast is None:  # a value of a type the integer path does not know: the Fraction path decides
        merged = merge_holders(holders)
        weights, memory = split_basis(merged)[1], {key: m.memory for key, m in merged.items()}
    else:
        weights, memory = fast
    if len(weights) == 1:
        # One workload takes the whole window: apportion would give it every unit (its busy cap,
        # window_ms, is never below busy), so skip it. The common case on a dedicated GPU.
        [key] = weights
        return [Share(key, window_ms, busy, energy_mj, memory[key])]
    keys = sorted(weights)
    scaled = _integer_weights({key: weights[key] for key in keys})  # ints already, but for Fractions
    units = [scaled[key] for key in keys]
    gpu = hamilton(window_ms, units)
    busy_split = hamilton(busy, units, caps=gpu) if busy is not None else None
    energy_split = hamilton(energy_mj, units) if energy_mj is not None else None
    return [
        Share(
            key,
            gpu[i],
            busy_split[i] if busy_split is not None else None,
            energy_split[i] if energy_split is not None else None,
            memory[key],
        )
        for i, key in enumerate(keys)
    ]


def _integer_split(holders: Iterable[Holder]) -> tuple[dict[str, int], dict[str, int | None]] | None:
    """merge_holders + split_basis without Fractions: (weights, memory) per workload, or None when
    an SM value is neither int, float nor None (then the Fraction path, which knows more types).

    A float is exactly n/d with d a power of two (float.as_integer_ratio), so every SM value is a
    whole multiple of 1/D, D the largest d: the sums on that scale are exact integers, in the same
    ratio as the Fraction sums. apportion gives the same seats for weights scaled by a constant."""
    parts: dict[str, list[tuple[int, int]]] = {}
    memory: dict[str, int | None] = {}
    scale = 1
    for key, sm, mem in holders:
        if not isinstance(key, str) or not key:
            raise ValueError(f"workload key must be a non-empty string, got {key!r}")
        kind = type(sm)
        if kind is float or kind is int:
            ratio = sm.as_integer_ratio() if math.isfinite(sm) and sm >= 0 else None
        elif sm is None:
            ratio = None
        else:
            return None
        samples = parts.setdefault(key, [])
        if ratio is not None:
            samples.append(ratio)
            scale = max(scale, ratio[1])
        memory[key] = _add(memory.get(key), _valid_memory(mem))
    sm_weights = {key: sum(n * (scale // d) for n, d in samples) for key, samples in parts.items()}
    if sum(sm_weights.values()) > 0:
        return sm_weights, memory
    memory_weights = {key: m or 0 for key, m in memory.items()}
    if sum(memory_weights.values()) > 0:
        return memory_weights, memory
    return {key: 1 for key in parts}, memory


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
    # Sums in plain lists, one TenantShare per tenant at the end: frozen dataclasses are slow to make.
    sums: dict[str, list] = {}  # tenant -> [gpu_ms, busy_ms, energy_mj, peak_mem_bytes]
    for share in shares:
        tenant = UNALLOCATED if share.workload_key == UNALLOCATED else tenant_of(share.workload_key)
        total = sums.get(tenant)
        if total is None:
            sums[tenant] = [0 + share.gpu_ms, share.busy_ms, share.energy_mj, share.peak_mem_bytes]
        else:
            total[0] += share.gpu_ms
            total[1] = _add(total[1], share.busy_ms)
            total[2] = _add(total[2], share.energy_mj)
            total[3] = _add(total[3], share.peak_mem_bytes)
    return [TenantShare(tenant, *sums[tenant]) for tenant in sorted(sums)]
