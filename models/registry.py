"""Champion/challenger registry on the MLflow Model Registry.

Registered model ``config.mlflow.registered_model`` ("app-recommender"); the serving
model is whichever version carries the alias ``config.mlflow.champion_alias``
("champion"). Every night the best challenger is registered as a new version; the
alias moves to it only when it beats the champion, re-evaluated on the same
validation data, by more than ``promotion.ndcg_margin`` NDCG@k without losing more
than ``promotion.max_coverage_drop`` coverage or ``promotion.max_diversity_drop``
diversity (absolute). A rejected challenger stays registered, unaliased.

Point in time: every version carries the data date it was trained for (tag ``date``).
A run for a date earlier than the live champion's (a backfill, or a rerun of an old
night) must not be judged or scored by a model that has seen later data, and must not
move the live alias. Such a run uses the *champion as of its date* (:func:`champion_as_of`):
the newest version trained for that date or before that was promoted (tag
``promotion`` = ``promoted`` or ``promoted_as_of``). A challenger that wins there is
tagged ``promoted_as_of`` and scores that date; the alias stays where it is. Reruns of a
date therefore see the same champion and publish the same rows.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from models.base import Recommender
from models.data import InteractionData, load_training_data
from models.evaluation import evaluate, mlflow_metric_name, scalar_metrics
from models.tracking import configure_mlflow, load_recommender
from personalization.config import Config

log = logging.getLogger(__name__)


def _client(config: Config) -> MlflowClient:
    mlflow.set_tracking_uri(config.mlflow_tracking_uri)
    return MlflowClient(tracking_uri=config.mlflow_tracking_uri)


def champion_version(config: Config) -> ModelVersion | None:
    """The model version holding the champion alias, or None when there is no champion yet."""
    client = _client(config)
    try:
        return client.get_model_version_by_alias(config.mlflow.registered_model, config.mlflow.champion_alias)
    except MlflowException as error:
        # RESOURCE_DOES_NOT_EXIST (no registered model, or no such alias) means "no champion".
        if getattr(error, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


#: ``promotion`` tag values of versions that were (or are) a champion for their date.
PROMOTED_TAGS = ("promoted", "promoted_as_of", "rollback")


def _is_after(version: ModelVersion, date: str) -> bool:
    """True when ``version`` was trained on data later than ``date`` (untagged versions never are)."""
    trained_for = (version.tags or {}).get("date", "")
    return bool(trained_for) and trained_for > date


def champion_as_of(config: Config, date: str | None = None) -> ModelVersion | None:
    """The champion for a run of ``date``: the alias holder unless it was trained on later data.

    Then (a backfill or a rerun of an old date) it is the newest version trained for
    ``date`` or before whose ``promotion`` tag is in :data:`PROMOTED_TAGS`, or None.
    """
    return _champion_as_of(config, date, champion_version(config))


def _champion_as_of(config: Config, date: str | None, live: ModelVersion | None) -> ModelVersion | None:
    """:func:`champion_as_of` given the alias holder ``live`` (already looked up)."""
    if date is None or live is None or not _is_after(live, date):
        return live
    client = _client(config)
    candidates = [
        version
        for version in client.search_model_versions(f"name='{config.mlflow.registered_model}'")
        if (version.tags or {}).get("promotion") in PROMOTED_TAGS
        and (version.tags or {}).get("date")
        and not _is_after(version, date)
    ]
    return max(candidates, key=lambda version: int(version.version), default=None)


def load_champion(config: Config, as_of: str | None = None) -> tuple[Recommender, str]:
    """The champion Recommender and its registry version number (as a string).

    ``as_of`` (a run date) selects the champion as of that date (:func:`champion_as_of`);
    None means the alias holder. Raises LookupError when there is no such champion.
    """
    version = champion_as_of(config, as_of)
    if version is None:
        raise LookupError(
            f"no '{config.mlflow.champion_alias}' alias on registered model "
            f"'{config.mlflow.registered_model}' in {config.mlflow_tracking_uri}"
            + (f" usable for {as_of}" if as_of else "") + ": train and promote a model first"
        )
    # Load by number, not alias: the alias may move between the lookup and the load.
    recommender = load_recommender(f"models:/{config.mlflow.registered_model}/{version.version}")
    return recommender, str(version.version)


def rollback_champion(config: Config, version: str | int) -> dict[str, Any]:
    """Move the champion alias to an existing ``version``; returns ``{"previous", "champion"}``."""
    client = _client(config)
    name = config.mlflow.registered_model
    target = client.get_model_version(name, str(version))  # raises when the version does not exist
    previous = champion_version(config)
    client.set_registered_model_alias(name, config.mlflow.champion_alias, target.version)
    client.set_model_version_tag(name, target.version, "promotion", "rollback")
    return {"previous": str(previous.version) if previous else None, "champion": str(target.version)}


def promotion_decision(
    challenger: dict[str, float], champion: dict[str, float] | None, config: Config
) -> tuple[bool, list[str]]:
    """Apply the promotion gate; returns (promote, reasons). Metrics use ``"ndcg@k"`` keys."""
    k = config.training.k
    gate = config.promotion
    key = f"ndcg@{k}"
    if champion is None:
        return True, ["no current champion: the first challenger is promoted"]
    reasons: list[str] = []
    promote = True
    needed = champion[key] + gate.ndcg_margin
    if challenger[key] > needed:
        reasons.append(f"{key} {challenger[key]:.4f} > champion {champion[key]:.4f} + margin {gate.ndcg_margin}")
    else:
        promote = False
        reasons.append(f"{key} {challenger[key]:.4f} <= champion {champion[key]:.4f} + margin {gate.ndcg_margin}")
    for metric, limit in (("coverage", gate.max_coverage_drop), ("diversity", gate.max_diversity_drop)):
        if metric not in challenger or metric not in champion:
            reasons.append(f"{metric}: not measured on both models, guardrail skipped")
            continue
        drop = champion[metric] - challenger[metric]
        if drop > limit:
            promote = False
            reasons.append(
                f"{metric} drops {drop:.4f} > allowed {limit} ({champion[metric]:.4f} -> {challenger[metric]:.4f})"
            )
        else:
            reasons.append(f"{metric} change {-drop:+.4f} within allowed drop {limit}")
    return promote, reasons


def evaluate_and_promote(
    config: Config, train_result: dict[str, Any], data: InteractionData | None = None
) -> dict[str, Any]:
    """Register the night's best model and promote it when it passes the gate.

    Args:
        train_result: the dict returned by :func:`models.train.train`.
        data: the validation data the challenger was evaluated on; loaded from the lake
            for ``train_result["date"]`` when None.

    Returns:
        ``{"promoted", "reasons", "champion_version" (after the decision),
        "previous_champion_version", "challenger_version", "challenger_model",
        "challenger_metrics", "champion_metrics"}`` (JSON-able).
    """
    configure_mlflow(config)
    client = _client(config)
    name = config.mlflow.registered_model
    best = train_result["best_model"]
    challenger_metrics = {key: float(value) for key, value in train_result["metrics"][best].items()}
    model_uri = train_result.get("model_uris", {}).get(best) or f"runs:/{train_result['runs'][best]}/model"

    date = train_result["date"]
    live = champion_version(config)
    # A run for a date before the live champion's data: judge against the champion as of
    # that date and leave the live alias alone (see the module docstring).
    backfill = live is not None and _is_after(live, date)
    previous = _champion_as_of(config, date, live)
    previous_version = str(previous.version) if previous is not None else None
    champion_metrics = None
    if previous is not None:
        if data is None:
            data = load_training_data(config, date)
        champion = load_recommender(f"models:/{name}/{previous.version}")
        champion_metrics = scalar_metrics(evaluate(champion, data, config.training.k))

    registered = mlflow.register_model(
        model_uri,
        name,
        tags={
            "model_name": best,
            "date": train_result["date"],
            "data_version": str(train_result.get("data_version", "")),
            "source_run_id": train_result["runs"][best],
            mlflow_metric_name(f"ndcg@{config.training.k}"): f"{challenger_metrics[f'ndcg@{config.training.k}']:.6f}",
        },
    )
    challenger_version = str(registered.version)
    promote, reasons = promotion_decision(challenger_metrics, champion_metrics, config)
    if backfill:
        reasons.append(
            f"run date {date} is before the live champion v{live.version}'s data ({live.tags.get('date')}): "
            f"judged against the champion as of {date}"
            + (f" (v{previous_version})" if previous_version else " (none)")
            + "; the live alias does not move"
        )
    if promote and not backfill:
        client.set_registered_model_alias(name, config.mlflow.champion_alias, challenger_version)
    tag = ("promoted_as_of" if backfill else "promoted") if promote else "rejected"
    client.set_model_version_tag(name, challenger_version, "promotion", tag)

    decision = {
        "promoted": promote,
        "reasons": reasons,
        "champion_version": challenger_version if promote else previous_version,
        "previous_champion_version": previous_version,
        "live_champion_version": str(live.version) if backfill else (challenger_version if promote else previous_version),
        "backfill": backfill,
        "challenger_version": challenger_version,
        "challenger_model": best,
        "challenger_metrics": challenger_metrics,
        "champion_metrics": champion_metrics,
        "date": date,
    }
    parent = train_result.get("parent_run_id")
    if parent:
        client.set_tag(parent, "promotion.promoted", str(promote).lower())
        client.set_tag(parent, "promotion.challenger_version", challenger_version)
        client.set_tag(parent, "promotion.champion_version", str(decision["champion_version"]))
        client.set_tag(parent, "promotion.reasons", "; ".join(reasons)[:5000])
        client.log_dict(parent, decision, "promotion/decision.json")
    log.info("promotion of %s v%s: %s (%s)", best, challenger_version, promote, "; ".join(reasons))
    return decision
