"""Generic fit-predict on plain CSV files, outside the lake and MLflow.

Input: a training CSV with columns ``user, item, rating, timestamp`` (every row is a
positive interaction; ``rating`` is kept as its weight, ``timestamp`` is unused) and
the users to recommend for (a list, or a CSV with a ``user`` column). Output: a CSV
``user, item, score, rank`` with each user's top-k items they have not rated, rank 1
best. Users absent from the training file get the model's cold-start ranking.
Hyperparameters come from the configuration; nothing is tuned (there is no
validation split), so the neural models keep their last epoch.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.common import model_options
from models.data import MissingColumnsError, from_frames, interactions_frame
from models.evaluation import top_k_indices
from models.train import fitter
from personalization.config import Config, load_config

TRAIN_COLUMNS = ("user", "item", "rating", "timestamp")


def _read_users(users_csv_or_list: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    if isinstance(users_csv_or_list, (str, os.PathLike)) and Path(users_csv_or_list).suffix.lower() == ".csv":
        frame = pd.read_csv(users_csv_or_list, dtype={"user": str})
        if "user" not in frame.columns:
            raise MissingColumnsError(f"{users_csv_or_list} needs a 'user' column; it has {list(frame.columns)}")
        return list(dict.fromkeys(frame["user"].astype(str)))
    if isinstance(users_csv_or_list, str):
        raise ValueError(f"users must be a .csv path or a list of user ids, got {users_csv_or_list!r}")
    return list(dict.fromkeys(str(user) for user in users_csv_or_list))


def fit_predict(
    train_csv: str | os.PathLike[str],
    users_csv_or_list: str | os.PathLike[str] | Sequence[str],
    model_name: str,
    k: int,
    out_csv: str | os.PathLike[str],
    config: Config | None = None,
) -> pd.DataFrame:
    """Fit ``model_name`` on ``train_csv``, write each user's top-k unseen items to ``out_csv`` and return them."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    config = config or load_config()
    ratings = pd.read_csv(train_csv, dtype={"user": str, "item": str})
    missing = [name for name in TRAIN_COLUMNS if name not in ratings.columns]
    if missing:
        raise MissingColumnsError(f"{train_csv} lacks column(s) {missing}; expected {list(TRAIN_COLUMNS)}")
    empty = ratings.iloc[0:0]
    data = from_frames(interactions_frame(ratings, empty, weight_column="rating"))
    fit_model = fitter(model_name)
    with tempfile.TemporaryDirectory(prefix="fit-predict-") as workdir:
        extra = {"workdir": workdir} if model_name in ("cf_bpr", "two_tower") else {}
        recommender = fit_model(data, config, model_options(config), **extra).recommender

    users = _read_users(users_csv_or_list)
    rows = pd.Index(data.user_ids).get_indexer(users)
    train = data.train.tocsr()
    blocks = []
    block_size = config.scoring.block_size
    for start in range(0, len(users), block_size):
        block_users = users[start : start + block_size]
        block_rows = rows[start : start + block_size]
        # Users missing from the training file have an empty history row.
        history = sp.vstack(
            [train[row] if row >= 0 else sp.csr_matrix((1, data.n_apps), dtype=np.float32) for row in block_rows]
        ).tocsr()
        scores = np.array(recommender.score(block_users, history), dtype=np.float32, copy=True)
        seen_rows, seen_cols = history.nonzero()
        scores[seen_rows, seen_cols] = -np.inf
        for user, row_scores, top in zip(block_users, scores, top_k_indices(scores, k), strict=True):
            blocks.append(
                pd.DataFrame(
                    {
                        "user": user,
                        "item": data.app_ids[top],
                        "score": row_scores[top].astype(float),
                        "rank": np.arange(1, len(top) + 1),
                    }
                )
            )
    result = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame(columns=["user", "item", "score", "rank"])
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    result.to_csv(out_csv, index=False)
    return result
