"""Non-neural baselines: global popularity, regional popularity and EASE (Steck, 2019).

Regional popularity is the share of a user's region (the user feature
``group_popularity_column``, ``country_idx`` by default: 0 = unknown or no location
consent) who use each app, shrunk towards the global share by a prior of
``group_popularity_prior`` pseudo-users: ``(n_region_app + m * share_app) / (n_region + m)``.
It is the product's "Popular in <region>" signal as a model, and a context-aware
component for the blend.

EASE learns an app-to-app weight matrix ``B`` in closed form,
``B = I - P diagMat(1 / diag(P))`` with ``P = (X^T X + lambda I)^-1`` over the
training matrix ``X`` (binary, or interaction weights ** ``ease_weight_power``), and
scores a user as ``history @ B`` (history transformed the same way). It holds
``n_apps x n_apps`` float32 weights, so it suits catalogues up to a few ten
thousand apps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from models.base import PerUserArraysRecommender, Recommender
from models.common import FitResult, ModelOptions, popularity_scores
from models.data import InteractionData
from models.evaluation import evaluate
from personalization.config import Config

log = logging.getLogger(__name__)


class PopularityRecommender(Recommender):
    """Every user gets the same scores: distinct training users per app, scaled to [0, 1)."""

    name = "popularity"

    def __init__(self, app_ids: np.ndarray, user_ids: np.ndarray, app_scores: np.ndarray):
        self.app_ids = np.asarray(app_ids, dtype=object)
        self.user_ids = np.asarray(user_ids, dtype=object)
        self.app_scores = np.asarray(app_scores, dtype=np.float32)

    def score(self, user_ids: Sequence[str], history: sp.csr_matrix) -> np.ndarray:
        return np.tile(self.app_scores, (len(user_ids), 1))


class GroupPopularityRecommender(PerUserArraysRecommender):
    """Popularity within the user's group (region); unknown users and groups get the global share."""

    name = "regional_popularity"
    per_user_arrays = ("user_groups",)

    def __init__(self, app_ids: np.ndarray, user_ids: np.ndarray, user_groups: np.ndarray,
                 group_scores: dict[int, np.ndarray], global_scores: np.ndarray):
        self.app_ids = np.asarray(app_ids, dtype=object)
        self.user_ids = np.asarray(user_ids, dtype=object)
        #: Group of each training user (0 = unknown); a per-user parameter, removed on deletion.
        self.user_groups = np.asarray(user_groups, dtype=np.int64)
        self.group_scores = {int(group): np.asarray(row, dtype=np.float32) for group, row in group_scores.items()}
        self.global_scores = np.asarray(global_scores, dtype=np.float32)
        self.index_users()

    def score(self, user_ids: Sequence[str], history: sp.csr_matrix) -> np.ndarray:
        scores = np.tile(self.global_scores, (len(user_ids), 1))
        positions = self.user_rows(user_ids)
        groups = np.zeros(len(user_ids), dtype=np.int64)
        known = positions >= 0
        groups[known] = self.user_groups[positions[known]]
        # One assignment per group present in the block, not per user.
        for group in np.unique(groups[groups != 0]).tolist():
            group_row = self.group_scores.get(group)
            if group_row is not None:
                scores[groups == group] = group_row
        return scores



def group_popularity(train: sp.csr_matrix, user_groups: np.ndarray, prior: float
                     ) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Per-group app shares shrunk towards the global share, and the global share.

    Args:
        train: ``[n_users, n_apps]`` training positives (any positive weight counts once).
        user_groups: group of each user, int; 0 means unknown and forms no group.
        prior: pseudo-users of the global share added to each group (>= 0).

    Returns:
        ``({group: float32 [n_apps] in [0, 1]}, global float32 [n_apps] in [0, 1])``.
    """
    used = (sp.csr_matrix(train) > 0).astype(np.float64).tocsr()
    active = used.getnnz(axis=1) > 0
    n_active = max(int(active.sum()), 1)
    global_share = np.asarray(used.sum(axis=0)).ravel() / n_active
    groups = np.asarray(user_groups, dtype=np.int64)
    out: dict[int, np.ndarray] = {}
    for group in np.unique(groups[(groups != 0) & active]):
        members = (groups == group) & active
        counts = np.asarray(used[members].sum(axis=0)).ravel()
        out[int(group)] = ((counts + prior * global_share) / (members.sum() + prior)).astype(np.float32)
    return out, global_share.astype(np.float32)


def transform_weights(matrix: sp.csr_matrix, power: float, dtype: type = np.float32) -> sp.csr_matrix:
    """Copy of ``matrix`` with every stored weight w replaced by w ** power (power 0: binary 1.0)."""
    out = sp.csr_matrix(matrix, dtype=dtype, copy=True)
    out.data = np.ones_like(out.data) if power == 0 else np.power(np.abs(out.data), power)
    return out


class EASERecommender(Recommender):
    """EASE item-item model; a user's scores depend only on the history passed in."""

    name = "ease"

    def __init__(
        self,
        app_ids: np.ndarray,
        user_ids: np.ndarray,
        weights: np.ndarray,
        lam: float,
        fallback: np.ndarray,
        weight_power: float = 0.0,
    ):
        self.app_ids = np.asarray(app_ids, dtype=object)
        self.user_ids = np.asarray(user_ids, dtype=object)
        self.weights = np.asarray(weights, dtype=np.float32)
        self.lam = float(lam)
        self.weight_power = float(weight_power)
        # Users with an empty history score 0 everywhere under EASE; popularity breaks that tie.
        self.fallback = np.asarray(fallback, dtype=np.float32)

    def score(self, user_ids: Sequence[str], history: sp.csr_matrix) -> np.ndarray:
        inputs = transform_weights(history, getattr(self, "weight_power", 0.0))
        scores = np.asarray(inputs @ self.weights, dtype=np.float32)
        empty = inputs.getnnz(axis=1) == 0
        if empty.any():
            scores[empty] = self.fallback
        return scores


def ease_weights(train: sp.csr_matrix, lam: float, weight_power: float = 0.0) -> np.ndarray:
    """Closed-form EASE weights ``[n_apps, n_apps]`` (zero diagonal) for L2 strength ``lam`` > 0.

    The input matrix holds interaction weights ** ``weight_power`` (0: binary, 0.5: square roots).
    """
    if lam <= 0:
        raise ValueError(f"EASE lambda must be > 0, got {lam}")
    inputs = transform_weights(train, weight_power, dtype=np.float64)
    gram = np.asarray((inputs.T @ inputs).todense(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += lam
    precision = np.linalg.inv(gram)
    weights = -precision / np.diag(precision)
    np.fill_diagonal(weights, 0.0)
    return weights.astype(np.float32)


def fit_popularity(data: InteractionData, config: Config, options: ModelOptions) -> FitResult:
    """Popularity from the training split."""
    recommender = PopularityRecommender(data.app_ids, data.user_ids, popularity_scores(data.app_popularity()))
    return FitResult(recommender=recommender, params={"score": "distinct_train_users"})


def fit_regional_popularity(data: InteractionData, config: Config, options: ModelOptions) -> FitResult:
    """Popularity within each user's region (``options.group_popularity_column``) from the training split."""
    column = options.group_popularity_column
    if column in data.user_features.columns:
        groups = np.nan_to_num(data.user_features[column].to_numpy(dtype=np.float64)).astype(np.int64)
    else:
        log.warning("user feature %r is missing: regional popularity falls back to global popularity", column)
        groups = np.zeros(data.n_users, dtype=np.int64)
    group_scores, global_scores = group_popularity(data.train, groups, options.group_popularity_prior)
    recommender = GroupPopularityRecommender(data.app_ids, data.user_ids, groups, group_scores, global_scores)
    return FitResult(
        recommender=recommender,
        params={"group_column": column, "group_prior": options.group_popularity_prior, "n_groups": len(group_scores)},
    )


def fit_ease(data: InteractionData, config: Config, options: ModelOptions) -> FitResult:
    """EASE with ``training.ease_lambda`` and ``ease_weight_power``, or the grid point best on validation NDCG@k.

    The grid is every (lambda, power) pair of ``ease_lambda_grid`` x ``ease_weight_power_grid``
    (an empty grid means the single configured value).
    """
    lambdas = sorted({float(value) for value in options.ease_lambda_grid}) or [float(config.training.ease_lambda)]
    powers = sorted({float(value) for value in options.ease_weight_power_grid}) or [options.ease_weight_power]
    grid = [(lam, power) for power in powers for lam in lambdas]
    fallback = popularity_scores(data.app_popularity())
    k = config.training.k
    best: tuple[float, EASERecommender] | None = None
    history: list[dict[str, float]] = []
    for step, (lam, power) in enumerate(grid):
        weights = ease_weights(data.train, lam, power)
        candidate = EASERecommender(data.app_ids, data.user_ids, weights, lam, fallback, power)
        if len(grid) == 1:
            best = (0.0, candidate)
            break
        ndcg = evaluate(candidate, data, k, block_size=options.eval_block_size)[f"ndcg@{k}"]
        history.append({"epoch": step, "ease_lambda": lam, "ease_weight_power": power, f"val/ndcg@{k}": ndcg})
        log.info("EASE lambda=%s power=%s validation ndcg@%d=%.4f", lam, power, k, ndcg)
        if best is None or ndcg > best[0]:
            best = (ndcg, candidate)
    assert best is not None
    recommender = best[1]
    return FitResult(
        recommender=recommender,
        params={
            "ease_lambda": recommender.lam,
            "ease_weight_power": recommender.weight_power,
            "ease_lambda_grid": ",".join(map(str, lambdas)),
            "ease_weight_power_grid": ",".join(map(str, powers)),
        },
        history=history,
    )
