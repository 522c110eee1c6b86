"""Content-based app-to-app similarity (the design document's ContentBasedModel).

Each app gets one feature vector, the concatenation of
- its ``text_vec`` (description embedding from the feature stage), scaled to unit length;
- a one-hot category, times ``content_category_weight``;
- price and rating min-max scaled over the catalogue and centred, times
  ``content_numeric_weight`` / sqrt(2);
and the vector is scaled to unit length, so similarity = cosine = dot product.

As a Recommender a user's score for an app is its mean cosine similarity to the
apps in the user's history. Features need no interactions, so apps released today
(cold start) are scored like any other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from jobs import columns as C
from models.base import Recommender
from models.common import FitResult, ModelOptions, popularity_scores
from models.data import TEXT_VEC, InteractionData
from models.evaluation import top_k_indices
from personalization.config import Config

NUMERIC_FEATURES = (C.PRICE, C.RATING)


def _text_matrix(app_features: pd.DataFrame) -> np.ndarray | None:
    """Unit-length ``text_vec`` rows ``[n_apps, d]`` (zeros for apps without one), or None."""
    if TEXT_VEC not in app_features.columns:
        return None
    vectors = app_features[TEXT_VEC].tolist()
    width = max((len(v) for v in vectors if v is not None and not (isinstance(v, float) and np.isnan(v))), default=0)
    if width == 0:
        return None
    matrix = np.zeros((len(vectors), width), dtype=np.float32)
    for row, vector in enumerate(vectors):
        if vector is not None and not (isinstance(vector, float) and np.isnan(vector)) and len(vector) == width:
            matrix[row] = np.asarray(vector, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def app_feature_matrix(app_features: pd.DataFrame, category_weight: float, numeric_weight: float) -> np.ndarray:
    """Unit-length content vectors ``[n_apps, d]`` float32 (all-zero rows for apps without features)."""
    blocks: list[np.ndarray] = []
    text = _text_matrix(app_features)
    if text is not None:
        blocks.append(text)
    if C.CATEGORY in app_features.columns and category_weight > 0:
        categories = app_features[C.CATEGORY]
        known = categories.notna().to_numpy()
        codes, _ = pd.factorize(categories)
        onehot = np.zeros((len(categories), max(codes.max(initial=-1) + 1, 1)), dtype=np.float32)
        onehot[np.flatnonzero(known), codes[known]] = category_weight
        blocks.append(onehot)
    numeric_columns = [name for name in NUMERIC_FEATURES if name in app_features.columns]
    if numeric_columns and numeric_weight > 0:
        values = app_features[numeric_columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
        span = np.where(high > low, high - low, 1.0)
        scaled = (values - low) / span
        # Centre so that "both average" adds nothing; unknown values sit at the mean.
        scaled = np.nan_to_num(scaled - np.nanmean(scaled, axis=0), nan=0.0)
        blocks.append((scaled * numeric_weight / np.sqrt(len(numeric_columns))).astype(np.float32))
    if not blocks:
        return np.zeros((len(app_features), 1), dtype=np.float32)
    matrix = np.hstack(blocks).astype(np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


class ContentRecommender(Recommender):
    """Scores = mean cosine similarity to the user's history; :meth:`similar` lists neighbours."""

    name = "content"

    def __init__(self, app_ids: np.ndarray, user_ids: np.ndarray, features: np.ndarray, fallback: np.ndarray):
        self.app_ids = np.asarray(app_ids, dtype=object)
        self.user_ids = np.asarray(user_ids, dtype=object)
        self.features = np.asarray(features, dtype=np.float32)
        self.fallback = np.asarray(fallback, dtype=np.float32)

    def score(self, user_ids: Sequence[str], history: sp.csr_matrix) -> np.ndarray:
        binary = sp.csr_matrix(history, dtype=np.float32, copy=True)
        binary.data[:] = 1.0
        counts = np.asarray(binary.sum(axis=1)).ravel()
        # (H F) F^T never forms the n_apps x n_apps similarity matrix.
        profile = np.asarray(binary @ self.features) / np.maximum(counts, 1.0)[:, None]
        scores = profile @ self.features.T
        empty = counts == 0
        if empty.any():
            scores[empty] = self.fallback
        return scores.astype(np.float32)

    def similar(self, app_ids: Sequence[str] | None = None, k: int = 10, block_size: int = 1024) -> pd.DataFrame:
        """Top-k most similar other apps: ``app_id, rank (1..k), similar_app_id, score (cosine, [-1, 1])``.

        Apps without any content feature have no neighbours (no rows). Unknown ids raise KeyError.
        """
        index = self.app_index()
        rows = (
            np.arange(len(self.app_ids)) if app_ids is None else np.array([index[a] for a in app_ids], dtype=np.int64)
        )
        has_features = np.linalg.norm(self.features, axis=1) > 0
        out: list[tuple[str, int, str, float]] = []
        for start in range(0, len(rows), block_size):
            block = rows[start : start + block_size]
            sims = self.features[block] @ self.features.T
            sims[:, ~has_features] = -np.inf
            sims[np.arange(len(block)), block] = -np.inf  # never similar to itself
            for position, (row, top) in enumerate(zip(block, top_k_indices(sims, k), strict=True)):
                if not has_features[row]:
                    continue
                for rank, column in enumerate(top, start=1):
                    out.append((self.app_ids[row], rank, self.app_ids[column], float(sims[position, column])))
        return pd.DataFrame(out, columns=[C.APP_ID, "rank", "similar_app_id", "score"])


def fit_content(data: InteractionData, config: Config, options: ModelOptions) -> FitResult:
    """Build content vectors from ``data.app_features`` (no training; no hyperparameter search)."""
    features = app_feature_matrix(data.app_features, options.content_category_weight, options.content_numeric_weight)
    # The popularity fallback for empty histories is scaled far below any similarity gap.
    fallback = popularity_scores(data.app_popularity()) * 1e-3
    recommender = ContentRecommender(data.app_ids, data.user_ids, features, fallback)
    return FitResult(
        recommender=recommender,
        params={
            "feature_dim": int(features.shape[1]),
            "category_weight": options.content_category_weight,
            "numeric_weight": options.content_numeric_weight,
            "apps_without_features": int((np.linalg.norm(features, axis=1) == 0).sum()),
        },
    )
