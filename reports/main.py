"""What `gpufleet report` and `gpufleet rollup` run: the CLI parses flags, loads the config
(settings.load_report_config) and calls `run_report` / `run_rollup`; everything they can fail
with for a reason the operator can fix is a ReportError (or ConfigError) with one clear line."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from . import mail, render_csv, render_html, render_json, render_pdf
from .fonts import FontError
from .model import HOUR_NS, UNALLOCATED, TenantReport, chargeback, floor_hour, tenant_report
from .query import InfluxError, InfluxQL
from .rollup import RollupSummary, collect, rollup
from .settings import ReportConfig

Format = Literal["html", "pdf", "csv", "json"]
FORMATS: tuple[Format, ...] = ("html", "pdf", "csv", "json")
SHOWS_WORKLOADS = ("html", "pdf", "json")  # CSV has figures only: its reports read no workload lists
CHARGEBACK_FILE = "chargeback.csv"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ReportError(RuntimeError):
    """A report could not be made or sent, for a reason the operator can fix (the message says which)."""


def parse_time(text: str) -> int:
    """ISO 8601 date or date-time to ns since the epoch; without a zone it is UTC.
    `2025-05-01` is that day's midnight UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReportError(f"not an ISO 8601 date or time: {text!r} (e.g. 2025-05-01 or 2025-05-01T12:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    since = moment - _EPOCH  # exact integer arithmetic: a float timestamp loses the microseconds
    return (since.days * 86_400 + since.seconds) * 1_000_000_000 + since.microseconds * 1000


def connect(config: ReportConfig) -> InfluxQL:
    influx = config.influx
    return InfluxQL(influx.url, influx.database, username=influx.username, password=influx.password(), timeout_s=influx.timeout_s)


def render(report: TenantReport, fmt: Format, out: Path) -> Path:
    """Write one tenant's report in `fmt` to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        out.write_text(render_html.render(report), encoding="utf-8")
    elif fmt == "pdf":
        out.write_bytes(render_pdf.render(report))
    elif fmt == "csv":
        out.write_text(render_csv.render_tenant(report), encoding="utf-8")
    elif fmt == "json":
        out.write_text(render_json.render(report), encoding="utf-8")
    else:
        raise ReportError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    return out


def render_files(reports: Sequence[TenantReport], fmt: Format, paths: Sequence[Path]) -> list[Path]:
    """Write each report in `fmt` to its path; the paths written."""
    workers = min(len(reports), PDF_WORKERS)
    if fmt != "pdf" or workers < 2:
        return [render(report, fmt, path) for report, path in zip(reports, paths)]
    return _render_pdf_files(reports, paths, workers)


# PDF layout is the one format that costs real CPU (~30 ms a tenant on average, ~75 ms for one
# with 500 long Kubernetes identities), so --all lays PDFs out on every core. Workers are forked once the reports exist and read them from
# the memory they inherit: pickling each report to a worker would cost a good part of its layout.
PDF_WORKERS = len(os.sched_getaffinity(0))
_pdf_work: tuple[Sequence[TenantReport], Sequence[Path]] = ((), ())


def _render_pdf_files(reports: Sequence[TenantReport], paths: Sequence[Path], workers: int) -> list[Path]:
    global _pdf_work
    render_pdf.load_fonts()  # once, before the fork: each worker inherits the faces and the usual subset
    _pdf_work = (reports, paths)
    # Longest first, one at a time: no worker is left with a long report while the other idles.
    order = sorted(range(len(reports)), key=lambda i: len(reports[i].workloads) + len(reports[i].incidents), reverse=True)
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            written = dict(zip(order, pool.map(_render_pdf_file, order)))
        return [written[i] for i in range(len(reports))]
    except BrokenProcessPool as exc:
        raise ReportError(f"a PDF worker process died: {exc}") from None
    finally:
        _pdf_work = ((), ())


def _render_pdf_file(index: int) -> Path:
    reports, paths = _pdf_work
    return render(reports[index], "pdf", paths[index])


@dataclass
class ReportRun:
    files: list[Path] = field(default_factory=list)
    mailed: dict[str, list[str]] = field(default_factory=dict)  # tenant -> recipients
    not_mailed: list[str] = field(default_factory=list)  # tenants with no recipients configured
    reconciled: bool | None = None  # --all only
    sources: str = ""


@contextlib.contextmanager
def _without_cycle_collection() -> Iterator[None]:
    """A month of a large fleet is millions of small dicts and rows, none in a reference cycle.
    Python's cycle collector would walk all of them again and again as more are made, and find
    nothing: with it, the report of 200 tenants spent more time there than in its own work.
    Memory is still freed by reference counting; cycles, if any, wait until the end."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@_without_cycle_collection()
def run_report(
    config: ReportConfig,
    *,
    start: str | int,
    end: str | int,
    fmt: Format = "html",
    out: Path,
    tenant: str | None = None,
    all_tenants: bool = False,
    mail_to: Sequence[str] = (),
    mail_tenants: bool = False,
    use_rollup: bool = True,
) -> ReportRun:
    """`gpufleet report`. One tenant: its report in `out` (a file). --all: every tenant's report
    as `out/<tenant>.<fmt>` (with `unallocated`) and `out/chargeback.csv`.

    Mail: `mail_to` sends the one tenant's report to those addresses; `mail_tenants` sends each
    tenant (never `unallocated`) its own report at its [mail.recipients]."""
    start_ns = start if isinstance(start, int) else parse_time(start)
    end_ns = end if isinstance(end, int) else parse_time(end)
    if end_ns <= start_ns:
        raise ReportError("--to must be after --from")
    if (tenant is None) == (not all_tenants):
        raise ReportError("give either --tenant NAME or --all")
    if all_tenants and mail_to:
        raise ReportError("--mail-to goes with --tenant; with --all each tenant's recipients come from [mail.recipients]")
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    prices, references = config.price_list(), config.reference_lists()
    db = connect(config)
    run = ReportRun()
    try:
        got = collect(
            db, start_ns, end_ns, cluster=config.cluster, tenant=tenant, use_rollup=use_rollup,
            with_workloads=fmt in SHOWS_WORKLOADS,
        )
    except InfluxError as exc:
        raise ReportError(str(exc)) from None
    run.sources = got.sources
    if tenant is not None:
        reports = [tenant_report(tenant, start_ns, end_ns, got.rows, prices, references, cluster=config.cluster, sources=got.sources)]
        paths = [out]
    else:
        cb = chargeback(start_ns, end_ns, got.rows, got.meters, prices, references, cluster=config.cluster, sources=got.sources)
        reports = list(cb.tenants)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"{_file_stem(r.tenant)}.{fmt}" for r in reports]
        charge = out / CHARGEBACK_FILE
        charge.write_text(render_csv.render_chargeback(cb), encoding="utf-8")
        run.files.append(charge)
        run.reconciled = cb.reconciled
    # The rows are done with: freed now, before PDF workers are forked, the memory they held is
    # not the parent's to share with them (a worker's new objects land in the half-empty pools it
    # inherits, and each first write there copies a page).
    del got
    try:
        run.files += render_files(reports, fmt, paths)
    except FontError as exc:
        raise ReportError(str(exc)) from None
    if mail_to or mail_tenants:
        _mail(config, reports, paths, mail_to, run)
    return run


def _file_stem(tenant: str) -> str:
    """The tenant as a file name: the collector's tenant rule keeps names to [A-Za-z0-9._-], but
    rows written by anything else must not reach outside --out."""
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in tenant).lstrip(".")
    return stem or "_"


def _mail(config: ReportConfig, reports: list[TenantReport], paths: list[Path], mail_to: Sequence[str], run: ReportRun) -> None:
    messages = []
    for report, path in zip(reports, paths):
        if report.tenant == UNALLOCATED:
            continue
        recipients = list(mail_to) if mail_to else config.mail.recipients.get(report.tenant, [])
        if not recipients:
            run.not_mailed.append(report.tenant)
            continue
        messages.append(mail.tenant_message(report, recipients, config.mail.sender, mail.attachment_from(path)))
        run.mailed[report.tenant] = recipients
    try:
        mail.send(config.mail, messages)
    except mail.MailError as exc:
        raise ReportError(str(exc)) from None


def run_rollup(config: ReportConfig, *, start: str | int | None = None, end: str | int | None = None, now_ns: int | None = None) -> RollupSummary:
    """`gpufleet rollup`: compute and store the hourly rollup. Without --from/--to: the last
    `lookback_hours` complete hours, an hour counting as complete `lag_minutes` after it ends."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    if end is None:
        end_ns = floor_hour(now_ns - config.rollup.lag_minutes * 60 * 1_000_000_000)
    else:
        end_ns = end if isinstance(end, int) else parse_time(end)
    if start is None:
        start_ns = end_ns - config.rollup.lookback_hours * HOUR_NS
    else:
        start_ns = start if isinstance(start, int) else parse_time(start)
    if end_ns <= start_ns:
        raise ReportError("--to must be after --from")
    try:
        return rollup(connect(config), start_ns, end_ns)
    except InfluxError as exc:
        raise ReportError(str(exc)) from None
