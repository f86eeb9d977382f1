"""GPUs given to a workload that has no process on them (yet, or any more).

A Slurm job that holds four GPUs but computes on one still pays for four. NVML cannot see the
idle three; the scheduler can. Two sources say who holds a GPU:

1. A job-mapping directory, the convention of dcgm-exporter's `--hpc-job-mapping-dir`: a Slurm
   prolog writes one file per GPU, named by GPU index (`0`, `1`, ...) or UUID (`GPU-...`,
   `MIG-...`), holding the job id(s), one per line; the epilog removes it. We take the first
   word of each line, so Princeton jobstats' `<jobid> <uid>` lines read the same, and a line
   that is already a workload key (`k8s:<pod uid>`, `unit:x.service`) is taken as one.
2. A static map from the agent's config: `{gpu index or uuid: workload key or [keys]}`.

A missing directory or an unreadable file is a normal state (no jobs, a prolog mid-write):
it gives no holders and is reported once per distinct problem, counted every time.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from .identity import Identity, identity_from_key, workload_key

log = logging.getLogger(__name__)

Reporter = Callable[[str, str], None]  # (problem, detail) -> None
GpuRef = tuple[int, str]  # (NVML index, UUID)
StaticMap = Mapping[str | int, str | Sequence[str]]  # GPU index or UUID -> workload key(s)

_JOB_ID = re.compile(r"[0-9A-Za-z_.+-]{1,64}")  # 42, 42_7 (array), 42+1 (het job)
MAX_FILE_BYTES = 64 * 1024  # a prolog writes a few ids; anything bigger is not a job map


class ReportOnce:
    """Counts every problem, logs each distinct (problem, detail) once: this runs every window,
    and one missing directory must not fill the journal."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.counts: Counter[str] = Counter()
        self._seen: set[tuple[str, str]] = set()
        self._log = logger

    def __call__(self, problem: str, detail: str) -> None:
        self.counts[problem] += 1
        if (problem, detail) not in self._seen:
            self._seen.add((problem, detail))
            self._log.warning("job mapping: %s: %s", problem, detail)


default_reporter = ReportOnce()


def parse_job_file(text: str) -> tuple[list[Identity], list[str]]:
    """The holders one mapping file names, and the lines it could not read."""
    holders, bad = [], []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        holder = _holder(words[0])
        if holder is None:
            bad.append(line)
        else:
            holders.append(holder)
    return holders, bad


def _holder(word: str) -> Identity | None:
    if ":" in word:
        try:
            return identity_from_key(word)
        except ValueError:
            return None
    if _JOB_ID.fullmatch(word):
        return {"pid": None, "kind": "slurm_job", "job": word, "step": None}
    return None


def static_job_mapping(static: StaticMap, gpus: Sequence[GpuRef]) -> dict[int, list[Identity]]:
    """The config's map, keyed by GPU index. TOML keys are strings, so "0" means index 0.
    Raises ValueError for a bad workload key: config is checked at start, not skipped."""
    by_ref = {_ref_key(ref): keys for ref, keys in static.items()}
    mapping: dict[int, list[Identity]] = {}
    for index, uuid in gpus:
        for ref in (str(index), uuid):
            keys = by_ref.get(ref, ())
            for key in [keys] if isinstance(keys, str) else keys:
                mapping.setdefault(index, []).append(identity_from_key(key))
    return {index: _unique(holders) for index, holders in mapping.items()}


def _ref_key(ref: str | int) -> str:
    return str(ref).strip()


def read_job_mapping(
    directory: str | os.PathLike[str] | None,
    gpus: Sequence[GpuRef],
    static: StaticMap | None = None,
    report: Reporter | None = None,
) -> dict[int, list[Identity]]:
    """GPU index -> the workloads holding it (identities with pid None), for the GPUs given.
    GPUs nobody holds are absent. Directory entries come first, then the static map; a
    workload named twice for one GPU appears once."""
    report = report or default_reporter
    mapping = _read_directory(Path(directory), gpus, report) if directory is not None else {}
    for index, holders in static_job_mapping(static or {}, gpus).items():
        mapping.setdefault(index, []).extend(holders)
    return {index: _unique(holders) for index, holders in sorted(mapping.items())}


def _read_directory(directory: Path, gpus: Sequence[GpuRef], report: Reporter) -> dict[int, list[Identity]]:
    if not directory.is_dir():
        report("missing_dir", str(directory))
        return {}
    mapping: dict[int, list[Identity]] = {}
    for index, uuid in gpus:
        for name in (str(index), uuid):
            holders = _read_file(directory / name, report)
            if holders:
                mapping.setdefault(index, []).extend(holders)
    return mapping


def _read_file(path: Path, report: Reporter) -> list[Identity]:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return []  # this GPU is not mapped: the common case, not a problem
    except OSError as error:
        report("unreadable_file", f"{path}: {error.strerror or type(error).__name__}")
        return []
    if len(data) > MAX_FILE_BYTES:
        report("oversized_file", str(path))
        return []
    holders, bad = parse_job_file(data.decode("utf-8", "replace"))
    for line in bad:
        report("bad_line", f"{path}: {line[:80]!r}")
    return holders


def _unique(holders: Iterable[Identity]) -> list[Identity]:
    seen: set[str] = set()
    out = []
    for holder in holders:
        key = workload_key(holder)
        if key not in seen:
            seen.add(key)
            out.append(holder)
    return out
