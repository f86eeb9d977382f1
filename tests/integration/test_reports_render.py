"""The HTML report as a person sees it: headless Chromium takes a screenshot and the charts'
colours must be on it (the SVG rendered, not just sat in the file). And the PDF printer: one
Chromium for many pages, and a clear PdfError, never a hang, when Chromium fails."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from gpufleet.reports import charts, render_html
from gpufleet.reports.model import HOUR_NS, Incident, PriceList, UsageRow, tenant_report
from gpufleet.reports.render_pdf import PdfError, PdfPrinter, chromium_argv, find_chromium

S = 1_746_057_600_000_000_000  # 2025-05-01T00:00:00Z
DAYS = 30
H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
PRICES = PriceList("prices", "EXAMPLE internal rates (test)", "EUR", ((H100, 2.5), ("NVIDIA A100*", 1.5)), per_kwh=0.25)
CLOUD = PriceList("example-cloud", "EXAMPLE public-cloud on-demand rates (illustrative, not a quote)", "USD", (("*H100*", 12.0), ("*A100*", 4.0)))


def month_of_rows(tenant: str = "vision", seed: int = 3) -> list[UsageRow]:
    """A month of hourly rows for one tenant on 16 GPUs, busier on weekdays, with a few incidents."""
    rng = random.Random(seed)
    rows = []
    for hour in range(DAYS * 24):
        start = S + hour * HOUR_NS
        weekday = (hour // 24 + 3) % 7 < 5  # 2025-05-01 is a Thursday
        for model, gpus in ((H100, 8), (A100, 8)):
            held = rng.randint(4, gpus) if weekday else rng.randint(0, 3)
            gpu_s = held * 3600.0
            busy = gpu_s * rng.uniform(0.45, 0.95)
            incidents = ()
            if rng.random() < 0.004:
                incidents = (Incident(start + 1_234_000_000_000, "prod", "gpu-07", "3", "xid", 79, "GPU has fallen off the bus"),)
            rows.append(UsageRow(
                start, "prod", model, tenant, gpu_s, busy, gpu_s - busy, busy * 600 + (gpu_s - busy) * 80,
                rng.randint(20, 79) << 30, held * 360, rng.uniform(0, 60) * held, rng.uniform(0, 300) * held, 0.0,
                3600.0 if incidents else 0.0,
                {f"slurm:{10_000 + hour // 24}": {"kind": "slurm_job", "job": str(10_000 + hour // 24), "account": tenant}} if held else {},
                incidents,
            ))
    return rows


def screenshot(html_path: Path, png: Path, tmp: Path) -> Image.Image:
    chromium = find_chromium()
    if chromium is None:
        pytest.fail("chromium is not installed; run `make deps` first", pytrace=False)
    argv = [*chromium_argv(chromium, tmp / "profile"), f"--screenshot={png}", "--window-size=1200,2000", "--hide-scrollbars", html_path.as_uri()]
    done = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0 and png.exists(), done.stderr.decode(errors="replace")[-2000:]
    return Image.open(png).convert("RGB")


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def test_the_html_report_renders_its_charts_in_chromium(tmp_path):
    report = tenant_report("vision", S, S + DAYS * 24 * HOUR_NS, month_of_rows(), PRICES, [CLOUD], cluster="prod", sources="rollup 720 h, live 0 h")
    html = render_html.render(report)
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    image = screenshot(page, tmp_path / "report.png", tmp_path)
    assert image.size == (1200, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    counts = {rgb: n for n, rgb in colours}
    # Each chart's bars: busy and idle stacked, and energy, in their exact fill colours.
    for name in ("BUSY_COLOUR", "IDLE_COLOUR", "ENERGY_COLOUR"):
        assert counts.get(_rgb(getattr(charts, name)), 0) > 2000, name
    # The bars stand inside the chart area, below the key-figure tiles, not somewhere else.
    busy = _rgb(charts.BUSY_COLOUR)
    rows_with_busy = [y for y in range(image.height) if any(image.getpixel((x, y)) == busy for x in range(0, image.width, 4))]
    assert 150 < min(rows_with_busy) and max(rows_with_busy) - min(rows_with_busy) > 100
    # Not a blank page: text and grid give many shades.
    assert len(colours) > 50


# --- the PDF printer against the real Chromium, and against ones that fail ---------------------


def chromium_script(folder: Path, body: str) -> Path:
    """An executable shell script to stand in for Chromium (GPUFLEET_CHROMIUM or PdfPrinter's
    `chromium`); `body` runs with Chromium's arguments in "$@"."""
    script = folder / "chromium.sh"
    script.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    script.chmod(0o755)
    return script


def counting_chromium(folder: Path) -> tuple[Path, Path]:
    """The real Chromium behind a script that logs a line per start: (script, log)."""
    real = find_chromium()
    if real is None:
        pytest.fail("chromium is not installed; run `make deps` first", pytrace=False)
    log = folder / "starts.log"
    return chromium_script(folder, f'echo started >> "{log}"\nexec "{real}" "$@"'), log


def pdf_pages(data: bytes) -> int:
    """Pages of a PDF as Chromium writes it: its page tree's /Count, which Skia leaves uncompressed."""
    counts = [int(n) for n in re.findall(rb"/Count (\d+)", data)]
    return max(counts, default=0)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_one_chromium_prints_many_pages_on_a4_and_is_reaped(tmp_path):
    script, log = counting_chromium(tmp_path)
    report = tenant_report("vision", S, S + DAYS * 24 * HOUR_NS, month_of_rows(), PRICES, [CLOUD], cluster="prod")
    html = render_html.render(report)
    outs = [tmp_path / f"r{i}.pdf" for i in range(5)]
    with PdfPrinter(str(script), tabs=2) as printer:
        assert printer.print_all((html, out) for out in outs[:3]) == outs[:3]
        assert printer.print_all([(html, outs[3]), (html, outs[4])]) == outs[3:]  # the same Chromium, again
        pid = printer.pid
        assert pid is not None and printer.pages_printed == 5
    assert _gone(pid)
    assert log.read_text().splitlines() == ["started"]
    for out in outs:
        data = out.read_bytes()
        assert data.startswith(b"%PDF-") and pdf_pages(data) >= 2 and len(data) > 20_000
        assert b"/MediaBox [0 0 594.95996 841.91998]" in data  # A4, from the report's @page


def test_a_chromium_that_exits_at_once_is_a_pdf_error_with_its_code_and_stderr(tmp_path):
    script = chromium_script(tmp_path, 'echo "cannot open display: no such thing" >&2\nexit 3')
    began = time.monotonic()
    with pytest.raises(PdfError, match=r"exited while printing \(exit 3\): cannot open display: no such thing$"), \
            PdfPrinter(str(script)) as printer:
        printer.print_all([("<p>x</p>", tmp_path / "x.pdf")])
    assert time.monotonic() - began < 30
    assert not (tmp_path / "x.pdf").exists()


def test_a_chromium_that_dies_mid_run_is_a_pdf_error_not_a_hang(tmp_path):
    # Reads the first command from fd 3, as Chromium does, then dies without a reply.
    script = chromium_script(tmp_path, 'head -c 10 <&3 >/dev/null\necho "Received signal 11 SEGV_MAPERR" >&2\nkill -9 $$')
    with pytest.raises(PdfError, match=r"exited while printing \(exit -9\): Received signal 11 SEGV_MAPERR"):
        html_to_pdf_with(script, tmp_path)


def test_a_chromium_that_never_answers_times_out_and_is_ended(tmp_path):
    script = chromium_script(tmp_path, "exec sleep 600")
    began = time.monotonic()
    with pytest.raises(PdfError, match=r"did not answer within 2 s \(starting, or opening a tab\)"), \
            PdfPrinter(str(script), page_timeout_s=2) as printer:
        pid = printer.pid
        printer.print_all([("<p>x</p>", tmp_path / "x.pdf")])
    assert time.monotonic() - began < 20
    assert pid is not None and _gone(pid)


def test_without_chromium_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("GPUFLEET_CHROMIUM", raising=False)
    with pytest.raises(PdfError, match="apt-get install chromium"):
        PdfPrinter()


def html_to_pdf_with(chromium: Path, folder: Path) -> None:
    with PdfPrinter(str(chromium)) as printer:
        printer.print_all([("<p>x</p>", folder / "x.pdf")])


# A Chromium that opens tabs as the real one does, then stops reading its commands pipe: the
# printer's write of a page's HTML (one message, far over the pipe's 64 KiB) must not hang.
_STOPS_READING = '''
import json, os, time
buffer = b""
while True:
    data = os.read(3, 65536)
    if not data:
        raise SystemExit(0)
    buffer += data
    *whole, buffer = buffer.split(b"\\0")
    for raw in whole:
        message = json.loads(raw)
        result = {"targetId": "T", "sessionId": "S", "frameTree": {"frame": {"id": "F"}}}
        reply = {"id": message["id"], "result": result} | ({"sessionId": "S"} if "sessionId" in message else {})
        os.write(4, json.dumps(reply).encode() + b"\\0")
    if b"Page.setDocumentContent" in buffer:
        time.sleep(600)
'''


def test_a_chromium_that_stops_reading_mid_page_is_a_pdf_error_not_a_hang(tmp_path):
    fake = tmp_path / "stops_reading.py"
    fake.write_text(_STOPS_READING, encoding="utf-8")
    script = chromium_script(tmp_path, f'exec "{sys.executable}" "{fake}"')
    began = time.monotonic()
    with pytest.raises(PdfError, match=r"chromium took no commands for 2 s"), \
            PdfPrinter(str(script), tabs=1, page_timeout_s=2) as printer:
        printer.print_all([("<p>" + "x" * 1_000_000 + "</p>", tmp_path / "x.pdf")])
    assert time.monotonic() - began < 20
