"""PID -> workload identity, over /proc trees built in tmp_path.

The cgroup texts are written the way real hosts show them: v2 unified lines, v1 hosts with a
dozen controller lines that disagree (Slurm constrains only some controllers), hybrid hosts,
nested scopes, escaped unit names, and paths seen from inside a cgroup namespace.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpufleet.agent import identity
from gpufleet.agent.identity import (
    classify_cgroup,
    identity_from_key,
    parse_cgroup,
    resolve,
    to_json_line,
    workload_key,
)

CID = "3f4b2a1c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a"  # 64 hex, a runtime id
CID2 = "a" * 64
POD_UID = "6f1c2c4e-8a8b-4f0e-9d43-0c2b1e1a2b3c"
POD_SLICE_UID = POD_UID.replace("-", "_")  # what kubelet's systemd driver writes


def make_proc(
    root: Path,
    pid: int,
    cgroup: str | None,
    *,
    environ: dict[str, str] | None = None,
    uid: int | None = None,
) -> Path:
    """One /proc/<pid> directory: cgroup, optionally environ (NUL-separated) and status."""
    pid_dir = root / str(pid)
    pid_dir.mkdir(parents=True)
    if cgroup is not None:
        (pid_dir / "cgroup").write_text(cgroup)
    if environ is not None:
        (pid_dir / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in environ.items()))
    if uid is not None:
        (pid_dir / "status").write_text(f"Name:\tpython\nPid:\t{pid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n")
    return pid_dir


def v1_host(**paths: str) -> str:
    """A cgroup v1 host's file: every controller line, `default` where not given."""
    default = paths.pop("default")
    controllers = ["cpuset", "cpu,cpuacct", "blkio", "memory", "devices", "freezer", "net_cls,net_prio", "pids"]
    lines = [f"{12 - i}:{c}:{paths.get(c.split(',')[0], default)}" for i, c in enumerate(controllers)]
    lines.append(f"1:name=systemd:{paths.get('systemd', default)}")
    return "\n".join(lines) + "\n"


def kind_of(text: str) -> dict | None:
    return classify_cgroup(text)


# --- Kubernetes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cgroup",
    [
        # systemd driver, cgroup v2, containerd, Burstable
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice/cri-containerd-{CID}.scope\n",
        # BestEffort, CRI-O
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_SLICE_UID}.slice/crio-{CID}.scope\n",
        # Guaranteed pods have no QoS slice
        f"0::/kubepods.slice/kubepods-pod{POD_SLICE_UID}.slice/cri-containerd-{CID}.scope\n",
        # a pod UID written with systemd's escaped dash instead of kubelet's '_'
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID.replace('-', chr(92) + 'x2d')}.slice/cri-containerd-{CID}.scope\n",
        # dockershim / cri-dockerd
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice/docker-{CID}.scope\n",
        # kind: --cgroup-root=/kubelet gives kubelet-kubepods-*; inside a container's cgroupns
        f"0::/../../kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{POD_SLICE_UID}.slice/cri-containerd-{CID}.scope\n",
        # a process in a sub-cgroup of the container (systemd or a runtime inside it)
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice/cri-containerd-{CID}.scope/init.scope\n",
        # cgroupfs driver, v1, every controller
        v1_host(default=f"/kubepods/burstable/pod{POD_UID}/{CID}"),
        v1_host(default=f"/kubepods/besteffort/pod{POD_UID}/{CID}"),
        v1_host(default=f"/kubepods/pod{POD_UID}/{CID}"),
        # cgroupfs driver, CRI-O names its cgroups crio-<id>
        f"0::/kubepods/burstable/pod{POD_UID}/crio-{CID}\n",
        # systemd driver on a hybrid host: v1 controllers plus the unified line
        v1_host(
            default=f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice/cri-containerd-{CID}.scope"
        )
        + f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice/cri-containerd-{CID}.scope\n",
        # a kind node's pods as seen from the host, cgroup v1: the node is itself a docker container
        v1_host(default=f"/docker/{CID2}/kubepods/besteffort/pod{POD_UID}/{CID}"),
    ],
)
def test_kubernetes_layouts_give_pod_uid_with_dashes_and_container(cgroup: str) -> None:
    assert kind_of(cgroup) == {"kind": "k8s_pod", "pod_uid": POD_UID, "container": CID}


def test_pod_level_process_has_no_container() -> None:
    text = f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice\n"
    assert kind_of(text) == {"kind": "k8s_pod", "pod_uid": POD_UID, "container": None}


def test_static_pod_uid_is_a_config_hash_without_dashes() -> None:
    # kubelet gives static (mirror) pods the hash of their manifest as UID
    text = f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0123456789abcdef0123456789abcdef.slice/cri-containerd-{CID}.scope\n"
    assert kind_of(text) == {"kind": "k8s_pod", "pod_uid": "0123456789abcdef0123456789abcdef", "container": CID}


def test_crio_conmon_scope_counts_as_its_container() -> None:
    text = f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice/crio-conmon-{CID}.scope\n"
    assert kind_of(text)["container"] == CID


def test_pod_dir_outside_kubepods_is_not_a_pod() -> None:
    assert kind_of("0::/somewhere/pod1234/x\n") is None


def test_kubernetes_wins_over_the_systemd_line_on_v1() -> None:
    text = v1_host(default=f"/kubepods/burstable/pod{POD_UID}/{CID}", systemd="/system.slice/containerd.service")
    assert kind_of(text)["kind"] == "k8s_pod"


# --- Slurm ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cgroup", "job", "step"),
    [
        # cgroup/v1: only the controllers Slurm constrains show the job; name=systemd shows slurmd
        (
            v1_host(
                default="/system.slice/slurmd.service",
                memory="/slurm/uid_1000/job_42/step_0/task_0",
                cpuset="/slurm/uid_1000/job_42/step_0",
                devices="/slurm/uid_1000/job_42/step_0",
                freezer="/slurm/uid_1000/job_42/step_0",
            ),
            "42",
            "0",
        ),
        (v1_host(default="/system.slice/slurmd.service", memory="/slurm/uid_1000/job_42/step_batch/task_0"), "42", "batch"),
        (v1_host(default="/system.slice/slurmd.service", memory="/slurm/uid_1000/job_42/step_extern/task_0"), "42", "extern"),
        (v1_host(default="/", freezer="/slurm/uid_1000/job_7/step_interactive"), "7", "interactive"),
        (v1_host(default="/", memory="/slurm/uid_1000/job_7"), "7", None),
        # several slurmd on one host (--enable-multiple-slurmd): slurm_<nodename>
        (v1_host(default="/", memory="/slurm_node01/uid_1000/job_99/step_3/task_1"), "99", "3"),
        # cgroup/v2
        ("0::/system.slice/slurmstepd.scope/job_42/step_0/user/task_0\n", "42", "0"),
        ("0::/system.slice/slurmstepd.scope/job_42/step_batch/user/task_0\n", "42", "batch"),
        ("0::/system.slice/slurmstepd.scope/job_42/step_extern/user/task_special\n", "42", "extern"),
        ("0::/system.slice/slurmstepd.scope/job_42/step_interactive/user/task_0\n", "42", "interactive"),
        ("0::/system.slice/slurmstepd.scope/job_42/step_12/slurm\n", "42", "12"),  # the step's stepd
        ("0::/system.slice/node01_slurmstepd.scope/job_42/step_0/user/task_0\n", "42", "0"),
        ("0::/system.slice/slurmstepd.scope/job_42/step_1.2/user/task_0\n", "42", "1.2"),  # het component
        ("0::/system.slice/slurmstepd.scope/job_42\n", "42", None),
        ("0::/system.slice/slurmstepd.scope/job_42/step_frobnicate/user\n", "42", None),  # unknown step name
    ],
)
def test_slurm_layouts(cgroup: str, job: str, step: str | None) -> None:
    assert kind_of(cgroup) == {"kind": "slurm_job", "job": job, "step": step}


def test_slurmstepd_system_cgroup_is_the_daemon_not_a_job() -> None:
    assert kind_of("0::/system.slice/slurmstepd.scope/system\n") == {"kind": "systemd_unit", "unit": "slurmstepd.scope"}


def test_slurm_job_in_a_container_inside_the_job_is_the_job() -> None:
    # e.g. an enroot/pyxis container started by the step: Slurm is checked before docker
    text = f"0::/system.slice/slurmstepd.scope/job_5/step_0/user/task_0/docker-{CID}.scope\n"
    assert kind_of(text)["kind"] == "slurm_job"


def test_slurm_environment_enriches_the_job(tmp_path: Path) -> None:
    make_proc(
        tmp_path,
        4242,
        "0::/system.slice/slurmstepd.scope/job_42/step_0/user/task_0\n",
        environ={
            "PATH": "/usr/bin",
            "SLURM_JOB_ACCOUNT": "proj-a",
            "SLURM_JOB_USER": "alice",
            "SLURM_JOB_PARTITION": "gpu",
            "WEIRD": "a=b=c",
        },
    )
    assert resolve(4242, tmp_path) == {
        "pid": 4242,
        "kind": "slurm_job",
        "job": "42",
        "step": "0",
        "account": "proj-a",
        "user": "alice",
        "partition": "gpu",
    }


def test_unreadable_or_missing_environ_still_gives_the_job(tmp_path: Path) -> None:
    make_proc(tmp_path, 1, "0::/system.slice/slurmstepd.scope/job_42/step_0/user/task_0\n")
    pid_dir = make_proc(tmp_path, 2, "0::/system.slice/slurmstepd.scope/job_43/step_0/user/task_0\n")
    (pid_dir / "environ").mkdir()  # reading it fails with an OSError, like EACCES without root
    assert resolve(1, tmp_path) == {"pid": 1, "kind": "slurm_job", "job": "42", "step": "0"}
    assert resolve(2, tmp_path) == {"pid": 2, "kind": "slurm_job", "job": "43", "step": "0"}


def test_partial_slurm_environment_adds_only_what_is_set(tmp_path: Path) -> None:
    make_proc(tmp_path, 3, "0::/system.slice/slurmstepd.scope/job_1/step_0/user/task_0\n", environ={"SLURM_JOB_USER": "bob", "SLURM_JOB_ACCOUNT": ""})
    assert resolve(3, tmp_path) == {"pid": 3, "kind": "slurm_job", "job": "1", "step": "0", "user": "bob"}


# --- Docker and Podman ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cgroup", "kind"),
    [
        (v1_host(default=f"/docker/{CID}"), "docker"),
        (f"0::/docker/{CID}\n", "docker"),  # cgroupfs driver on v2
        (f"0::/system.slice/docker-{CID}.scope\n", "docker"),
        (v1_host(default=f"/system.slice/docker-{CID}.scope"), "docker"),
        # rootless docker, systemd driver: under the user's manager, still the container
        (f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{CID}.scope\n", "docker"),
        (f"0::/machine.slice/libpod-{CID}.scope\n", "podman"),
        (f"0::/machine.slice/libpod-{CID}.scope/container\n", "podman"),  # --systemd=always
        (f"0::/machine.slice/libpod-conmon-{CID}.scope\n", "podman"),
        (f"0::/machine.slice/machine-libpod_pod_{CID2}.slice/libpod-{CID}.scope\n", "podman"),
        (f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope\n", "podman"),
        (v1_host(default=f"/libpod_parent/libpod-{CID}"), "podman"),
    ],
)
def test_plain_containers(cgroup: str, kind: str) -> None:
    assert kind_of(cgroup) == {"kind": kind, "container": CID}


def test_outer_docker_container_wins_in_docker_in_docker() -> None:
    assert kind_of(f"0::/docker/{CID}/docker/{CID2}\n") == {"kind": "docker", "container": CID}


def test_docker_dir_without_a_container_id_is_not_a_container() -> None:
    assert kind_of("0::/docker/buildkit\n") is None


# --- systemd units and user sessions -------------------------------------------------------


@pytest.mark.parametrize(
    ("cgroup", "unit"),
    [
        ("0::/system.slice/ollama.service\n", "ollama.service"),
        ("0::/system.slice/system-getty.slice/getty@tty1.service\n", "getty@tty1.service"),
        ("0::/system.slice/system-triton\\x2dserver.slice/triton\\x2dserver@1.service\n", "triton\\x2dserver@1.service"),
        ("0::/system.slice/containerd.service/worker\n", "containerd.service"),  # a delegated subtree
        ("0::/system.slice/run-r3f2a.scope\n", "run-r3f2a.scope"),  # systemd-run --scope
        ("0::/init.scope\n", "init.scope"),
        (v1_host(default="/system.slice/vllm.service") + "0::/system.slice/vllm.service\n", "vllm.service"),
        # v1 host with only name=systemd informative, other controllers at the root
        (v1_host(default="/", systemd="/system.slice/vllm.service"), "vllm.service"),
    ],
)
def test_systemd_units(cgroup: str, unit: str) -> None:
    assert kind_of(cgroup) == {"kind": "systemd_unit", "unit": unit}


@pytest.mark.parametrize(
    "cgroup",
    [
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-jupyter-1234.scope\n",
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/jupyter.service\n",
        v1_host(default="/user.slice", systemd="/user.slice/user-1000.slice/session-c2.scope"),
    ],
)
def test_user_sessions_and_user_units_belong_to_the_user(cgroup: str) -> None:
    assert kind_of(cgroup) == {"kind": "user", "uid": 1000}


# --- fallbacks and errors ------------------------------------------------------------------


def test_unclassified_process_is_billed_to_the_real_uid(tmp_path: Path) -> None:
    make_proc(tmp_path, 10, "0::/\n", uid=1234)
    make_proc(tmp_path, 11, "0::/lxc/mybox\n", uid=0)
    assert resolve(10, tmp_path) == {"pid": 10, "kind": "user", "uid": 1234}
    assert resolve(11, tmp_path) == {"pid": 11, "kind": "user", "uid": 0}


def test_status_without_uid_falls_back_to_the_owner_of_the_pid_dir(tmp_path: Path) -> None:
    pid_dir = make_proc(tmp_path, 12, "0::/\n")
    (pid_dir / "status").write_text("Name:\tx\n")
    assert resolve(12, tmp_path) == {"pid": 12, "kind": "user", "uid": os.stat(pid_dir).st_uid}


def test_real_uid_not_effective_uid() -> None:
    assert identity.parse_status_uid("Uid:\t1000\t0\t0\t0\n") == 1000


def test_process_gone_is_a_value_not_an_exception(tmp_path: Path) -> None:
    assert resolve(99999, tmp_path) == {"pid": 99999, "kind": None, "error": "no such process"}


def test_permission_denied_is_a_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_proc(tmp_path, 13, "0::/\n")

    def denied(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(identity, "_read_text", denied)
    assert resolve(13, tmp_path) == {"pid": 13, "kind": None, "error": "permission denied"}


def test_other_os_errors_are_a_value_too(tmp_path: Path) -> None:
    pid_dir = tmp_path / "14"
    (pid_dir / "cgroup").mkdir(parents=True)
    result = resolve(14, tmp_path)
    assert result["kind"] is None and result["error"].startswith("unreadable: ")


def test_bad_pid_is_a_caller_error(tmp_path: Path) -> None:
    for bad in (-1, "12", True, 1.0):
        with pytest.raises(ValueError):
            resolve(bad, tmp_path)  # type: ignore[arg-type]


def test_deleted_cgroup_still_names_its_workload() -> None:
    assert kind_of("0::/system.slice/slurmstepd.scope/job_8/step_0/user/task_0 (deleted)\n")["job"] == "8"


def test_parse_cgroup_ranks_unified_then_systemd_then_controllers_and_keeps_colons() -> None:
    text = "4:memory:/a\n1:name=systemd:/b\n0::/c:d\ngarbage\n\n7:cpuset:/e\n"
    assert [line.path for line in parse_cgroup(text)] == ["/c:d", "/b", "/a", "/e"]


def test_empty_cgroup_file_falls_back_to_uid(tmp_path: Path) -> None:
    make_proc(tmp_path, 15, "", uid=77)
    assert resolve(15, tmp_path) == {"pid": 15, "kind": "user", "uid": 77}


def test_resolve_all_answers_every_pid(tmp_path: Path) -> None:
    make_proc(tmp_path, 20, "0::/system.slice/a.service\n")
    assert [i["kind"] for i in identity.resolve_all([20, 21], tmp_path)] == ["systemd_unit", None]


# --- output --------------------------------------------------------------------------------


def test_json_line_is_compact_with_pid_and_kind_first(tmp_path: Path) -> None:
    make_proc(tmp_path, 4242, f"0::/kubepods.slice/kubepods-pod{POD_SLICE_UID}.slice/cri-containerd-{CID}.scope\n")
    assert to_json_line(resolve(4242, tmp_path)) == (
        f'{{"pid":4242,"kind":"k8s_pod","pod_uid":"{POD_UID}","container":"{CID}"}}'
    )


@pytest.mark.parametrize(
    ("ident", "line"),
    [
        ({"step": None, "job": "42", "kind": "slurm_job", "pid": 1}, '{"pid":1,"kind":"slurm_job","job":"42","step":null}'),
        (
            {"partition": "gpu", "user": "alice", "account": "a", "step": "0", "job": "42", "kind": "slurm_job", "pid": 1},
            '{"pid":1,"kind":"slurm_job","job":"42","step":"0","account":"a","user":"alice","partition":"gpu"}',
        ),
        ({"error": "no such process", "kind": None, "pid": 5}, '{"pid":5,"kind":null,"error":"no such process"}'),
        ({"uid": 0, "kind": "user", "pid": 1, "zeta": 1, "alpha": "é"}, '{"pid":1,"kind":"user","uid":0,"alpha":"\\u00e9","zeta":1}'),
        ({"unit": "triton\\x2dserver.service", "kind": "systemd_unit", "pid": 2}, '{"pid":2,"kind":"systemd_unit","unit":"triton\\\\x2dserver.service"}'),
    ],
)
def test_json_line_key_order_is_fixed(ident: dict, line: str) -> None:
    assert to_json_line(ident) == line
    assert json.loads(line) == ident


@pytest.mark.parametrize(
    ("ident", "key"),
    [
        ({"pid": 1, "kind": "k8s_pod", "pod_uid": POD_UID, "container": CID}, f"k8s:{POD_UID}/{CID[:12]}"),
        ({"pid": 1, "kind": "k8s_pod", "pod_uid": POD_UID, "container": None}, f"k8s:{POD_UID}"),
        ({"pid": 1, "kind": "slurm_job", "job": "42", "step": "batch", "account": "x"}, "slurm:42"),
        ({"pid": 1, "kind": "docker", "container": CID}, f"docker:{CID[:12]}"),
        ({"pid": 1, "kind": "podman", "container": CID}, f"podman:{CID[:12]}"),
        ({"pid": 1, "kind": "systemd_unit", "unit": "vllm.service"}, "unit:vllm.service"),
        ({"pid": 1, "kind": "user", "uid": 1000}, "uid:1000"),
        ({"pid": 77, "kind": None, "error": "no such process"}, "pid:77"),
    ],
)
def test_workload_keys(ident: dict, key: str) -> None:
    assert workload_key(ident) == key


@pytest.mark.parametrize(
    "key",
    [f"k8s:{POD_UID}/{CID[:12]}", f"k8s:{POD_UID}", "slurm:42", "docker:3f4b2a1c9d8e", "podman:3f4b2a1c9d8e", "unit:a.service", "uid:0"],
)
def test_identity_from_key_round_trips(key: str) -> None:
    ident = identity_from_key(key)
    assert ident["pid"] is None
    assert workload_key(ident) == key


@pytest.mark.parametrize("key", ["", "slurm", "slurm:", "uid:abc", "vm:1", "pid:3"])
def test_identity_from_bad_key_raises(key: str) -> None:
    with pytest.raises(ValueError):
        identity_from_key(key)


def test_unknown_kind_has_no_key() -> None:
    with pytest.raises(ValueError):
        workload_key({"pid": 1, "kind": "vm"})


def test_pods_known_only_by_name_get_a_key_of_their_own():
    """pod-resources owners have namespace and pod name but no UID: they must not all be `k8s:None`."""
    from gpufleet.agent.identity import identity_from_key, workload_key

    owner = {"pid": None, "kind": "k8s_pod", "pod_uid": None, "container": None, "namespace": "vision", "pod": "train-0"}
    assert workload_key(owner) == "k8s-pod:vision/train-0"
    assert identity_from_key("k8s-pod:vision/train-0")["namespace"] == "vision"
    long_key = workload_key({**owner, "namespace": "n" * 63, "pod": "p" * 200})
    assert len(long_key) <= 128 and long_key != workload_key({**owner, "namespace": "n" * 63, "pod": "p" * 199})
