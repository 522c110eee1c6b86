"""A/B experiments baked into the precomputed lists: scoring per experiment cell.

The experiments come from ``monitoring.experiments_file`` (JSON or YAML, see
:func:`personalization.experiments.load_experiments`), the same declaration the
experiment report reads. Each scored user is assigned to one arm of every
experiment by the salted hash (:func:`personalization.experiments.assign`: sticky
across nights, independent across experiments). A *cell* is one combination of
arms; its users are scored by :func:`models.scoring.score_users` restricted to
them (``user_ids``), with the cell's model and scoring settings, and every
per-user output of the cells is concatenated into the night's partitions with
``recommendations.variant`` set to the cell's tags (``"exp:arm"``, several
experiments joined by ``;``). ``user_insights`` and ``similar_apps`` do not depend
on the arm and come from the first cell.

A variant's ``spec`` says what its users are served (at most one model key):
- ``{"model_alias": "champion"}``: the registered model version holding that alias;
- ``{"model_version": "3"}``: that registered version of ``mlflow.registered_model``;
- ``{"model": "popularity"}``: that model as trained tonight (``train_models`` run record);
- ``{"scoring": {"diversity": "none", ...}}``: ``scoring`` configuration overrides;
- ``{"personalized": false}``: non-personalised lists (popular in the region / store);
- ``{}``: the champion with the configured scoring.
The holdout arm is non-personalised. Two experiments may both set scoring keys
only when they set different keys, and only one of a cell's arms may choose a model.

Without experiments this is exactly :func:`models.scoring.score_users`.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from models import insights as ins
from models.base import Recommender
from models.scoring import (
    OUTPUT_TABLES,
    SCHEMAS,
    PartitionWriter,
    load_deleted_users,
    load_users,
    score_users,
)
from personalization.config import Config, apply_overrides
from personalization.experiments import HOLDOUT, TAG_SEPARATOR, Experiment, assign, load_experiments, tag
from personalization.lake import Lake, check_date

log = logging.getLogger("personalization.variants")

#: Tables every cell writes for its own users only (concatenated across cells).
PER_USER_TABLES = ("recommendations", "recommended_categories", "search_personalization", "suggested_queries")
#: The serving checks' expectation sets (``gold/scoring_expectations/date=D/<name>``), also per user.
EXPECTATION_SETS = ("active_users", "exclusions")
MODEL_KEYS = ("model_alias", "model_version", "model")

#: Loads the model a spec names: ``(config, spec, date) -> (recommender, model_version label)``.
ModelLoader = Callable[[Config, Mapping[str, Any], str], tuple[Recommender, str]]


@dataclass
class Cell:
    """One combination of arms (one per experiment), its merged spec and its users."""

    tags: tuple[str, ...]
    spec: dict[str, Any]
    user_ids: list[str] = field(default_factory=list)

    @property
    def variant(self) -> str:
        return TAG_SEPARATOR.join(self.tags)


def configured_experiments(config: Config) -> list[Experiment]:
    """The experiments of ``monitoring.experiments_file`` (none when it is empty)."""
    path = str(getattr(config.monitoring, "experiments_file", "") or "")
    return load_experiments(config.resolve(path)) if path else []


def arm_spec(experiment: Experiment, arm: str) -> dict[str, Any]:
    """The spec of ``arm``; the holdout is non-personalised."""
    if arm == HOLDOUT:
        return {"personalized": False}
    return dict(next(v for v in experiment.variants if v.name == arm).spec)


def merge_specs(specs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One cell's spec from one spec per experiment; conflicting choices raise ValueError."""
    merged: dict[str, Any] = {}
    scoring: dict[str, Any] = {}
    for spec in specs:
        for key, value in spec.items():
            if key == "scoring":
                clash = set(scoring) & set(dict(value))
                if clash:
                    raise ValueError(f"two experiments set scoring {sorted(clash)} for the same users")
                scoring.update(dict(value))
            elif key in MODEL_KEYS:
                if any(k in merged for k in MODEL_KEYS):
                    raise ValueError("two experiments choose the model for the same users")
                merged[key] = value
            elif key == "personalized":
                merged[key] = bool(merged.get(key, True)) and bool(value)
    if scoring:
        merged["scoring"] = scoring
    return merged


def plan_cells(user_ids: Sequence[str], experiments: Sequence[Experiment]) -> list[Cell]:
    """The non-empty cells, users in input order, cells ordered by first user."""
    arms = [assign(user_ids, experiment) for experiment in experiments]
    cells: dict[tuple[str, ...], Cell] = {}
    for position, user in enumerate(user_ids):
        chosen = tuple(arms[e][position] for e in range(len(experiments)))
        if chosen not in cells:
            cells[chosen] = Cell(
                tags=tuple(tag(x.name, arm) for x, arm in zip(experiments, chosen, strict=True)),
                spec=merge_specs([arm_spec(x, arm) for x, arm in zip(experiments, chosen, strict=True)]),
            )
        cells[chosen].user_ids.append(str(user))
    return list(cells.values())


def model_uri(config: Config, spec: Mapping[str, Any], date: str) -> str:
    """The MLflow model URI a spec names (the champion alias when it names none)."""
    name = config.mlflow.registered_model
    if "model_version" in spec:
        return f"models:/{name}/{int(str(spec['model_version']))}"
    if "model" in spec:
        from personalization.pipeline import read_record

        record = read_record(config, date, "train_models") or {}
        model = str(spec["model"])
        uri = (record.get("model_uris") or {}).get(model)
        run = (record.get("runs") or {}).get(model)
        if not uri and not run:
            raise LookupError(f"model {model!r} was not trained for {date}: add it to training.models")
        return str(uri or f"runs:/{run}/model")
    return f"models:/{name}@{spec.get('model_alias', config.mlflow.champion_alias)}"


def registry_loader(config: Config, spec: Mapping[str, Any], date: str) -> tuple[Recommender, str]:
    """Load a spec's model from MLflow; aliases resolve to a version number first (the alias may move)."""
    from mlflow.tracking import MlflowClient

    from models.tracking import configure_mlflow, load_recommender

    configure_mlflow(config)
    uri = model_uri(config, spec, date)
    if "@" in uri:
        name, alias = uri[len("models:/"):].split("@", 1)
        client = MlflowClient(tracking_uri=config.mlflow_tracking_uri)
        version = str(client.get_model_version_by_alias(name, alias).version)
        return load_recommender(f"models:/{name}/{version}"), version
    if uri.startswith("models:/"):
        return load_recommender(uri), uri.rsplit("/", 1)[1]
    return load_recommender(uri), f"{spec['model']}:{uri.split('/')[1]}"


def _cell_config(config: Config, spec: Mapping[str, Any]) -> Config:
    if not spec.get("scoring"):
        return config
    return apply_overrides(copy.deepcopy(config), {"scoring": dict(spec["scoring"])}, where=" in an experiment spec")


def _copy_dataset(source: str, target: Path) -> None:
    """Stream a Parquet partition to one local scratch file (a missing or empty source writes nothing)."""
    if not ins.path_exists(source):
        return
    filesystem, inner = ins._fs(source)
    dataset = ds.dataset(inner, format="parquet", filesystem=filesystem, partitioning=None)
    target.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(str(target), dataset.schema) as writer:
        for batch in dataset.to_batches():
            writer.write_batch(batch)


def _concatenate(parts: Sequence[tuple[Path, str]], target: str, schema: pa.Schema, set_variant: bool) -> int:
    """Write the cells' scratch files into one partition; ``variant`` replaced by the cell's tags."""
    writer = PartitionWriter(target, schema)
    try:
        for path, variant in parts:
            if not path.exists():
                continue
            for batch in pq.ParquetFile(str(path)).iter_batches():
                table = pa.Table.from_batches([batch])
                if set_variant:
                    table = table.set_column(
                        table.schema.get_field_index("variant"), "variant",
                        pa.array([variant] * len(table), pa.string()))
                writer.write(table.to_pandas())
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.rows


def score_with_experiments(
    config: Config,
    date: str,
    experiments: Sequence[Experiment] | None = None,
    deleted_users: Sequence[str] | None = None,
    loader: ModelLoader | None = None,
    log_to_mlflow: bool = True,
) -> dict[str, Any]:
    """Score ``date`` with every user's assigned variants; the serving tables as :func:`score_users` writes them.

    Args:
        experiments: default :func:`configured_experiments`; none means plain champion scoring.
        loader: resolves a spec's model (default :func:`registry_loader`); models are loaded
            once per distinct spec.

    Returns the record of :func:`score_users` for all cells together (``rows``,
    ``users_scored`` summed; ``diversity`` the user-weighted mean of the cells) plus
    ``experiments`` (names) and ``cells``: per variant tag its users, model version,
    spec and rows.
    """
    date = check_date(date)
    experiments = configured_experiments(config) if experiments is None else list(experiments)
    if not experiments:
        champion = loader(config, {}, date) if loader else None
        return score_users(config, date, deleted_users=deleted_users, champion=champion, log_to_mlflow=log_to_mlflow)
    loader = loader or registry_loader
    deleted = load_deleted_users(config, deleted_users)
    users, _ = load_users(config, date, deleted)
    cells = plan_cells(users["user_id"].astype(str).tolist(), experiments)
    lake = Lake(config)
    partitions = {name: lake.partition(lake.gold(name), date) for name in OUTPUT_TABLES}
    checks_root = lake.partition(lake.gold("scoring_expectations"), date)
    partitions.update({name: f"{checks_root}/{name}" for name in EXPECTATION_SETS})
    parent = Path(config.var_dir) / "tmp"
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="variants-", dir=str(parent)))
    models: dict[str, tuple[Recommender, str]] = {}
    records: list[dict[str, Any]] = []
    try:
        for index, cell in enumerate(cells):
            key = repr(sorted((k, v) for k, v in cell.spec.items() if k in MODEL_KEYS))
            if key not in models:
                models[key] = loader(config, cell.spec, date)
            log.info("experiment cell %s: %d users", cell.variant, len(cell.user_ids))
            record = score_users(
                _cell_config(config, cell.spec), date, deleted_users=deleted_users, champion=models[key],
                log_to_mlflow=log_to_mlflow and index == 0, user_ids=cell.user_ids,
                personalized=bool(cell.spec.get("personalized", True)),
            )
            records.append(record)
            # The next cell overwrites the night's partitions: keep this cell's per-user outputs aside.
            for name in PER_USER_TABLES + EXPECTATION_SETS + (("user_insights", "similar_apps") if index == 0 else ()):
                _copy_dataset(partitions[name], scratch / name / f"cell-{index:04d}.parquet")
        rows: dict[str, int] = {}
        for name in PER_USER_TABLES + EXPECTATION_SETS + ("user_insights", "similar_apps"):
            parts = [(scratch / name / f"cell-{i:04d}.parquet", cell.variant) for i, cell in enumerate(cells)]
            written = _concatenate(parts, partitions[name], SCHEMAS[name], set_variant=name == "recommendations")
            if name not in EXPECTATION_SETS:
                rows[name] = written
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    first = records[0]
    scored = [int(r["users_scored"]) for r in records]
    total = sum(scored)

    def weighted(key: str) -> float | None:
        pairs = [(r["diversity"].get(key), n) for r, n in zip(records, scored, strict=True)]
        pairs = [(value, n) for value, n in pairs if value is not None and n]
        return round(sum(v * n for v, n in pairs) / sum(n for _, n in pairs), 6) if pairs else None

    return {
        **first,
        "rows": rows,
        "users_scored": total,
        "blocks": sum(int(r["blocks"]) for r in records),
        "seconds": round(sum(float(r["seconds"]) for r in records), 3),
        "diversity": {**first["diversity"], "ild_before": weighted("ild_before"), "ild_after": weighted("ild_after")},
        "catalog_coverage": None,  # per cell below; the union is not the mean of the cells
        "experiments": [experiment.name for experiment in experiments],
        "cells": {
            cell.variant: {
                "users": len(cell.user_ids),
                "users_scored": int(record["users_scored"]),
                "model_version": str(record["model_version"]),
                "spec": cell.spec,
                "rows": record["rows"].get("recommendations", 0),
                "catalog_coverage": record.get("catalog_coverage"),
            }
            for cell, record in zip(cells, records, strict=True)
        },
    }


def served_variants(config: Config, date: str) -> dict[str, int]:
    """Users per ``variant`` value in ``gold/recommendations/date=D`` (a check for reports and tests)."""
    lake = Lake(config)
    path = lake.partition(lake.gold("recommendations"), check_date(date))
    frame = ins.read_table(path, ["user_id", "variant"], "gold/recommendations").to_pandas()
    return {str(k): int(v) for k, v in frame.groupby("variant")["user_id"].nunique().items()}
