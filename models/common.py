"""Shared model plumbing: model options from ``Config`` and the result of one fit.

``TrainingConfig`` holds the tunables every model shares (seed, embedding_dim,
max_epochs, batch_size, learning_rate, ease_lambda, mode, k, accelerator);
``ModelOptions`` (the ``models`` configuration section, defined in
``personalization.config``) holds each model's own knobs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.base import Recommender
from personalization.config import Config, ModelOptions

__all__ = ["FitResult", "ModelOptions", "model_options", "popularity_scores", "shared_positions"]


def model_options(config: Config) -> ModelOptions:
    """The ``models`` section of ``config`` (a copy, so a fit cannot change the configuration)."""
    return copy.deepcopy(config.models)


@dataclass
class FitResult:
    """One trained model and what its training produced (all JSON-able except the model)."""

    recommender: Recommender
    #: Hyperparameters actually used, including those chosen on validation.
    params: dict[str, Any] = field(default_factory=dict)
    #: One dict per epoch (or per grid point), e.g. ``{"epoch": 0, "train/loss": .., "val/ndcg@10": ..}``.
    history: list[dict[str, float]] = field(default_factory=list)
    #: True when the fit already logged ``history`` to the active MLflow run (Lightning's logger).
    history_logged: bool = False
    #: Lightning checkpoint of the selected weights, when the model has one.
    checkpoint_path: str | None = None
    #: "full" or "incremental", and where an incremental run started from.
    mode: str = "full"
    warm_start_from: str | None = None


def popularity_scores(train_counts: np.ndarray) -> np.ndarray:
    """Popularity fallback in [0, 1): distinct users per app scaled by (max + 1), float32."""
    counts = np.asarray(train_counts, dtype=np.float64)
    return (counts / (counts.max(initial=0.0) + 1.0)).astype(np.float32)


def shared_positions(source_ids: np.ndarray, target_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the ids two vocabularies share (catalogue alignment, warm starts).

    Returns ``(source_positions, target_positions)`` such that
    ``source_ids[source_positions] == target_ids[target_positions]``.
    """
    target_index = {item: position for position, item in enumerate(target_ids.tolist())}
    pairs = [
        (position, target_index[item]) for position, item in enumerate(source_ids.tolist()) if item in target_index
    ]
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    source_positions, target_positions = zip(*pairs, strict=True)
    return np.asarray(source_positions, dtype=np.int64), np.asarray(target_positions, dtype=np.int64)
