"""Which tenant pays for a workload: ordered rules, first match wins, default `unallocated`.

The rules are TOML, in their own file or in the collector's config (other tables are ignored):

    [tenants]
    default = "unallocated"           # optional; who pays when no rule matches

    [[tenants.rule]]                  # tried in file order
    tenant = "lab-a"
    match = { slurm_account = "proj-a*" }

    [[tenants.rule]]
    tenant = "vision"
    match = { k8s_namespace = ["vision-*", "cv"], k8s_label = { team = "vision" } }

    [[tenants.rule]]
    tenant = "inference"
    match = { systemd_unit = "vllm*.service", node = "gpu-0[1-4]" }

Every key of a `match` must hold (AND); a list of patterns matches if any does (OR). Patterns
are shell globs (fnmatch, case-sensitive). Keys and what they read:

    slurm_account, slurm_user   a slurm_job identity's `account` / `user` (its SLURM_JOB_* env)
    k8s_namespace, k8s_label    a k8s_pod identity's `namespace` / `labels` (pod-resources or API
                                enrichment; a bare cgroup identity has neither, so never matches)
    unix_user                   any identity's `user` (the user name)
    uid                         any identity's `uid`: an integer or a list of them
    unix_group                  any identity's `group` or `groups`
    systemd_unit                a systemd_unit identity's `unit`
    gpu_uuid, node              the GPU and the node the window was measured on

Tenant names end up as InfluxDB tag values, Grafana variables and invoice lines, so they are
held to `^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$` at load time. Errors name the bad key, as in
`tenants -> rule #2 -> match -> slurm_acount: Extra inputs are not permitted`.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    model_validator,
)

log = logging.getLogger(__name__)

UNALLOCATED = "unallocated"
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_PATTERN_CHARS = 256
MAX_RULES_BYTES = 1 << 20

# Identity kinds (agent/identity.py): the wire contract, repeated here so that the collector
# does not import agent code.
_K8S_POD, _SLURM_JOB, _SYSTEMD_UNIT = "k8s_pod", "slurm_job", "systemd_unit"


class RulesError(ValueError):
    """The tenant rules text is invalid; the message says where."""


# --- validated pieces ------------------------------------------------------------------------


def _show(value: object) -> str:
    # Never echo a 10 kB value back into a log line.
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_tenant_name(name: str) -> str:
    if TENANT_NAME.fullmatch(name) is None:
        raise ValueError(
            f"tenant name {_show(name)} is invalid: use 1-63 ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value


def _check_pattern(pattern: str) -> str:
    if not pattern or len(pattern) > MAX_PATTERN_CHARS or not pattern.isprintable():
        raise ValueError(f"pattern {_show(pattern)} must be 1-{MAX_PATTERN_CHARS} printable characters")
    return pattern


TenantName = Annotated[str, AfterValidator(check_tenant_name)]
Pattern = Annotated[str, AfterValidator(_check_pattern)]
Patterns = Annotated[tuple[Pattern, ...], BeforeValidator(_one_or_many), Field(min_length=1)]
Uids = Annotated[tuple[StrictInt, ...], BeforeValidator(_one_or_many), Field(min_length=1)]

_FROZEN = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


_GPU_UUID, _NODE = object(), object()  # where a glob's value comes from: not the identity


def _compiled(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regex matching what fnmatch.fnmatchcase matches for any of the patterns."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _glob_any(patterns: Iterable[str], value: object) -> bool:
    return isinstance(value, str) and any(fnmatch.fnmatchcase(value, p) for p in patterns)


class Match(BaseModel):
    model_config = _FROZEN

    slurm_account: Patterns | None = None
    slurm_user: Patterns | None = None
    k8s_namespace: Patterns | None = None
    k8s_label: dict[Annotated[str, Field(min_length=1)], Patterns] | None = None
    unix_user: Patterns | None = None
    uid: Uids | None = None
    unix_group: Patterns | None = None
    systemd_unit: Patterns | None = None
    gpu_uuid: Patterns | None = None
    node: Patterns | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Match:
        # An empty match would take everything; that is what `default` says, and says clearly.
        if all(getattr(self, name) is None for name in type(self).model_fields):
            keys = ", ".join(type(self).model_fields)
            raise ValueError(f"match needs at least one of: {keys} (use tenants.default for a catch-all)")
        return self

    @functools.cached_property
    def compiled_globs(self) -> tuple[tuple[str | None, object, re.Pattern[str]], ...]:
        """Each glob field that is set, as (kind it applies to or None, where its value is, one
        compiled regex for all its patterns): matches() tests only those, each in one call.
        (A cached_property, not a pydantic private attribute: those are read through __getattr__.)"""
        fields = (
            (self.slurm_account, _SLURM_JOB, "account"),
            (self.slurm_user, _SLURM_JOB, "user"),
            (self.k8s_namespace, _K8S_POD, "namespace"),
            (self.unix_user, None, "user"),
            (self.systemd_unit, _SYSTEMD_UNIT, "unit"),
            (self.gpu_uuid, None, _GPU_UUID),
            (self.node, None, _NODE),
        )
        return tuple((kind, key, _compiled(patterns)) for patterns, kind, key in fields if patterns is not None)

    def matches(self, identity: Mapping[str, Any], gpu_uuid: str, node: str) -> bool:
        kind = identity.get("kind")
        for needed_kind, key, regex in self.compiled_globs:
            if key is _GPU_UUID:
                value = gpu_uuid
            elif key is _NODE:
                value = node
            else:
                value = identity.get(key) if needed_kind is None or needed_kind == kind else None
            if not isinstance(value, str) or regex.match(value) is None:
                return False
        if self.uid is not None and not _uid_in(identity.get("uid"), self.uid):
            return False
        if self.unix_group is not None and not any(_glob_any(self.unix_group, g) for g in _groups(identity)):
            return False
        if self.k8s_label is not None:
            return kind == _K8S_POD and _labels_match(self.k8s_label, identity.get("labels"))
        return True


def _uid_in(uid: object, uids: tuple[int, ...]) -> bool:
    return isinstance(uid, int) and not isinstance(uid, bool) and uid in uids


def _groups(identity: Mapping[str, Any]) -> list[object]:
    groups = identity.get("groups")
    listed = list(groups) if isinstance(groups, (list, tuple)) else []
    return [identity.get("group"), *listed]


def _labels_match(wanted: Mapping[str, tuple[str, ...]], labels: object) -> bool:
    if not isinstance(labels, Mapping):
        return False
    return all(_glob_any(patterns, labels.get(name)) for name, patterns in wanted.items())


class Rule(BaseModel):
    model_config = _FROZEN

    tenant: TenantName
    match: Match


class TenantRules(BaseModel):
    """The `[tenants]` table: ordered rules and the default tenant."""

    model_config = _FROZEN

    default: TenantName = UNALLOCATED
    rules: tuple[Rule, ...] = Field(default=(), alias="rule")

    def tenant_for(self, identity: Mapping[str, Any], gpu_uuid: str, node: str) -> str:
        for rule in self.rules:
            if rule.match.matches(identity, gpu_uuid, node):
                return rule.tenant
        return self.default

    @classmethod
    def from_toml(cls, text: str) -> TenantRules:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise RulesError(f"not valid TOML: {error}") from None
        if "tenants" not in document:
            raise RulesError("no [tenants] table")
        return cls.from_mapping(document["tenants"])

    @classmethod
    def from_mapping(cls, tenants: object) -> TenantRules:
        try:
            return cls.model_validate(tenants)
        except ValidationError as error:
            raise RulesError(_describe(error)) from None


def _describe(error: ValidationError) -> str:
    """One line per problem, each naming its key path in the file (Datadog's ' -> ' style)."""
    return "; ".join(f"{_where(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors())


def _where(loc: tuple[int | str, ...]) -> str:
    # List positions print 1-based as `rule #2`: the second [[tenants.rule]] in the file.
    parts = ["tenants"]
    for item in loc:
        if isinstance(item, int):
            parts[-1] += f" #{item + 1}"
        else:
            parts.append(str(item))
    return " -> ".join(parts)


# --- reloading -------------------------------------------------------------------------------


class RulesFile:
    """Tenant rules from a file, re-read when it changes (new inode, mtime or size).

    The first load must succeed: a collector must not start billing with rules it cannot read.
    After that a broken file (mid-edit, a typo) keeps the last good rules in force, sets
    `last_error` and logs once per change; a later good version is picked up by itself.
    Editors should write a temp file and rename it, so a reader never sees half a file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.last_error: str | None = None
        self.reloads = 0
        self.failed_reloads = 0
        self._stamp = self._stat()
        try:
            self._rules = TenantRules.from_toml(self._read())
        except (OSError, RulesError) as error:
            raise RulesError(f"{self.path}: {error}") from None

    def current(self) -> TenantRules:
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            self._reload()
        return self._rules

    def _reload(self) -> None:
        try:
            rules = TenantRules.from_toml(self._read())
        except (OSError, RulesError) as error:
            self.failed_reloads += 1
            self.last_error = f"{self.path}: {error}"
            log.warning("tenant rules not reloaded, keeping the previous ones: %s", self.last_error)
            return
        self._rules, self.last_error = rules, None
        self.reloads += 1
        log.info("tenant rules reloaded from %s: %d rules", self.path, len(rules.rules))

    def _stat(self) -> tuple[object, ...]:
        try:
            st = os.stat(self.path)
        except OSError as error:
            return ("missing", type(error).__name__)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> str:
        with self.path.open("rb") as file:
            data = file.read(MAX_RULES_BYTES + 1)
        if len(data) > MAX_RULES_BYTES:
            raise RulesError(f"larger than {MAX_RULES_BYTES} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise RulesError(f"not UTF-8: {error}") from None
