"""The reports as a person sees them: headless Chromium takes a screenshot of the HTML report and
poppler draws the PDF report; the charts' colours must be on each (drawn, not just sat in the
file)."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from gpufleet.reports import charts, render_html, render_pdf
from gpufleet.reports.model import HOUR_NS, Incident, PriceList, UsageRow, tenant_report

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
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed; run `make deps` first", pytrace=False)
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
            f"--screenshot={png}", "--window-size=1200,2000", "--hide-scrollbars", html_path.as_uri()]
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


# --- the PDF as a person sees it: poppler draws it, qpdf checks its syntax --------------------------


def test_the_pdf_report_draws_its_charts_and_passes_qpdf(tmp_path):
    report = tenant_report("vision", S, S + DAYS * 24 * HOUR_NS, month_of_rows(), PRICES, [CLOUD], cluster="prod", sources="rollup 720 h, live 0 h")
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(render_pdf.render(report))
    checked = subprocess.run(["qpdf", "--check", str(pdf)], capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0 and "No syntax or stream encoding errors" in checked.stdout, checked.stdout + checked.stderr
    drawn = subprocess.run(["pdftoppm", "-r", "72", "-f", "1", "-l", "1", "-png", str(pdf), str(tmp_path / "page")],
                           capture_output=True, text=True, timeout=60, check=False)
    assert drawn.returncode == 0 and not drawn.stderr, drawn.stderr  # poppler says "Syntax Error" on stderr for a bad file
    image = Image.open(tmp_path / "page-1.png").convert("RGB")
    assert image.size == (596, 842)  # A4 at 72 dpi, 595.28 x 841.89 pt rounded up
    counts = {rgb: n for n, rgb in image.getcolors(maxcolors=1 << 20)}
    for name in ("BUSY_COLOUR", "IDLE_COLOUR", "ENERGY_COLOUR"):
        assert counts.get(_rgb(getattr(charts, name)), 0) > 1000, name
    busy = _rgb(charts.BUSY_COLOUR)
    rows_with_busy = [y for y in range(image.height) if any(image.getpixel((x, y)) == busy for x in range(0, image.width, 2))]
    assert 150 < min(rows_with_busy) and max(rows_with_busy) - min(rows_with_busy) > 50  # below the tiles, tall bars
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "GPU usage report: vision" in text and "EXAMPLE public-cloud" in text and "slurm:10000" in text
