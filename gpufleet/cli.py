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
    proc_root: Annotated[Path | None, typer.Option(help="Where /proc is (to find who owns GPU processes)")] = None,
    job_mapping_dir: Annotated[
        Path | None, typer.Option(help="One file per GPU index or UUID naming the job it is allocated to")
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Spool and sequence number (default /var/lib/gpufleet)")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Take one sample, print it as JSON (by GPU UUID), exit")] = False,
    from_capture: Annotated[
        Path | None, typer.Option(help="With --once: read GPUs from an `nvidia-smi -q -x` capture via the fake driver")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Sample this node's GPUs and publish a window every --interval seconds."""
    _setup_logging(verbose)
    from gpufleet import runners  # noqa: PLC0415  # keeps `gpufleet --help` fast

    if from_capture is not None or once:
        if from_capture is not None and not once:
            raise _fail("--from-capture needs --once", 2)
        raise typer.Exit(runners.sample_once(from_capture))
    settings = _load(
        cfg.AgentConfig,
        dict(
            broker=broker, cluster=cluster, node=node, interval=interval, sample_interval=sample_interval,
            simulate=simulate, proc_root=proc_root, job_mapping_dir=job_mapping_dir, state_dir=state_dir,
        ),
        config,
    )
    raise typer.Exit(runners.run_agent(settings))


@app.command()
def identify(
    pids: Annotated[list[int], typer.Argument(help="Process ids, e.g. from nvidia-smi")],
    proc_root: Annotated[Path, typer.Option(help="Where /proc is")] = Path("/proc"),
) -> None:
    """Print, one JSON object a line, which workload each process belongs to (as the agent bills it)."""
    from gpufleet.agent.identity import resolve, to_json_line  # noqa: PLC0415

    for pid in pids:
        typer.echo(to_json_line(resolve(pid, proc_root)))


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
    drain_timeout: Annotated[
        float | None, typer.Option(help="After the last window, seconds to wait for acknowledgements (default 30)")
    ] = None,
    config: ConfigFile = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a simulated fleet against a broker; exit 0 once every window it published was acknowledged."""
    _setup_logging(verbose)
    settings = _load(
        cfg.SimulateConfig,
        dict(
            nodes=nodes, gpus_per_node=gpus_per_node, interval=interval, duration=duration,
            sample_interval=sample_interval, broker=broker, cluster=cluster, seed=seed, drain_timeout=drain_timeout,
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
    cluster: Annotated[
        str | None, typer.Option(help="Only this cluster's messages, for a database per cluster (default +: all)")
    ] = None,
    client_id: Annotated[str | None, typer.Option(help="MQTT client id, unique per collector")] = None,
    batch_lines: Annotated[int | None, typer.Option(help="Lines per InfluxDB write (default 5000)")] = None,
    parallel_writes: Annotated[int | None, typer.Option(help="Batches in flight to InfluxDB (default 2)")] = None,
    tenants_file: Annotated[Path | None, typer.Option(help="Tenant rules (TOML); re-read when it changes")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Subscribe to the fleet, validate, attribute to tenants, and write InfluxDB points in batches."""
    _setup_logging(verbose)
    settings = _load(
        cfg.CollectorConfig,
        dict(
            broker=broker, influx_url=influx_url, bucket=bucket, influx_org=influx_org,
            influx_token_file=influx_token_file, group=group, cluster=cluster, client_id=client_id,
            batch_lines=batch_lines, parallel_writes=parallel_writes, tenants_file=tenants_file,
        ),
        config,
    )
    from gpufleet.runners import run_collector  # noqa: PLC0415

    raise typer.Exit(run_collector(settings))


ReportConfigFile = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="GPUFLEET_REPORT_CONFIG", help="Report TOML: [influx], [prices], [[reference]], [mail]"),
]
InfluxQueryUrl = Annotated[str | None, typer.Option(help="InfluxDB URL for InfluxQL queries (overrides [influx] url)")]
Database = Annotated[str | None, typer.Option("--database", "--bucket", help="Database (overrides [influx] database)")]


def _report_config(config: Path | None, influx_url: str | None, database: str | None) -> Any:
    from gpufleet.reports.settings import load_report_config  # noqa: PLC0415

    try:
        return load_report_config(config, {"influx": {"url": influx_url, "database": database}})
    except cfg.ConfigError as exc:
        raise _fail(str(exc), 2) from None


@app.command()
def report(
    start: Annotated[str, typer.Option("--from", help="Start, ISO 8601 (UTC without a zone), e.g. 2026-11-01")],
    end: Annotated[str, typer.Option("--to", help="End (exclusive), ISO 8601")],
    out: Annotated[Path, typer.Option(help="Output file (--tenant) or folder (--all)")],
    tenant: Annotated[str | None, typer.Option(help="The tenant to report on")] = None,
    all_tenants: Annotated[bool, typer.Option("--all", help="Every tenant, plus a fleet chargeback CSV")] = False,
    fmt: Annotated[str, typer.Option("--format", help="html, pdf, csv or json")] = "html",
    mail_to: Annotated[list[str] | None, typer.Option(help="Mail the tenant's report to this address (repeatable)")] = None,
    mail: Annotated[bool, typer.Option("--mail", help="Mail each tenant its own report ([mail.recipients])")] = False,
    no_rollup: Annotated[bool, typer.Option("--no-rollup", help="Read raw points only, not the hourly rollup")] = False,
    config: ReportConfigFile = None,
    influx_url: InfluxQueryUrl = None,
    database: Database = None,
) -> None:
    """Per-tenant usage report: GPU-hours, busy share, energy, cost, waste, incidents."""
    _setup_logging(False)
    from gpufleet.reports.main import ReportError, run_report  # noqa: PLC0415

    settings = _report_config(config, influx_url, database)
    try:
        run = run_report(
            settings, start=start, end=end, fmt=fmt, out=out, tenant=tenant, all_tenants=all_tenants,  # type: ignore[arg-type]
            mail_to=mail_to or (), mail_tenants=mail, use_rollup=not no_rollup,
        )
    except ReportError as exc:
        raise _fail(str(exc)) from None
    for path in run.files:
        typer.echo(str(path))
    for tenant_name, recipients in sorted(run.mailed.items()):
        typer.echo(f"mailed {tenant_name} to {', '.join(recipients)}")
    if run.not_mailed:
        typer.echo(f"not mailed (no recipients configured): {', '.join(run.not_mailed)}", err=True)
    if run.reconciled is False:
        raise _fail("the chargeback does not reconcile with the fleet totals (see the last line of chargeback.csv)", 3)


@app.command()
def rollup(
    start: Annotated[str | None, typer.Option("--from", help="Start (default: lookback_hours ago)")] = None,
    end: Annotated[str | None, typer.Option("--to", help="End (default: the last complete hour)")] = None,
    config: ReportConfigFile = None,
    influx_url: InfluxQueryUrl = None,
    database: Database = None,
) -> None:
    """Compute the hourly per-tenant rollup that long reports read (run it hourly, e.g. a systemd timer)."""
    _setup_logging(False)
    from gpufleet.reports.main import ReportError, run_rollup  # noqa: PLC0415

    settings = _report_config(config, influx_url, database)
    try:
        summary = run_rollup(settings, start=start, end=end)
    except ReportError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"rolled up {summary.hours} hours: {summary.tenant_rows} tenant rows, {summary.meter_rows} fleet rows")


tenants_app = typer.Typer(no_args_is_help=True, help="Tenant rules.")
app.add_typer(tenants_app, name="tenants")


@tenants_app.command("audit")
def tenants_audit(
    start: Annotated[str, typer.Option("--from", help="Start, ISO 8601 (UTC without a zone)")],
    end: Annotated[str, typer.Option("--to", help="End (exclusive), ISO 8601")],
    tenants_file: Annotated[Path, typer.Option(help="The rules to check the stored bills against")],
    config: ReportConfigFile = None,
    influx_url: InfluxQueryUrl = None,
    database: Database = None,
) -> None:
    """Re-run tenant rules over the stored workload identities: what would be billed to whom else."""
    from gpufleet.collector.tenants import RulesError, TenantRules  # noqa: PLC0415
    from gpufleet.reports.audit import audit  # noqa: PLC0415
    from gpufleet.reports.main import ReportError, connect, parse_time  # noqa: PLC0415
    from gpufleet.reports.query import InfluxError  # noqa: PLC0415

    settings = _report_config(config, influx_url, database)
    try:
        rules = TenantRules.from_toml(tenants_file.read_text(encoding="utf-8"))
        points, moves = audit(connect(settings), rules, parse_time(start), parse_time(end))
    except (OSError, RulesError, ReportError, InfluxError) as exc:
        raise _fail(str(exc), 2) from None
    typer.echo(f"{points} tenant_usage points checked against {tenants_file}: {len(moves)} workloads would move")
    for move in moves:
        typer.echo(f"  {move.workload:<40} {move.billed_to:>14} -> {move.rules_say:<14} {move.gpu_hours:10.4f} GPU-hours")


dashboards_app = typer.Typer(no_args_is_help=True, help="Grafana dashboards, provisioning and alert rules.")
app.add_typer(dashboards_app, name="dashboards")


@dashboards_app.command("build")
def dashboards_build(out: Annotated[Path, typer.Option(help="Folder for dashboards and provisioning files")]) -> None:
    """Write the dashboards (JSON) and Grafana provisioning (data source, dashboard provider, alert rules)."""
    from gpufleet.dashboards import build  # noqa: PLC0415

    for path in build(out):
        typer.echo(str(path))


@app.command()
def demo(
    nodes: Annotated[int, typer.Option(help="Simulated nodes")] = 20,
    gpus_per_node: Annotated[int, typer.Option(help="GPUs per node")] = 8,
    interval: Annotated[float, typer.Option(help="Seconds per window")] = 1.0,
    duration: Annotated[float, typer.Option(help="Seconds the fleet runs")] = 15.0,
    workdir: Annotated[Path, typer.Option(help="Where the local services keep config, data and logs")] = Path("out/demo"),
    tenants_file: Annotated[Path, typer.Option(help="Tenant rules")] = Path(__file__).resolve().parent.parent / "systemd" / "tenants.toml",
    serve: Annotated[bool, typer.Option("--serve", help="Keep the services running until Ctrl-C")] = False,
) -> None:
    """Run the whole pipeline locally: Mosquitto + InfluxDB + collector + a simulated fleet with tenants."""
    _setup_logging(False)
    from gpufleet import localstack  # noqa: PLC0415
    from gpufleet.demo import run_demo  # noqa: PLC0415

    missing = localstack.missing_binaries()
    if missing:
        raise _fail(f"not installed: {', '.join(missing)}; run `make deps` first")
    try:
        code = run_demo(workdir, nodes, gpus_per_node, interval, duration, serve, tenants_file)
    except localstack.ServiceError as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
