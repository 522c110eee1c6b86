"""Render an HTML report (e.g. ``reports/experiments/date=D/report.html``) to a PNG with headless Chromium.

Usage::

    python scripts/screenshot_report.py REPORT.html [OUT.png] [--chromium PATH] [--size 1280,2000]

The PNG defaults to the report's name with ``.png``. Chromium is ``/usr/bin/chromium``
(or ``chromium`` / ``chromium-browser`` / ``google-chrome`` on PATH) unless ``--chromium``
or ``$CHROMIUM`` says otherwise; without one the script exits with status 2 and says so.
The report is self-contained (plots are embedded), so no network access is needed and
background networking is disabled.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
#: Seconds Chromium may take to render and write the screenshot.
TIMEOUT_S = 120


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium executable to use, or None when none is installed."""
    for candidate in ([explicit] if explicit else []) + [os.environ.get("CHROMIUM", "")] + list(CANDIDATES):
        if not candidate:
            continue
        found = (
            candidate
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK)
            else shutil.which(candidate)
        )
        if found:
            return found
    return None


def screenshot(report: Path, output: Path, chromium: str, window_size: str = "1280,2000") -> Path:
    """Render ``report`` with headless ``chromium`` into ``output`` (PNG); raises on failure."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={output.resolve()}",
            f"--window-size={window_size}",
            report.resolve().as_uri(),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if completed.returncode != 0 or not output.exists() or output.stat().st_size == 0:
        raise RuntimeError(f"chromium failed (exit {completed.returncode}): {completed.stderr[-2000:]}")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the HTML report to render")
    parser.add_argument("output", type=Path, nargs="?", help="PNG to write (default: REPORT with .png)")
    parser.add_argument("--chromium", help="Chromium executable (default: /usr/bin/chromium or on PATH)")
    parser.add_argument("--size", default="1280,2000", help="window size WIDTH,HEIGHT in pixels")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"error: no report at {args.report}", file=sys.stderr)
        return 2
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print(
            "error: Chromium not found (looked for /usr/bin/chromium, chromium, chromium-browser, "
            "google-chrome; set --chromium or $CHROMIUM). Install it, e.g. `apt-get install chromium`.",
            file=sys.stderr,
        )
        return 2
    output = args.output or args.report.with_suffix(".png")
    try:
        screenshot(args.report, output, chromium, args.size)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
