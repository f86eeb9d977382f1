"""Tenant rules: TOML in, first match wins; bad names and keys rejected with their path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpufleet.collector.tenants import UNALLOCATED, RulesError, RulesFile, TenantRules

RULES = """
[tenants]
default = "shared"

[[tenants.rule]]
tenant = "lab-a"
match = { slurm_account = "proj-a*" }

[[tenants.rule]]
tenant = "lab-b.students"
match = { slurm_user = ["stud*", "intern_?"], node = "gpu-0[1-4]" }

[[tenants.rule]]
tenant = "vision"
[tenants.rule.match]
k8s_namespace = ["vision-*", "cv"]
k8s_label = { team = "vision", tier = ["prod", "staging"] }

[[tenants.rule]]
tenant = "nlp"
match = { k8s_namespace = "nlp" }

[[tenants.rule]]
tenant = "inference"
match = { systemd_unit = "vllm*.service" }

[[tenants.rule]]
tenant = "ops"
match = { uid = [0, 999] }

[[tenants.rule]]
tenant = "alice_personal"
match = { unix_user = "alice" }

[[tenants.rule]]
tenant = "research"
match = { unix_group = "research-*" }

[[tenants.rule]]
tenant = "reserved"
match = { gpu_uuid = "GPU-dead*" }
"""

GPU, NODE = "GPU-1234", "gpu-01"


@pytest.fixture
def rules() -> TenantRules:
    return TenantRules.from_toml(RULES)


def slurm(account: str | None = None, user: str | None = None) -> dict:
    ident = {"pid": 1, "kind": "slurm_job", "job": "42", "step": "0"}
    if account is not None:
        ident["account"] = account
    if user is not None:
        ident["user"] = user
    return ident


def pod(namespace: str | None = None, labels: dict | None = None) -> dict:
    ident = {"pid": 1, "kind": "k8s_pod", "pod_uid": "u", "container": None}
    if namespace is not None:
        ident["namespace"] = namespace
    if labels is not None:
        ident["labels"] = labels
    return ident


@pytest.mark.parametrize(
    ("identity", "gpu", "node", "tenant"),
    [
        (slurm(account="proj-a17"), GPU, NODE, "lab-a"),
        (slurm(account="proj-a17", user="student1"), GPU, NODE, "lab-a"),  # first match wins
        (slurm(account="proj-b", user="student1"), GPU, "gpu-03", "lab-b.students"),
        (slurm(account="proj-b", user="intern_7"), GPU, "gpu-02", "lab-b.students"),
        (slurm(account="proj-b", user="student1"), GPU, "gpu-05", "shared"),  # node does not match
        (slurm(account="PROJ-A1"), GPU, NODE, "shared"),  # globs are case-sensitive
        (slurm(), GPU, NODE, "shared"),  # no environment read: only the default fits
        (pod("vision-train", {"team": "vision", "tier": "prod"}), GPU, NODE, "vision"),
        (pod("cv", {"team": "vision", "tier": "staging", "x": "y"}), GPU, NODE, "vision"),
        (pod("cv", {"team": "vision"}), GPU, NODE, "shared"),  # a wanted label is missing
        (pod("vision-train", {"team": "vision", "tier": "dev"}), GPU, NODE, "shared"),
        (pod("nlp"), GPU, NODE, "nlp"),
        (pod(), GPU, NODE, "shared"),  # not enriched with a namespace yet
        ({"pid": 1, "kind": "systemd_unit", "unit": "vllm-8b.service"}, GPU, NODE, "inference"),
        ({"pid": 1, "kind": "systemd_unit", "unit": "ollama.service"}, GPU, NODE, "shared"),
        ({"pid": 1, "kind": "user", "uid": 0}, GPU, NODE, "ops"),
        ({"pid": 1, "kind": "user", "uid": 1000, "user": "alice"}, GPU, NODE, "alice_personal"),
        (slurm(account="x", user="alice"), GPU, NODE, "alice_personal"),  # the job's user is a unix user
        ({"pid": 1, "kind": "user", "uid": 1001, "groups": ["staff", "research-ml"]}, GPU, NODE, "research"),
        ({"pid": 1, "kind": "user", "uid": 1001, "group": "research-x"}, GPU, NODE, "research"),
        ({"pid": 1, "kind": "user", "uid": 1001}, "GPU-deadbeef", NODE, "reserved"),
        ({"pid": 9, "kind": None, "error": "no such process"}, GPU, NODE, "shared"),
        ({"pid": 1, "kind": "user", "uid": True}, GPU, NODE, "shared"),  # a bool is not uid 1
    ],
)
def test_first_matching_rule_wins(rules: TenantRules, identity: dict, gpu: str, node: str, tenant: str) -> None:
    assert rules.tenant_for(identity, gpu, node) == tenant


def test_slurm_keys_only_match_slurm_jobs() -> None:
    rules = TenantRules.from_toml('[tenants]\n[[tenants.rule]]\ntenant = "a"\nmatch = { slurm_user = "bob" }\n')
    assert rules.tenant_for({"kind": "user", "uid": 5, "user": "bob"}, GPU, NODE) == UNALLOCATED
    assert rules.tenant_for({"kind": "slurm_job", "job": "1", "user": "bob"}, GPU, NODE) == "a"


def test_default_is_unallocated_and_no_rules_is_fine() -> None:
    rules = TenantRules.from_toml("[tenants]\n")
    assert rules.default == UNALLOCATED and rules.rules == ()
    assert rules.tenant_for(slurm(account="x"), GPU, NODE) == UNALLOCATED


def test_other_tables_in_a_shared_config_file_are_ignored() -> None:
    text = '[collector]\nmqtt = "x"\n[tenants]\ndefault = "d"\n'
    assert TenantRules.from_toml(text).default == "d"


def test_rules_are_frozen(rules: TenantRules) -> None:
    with pytest.raises(Exception):
        rules.default = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "name",
    [
        "lab,a",
        "lab a",
        "lab=a",
        'lab"a',
        "lab'a",
        "lab\na",
        "lab-a\n",  # `$` would let a trailing newline through; fullmatch does not
        "läb",
        "-lab",
        ".lab",
        "",
        "a" * 64,
        "x" * 10_000,
    ],
)
def test_bad_tenant_names_are_rejected_at_load(name: str) -> None:
    text = f"[tenants]\n[[tenants.rule]]\ntenant = {_toml_string(name)}\nmatch = {{ node = \"n\" }}\n"
    with pytest.raises(RulesError, match=r"tenants -> rule #1 -> tenant: tenant name .* is invalid") as caught:
        TenantRules.from_toml(text)
    assert len(str(caught.value)) < 300  # a 10 kB name is not echoed back


def test_bad_default_tenant_is_rejected() -> None:
    with pytest.raises(RulesError, match="tenants -> default: tenant name"):
        TenantRules.from_toml('[tenants]\ndefault = "not allowed"\n')


def test_good_tenant_names() -> None:
    for name in ("a", "A9", "lab-a", "lab_a.b-c", "9" + "x" * 62):
        text = f'[tenants]\ndefault = "{name}"\n'
        assert TenantRules.from_toml(text).default == name


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[tenants]\n[[tenants.rule]]\ntenant = "a"\nmatch = { slurm_acount = "x" }\n', "tenants -> rule #1 -> match -> slurm_acount: Extra inputs"),
        ('[tenants]\n[[tenants.rule]]\ntenant = "a"\nmatch = { node = "n" }\n[[tenants.rule]]\ntenant = "b"\nmatch = {}\n', "tenants -> rule #2 -> match: match needs at least one"),
        ('[tenants]\n[[tenants.rule]]\ntenant = "a"\n', "tenants -> rule #1 -> match: Field required"),
        ('[tenants]\n[[tenants.rule]]\nmatch = { node = "n" }\n', "tenants -> rule #1 -> tenant: Field required"),
        ('[tenants]\n[[tenants.rule]]\ntenant = "a"\nmatch = { node = "n" }\nweight = 2\n', "tenants -> rule #1 -> weight: Extra inputs"),
        ('[tenants]\ndefualt = "x"\n', "tenants -> defualt: Extra inputs"),
        ('[tenants]\n[[tenants.rule]]\ntenant = "a"\nmatch = { uid = "1000" }\n', "tenants -> rule #1 -> match -> uid #1"),
        ('[tenants]\n[[tenants.rule]]\ntenant = "a"\nmatch = { node = 5 }\n', "tenants -> rule #1 -> match -> node #1"),
        ('[tenants]\n[[tenants.rule]]\ntenant = "a"\nmatch = { node = [] }\n', "tenants -> rule #1 -> match -> node"),
        ('[tenants]\n[[tenants.rule]]\ntenant = "a"\nmatch = { node = "" }\n', "tenants -> rule #1 -> match -> node #1: pattern"),
        ('[tenants]\n[[tenants.rule]]\ntenant = "a"\nmatch = { k8s_label = { team = 1 } }\n', "tenants -> rule #1 -> match -> k8s_label -> team #1"),
        ("[tenants]\nrule = 3\n", "tenants -> rule"),
        ("tenants = 3\n", "tenants: Input should be"),
    ],
)
def test_errors_name_the_bad_key(text: str, where: str) -> None:
    with pytest.raises(RulesError) as caught:
        TenantRules.from_toml(text)
    assert where in str(caught.value)


def test_invalid_toml_and_missing_table() -> None:
    with pytest.raises(RulesError, match="not valid TOML"):
        TenantRules.from_toml("[tenants\n")
    with pytest.raises(RulesError, match=r"no \[tenants\] table"):
        TenantRules.from_toml("[tenant]\n")


def test_uid_accepts_one_int_or_a_list() -> None:
    text = '[tenants]\n[[tenants.rule]]\ntenant = "a"\nmatch = { uid = 1000 }\n'
    assert TenantRules.from_toml(text).rules[0].match.uid == (1000,)


# --- RulesFile -----------------------------------------------------------------------------


def write(path: Path, text: str, bump: int) -> None:
    """Write and move mtime on by `bump` seconds: same-second rewrites must still be seen."""
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def test_rules_file_reloads_on_change_and_keeps_last_good(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tenants.toml"
    write(path, '[tenants]\ndefault = "one"\n', 0)
    rules_file = RulesFile(path)
    assert rules_file.current().default == "one"
    assert rules_file.current() is rules_file.current()  # unchanged file: not re-read

    write(path, '[tenants]\ndefault = "two"\n', 1)
    assert rules_file.current().default == "two"
    assert rules_file.reloads == 1 and rules_file.last_error is None

    write(path, '[tenants]\ndefault = "bad name"\n', 2)
    assert rules_file.current().default == "two"
    assert rules_file.current().default == "two"
    assert "tenants -> default" in (rules_file.last_error or "")
    assert rules_file.failed_reloads == 1  # logged and counted once per change, not per call
    assert len([r for r in caplog.records if "not reloaded" in r.getMessage()]) == 1

    path.unlink()
    assert rules_file.current().default == "two"
    assert "No such file" in (rules_file.last_error or "")

    write(path, '[tenants]\ndefault = "three"\n', 3)
    assert rules_file.current().default == "three"
    assert rules_file.last_error is None


def test_rules_file_sees_an_atomic_rename(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text('[tenants]\ndefault = "one"\n')
    rules_file = RulesFile(path)
    fresh = tmp_path / "tenants.toml.new"
    fresh.write_text('[tenants]\ndefault = "two"\n')
    os.utime(fresh, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))  # same mtime, new inode
    fresh.replace(path)
    assert rules_file.current().default == "two"


def test_rules_file_must_load_at_start(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    with pytest.raises(RulesError, match="tenants.toml"):
        RulesFile(path)
    path.write_text("[tenants]\ndefault = 'a b'\n")
    with pytest.raises(RulesError, match="tenants -> default"):
        RulesFile(path)
    path.write_bytes(b"[tenants]\ndefault = '\xff'\n")
    with pytest.raises(RulesError, match="not UTF-8"):
        RulesFile(path)


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
