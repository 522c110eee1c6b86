"""The A/B experiment report on crafted events: a clear winner, an A/A split and a broken allocation."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from personalization.experiment_report import build_report, parse_tag, read_results
from personalization.experiments import Experiment, Variant
from personalization.kpis import write_kpis
from tests.test_kpis import ev, make_config, write_events

D = "2026-10-10"
D_1 = "2026-10-09"
RANK_TEST = Experiment("rank_test", "salt", (Variant("control", 50), Variant("treatment", 50)))


def _impressions(user: str, tag: str, n: int = 4, surface: str = "for_you") -> list[dict]:
    return [ev("impression", user, f"a{k}", surface=surface, variant=tag) for k in range(n)]


def _clear_winner_events() -> tuple[list[dict], list[dict]]:
    """Day D-1 and day D of the rank test: treatment users click far more often."""
    before = [ev("purchase", "t01", "a1", amount=50.0)]  # before t01's first exposure: not counted
    today: list[dict] = []
    for i in range(40):
        control, treatment = f"c{i:02d}", f"t{i:02d}"
        today += _impressions(control, "control") + _impressions(treatment, "treatment")
        # control: 1 view of 4 impressions for every 4th user (CTR 0.25), none otherwise
        today += [ev("app_view", control, "a0", surface="for_you")] * (1 if i % 4 == 0 else 0)
        # treatment: 2 views of 4 for even users (0.5), 1 for odd users (0.25)
        today += [ev("app_view", treatment, "a0", surface="for_you")] * (2 if i % 2 == 0 else 1)
        today += [ev("install", treatment, "a0", surface="for_you")] * (1 if i % 4 == 0 else 0)
        today += [ev("app_open", user, "a0", f"s-{user}", duration=60.0) for user in (control, treatment)]
    today += [ev("purchase", "c00", "a0", amount=2.0), ev("purchase", "t00", "a0", amount=3.0)]
    # Noise that must not count: a view on another surface, an untagged user, a user in both arms.
    today += [ev("app_view", "c01", "a5", surface="search")] * 3
    today += [ev("impression", "x1", "a1", surface="for_you"), ev("app_view", "x1", "a1", surface="for_you")]
    today += _impressions("m0", "control", 1) + _impressions("m0", "treatment", 1)
    return before, today


def test_parse_tag() -> None:
    assert parse_tag("rank_test:treatment") == ("rank_test", "treatment")
    assert parse_tag("control") == (None, "control")


def test_clear_winner_has_a_ci_excluding_zero_and_is_reported_everywhere(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    before, today = _clear_winner_events()
    write_events(config, D_1, before)
    write_events(config, D, today)
    write_kpis(config, D_1, {"date": D_1, "engagement": {"daily_active_users": 70}, "quality": {"ctr": 0.1}})
    write_kpis(config, D, {"date": D, "engagement": {"daily_active_users": 80}, "quality": {"ctr": 0.2}})

    result = build_report(config, D, start=D_1, experiments=[RANK_TEST])
    assert result["experiments"] == {
        "rank_test": {
            "users": {"control": 40, "treatment": 40},
            "srm_ok": True,
            "significant": ["treatment/ctr", "treatment/install_rate"],
        }
    }
    rows = {row["metric"]: row for row in read_results(config, D)}
    assert sorted(rows) == ["conversion", "ctr", "engagement_minutes", "install_rate", "revenue_per_user"]
    ctr = rows["ctr"]
    # control: 10 users at 0.25, 30 at 0 -> mean 0.0625, var 0.46875/39; treatment: 20 at 0.5, 20 at 0.25 ->
    # mean 0.375, var 0.625/39; se = sqrt((0.0120192 + 0.0160256) / 40) = 0.0264787; z = 1.959964
    assert (ctr["control_mean"], ctr["treatment_mean"]) == pytest.approx((0.0625, 0.375))
    assert ctr["absolute_lift"] == pytest.approx(0.3125)
    assert (ctr["absolute_ci_low"], ctr["absolute_ci_high"]) == pytest.approx((0.260603, 0.364397), abs=1e-6)
    assert ctr["relative_lift"] == pytest.approx(5.0)
    assert ctr["significant"] is True and ctr["p_value"] < 1e-12
    assert (ctr["n_control"], ctr["n_treatment"], ctr["srm_ok"], ctr["srm_p_value"]) == (40, 40, True, 1.0)
    # Control never installed: the relative lift is undefined and stored as null.
    assert rows["install_rate"]["relative_lift"] is None
    # One purchaser per arm (t01's purchase came before exposure): 2.0 / 40 and 3.0 / 40 USD per user.
    assert (rows["conversion"]["control_mean"], rows["conversion"]["treatment_mean"]) == (0.025, 0.025)
    assert rows["revenue_per_user"]["treatment_mean"] == pytest.approx(0.075)
    # Everyone used apps for exactly a minute: no difference, p = 1.
    assert (rows["engagement_minutes"]["absolute_lift"], rows["engagement_minutes"]["p_value"]) == (0.0, 1.0)
    assert rows["ctr"]["required_n_per_arm"] > 0 and rows["ctr"]["mde_absolute"] > 0

    page = Path(result["report_path"]).read_text()
    assert result["report_path"].endswith("reports/experiments/date=2026-10-10/report.html")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # lift per metric, daily CTR per variant, KPI trends
    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    assert "Users with two variants (excluded): 1" in page

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=config.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("personalization-ab")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [result["mlflow_run_id"]]
    assert runs[0].data.metrics["rank_test.treatment.ctr.absolute_lift"] == pytest.approx(0.3125)
    assert runs[0].data.tags["report_date"] == D
    # A rerun of the same date replaces both the table rows and the MLflow run.
    again = build_report(config, D, start=D_1, experiments=[RANK_TEST])
    assert len(read_results(config, D)) == 5
    assert [run.info.run_id for run in client.search_runs([experiment.experiment_id])] == [
        again["mlflow_run_id"]
    ]


def test_aa_split_shows_no_significance(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    today: list[dict] = []
    for i in range(30):
        for arm in ("a", "b"):  # both arms behave identically
            user = f"{arm}{i:02d}"
            today += _impressions(user, f"aa_test:{arm}")
            today += [ev("app_view", user, "a0", surface="for_you")] * (i % 3)
            today += [ev("app_open", user, "a0", f"s-{user}", duration=30.0 * (i % 5))]
    write_events(config, D, today)
    # No configured experiments: inferred from the "aa_test:" tags, "a" (alphabetically first) as control.
    result = build_report(config, D, mlflow=False)
    assert result["start"] == "2026-09-27"  # default 14-day window
    assert result["experiments"] == {
        "aa_test": {"users": {"a": 30, "b": 30}, "srm_ok": True, "significant": []}
    }
    for row in read_results(config, D):
        assert (row["experiment"], row["control_variant"], row["variant"]) == ("aa_test", "a", "b")
        assert row["absolute_lift"] == 0.0 and row["p_value"] == 1.0 and row["significant"] is False
        assert row["absolute_ci_low"] == pytest.approx(-row["absolute_ci_high"])


def test_srm_detects_a_broken_allocation(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    today: list[dict] = []
    for i in range(80):  # 60 control, 20 treatment against a 50/50 allocation
        user, arm = f"u{i:02d}", "control" if i < 60 else "treatment"
        today += _impressions(user, arm) + [ev("app_view", user, "a0", surface="for_you")] * (i % 2)
    write_events(config, D, today)
    result = build_report(config, D, experiments=[RANK_TEST], mlflow=False)
    assert result["experiments"]["rank_test"]["srm_ok"] is False
    # chi2 = (20^2 + 20^2) / 40 = 20 with 1 degree of freedom: p = 7.744e-6
    (row, *_) = read_results(config, D)
    assert row["srm_p_value"] == pytest.approx(7.744216e-6, rel=1e-5)
    assert row["srm_ok"] is False
    assert "SAMPLE RATIO MISMATCH" in Path(result["report_path"]).read_text()


def test_unknown_tags_and_empty_windows_are_reported(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_events(config, D, _impressions("u1", "other_exp:x") + _impressions("u2", "nobody"))
    result = build_report(config, D, experiments=[RANK_TEST], mlflow=False)
    assert result["unmatched_tags"] == ["nobody", "other_exp:x"]
    assert result["experiments"] == {} and result["rows"] == 0
    page = Path(result["report_path"]).read_text()
    assert "No impressions with a variant in the window" in page and "nobody, other_exp:x" in page


def test_dag_tasks_run_for_the_date_of_the_triggering_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DAG's three task bodies, called as Airflow would after an asset-triggered run."""
    import importlib.util
    from types import SimpleNamespace

    config = make_config(tmp_path)
    before, today = _clear_winner_events()
    write_events(config, D_1, before)
    write_events(config, D, today)
    for name, value in (
        ("PE_ROOT", tmp_path),
        ("PE_PATHS__VAR_DIR", tmp_path / "var"),
        ("PE_PATHS__LAKE_ROOT", tmp_path / "lake"),
        ("PE_SERVING__URL", config.serving.url),
        ("PE_MLFLOW__TRACKING_URI", config.mlflow.tracking_uri),
        ("PE_MLFLOW__ARTIFACT_ROOT", config.mlflow.artifact_root),
    ):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("PE_CONFIG", "")
    spec = importlib.util.spec_from_file_location(
        "experiment_report_dag", Path(__file__).parent.parent / "dags" / "experiment_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    dag = module.personalization_experiment_report()
    # The publishing run was a manual one with the date param: the event's source run carries it.
    source = SimpleNamespace(conf={"date": D}, logical_date=None)
    context = {
        "params": {"date": ""},
        "ti": SimpleNamespace(dag_id=dag.dag_id, task_id="monitor", run_id="asset__1"),
        "triggering_asset_events": {"recs": [SimpleNamespace(extra={}, source_dag_run=source)]},
    }
    kpis = dag.get_task("compute_kpis").python_callable(**context)
    assert kpis == {"date": D, "table": "kpis"}
    report = dag.get_task("experiment_report").python_callable(kpis, **context)
    assert report["report_path"].endswith("date=2026-10-10/report.html") and report["mlflow_run_id"]
    monitored = dag.get_task("monitor").python_callable(report, **context)
    # No user_features / recommendations and no trailing event counts: drift is skipped, volume not judged.
    assert monitored["status"] == "ok" and monitored["date"] == D


def test_report_page_escapes_every_value_it_shows() -> None:
    """The Jinja2 template autoescapes: a tag or date carrying markup is shown, never executed."""
    import pandas as pd

    from personalization.experiment_report import render_html

    hostile = "<script>alert(1)</script>"
    page = render_html(f"{D}<b>", D_1, D, [], pd.DataFrame(), [hostile, "a&b"])
    assert "<script>" not in page and f"{D}<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;, a&amp;b" in page
    assert "<title>Experiment report 2026-10-10&lt;b&gt;</title>" in page
    assert "No impressions with a variant in the window: nothing to compare." in page
    assert "No rows in the kpis table yet." in page
