"""The PDF report: the HTML report printed by headless Chromium (Debian package `chromium`).

Chromium lays out the inline SVG and CSS exactly as the HTML shows, so the two never drift apart,
and it is one Debian package instead of a Python stack with its own layout engine. It runs with a
throw-away profile, no network services and a hard timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

TIMEOUT_S = 120.0
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


class PdfError(RuntimeError):
    """Chromium is missing or could not print the report."""


def find_chromium() -> str | None:
    env = os.environ.get("GPUFLEET_CHROMIUM")
    if env:
        return env
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_argv(chromium: str, profile: Path) -> list[str]:
    """Flags for a headless run that needs nothing from outside (no sandbox: runs as root in CI)."""
    return [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
        f"--user-data-dir={profile}",
    ]


def html_to_pdf(html: str, out: Path) -> Path:
    chromium = find_chromium()
    if chromium is None:
        raise PdfError("chromium is not installed (Debian: apt-get install chromium); needed for --format pdf")
    out = out.resolve()
    with tempfile.TemporaryDirectory(prefix="gpufleet-pdf-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(html, encoding="utf-8")
        argv = [*chromium_argv(chromium, Path(tmp) / "profile"), "--no-pdf-header-footer", f"--print-to-pdf={out}", page.as_uri()]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise PdfError(f"chromium did not finish printing within {TIMEOUT_S:.0f} s") from None
    if done.returncode != 0 or not out.exists() or out.stat().st_size == 0:
        tail = done.stderr.decode("utf-8", "replace")[-1500:]
        raise PdfError(f"chromium could not print the report (exit {done.returncode}): {tail}")
    return out
