"""Which Kubernetes pod holds each GPU: the kubelet's pod-resources gRPC API.

The kubelet serves `v1.PodResourcesLister` on a Unix socket, by default
`/var/lib/kubelet/pod-resources/kubelet.sock` (KEP-606, v1 GA in Kubernetes 1.28; the proto is
agent/podresources_pb/api.proto). `List()` gives every active pod by namespace and name, its
containers by name, and per container the devices the device plugins allocated:

    resource_name             device_ids (NVIDIA k8s-device-plugin)
    nvidia.com/gpu            GPU-<uuid>          the default --device-id-strategy=uuid
                              3                   --device-id-strategy=index
                              GPU-<uuid>::2       time-slicing replica 2 (the plugin's AnnotatedID)
    nvidia.com/gpu.shared     (as above)          time-slicing with renameByDefault
    nvidia.com/mig-1g.10gb    MIG-<uuid>          a MIG device (mixed strategy; single strategy
                              MIG-GPU-<uuid>/1/0  says nvidia.com/gpu); the second form is the
                              3:1                 pre-R470 MIG UUID, the third the index strategy

This is what dcgm-exporter's pod mapper reads (pkg/dcgmexporter/kubernetes.go: resource
`nvidia.com/gpu` or prefix `nvidia.com/mig-`, strip a `::` replica suffix, key by device id).
We use it for two things:

1. Owners: `gpu_allocations(gpus)` says which pods were allocated each GPU, so a GPU given to a
   pod whose processes are idle or not started yet is billed to that pod (collector/attribute.py
   bills owners when no process ran).
2. Enrichment: a process's identity from /proc (agent/identity.py) names its pod by UID only,
   but tenant rules match `k8s_namespace`. `enrich` adds namespace and pod name.

The API names pods, never their UIDs, and containers by name, never by runtime id. Two joins
fill the gap, best first:

* By pod UID, exact: the kubelet keeps each pod's logs under `<podLogsDir>/<namespace>_<pod>_<uid>/`
  (pkg/kubelet/kuberuntime/helpers.go, BuildPodLogsDirectory; `_` can appear in none of the
  three), so listing `/var/log/pods` maps UID <-> (namespace, pod). Owners then carry `pod_uid`
  and share the `k8s:<pod uid>` prefix of the /proc identities' workload keys.
* By GPU, when the log directory cannot be read: the process runs on GPU (or MIG device) X, and
  X was allocated to exactly one pod. See `namespace_for_gpu` for where that goes wrong.

Never raises for a kubelet that is absent, restarting or slow: calls time out after `timeout_s`,
the outage is logged once, and callers get the last answer for up to `stale_s`, then nothing.
Each answer is cached for `cache_s`, failures included, so an agent window costs at most one
call. Apart from the stubs it uses (podresources_pb/), this is the only module that imports grpc.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc

from .identity import K8S_POD, Identity
from .podresources_pb import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
DEFAULT_POD_LOGS_DIR = "/var/log/pods"  # kubelet's podLogsDir
GPU_RESOURCES = ("nvidia.com/gpu", "nvidia.com/gpu.shared", "nvidia.com/mig-*")  # fnmatch globs

# gRPC's default 4 MiB receive limit is too small for List() on a node with many pods
# (dcgm-exporter #408, #509: "received message larger than max (4724376 vs. 4194304)").
MAX_MESSAGE_BYTES = 64 << 20
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_http_proxy", 0),  # a Unix socket is never behind $https_proxy
)

GpuRef = tuple[int, str]  # (NVML index, UUID); MIG devices as (their GPU's index, MIG UUID)
_K = TypeVar("_K", int, str)

_REPLICA = "::"  # k8s-device-plugin time-slicing: <device id>::<replica>
_LEGACY_MIG = re.compile(r"MIG-(?P<parent>GPU-[0-9A-Fa-f-]+)/\d+/\d+")  # pre-R470 MIG UUIDs
_INDEX_ID = re.compile(r"(?P<gpu>\d+)(?::\d+)?")  # --device-id-strategy=index: "3", MIG "3:1"


@dataclass(frozen=True, slots=True, order=True)
class PodRef:
    namespace: str
    pod: str
    container: str  # the container's name in the pod spec, not its runtime id


@dataclass(frozen=True, slots=True)
class Allocation:
    """One device the kubelet allocated to one container."""

    ref: PodRef
    resource: str  # e.g. nvidia.com/gpu, nvidia.com/mig-1g.10gb
    device_id: str  # as the device plugin named it, replica suffix removed


# --- pure: the response, device ids, identities ---------------------------------------------


def gpu_allocations_of(
    response: api_pb2.ListPodResourcesResponse, resources: Sequence[str] = GPU_RESOURCES
) -> tuple[Allocation, ...]:
    """The GPU allocations in a List() answer, in answer order: devices of other resources
    (CPUs, NICs, hugepages, DRA claims) are left out."""
    out = []
    for pod in response.pod_resources:
        for container in pod.containers:
            ref = PodRef(pod.namespace, pod.name, container.name)
            for devices in container.devices:
                if not any(fnmatch.fnmatchcase(devices.resource_name, glob) for glob in resources):
                    continue
                for device_id in devices.device_ids:
                    out.append(Allocation(ref, devices.resource_name, device_id.partition(_REPLICA)[0]))
    return tuple(out)


def gpu_of(device_id: str, gpus: Sequence[GpuRef]) -> GpuRef | None:
    """The entry of `gpus` a device id stands for, or None for a device this node does not list.

    A UUID (GPU-..., MIG-...) matches its own entry; a pre-R470 MIG UUID whose own entry is not
    listed matches its parent GPU; an index-strategy id ("3", MIG "3:1") matches GPU 3's entry
    (the whole GPU's, not a MIG device's: "3:1" does not say which MIG UUID it is)."""
    for ref in gpus:
        if ref[1] == device_id:
            return ref
    legacy = _LEGACY_MIG.fullmatch(device_id)
    by_index = _INDEX_ID.fullmatch(device_id)
    for index, uuid in gpus:
        if legacy and uuid == legacy["parent"]:
            return index, uuid
        if by_index and index == int(by_index["gpu"]) and not uuid.startswith("MIG-"):
            return index, uuid
    return None


def parse_pod_log_dirs(names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """pod UID -> (namespace, pod), from the entries of the kubelet's pod log directory.

    Entries are `<namespace>_<pod>_<uid>`: a namespace is a DNS label and a pod name a DNS
    subdomain, neither holds `_`, so the split is exact. Pre-1.14 entries (`<uid>` alone) and
    anything else are skipped."""
    pods = {}
    for name in names:
        parts = name.split("_")
        if len(parts) == 3 and all(parts):
            namespace, pod, uid = parts
            pods[uid] = (namespace, pod)
    return pods


def uids_by_pod(pods_by_uid: Mapping[str, tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(namespace, pod) -> UID, the reverse of parse_pod_log_dirs. A pod recreated under the same
    name (a StatefulSet's) has a new UID while the old log directory may linger until the kubelet
    collects it: such a name is left out, its UID unknown rather than guessed."""
    found: dict[tuple[str, str], list[str]] = {}
    for uid, pod in pods_by_uid.items():
        found.setdefault(pod, []).append(uid)
    return {pod: uids[0] for pod, uids in found.items() if len(uids) == 1}


def owner_identity(ref: PodRef, pod_uid: str | None) -> Identity:
    """What a pod allocated a GPU is billed as. `container` stays None: the API names
    containers, identity.py's `container` is a runtime id, and the two must not mix."""
    return {
        "pid": None,
        "kind": K8S_POD,
        "pod_uid": pod_uid,
        "container": None,
        "namespace": ref.namespace,
        "pod": ref.pod,
        "container_name": ref.container,
    }


def enrich(
    identity: Identity, owners: Sequence[PodRef], pods_by_uid: Mapping[str, tuple[str, str]] | None = None
) -> Identity:
    """A /proc-derived k8s_pod identity with `namespace` and `pod` (and `container_name` where
    one container of that pod holds the GPU) added; any other identity is returned as it came.

    `owners` are the containers allocated the GPU the process runs on; `pods_by_uid` maps pod
    UIDs to (namespace, pod) (parse_pod_log_dirs). The UID join is used when it knows the pod;
    otherwise the GPU join, only where it is unambiguous: one pod holds the GPU, or (time-slicing,
    MPS) several pods of one namespace, which gives the namespace alone. When the UID map is
    known but lacks this UID, the GPU join is not tried: the process is in a pod the kubelet
    has no logs for, not in the pod that holds the GPU."""
    if identity.get("kind") != K8S_POD or identity.get("namespace") is not None:
        return identity
    uid = identity.get("pod_uid")
    if pods_by_uid and uid in pods_by_uid:
        namespace, pod = pods_by_uid[uid]
        return _with(identity, namespace, pod, [o.container for o in owners if (o.namespace, o.pod) == (namespace, pod)])
    if pods_by_uid:
        return identity
    pods = {(o.namespace, o.pod) for o in owners}
    if len(pods) == 1:
        [(namespace, pod)] = pods
        return _with(identity, namespace, pod, [o.container for o in owners])
    namespaces = {namespace for namespace, _ in pods}
    if len(namespaces) == 1:
        return {**identity, "namespace": namespaces.pop()}
    return identity


def _with(identity: Identity, namespace: str, pod: str, containers: Sequence[str]) -> Identity:
    out = {**identity, "namespace": namespace, "pod": pod}
    if len(set(containers)) == 1:
        out["container_name"] = containers[0]
    return out


# --- the client -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    taken_at: float  # the clock's time of the call
    allocations: tuple[Allocation, ...] = ()
    pods_by_uid: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    uids_by_pod: Mapping[tuple[str, str], str] = field(default_factory=dict)
    answered_at: float | None = None  # when the kubelet last answered; None: never


class PodResources:
    """The kubelet's GPU allocations, read at most once per `cache_s`.

    `timeout_s` bounds one List() call, connecting included (the agent waits for it once a
    window at most). After a failed call the last answer is kept for `stale_s` (a kubelet
    restart takes seconds; billing an allocated GPU to `unallocated` meanwhile would be wrong),
    then owners are empty until the kubelet answers again. `pod_logs_dir=None` turns the UID
    join off. `errors` counts failed calls by gRPC status name ("MISSING" for no socket)."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] = DEFAULT_SOCKET,
        timeout_s: float = 1.0,
        cache_s: float = 5.0,
        *,
        stale_s: float = 30.0,
        pod_logs_dir: str | os.PathLike[str] | None = DEFAULT_POD_LOGS_DIR,
        resources: Sequence[str] = GPU_RESOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_s <= 0 or cache_s < 0 or stale_s < 0:
            raise ValueError("timeout_s must be > 0, cache_s and stale_s >= 0")
        self.socket_path = Path(socket_path)
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._stale_s = stale_s
        self._pod_logs_dir = None if pod_logs_dir is None else Path(pod_logs_dir)
        self._resources = tuple(resources)
        self._clock = clock
        self._lock = threading.Lock()  # one refresh at a time; callers share its answer
        self._snapshot: Snapshot | None = None
        self._failing = False
        self.errors: Counter[str] = Counter()
        self.calls = 0

    # -- what callers use -------------------------------------------------------------------

    def gpu_allocations(self, gpus: Sequence[GpuRef]) -> dict[int, list[Identity]]:
        """GPU index -> the pods allocated it, as k8s_pod identities with pid None (owner_identity),
        one per container, in List() order. Pass MIG devices as (their GPU's index, MIG UUID),
        as the agent's MIG windows carry them. Devices that none of `gpus` names are ignored."""
        return self._owners(gpus, lambda ref: ref[0])

    def gpu_allocations_by_uuid(self, gpus: Sequence[GpuRef]) -> dict[str, list[Identity]]:
        """As gpu_allocations, keyed by the UUID of the entry each device matched: under MIG,
        each instance gets its own pods, and the GPU itself none (its free slices are nobody's)."""
        return self._owners(gpus, lambda ref: ref[1])

    def _owners(self, gpus: Sequence[GpuRef], key: Callable[[GpuRef], _K]) -> dict[_K, list[Identity]]:
        snapshot = self.snapshot()
        mapping: dict[_K, dict[PodRef, Identity]] = {}
        for allocation in snapshot.allocations:
            ref = gpu_of(allocation.device_id, gpus)
            if ref is None:
                continue
            holders = mapping.setdefault(key(ref), {})
            if allocation.ref not in holders:
                uid = snapshot.uids_by_pod.get((allocation.ref.namespace, allocation.ref.pod))
                holders[allocation.ref] = owner_identity(allocation.ref, uid)
        return {k: list(holders.values()) for k, holders in sorted(mapping.items())}

    def pods_for_gpu(self, uuid: str, index: int | None = None) -> tuple[PodRef, ...]:
        """Every container allocated this GPU or MIG device (several under time-slicing), sorted.
        `index` also matches the device plugin's index strategy ("3")."""
        refs = {
            a.ref
            for a in self.snapshot().allocations
            if a.device_id == uuid or (index is not None and a.device_id == str(index))
        }
        return tuple(sorted(refs))

    def namespace_for_gpu(self, uuid: str, index: int | None = None) -> tuple[str, str, str] | None:
        """(namespace, pod, container name) of the one container allocated this GPU or MIG device;
        None when none is, or several are (time-slicing, MPS: the GPU cannot say which).

        The join behind `enrich` when pod UIDs cannot be looked up: a process NVML lists on
        device X belongs to the pod the kubelet gave X. It relies on pods touching only the
        GPUs they were allocated. A pod that sees every GPU (privileged, or
        NVIDIA_VISIBLE_DEVICES=all as monitoring pods often run) is taken for the allocated pod
        here; the UID join does not make that mistake."""
        refs = self.pods_for_gpu(uuid, index)
        if len(refs) != 1:
            return None
        return refs[0].namespace, refs[0].pod, refs[0].container

    def enrich(self, identity: Identity, gpu_uuid: str | None = None, index: int | None = None) -> Identity:
        """`enrich` with this node's answers: by pod UID, else by the GPU the process runs on."""
        if identity.get("kind") != K8S_POD:
            return identity  # no kubelet call for a Slurm job or a systemd unit
        snapshot = self.snapshot()
        owners = self.pods_for_gpu(gpu_uuid, index) if gpu_uuid is not None else ()
        return enrich(identity, owners, snapshot.pods_by_uid)

    def snapshot(self) -> Snapshot:
        """The cached answer, refreshed when older than `cache_s`."""
        with self._lock:
            now = self._clock()
            if self._snapshot is None or now - self._snapshot.taken_at >= self._cache_s:
                self._snapshot = self._refresh(now)
            return self._snapshot

    # -- reading -----------------------------------------------------------------------------

    def _refresh(self, now: float) -> Snapshot:
        allocations = self._list()
        pods = self._read_pod_uids()
        uids = uids_by_pod(pods)
        if allocations is not None:
            return Snapshot(now, allocations, pods, uids, answered_at=now)
        last = self._snapshot
        if last is not None and last.answered_at is not None and now - last.answered_at <= self._stale_s:
            return Snapshot(now, last.allocations, pods, uids, answered_at=last.answered_at)
        return Snapshot(now, (), pods, uids)

    def _list(self) -> tuple[Allocation, ...] | None:
        self.calls += 1
        if not self.socket_path.exists():
            # Like dcgm-exporter: no socket is a normal state (not a Kubernetes node, or the
            # agent's pod lacks the hostPath mount), not worth a gRPC connection attempt.
            self._failed("MISSING", f"{self.socket_path} does not exist")
            return None
        try:
            # A channel per call: gRPC keeps a failed channel in reconnect backoff (up to 120 s),
            # which would outlast a kubelet restart; on a Unix socket a new one costs little.
            with grpc.insecure_channel(f"unix:{self.socket_path}", options=_CHANNEL_OPTIONS) as channel:
                stub = api_pb2_grpc.PodResourcesListerStub(channel)
                response = stub.List(api_pb2.ListPodResourcesRequest(), timeout=self._timeout_s)
        except grpc.RpcError as error:  # UNAVAILABLE, DEADLINE_EXCEEDED, PERMISSION_DENIED, ...
            code = error.code() if isinstance(error, grpc.Call) else None
            detail = error.details() if isinstance(error, grpc.Call) else str(error)
            self._failed(code.name if code is not None else "UNKNOWN", detail or "")
            return None
        if self._failing:
            log.info("kubelet pod-resources at %s answers again", self.socket_path)
            self._failing = False
        return gpu_allocations_of(response, self._resources)

    def _failed(self, problem: str, detail: str) -> None:
        self.errors[problem] += 1
        if not self._failing:  # once per outage: this runs every window
            self._failing = True
            log.warning(
                "kubelet pod-resources unavailable (%s: %s); GPUs keep their last known pods for %g s, then none",
                problem, detail, self._stale_s,
            )

    def _read_pod_uids(self) -> dict[str, tuple[str, str]]:
        if self._pod_logs_dir is None:
            return {}
        try:
            with os.scandir(self._pod_logs_dir) as entries:
                return parse_pod_log_dirs(entry.name for entry in entries if entry.is_dir())
        except OSError:
            return {}  # not mounted into the agent's pod: the GPU join still works

