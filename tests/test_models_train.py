"""train() with MLflow tracking, the pyfunc round trip and the champion/challenger registry.

One SQLite MLflow store serves the whole module (creating its schema takes seconds);
tests that need their own registry history use their own registered-model name.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from models.common import ModelOptions
from models.data import from_frames, toy_frames
from models.registry import evaluate_and_promote, load_champion, promotion_decision, rollback_champion
from models.tracking import configure_mlflow, load_recommender, log_recommender, recommend_from_history
from models.train import resolve_mode, train
from personalization.config import Config, load_config

FAST_TRAINING = {"embedding_dim": 8, "batch_size": 64, "max_epochs": 2, "ease_lambda": 5.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def toy():
    return from_frames(**toy_frames(), date="2026-10-04")


def _config(store: Path, registered_model: str, **training) -> Config:
    config = load_config(
        environ={},
        overrides={
            "paths": {"root": str(store)},
            "mlflow": {
                "tracking_uri": f"sqlite:///{store / 'mlflow.db'}",
                "artifact_root": str(store / "artifacts"),
                "registered_model": registered_model,
            },
            "training": {**FAST_TRAINING, **training},
        },
    )
    # Model-specific knobs are the ``models`` section (personalization.config.ModelOptions).
    config.models.tt_hidden_dim = 16
    config.models.tt_sampled_negatives = 8
    return config


@pytest.fixture(scope="module")
def first_run(store, toy):
    config = _config(store, "rec-main", models=["popularity", "ease", "content", "cf_bpr", "two_tower", "blend"])
    return config, train(config, "2026-10-04", data=toy, dag_run_id="manual__1")


def test_train_returns_summary_and_logs_nested_runs(first_run) -> None:
    config, result = first_run
    models = ["popularity", "ease", "content", "cf_bpr", "two_tower", "blend"]
    assert set(result) >= {"parent_run_id", "runs", "metrics", "best_model", "date", "model_uris", "data_version"}
    assert json.loads(json.dumps(result)) == result
    assert list(result["runs"]) == models and result["date"] == "2026-10-04"
    best = max(models, key=lambda name: result["metrics"][name]["ndcg@10"])
    assert result["best_model"] == best
    assert result["mode"] == {name: "full" for name in models}

    client = MlflowClient(config.mlflow_tracking_uri)
    parent = client.get_run(result["parent_run_id"])
    assert parent.data.tags["date"] == "2026-10-04"
    assert parent.data.tags["dag_run_id"] == "manual__1"
    assert parent.data.tags["data_version"] == result["data_version"]
    assert parent.data.tags["best_model"] == best
    assert parent.data.params["data.n_users"] == "40"
    parent_artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"plots", "evaluation", "training_summary.json"} <= parent_artifacts

    cf_run = client.get_run(result["runs"]["cf_bpr"])
    assert cf_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert cf_run.data.params["embedding_dim"] == "8"
    assert cf_run.data.metrics["ndcg_at_10"] == pytest.approx(result["metrics"]["cf_bpr"]["ndcg@10"])
    per_epoch = client.get_metric_history(cf_run.info.run_id, "val/ndcg_at_10")
    assert [point.step for point in per_epoch] == [0, 1]
    assert [point.step for point in client.get_metric_history(cf_run.info.run_id, "train/loss")] == [0, 1]
    artifacts = {item.path for item in client.list_artifacts(cf_run.info.run_id)}
    assert {"plots", "evaluation", "checkpoint"} <= artifacts
    plots = {item.path for item in client.list_artifacts(cf_run.info.run_id, "plots")}
    assert plots == {"plots/learning_curves.png", "plots/score_histogram.png"}
    segments = client.list_artifacts(cf_run.info.run_id, "evaluation")
    assert {item.path for item in segments} == {
        "evaluation/metrics.json",
        "evaluation/metrics.csv",
        "evaluation/per_segment.csv",
    }
    ease_run = client.get_run(result["runs"]["ease"])
    assert ease_run.data.params["ease_lambda"] == "5.0"
    blend_run = client.get_run(result["runs"]["blend"])
    assert blend_run.data.params["components"] == "ease,two_tower"
    weights = float(blend_run.data.params["weight.ease"]) + float(blend_run.data.params["weight.two_tower"])
    assert weights == pytest.approx(1.0)


def test_two_runs_give_identical_metrics(first_run, store, toy) -> None:
    _, result = first_run
    config = _config(store, "rec-determinism", models=["cf_bpr", "two_tower"])
    again = train(config, "2026-10-04", data=toy)
    for model in ("cf_bpr", "two_tower"):
        for name, value in result["metrics"][model].items():
            if name != "fit_seconds":
                assert again["metrics"][model][name] == pytest.approx(value, abs=1e-6), (model, name)


def test_logged_pyfunc_reloads_with_identical_scores(store, toy, tmp_path) -> None:
    from models.cf import fit_cf_bpr

    config = _config(store, "rec-pyfunc")
    fit = fit_cf_bpr(toy, config, ModelOptions(), workdir=str(tmp_path))
    configure_mlflow(config)
    with mlflow.start_run():
        uri = log_recommender(fit.recommender, k=3)
    reloaded = load_recommender(uri)
    users, history = toy.user_ids[:4].tolist(), toy.train[:4]
    np.testing.assert_array_equal(reloaded.score(users, history), fit.recommender.score(users, history))
    rows = toy.train[:2].tocoo()
    frame = __import__("pandas").DataFrame(
        {"user_id": toy.user_ids[rows.row], "app_id": toy.app_ids[rows.col], "weight": rows.data}
    )
    predicted = mlflow.pyfunc.load_model(uri).predict(frame, params={"k": 3})
    assert predicted.equals(recommend_from_history(fit.recommender, frame, 3))
    assert predicted.groupby("user_id")["rank"].apply(list).tolist() == [[1, 2, 3], [1, 2, 3]]
    seen = set(zip(frame["user_id"], frame["app_id"], strict=True))
    assert not seen & set(zip(predicted["user_id"], predicted["app_id"], strict=True))


def test_champion_challenger_promotion_and_rollback(store, toy) -> None:
    weak = _config(store, "rec-gate", models=["popularity"])
    with pytest.raises(LookupError, match="no 'champion' alias"):
        load_champion(weak)
    first = train(weak, "2026-10-04", data=toy)
    decision = evaluate_and_promote(weak, first, data=toy)
    assert decision["promoted"] is True and decision["challenger_version"] == "1"
    assert decision["reasons"] == ["no current champion: the first challenger is promoted"]
    model, version = load_champion(weak)
    assert (model.name, version) == ("popularity", "1")

    strong = _config(store, "rec-gate", models=["ease"])
    better = train(strong, "2026-10-04", data=toy)
    assert better["metrics"]["ease"]["ndcg@10"] > first["metrics"]["popularity"]["ndcg@10"]
    decision = evaluate_and_promote(strong, better, data=toy)
    assert decision["promoted"] is True and decision["champion_version"] == "2"
    assert decision["champion_metrics"]["ndcg@10"] == pytest.approx(first["metrics"]["popularity"]["ndcg@10"])
    assert load_champion(strong)[1] == "2"

    worse = train(weak, "2026-10-04", data=toy)
    decision = evaluate_and_promote(weak, worse, data=toy)
    assert decision["promoted"] is False
    assert decision["challenger_version"] == "3" and decision["champion_version"] == "2"
    assert decision["reasons"][0].startswith("ndcg@10 ")
    assert load_champion(weak)[1] == "2"  # a rejected challenger leaves the alias alone
    client = MlflowClient(weak.mlflow_tracking_uri)
    assert client.get_model_version("rec-gate", "3").tags["promotion"] == "rejected"
    parent = client.get_run(worse["parent_run_id"])
    assert parent.data.tags["promotion.promoted"] == "false"
    assert {item.path for item in client.list_artifacts(worse["parent_run_id"], "promotion")} == {
        "promotion/decision.json"
    }

    assert rollback_champion(weak, "1") == {"previous": "2", "champion": "1"}
    assert load_champion(weak)[1] == "1"


def test_backfill_uses_the_champion_as_of_its_date_and_leaves_the_alias(store, toy) -> None:
    """A run for an earlier date than the live champion's data never sees that later model."""
    import dataclasses

    weak = _config(store, "rec-asof", models=["popularity"])
    strong = _config(store, "rec-asof", models=["ease"])
    early = train(weak, "2026-10-01", data=dataclasses.replace(toy, date="2026-10-01"))
    assert evaluate_and_promote(weak, early, data=toy)["promoted"] is True  # v1, data of 10-01
    late = train(strong, "2026-10-04", data=toy)
    assert evaluate_and_promote(strong, late, data=toy)["champion_version"] == "2"  # v2, data of 10-04

    # Rerun of 10-01 (a backfill): judged against v1, not the live v2, and scored by v1.
    assert load_champion(weak, as_of="2026-10-01")[1] == "1"
    assert load_champion(weak, as_of="2026-10-04")[1] == "2" and load_champion(weak)[1] == "2"
    rerun = train(weak, "2026-10-01", data=dataclasses.replace(toy, date="2026-10-01"))
    decision = evaluate_and_promote(weak, rerun, data=toy)
    assert (decision["backfill"], decision["promoted"], decision["champion_version"]) == (True, False, "1")
    assert decision["live_champion_version"] == "2" and "the live alias does not move" in decision["reasons"][-1]
    assert load_champion(weak)[1] == "2"

    # A better model for 10-01 wins that date only: tagged promoted_as_of, alias unchanged.
    better_early = train(strong, "2026-10-01", data=dataclasses.replace(toy, date="2026-10-01"))
    decision = evaluate_and_promote(strong, better_early, data=toy)
    assert (decision["promoted"], decision["champion_version"], decision["live_champion_version"]) == (True, "4", "2")
    assert MlflowClient(weak.mlflow_tracking_uri).get_model_version("rec-asof", "4").tags["promotion"] == (
        "promoted_as_of"
    )
    assert load_champion(weak, as_of="2026-10-02")[1] == "4" and load_champion(weak)[1] == "2"
    # No champion existed as of an earlier date still
    with pytest.raises(LookupError, match="usable for 2026-09-30"):
        load_champion(weak, as_of="2026-09-30")


def test_promotion_gate_guardrails() -> None:
    config = load_config(
        environ={}, overrides={"promotion": {"ndcg_margin": 0.01, "max_coverage_drop": 0.05, "max_diversity_drop": 0.1}}
    )
    champion = {"ndcg@10": 0.30, "coverage": 0.50, "diversity": 0.60}
    promote, reasons = promotion_decision({"ndcg@10": 0.32, "coverage": 0.46, "diversity": 0.55}, champion, config)
    assert promote is True and len(reasons) == 3
    promote, reasons = promotion_decision({"ndcg@10": 0.305, "coverage": 0.5, "diversity": 0.6}, champion, config)
    assert promote is False and reasons[0] == "ndcg@10 0.3050 <= champion 0.3000 + margin 0.01"
    promote, reasons = promotion_decision({"ndcg@10": 0.40, "coverage": 0.40, "diversity": 0.6}, champion, config)
    assert promote is False and reasons[1] == "coverage drops 0.1000 > allowed 0.05 (0.5000 -> 0.4000)"
    promote, reasons = promotion_decision({"ndcg@10": 0.40, "coverage": 0.5}, {"ndcg@10": 0.3, "coverage": 0.5}, config)
    assert promote is True and reasons[2] == "diversity: not measured on both models, guardrail skipped"


def test_incremental_mode_warm_starts_and_compares(first_run, store, toy) -> None:
    config, _ = first_run  # rec-main has cf_bpr and two_tower runs logged, no champion
    config.training.mode = "incremental"
    config.training.models = ["cf_bpr"]
    config.models.compare_modes = True
    try:
        result = train(config, "2026-10-05", data=toy)
    finally:
        config.training.mode = "full"
        config.models.compare_modes = False
    assert result["mode"] == {"cf_bpr": "incremental"}
    assert set(result["mode_comparison"]["cf_bpr"]) == {"incremental", "full"}
    client = MlflowClient(config.mlflow_tracking_uri)
    run = client.get_run(result["runs"]["cf_bpr"])
    assert run.data.tags["training_mode"] == "incremental"
    assert run.data.tags["warm_start_from"].startswith("run ")
    assert run.data.params["n_train_pairs"] == str(toy.recent.nnz)
    parent = client.get_run(result["parent_run_id"])
    assert {"cf_bpr.incremental.ndcg_at_10", "cf_bpr.full.ndcg_at_10"} <= set(parent.data.metrics)


def test_auto_mode_follows_the_weekday(store) -> None:
    config = _config(store, "rec-auto", mode="auto", full_retrain_weekday=7)
    assert resolve_mode(config, "2026-10-04") == "full"  # a Sunday
    assert resolve_mode(config, "2026-10-05") == "incremental"
    config.training.mode = "sometimes"
    with pytest.raises(ValueError, match="training.mode"):
        resolve_mode(config, "2026-10-05")
