"""Render an HTML report (e.g. ``reports/experiments/date=D/report.html``) to a PNG with headless Chromium.

Usage::

    python scripts/screenshot_report.py REPORT.html [OUT.png] [--chromium PATH] [--size 1280,2000]

The PNG defaults to the report's name with ``.png``. The script then checks that the plots
really render (exit status 1 otherwise): Chromium loads a copy of the page with a small probe
script and dumps the DOM, which says for every ``<img>`` whether the browser decoded it and
where it sits; each decoded plot's box in the screenshot must not be blank (at least
``MIN_INK`` of its pixels darker than near-white). Without ``--size`` the window is as tall
as the page, so every plot is in the picture. Chromium is ``/usr/bin/chromium``
(or ``chromium`` / ``chromium-browser`` / ``google-chrome`` on PATH) unless ``--chromium``
or ``$CHROMIUM`` says otherwise; without one the script exits with status 2 and says so.
The report is self-contained (plots are embedded), so no network access is needed and
background networking is disabled.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
#: Seconds Chromium may take to render and write the screenshot.
TIMEOUT_S = 120
#: Share of a plot's pixels that must be darker than near-white (a blank box has none).
MIN_INK = 0.01
#: Grey level (0-255) below which a pixel counts as ink.
INK_LEVEL = 235
#: Appended to a copy of the page: after load, records every image's decode state and box.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images).map((img) => {
    const box = img.getBoundingClientRect();
    return {decoded: img.complete && img.naturalWidth > 0, natural: [img.naturalWidth, img.naturalHeight],
            box: [box.left + window.scrollX, box.top + window.scrollY, box.width, box.height]};
  });
  const out = document.createElement("pre");
  out.id = "plot-probe";
  out.textContent = JSON.stringify({images: images, height: document.documentElement.scrollHeight});
  document.body.appendChild(out);
});
</script>"""


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


def _chromium(chromium: str, *arguments: str) -> subprocess.CompletedProcess:
    """Run headless Chromium with a throwaway profile; raises RuntimeError when it fails."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",  # screenshot pixels = CSS pixels, so the probe's boxes fit
            f"--user-data-dir={profile}",
            *arguments,
        ]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"chromium failed (exit {completed.returncode}): {completed.stderr[-2000:]}")
    return completed


def probe(report: Path, chromium: str, width: int = 1280) -> dict:
    """``{"images": [{"decoded", "natural": [w, h], "box": [x, y, w, h]}], "height"}`` as Chromium lays out ``report``."""
    with tempfile.TemporaryDirectory(prefix="plot-probe-") as folder:
        copy = Path(folder) / "probe.html"
        text = report.read_text(encoding="utf-8")
        copy.write_text(text.replace("</body>", PROBE + "</body>") if "</body>" in text else text + PROBE,
                        encoding="utf-8")
        completed = _chromium(chromium, "--dump-dom", "--virtual-time-budget=10000",
                              f"--window-size={width},1000", copy.as_uri())
    found = re.search(r'<pre id="plot-probe">(.*?)</pre>', completed.stdout, re.S)
    if not found:
        raise RuntimeError("the page did not finish loading (no probe output in the DOM)")
    return json.loads(html.unescape(found.group(1)))


def screenshot(report: Path, output: Path, chromium: str, window_size: str = "1280,2000") -> Path:
    """Render ``report`` with headless ``chromium`` into ``output`` (PNG); raises on failure."""
    output.parent.mkdir(parents=True, exist_ok=True)
    _chromium(chromium, f"--screenshot={output.resolve()}", f"--window-size={window_size}", report.resolve().as_uri())
    if not output.exists() or output.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot to {output}")
    return output


def check_plots(layout: dict, png: Path) -> list[str]:
    """Problems with the plots: none on the page, an image the browser could not decode, a blank box."""
    from PIL import Image

    images = layout["images"]
    if not images:
        return ["the page has no plots"]
    problems = []
    with Image.open(png) as picture:
        grey = picture.convert("L")
        for number, image in enumerate(images, start=1):
            if not image["decoded"]:
                problems.append(f"plot {number}: the browser could not decode the image")
                continue
            x, y, width, height = (int(round(v)) for v in image["box"])
            if width < 10 or height < 10 or y + height > grey.height or x + width > grey.width:
                problems.append(f"plot {number}: box {image['box']} is not inside the {grey.size} screenshot")
                continue
            histogram = grey.crop((x, y, x + width, y + height)).histogram()
            ink = sum(histogram[:INK_LEVEL]) / (width * height)
            if ink < MIN_INK:
                problems.append(f"plot {number}: blank in the screenshot ({100 * ink:.2f}% ink)")
    return problems


def render_and_check(report: Path, output: Path, chromium: str, window_size: str | None = None
                     ) -> tuple[Path, dict, list[str]]:
    """Screenshot ``report`` (the whole page unless ``window_size``) and check its plots."""
    layout = probe(report, chromium)
    size = window_size or f"1280,{max(600, int(layout['height']) + 20)}"
    screenshot(report, output, chromium, size)
    return output, layout, check_plots(layout, output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the HTML report to render")
    parser.add_argument("output", type=Path, nargs="?", help="PNG to write (default: REPORT with .png)")
    parser.add_argument("--chromium", help="Chromium executable (default: /usr/bin/chromium or on PATH)")
    parser.add_argument("--size", help="window size WIDTH,HEIGHT in pixels (default: 1280 wide, the page's height)")
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
        _, layout, problems = render_and_check(args.report, output, chromium, args.size)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"{output}: {len(layout['images'])} plot(s), {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
