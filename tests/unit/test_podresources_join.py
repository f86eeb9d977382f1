"""The pure half of agent/podresources.py: reading a List() answer, device ids, the joins."""

from __future__ import annotations

import pytest

from gpufleet import wire
from gpufleet.agent.podresources import (
    Allocation,
    PodRef,
    enrich,
    gpu_allocations_of,
    gpu_of,
    owner_identity,
    parse_pod_log_dirs,
    uids_by_pod,
)
from gpufleet.agent.podresources_pb import api_pb2

GPU0 = "GPU-00000000-aaaa-0000-0000-000000000000"
GPU1 = "GPU-11111111-bbbb-0000-0000-000000000000"
MIG = "MIG-0f0f0f0f-1111-5555-8888-000000000001"
GPUS = [(0, GPU0), (1, MIG), (1, GPU1)]  # GPU 1 in MIG mode, its instance listed first


def test_list_answer_keeps_gpu_resources_and_strips_replicas() -> None:
    answer = api_pb2.ListPodResourcesResponse(
        pod_resources=[
            api_pb2.PodResources(
                namespace="ml",
                name="p",
                containers=[
                    api_pb2.ContainerResources(
                        name="c",
                        devices=[
                            api_pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=[GPU0 + "::2"]),
                            api_pb2.ContainerDevices(resource_name="nvidia.com/mig-1g.10gb", device_ids=[MIG]),
                            api_pb2.ContainerDevices(resource_name="intel.com/sriov", device_ids=["0000:3b:00.2"]),
                            api_pb2.ContainerDevices(resource_name="nvidia.com/gpu.shared", device_ids=[GPU1]),
                        ],
                    )
                ],
            )
        ]
    )
    ref = PodRef("ml", "p", "c")
    assert gpu_allocations_of(answer) == (
        Allocation(ref, "nvidia.com/gpu", GPU0),
        Allocation(ref, "nvidia.com/mig-1g.10gb", MIG),
        Allocation(ref, "nvidia.com/gpu.shared", GPU1),
    )
    assert gpu_allocations_of(answer, resources=("nvidia.com/gpu",)) == (Allocation(ref, "nvidia.com/gpu", GPU0),)


def test_wire_format_field_numbers_match_the_kubelets_proto() -> None:
    # kubernetes staging/src/k8s.io/kubelet/pkg/apis/podresources/v1/api.proto, v1.PodResources
    # {name = 1, namespace = 2, containers = 3}; ContainerResources {name = 1, devices = 2};
    # ContainerDevices {resource_name = 1, device_ids = 2}; the response's pod_resources = 1.
    raw = bytes.fromhex(
        "0a21"  # pod_resources (1), 33 bytes
        "0a0170"  # name (1) "p"
        "12026d6c"  # namespace (2) "ml"
        "1a18"  # containers (3), 24 bytes
        "0a0163"  # name (1) "c"
        "1213"  # devices (2), 19 bytes
        "0a0e6e76696469612e636f6d2f677075"  # resource_name (1) "nvidia.com/gpu"
        "120130"  # device_ids (2) "0"
    )
    answer = api_pb2.ListPodResourcesResponse.FromString(raw)
    assert gpu_allocations_of(answer) == (Allocation(PodRef("ml", "p", "c"), "nvidia.com/gpu", "0"),)
    assert answer.SerializeToString() == raw


@pytest.mark.parametrize(
    ("device_id", "gpu"),
    [
        (GPU0, (0, GPU0)),
        (MIG, (1, MIG)),  # the caller listed the MIG device under its GPU's index
        ("MIG-GPU-11111111-bbbb-0000-0000-000000000000/1/0", (1, GPU1)),  # pre-R470 MIG UUID: parent inside
        ("1", (1, GPU1)),  # --device-id-strategy=index: the GPU, not its MIG device
        ("0:3", (0, GPU0)),  # index strategy, MIG device 3 on GPU 0
        ("7", None),  # no GPU 7 here
        ("GPU-99999999-9999-0000-0000-000000000000", None),
        ("MIG-GPU-99999999-9999-0000-0000-000000000000/1/0", None),
        ("nvidia0", None),  # GKE names GPUs by device minor: not supported
        ("", None),
    ],
)
def test_device_ids_resolve_to_listed_gpus(device_id: str, gpu: tuple[int, str] | None) -> None:
    assert gpu_of(device_id, GPUS) == gpu


def test_pod_log_dirs_map_uids_to_pods() -> None:
    names = [
        "ml_trainer-0_0b6f6a53-5d3e-4c5e-9d53-2f3b8c7a9e01",
        "kube-system_coredns-5d78c9869d-x2x7f_6e8d1c2a-77a0-4b0b-8f4e-1c9b5a3d2e10",
        "0b6f6a53-5d3e-4c5e-9d53-2f3b8c7a9e99",  # pre-1.14: <uid> alone
        "a_b",
        "a__c",
    ]
    assert parse_pod_log_dirs(names) == {
        "0b6f6a53-5d3e-4c5e-9d53-2f3b8c7a9e01": ("ml", "trainer-0"),
        "6e8d1c2a-77a0-4b0b-8f4e-1c9b5a3d2e10": ("kube-system", "coredns-5d78c9869d-x2x7f"),
    }


def test_a_pod_name_with_two_uids_has_none() -> None:
    # db-0 was recreated; the old log directory has not been collected yet
    assert uids_by_pod({"u1": ("db", "db-0"), "u2": ("db", "db-0"), "u3": ("ml", "p")}) == {("ml", "p"): "u3"}


def test_owner_identity_is_wire_safe() -> None:
    owner = owner_identity(PodRef("ml", "trainer-0", "trainer"), None)
    public = {k: v for k, v in owner.items() if k != "pid"}
    assert wire._decode_identity("k8s-pod:ml/trainer-0", public) == public


# --- enrich ------------------------------------------------------------------------------------

PROC = {"pid": 4242, "kind": "k8s_pod", "pod_uid": "u-1", "container": "c0ffee" * 10}
TRAINER = PodRef("ml", "trainer-0", "trainer")
SIDECAR = PodRef("ml", "trainer-0", "sidecar")
OTHER = PodRef("ml", "notebook", "jupyter")
ELSEWHERE = PodRef("vision", "infer", "server")


def test_uid_join_is_exact_whatever_holds_the_gpu() -> None:
    by_uid = {"u-1": ("ml", "trainer-0")}
    assert enrich(PROC, [TRAINER], by_uid) == {**PROC, "namespace": "ml", "pod": "trainer-0", "container_name": "trainer"}
    # the GPU is shared with another pod: the UID still says which pod this process is in
    assert enrich(PROC, [OTHER, TRAINER], by_uid)["pod"] == "trainer-0"
    # the pod's two containers both hold the GPU: which one runs the process is not known
    assert "container_name" not in enrich(PROC, [TRAINER, SIDECAR], by_uid)
    # a UID the log directory lacks is not guessed from the GPU
    assert enrich(PROC, [TRAINER], {"u-2": ("ml", "x")}) == PROC


def test_gpu_join_without_uids() -> None:
    assert enrich(PROC, [TRAINER]) == {**PROC, "namespace": "ml", "pod": "trainer-0", "container_name": "trainer"}
    assert enrich(PROC, [TRAINER, SIDECAR]) == {**PROC, "namespace": "ml", "pod": "trainer-0"}
    assert enrich(PROC, [TRAINER, OTHER]) == {**PROC, "namespace": "ml"}  # time-sliced within one namespace
    assert enrich(PROC, [TRAINER, ELSEWHERE]) == PROC  # no telling
    assert enrich(PROC, []) == PROC


def test_enrich_leaves_other_identities_alone() -> None:
    slurm = {"pid": 7, "kind": "slurm_job", "job": "42", "step": None}
    done = {**PROC, "namespace": "set-by-someone-else"}
    assert enrich(slurm, [TRAINER]) is slurm
    assert enrich(done, [TRAINER], {"u-1": ("ml", "trainer-0")}) is done
    assert "namespace" not in PROC  # enrich copies, never edits
