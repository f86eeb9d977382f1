"""agent/capture.py: real `nvidia-smi -q -x` captures -> profile -> fake driver -> pynvml -> reader.

Every value a capture shows must come out unchanged (in reading units), and whatever it shows as
N/A, or lacks, must be absent. The expectations below are written from the XML by hand.
The captures are in shared/gpu-captures beside the clone (CI) or /work/shared; a missing folder
fails the test, it does not skip it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpufleet.agent import capture

MiB = 1 << 20


def captures_dir() -> Path:
    for folder in (Path(__file__).parents[2].parent / "shared" / "gpu-captures", Path("/work/shared/gpu-captures")):
        if folder.is_dir():
            return folder
    pytest.fail("shared/gpu-captures not found beside the repository (nor /work/shared/gpu-captures)", pytrace=False)


# capture -> (uuid, model, values, compute processes)
EXPECTED = {
    "a100-sxm4-v12.xml": (
        "GPU-513536b6-7d19-9063-b049-1e69664bb298", "NVIDIA A100-SXM4-80GB",
        {"power_mw": 67_030, "power_limit_mw": 500_000, "temp_gpu_c": 27, "temp_mem_c": 44,
         "temp_slowdown_c": 89, "temp_shutdown_c": 92, "mem_used_bytes": 50 * MiB, "mem_total_bytes": 81920 * MiB,
         "clock_sm_mhz": 1275, "clock_mem_mhz": 1593, "ecc_corrected_volatile": 0, "ecc_uncorrected_volatile": 0,
         "ecc_corrected_aggregate": 0, "ecc_uncorrected_aggregate": 0, "clock_event_reasons": 0, "pcie_replays": 0},
        [],
    ),
    "gtx-1070-ti.xml": (
        "GPU-f9ba66fc-a7f5-94c5-da19-019ef2f9c665", "GeForce GTX 1070 Ti",
        {"fan_pct": 100, "mem_total_bytes": 4096 * MiB, "mem_used_bytes": 42 * MiB, "util_gpu_pct": 0,
         "util_mem_pct": 0, "temp_gpu_c": 39, "clock_sm_mhz": 135, "clock_mem_mhz": 405},
        [],
    ),
    "gtx-1660-ti.xml": (
        "GPU-304a277d-3545-63b8-3a36-dfde3c992989", "Graphics Device",
        {"pcie_replays": 0, "fan_pct": 0, "clock_event_reasons": 0x1, "mem_total_bytes": 5912 * MiB,
         "mem_used_bytes": 0, "util_gpu_pct": 0, "util_mem_pct": 1, "util_enc_pct": 0, "util_dec_pct": 0,
         "temp_gpu_c": 40, "temp_shutdown_c": 96, "temp_slowdown_c": 93, "power_mw": 8_930,
         "power_limit_mw": 130_000, "clock_sm_mhz": 300, "clock_mem_mhz": 405},
        [],
    ),
    "quadro-p400.xml": (
        "GPU-8f750be4-dfbc-23b9-b33f-da729a536494", "Quadro P400",
        {"pcie_replays": 0, "fan_pct": 34, "clock_event_reasons": 0x1, "mem_total_bytes": 1998 * MiB,
         "mem_used_bytes": 0, "util_gpu_pct": 0, "util_mem_pct": 3, "util_enc_pct": 0, "util_dec_pct": 0,
         "temp_gpu_c": 33, "temp_shutdown_c": 103, "temp_slowdown_c": 100, "clock_sm_mhz": 139, "clock_mem_mhz": 405},
        [],
    ),
    "rtx-3060-v12.xml": (
        "GPU-d6889ff6-2523-9142-ca3c-1ca3f396a625", "NVIDIA GeForce RTX 3060",
        {"pcie_replays": 0, "fan_pct": 0, "clock_event_reasons": 0x1, "mem_total_bytes": 12288 * MiB,
         "mem_used_bytes": 116 * MiB, "util_gpu_pct": 0, "util_mem_pct": 0, "util_enc_pct": 0, "util_dec_pct": 0,
         "temp_gpu_c": 42, "temp_shutdown_c": 98, "temp_slowdown_c": 95,
         "power_mw": 11_600,  # average_power_draw: what nvmlDeviceGetPowerUsage gives on Ampere
         "power_limit_mw": 170_000, "clock_sm_mhz": 210, "clock_mem_mhz": 405},
        [],
    ),
    "rtx-3080-v12.xml": (
        "GPU-19d6d965-2acc-f646-00f8-4c76979aabb4", "NVIDIA GeForce RTX 3080",
        {"pcie_replays": 0, "fan_pct": 0, "clock_event_reasons": 0x1, "mem_total_bytes": 10240 * MiB,
         "mem_used_bytes": 1128 * MiB, "util_gpu_pct": 0, "util_mem_pct": 37, "util_enc_pct": 0, "util_dec_pct": 0,
         "temp_gpu_c": 31, "temp_shutdown_c": 98, "temp_slowdown_c": 95, "power_mw": 22_780,
         "power_limit_mw": 336_000, "clock_sm_mhz": 210, "clock_mem_mhz": 405},
        [],  # five graphics (G) processes: not compute
    ),
    "rtx-3080-v13.xml": (
        "GPU-19d6d965-2acc-f646-00f8-4c76979aabb4", "NVIDIA GeForce RTX 3080",
        {"pcie_replays": 0, "fan_pct": 0, "clock_event_reasons": 0, "mem_total_bytes": 10240 * MiB,
         "mem_used_bytes": 9184 * MiB, "util_gpu_pct": 65, "util_mem_pct": 9, "util_enc_pct": 0, "util_dec_pct": 0,
         "temp_gpu_c": 27, "temp_shutdown_c": 98, "temp_slowdown_c": 95, "power_mw": 139_620,
         "power_limit_mw": 320_000, "clock_sm_mhz": 1950, "clock_mem_mhz": 9251},
        [],
    ),
    "rtx-3090-v12.xml": (
        "GPU-12345678-aaaa-bbbb-cccc-0123456789ab", "NVIDIA GeForce RTX 3090",
        {"pcie_replays": 0, "fan_pct": 0, "clock_event_reasons": 0x1, "mem_total_bytes": 24576 * MiB,
         "mem_used_bytes": 1 * MiB, "util_gpu_pct": 0, "util_mem_pct": 0, "util_enc_pct": 0, "util_dec_pct": 0,
         "temp_gpu_c": 37, "temp_shutdown_c": 98, "temp_slowdown_c": 95, "power_mw": 27_230,
         "power_limit_mw": 200_000,  # the enforced limit, not the 350 W default
         "clock_sm_mhz": 0, "clock_mem_mhz": 405},
        [],
    ),
    "tesla-t4.xml": (
        "GPU-d37e67a5-91dd-3774-a5cb-99096249601a", "Tesla T4",
        {"pcie_replays": 0, "clock_event_reasons": 0, "mem_total_bytes": 15360 * MiB, "mem_used_bytes": 1032 * MiB,
         "util_gpu_pct": 0, "util_mem_pct": 0, "util_enc_pct": 0, "util_dec_pct": 0,
         "ecc_corrected_volatile": 0, "ecc_uncorrected_volatile": 0, "ecc_corrected_aggregate": 0,
         "ecc_uncorrected_aggregate": 0, "retired_pages_sbe": 0, "retired_pages_dbe": 0, "retired_pages_pending": 0,
         "temp_gpu_c": 40, "temp_shutdown_c": 96, "temp_slowdown_c": 93, "power_mw": 26_780,
         "power_limit_mw": 70_000, "clock_sm_mhz": 585, "clock_mem_mhz": 5000},
        [{"pid": 5762, "used_memory_bytes": 1005 * MiB, "sm_util_pct": None}],  # Xorg (G) is not compute
    ),
}


def test_every_capture_has_expectations() -> None:
    assert sorted(p.name for p in captures_dir().glob("*.xml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_capture_round_trips_through_the_real_reader(name: str) -> None:
    uuid, model, values, processes = EXPECTED[name]
    sample = capture.sample_capture(captures_dir() / name)
    assert list(sample) == [uuid]
    gpu = sample[uuid]
    assert (gpu["index"], gpu["model"]) == (0, model)
    assert gpu["values"] == values  # nothing more: N/A and missing values are absent
    assert gpu["processes"] == processes
    json.dumps(sample)  # JSON-able as it is


def test_mig_instances_of_a_capture() -> None:
    sample = capture.sample_capture(captures_dir() / "a100-sxm4-v12.xml")
    (gpu,) = sample.values()
    instances = gpu["mig_instances"]
    assert [m["gpu_instance_id"] for m in instances] == [3, 4, 5, 6]
    assert all(m["values"] == {"mem_total_bytes": 19968 * MiB, "mem_used_bytes": 12 * MiB} for m in instances)
    assert all(m["uuid"].startswith("MIG-") for m in instances) and len({m["uuid"] for m in instances}) == 4
    # under MIG the capture shows no utilisation and no remapped rows: neither does the reader
    assert "util_gpu_pct" not in gpu["values"] and "remap_failure" not in gpu["values"]


def test_a_profile_is_plain_json_and_replays_the_same() -> None:
    profile = capture.profile_from_capture(captures_dir() / "tesla-t4.xml")
    again = json.loads(json.dumps(profile))
    assert capture.one_sample_json(again) == capture.one_sample_json(profile)
    assert profile["driver_version"] == "515.105.01"
    assert profile["gpus"][0]["memory_reserved_bytes"] == 388 * MiB


def test_one_sample_leaves_no_fake_installed() -> None:
    import pynvml

    capture.sample_capture(captures_dir() / "tesla-t4.xml")
    assert pynvml.nvmlLib is None  # the next nvmlInit would load the real library


# --- safe parsing ----------------------------------------------------------------------------------

GOOD_HEAD = '<?xml version="1.0" ?>\n<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">\n'
MINIMAL_GPU = "<gpu id='0'><product_name>X</product_name><uuid>GPU-1</uuid><fan_speed>50 %</fan_speed></gpu>"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "capture.xml"
    path.write_text(text)
    return path


def test_an_external_dtd_reference_is_accepted_and_not_fetched(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_HEAD + f"<nvidia_smi_log>{MINIMAL_GPU}</nvidia_smi_log>")
    assert capture.profile_from_capture(path)["gpus"][0]["values"] == {"fan_pct": 50}


@pytest.mark.parametrize(
    "text",
    [
        # billion laughs
        '<?xml version="1.0"?><!DOCTYPE nvidia_smi_log [<!ENTITY a "ha"><!ENTITY b "&a;&a;&a;&a;">]>'
        "<nvidia_smi_log>&b;</nvidia_smi_log>",
        # external entity (local file disclosure)
        '<?xml version="1.0"?><!DOCTYPE nvidia_smi_log [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        "<nvidia_smi_log>&x;</nvidia_smi_log>",
        # an internal subset even without entities
        '<?xml version="1.0"?><!DOCTYPE nvidia_smi_log [<!ELEMENT nvidia_smi_log ANY>]><nvidia_smi_log/>',
        # an entity the external DTD would have to define
        GOOD_HEAD + "<nvidia_smi_log>&undefined;</nvidia_smi_log>",
    ],
)
def test_entities_and_internal_subsets_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(capture.CaptureError, match="refused"):
        capture.profile_from_capture(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<nvidia_smi_log><gpu>", "not well-formed"),
        ("<html/>", "not an nvidia-smi capture"),
        ("<nvidia_smi_log/>", "no <gpu>"),
    ],
)
def test_other_files_are_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(capture.CaptureError, match=message):
        capture.profile_from_capture(write(tmp_path, text))


def test_an_oversized_capture_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture, "MAX_CAPTURE_BYTES", 1000)
    with pytest.raises(capture.CaptureError, match="larger than"):
        capture.profile_from_capture(write(tmp_path, GOOD_HEAD + "<nvidia_smi_log>" + " " * 2000 + "</nvidia_smi_log>"))


def test_units_not_as_expected_are_absent_not_guessed(tmp_path: Path) -> None:
    gpu = (
        "<gpu id='0'><product_name>X</product_name><uuid>GPU-1</uuid>"
        "<fan_speed>Unknown Error</fan_speed><temperature><gpu_temp>40 F</gpu_temp></temperature>"
        "<gpu_power_readings><power_draw>[N/A]</power_draw><current_power_limit>250 W</current_power_limit>"
        "</gpu_power_readings><fb_memory_usage><total>1 GiB</total><used>5 MiB</used></fb_memory_usage></gpu>"
    )
    profile = capture.profile_from_capture(write(tmp_path, f"<nvidia_smi_log>{gpu}</nvidia_smi_log>"))
    assert profile["gpus"][0]["values"] == {"power_limit_mw": 250_000, "mem_used_bytes": 5 * MiB}
    # through the reader: total and used memory come from one NVML call, so neither is reported
    sample = capture.one_sample_json(profile)
    assert sample["GPU-1"]["values"] == {"power_limit_mw": 250_000}
