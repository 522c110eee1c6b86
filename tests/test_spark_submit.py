"""A job submitted with ``spark-submit --master local[2] --py-files dist/...zip``, as a cluster runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from jobs import submit
from personalization.config import load_config

ROOT = Path(__file__).resolve().parent.parent
SPARK_SUBMIT = Path(sys.executable).with_name("spark-submit")


def _build_zip(dest: Path) -> Path:
    completed = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_jobs_zip.py"), str(dest)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return dest


def test_jobs_zip_holds_the_packages_and_is_reproducible(tmp_path: Path) -> None:
    first = _build_zip(tmp_path / "a.zip")
    second = _build_zip(tmp_path / "b.zip")
    assert first.read_bytes() == second.read_bytes()
    names = zipfile.ZipFile(first).namelist()
    assert "jobs/__init__.py" in names and "jobs/build_profiles.py" in names
    assert "personalization/config.py" in names and "personalization/lake.py" in names
    assert not [name for name in names if "__pycache__" in name or not name.endswith(".py")]


def test_job_command_line_needs_a_real_date() -> None:
    assert submit.parse_args("build_profiles", ["--date", "2026-10-14"]).date == "2026-10-14"
    assert submit.parse_args("build_profiles", ["--date", "2026-10-14", "--config", "p.yaml"]).config == "p.yaml"
    with pytest.raises(SystemExit):
        submit.parse_args("build_profiles", ["--date", "2026-02-31"])
    with pytest.raises(SystemExit):
        submit.parse_args("build_profiles", [])


def _user_env() -> dict[str, str]:
    """A user's shell: venv not activated (its bin/ off PATH), no Spark variables, no PE_ settings."""
    venv_bin = str(SPARK_SUBMIT.parent)
    path = os.pathsep.join(entry for entry in os.environ.get("PATH", "").split(os.pathsep)
                           if entry and os.path.abspath(entry) != venv_bin)
    dropped = ("SPARK_HOME", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV", "PYTHONPATH")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PE_") and key not in dropped}
    env["PATH"] = path
    return env


def test_venv_spark_submit_finds_spark_home_without_help(tmp_path: Path) -> None:
    """README's `spark-submit` from the venv, venv not activated: no "Could not find valid SPARK_HOME"."""
    completed = subprocess.run([str(SPARK_SUBMIT), "--version"], cwd=tmp_path, env=_user_env(),
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Could not find valid SPARK_HOME" not in completed.stderr
    assert "version" in completed.stdout + completed.stderr


@pytest.mark.slow
def test_validate_raw_events_under_spark_submit(tmp_path: Path) -> None:
    from personalization.generator import generate_world

    root = tmp_path / "root"
    # As README's "Cluster submission" says it: no SPARK_HOME, no PYSPARK_PYTHON, venv not activated.
    env = _user_env()
    env.update(PE_ROOT=str(root), PE_GENERATOR__SCALE="tiny", PE_SPARK__SHUFFLE_PARTITIONS="2")
    config = load_config(environ=env)
    summary = generate_world(config, progress=False)
    date = summary.first_date
    package = _build_zip(tmp_path / "dist" / "personalization-jobs.zip")

    completed = subprocess.run(
        [str(SPARK_SUBMIT), "--master", "local[2]", "--driver-memory", "1g", "--py-files", str(package),
         str(ROOT / "jobs" / "validate_raw_events.py"), "--date", date],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, (completed.stdout[-3000:], completed.stderr[-6000:])
    # spark-submit merges the Python driver's stderr into its stdout.
    assert f"code from {package}\n" in completed.stdout  # the packaged code, not the checkout
    result = json.loads([line for line in completed.stdout.splitlines() if line.startswith("{")][-1])

    lake = Path(config.lake_root)
    assert result["landing_date"] == date
    assert (lake / "silver" / "events" / f"event_date={date}" / "_SUCCESS").exists()
    assert (lake / "silver" / "users" / f"date={date}" / "_SUCCESS").exists()
    # The quarantine holds exactly what the generator injected, reason by reason.
    injected = json.loads((lake / "raw" / "_manifests" / f"date={date}" / "injected.json").read_text())["injected"]
    report = json.loads((lake / "reports" / "validation" / f"date={date}" / "report.json").read_text())
    assert {k: v for k, v in report["by_reason"].items() if v} == {k: v for k, v in injected.items() if v}
    assert result["quarantined"] == sum(injected.values())
    import pandas as pd

    clean = pd.read_parquet(lake / "silver" / "events" / f"event_date={date}")
    assert len(clean) == report["clean_by_event_date"][date]
