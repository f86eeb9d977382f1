"""Configuration: command-line flags over GPUFLEET_* environment variables over a TOML file over
defaults. Checked once at start and frozen; a bad value stops the process with the key and why.
"""

from __future__ import annotations

import contextvars
import socket
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gpufleet import wire
from gpufleet.mqtt import BrokerAddress, TlsFiles


class ConfigError(Exception):
    """The operator's fault: a bad flag, variable or file. The message names each bad key."""


_file_values: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("gpufleet_config_file", default=None)


class _TomlValues(PydanticBaseSettingsSource):
    """The TOML file's table, as the lowest-priority source above the defaults."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_file_values.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get() or {})


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPUFLEET_", extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _TomlValues(settings_cls)


class _MqttSettings(_Settings):
    broker: str = "mqtt://127.0.0.1:1883"
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        BrokerAddress.parse(value)
        return value

    @property
    def broker_address(self) -> BrokerAddress:
        return BrokerAddress.parse(self.broker)

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(*(str(p) if p else None for p in (self.tls_ca, self.tls_cert, self.tls_key)))


def _name(value: str) -> str:
    try:
        return wire.check_name("name", value)
    except wire.Rejected as exc:
        raise ValueError(exc.detail) from None


class _Cadence(_Settings):
    interval: float = Field(10.0, gt=0, le=3600, description="seconds per published window")
    sample_interval: float | None = Field(None, gt=0, le=3600, description="seconds between samples")

    @model_validator(mode="after")
    def _whole_samples(self) -> _Cadence:
        sample = self.effective_sample_interval
        if abs(self.interval / sample - round(self.interval / sample)) > 1e-9:
            raise ValueError(f"interval ({self.interval}) must be a whole multiple of sample_interval ({sample})")
        return self

    @property
    def effective_sample_interval(self) -> float:
        return self.sample_interval if self.sample_interval is not None else min(1.0, self.interval)


class AgentConfig(_MqttSettings, _Cadence):
    cluster: str = "default"
    node: str = Field(default_factory=lambda: socket.gethostname().split(".")[0])
    simulate: int | None = Field(None, ge=1, le=wire.MAX_GPUS, description="simulated GPUs instead of NVML")
    proc_root: Path = Path("/proc")
    job_mapping_dir: Path | None = None  # dcgm-exporter's --hpc-job-mapping-dir layout
    static_job_map: dict[str, str] = {}  # GPU index or UUID -> workload key, e.g. "0" = "slurm:1234"
    kubelet_socket: Path | None = None  # /var/lib/kubelet/pod-resources/kubelet.sock on Kubernetes nodes
    kubelet_pod_logs_dir: Path = Path("/var/log/pods")  # <namespace>_<pod>_<uid>: pod UIDs for the join
    state_dir: Path = Path("/var/lib/gpufleet")  # spool of unacknowledged messages, next sequence number
    spool_max_messages: int = Field(100_000, ge=10)  # ~11 days of 10 s windows; oldest dropped past it
    drain_timeout: float = Field(5.0, ge=0)  # on stop, seconds to go on delivering the spool
    resend_after: float = Field(60.0, gt=0)  # a window no collector confirmed stored by then goes again

    @field_validator("cluster", "node")
    @classmethod
    def _names(cls, value: str) -> str:
        return _name(value)


class SimulateConfig(_MqttSettings, _Cadence):
    cluster: str = "sim"
    nodes: int = Field(10, ge=1, le=100_000)
    gpus_per_node: int = Field(8, ge=1, le=wire.MAX_GPUS)
    duration: float = Field(60.0, gt=0)
    seed: int = 0
    drain_timeout: float = Field(30.0, ge=0)  # after the last window, seconds to wait for acknowledgements

    @field_validator("cluster")
    @classmethod
    def _names(cls, value: str) -> str:
        return _name(value)

    @property
    def windows(self) -> int:
        return max(1, round(self.duration / self.interval))


class CollectorConfig(_MqttSettings):
    influx_url: str = "http://127.0.0.1:8086"
    bucket: str = "gpufleet"
    influx_org: str = "gpufleet"
    influx_token: SecretStr | None = None  # GPUFLEET_INFLUX_TOKEN; never logged
    influx_token_file: Path | None = None
    group: str = "gpufleet"
    cluster: str = "+"  # whose telemetry: one cluster's name (a shard of a large fleet), or "+" for all
    client_id: str = Field(default_factory=lambda: f"gpufleet-collector-{socket.gethostname().split('.')[0]}")
    batch_lines: int = Field(5000, ge=1, le=1_000_000)
    parallel_writes: int = Field(2, ge=1, le=16)  # batches in flight to InfluxDB: it parses them on several cores
    flush_interval: float = Field(1.0, gt=0, le=60)
    max_buffer_lines: int = Field(2_000_000, ge=1000)
    tenants_file: Path | None = None  # tenant rules (TOML [tenants]); re-read when it changes

    @field_validator("group")
    @classmethod
    def _names(cls, value: str) -> str:
        return _name(value)

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str) -> str:
        return value if value == "+" else _name(value)

    @field_validator("influx_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, not {value[:80]!r}")
        return value


def load(model: type[_Settings], flags: dict[str, Any], config_file: Path | None) -> Any:
    """Build `model` from flags (None = not given), GPUFLEET_* variables and the TOML file."""
    token = _file_values.set(_read_toml(config_file) if config_file else {})
    try:
        return model(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_explain(exc, config_file)) from None
    finally:
        _file_values.reset(token)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _explain(exc: ValidationError, config_file: Path | None) -> str:
    where = f" (flags, GPUFLEET_* variables{', ' + str(config_file) if config_file else ''})"
    lines = [f"invalid configuration{where}:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(settings)"
        secret = "token" in key or "password" in key
        value = "" if error["type"] == "missing" or secret else f" (got {str(error.get('input'))[:80]!r})"
        lines.append(f"  {key}: {error['msg']}{value}")
    return "\n".join(lines)
