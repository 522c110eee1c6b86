"""End to end: the nightly DAG on the ``tiny`` world, through Airflow's ``dag.test()``.

The checks are computed independently of the pipeline's code: active users and
installed apps come straight from the validated events, the serving rows from
plain SQL on the stable names.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.worlds import World, cli_env, copy_world, run_cli

# The session's fresh-world run (if no test built it yet) and a rerun: above pytest's default 900 s when loaded.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parent.parent


def _counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as connection:
        return {
            table: connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("recommendations", "user_insights", "similar_apps")
        }


@pytest.fixture(scope="module")
def nightly_run(tiny_world: World, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The session's fresh-world ``pe run``, and a second ``pe run`` of the same date on a copy of it."""
    counts_first = _counts(tiny_world.serving_db)
    again = copy_world(tiny_world, tmp_path_factory.mktemp("e2e-rerun"))
    second = run_cli(again.root, "run")
    counts_second = _counts(again.serving_db)
    return {"root": tiny_world.root, "db": tiny_world.serving_db, "first": tiny_world.first_run, "second": second,
            "counts": (counts_first, counts_second), "world": tiny_world.manifest}


def test_run_prints_the_summary(nightly_run: dict) -> None:
    out = nightly_run["first"].stdout
    assert "Nightly personalization run for" in out
    assert "quarantined" in out
    assert "mlflow ui" in out
    assert "airflow standalone" in out
    # the KPIs/A-B report is written and linked (what the report DAG does after a publish)
    report_line = next(line for line in out.splitlines() if "KPIs and A/B report:" in line)
    report = Path(report_line.split("KPIs and A/B report:")[1].split()[0])
    page = report.read_text()
    assert report.name == "report.html" and "Personalization KPIs" in page and "data:image/png;base64," in page


def test_second_run_is_idempotent(nightly_run: dict) -> None:
    first, second = nightly_run["counts"]
    assert first == second
    assert first["recommendations"] > 0 and first["user_insights"] > 0 and first["similar_apps"] > 0


def _silver_events(root: Path, date: str):
    """Validated events up to ``date`` with the app's user ids (silver holds pseudonyms: map them back)."""
    import pandas as pd

    silver = root / "var" / "lake" / "silver"
    mapping = pd.read_parquet(silver / "user_pseudonyms" / f"date={date}")
    app_ids = dict(zip(mapping["user_id"], mapping["app_user_id"], strict=True))
    frames = [pd.read_parquet(part) for part in sorted((silver / "events").glob("event_date=*"))
              if part.name.split("=", 1)[1] <= date]
    events = pd.concat(frames, ignore_index=True)
    today = pd.read_parquet(silver / "events" / f"event_date={date}")
    assert not set(events["user_id"]) - set(app_ids), "every pseudonym in silver has a mapping row"
    return events.assign(user_id=events["user_id"].map(app_ids)), today.assign(user_id=today["user_id"].map(app_ids))


def test_every_active_user_gets_n_fresh_recommendations(nightly_run: dict) -> None:
    import pandas as pd

    from personalization.config import load_config

    root, date = nightly_run["root"], nightly_run["world"]["last_date"]
    config = load_config(environ={"PE_ROOT": str(root)})
    top_n = config.scoring.top_n
    events, today = _silver_events(root, date)
    active_users = set(today["user_id"])
    assert active_users, "the tiny world must have activity on its last day"

    with sqlite3.connect(nightly_run["db"]) as connection:
        recs = pd.read_sql_query(
            "SELECT user_id, rank, app_id FROM recommendations WHERE surface = 'for_you'", connection)
    per_user = recs.groupby("user_id")["rank"].apply(sorted).to_dict()
    missing = active_users - set(per_user)
    assert not missing, f"{len(missing)} active users without for_you rows, e.g. {sorted(missing)[:5]}"
    for user in active_users:
        assert per_user[user] == list(range(1, top_n + 1)), user

    # Installed (and not uninstalled since) apps, from the validated events alone.
    app_events = events[events["event_type"].isin(["install", "uninstall"])].sort_values("ts")
    last_action = app_events.groupby(["user_id", "app_id"])["event_type"].last()
    installed = set(last_action[last_action == "install"].index)
    shown = set(zip(recs["user_id"], recs["app_id"], strict=True))
    assert not (shown & installed), sorted(shown & installed)[:5]


def test_quarantine_counts_match_what_the_generator_injected(nightly_run: dict) -> None:
    root, date = nightly_run["root"], nightly_run["world"]["last_date"]
    lake = root / "var" / "lake"
    injected = json.loads((lake / "raw" / "_manifests" / f"date={date}" / "injected.json").read_text())["injected"]
    report = json.loads((lake / "reports" / "validation" / f"date={date}" / "report.json").read_text())
    assert {k: v for k, v in report["by_reason"].items() if v} == {k: v for k, v in injected.items() if v}


@pytest.mark.parametrize("name", ["compare_runs", "explore_recommendations"])
def test_notebooks_execute_top_to_bottom(nightly_run: dict, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    # The kernel inherits the environment: the notebooks find the run through the configuration.
    for key, value in cli_env(nightly_run["root"]).items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(nightly_run["root"])}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.get("output_type") == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs), "the notebook must draw its plots"
