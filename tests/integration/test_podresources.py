"""PodResources against a real gRPC server: a fake kubelet serving v1.PodResourcesLister on a
Unix socket, the way the kubelet does, with pods the tests make up."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from gpufleet.agent.podresources import PodResources
from gpufleet.agent.podresources_pb import api_pb2, api_pb2_grpc

UID_TRAINER = "0b6f6a53-5d3e-4c5e-9d53-2f3b8c7a9e01"
UID_INFER = "6e8d1c2a-77a0-4b0b-8f4e-1c9b5a3d2e10"

# GPU 0-1 whole, GPU 2 in MIG mode with two instances, GPU 3 time-sliced, GPU 4 with an
# old-style MIG device, GPU 5 allocated to nobody.
GPUS = [
    (0, "GPU-00000000-aaaa-0000-0000-000000000000"),
    (1, "GPU-11111111-bbbb-0000-0000-000000000000"),
    (2, "GPU-22222222-cccc-0000-0000-000000000000"),
    (2, "MIG-0f0f0f0f-1111-5555-8888-000000000001"),
    (2, "MIG-0f0f0f0f-2222-5555-8888-000000000002"),
    (3, "GPU-33333333-dddd-0000-0000-000000000000"),
    (4, "GPU-44444444-eeee-0000-0000-000000000000"),
    (5, "GPU-55555555-ffff-0000-0000-000000000000"),
]
UUID = {uuid: uuid for _, uuid in GPUS}


def _pod(namespace: str, name: str, *containers: api_pb2.ContainerResources) -> api_pb2.PodResources:
    return api_pb2.PodResources(namespace=namespace, name=name, containers=list(containers))


def _container(name: str, *devices: tuple[str, list[str]], cpus: tuple[int, ...] = ()) -> api_pb2.ContainerResources:
    return api_pb2.ContainerResources(
        name=name,
        devices=[api_pb2.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in devices],
        cpu_ids=list(cpus),
    )


NODE_PODS = [
    _pod(
        "ml", "trainer-0",
        _container("trainer", ("nvidia.com/gpu", [GPUS[0][1], GPUS[1][1]]), cpus=(2, 3)),
        _container("sidecar", ("example.com/nic", ["0000:3b:00.0"])),
    ),
    _pod("vision", "infer-1", _container("server", ("nvidia.com/mig-1g.10gb", [GPUS[3][1]]))),
    _pod("vision", "infer-2", _container("server", ("nvidia.com/mig-1g.10gb", [GPUS[4][1]]))),
    # time-slicing: two pods get replicas of GPU 3 (k8s-device-plugin names them <uuid>::<n>)
    _pod("shared", "notebook-a", _container("jupyter", ("nvidia.com/gpu.shared", [GPUS[5][1] + "::0"]))),
    _pod("shared", "notebook-b", _container("jupyter", ("nvidia.com/gpu.shared", [GPUS[5][1] + "::3"]))),
    # a pre-R470 MIG UUID names its parent GPU
    _pod("legacy", "old-mig", _container("main", ("nvidia.com/mig-3g.20gb", ["MIG-GPU-44444444-eeee-0000-0000-000000000000/1/0"]))),
    # devices this node's NVML does not list, or that are not GPUs: ignored
    _pod("ghost", "elsewhere", _container("main", ("nvidia.com/gpu", ["GPU-99999999-9999-0000-0000-000000000000"]))),
    _pod("net", "router", _container("main", ("example.com/gpu-lookalike", [GPUS[7][1]]))),
    _pod("kube-system", "coredns-5d78c9869d-x2x7f", _container("coredns", cpus=(0,))),
]


class FakeKubelet(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, pods: list[api_pb2.PodResources]) -> None:
        self.pods = pods
        self.delay_s = 0.0
        self.calls = 0
        self.release = threading.Event()  # ends a delayed answer early, at teardown

    def List(self, request, context):  # the proto's method name
        self.calls += 1
        if self.delay_s:
            self.release.wait(self.delay_s)
        return api_pb2.ListPodResourcesResponse(pod_resources=self.pods)


class KubeletServer:
    """A gRPC server on `path`; start and stop it as often as a test needs."""

    def __init__(self, path: Path, lister: FakeKubelet) -> None:
        assert len(str(path)) < 100, f"Unix socket path too long: {path}"
        self.path = path
        self.lister = lister
        self._server: grpc.Server | None = None

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(self.lister, server)
        server.add_insecure_port(f"unix:{self.path}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self.lister.release.set()
            self._server.stop(grace=None).wait(5)
            self._server = None
            self.lister.release.clear()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[KubeletServer]:
    server = KubeletServer(tmp_path / "kubelet.sock", FakeKubelet(NODE_PODS))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pod_logs(tmp_path: Path) -> Path:
    """The kubelet's /var/log/pods: <namespace>_<pod>_<uid> per pod."""
    root = tmp_path / "pods"
    for name in (f"ml_trainer-0_{UID_TRAINER}", f"vision_infer-1_{UID_INFER}", "stray-file-not-a-pod"):
        (root / name).mkdir(parents=True)
    return root


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _owner(namespace: str, pod: str, container: str, uid: str | None = None) -> dict:
    return {
        "pid": None, "kind": "k8s_pod", "pod_uid": uid, "container": None,
        "namespace": namespace, "pod": pod, "container_name": container,
    }


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.endswith("podresources")]


# --- listing -----------------------------------------------------------------------------------


def test_gpus_mig_and_shared_devices_map_to_their_gpu_index(kubelet: KubeletServer, pod_logs: Path) -> None:
    resources = PodResources(kubelet.path, pod_logs_dir=pod_logs)

    assert resources.gpu_allocations(GPUS) == {
        0: [_owner("ml", "trainer-0", "trainer", UID_TRAINER)],
        1: [_owner("ml", "trainer-0", "trainer", UID_TRAINER)],
        2: [_owner("vision", "infer-1", "server", UID_INFER), _owner("vision", "infer-2", "server")],
        3: [_owner("shared", "notebook-a", "jupyter"), _owner("shared", "notebook-b", "jupyter")],
        4: [_owner("legacy", "old-mig", "main")],
    }
    assert resources.errors == {}


def test_by_uuid_each_mig_instance_has_its_own_pods(kubelet: KubeletServer) -> None:
    resources = PodResources(kubelet.path, pod_logs_dir=None)
    by_uuid = resources.gpu_allocations_by_uuid(GPUS)

    assert by_uuid[GPUS[3][1]] == [_owner("vision", "infer-1", "server")]
    assert by_uuid[GPUS[4][1]] == [_owner("vision", "infer-2", "server")]
    assert GPUS[2][1] not in by_uuid  # the MIG GPU itself: its free slices are nobody's
    assert by_uuid[GPUS[6][1]] == [_owner("legacy", "old-mig", "main")]  # old MIG UUID: its GPU
    assert sorted(by_uuid) == sorted({GPUS[i][1] for i in (0, 1, 3, 4, 5, 6)})


def test_unknown_devices_and_other_resources_are_ignored(kubelet: KubeletServer) -> None:
    resources = PodResources(kubelet.path, pod_logs_dir=None)
    allocations = resources.gpu_allocations(GPUS)

    named = {(o["namespace"], o["pod"]) for owners in allocations.values() for o in owners}
    assert ("ghost", "elsewhere") not in named  # a GPU this node does not have
    assert ("net", "router") not in named  # a GPU's UUID under a resource that is no GPU
    assert 5 not in allocations
    assert resources.gpu_allocations([]) == {}


def test_namespace_for_gpu_joins_by_device(kubelet: KubeletServer) -> None:
    resources = PodResources(kubelet.path, pod_logs_dir=None)

    assert resources.namespace_for_gpu(GPUS[0][1]) == ("ml", "trainer-0", "trainer")
    assert resources.namespace_for_gpu(GPUS[3][1]) == ("vision", "infer-1", "server")  # a MIG device
    assert resources.namespace_for_gpu(GPUS[2][1]) is None  # the MIG parent itself: nobody's
    assert resources.namespace_for_gpu(GPUS[5][1]) is None  # two pods share it
    assert resources.namespace_for_gpu(GPUS[7][1]) is None  # allocated to nobody
    assert [r.pod for r in resources.pods_for_gpu(GPUS[5][1])] == ["notebook-a", "notebook-b"]


def test_enrich_a_proc_identity(kubelet: KubeletServer, pod_logs: Path) -> None:
    from_proc = {"pid": 4242, "kind": "k8s_pod", "pod_uid": UID_TRAINER, "container": "c0ffee" * 10}
    by_uid = PodResources(kubelet.path, pod_logs_dir=pod_logs)
    by_gpu = PodResources(kubelet.path, pod_logs_dir=None)
    expected = {**from_proc, "namespace": "ml", "pod": "trainer-0", "container_name": "trainer"}

    assert by_uid.enrich(from_proc) == {**from_proc, "namespace": "ml", "pod": "trainer-0"}  # no GPU given
    assert by_uid.enrich(from_proc, GPUS[1][1]) == expected
    assert by_gpu.enrich(from_proc, GPUS[1][1]) == expected
    assert by_gpu.enrich(from_proc, GPUS[5][1]) == {**from_proc, "namespace": "shared"}  # one namespace, two pods
    assert by_gpu.enrich(from_proc, GPUS[7][1]) == from_proc
    slurm = {"pid": 7, "kind": "slurm_job", "job": "42", "step": None}
    assert by_gpu.enrich(slurm, GPUS[0][1]) is slurm


def test_answers_over_the_default_4_mib_grpc_limit(tmp_path: Path) -> None:
    # ~6 MB: a node with thousands of pods and their CPU and device lists (dcgm-exporter #509)
    filler = [_pod("batch", f"job-{i:05d}", _container("main", ("example.com/vf", [f"vf-{i}-{j:04d}" for j in range(40)]))) for i in range(8000)]
    server = KubeletServer(tmp_path / "k.sock", FakeKubelet([*filler, NODE_PODS[0]]))
    server.start()
    try:
        resources = PodResources(server.path, timeout_s=10.0, pod_logs_dir=None)
        assert resources.gpu_allocations(GPUS[:1]) == {0: [_owner("ml", "trainer-0", "trainer")]}
    finally:
        server.stop()


# --- when the kubelet does not answer ----------------------------------------------------------


def test_missing_socket_gives_nothing_and_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    resources = PodResources(tmp_path / "no-kubelet.sock", cache_s=0)
    for _ in range(3):
        assert resources.gpu_allocations(GPUS) == {}
        assert resources.namespace_for_gpu(GPUS[0][1]) is None
    assert resources.errors == {"MISSING": 6}
    [warning] = _warnings(caplog)
    assert "no-kubelet.sock does not exist" in warning


def test_socket_nobody_listens_on_gives_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "stale.sock"  # left behind by a kubelet that died
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        started = time.monotonic()
        resources = PodResources(path, timeout_s=5.0, cache_s=0)
        assert resources.gpu_allocations(GPUS) == {}
        assert resources.gpu_allocations(GPUS) == {}
        assert time.monotonic() - started < 2.0  # refused at once, not waited out
    assert resources.errors == {"UNAVAILABLE": 2}
    assert len(_warnings(caplog)) == 1


def test_slow_kubelet_is_cut_off_at_the_timeout(kubelet: KubeletServer, caplog: pytest.LogCaptureFixture) -> None:
    kubelet.lister.delay_s = 10.0
    resources = PodResources(kubelet.path, timeout_s=0.3, cache_s=0, pod_logs_dir=None)

    started = time.monotonic()
    assert resources.gpu_allocations(GPUS) == {}
    elapsed = time.monotonic() - started

    assert 0.25 <= elapsed < 2.0
    assert resources.errors == {"DEADLINE_EXCEEDED": 1}
    assert len(_warnings(caplog)) == 1


def test_answers_are_cached_for_cache_s(kubelet: KubeletServer) -> None:
    clock = Clock()
    resources = PodResources(kubelet.path, cache_s=5.0, pod_logs_dir=None, clock=clock)

    first = resources.gpu_allocations(GPUS)
    resources.namespace_for_gpu(GPUS[0][1])
    resources.enrich({"pid": 1, "kind": "k8s_pod", "pod_uid": "u", "container": None}, GPUS[0][1])
    clock.now += 4.9
    kubelet.lister.pods = []  # the kubelet's answer changes; the cache does not see it yet
    assert resources.gpu_allocations(GPUS) == first
    assert kubelet.lister.calls == 1

    clock.now += 0.1
    assert resources.gpu_allocations(GPUS) == {}
    assert kubelet.lister.calls == 2


def test_failures_are_cached_too(tmp_path: Path) -> None:
    clock = Clock()
    resources = PodResources(tmp_path / "absent.sock", cache_s=5.0, clock=clock)
    for _ in range(3):
        resources.gpu_allocations(GPUS)
    assert resources.calls == 1
    clock.now += 5
    resources.gpu_allocations(GPUS)
    assert resources.calls == 2


def test_last_answer_is_kept_through_a_kubelet_restart(
    kubelet: KubeletServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    resources = PodResources(kubelet.path, cache_s=5.0, stale_s=30.0, pod_logs_dir=None, clock=clock)
    before = resources.gpu_allocations(GPUS)
    assert before

    kubelet.stop()
    clock.now += 20  # down, but within stale_s of the last answer
    assert resources.gpu_allocations(GPUS) == before
    clock.now += 11  # 31 s since the kubelet last answered
    assert resources.gpu_allocations(GPUS) == {}
    assert len(_warnings(caplog)) == 1

    kubelet.start()
    clock.now += 5
    with caplog.at_level(logging.INFO):
        assert resources.gpu_allocations(GPUS) == before
    assert any("answers again" in r.getMessage() for r in caplog.records)
