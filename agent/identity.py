"""Who owns a GPU process: `/proc/<pid>/cgroup` -> a workload identity.

NVML names GPU processes by PID only. The cgroup a process sits in says which workload started
it, because every runtime we bill for names its cgroups after the workload:

    kind          identity keys                 workload_key
    k8s_pod       pod_uid, container (or None)  k8s:<pod_uid>[/<container id12>]
    slurm_job     job, step (or None)           slurm:<job>
                  (+ account, user, partition from the job's environment when readable)
    docker        container                     docker:<container id12>
    podman        container                     podman:<container id12>
    systemd_unit  unit                          unit:<unit name>
    user          uid                           uid:<uid>
    None          error (the process is gone)   pid:<pid>

Kinds are tried in that order over every line of the cgroup file, so that a v1 host whose
`name=systemd` line says `/system.slice/slurmd.service` while its `memory` line says
`/slurm/uid_1000/job_42/step_0` is billed to the job, not to slurmd. A process that matches
nothing is billed to its owner's UID.

Everything but `resolve` (and the small readers under it) is pure and takes text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Identity = dict[str, Any]

K8S_POD = "k8s_pod"
SLURM_JOB = "slurm_job"
DOCKER = "docker"
PODMAN = "podman"
SYSTEMD_UNIT = "systemd_unit"
USER = "user"

# Key order of each kind after "pid" and "kind": to_json_line writes these first, then any
# other key (added by later enrichment) in sorted order, so equal identities give equal lines.
FIELD_ORDER: dict[str | None, tuple[str, ...]] = {
    K8S_POD: ("pod_uid", "container", "namespace", "pod", "container_name", "labels"),
    SLURM_JOB: ("job", "step", "account", "user", "partition"),
    DOCKER: ("container",),
    PODMAN: ("container",),
    SYSTEMD_UNIT: ("unit",),
    USER: ("uid", "user"),
    None: ("error",),
}

# Slurm's own environment names (srun/sbatch man pages, "OUTPUT ENVIRONMENT VARIABLES").
SLURM_ENV = {"SLURM_JOB_ACCOUNT": "account", "SLURM_JOB_USER": "user", "SLURM_JOB_PARTITION": "partition"}

SHORT_ID = 12  # `docker ps` length: unique enough on one node, short enough for a tag


# --- the cgroup file -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CgroupLine:
    hierarchy: str  # "0" for the v2 unified hierarchy
    controllers: str  # "" for v2, "memory", "cpu,cpuacct", "name=systemd", ...
    path: str


def parse_cgroup(text: str) -> list[CgroupLine]:
    """The lines of /proc/<pid>/cgroup (man 7 cgroups: `hierarchy-ID:controller-list:path`),
    most telling first: the unified line, then `name=systemd`, then v1 controllers in file order.

    On a hybrid host the unified line and `name=systemd` both follow systemd's tree, while a v1
    controller line may be the only one that shows a Slurm job; kind order (not line order)
    settles that, line order only picks between two answers of the same kind."""
    lines = []
    for raw in text.splitlines():
        parts = raw.split(":", 2)  # the path itself may contain ':'
        if len(parts) == 3 and parts[2].startswith("/"):
            lines.append(CgroupLine(parts[0], parts[1], parts[2]))
    return sorted(lines, key=_line_rank)  # stable: v1 controllers keep file order


def _line_rank(line: CgroupLine) -> int:
    if line.hierarchy == "0" and line.controllers == "":
        return 0
    return 1 if line.controllers == "name=systemd" else 2


def path_parts(path: str) -> list[str]:
    # The kernel appends " (deleted)" to a removed cgroup's path (kernel/cgroup/cgroup.c,
    # proc_cgroup_show); the workload it names still owned the process.
    path = path.removesuffix(" (deleted)")
    return [part for part in path.split("/") if part and part != ".."]


# --- Kubernetes ------------------------------------------------------------------------------

# kubelet's systemd driver (pkg/kubelet/cm/cgroup_manager_linux.go, ConvertCgroupNameToSystemd)
# joins the cgroup name's parts with '-' into nested slices, after escapeSystemdCgroupName has
# turned the '-' of the pod UID into '_':
#   kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_>.slice
#   kubepods.slice/kubepods-pod<uid>.slice                       (Guaranteed: no QoS slice)
#   kubelet.slice/kubelet-kubepods.slice/...-pod<uid>.slice      (--cgroup-root=/kubelet, kind)
_POD_SLICE = re.compile(
    r"(?:.+-)?kubepods(?:-[A-Za-z]+)?-pod(?P<uid>[0-9A-Fa-f_]+(?:\\x2d[0-9A-Fa-f_]+)*)\.slice"
)
# kubelet's cgroupfs driver: /kubepods[/burstable|/besteffort]/pod<uid-with-dashes>/<container>
_POD_DIR = re.compile(r"pod(?P<uid>[0-9A-Fa-f-]+)")

# What runtimes call a container's own cgroup below the pod: containerd's CRI plugin
# `cri-containerd-<id>.scope`, CRI-O `crio-<id>.scope` (its conmon: `crio-conmon-<id>.scope`),
# dockershim / cri-dockerd `docker-<id>.scope`; with the cgroupfs driver the bare id (containerd,
# docker) or `crio-<id>`.
_CONTAINER_PREFIXES = ("cri-containerd-", "crio-conmon-", "crio-", "cri-dockerd-", "docker-", "libpod-")


def match_k8s(parts: Sequence[str]) -> Identity | None:
    for i, part in enumerate(parts):
        uid = _pod_uid(part, under_kubepods="kubepods" in parts[:i])
        if uid is not None:
            container = _container_id(parts[i + 1]) if i + 1 < len(parts) else None
            return {"kind": K8S_POD, "pod_uid": uid, "container": container}
    return None


def _pod_uid(part: str, under_kubepods: bool) -> str | None:
    found = _POD_SLICE.fullmatch(part)
    if found:
        return found["uid"].replace("\\x2d", "-").replace("_", "-")
    found = _POD_DIR.fullmatch(part)
    if found and under_kubepods:
        return found["uid"]
    return None


def _container_id(part: str) -> str | None:
    name = part.removesuffix(".scope")
    for prefix in _CONTAINER_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return name or None


# --- Slurm -----------------------------------------------------------------------------------

# cgroup/v1 plugin (src/plugins/cgroup/v1/): /slurm/uid_<U>/job_<J>/step_<S>/task_<T>, the root
# `slurm_<nodename>` when slurmd runs several times per host (--enable-multiple-slurmd).
_V1_ROOT = re.compile(r"slurm(?:_.+)?")
# cgroup/v2 plugin (src/plugins/cgroup/v2/): <slice>/slurmstepd.scope/job_<J>/step_<S>/user/task_<T>,
# `<nodename>_slurmstepd.scope` with multiple slurmd; stepd itself sits in .../step_<S>/slurm.
_V2_SCOPE = re.compile(r"(?:.+_)?slurmstepd\.scope")
_JOB = re.compile(r"job_(?P<job>\d+)")
# step_<n>, step_<n>.<het component>, and the named steps step_batch, step_extern,
# step_interactive (SLURM_BATCH_SCRIPT, SLURM_EXTERN_CONT, SLURM_INTERACTIVE_STEP).
_STEP = re.compile(r"step_(?P<step>\d+(?:\.\d+)?|batch|extern|interactive)")


def match_slurm(parts: Sequence[str]) -> Identity | None:
    for i, part in enumerate(parts):
        if _V2_SCOPE.fullmatch(part):
            return _slurm_job(parts[i + 1 : i + 3])
        if _V1_ROOT.fullmatch(part) and i + 1 < len(parts) and parts[i + 1].startswith("uid_"):
            return _slurm_job(parts[i + 2 : i + 4])
    return None


def _slurm_job(job_and_step: Sequence[str]) -> Identity | None:
    job = _JOB.fullmatch(job_and_step[0]) if job_and_step else None
    if job is None:
        return None  # e.g. slurmstepd.scope/system: the daemons, not a job
    step = _STEP.fullmatch(job_and_step[1]) if len(job_and_step) > 1 else None
    return {"kind": SLURM_JOB, "job": job["job"], "step": step["step"] if step else None}


# --- Docker and Podman -----------------------------------------------------------------------

_HEX64 = r"[0-9a-f]{64}"
# Docker: `/docker/<id>` (cgroupfs driver, v1 and v2), `docker-<id>.scope` (systemd driver,
# moby daemon/cgroups; also rootless under user@<uid>.service).
# Podman: `libpod-<id>.scope` (systemd manager, machine.slice or the user's slice),
# `libpod-conmon-<id>.scope` for its monitor, `/libpod_parent/libpod-<id>` (cgroupfs manager).
_DOCKER = re.compile(rf"docker-(?P<id>{_HEX64})\.scope")
_PODMAN = re.compile(rf"libpod-(?:conmon-)?(?P<id>{_HEX64})(?:\.scope)?")
_BARE_ID = re.compile(_HEX64)


def match_container(parts: Sequence[str]) -> Identity | None:
    # The outermost container wins: it is the one the host's runtime (and bill) knows.
    for i, part in enumerate(parts):
        docker_id = _docker_id(parts, i)
        if docker_id:
            return {"kind": DOCKER, "container": docker_id}
        found = _PODMAN.fullmatch(part)
        if found:
            return {"kind": PODMAN, "container": found["id"]}
    return None


def _docker_id(parts: Sequence[str], i: int) -> str | None:
    found = _DOCKER.fullmatch(parts[i])
    if found:
        return found["id"]
    if parts[i] == "docker" and i + 1 < len(parts) and _BARE_ID.fullmatch(parts[i + 1]):
        return parts[i + 1]
    return None


# --- systemd ---------------------------------------------------------------------------------

_USER_SLICE = re.compile(r"user-(?P<uid>\d+)\.slice")  # systemd-logind: user-<uid>.slice
_USER_MANAGER = re.compile(r"user@(?P<uid>\d+)\.service")


def match_unit(parts: Sequence[str]) -> Identity | None:
    """A system service or scope (`/system.slice/foo.service`, `/init.scope`, a `systemd-run
    --scope`). Names stay escaped as systemd writes them (`foo\\x2dbar.service`): that is the
    unit's name, the one `systemctl status` takes."""
    for part in parts:
        if _USER_SLICE.fullmatch(part) or _USER_MANAGER.fullmatch(part):
            return None  # a user's units and sessions belong to the user
        if part.endswith((".service", ".scope")):
            return {"kind": SYSTEMD_UNIT, "unit": part}
    return None


def match_session(parts: Sequence[str]) -> Identity | None:
    # /user.slice/user-1000.slice/session-3.scope, or .../user@1000.service/app.slice/x.service
    for part in parts:
        found = _USER_SLICE.fullmatch(part) or _USER_MANAGER.fullmatch(part)
        if found:
            return {"kind": USER, "uid": int(found["uid"])}
    return None


Matcher = Callable[[Sequence[str]], Identity | None]
MATCHERS: tuple[Matcher, ...] = (match_k8s, match_slurm, match_container, match_unit, match_session)


def classify_cgroup(text: str) -> Identity | None:
    """The workload a /proc/<pid>/cgroup text names (without "pid"), or None: bill the UID."""
    paths = [path_parts(line.path) for line in parse_cgroup(text)]
    for matcher in MATCHERS:
        for parts in paths:
            found = matcher(parts)
            if found is not None:
                return found
    return None


# --- /proc -----------------------------------------------------------------------------------


def parse_status_uid(text: str) -> int | None:
    """The real UID from /proc/<pid>/status (`Uid:\\treal\\teffective\\tsaved\\tfs`): who
    started the process, even when it runs setuid."""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            if len(fields) > 1 and fields[1].isdigit():
                return int(fields[1])
    return None


def parse_environ(data: bytes) -> dict[str, str]:
    """/proc/<pid>/environ: NUL-separated KEY=VALUE, as the process was started."""
    env = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def slurm_enrichment(env: Mapping[str, str]) -> dict[str, str]:
    return {ours: env[theirs] for theirs, ours in SLURM_ENV.items() if env.get(theirs)}


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "replace")


def _owner_uid(pid_dir: Path) -> int:
    try:
        uid = parse_status_uid(_read_text(pid_dir / "status"))
    except OSError:
        uid = None
    # /proc/<pid> itself belongs to the process's effective UID: second best, still an owner.
    return uid if uid is not None else pid_dir.stat().st_uid


def _gone(error: OSError) -> str:
    # A process that exits between NVML's list and this read is normal, as is a /proc we may not
    # read (hidepid=2, an agent without CAP_SYS_PTRACE): the answer is "unknown", not a crash.
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, (FileNotFoundError, ProcessLookupError)):
        return "no such process"
    return f"unreadable: {error.strerror or type(error).__name__}"


def resolve(pid: int, proc_root: str | os.PathLike[str] = "/proc") -> Identity:
    """The workload that owns `pid`, read from `<proc_root>/<pid>/`. Never raises for a process
    that has gone or may not be read: that gives {"pid": pid, "kind": None, "error": ...}."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        raise ValueError(f"pid must be a non-negative integer, got {pid!r}")
    pid_dir = Path(proc_root) / str(pid)
    try:
        found = classify_cgroup(_read_text(pid_dir / "cgroup"))
        if found is None:
            found = {"kind": USER, "uid": _owner_uid(pid_dir)}
    except OSError as error:
        return {"pid": pid, "kind": None, "error": _gone(error)}
    identity: Identity = {"pid": pid, **found}
    if identity["kind"] == SLURM_JOB:
        identity.update(_slurm_env(pid_dir))
    return identity


def _slurm_env(pid_dir: Path) -> dict[str, str]:
    try:
        return slurm_enrichment(parse_environ((pid_dir / "environ").read_bytes()))
    except OSError:
        return {}  # environ is 0400 to the job's user: without root we bill by job id alone


def resolve_all(pids: Sequence[int], proc_root: str | os.PathLike[str] = "/proc") -> list[Identity]:
    return [resolve(pid, proc_root) for pid in pids]


# --- output ----------------------------------------------------------------------------------


def ordered(identity: Mapping[str, Any]) -> dict[str, Any]:
    """pid, kind, the kind's own keys in FIELD_ORDER, then any other key sorted."""
    kind = identity.get("kind")
    known = ("pid", "kind", *FIELD_ORDER.get(kind, ()))
    out = {key: identity[key] for key in known if key in identity}
    out.update({key: identity[key] for key in sorted(identity) if key not in out})
    return out


def to_json_line(identity: Mapping[str, Any]) -> str:
    """One compact JSON object, no newline: `gpufleet identify` prints one per PID."""
    return json.dumps(ordered(identity), separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def workload_key(identity: Mapping[str, Any]) -> str:
    """A short id, stable for the workload's life, that attribution groups GPU time by."""
    kind = identity.get("kind")
    if kind == K8S_POD:
        if identity.get("pod_uid") is None:  # from the kubelet's pod-resources: names, no UID
            key = f"k8s-pod:{identity['namespace']}/{identity['pod']}"
            return key if len(key) <= 128 else f"{key[:111]}~{hashlib.sha1(key.encode()).hexdigest()[:16]}"
        container = identity.get("container")
        suffix = f"/{container[:SHORT_ID]}" if container else ""
        return f"k8s:{identity['pod_uid']}{suffix}"
    if kind == SLURM_JOB:
        return f"slurm:{identity['job']}"  # steps share the job's allocation and its bill
    if kind in (DOCKER, PODMAN):
        return f"{kind}:{identity['container'][:SHORT_ID]}"
    if kind == SYSTEMD_UNIT:
        return f"unit:{identity['unit']}"
    if kind == USER:
        return f"uid:{identity['uid']}"
    if kind is None:
        return f"pid:{identity['pid']}"  # gone before we looked: billed to the default tenant
    raise ValueError(f"unknown identity kind {kind!r}")


def identity_from_key(key: str, pid: int | None = None) -> Identity:
    """The identity a workload key stands for (the inverse of workload_key, up to the id12 cut
    and dropped enrichment): what a static GPU -> workload map in the config names."""
    prefix, sep, rest = key.partition(":")
    if not sep or not rest:
        raise ValueError(f"workload key {key!r} is not <kind>:<id>")
    if prefix == "k8s-pod":
        namespace, _, pod = rest.partition("/")
        return {"pid": pid, "kind": K8S_POD, "pod_uid": None, "container": None, "namespace": namespace, "pod": pod}
    if prefix == "k8s":
        pod_uid, _, container = rest.partition("/")
        return {"pid": pid, "kind": K8S_POD, "pod_uid": pod_uid, "container": container or None}
    if prefix == "slurm":
        return {"pid": pid, "kind": SLURM_JOB, "job": rest, "step": None}
    if prefix in (DOCKER, PODMAN):
        return {"pid": pid, "kind": prefix, "container": rest}
    if prefix == "unit":
        return {"pid": pid, "kind": SYSTEMD_UNIT, "unit": rest}
    if prefix == "uid" and rest.isdigit():
        return {"pid": pid, "kind": USER, "uid": int(rest)}
    raise ValueError(f"workload key {key!r}: unknown kind {prefix!r} (k8s, slurm, docker, podman, unit, uid)")
