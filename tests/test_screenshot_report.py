"""The experiment report renders in headless Chromium with its plots (acceptance 4).

Needs Chromium (``/usr/bin/chromium`` or on PATH, e.g. ``apt-get install chromium``);
skips with that reason when it is missing, except in CI (``CI=true``), where ``.ci/run``
installs it and a missing browser fails the test.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from personalization.experiment_report import KPI_TREND_COLUMNS, render_html

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.py"
spec = importlib.util.spec_from_file_location("screenshot_report", SCRIPT)
screenshot_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(screenshot_report)

CHROMIUM = screenshot_report.find_chromium()


@pytest.fixture(autouse=True)
def _chromium_present() -> None:
    if CHROMIUM is None:
        from tests.services import unreachable

        unreachable("Chromium (apt-get install chromium)", "not installed")


def kpi_page(tmp_path: Path) -> Path:
    """A report page whose only plot is the KPI trend figure (three days of KPIs)."""
    kpis = pd.DataFrame({"date": ["2026-10-01", "2026-10-02", "2026-10-03"],
                         **{column: [1.0, 3.0, 2.0] for column in KPI_TREND_COLUMNS}})
    page = tmp_path / "report.html"
    page.write_text(render_html("2026-10-03", "2026-09-20", "2026-10-03", [], kpis, []), encoding="utf-8")
    return page


def test_report_plots_render_in_chromium(tmp_path: Path) -> None:
    png, layout, problems = screenshot_report.render_and_check(kpi_page(tmp_path), tmp_path / "report.png", CHROMIUM)
    assert problems == [] and png.stat().st_size > 0
    (image,) = layout["images"]
    assert image["decoded"] and image["natural"][0] > 300 and image["box"][3] > 100


def test_broken_and_blank_images_are_reported(tmp_path: Path) -> None:
    # A 1x1 white PNG stretched to 200x100 (blank) and bytes that are no image at all.
    white = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGP4DwABAQEAWk1v8QAAAABJRU5ErkJggg==")
    page = tmp_path / "bad.html"
    page.write_text(f'<html><body><img alt="plot" src="data:image/png;base64,AAAA"/>'
                    f'<img alt="plot" style="width:200px;height:100px" src="data:image/png;base64,{white}"/>'
                    "</body></html>", encoding="utf-8")
    assert screenshot_report.main([str(page), str(tmp_path / "bad.png")]) == 1
    _, _, problems = screenshot_report.render_and_check(page, tmp_path / "bad.png", CHROMIUM)
    assert problems[0] == "plot 1: the browser could not decode the image"
    assert problems[1].startswith("plot 2: blank in the screenshot")
