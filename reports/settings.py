"""The report configuration: one TOML file (see report.example.toml beside this module).

    [influx]               where the telemetry is (InfluxDB 1.x, InfluxQL)
    [prices]               what a GPU-hour of each model and a kWh cost the tenants
    [[reference]]          other price lists to compare with (e.g. a public cloud's on-demand rates)
    [mail]                 SMTP (STARTTLS) and each tenant's recipients
    [rollup]               how far back each `gpufleet rollup` run recomputes

Checked once and frozen; unknown keys are refused, and an error names the key path
(`prices -> per_gpu_hour -> NVIDIA H100: Input should be a valid number`). Secrets (InfluxDB and
SMTP passwords) come from a file or a GPUFLEET_* variable, never from this file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpufleet.config import ConfigError

from .model import PriceList

EXAMPLE_PATH = Path(__file__).with_name("report.example.toml")

# Used when the file has no [[reference]]: round numbers in the range of public clouds' on-demand
# GPU prices. They are EXAMPLES for the report's layout, not anyone's quote; the label says so.
EXAMPLE_REFERENCE = PriceList(
    name="example-cloud",
    label="EXAMPLE public-cloud on-demand rates (illustrative round numbers, not a quote; set [[reference]])",
    currency="USD",
    per_gpu_hour=(
        ("*H100*", 12.0), ("*H200*", 14.0), ("*A100*80GB*", 5.0), ("*A100*", 4.0),
        ("*L40S*", 2.0), ("*L4", 0.8), ("*A10G*", 1.2), ("*T4", 0.5),
    ),
)
EXAMPLE_PRICES_LABEL = "EXAMPLE internal rates (defaults; set [prices] in the report config)"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InfluxSettings(_Section):
    url: str = "http://127.0.0.1:8086"  # InfluxDB's own HTTP address (InfluxQL /query and /write)
    database: str = "gpufleet"  # the collector's bucket
    username: str | None = None  # InfluxDB 1.x auth, when enabled
    password_file: Path | None = None  # else env GPUFLEET_INFLUX_PASSWORD
    timeout_s: float = Field(120.0, gt=0, le=3600)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, not {value[:80]!r}")
        return value

    def password(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        return os.environ.get("GPUFLEET_INFLUX_PASSWORD")


class PriceSettings(_Section):
    label: str = EXAMPLE_PRICES_LABEL
    currency: str = "EUR"
    per_kwh: float = Field(0.0, ge=0)
    default_per_gpu_hour: float | None = Field(None, ge=0)  # a model no key matches; None: unpriced
    per_gpu_hour: dict[str, float] = Field(default_factory=dict)  # model name or glob -> price

    @field_validator("per_gpu_hour")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for model, price in value.items():
            if price < 0:
                raise ValueError(f"{model}: a price cannot be negative ({price})")
        return value

    def price_list(self, name: str = "prices") -> PriceList:
        return PriceList(name, self.label, self.currency, tuple(self.per_gpu_hour.items()), self.per_kwh, self.default_per_gpu_hour)


class ReferenceSettings(PriceSettings):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    label: str  # shown beside every figure computed with these prices: say what they are


class MailSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True  # refuse to send credentials or bills in clear text
    ca_file: Path | None = None  # the server's CA, when it is not in the system store
    username: str | None = None
    password_file: Path | None = None  # else env GPUFLEET_SMTP_PASSWORD
    sender: str = "gpufleet@localhost"
    timeout_s: float = Field(30.0, gt=0, le=600)
    recipients: dict[str, list[str]] = Field(default_factory=dict)  # tenant -> addresses

    def password(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        return os.environ.get("GPUFLEET_SMTP_PASSWORD")


class RollupSettings(_Section):
    lookback_hours: int = Field(6, ge=1, le=24 * 31)  # each run recomputes these (late data)
    lag_minutes: int = Field(5, ge=0, le=24 * 60)  # an hour is rolled up this long after it ends


class ReportConfig(_Section):
    influx: InfluxSettings = InfluxSettings()
    prices: PriceSettings = PriceSettings()
    reference: list[ReferenceSettings] = Field(default_factory=list)
    mail: MailSettings = MailSettings()
    rollup: RollupSettings = RollupSettings()
    cluster: str | None = None  # report on one cluster only; None: all

    def price_list(self) -> PriceList:
        return self.prices.price_list()

    def reference_lists(self) -> tuple[PriceList, ...]:
        if not self.reference:
            return (EXAMPLE_REFERENCE,)
        return tuple(ref.price_list(ref.name) for ref in self.reference)


def load_report_config(path: Path | None, overrides: dict[str, Any] | None = None) -> ReportConfig:
    """The file's settings (defaults without a file), with `overrides` ({"influx": {"url": ...}})
    laid over them; raises gpufleet.config.ConfigError naming each bad key."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as file:
                values = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(f"cannot read report config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"report config {path} is not valid TOML: {exc}") from None
    for section, given in (overrides or {}).items():
        if isinstance(given, dict):
            values[section] = {**values.get(section, {}), **{k: v for k, v in given.items() if v is not None}}
        elif given is not None:
            values[section] = given
    try:
        return ReportConfig(**values)
    except ValidationError as exc:
        lines = [f"invalid report configuration{f' ({path})' if path else ''}:"]
        for error in exc.errors():
            key = " -> ".join(str(part) for part in error["loc"]) or "(settings)"
            lines.append(f"  {key}: {error['msg']}")
        raise ConfigError("\n".join(lines)) from None
