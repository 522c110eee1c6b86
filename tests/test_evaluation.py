"""Ranking metrics against hand-computed values (binary relevance, seen items excluded)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from models import evaluation as E
from models.base import Recommender
from models.data import from_frames

LOG2_3 = math.log2(3)

# Four users, k = 3 (see each expected value below for the arithmetic).
RECOMMENDED = [["a", "b", "c", "d"], ["x", "y", "z"], [], ["p"]]
RELEVANT = [{"a", "c"}, {"z", "w", "v", "u"}, {"q"}, set()]


def test_accuracy_metrics_hand_computed() -> None:
    # user 1: hits at ranks 1 and 3 of 3; user 2: 4 relevant (> k), one hit at rank 3;
    # user 3: empty list; user 4: nothing relevant, so left out of every mean.
    assert E.precision_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert E.recall_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx((1 + 1 / 4 + 0) / 3)
    ndcg_user1 = (1 + 1 / 2) / (1 + 1 / LOG2_3)  # DCG ranks 1,3; ideal: 2 hits
    ndcg_user2 = (1 / 2) / (1 + 1 / LOG2_3 + 1 / 2)  # ideal: min(4, 3) = 3 hits
    assert E.ndcg_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx((ndcg_user1 + ndcg_user2) / 3)
    ap_user1 = (1 / 1 + 2 / 3) / 2
    ap_user2 = (1 / 3) / 3
    assert E.map_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx((ap_user1 + ap_user2) / 3)
    assert E.map_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx(17 / 54)
    assert E.hit_rate_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx(2 / 3)
    assert E.mrr(RECOMMENDED, RELEVANT, 3) == pytest.approx((1 + 1 / 3 + 0) / 3)


def test_metrics_cut_at_k_and_count_duplicates_once() -> None:
    # k = 1 keeps only the first item: user 1 hits, user 2 does not.
    assert E.precision_at_k(RECOMMENDED, RELEVANT, 1) == pytest.approx(1 / 3)
    # A repeated item keeps its first position: top-2 of [a, a, b] is [a, b].
    assert E.precision_at_k([["a", "a", "b"]], [{"b"}], 2) == pytest.approx(1 / 2)
    assert E.ndcg_at_k([["a", "a", "b"]], [{"b"}], 2) == pytest.approx(1 / LOG2_3)
    assert E.mrr([["a", "a", "b"]], [{"b"}]) == pytest.approx(1 / 2)


def test_metrics_without_relevant_users_are_zero_and_inputs_checked() -> None:
    assert E.ndcg_at_k([["a"]], [set()], 10) == 0.0
    assert E.precision_at_k([], [], 10) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        E.precision_at_k([["a"]], [{"a"}], 0)
    with pytest.raises(ValueError, match="users"):
        E.recall_at_k([["a"]], [{"a"}, {"b"}], 5)


def test_beyond_accuracy_metrics() -> None:
    assert E.catalog_coverage([["a", "b"], ["b", "c"]], 10) == pytest.approx(3 / 10)
    assert E.catalog_coverage([["a", "b"], ["b", "c"]], 10, k=1) == pytest.approx(2 / 10)
    assert E.catalog_coverage([], 0) == 0.0
    popularity = {"a": 4, "b": 2, "c": 0}
    # -log2(4/8) = 1, -log2(2/8) = 2, c never seen counts as 1 user: -log2(1/8) = 3.
    assert E.novelty([["a", "b"], ["c"]], popularity, 8) == pytest.approx(2.0)
    categories = {"a": "games", "b": "games", "c": "tools", "d": None}
    # [a, b, c]: 1 same-category pair of 3 -> 2/3; [a, d]: different -> 1; [c] has no pair.
    assert E.intra_list_diversity([["a", "b", "c"], ["a", "d"], ["c"]], categories) == pytest.approx(5 / 6)
    assert E.intra_list_diversity([["a"]], categories) == 0.0
    # Mean popularity per non-empty list: (4 + 2) / 2 = 3 and 0; the empty list is skipped.
    assert E.average_recommended_popularity([["a", "b"], ["c"], []], popularity) == pytest.approx(1.5)


def test_segment_breakdown() -> None:
    table = E.segment_breakdown(RECOMMENDED, RELEVANT, ["s1", "s2", "s1", "s2"], 3)
    assert table["segment"].tolist() == ["s1", "s2"]
    assert table["n_users"].tolist() == [2, 1]  # user 4 (nothing relevant) is not counted
    assert table["precision@3"].tolist() == pytest.approx([(2 / 3 + 0) / 2, 1 / 3])
    assert table["recall@3"].tolist() == pytest.approx([(1 + 0) / 2, 1 / 4])


def test_top_k_indices_breaks_ties_by_column_and_skips_masked() -> None:
    scores = np.array([[0.5, 0.9, 0.5, -np.inf, 0.9], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    top = E.top_k_indices(scores, 5)
    assert top[0].tolist() == [1, 4, 0, 2]
    assert top[1].tolist() == [0, 1, 2, 3, 4]
    assert [row.tolist() for row in E.top_k_indices(scores, 2)] == [[1, 4], [0, 1]]


class FixedScores(Recommender):
    """Test double: returns preset score rows by user id (apps in its own catalogue order)."""

    name = "fixed"

    def __init__(self, app_ids: Sequence[str], rows: dict[str, list[float]]):
        self.app_ids = np.array(app_ids, dtype=object)
        self.user_ids = np.array(sorted(rows), dtype=object)
        self.rows = rows

    def score(self, user_ids: Sequence[str], history: sp.csr_matrix) -> np.ndarray:
        assert history.shape == (len(user_ids), len(self.app_ids))
        return np.array([self.rows[user] for user in user_ids], dtype=np.float32)


def _tiny_data():
    interactions = pd.DataFrame(
        [
            ("u1", "a", 1.0, 1, "train"),
            ("u2", "b", 2.0, 1, "train"),
            ("u1", "b", 1.0, 1, "validation"),
            ("u1", "c", 1.0, 1, "validation"),
            ("u2", "b", 1.0, 1, "validation"),  # already seen in train: not relevant
            ("u3", "d", 1.0, 1, "validation"),
            ("u3", "c", 0.0, 0, "validation"),  # an explicit negative is never relevant
        ],
        columns=["user_id", "app_id", "weight", "label", "split"],
    )
    apps = pd.DataFrame({"app_id": ["a", "b", "c", "d"], "category": ["x", "x", "y", "x"]})
    segments = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "segment_name": ["s1", "s1", "s2"]})
    return from_frames(interactions, app_features=apps, segments=segments)


def test_evaluate_masks_seen_items_and_computes_every_metric() -> None:
    data = _tiny_data()
    model = FixedScores(
        ["a", "b", "c", "d"], {"u1": [0.9, 0.1, 0.8, 0.5], "u2": [1, 1, 1, 1], "u3": [0.1, 0.2, 0.3, 0.3]}
    )
    result = E.evaluate(model, data, k=2)
    # u1: a is seen -> [c, d], relevant {b, c}; u3: tie c/d -> [c, d], relevant {d}; u2 has nothing unseen.
    assert result["n_users"] == 2
    assert result["precision@2"] == pytest.approx(0.5)
    assert result["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert result["ndcg@2"] == pytest.approx((1 / (1 + 1 / LOG2_3) + 1 / LOG2_3) / 2)
    assert result["map@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert result["mrr@2"] == pytest.approx((1 + 1 / 2) / 2)
    assert result["hit_rate@2"] == pytest.approx(1.0)
    assert result["coverage"] == pytest.approx(2 / 4)
    # c and d have no training users: counted as 1 of the 2 training users -> 1 bit each.
    assert result["novelty"] == pytest.approx(1.0)
    assert result["avg_popularity"] == pytest.approx(0.0)
    assert result["diversity"] == pytest.approx(1.0)  # c is "y", d is "x"
    assert result["per_segment"] == [
        {
            "segment": "s1",
            "n_users": 1,
            "precision@2": 0.5,
            "recall@2": 0.5,
            "ndcg@2": pytest.approx(1 / (1 + 1 / LOG2_3)),
            "map@2": 0.5,
            "hit_rate@2": 1.0,
            "mrr@2": 1.0,
        },
        {
            "segment": "s2",
            "n_users": 1,
            "precision@2": 0.5,
            "recall@2": 1.0,
            "ndcg@2": pytest.approx(1 / LOG2_3),
            "map@2": 0.5,
            "hit_rate@2": 1.0,
            "mrr@2": 0.5,
        },
    ]


def test_evaluate_aligns_a_model_with_another_catalogue() -> None:
    data = _tiny_data()
    # The model knows d, c and an app the data lacks, in its own order; a and b it cannot score.
    model = FixedScores(["d", "c", "z"], {"u1": [0.5, 0.8, 9.0], "u3": [0.3, 0.3, 9.0]})
    result = E.evaluate(model, data, k=2, block_size=1)
    assert result["precision@2"] == pytest.approx(0.5)
    assert result["ndcg@2"] == pytest.approx((1 / (1 + 1 / LOG2_3) + 1 / LOG2_3) / 2)


def test_evaluate_rejects_nan_scores() -> None:
    data = _tiny_data()
    model = FixedScores(["a", "b", "c", "d"], {"u1": [np.nan] * 4, "u3": [0.0] * 4})
    with pytest.raises(ValueError, match="NaN"):
        E.evaluate(model, data, k=2)


def test_mlflow_metric_name() -> None:
    assert E.mlflow_metric_name("val/ndcg@10") == "val/ndcg_at_10"
