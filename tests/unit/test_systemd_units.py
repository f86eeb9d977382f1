"""The shipped systemd units keep their sandbox: a dedicated user, a read-only system, only the
NVIDIA devices for the agent, nothing for the collector and the rollup, and `systemd-analyze security` rating
each at most 2.5 ("OK"). The rating runs where systemd-analyze is installed (Debian package
`systemd`; it works offline, without systemd running, as in a container)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = {name: REPO / "systemd" / f"gpufleet-{name}.service" for name in ("agent", "collector", "rollup")}
DAEMONS = ("agent", "collector")  # long-running; rollup is a oneshot of gpufleet-rollup.timer
MAX_EXPOSURE = 2.5


def unit(name: str) -> dict[str, list[str]]:
    """The [Service] section: key -> every value given (DeviceAllow= and others repeat)."""
    section, out = None, {}
    for line in UNITS[name].read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}= should be set once, is {values}"
    return values[0]


@pytest.mark.parametrize("name", sorted(UNITS))
def test_all_run_as_the_gpufleet_user_on_a_read_only_system(name: str) -> None:
    service = unit(name)
    expected = {
        "User": "gpufleet", "Group": "gpufleet", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "UMask": "0077", "DevicePolicy": "closed",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
        "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes", "RestrictRealtime": "yes",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    if name in DAEMONS:
        expected |= {"StateDirectory": "gpufleet", "Restart": "on-failure"}
    assert {key: one(service, key) for key in expected} == expected
    assert service["SystemCallFilter"][0] == "@system-service"
    assert "ReadWritePaths" not in service  # writes go to StateDirectory only


def test_the_agent_keeps_only_ptrace_and_the_nvidia_devices() -> None:
    service = unit("agent")
    assert one(service, "CapabilityBoundingSet") == one(service, "AmbientCapabilities") == "CAP_SYS_PTRACE"
    assert service["DeviceAllow"] == ["char-nvidia-frontend rw", "char-nvidia rw", "char-nvidia-caps r"]
    # PrivateDevices= would build a /dev without /dev/nvidia*, and NVML would find no GPU.
    assert service.get("PrivateDevices", ["no"]) == ["no"]
    # The agent reads every process's /proc/PID/{cgroup,environ} and NVML /proc/driver/nvidia.
    assert "ProtectProc" not in service and "ProcSubset" not in service


@pytest.mark.parametrize("name", ["collector", "rollup"])
def test_the_collector_and_rollup_have_no_capabilities_devices_or_view_of_other_processes(name: str) -> None:
    service = unit(name)
    assert one(service, "CapabilityBoundingSet") == ""
    assert one(service, "PrivateDevices") == "yes" and "DeviceAllow" not in service
    assert one(service, "ProtectProc") == "invisible" and one(service, "ProcSubset") == "pid"
    assert one(service, "PrivateUsers") == "yes"


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_analyze_security_rates_the_unit_ok(name: str) -> None:
    analyze = shutil.which("systemd-analyze")
    # Fail, never skip: `make deps` installs it, and a green run without this check would hide it.
    assert analyze is not None, "systemd-analyze is not installed (Debian package `systemd`): run `make deps`"
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNITS[name])],
        capture_output=True, text=True, timeout=60, check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, f"no rating in systemd-analyze output:\n{result.stdout}\n{result.stderr}"
    exposure = float(found.group(1))
    failed = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert exposure <= MAX_EXPOSURE, f"{name}: exposure {exposure} > {MAX_EXPOSURE}\n" + "\n".join(failed)


@pytest.mark.parametrize("name", sorted(UNITS))
def test_notify_units_have_code_that_notifies(name: str) -> None:
    """Type=notify without READY=1 hangs the start until TimeoutStartSec, and WatchdogSec=
    without WATCHDOG=1 kills the service every WatchdogSec: the code must send both."""
    service = unit(name)
    if one(service, "Type") != "notify":
        return
    assert one(service, "NotifyAccess") == "main"
    sources = [
        path for folder in ("gpufleet", "agent", "collector") for path in (REPO / folder).rglob("*.py")
        if path.name != "sdnotify.py"
    ]
    text = "\n".join(path.read_text(errors="replace") for path in sources)
    missing = [state for state in ("READY=1", "WATCHDOG=1") if state not in text]
    if "WatchdogSec" not in service:
        missing = [state for state in missing if state != "WATCHDOG=1"]
    assert not missing, (
        f"gpufleet-{name}.service has Type=notify/WatchdogSec= but no code sends {missing}: "
        "call gpufleet.sdnotify.notify('READY=1') once started and notify('WATCHDOG=1') every "
        "sdnotify.watchdog_interval_s() from the event loop"
    )
