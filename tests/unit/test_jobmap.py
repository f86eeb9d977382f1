"""Job-mapping directory (dcgm-exporter's --hpc-job-mapping-dir layout) and the static map."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.agent.jobmap import MAX_FILE_BYTES, ReportOnce, parse_job_file, read_job_mapping, static_job_mapping

GPUS = [(0, "GPU-aaaaaaaa-0000-0000-0000-000000000000"), (1, "GPU-bbbbbbbb-1111-1111-1111-111111111111"), (2, "GPU-cccc")]


def job(j: str) -> dict:
    return {"pid": None, "kind": "slurm_job", "job": j, "step": None}


class Problems:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, problem: str, detail: str) -> None:
        self.seen.append((problem, detail))

    @property
    def kinds(self) -> list[str]:
        return [problem for problem, _ in self.seen]


def test_one_file_per_gpu_index_one_job_per_line(tmp_path: Path) -> None:
    (tmp_path / "0").write_text("42\n")
    (tmp_path / "1").write_text("42\n43\n")
    problems = Problems()
    assert read_job_mapping(tmp_path, GPUS, report=problems) == {0: [job("42")], 1: [job("42"), job("43")]}
    assert problems.seen == []


def test_files_named_by_uuid_and_index_merge_without_duplicates(tmp_path: Path) -> None:
    (tmp_path / "0").write_text("42\n")
    (tmp_path / GPUS[0][1]).write_text("42\n44\n")
    assert read_job_mapping(tmp_path, GPUS, report=Problems()) == {0: [job("42"), job("44")]}


def test_jobstats_lines_with_a_uid_after_the_job_id(tmp_path: Path) -> None:
    (tmp_path / "2").write_text("45916256 262563\n")
    assert read_job_mapping(tmp_path, GPUS, report=Problems()) == {2: [job("45916256")]}


def test_blank_lines_comments_array_and_het_ids_and_workload_keys() -> None:
    text = "\n# written by prolog\n  42_7  \n42+1\nk8s:6f1c2c4e-8a8b-4f0e-9d43-0c2b1e1a2b3c\nunit:vllm.service\n"
    holders, bad = parse_job_file(text)
    assert holders == [
        job("42_7"),
        job("42+1"),
        {"pid": None, "kind": "k8s_pod", "pod_uid": "6f1c2c4e-8a8b-4f0e-9d43-0c2b1e1a2b3c", "container": None},
        {"pid": None, "kind": "systemd_unit", "unit": "vllm.service"},
    ]
    assert bad == []


def test_bad_lines_are_skipped_and_reported(tmp_path: Path) -> None:
    (tmp_path / "0").write_text("42\nvm:9\n$(rm -rf)\n43\n")
    problems = Problems()
    assert read_job_mapping(tmp_path, GPUS, report=problems) == {0: [job("42"), job("43")]}
    assert problems.kinds == ["bad_line", "bad_line"]


def test_missing_directory_is_empty_not_an_error(tmp_path: Path) -> None:
    problems = Problems()
    assert read_job_mapping(tmp_path / "nope", GPUS, report=problems) == {}
    assert problems.kinds == ["missing_dir"]


def test_no_directory_configured_is_silent() -> None:
    problems = Problems()
    assert read_job_mapping(None, GPUS, report=problems) == {}
    assert problems.seen == []


def test_unreadable_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "0").mkdir()  # reading fails with an OSError (IsADirectoryError)
    (tmp_path / "1").write_text("7\n")
    problems = Problems()
    assert read_job_mapping(tmp_path, GPUS, report=problems) == {1: [job("7")]}
    assert problems.kinds == ["unreadable_file"]


def test_oversized_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "0").write_text("1\n" * (MAX_FILE_BYTES // 2 + 1))
    problems = Problems()
    assert read_job_mapping(tmp_path, GPUS, report=problems) == {}
    assert problems.kinds == ["oversized_file"]


def test_files_for_unknown_gpus_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "7").write_text("42\n")
    (tmp_path / "README").write_text("hello\n")
    assert read_job_mapping(tmp_path, GPUS, report=Problems()) == {}


def test_static_map_by_index_string_int_or_uuid() -> None:
    static = {"0": "slurm:42", 1: ["unit:vllm.service", "uid:1000"], "GPU-cccc": "docker:3f4b2a1c9d8e"}
    assert static_job_mapping(static, GPUS) == {
        0: [job("42")],
        1: [{"pid": None, "kind": "systemd_unit", "unit": "vllm.service"}, {"pid": None, "kind": "user", "uid": 1000}],
        2: [{"pid": None, "kind": "docker", "container": "3f4b2a1c9d8e"}],
    }


def test_static_map_with_bad_key_fails_loudly() -> None:
    with pytest.raises(ValueError, match="vm"):
        static_job_mapping({"0": "vm:1"}, GPUS)


def test_directory_then_static_deduplicated(tmp_path: Path) -> None:
    (tmp_path / "0").write_text("42\n")
    result = read_job_mapping(tmp_path, GPUS, static={"0": ["slurm:42", "uid:5"]}, report=Problems())
    assert result == {0: [job("42"), {"pid": None, "kind": "user", "uid": 5}]}


def test_static_map_still_applies_without_the_directory(tmp_path: Path) -> None:
    assert read_job_mapping(tmp_path / "nope", GPUS, static={"1": "slurm:9"}, report=Problems()) == {1: [job("9")]}


def test_report_once_logs_each_problem_once_and_counts_all(caplog: pytest.LogCaptureFixture) -> None:
    reporter = ReportOnce()
    for _ in range(5):
        reporter("missing_dir", "/run/dcgm-job-map")
    reporter("missing_dir", "/elsewhere")
    assert reporter.counts["missing_dir"] == 6
    assert len([r for r in caplog.records if "job mapping" in r.getMessage()]) == 2
