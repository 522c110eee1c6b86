"""``train(config, date)``: the single training entry point (DAG task, CLI and tests).

One call = one MLflow parent run (tags: date, dag_run_id, git commit, data version,
training mode) with one nested run per model in ``config.training.models``. Each
model trains on the train split, picks its hyperparameters (EASE lambda, the epoch
of the neural models) on the validation split only, and is evaluated on validation
with :func:`models.evaluation.evaluate`. The best model by validation NDCG@k is the
night's challenger; :func:`models.registry.evaluate_and_promote` decides its fate.

Training modes (``config.training.mode``): ``full`` retrains from scratch;
``incremental`` warm-starts cf_bpr and two_tower from the champion (or, for a model
type that is not the champion, from that model's newest logged run) and fine-tunes
on the newest training days with the rate base / sqrt(1 + iteration); ``auto`` is
full on ``training.full_retrain_weekday`` and incremental otherwise. Models without
gradient training (popularity, ease, content) always refit in closed form; ``blend``
combines models fitted earlier in the same run (see :mod:`models.ensemble`).
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from models.base import Recommender
from models.common import FitResult, ModelOptions, model_options
from models.data import InteractionData, load_training_data
from models.evaluation import (
    evaluate,
    evaluation_users,
    mlflow_metric_name,
    scalar_metrics,
    score_in_data_columns,
)
from models.registry import champion_version
from models.tracking import (
    configure_mlflow,
    git_commit,
    load_recommender,
    log_history,
    log_loss_curves,
    log_metric_comparison,
    log_params,
    log_recommender,
    log_score_histogram,
    log_training_inputs,
    table_reference,
)
from personalization.config import Config
from personalization.lake import Lake, check_date

log = logging.getLogger(__name__)

#: Model name -> "module:function" of its fitter ``(data, config, options, ...) -> FitResult``.
FITTERS = {
    "popularity": "models.baselines:fit_popularity",
    "ease": "models.baselines:fit_ease",
    "regional_popularity": "models.baselines:fit_regional_popularity",
    "cf_bpr": "models.cf:fit_cf_bpr",
    "two_tower": "models.two_tower:fit_two_tower",
    "content": "models.content:fit_content",
    "blend": "models.ensemble:fit_blend",
}
#: The gold tables :func:`models.data.load_training_data` reads (interactions required, the rest optional).
TRAINING_TABLES = ("interactions", "app_features", "user_features", "segments")
#: Models trained by gradient descent, which can warm-start and fine-tune incrementally.
INCREMENTAL_MODELS = ("cf_bpr", "two_tower")
MODES = ("full", "incremental", "auto")


def fitter(model_name: str) -> Callable[..., FitResult]:
    """The fit function of a model name (raises ValueError for unknown names)."""
    if model_name not in FITTERS:
        raise ValueError(f"unknown model {model_name!r}; known: {sorted(FITTERS)}")
    module_name, function_name = FITTERS[model_name].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def resolve_mode(config: Config, date: str | None) -> str:
    """``full`` or ``incremental`` for this run (``auto``: full on the configured ISO weekday)."""
    mode = config.training.mode
    if mode not in MODES:
        raise ValueError(f"training.mode must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    day = dt.date.fromisoformat(date) if date else dt.datetime.now(dt.timezone.utc).date()
    return "full" if day.isoweekday() == config.training.full_retrain_weekday else "incremental"


def _warm_start_source(config: Config, model_name: str, experiment_id: str) -> tuple[Recommender, str] | None:
    """The model to fine-tune: the champion when it is this model type, else this type's newest logged run."""
    champion = champion_version(config)
    if champion is not None and champion.tags.get("model_name") == model_name:
        uri = f"models:/{config.mlflow.registered_model}/{champion.version}"
        return load_recommender(uri), f"champion v{champion.version}"
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.model_name = '{model_name}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
        output_format="list",
    )
    for run in runs:
        uri = run.data.tags.get("model_uri")
        if uri:
            return load_recommender(uri), f"run {run.info.run_id}"
    return None


def training_inputs(config: Config, date: str) -> list[Any]:
    """MLflow dataset references (source, digest, schema, rows; no data) of the gold tables of ``date``.

    A table without a partition of that date (training ran without it) is left out. A table that
    cannot be described is left out with a warning: the lineage record must not stop the night's training.
    """
    lake = Lake(config)
    references = []
    for table in TRAINING_TABLES:
        path = lake.partition(lake.gold(table), date)
        if "://" not in path and not os.path.exists(path):
            continue
        try:
            references.append(table_reference(path, f"gold/{table}"))
        except Exception as error:  # noqa: BLE001 - see the docstring
            log.warning("could not describe %s for MLflow (%s); not logged as a training input", path, error)
    return references


def _score_sample(recommender: Recommender, data: InteractionData, n_users: int = 256) -> np.ndarray:
    """Scores of up to ``n_users`` validation users (for the score histogram)."""
    rows, _ = evaluation_users(data)
    rows = rows[:n_users]
    if len(rows) == 0:
        return np.zeros(0, dtype=np.float32)
    return score_in_data_columns(recommender, data.user_ids[rows].tolist(), data.train[rows], data.app_ids)


def _fit_and_log(
    model_name: str,
    data: InteractionData,
    config: Config,
    options: ModelOptions,
    mode: str,
    warm: tuple[Recommender, str] | None,
    workdir: str,
    run_name: str,
    tags: dict[str, str],
    fitted: dict[str, Recommender],
    inputs: list[Any],
) -> tuple[str, str, dict[str, Any], FitResult]:
    """Fit one model in a nested run and log everything. Returns (run_id, model_uri, metrics, fit)."""
    k = config.training.k
    with mlflow.start_run(run_name=run_name, nested=True) as run:
        mlflow.set_tags({**tags, "model_name": model_name, "training_mode": mode})
        log_training_inputs(inputs)
        started = time.perf_counter()
        fit_kwargs: dict[str, Any] = {}
        if model_name in INCREMENTAL_MODELS:
            fit_kwargs = {"warm_start": warm[0] if (warm and mode == "incremental") else None, "workdir": workdir}
        elif model_name == "blend":
            fit_kwargs = {"components": fitted}
        fit = fitter(model_name)(data, config, options, **fit_kwargs)
        fit_seconds = time.perf_counter() - started
        if warm and fit.mode == "incremental":
            fit.warm_start_from = warm[1]
            mlflow.set_tag("warm_start_from", warm[1])
        result = evaluate(fit.recommender, data, k, block_size=options.eval_block_size)
        metrics = scalar_metrics(result)
        log_params({**fit.params, "mode": fit.mode, "seed": config.training.seed, "k": k})
        if not fit.history_logged:  # grid searches; Lightning fits log their epochs themselves
            log_history(fit.history)
        mlflow.log_metrics({mlflow_metric_name(name): value for name, value in metrics.items()})
        mlflow.log_metric("fit_seconds", fit_seconds)
        mlflow.log_metric("n_eval_users", result["n_users"])
        model_uri = log_recommender(fit.recommender, k)
        mlflow.set_tag("model_uri", model_uri)
        log_loss_curves(fit.history, model_name)
        log_score_histogram(_score_sample(fit.recommender, data), model_name)
        mlflow.log_dict(result, "evaluation/metrics.json")
        table = pd.DataFrame([{"model": model_name, **metrics, "n_users": result["n_users"]}])
        mlflow.log_text(table.to_csv(index=False), "evaluation/metrics.csv")
        if result.get("per_segment"):
            mlflow.log_text(pd.DataFrame(result["per_segment"]).to_csv(index=False), "evaluation/per_segment.csv")
        if fit.checkpoint_path and os.path.exists(fit.checkpoint_path):
            mlflow.log_artifact(fit.checkpoint_path, artifact_path="checkpoint")
        metrics["fit_seconds"] = fit_seconds
        return run.info.run_id, model_uri, metrics, fit


class NoTrainingPairs(ValueError):
    """The training split is empty: no model can be fitted (retrying cannot help)."""


def require_training_pairs(data: InteractionData, date: str, validation_days: int) -> None:
    """Raise :class:`NoTrainingPairs` when ``data`` has no positive training pair, naming what is missing."""
    sizes = data.summary()
    if sizes["n_train"] > 0:
        return
    raise NoTrainingPairs(
        f"no training pairs for {date}: gold/interactions of {date} holds {sizes['n_validation']} validation "
        f"pairs and 0 training pairs ({sizes['n_users']} users, {sizes['n_apps']} apps). Training pairs come "
        f"from validated events before the last {validation_days} validation day(s), so silver/events needs "
        f"the earlier landing dates: validate them first (the nightly DAG's validate_raw_events and `pe run` "
        f"ingest every earlier landing date without a validation report), then rebuild the features."
    )


def train(
    config: Config,
    date: str | None = None,
    data: InteractionData | None = None,
    dag_run_id: str | None = None,
) -> dict[str, Any]:
    """Train, evaluate and log every configured model; returns a JSON-able summary.

    Args:
        config: the engine configuration (``training``, ``mlflow`` sections).
        date: logical date ``YYYY-MM-DD``; loads the gold tables of that date when
            ``data`` is None (default: the newest interactions partition).
        data: pre-built training data (tests, benchmarks); skips the lake (and logs no dataset input).
        dag_run_id: Airflow run id for the parent run's tags (default: env
            ``AIRFLOW_CTX_DAG_RUN_ID``).

    Returns:
        ``{"parent_run_id", "runs": {model: run_id}, "metrics": {model: {name: value}},
        "best_model", "date", "model_uris": {model: uri}, "data_version", "mode",
        "experiment_id"}``; metric names are ``"ndcg@10"`` style.
    """
    options = model_options(config)
    from_lake = data is None
    if data is None:
        data = load_training_data(config, date, recent_days=options.incremental_days)
    date = check_date(date or data.date or dt.datetime.now(dt.timezone.utc).date().isoformat())
    require_training_pairs(data, date, config.features.validation_days)
    models = list(config.training.models)
    if not models:
        raise ValueError("training.models is empty: nothing to train")
    for model_name in models:
        fitter(model_name)  # fail before any run starts on an unknown name
    mode = resolve_mode(config, date)
    experiment_id = configure_mlflow(config)
    data_version = data.version()
    dag_run_id = dag_run_id or os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "")
    parent_tags = {
        "date": date,
        "dag_run_id": dag_run_id,
        "data_version": data_version,
        "training_mode": mode,
        "run_kind": "nightly_training",
    }
    commit = git_commit(config.root)
    if commit:
        parent_tags["git_commit"] = commit

    runs: dict[str, str] = {}
    uris: dict[str, str] = {}
    metrics: dict[str, dict[str, float]] = {}
    modes: dict[str, str] = {}
    compared: dict[str, dict[str, dict[str, float]]] = {}
    fitted: dict[str, Recommender] = {}
    k = config.training.k
    with (
        tempfile.TemporaryDirectory(prefix="train-") as workdir,
        mlflow.start_run(run_name=f"nightly-{date}", tags=parent_tags) as parent,
    ):
        log_params({f"data.{name}": value for name, value in data.summary().items()})
        log_params(
            {
                "training.models": ",".join(models),
                "training.seed": config.training.seed,
                "training.embedding_dim": config.training.embedding_dim,
                "training.max_epochs": config.training.max_epochs,
                "training.batch_size": config.training.batch_size,
                "training.learning_rate": config.training.learning_rate,
                "training.k": k,
                "training.mode": config.training.mode,
            }
        )
        # The gold tables as dataset inputs of the parent and of every model's run (which the registry links to).
        inputs = training_inputs(config, date) if from_lake else []
        log_training_inputs(inputs)
        child_tags = {"date": date, "data_version": data_version, "dag_run_id": dag_run_id}
        for model_name in models:
            warm = None
            if mode == "incremental" and model_name in INCREMENTAL_MODELS:
                warm = _warm_start_source(config, model_name, experiment_id)
                if warm is None:
                    log.warning("%s: no earlier model to warm-start from; training from scratch", model_name)
            model_dir = str(Path(workdir) / model_name)
            os.makedirs(model_dir, exist_ok=True)
            run_id, uri, model_metrics, fit = _fit_and_log(
                model_name, data, config, options, mode, warm, model_dir, model_name, child_tags, fitted, inputs
            )
            fitted[model_name] = fit.recommender
            runs[model_name], uris[model_name], metrics[model_name], modes[model_name] = (
                run_id,
                uri,
                model_metrics,
                fit.mode,
            )
            if fit.mode == "incremental" and options.compare_modes:
                # Side by side: the same model retrained from scratch on the same data.
                full_dir = str(Path(workdir) / f"{model_name}-full")
                os.makedirs(full_dir, exist_ok=True)
                _, _, full_metrics, _ = _fit_and_log(
                    model_name,
                    data,
                    config,
                    options,
                    "full",
                    None,
                    full_dir,
                    f"{model_name}[full]",
                    {**child_tags, "comparison_of": run_id},
                    fitted,
                    inputs,
                )
                compared[model_name] = {"incremental": model_metrics, "full": full_metrics}
                for variant, values in compared[model_name].items():
                    mlflow.log_metric(f"{model_name}.{variant}.{mlflow_metric_name(f'ndcg@{k}')}", values[f"ndcg@{k}"])

        best_model = max(models, key=lambda name: (metrics[name][f"ndcg@{k}"], -models.index(name)))
        mlflow.set_tag("best_model", best_model)
        for model_name, values in metrics.items():
            mlflow.log_metric(f"{model_name}.{mlflow_metric_name(f'ndcg@{k}')}", values[f"ndcg@{k}"])
        comparison_names = [f"ndcg@{k}", f"precision@{k}", f"recall@{k}", f"map@{k}", "coverage", "diversity"]
        log_metric_comparison(metrics, [name for name in comparison_names if name in metrics[best_model]])
        table = pd.DataFrame([{"model": name, **values} for name, values in metrics.items()])
        mlflow.log_text(table.to_csv(index=False), "evaluation/model_comparison.csv")
        summary = {
            "parent_run_id": parent.info.run_id,
            "experiment_id": experiment_id,
            "runs": runs,
            "model_uris": uris,
            "metrics": metrics,
            "best_model": best_model,
            "date": date,
            "data_version": data_version,
            "mode": modes,
        }
        if compared:
            summary["mode_comparison"] = compared
        mlflow.log_dict(summary, "training_summary.json")
    # Round-trip through JSON so callers (XCom-free records) get plain types only.
    return json.loads(json.dumps(summary))
