"""A weighted blend of already-trained recommenders (``blend`` in ``training.models``).

Each component's scores are standardised per user over the catalogue (z-scores:
the components' raw scales differ: EASE weights, logits, cosines), then summed with
weights that sum to 1. The weights are chosen on the validation split among a grid,
so the blend is a model like any other for promotion. List ``blend`` after its
components in ``training.models``: it reuses the components fitted in the same run.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from models.base import Recommender
from models.common import FitResult, ModelOptions
from models.data import InteractionData
from models.evaluation import evaluate, evaluation_users, sample_evaluation_users, score_in_data_columns
from personalization.config import Config

log = logging.getLogger(__name__)


def _standardise_rows(scores: np.ndarray) -> np.ndarray:
    """Per-row z-scores over finite entries; a constant row becomes zeros."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    safe = np.where(finite, scores, 0.0)
    count = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    mean = safe.sum(axis=1, keepdims=True) / count
    std = np.sqrt((np.where(finite, scores - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / count)
    standardised = np.where(finite, (scores - mean) / np.where(std > 0, std, 1.0), -np.inf)
    return standardised


class BlendRecommender(Recommender):
    """Sum of per-user standardised component scores, weighted."""

    name = "blend"

    def __init__(self, components: Sequence[Recommender], weights: Sequence[float]):
        if len(components) != len(weights) or not components:
            raise ValueError("a blend needs one weight per component and at least one component")
        first = components[0]
        for component in components[1:]:
            if not np.array_equal(component.app_ids, first.app_ids):
                raise ValueError(f"blend components must share one catalogue ({component.name} differs)")
        self.components = list(components)
        self.weights = [float(weight) for weight in weights]
        self.app_ids = first.app_ids
        self.user_ids = np.array(sorted({u for c in components for u in c.user_ids.tolist()}), dtype=object)

    def score(self, user_ids: Sequence[str], history: sp.csr_matrix) -> np.ndarray:
        total = np.zeros((len(user_ids), len(self.app_ids)), dtype=np.float64)
        for component, weight in zip(self.components, self.weights, strict=True):
            if weight == 0.0:
                continue
            total += weight * _standardise_rows(component.score(user_ids, history))
        # -inf would only come from a component that cannot score an app; keep it finite but last.
        return np.nan_to_num(total, neginf=np.finfo(np.float32).min / 2).astype(np.float32)

    def drop_users(self, user_ids: Sequence[str]) -> int:
        removed = max((component.drop_users(user_ids) for component in self.components), default=0)
        drop = set(user_ids)
        self.user_ids = np.array([u for u in self.user_ids.tolist() if u not in drop], dtype=object)
        return removed


class _CachedScores(Recommender):
    """Standardised component scores of the validation users, computed once for the weight search."""

    name = "blend-search"

    def __init__(self, components: Sequence[Recommender], data: InteractionData, block_size: int):
        rows, _ = evaluation_users(data)
        users = data.user_ids[rows].tolist()
        self.app_ids = components[0].app_ids
        self.user_ids = np.asarray(users, dtype=object)
        self._rows = {user: position for position, user in enumerate(users)}
        self.weights: Sequence[float] = ()
        self.cache = []
        for component in components:
            blocks = [
                _standardise_rows(
                    score_in_data_columns(
                        component,
                        users[start : start + block_size],
                        data.train[rows[start : start + block_size]],
                        data.app_ids,
                    )
                ).astype(np.float32)
                for start in range(0, len(users), block_size)
            ]
            self.cache.append(np.vstack(blocks) if blocks else np.zeros((0, data.n_apps), np.float32))

    def score(self, user_ids: Sequence[str], history: sp.csr_matrix) -> np.ndarray:
        positions = [self._rows[user] for user in user_ids]
        total = np.zeros((len(positions), self.cache[0].shape[1]), dtype=np.float64)
        for cached, weight in zip(self.cache, self.weights, strict=True):
            if weight:
                total += weight * cached[positions]
        return np.nan_to_num(total, neginf=np.finfo(np.float32).min / 2).astype(np.float32)


def weight_grid(n_components: int, step: float) -> list[tuple[float, ...]]:
    """All weight vectors on a simplex grid with the given step (weights >= 0, sum 1)."""
    ticks = int(round(1.0 / step))
    grid = [
        tuple(count / ticks for count in counts)
        for counts in itertools.product(range(ticks + 1), repeat=n_components)
        if sum(counts) == ticks
    ]
    return sorted(grid, reverse=True)


def _search_data(data: InteractionData, n_components: int, options: ModelOptions) -> InteractionData | None:
    """The data whose validation users the cached weight search scores, or None (no cache).

    Every validation user when their cached scores fit ``blend_cache_max_floats``; else a
    seeded uniform sample of as many as fit (the validation matrix keeps only their rows),
    when that is at least ``blend_min_search_users``; else None.
    """
    rows, _ = evaluation_users(data)
    fitting = options.blend_cache_max_floats // max(data.n_apps * n_components, 1)
    if len(rows) <= fitting:
        return data
    if fitting < options.blend_min_search_users:
        return None
    log.info("blend weight search on %d of %d validation users (cache budget)", fitting, len(rows))
    return sample_evaluation_users(data, fitting, seed=0)


def fit_blend(
    data: InteractionData,
    config: Config,
    options: ModelOptions,
    components: dict[str, Recommender] | None = None,
) -> FitResult:
    """Choose blend weights of ``options.blend_models`` (already fitted) by validation NDCG@k."""
    names = [name for name in options.blend_models if components and name in components]
    if len(names) < 2:
        raise ValueError(
            f"blend needs at least two fitted components among {options.blend_models}; list them before "
            f"'blend' in training.models (fitted: {sorted(components or {})})"
        )
    models = [components[name] for name in names]
    k = config.training.k
    best: tuple[float, tuple[float, ...]] | None = None
    history = []
    search_data = _search_data(data, len(models), options)
    # Score the (sampled) validation users once per component when that fits the memory budget;
    # otherwise every grid point rescores every validation user (slow on big data).
    cached = _CachedScores(models, search_data, options.eval_block_size) if search_data is not None else None
    if search_data is not None:
        data = search_data
    for step, weights in enumerate(weight_grid(len(models), options.blend_weight_step)):
        if cached is not None:
            cached.weights = weights
            candidate: Recommender = cached
        else:
            candidate = BlendRecommender(models, weights)
        ndcg = evaluate(candidate, data, k, block_size=options.eval_block_size)[f"ndcg@{k}"]
        history.append({"epoch": step, **{f"weight.{n}": w for n, w in zip(names, weights, strict=True)}, f"val/ndcg@{k}": ndcg})
        if best is None or ndcg > best[0]:
            best = (ndcg, weights)
    assert best is not None
    log.info("blend weights %s: validation ndcg@%d=%.4f", dict(zip(names, best[1], strict=True)), k, best[0])
    return FitResult(
        recommender=BlendRecommender(models, best[1]),
        params={"components": ",".join(names), **{f"weight.{n}": w for n, w in zip(names, best[1], strict=True)}},
        history=history,
    )
