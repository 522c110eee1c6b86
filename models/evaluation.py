"""Offline ranking evaluation: metric functions and ``evaluate(recommender, data, k)``.

Conventions shared by every metric here (binary relevance):
- ``recommended``: one ranked list of item ids per user, best first. Only the first
  ``k`` entries count; a repeated item counts once (its first position).
- ``relevant``: one collection of relevant item ids per user, aligned with
  ``recommended``. Users with no relevant item are left out of the accuracy
  averages (they cannot be hit); when no user has a relevant item the metric is 0.0.
- Seen items must already be excluded from both sides; :func:`evaluate` does that.
- Ties in scores are broken by catalogue position (lower column first), so a ranking
  is a deterministic function of the scores.

Metric names in result dicts use ``"ndcg@10"`` style keys; MLflow cannot store ``@``,
so :func:`mlflow_metric_name` turns them into ``"ndcg_at_10"``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.base import Recommender
from models.common import shared_positions

if TYPE_CHECKING:  # pragma: no cover - import for type checkers only
    from models.data import InteractionData

RankedLists = Sequence[Sequence[Hashable]]
RelevantSets = Sequence[Collection[Hashable]]


# ------------------------------------------------------------------ per-user core
def _dedupe_top_k(items: Sequence[Hashable], k: int) -> list[Hashable]:
    """First ``k`` distinct items of a ranked list (a repeat keeps its first position)."""
    seen: set[Hashable] = set()
    top: list[Hashable] = []
    for item in items:
        if item in seen:
            continue
        seen.add(item)
        top.append(item)
        if len(top) == k:
            break
    return top


def _check_inputs(recommended: RankedLists, relevant: RelevantSets, k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(recommended) != len(relevant):
        raise ValueError(f"recommended has {len(recommended)} users but relevant has {len(relevant)}")


def per_user_metrics(recommended: RankedLists, relevant: RelevantSets, k: int) -> dict[str, np.ndarray]:
    """Accuracy metrics of every user, NaN for users without relevant items.

    Returns float64 arrays (one value per user, all in [0, 1]) under the keys
    ``precision``, ``recall``, ``ndcg``, ``map``, ``hit_rate`` and ``mrr``:
    - precision = hits in top-k / k;
    - recall = hits in top-k / |relevant|;
    - ndcg = DCG / ideal DCG with gain 1 / log2(rank + 1) and ideal = min(|relevant|, k) hits;
    - map = sum of precision@rank at each hit rank / min(|relevant|, k) (AP@k);
    - hit_rate = 1 if any hit in top-k;
    - mrr = 1 / rank of the first hit within top-k, 0 without a hit.
    """
    _check_inputs(recommended, relevant, k)
    n_users = len(recommended)
    names = ("precision", "recall", "ndcg", "map", "hit_rate", "mrr")
    out = {name: np.full(n_users, np.nan) for name in names}
    # Discounts for ranks 1..k, reused for every user.
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for user, (ranked, truth) in enumerate(zip(recommended, relevant, strict=True)):
        truth_set = set(truth)
        if not truth_set:
            continue
        top = _dedupe_top_k(ranked, k)
        hits = np.array([item in truth_set for item in top], dtype=bool)
        n_hits = int(hits.sum())
        ideal_hits = min(len(truth_set), k)
        out["precision"][user] = n_hits / k
        out["recall"][user] = n_hits / len(truth_set)
        out["ndcg"][user] = float(discounts[: len(top)][hits].sum() / discounts[:ideal_hits].sum())
        hit_ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the hits
        precision_at_hits = np.arange(1, n_hits + 1) / hit_ranks
        out["map"][user] = float(precision_at_hits.sum() / ideal_hits)
        out["hit_rate"][user] = 1.0 if n_hits else 0.0
        out["mrr"][user] = 1.0 / hit_ranks[0] if n_hits else 0.0
    return out


def _mean_defined(values: np.ndarray) -> float:
    """Mean over users that have a value (non-NaN); 0.0 when none has."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else 0.0


# ------------------------------------------------------------------ accuracy
def precision_at_k(recommended: RankedLists, relevant: RelevantSets, k: int) -> float:
    """Mean over users of hits@k / k. Range [0, 1]; a user with fewer than k relevant items cannot reach 1."""
    return _mean_defined(per_user_metrics(recommended, relevant, k)["precision"])


def recall_at_k(recommended: RankedLists, relevant: RelevantSets, k: int) -> float:
    """Mean over users of hits@k / |relevant|. Range [0, 1]."""
    return _mean_defined(per_user_metrics(recommended, relevant, k)["recall"])


def ndcg_at_k(recommended: RankedLists, relevant: RelevantSets, k: int) -> float:
    """Mean binary NDCG@k (ideal list holds min(|relevant|, k) hits). Range [0, 1]."""
    return _mean_defined(per_user_metrics(recommended, relevant, k)["ndcg"])


def map_at_k(recommended: RankedLists, relevant: RelevantSets, k: int) -> float:
    """Mean average precision@k, normalised by min(|relevant|, k). Range [0, 1]."""
    return _mean_defined(per_user_metrics(recommended, relevant, k)["map"])


def hit_rate_at_k(recommended: RankedLists, relevant: RelevantSets, k: int) -> float:
    """Fraction of users with at least one relevant item in the top k. Range [0, 1]."""
    return _mean_defined(per_user_metrics(recommended, relevant, k)["hit_rate"])


def mrr(recommended: RankedLists, relevant: RelevantSets, k: int | None = None) -> float:
    """Mean reciprocal rank of the first relevant item within the first ``k`` (default: whole list). Range [0, 1]."""
    if k is None:
        k = max((len(items) for items in recommended), default=1) or 1
    return _mean_defined(per_user_metrics(recommended, relevant, k)["mrr"])


# ------------------------------------------------------------------ beyond accuracy
def catalog_coverage(recommended: RankedLists, catalog_size: int, k: int | None = None) -> float:
    """Distinct items in all top-k lists / catalogue size. Range [0, 1]; 0.0 for an empty catalogue."""
    if catalog_size <= 0:
        return 0.0
    distinct = {item for items in recommended for item in (items if k is None else items[:k])}
    return len(distinct) / catalog_size


def novelty(
    recommended: RankedLists,
    item_popularity: Mapping[Hashable, float],
    n_users: int,
    k: int | None = None,
) -> float:
    """Mean self-information -log2(n_i / n_users) over every recommended slot, in bits.

    ``n_i`` is the number of training users who interacted with item i. Items never
    seen in training count as seen by one user (the most novel finite value), so the
    range is [0, log2(n_users)]. Returns 0.0 when nothing was recommended.
    """
    if n_users <= 0:
        return 0.0
    bits = [
        -math.log2(max(float(item_popularity.get(item, 0.0)), 1.0) / n_users)
        for items in recommended
        for item in (items if k is None else items[:k])
    ]
    return float(np.mean(bits)) if bits else 0.0


def intra_list_diversity(
    recommended: RankedLists, item_category: Mapping[Hashable, Hashable], k: int | None = None
) -> float:
    """Mean over lists of the share of item pairs from different categories. Range [0, 1].

    Lists with fewer than two items have no pairs and are left out; items without a
    known category share the category ``None``. Returns 0.0 when no list has a pair.
    """
    per_list: list[float] = []
    for items in recommended:
        top = list(items if k is None else items[:k])
        if len(top) < 2:
            continue
        counts = Counter(item_category.get(item) for item in top)
        n = len(top)
        same_pairs = sum(count * (count - 1) / 2 for count in counts.values())
        per_list.append(1.0 - same_pairs / (n * (n - 1) / 2))
    return float(np.mean(per_list)) if per_list else 0.0


def average_recommended_popularity(
    recommended: RankedLists, item_popularity: Mapping[Hashable, float], k: int | None = None
) -> float:
    """Mean over non-empty lists of the mean training popularity (users per item) of their items.

    Range [0, number of training users]; unknown items count 0. 0.0 when every list is empty.
    """
    per_list = [
        float(np.mean([float(item_popularity.get(item, 0.0)) for item in top]))
        for items in recommended
        if (top := list(items if k is None else items[:k]))
    ]
    return float(np.mean(per_list)) if per_list else 0.0


def segment_breakdown(
    recommended: RankedLists, relevant: RelevantSets, segments: Sequence[Hashable], k: int
) -> pd.DataFrame:
    """Accuracy per user segment: one row per segment, sorted by segment.

    Columns: ``segment``, ``n_users`` (users with relevant items), ``precision@k``,
    ``recall@k``, ``ndcg@k``, ``map@k``, ``hit_rate@k``, ``mrr@k`` (each in [0, 1]).
    """
    if len(segments) != len(recommended):
        raise ValueError(f"segments has {len(segments)} users but recommended has {len(recommended)}")
    per_user = per_user_metrics(recommended, relevant, k)
    frame = pd.DataFrame({f"{name}@{k}": values for name, values in per_user.items()})
    frame["segment"] = [str(segment) for segment in segments]
    frame = frame[~frame[f"ndcg@{k}"].isna()]
    grouped = frame.groupby("segment", sort=True)
    table = grouped.mean()
    table.insert(0, "n_users", grouped.size())
    return table.reset_index()


# ------------------------------------------------------------------ ranking
def top_k_indices(scores: np.ndarray, k: int) -> list[np.ndarray]:
    """Column indices of the k best finite scores of each row, best first.

    Ties keep catalogue order (lower column first). Non-finite scores (``-inf`` marks
    masked items) are never returned, so a row may yield fewer than k indices.
    """
    scores = np.asarray(scores)
    # A stable sort of the negated scores keeps lower columns first among equal scores.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1)
    finite = np.isfinite(top_scores)
    return [row[mask] for row, mask in zip(order, finite, strict=True)]


def mlflow_metric_name(name: str) -> str:
    """MLflow-safe metric name: ``"val/ndcg@10"`` -> ``"val/ndcg_at_10"``."""
    return name.replace("@", "_at_")


def score_in_data_columns(
    recommender: Recommender,
    user_ids: Sequence[str],
    history: sp.csr_matrix,
    data_app_ids: np.ndarray,
) -> np.ndarray:
    """Score users on the data's catalogue even when the model knows another catalogue.

    ``history`` is in the data's column order. Apps the model does not know score
    ``-inf`` (the model cannot recommend them). Returns float32 ``[len(user_ids), len(data_app_ids)]``.
    """
    if np.array_equal(recommender.app_ids, data_app_ids):
        return np.asarray(recommender.score(user_ids, history), dtype=np.float32)
    data_positions, model_positions = shared_positions(data_app_ids, recommender.app_ids)
    n_model = len(recommender.app_ids)
    # Re-express the history in the model's column order (apps it does not know are dropped).
    to_model = sp.csr_matrix(
        (np.ones(len(data_positions), dtype=np.float32), (data_positions, model_positions)),
        shape=(len(data_app_ids), n_model),
    )
    model_history = sp.csr_matrix(history @ to_model, dtype=np.float32)
    model_scores = np.asarray(recommender.score(user_ids, model_history), dtype=np.float32)
    scores = np.full((len(user_ids), len(data_app_ids)), -np.inf, dtype=np.float32)
    scores[:, data_positions] = model_scores[:, model_positions]
    return scores


def evaluation_users(data: InteractionData) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rows of users with at least one unseen validation positive, and those positives.

    Ground truth for a user is the validation positives minus the items already in
    the user's training history (seen items are excluded from both sides).
    """
    # Sparse set algebra over the stored entries (whatever their values): one pass, no per-user loop.
    validation = _pattern(data.validation)
    unseen = (validation - validation.multiply(_pattern(data.train))).tocsr()
    unseen.eliminate_zeros()
    unseen.sum_duplicates()  # sorted, distinct columns per row
    counts = np.diff(unseen.indptr)
    rows = np.flatnonzero(counts > 0).astype(np.int64)
    truth = np.split(unseen.indices.astype(np.int32, copy=False), unseen.indptr[1:-1])
    return rows, [truth[row] for row in rows]


def sample_evaluation_users(data: InteractionData, max_users: int, seed: int) -> InteractionData:
    """``data`` with its validation matrix cut to a seeded uniform sample of ``max_users`` of the
    users :func:`evaluation_users` scores; ``data`` itself when ``max_users`` <= 0 or there are no
    more users than that. Per-epoch validation and the blend's weight search use it."""
    rows, _ = evaluation_users(data)
    if max_users <= 0 or len(rows) <= max_users:
        return data
    sample = np.sort(np.random.default_rng(seed).choice(rows, size=max_users, replace=False))
    keep = np.zeros(data.n_users, dtype=np.float32)
    keep[sample] = 1.0
    validation = sp.csr_matrix(data.validation.multiply(keep[:, None]))
    validation.eliminate_zeros()
    return dataclasses.replace(data, validation=validation)


def _pattern(matrix: sp.spmatrix) -> sp.csr_matrix:
    """The stored entries of ``matrix`` as 1.0 (duplicates merged), float64 CSR."""
    csr = sp.csr_matrix(matrix)
    pattern = sp.csr_matrix((np.ones(csr.nnz), csr.indices, csr.indptr), shape=csr.shape)
    pattern.sum_duplicates()
    pattern.data[:] = 1.0
    return pattern


def rank_users(
    recommender: Recommender,
    data: InteractionData,
    rows: np.ndarray,
    k: int,
    block_size: int = 1024,
) -> list[np.ndarray]:
    """Top-k data-column indices for the given user rows, training items masked.

    Users are scored ``block_size`` at a time, so peak memory is about
    ``block_size x n_apps`` float32 scores.
    """
    train = data.train.tocsr()
    ranked: list[np.ndarray] = []
    for start in range(0, len(rows), block_size):
        block = rows[start : start + block_size]
        history = train[block]
        scores = score_in_data_columns(recommender, data.user_ids[block].tolist(), history, data.app_ids)
        scores = np.array(scores, dtype=np.float32, copy=True)
        if not np.all(np.isfinite(scores) | np.isneginf(scores)):
            raise ValueError(f"{recommender.name} returned NaN or +inf scores")
        # Seen items are masked here, never inside the model (see Recommender.score).
        seen_rows, seen_cols = history.nonzero()
        scores[seen_rows, seen_cols] = -np.inf
        ranked.extend(top_k_indices(scores, k))
    return ranked


def evaluate(
    recommender: Recommender,
    data: InteractionData,
    k: int = 10,
    block_size: int = 1024,
) -> dict[str, Any]:
    """Validation metrics of one recommender on ``data`` (train history in, validation out).

    Returns a JSON-able dict with ``precision@k``, ``recall@k``, ``ndcg@k``,
    ``map@k``, ``hit_rate@k``, ``mrr@k`` (all [0, 1]), ``coverage`` ([0, 1], over
    the data's catalogue), ``novelty`` (bits), ``avg_popularity`` (training users per
    recommended app), ``diversity`` ([0, 1]; only when the data has app categories),
    ``n_users`` (evaluated users), and ``per_segment`` (list of row dicts; only when
    the data has user segments).
    """
    rows, truth = evaluation_users(data)
    ranked = rank_users(recommender, data, rows, k, block_size=block_size)
    per_user = per_user_metrics(ranked, truth, k)
    result: dict[str, Any] = {f"{name}@{k}": _mean_defined(values) for name, values in per_user.items()}
    popularity = data.app_popularity()
    popularity_by_column = {column: float(count) for column, count in enumerate(popularity)}
    result["coverage"] = catalog_coverage(ranked, data.n_apps, k)
    result["novelty"] = novelty(ranked, popularity_by_column, max(int((data.train.getnnz(axis=1) > 0).sum()), 1), k)
    result["avg_popularity"] = average_recommended_popularity(ranked, popularity_by_column, k)
    categories = data.app_categories()
    if categories is not None:
        result["diversity"] = intra_list_diversity(ranked, dict(enumerate(categories.tolist())), k)
    result["n_users"] = int(len(rows))
    if data.user_segments is not None and len(rows):
        table = segment_breakdown(ranked, truth, data.user_segments[rows].tolist(), k)
        result["per_segment"] = table.to_dict(orient="records")
    return result


def scalar_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The float-valued entries of an :func:`evaluate` result (drops tables and counts)."""
    return {
        name: float(value)
        for name, value in result.items()
        if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and name != "n_users"
    }
