"""Coverage-guided fuzzing of the collector's front door with atheris (libFuzzer). Not run in CI.

tests/unit/test_fuzz_wire.py runs a fixed budget of generated messages on every test run; this
harness runs for as long as you let it, steered by coverage of gpufleet's Python code, and keeps
a corpus of interesting inputs. The invariants are the same (its `Checked`): nothing escapes
Pipeline.handle, every message is counted once, accepted lines are valid line protocol of our schema.

    pip install atheris                      # wheels for CPython 3.11 on x86-64 Linux
    mkdir -p out/fuzz-corpus
    python bench/fuzz_wire.py out/fuzz-corpus -max_total_time=600
    python bench/fuzz_wire.py -runs=1 CRASH_FILE   # replay a finding

A finding prints a `replay:` line with the topic and payload to paste into a unit test.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `tests.` when run as a script

with atheris.instrument_imports(include=["gpufleet"]):
    from gpufleet import wire
    from tests.unit.test_fuzz_wire import NOW, Checked

KINDS = ("telemetry", "events", "state")
checked = Checked()


def seeds() -> list[bytes]:
    """Valid messages of each kind, so that the fuzzer starts past the MessagePack parser."""
    gpu = wire.GpuWindow(0, "GPU-0", "NVIDIA H100", (312460, 3124600, 5000), (wire.Holder("slurm:1", 9000, 1 << 30),), ("slurm:1",))
    window = wire.TelemetryWindow(
        "c1", "n1", 1, NOW - 1000, NOW, ("power_w", "energy_j", "util_gpu_pct"), (gpu,),
        {"slurm:1": {"kind": "slurm_job", "job": "1", "account": "lab-a"}},
    )
    event = wire.GpuEventMessage("c1", "n1", NOW, 0, "GPU-0", "xid", 79, "fell off the bus")
    state = wire.NodeState("c1", "n1", "online", NOW)
    return [
        bytes([0]) + wire.encode_telemetry(window),
        bytes([1]) + wire.encode_event(event),
        bytes([2]) + wire.encode_state(state),
    ]


def one_input(data: bytes) -> None:
    """First byte: the message kind (topic gpufleet/v1/c1/n1/<kind>); the rest: the payload."""
    if not data:
        return
    checked(f"gpufleet/v1/c1/n1/{KINDS[data[0] % 3]}", data[1:])


def main() -> None:
    corpus = next((Path(a) for a in sys.argv[1:] if not a.startswith("-") and Path(a).is_dir()), None)
    if corpus is not None and not any(corpus.iterdir()):
        for i, seed in enumerate(seeds()):
            (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup(sys.argv, one_input)
    started = time.monotonic()
    try:
        atheris.Fuzz()
    finally:
        print(f"{checked.messages} messages in {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
