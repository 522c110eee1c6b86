"""Shared model plumbing: model options read from ``Config`` and the result of one fit.

``TrainingConfig`` holds the tunables every model shares (seed, embedding_dim,
max_epochs, batch_size, learning_rate, ease_lambda, mode, k, accelerator). The
model-specific knobs below are read from ``config.training`` too, by the same
name, when the configuration defines them; until then these defaults apply. Every
default lives here, in one place, so a model never hard-codes a tunable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.base import Recommender
from personalization.config import Config


@dataclass
class ModelOptions:
    """Model-specific tunables (see the module docstring for where values come from)."""

    #: EASE L2 strengths tried on validation; empty = only ``training.ease_lambda``.
    ease_lambda_grid: list[float] = field(default_factory=list)
    #: EASE input: interaction weight ** power (0 = binary; 0.5 damps heavy users and repeat weights).
    ease_weight_power: float = 0.0
    #: Powers tried on validation together with ``ease_lambda_grid``; empty = only ``ease_weight_power``.
    ease_weight_power_grid: list[float] = field(default_factory=list)
    #: L2 penalty on the embeddings touched by a BPR batch (per example, summed over dims).
    cf_l2: float = 1e-2
    #: Two-tower: hidden width of the tower and interaction MLPs.
    tt_hidden_dim: int = 128
    tt_dropout: float = 0.2
    #: Two-tower: catalogues up to this size train with a softmax over every app; larger
    #: ones with ``tt_sampled_negatives`` uniform apps shared by a batch.
    tt_full_softmax_max_apps: int = 20000
    tt_sampled_negatives: int = 256
    #: Two-tower: weight of the pointwise BCE loss (positives, explicit and sampled negatives).
    tt_bce_weight: float = 0.5
    #: Two-tower: sampled apps per positive used as negatives by the pointwise BCE loss.
    tt_pointwise_negatives: int = 4
    #: Two-tower: share of history items dropped from a training example's bag (denoising).
    tt_history_dropout: float = 0.2
    #: Two-tower: share of user and app ids replaced by the "unknown" id 0 while training,
    #: so users and apps never seen in training get vectors from history and features.
    tt_id_dropout: float = 0.1
    #: Two-tower: learning rate multiplied by this after every epoch of a full fit (1 = constant).
    tt_lr_decay: float = 0.9
    #: Two-tower: L2 weight decay (AdamW).
    tt_weight_decay: float = 1e-5
    #: Two-tower: catalogues up to this size are scored with the full MLP; larger ones two-stage.
    tt_full_mlp_max_apps: int = 20000
    #: Content model: weights of the one-hot category block and the scaled numeric block
    #: relative to the (unit-norm) text vector.
    content_category_weight: float = 1.0
    content_numeric_weight: float = 0.5
    #: Blend model: components (fitted earlier in the same run) and the weight grid step.
    blend_models: list[str] = field(default_factory=lambda: ["ease", "two_tower"])
    blend_weight_step: float = 0.1
    #: The weight search caches validation scores when users x apps x components fits (float32 count).
    blend_cache_max_floats: int = 50_000_000
    #: Incremental mode: fine-tuning epochs and the newest training days fine-tuned on.
    incremental_epochs: int = 2
    incremental_days: int = 1
    #: When mode is incremental, also train from scratch and log both side by side.
    compare_modes: bool = False
    #: Stop when validation NDCG has not improved for this many epochs (0 disables).
    early_stopping_patience: int = 3
    #: Lightning smoke-test switches (tests): one batch of train and validation.
    fast_dev_run: bool = False
    limit_train_batches: float = 1.0
    #: torch intra-op threads while training (0 keeps torch's default). Small embedding
    #: kernels run fastest on one thread; raise it for wide two-tower MLPs on big machines.
    train_threads: int = 1
    #: Users per block in evaluation (peak memory block x n_apps float32).
    eval_block_size: int = 1024


def model_options(config: Config) -> ModelOptions:
    """Options with any same-named ``config.training`` attribute taking precedence."""
    options = ModelOptions()
    for option in dataclasses.fields(ModelOptions):
        if hasattr(config.training, option.name):
            value = getattr(config.training, option.name)
            default = getattr(options, option.name)
            # Keep the declared type (YAML/env may give strings or ints for floats).
            if isinstance(default, bool):
                value = bool(value)
            elif isinstance(default, (int, float)) and not isinstance(default, bool):
                value = type(default)(value)
            setattr(options, option.name, value)
    return options


@dataclass
class FitResult:
    """One trained model and what its training produced (all JSON-able except the model)."""

    recommender: Recommender
    #: Hyperparameters actually used, including those chosen on validation.
    params: dict[str, Any] = field(default_factory=dict)
    #: One dict per epoch (or per grid point), e.g. ``{"epoch": 0, "train/loss": .., "val/ndcg@10": ..}``.
    history: list[dict[str, float]] = field(default_factory=list)
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
    source_positions, target_positions = zip(*pairs)
    return np.asarray(source_positions, dtype=np.int64), np.asarray(target_positions, dtype=np.int64)
