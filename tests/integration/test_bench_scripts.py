"""The benchmark scripts still run, on a tiny load: a change to the wire or the collector must not
leave the README's figures without a command that reproduces them. Nothing here checks speed
(the scripts print figures for people to compare); only that each finishes and says what it
measured, and that nothing was lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(script: str, *args: str, timeout_s: float = 180) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=timeout_s, cwd=BENCH
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_stages_prints_every_stage_and_the_wire_sizes():
    out = run_bench("stages.py", "--nodes", "2", "--windows", "2", "--repeat", "1")
    starts = [line.split(" µs")[0].rsplit(maxsplit=1)[0].strip() for line in out.splitlines() if " µs per GPU-window" in line]
    for stage in ("zlib inflate", "msgpack decode", "validation", "attribution", "line protocol", "hand-off", "total"):
        assert starts.count(stage) == 2, (stage, starts)  # for the dedicated and the shared fleet
    assert "gpufleet wire v2 (zlib MessagePack)" in out and "Prometheus text" in out


def test_memory_feeds_distinct_nodes_and_prints_the_state_per_gpu():
    out = run_bench("memory.py", "--nodes", "70", "--gpus-per-node", "2", "--windows", "2", "--shared")
    assert "70 nodes x 2 GPUs = 140 GPUs" in out and "B per GPU" in out and "write buffer at its bound" in out


@pytest.mark.services
def test_pipeline_stores_every_window_and_prints_the_ceiling_ratio():
    out = run_bench("pipeline.py", "--nodes", "4", "--gpus", "2", "--windows", "3", "--timeout", "60")
    assert "collector/ceiling" in out and "collector CPU" in out


@pytest.mark.services
def test_replay_soak_loses_nothing_on_a_small_fleet():
    out = run_bench("replay_soak.py", "--nodes", "4", "--interval", "2", "--duration", "6", "--drain", "30")
    assert "(lost 0)" in out and "windows never confirmed: 0" in out


@pytest.mark.services
def test_scaleout_splits_between_two_collectors_and_loses_nothing():
    out = run_bench("scaleout.py", "--collectors", "2", "--nodes", "4", "--windows", "3", timeout_s=240)
    assert "lost 0" in out


@pytest.mark.services
def test_reports_bench_checks_its_totals():
    out = run_bench("reports.py", "--gpus", "40", "--tenants", "4", "--days", "2", timeout_s=240)
    assert "reconciled: True" in out and "OK" in out and "--format pdf" in out
    assert "(JSON figures, CSV totals, HTML tile, PDF tile): all as loaded" in out
