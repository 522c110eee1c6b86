"""MLflow plumbing: experiment setup, the pyfunc wrapper of a Recommender, dataset inputs and plots.

A logged model is an MLflow pyfunc whose only artifact is the pickled
:class:`models.base.Recommender`. Its ``predict`` takes a long table of interaction
history rows and returns each user's top-k unseen apps, so the model can be served
or inspected without this project's batch scorer. The model carries the project code
its pickle needs (``code/``: the modules of ``models``, ``jobs`` and ``personalization``
that the pickled classes import, see :func:`model_code_modules`) and pinned pip
requirements, so ``mlflow.pyfunc.load_model`` works outside this repository too.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import pickle
import pickletools
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import scipy.sparse as sp
from mlflow.data.meta_dataset import MetaDataset as MlflowMetaDataset

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


#: Distributions the model's code imports at module level (see :func:`model_code_modules`), plus
#: cloudpickle, which MLflow pickles the pyfunc wrapper with. Lazily imported ones (matplotlib for
#: plots, pyspark for Spark schemas, PyYAML for config files) are not needed to load and predict.
MODEL_REQUIREMENTS = ("mlflow", "cloudpickle", "numpy", "scipy", "pandas", "torch", "torchmetrics", "pytorch-lightning")


def _pip_requirements() -> list[str]:
    """The model's requirements pinned to the installed versions (the ``constraints.txt`` pins),
    given explicitly: inferring them costs a subprocess. Local version labels (``+cpu``) are dropped."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in MODEL_REQUIREMENTS:
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


#: This project's top-level packages: the part of them a model's pickle needs travels with the model.
PROJECT_PACKAGES = ("models", "jobs", "personalization")


def _project_source(module: str) -> Path | None:
    """The source file of a project module (``models.cf`` -> ``<root>/models/cf.py``), found without importing it."""
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = Path(__file__).resolve().parents[1].joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def pickled_modules(payload: bytes) -> set[str]:
    """Project modules a pickle refers to (its classes and functions), read from the opcodes."""
    found = set()
    for opcode, argument, _ in pickletools.genops(payload):
        if opcode.name == "GLOBAL":  # protocols 0-3: "module name"
            argument = str(argument).split(" ")[0]
        if isinstance(argument, str) and _project_source(argument) is not None:
            found.add(argument)  # protocols 4+: the module is a string pushed before STACK_GLOBAL
    return found


def model_code_modules(start: Iterable[str]) -> list[str]:
    """``start`` and every project module they import, at any level, with their parent packages (sorted).

    Read from the sources (``ast``), so imports inside functions count too: ``predict`` may run them.
    """
    seen: set[str] = set()
    pending = list(start)
    while pending:
        module = pending.pop()
        path = _project_source(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        pending += [".".join(parts[:end]) for end in range(1, len(parts))]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                pending += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                pending += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return sorted(seen)


def _stage_code(modules: Sequence[str], target: Path) -> list[str]:
    """Copy the modules' sources under ``target`` as packages; returns the top-level package folders."""
    root = Path(__file__).resolve().parents[1]
    for module in modules:
        source = _project_source(module)
        assert source is not None
        destination = target / source.relative_to(root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    return sorted(str(target / package) for package in {module.split(".")[0] for module in modules})


def log_recommender(recommender: Recommender, k: int) -> str:
    """Log ``recommender`` as a pyfunc in the active run; returns its model URI.

    The model holds the pickled recommender, the project code the pickle needs (``code_paths``:
    MLflow puts ``code/`` first on ``sys.path`` when it loads the model), pinned requirements,
    a signature and an input example.
    """
    from mlflow.models import infer_signature

    example = example_history(recommender)
    output = recommend_from_history(recommender, example, k)
    signature = infer_signature(example, output, params={"k": k})
    payload = pickle.dumps(recommender, protocol=pickle.HIGHEST_PROTOCOL)
    modules = model_code_modules({*pickled_modules(payload), RecommenderPyfunc.__module__})
    with tempfile.TemporaryDirectory(prefix="recommender-") as tmp:
        path = Path(tmp) / "recommender.pkl"
        path.write_bytes(payload)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=RecommenderPyfunc(),
            artifacts={RECOMMENDER_ARTIFACT: str(path)},
            code_paths=_stage_code(modules, Path(tmp) / "code"),
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(),
        )
    return info.model_uri


def load_recommender(model_uri: str) -> Recommender:
    """The Recommender inside a logged or registered pyfunc model, unpickled with this checkout's code.

    Loading puts the model's ``code/`` folder first on ``sys.path`` for good; here the path is
    restored afterwards, so modules this process imports later come from the checkout, not from
    a copy of an older model's code. The packages the pickle refers to are already imported here.
    """
    saved = list(sys.path)
    try:
        return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().recommender
    finally:
        sys.path[:] = saved


# ------------------------------------------------------------------ dataset inputs
class TableReference(MlflowMetaDataset):
    """A lake table partition as an MLflow dataset: source, digest, schema and row count, not the data."""

    def __init__(self, source: Any, name: str, digest: str, schema: Any, num_rows: int):
        super().__init__(source=source, name=name, digest=digest, schema=schema)
        self.num_rows = num_rows

    @property
    def profile(self) -> dict[str, int]:
        return {"num_rows": self.num_rows}

    def to_dict(self) -> dict[str, str]:
        import json

        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def table_reference(path: str, name: str) -> TableReference:
    """A :class:`TableReference` of the Parquet files under ``path`` (a local path or a URI).

    Reads the Parquet footers only (schema, row counts) and the first rows of one file (the
    MLflow column types). The digest hashes the files' names, sizes and row counts: a rewritten
    partition gets a new digest without the data being read.
    """
    import pyarrow.parquet as pq
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.models import infer_signature

    dataset = pq.ParquetDataset(path)
    sizes = dataset.filesystem.get_file_info(dataset.files)
    counts = [fragment.metadata.num_rows for fragment in dataset.fragments]
    digest = hashlib.sha256()
    for info, rows in zip(sizes, counts, strict=True):
        digest.update(f"{Path(info.path).name}\x00{info.size}\x00{rows}\n".encode())
    head = dataset.fragments[0].head(100).to_pandas() if dataset.fragments else dataset.schema.empty_table().to_pandas()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's hints about integer columns with missing values
        schema = infer_signature(head).inputs
        source = resolve_dataset_source(path)
    return TableReference(source, name, digest.hexdigest()[:12], schema, int(sum(counts)))


def log_training_inputs(references: Sequence[Any]) -> None:
    """Log dataset references in the active run with context ``training``."""
    if references:
        count = len(references)
        mlflow.log_inputs(list(references), contexts=["training"] * count, tags_list=[None] * count)


# ------------------------------------------------------------------ logging helpers
def log_history(history: Sequence[Mapping[str, float]]) -> None:
    """Per-epoch metrics of a fit, ``step`` = epoch (or grid point).

    For fits outside Lightning (EASE's lambda grid, the blend's weights): Lightning fits log
    their epochs themselves (:class:`models.lit.EpochMetricsLogger`)."""
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
