"""`gpufleet`: the one command operators type. Each subcommand checks its configuration first and
turns expected failures (bad config, no driver, unreachable service) into one clear line and a
non-zero exit, never a traceback."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gpufleet import config as cfg

app = typer.Typer(no_args_is_help=True, add_completion=False, help="GPU fleet telemetry and per-tenant accounting.")

ConfigFile = Annotated[
    Path | None, typer.Option("--config", "-c", envvar="GPUFLEET_CONFIG", help="TOML file (keys as the long flags, with _)")
]
Broker = Annotated[str | None, typer.Option(help="mqtt://HOST:PORT or mqtts://HOST:PORT (env GPUFLEET_BROKER)")]
Interval = Annotated[float | None, typer.Option(help="Seconds per published window (default 10)")]
SampleInterval = Annotated[float | None, typer.Option(help="Seconds between samples (default min(1, interval))")]


def _setup_logging(verbose: bool) -> None:
    # Under systemd the journal stamps each line itself.
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr)


def _load(model: type, flags: dict[str, Any], config_file: Path | None) -> Any:
    try:
        return cfg.load(model, flags, config_file)
    except cfg.ConfigError as exc:
        typer.echo(f"gpufleet: {exc}", err=True)
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"gpufleet: {message}", err=True)
    return typer.Exit(code)




@app.command()
def agent(
    config: ConfigFile = None,
    broker: Broker = None,
    cluster: Annotated[str | None, typer.Option(help="Cluster name (default 'default')")] = None,
    node: Annotated[str | None, typer.Option(help="Node name [default: short host name]")] = None,
    interval: Interval = None,
    sample_interval: SampleInterval = None,
    simulate: Annotated[int | None, typer.Option(help="Simulate N GPUs instead of reading NVML")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Sample this node's GPUs and publish a window every --interval seconds."""
    _setup_logging(verbose)
    settings = _load(
        cfg.AgentConfig,
        dict(broker=broker, cluster=cluster, node=node, interval=interval, sample_interval=sample_interval, simulate=simulate),
        config,
    )
    from gpufleet.runners import run_agent  # noqa: PLC0415  # keeps `gpufleet --help` fast

    raise typer.Exit(run_agent(settings))


@app.command()
def simulate(
    nodes: Annotated[int | None, typer.Option(help="Simulated nodes, each its own MQTT client (default 10)")] = None,
    gpus_per_node: Annotated[int | None, typer.Option(help="GPUs per node (default 8)")] = None,
    interval: Interval = None,
    duration: Annotated[float | None, typer.Option(help="Seconds to run (default 60)")] = None,
    sample_interval: SampleInterval = None,
    broker: Broker = None,
    cluster: Annotated[str | None, typer.Option(help="Cluster name (default 'sim')")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed, for a replayable fleet")] = None,
    config: ConfigFile = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a simulated fleet against a broker; exit 0 once every window it published was acknowledged."""
    _setup_logging(verbose)
    settings = _load(
        cfg.SimulateConfig,
        dict(
            nodes=nodes, gpus_per_node=gpus_per_node, interval=interval, duration=duration,
            sample_interval=sample_interval, broker=broker, cluster=cluster, seed=seed,
        ),
        config,
    )
    from gpufleet.runners import simulate_fleet  # noqa: PLC0415  # keeps `gpufleet --help` fast

    raise typer.Exit(simulate_fleet(settings))


@app.command()
def collector(
    config: ConfigFile = None,
    broker: Broker = None,
    influx_url: Annotated[str | None, typer.Option(help="InfluxDB URL (v2 write API) (default http://127.0.0.1:8086)")] = None,
    bucket: Annotated[str | None, typer.Option(help="Bucket (InfluxDB 1.x: database) (default gpufleet)")] = None,
    influx_org: Annotated[str | None, typer.Option(help="Organisation (default gpufleet)")] = None,
    influx_token_file: Annotated[
        Path | None, typer.Option(help="File holding the InfluxDB token (else env GPUFLEET_INFLUX_TOKEN)")
    ] = None,
    group: Annotated[str | None, typer.Option(help="Shared-subscription group (default gpufleet)")] = None,
    client_id: Annotated[str | None, typer.Option(help="MQTT client id, unique per collector")] = None,
    batch_lines: Annotated[int | None, typer.Option(help="Lines per InfluxDB write (default 5000)")] = None,
    tenants_file: Annotated[Path | None, typer.Option(help="Tenant rules (TOML); re-read when it changes")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Subscribe to the fleet, validate, attribute to tenants, and write InfluxDB points in batches."""
    _setup_logging(verbose)
    settings = _load(
        cfg.CollectorConfig,
        dict(
            broker=broker, influx_url=influx_url, bucket=bucket, influx_org=influx_org,
            influx_token_file=influx_token_file, group=group, client_id=client_id, batch_lines=batch_lines,
            tenants_file=tenants_file,
        ),
        config,
    )
    from gpufleet.runners import run_collector  # noqa: PLC0415

    raise typer.Exit(run_collector(settings))


if __name__ == "__main__":
    app()
