"""InteractionData construction, the lake loader and the benchmark splitters."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from models.data import (
    MissingColumnsError,
    from_frames,
    interactions_frame,
    load_training_data,
    stratified_split,
)
from personalization.config import Config
from personalization.lake import Lake

INTERACTIONS = pd.DataFrame(
    [
        ("u2", "b", "2026-10-01T10:00:00Z", 2.0, 1, "train", "extra"),
        ("u2", "b", "2026-10-03T10:00:00Z", 1.5, 1, "train", "extra"),  # a repeat: weights add up
        ("u1", "a", "2026-10-03T09:00:00Z", 1.0, 1, "train", "extra"),
        ("u1", "c", "2026-10-02T09:00:00Z", 0.0, 0, "train", "extra"),  # explicit negative
        ("u1", "b", "2026-10-04T09:00:00Z", 1.0, 1, "validation", "extra"),
        ("u1", "b", "2026-10-04T10:00:00Z", 3.0, 1, "validation", "extra"),  # still relevance 1
    ],
    columns=["user_id", "app_id", "event_ts", "weight", "label", "split", "unused_column"],
)


def test_from_frames_builds_exact_matrices() -> None:
    apps = pd.DataFrame(
        {"app_id": ["d", "a", "b", "c"], "category": ["x", "y", "y", None], "price": [0.0, 1.0, 2.0, 3.0]}
    )
    users = pd.DataFrame({"user_id": ["u1", "u2", "u9"], "sessions": [3, 4, 5], "country": ["DE", "FR", "US"]})
    segments = pd.DataFrame({"user_id": ["u2"], "segment_id": [1], "segment_name": ["casual"]})
    data = from_frames(INTERACTIONS, app_features=apps, user_features=users, segments=segments, date="2026-10-04")

    assert data.user_ids.tolist() == ["u1", "u2"]
    assert data.app_ids.tolist() == ["a", "b", "c", "d"]  # d has no interaction but is in the catalogue
    assert data.train.toarray().tolist() == [[1.0, 0.0, 0.0, 0.0], [0.0, 3.5, 0.0, 0.0]]
    assert data.validation.toarray().tolist() == [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    assert data.negatives.toarray().tolist() == [[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    # Newest training day is 2026-10-03: only the positives of that day.
    assert data.recent.toarray().tolist() == [[1.0, 0.0, 0.0, 0.0], [0.0, 1.5, 0.0, 0.0]]
    assert data.app_features["price"].tolist() == [1.0, 2.0, 3.0, 0.0]
    assert data.app_categories().tolist() == ["y", "y", "unknown", "x"]
    assert list(data.user_features.columns) == ["sessions"]  # non-numeric columns dropped
    assert data.user_features["sessions"].tolist() == [3.0, 4.0]
    assert data.user_segments.tolist() == [None, "casual"]
    assert data.app_popularity().tolist() == [1, 1, 0, 0]
    assert data.summary() == {"n_users": 2, "n_apps": 4, "n_train": 2, "n_validation": 1, "n_negatives": 1}
    assert len(data.version()) == 12


def test_missing_required_column_is_named() -> None:
    with pytest.raises(MissingColumnsError, match=r"gold/interactions lacks required column\(s\) \['label'\]"):
        from_frames(INTERACTIONS.drop(columns=["label"]))
    bad_split = INTERACTIONS.assign(split="test")
    with pytest.raises(ValueError, match="unknown split values"):
        from_frames(bad_split)


def test_load_training_data_reads_the_date_partitions(tmp_config: Config) -> None:
    lake = Lake(tmp_config)
    for table, frame in (
        ("interactions", INTERACTIONS.assign(event_ts=pd.to_datetime(INTERACTIONS["event_ts"], utc=True))),
        ("app_features", pd.DataFrame({"app_id": ["a", "b", "c", "e"], "category": ["x", "x", "y", "y"]})),
    ):
        for date in ("2026-10-03", "2026-10-04"):
            path = lake.partition(lake.gold(table), date)
            frame_for_date = frame if date == "2026-10-04" else frame.head(1)
            os.makedirs(path, exist_ok=True)
            frame_for_date.to_parquet(f"{path}/part-0.parquet", index=False)
    data = load_training_data(tmp_config)  # newest partition by default
    assert data.date == "2026-10-04"
    assert data.app_ids.tolist() == ["a", "b", "c", "e"]
    assert data.train.nnz == 2 and data.user_features.shape == (2, 0) and data.user_segments is None
    older = load_training_data(tmp_config, "2026-10-03")
    assert older.user_ids.tolist() == ["u2"]
    with pytest.raises(FileNotFoundError, match="gold/interactions"):
        load_training_data(tmp_config, "2026-09-30")


def test_stratified_split_keeps_ratio_per_group_and_is_seeded() -> None:
    ratings = pd.DataFrame(
        {"user": ["1"] * 4 + ["2"] * 8, "item": [str(i) for i in range(12)], "rating": 1.0, "timestamp": 0}
    )
    train, test = stratified_split(ratings, 0.75, seed=42)
    assert train.groupby("user").size().to_dict() == {"1": 3, "2": 6}
    assert test.groupby("user").size().to_dict() == {"1": 1, "2": 2}
    assert sorted(train["item"].tolist() + test["item"].tolist(), key=int) == [str(i) for i in range(12)]
    # Same seed, same draw: the published procedure ranks rows by np.random.seed(seed).rand(n).
    draws = np.random.RandomState(42).rand(12)
    expected_test_user1 = str(int(np.argmax(draws[:4])))
    assert test[test["user"] == "1"]["item"].tolist() == [expected_test_user1]
    again, _ = stratified_split(ratings, 0.75, seed=42)
    assert again.equals(train)


def test_interactions_frame_marks_splits() -> None:
    train = pd.DataFrame({"user": ["1"], "item": ["9"], "cnt": [4]})
    test = pd.DataFrame({"user": ["2"], "item": ["8"], "cnt": [1]})
    frame = interactions_frame(train, test, weight_column="cnt")
    assert frame.to_dict(orient="records") == [
        {"user_id": "1", "app_id": "9", "weight": 4.0, "label": 1, "split": "train"},
        {"user_id": "2", "app_id": "8", "weight": 1.0, "label": 1, "split": "validation"},
    ]
