"""Attribution: exact examples, then hypothesis properties that the books always balance."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.collector.attribute import (
    UNALLOCATED,
    Share,
    TenantShare,
    apportion,
    attribute,
    busy_total,
    by_tenant,
    holder_weights,
)

# --- exact examples ------------------------------------------------------------------------


def test_split_by_sm_share() -> None:
    shares = attribute(1000, 10_000, 62.5, [("a", 50.0, 1 << 30), ("b", 30.0, None), ("c", 20, 5)])
    assert shares == [
        Share("a", 500, 313, 5000, 1 << 30),  # busy 625: 312.5 / 187.5 / 125, the tie goes to "a"
        Share("b", 300, 187, 3000, None),
        Share("c", 200, 125, 2000, 5),
    ]


def test_equal_split_remainder_goes_to_smallest_key() -> None:
    shares = attribute(1000, 100, None, [("c", None, None), ("b", None, None), ("a", None, None)])
    assert [(s.workload_key, s.gpu_ms, s.busy_ms, s.energy_mj) for s in shares] == [
        ("a", 334, None, 34),
        ("b", 333, None, 33),
        ("c", 333, None, 33),
    ]


def test_memory_share_when_no_sm_samples() -> None:
    shares = attribute(1000, 4000, 100.0, [("a", None, 3 << 30), ("b", None, 1 << 30)])
    assert [(s.gpu_ms, s.busy_ms, s.energy_mj) for s in shares] == [(750, 750, 3000), (250, 250, 1000)]


def test_memory_share_when_sm_samples_are_all_zero() -> None:
    assert holder_weights([("a", 0.0, 300), ("b", 0, 100)])[0] == "memory"
    assert [s.gpu_ms for s in attribute(400, None, None, [("a", 0.0, 300), ("b", 0, 100)])] == [300, 100]


def test_equal_when_nothing_is_known() -> None:
    assert holder_weights([("a", None, None), ("b", 0.0, 0)]) == ("equal", {"a": 1, "b": 1})
    assert [s.gpu_ms for s in attribute(3, 0, 0.0, [("a", None, None), ("b", 0.0, 0)])] == [2, 1]


def test_holder_without_sm_sample_was_idle_when_others_have_samples() -> None:
    shares = attribute(1000, 900, 40.0, [("a", 40.0, 100), ("b", None, 200)])
    assert shares == [Share("a", 1000, 400, 900, 100), Share("b", 0, 0, 0, 200)]


def test_broken_sm_samples_are_ignored() -> None:
    basis, weights = holder_weights([("a", float("nan"), None), ("b", -3.0, None), ("c", float("inf"), None), ("d", 10.0, None)])
    assert (basis, weights) == ("sm", {"a": 0, "b": 0, "c": 0, "d": Fraction(10)})


def test_processes_of_one_workload_are_merged() -> None:
    shares = attribute(1000, None, None, [("slurm:42", 10.0, 100), ("slurm:43", 30.0, 50), ("slurm:42", 20.0, 200)])
    assert shares == [Share("slurm:42", 500, None, None, 300), Share("slurm:43", 500, None, None, 50)]


def test_nobody_holds_the_gpu() -> None:
    assert attribute(60_000, 1_234_567, 12.5, []) == [Share(UNALLOCATED, 60_000, 7500, 1_234_567, None)]


def test_allocated_but_idle_gpu_goes_to_its_job() -> None:
    assert attribute(60_000, 500_000, 0.0, [], idle_owners=["slurm:42"]) == [Share("slurm:42", 60_000, 0, 500_000, None)]
    assert attribute(10, 7, 100.0, [], idle_owners=["slurm:2", "slurm:1"]) == [
        Share("slurm:1", 5, 5, 4, None),
        Share("slurm:2", 5, 5, 3, None),
    ]


def test_processes_win_over_the_job_mapping() -> None:
    assert [s.workload_key for s in attribute(10, None, None, [("uid:5", 1.0, None)], idle_owners=["slurm:42"])] == ["uid:5"]


def test_energy_none_or_zero_after_a_counter_reset() -> None:
    assert [s.energy_mj for s in attribute(1000, None, 50.0, [("a", 1.0, None), ("b", 3.0, None)])] == [None, None]
    assert [s.energy_mj for s in attribute(1000, 0, 50.0, [("a", 1.0, None), ("b", 3.0, None)])] == [0, 0]


def test_busy_never_exceeds_held_time_even_where_plain_hamilton_would() -> None:
    # Weights and totals where independent Hamilton splits give holder "e" 14 busy ms of 13 held.
    holders = [(k, float(w), None) for k, w in zip("abcde", [76, 63, 5, 84, 12])]
    shares = attribute(274, None, 272 / 274 * 100, holders)
    assert [s.gpu_ms for s in shares] == [87, 72, 6, 96, 13]
    assert [s.busy_ms for s in shares] == [86, 72, 6, 95, 13]


def test_busy_total_rounds_half_up_and_clamps() -> None:
    assert busy_total(3, 50.0) == 2
    assert busy_total(1000, 150.0) == 1000
    assert busy_total(1000, -5.0) == 0
    assert busy_total(1000, float("nan")) is None
    assert busy_total(1000, None) is None


def test_huge_values_stay_exact() -> None:
    window, energy = 2**50 + 1, 2**63 - 1
    shares = attribute(window, energy, 33.3, [("a", 1e-300, 2**60), ("b", 99.999999, 1), ("c", 7.0, None)])
    assert sum(s.gpu_ms for s in shares) == window
    assert sum(s.energy_mj for s in shares) == energy
    assert sum(s.busy_ms for s in shares) == busy_total(window, 33.3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, None, None, []), "window_ms"),
        ((1.5, None, None, []), "window_ms"),
        ((10, -1, None, []), "energy_mj"),
        ((10, None, None, [("", 1.0, None)]), "workload key"),
    ],
)
def test_caller_errors(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        attribute(*args)


def test_apportion_examples() -> None:
    assert apportion(10, {"x": 1, "y": 1, "z": 1}) == {"x": 4, "y": 3, "z": 3}
    assert apportion(7, {"x": 0, "y": 0}) == {"x": 4, "y": 3}
    assert apportion(5, {"x": Fraction(1, 3), "y": Fraction(2, 3)}) == {"x": 2, "y": 3}
    assert apportion(4, {"x": 1, "y": 1}, caps={"x": 1, "y": 10}) == {"x": 1, "y": 3}
    with pytest.raises(ValueError):
        apportion(5, {"x": 1}, caps={"x": 4})
    with pytest.raises(ValueError):
        apportion(5, {})


def test_by_tenant_merges_and_keeps_unallocated() -> None:
    shares = [
        Share("slurm:1", 100, 50, 10, 7),
        Share("slurm:2", 200, 20, None, None),
        Share("uid:0", 300, 0, 5, 3),
        Share(UNALLOCATED, 400, None, 1, None),
    ]
    tenants = {"slurm:1": "lab-a", "slurm:2": "lab-a", "uid:0": "ops"}
    assert by_tenant(shares, tenants.__getitem__) == [
        TenantShare("lab-a", 300, 70, 10, 7),
        TenantShare("ops", 300, 0, 5, 3),
        TenantShare(UNALLOCATED, 400, None, 1, None),
    ]


# --- properties ----------------------------------------------------------------------------

KEYS = [f"k{i}" for i in range(25)]

sm_values = st.one_of(
    st.none(),
    st.floats(min_value=0, max_value=100, allow_nan=False),
    st.integers(min_value=0, max_value=100),
    st.sampled_from([0.0, 0, float("nan"), -1.0, 1e-300, 100.0]),
)
mem_values = st.one_of(st.none(), st.integers(min_value=0, max_value=2**45), st.just(0))
holder = st.tuples(st.sampled_from(KEYS), sm_values, mem_values)
holders_st = st.lists(holder, min_size=0, max_size=20)
unique_holders_st = st.lists(holder, min_size=0, max_size=20, unique_by=lambda h: h[0])
window_st = st.one_of(st.integers(min_value=0, max_value=10**7), st.integers(min_value=0, max_value=2**62))
energy_st = st.one_of(st.none(), st.just(0), st.integers(min_value=0, max_value=2**63))
util_st = st.one_of(st.none(), st.floats(min_value=-10, max_value=200), st.just(float("nan")), st.integers(0, 100))


def check_balances(window: int, energy: int | None, util: float | None, holders: list, shares: list[Share]) -> None:
    keys = [s.workload_key for s in shares]
    assert keys == sorted(set(keys))
    assert sum(s.gpu_ms for s in shares) == window
    busy = busy_total(window, util)
    if busy is None:
        assert all(s.busy_ms is None for s in shares)
    else:
        assert sum(s.busy_ms for s in shares) == busy
        assert all(0 <= s.busy_ms <= s.gpu_ms for s in shares)
    if energy is None:
        assert all(s.energy_mj is None for s in shares)
    else:
        assert sum(s.energy_mj for s in shares) == energy
        assert all(s.energy_mj >= 0 for s in shares)
    assert all(s.gpu_ms >= 0 for s in shares)
    if not holders:
        assert keys == [UNALLOCATED]
    else:
        assert set(keys) == {h[0] for h in holders}


@settings(max_examples=400)
@given(window_st, energy_st, util_st, holders_st)
def test_books_balance(window: int, energy: int | None, util: float | None, holders: list) -> None:
    check_balances(window, energy, util, holders, attribute(window, energy, util, holders))


@settings(max_examples=400)
@given(window_st, energy_st, util_st, unique_holders_st)
def test_larger_weight_never_gets_less(window: int, energy: int | None, util: float | None, holders: list) -> None:
    shares = {s.workload_key: s for s in attribute(window, energy, util, holders)}
    _, weights = holder_weights(holders)
    for a in weights:
        for b in weights:
            if weights[a] > weights[b]:
                assert shares[a].gpu_ms >= shares[b].gpu_ms
                assert (shares[a].busy_ms or 0) >= (shares[b].busy_ms or 0)
                assert (shares[a].energy_mj or 0) >= (shares[b].energy_mj or 0)


@settings(max_examples=300)
@given(window_st, energy_st, util_st, unique_holders_st.filter(bool))
def test_each_share_is_within_one_unit_of_its_exact_quota(window: int, energy: int | None, util: float | None, holders: list) -> None:
    shares = {s.workload_key: s for s in attribute(window, energy, util, holders)}
    _, weights = holder_weights(holders)
    whole = sum(Fraction(w) for w in weights.values())
    busy = busy_total(window, util)
    for key, w in weights.items():
        share = Fraction(w) / whole
        assert abs(shares[key].gpu_ms - window * share) < 1
        if energy is not None:
            assert abs(shares[key].energy_mj - energy * share) < 1
        if busy is not None:
            assert abs(shares[key].busy_ms - busy * share) <= 1  # the cap may move one unit on


@given(window_st, energy_st, util_st, holders_st, st.randoms(use_true_random=False))
def test_holder_order_does_not_matter(window: int, energy: int | None, util: float | None, holders: list, rnd) -> None:
    shuffled = list(holders)
    rnd.shuffle(shuffled)
    assert attribute(window, energy, util, holders) == attribute(window, energy, util, shuffled)


@given(st.lists(st.tuples(window_st, energy_st, util_st, holders_st), min_size=1, max_size=7))
def test_mig_instances_each_balance(instances: list) -> None:
    # A MIG GPU is attributed one instance at a time, each with its own window, energy and holders.
    for window, energy, util, holders in instances:
        check_balances(window, energy, util, holders, attribute(window, energy, util, holders))


@given(window_st, energy_st, util_st, holders_st, st.lists(st.sampled_from(KEYS), max_size=3))
def test_idle_owners_take_the_window_only_without_processes(window, energy, util, holders, owners) -> None:
    shares = attribute(window, energy, util, holders, idle_owners=owners)
    expected = {h[0] for h in holders} or set(owners) or {UNALLOCATED}
    assert {s.workload_key for s in shares} == expected
    assert sum(s.gpu_ms for s in shares) == window


@given(
    st.lists(st.tuples(window_st, energy_st, util_st, holders_st), min_size=1, max_size=5),
    st.dictionaries(st.sampled_from(KEYS), st.sampled_from(["lab-a", "lab-b", "ops"])),
)
def test_tenant_totals_equal_workload_totals(windows: list, tenant_map: dict) -> None:
    shares = [s for w in windows for s in attribute(*w)]
    tenants = by_tenant(shares, lambda key: tenant_map.get(key, "default-tenant"))
    assert [t.tenant for t in tenants] == sorted({t.tenant for t in tenants})

    def total(items, field):  # None-aware, as by_tenant sums
        values = [getattr(i, field) for i in items if getattr(i, field) is not None]
        return sum(values) if values else None

    for field in ("gpu_ms", "busy_ms", "energy_mj", "peak_mem_bytes"):
        assert total(tenants, field) == total(shares, field)


@given(st.integers(min_value=0, max_value=2**64), st.dictionaries(st.sampled_from(KEYS), st.integers(0, 2**40), min_size=1))
def test_apportion_balances_and_respects_quota(total: int, weights: dict) -> None:
    seats = apportion(total, weights)
    assert sum(seats.values()) == total
    whole = sum(weights.values())
    for key, w in weights.items():
        quota = Fraction(total * w, whole) if whole else Fraction(total, len(weights))
        assert abs(seats[key] - quota) < 1


@given(st.integers(0, 10**9), st.integers(0, 10**6), st.integers(0, 10**6))
def test_the_two_key_shortcut_is_hamilton(total: int, a: int, b: int) -> None:
    from gpufleet.collector.attribute import _hand_out, hamilton

    whole = a + b or 2
    weights = [a, b] if a + b else [1, 1]
    seats = [total * w // whole for w in weights]
    remainders = [total * w % whole for w in weights]
    _hand_out(total - sum(seats), sorted(range(2), key=lambda i: (-remainders[i], i)), seats, [total, total])
    assert hamilton(total, [a, b]) == seats


def textbook_hamilton(total: int, weights: list[int], caps: list[int] | None = None) -> list[int]:
    """Largest remainder in its plainest form, without hamilton's shortcuts: floors (capped), then
    one unit at a time by remainder, ties to the lower position, skipping full keys round after
    round; ValueError when the caps cannot hold the total."""
    if sum(weights) == 0:
        weights = [1] * len(weights)
    whole = sum(weights)
    seats = [total * w // whole for w in weights]
    if caps is not None:
        seats = [min(seat, cap) for seat, cap in zip(seats, caps)]
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    left = total - sum(seats)
    while left > 0:
        open_keys = [i for i in order if caps is None or seats[i] < caps[i]]
        if not open_keys:
            raise ValueError("caps sum below the total")
        for i in open_keys[:left]:
            seats[i] += 1
        left = total - sum(seats)
    return seats


@settings(max_examples=500)
@given(st.data())
def test_hamilton_with_its_shortcuts_is_the_textbook_method(data: st.DataObject) -> None:
    from gpufleet.collector.attribute import hamilton

    weights = data.draw(st.lists(st.integers(0, 10**6) | st.sampled_from([0, 1, 7]), min_size=1, max_size=5))
    total = data.draw(st.integers(0, 10**9) | st.integers(0, 20))
    # Caps as the collector gives them (busy ms under each key's own gpu ms), and others near the
    # seats: some below a key's whole seats, some not enough for the total (far ones only take
    # long, one unit a round).
    gpu = textbook_hamilton(total, weights)
    near = st.tuples(*[st.integers(max(0, seat - 2), seat + 2) for seat in gpu]).map(list)
    caps = data.draw(st.sampled_from([None, gpu]) | near)
    if caps is gpu:
        total = data.draw(st.integers(0, total))
    try:
        expected = textbook_hamilton(total, weights, caps)
    except ValueError:
        with pytest.raises(ValueError):
            hamilton(total, weights, caps)
        return
    assert hamilton(total, weights, caps) == expected
