"""The generic CSV fit-predict entry point."""

from __future__ import annotations

import pandas as pd
import pytest

from models.data import MissingColumnsError
from models.fit_predict import fit_predict
from personalization.config import load_config

TRAIN = pd.DataFrame(
    {
        "user": ["u1", "u1", "u2", "u2", "u3"],
        "item": ["i1", "i2", "i1", "i3", "i1"],
        "rating": [5, 3, 4, 2, 1],
        "timestamp": [1, 2, 3, 4, 5],
    }
)


def test_popularity_top_k_excludes_seen_items(tmp_path) -> None:
    train_csv = tmp_path / "train.csv"
    TRAIN.to_csv(train_csv, index=False)
    users_csv = tmp_path / "users.csv"
    pd.DataFrame({"user": ["u3", "u9", "u3"]}).to_csv(users_csv, index=False)
    out = tmp_path / "out" / "recs.csv"
    result = fit_predict(train_csv, users_csv, "popularity", 2, out, config=load_config(environ={}))
    # Distinct users per item: i1 3, i2 1, i3 1, scaled by (3 + 1); u3 has seen i1; u9 is unknown.
    expected = pd.DataFrame(
        {
            "user": ["u3", "u3", "u9", "u9"],
            "item": ["i2", "i3", "i1", "i2"],
            "score": [0.25, 0.25, 0.75, 0.25],
            "rank": [1, 2, 1, 2],
        }
    )
    pd.testing.assert_frame_equal(result, expected)
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype={"user": str, "item": str}), expected)


def test_neural_model_without_validation_and_bad_inputs(tmp_path) -> None:
    train_csv = tmp_path / "train.csv"
    TRAIN.to_csv(train_csv, index=False)
    config = load_config(
        environ={}, overrides={"paths": {"root": str(tmp_path)}, "training": {"max_epochs": 1, "embedding_dim": 4}}
    )
    result = fit_predict(train_csv, ["u1", "u2"], "cf_bpr", 3, tmp_path / "bpr.csv", config=config)
    # u1 has seen 2 of the 3 items, u2 too: one candidate each.
    assert result[["user", "item", "rank"]].to_dict(orient="list") == {
        "user": ["u1", "u2"],
        "item": ["i3", "i2"],
        "rank": [1, 1],
    }
    with pytest.raises(MissingColumnsError, match="timestamp"):
        TRAIN.drop(columns=["timestamp"]).to_csv(tmp_path / "bad.csv", index=False)
        fit_predict(tmp_path / "bad.csv", ["u1"], "popularity", 1, tmp_path / "x.csv", config=config)
    with pytest.raises(ValueError, match="unknown model"):
        fit_predict(train_csv, ["u1"], "nope", 1, tmp_path / "x.csv", config=config)
