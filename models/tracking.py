"""MLflow plumbing: experiment setup, the pyfunc wrapper of a Recommender, and plots.

A logged model is an MLflow pyfunc whose only artifact is the pickled
:class:`models.base.Recommender`. Its ``predict`` takes a long table of interaction
history rows and returns each user's top-k unseen apps, so the model can be served
or inspected without this project's batch scorer.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import scipy.sparse as sp

from jobs import columns as C
from models.base import Recommender
from models.evaluation import mlflow_metric_name, top_k_indices
from personalization.config import Config

log = logging.getLogger(__name__)

RECOMMENDER_ARTIFACT = "recommender"
MODEL_NAME_IN_RUN = "model"


def configure_mlflow(config: Config) -> str:
    """Point MLflow at ``config``'s tracking store; create the experiment when missing. Returns its id."""
    mlflow.set_tracking_uri(config.mlflow_tracking_uri)
    experiment = mlflow.get_experiment_by_name(config.mlflow.experiment)
    if experiment is None:
        experiment_id = mlflow.create_experiment(
            config.mlflow.experiment, artifact_location=config.mlflow_artifact_root
        )
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit(root: str | os.PathLike[str]) -> str | None:
    """HEAD commit of the checkout at ``root``, or None outside git / without commits."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


# ------------------------------------------------------------------ pyfunc
class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc around a pickled Recommender.

    Input: a DataFrame of history rows ``user_id, app_id, weight`` (one row per past
    interaction; a user with no history is one row with an empty ``app_id``).
    Params: ``k`` (default 10). Output: ``user_id, rank, app_id, score`` with each user's
    top-k apps, already-seen apps excluded, rank 1 = best.
    """

    def load_context(self, context: Any) -> None:
        with open(context.artifacts[RECOMMENDER_ARTIFACT], "rb") as handle:
            self.recommender: Recommender = pickle.load(handle)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k", 10))
        return recommend_from_history(self.recommender, model_input, k)


def recommend_from_history(recommender: Recommender, history_rows: pd.DataFrame, k: int) -> pd.DataFrame:
    """Top-k unseen apps of every user in ``history_rows`` (columns ``user_id, app_id[, weight]``)."""
    frame = history_rows.copy()
    frame[C.USER_ID] = frame[C.USER_ID].astype(str)
    users = pd.unique(frame[C.USER_ID])
    user_rows = pd.Index(users).get_indexer(frame[C.USER_ID])
    app_ids = frame[C.APP_ID].map(lambda value: None if pd.isna(value) or value == "" else str(value))
    app_cols = pd.Index(recommender.app_ids).get_indexer(app_ids)
    weights = (
        frame["weight"].to_numpy(dtype=np.float32) if "weight" in frame.columns else np.ones(len(frame), np.float32)
    )
    known = app_cols >= 0
    history = sp.csr_matrix(
        (weights[known], (user_rows[known], app_cols[known])), shape=(len(users), len(recommender.app_ids))
    )
    history.sum_duplicates()
    scores = np.array(recommender.score(users.tolist(), history), dtype=np.float32, copy=True)
    seen_rows, seen_cols = history.nonzero()
    scores[seen_rows, seen_cols] = -np.inf
    out_rows = []
    for row, top in enumerate(top_k_indices(scores, k)):
        for rank, column in enumerate(top, start=1):
            out_rows.append((users[row], rank, recommender.app_ids[column], float(scores[row, column])))
    return pd.DataFrame(out_rows, columns=[C.USER_ID, "rank", C.APP_ID, "score"])


def _pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc (given explicitly: inferring them costs a subprocess)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("mlflow", "numpy", "scipy", "pandas", "torch", "pytorch-lightning", "cloudpickle"):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


def example_history(recommender: Recommender, n_rows: int = 3) -> pd.DataFrame:
    """A small input example: one user with the first apps of the catalogue."""
    apps = recommender.app_ids[: max(1, min(n_rows, len(recommender.app_ids)))]
    user = str(recommender.user_ids[0]) if len(recommender.user_ids) else "example-user"
    return pd.DataFrame({C.USER_ID: [user] * len(apps), C.APP_ID: [str(a) for a in apps], "weight": [1.0] * len(apps)})


def log_recommender(recommender: Recommender, k: int) -> str:
    """Log ``recommender`` as a pyfunc in the active run; returns its model URI."""
    from mlflow.models import infer_signature

    example = example_history(recommender)
    output = recommend_from_history(recommender, example, k)
    signature = infer_signature(example, output, params={"k": k})
    with tempfile.TemporaryDirectory(prefix="recommender-") as tmp:
        path = Path(tmp) / "recommender.pkl"
        with open(path, "wb") as handle:
            pickle.dump(recommender, handle, protocol=pickle.HIGHEST_PROTOCOL)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=RecommenderPyfunc(),
            artifacts={RECOMMENDER_ARTIFACT: str(path)},
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(),
        )
    return info.model_uri


def load_recommender(model_uri: str) -> Recommender:
    """The Recommender inside a logged or registered pyfunc model."""
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().recommender


# ------------------------------------------------------------------ logging helpers
def log_history(history: Sequence[Mapping[str, float]]) -> None:
    """Per-epoch metrics of a fit, ``step`` = epoch (or grid point)."""
    for row in history:
        step = int(row.get("epoch", 0))
        for name, value in row.items():
            if name == "epoch" or value is None or not np.isfinite(value):
                continue
            mlflow.log_metric(mlflow_metric_name(name), float(value), step=step)


def log_params(params: Mapping[str, Any], prefix: str = "") -> None:
    """Log parameters (values stringified by MLflow), skipping Nones."""
    mlflow.log_params({f"{prefix}{name}": value for name, value in params.items() if value is not None})


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_loss_curves(history: Sequence[Mapping[str, float]], model_name: str) -> None:
    """Loss and validation NDCG per epoch as ``plots/learning_curves.png`` (when the fit had epochs)."""
    series = sorted({name for row in history for name in row if name != "epoch"})
    if not history or not series:
        return
    plt = _figure()
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.2), squeeze=False)
    for axis, name in zip(axes[0], series, strict=True):
        points = [(row["epoch"], row[name]) for row in history if name in row]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        axis.set_title(f"{model_name}: {name}")
        axis.set_xlabel("epoch")
    fig.tight_layout()
    mlflow.log_figure(fig, "plots/learning_curves.png")
    plt.close(fig)


def log_score_histogram(scores: np.ndarray, model_name: str) -> None:
    """Histogram of a sample of finite scores as ``plots/score_histogram.png``."""
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return
    plt = _figure()
    fig, axis = plt.subplots(figsize=(5, 3.2))
    axis.hist(finite.ravel(), bins=50)
    axis.set_title(f"{model_name}: score distribution")
    axis.set_xlabel("score")
    axis.set_ylabel("count")
    fig.tight_layout()
    mlflow.log_figure(fig, "plots/score_histogram.png")
    plt.close(fig)


def log_metric_comparison(metrics: Mapping[str, Mapping[str, float]], names: Sequence[str]) -> None:
    """Grouped bar chart of ``names`` across models as ``plots/model_comparison.png``."""
    if not metrics:
        return
    plt = _figure()
    models = list(metrics)
    width = 0.8 / max(len(models), 1)
    fig, axis = plt.subplots(figsize=(max(6, 1.6 * len(names)), 3.5))
    positions = np.arange(len(names))
    for offset, model in enumerate(models):
        values = [float(metrics[model].get(name, 0.0)) for name in names]
        axis.bar(positions + offset * width, values, width, label=model)
    axis.set_xticks(positions + width * (len(models) - 1) / 2)
    axis.set_xticklabels(names)
    axis.legend(fontsize="small")
    axis.set_title("validation metrics by model")
    fig.tight_layout()
    mlflow.log_figure(fig, "plots/model_comparison.png")
    plt.close(fig)
