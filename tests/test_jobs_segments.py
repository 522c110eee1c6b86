"""build_segments: three well separated groups, stable ids across two days, MLflow logging."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pyspark.sql import functions as F

from jobs import build_segments as S
from jobs import columns as C

D1, D2 = "2026-10-10", "2026-10-11"
PROFILE_SCHEMA = (
    "user_id string, behavior_allowed boolean, n_events bigint, frequency bigint, monetary double, "
    "purchase_count bigint, active_days_30 bigint, recency_days int, notification_open_rate double, "
    "trend double, hour_histogram array<double>, category_scores map<string,double>"
)


def _hours(hour: int | None) -> list[float]:
    return [1.0 if h == hour else 0.0 for h in range(24)]


def _profiles() -> list[tuple]:
    rows = []
    for i in range(3):  # paying games players, evenings, many events
        rows.append((f"g{i}", True, 50 + i, 20 + i, 30.0 + i, 3, 20 + i, 0, 0.5, 1.2, _hours(20),
                     {"games": 0.9, "tools": 0.1}))
    for i in range(3):  # free tools users, mornings, few events
        rows.append((f"t{i}", True, 5 + i, 3, 0.0, 0, 3 + i, 5, 0.1, 0.8, _hours(8), {"tools": 1.0}))
    for i in range(3):  # cold start
        rows.append((f"n{i}", True, 0, 0, 0.0, 0, 0, None, 0.0, None, _hours(None), {}))
    rows.append(("x0", False, None, None, None, None, None, None, None, None, None, None))
    return rows


@pytest.fixture(scope="module")
def two_days(spark, tmp_path_factory):
    """Day 1 and day 2 (same users, rows reshuffled) through main(); MLflow on day 1."""
    from personalization.config import load_config
    from personalization.lake import Lake

    root = tmp_path_factory.mktemp("segments")
    config = load_config(
        overrides={
            "paths": {"root": str(root), "lake_root": str(root / "lake")},
            "segments": {"k_min": 2, "k_max": 4},
            "mlflow": {"tracking_uri": f"sqlite:///{root}/mlflow.db", "artifact_root": str(root / "mlartifacts")},
        },
        environ={},
    )
    lake = Lake(config)
    rows = _profiles()
    spark.createDataFrame(rows, PROFILE_SCHEMA).write.parquet(f"{lake.gold('profiles')}/date={D1}")
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    spark.createDataFrame(shuffled, PROFILE_SCHEMA).repartition(3).write.parquet(f"{lake.gold('profiles')}/date={D2}")
    first = S.main(config, D1, spark, log_mlflow=True)
    second = S.main(config, D2, spark, log_mlflow=False)

    def read(table, date):
        return spark.read.parquet(f"{lake.gold(table)}/date={date}")

    return config, first, second, read


def test_k_range():
    assert S.k_range(9, 2, 4) == [2, 3, 4]
    assert S.k_range(3, 4, 8) == [2]  # capped at n_users - 1, at least 2
    assert S.k_range(5, 4, 8) == [4]
    assert S.k_range(2, 4, 8) == []  # too few users to cluster


def test_segments_day_one(two_days):
    _, first, _, read = two_days
    assert first["k"] == 3
    assert set(first["k_curve"]) == {"2", "3", "4"}
    assert first["silhouette"] == max(v for v in first["k_curve"].values() if v is not None)
    segments = {r[C.USER_ID]: (r[C.SEGMENT_ID], r[C.SEGMENT_NAME]) for r in read("segments", D1).collect()}
    groups = {prefix: {segments[f"{prefix}{i}"] for i in range(3)} for prefix in "gtn"}
    assert all(len(members) == 1 for members in groups.values())
    names = {prefix: next(iter(members))[1] for prefix, members in groups.items()}
    assert names == {
        "g": "paying games, evening heavy users",
        "t": "free tools, morning light users",
        "n": "new or dormant users",
    }
    assert sorted(next(iter(m))[0] for m in groups.values()) == [0, 1, 2]
    assert segments["x0"] == (S.NO_CONSENT_SEGMENT_ID, S.NO_CONSENT_SEGMENT_NAME)

    summary = {r[C.SEGMENT_NAME]: r.asDict() for r in read("segment_summary", D1).collect()}
    games = summary["paying games, evening heavy users"]
    assert (games[C.SEGMENT_SIZE], games[C.TOP_CATEGORIES]) == (3, ["games", "tools"])
    assert games[C.MEAN_ENGAGEMENT] == pytest.approx(21 / 30)  # active days 20, 21, 22
    assert summary["free tools, morning light users"][C.TOP_CATEGORIES] == ["tools"]
    assert summary["new or dormant users"][C.TOP_CATEGORIES] == []
    assert summary[S.NO_CONSENT_SEGMENT_NAME][C.SEGMENT_SIZE] == 1

    centroids = {r[C.SEGMENT_NAME]: r for r in read("segment_centroids", D1).collect()}
    games = centroids["paying games, evening heavy users"]
    games_centroid = dict(zip(games[C.FEATURE_NAMES], games[C.CENTROID], strict=True))
    # centroids are stored in original units: the mean of the three players
    assert games_centroid["active_days_30"] == pytest.approx(21.0)
    assert games_centroid["cat_games"] == pytest.approx(0.9)
    assert games_centroid["evening"] == pytest.approx(1.0)


def test_ids_stable_across_days(two_days):
    _, first, second, read = two_days
    day1 = {r[C.USER_ID]: r[C.SEGMENT_ID] for r in read("segments", D1).collect()}
    day2 = {r[C.USER_ID]: r[C.SEGMENT_ID] for r in read("segments", D2).collect()}
    assert day2 == day1
    assert second["segment_ids"] == first["segment_ids"] == [0, 1, 2]


def test_hungarian_matching_keeps_ids_and_adds_new_ones():
    names = ["a", "b"]
    previous = [
        {C.SEGMENT_ID: 5, C.CENTROID: [0.0, 0.0], C.FEATURE_NAMES: names},
        {C.SEGMENT_ID: 7, C.CENTROID: [10.0, 10.0], C.FEATURE_NAMES: names},
    ]
    # today's clusters come out in another order, plus a new one far from both
    today = np.array([[9.5, 10.2], [0.3, -0.1], [-20.0, 30.0]])
    ids = S.match_segment_ids(today, names, np.zeros(2), np.ones(2), previous)
    assert ids == [7, 5, 8]
    # a feature missing yesterday counts as 0; one cluster fewer today keeps the closest id
    ids = S.match_segment_ids(np.array([[10.0, 10.0, 0.0]]), names + ["c"], np.zeros(3), np.ones(3), previous)
    assert ids == [7]


def test_mlflow_run_per_date(two_days):
    import mlflow

    config, first, _, _ = two_days
    mlflow.set_tracking_uri(config.mlflow_tracking_uri)
    experiment = mlflow.get_experiment_by_name("personalization-segments")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    assert [run.info.run_id for run in runs] == [first["mlflow_run_id"]]
    run = runs[0]
    assert run.data.params["k"] == "3" and run.data.tags["as_of"] == D1
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "silhouette")
    assert sorted(m.step for m in history) == [2, 3, 4]


def test_tiny_population_single_segment(spark):
    rows = [r for r in _profiles() if r[0] in ("g0", "t0", "x0")]
    profiles = spark.createDataFrame(rows, PROFILE_SCHEMA)
    result = S.build_segments(profiles, [], 4, 8, 7, 90)
    got = sorted((r[C.USER_ID], r[C.SEGMENT_ID]) for r in result.segments.collect())
    assert got == [("g0", 0), ("t0", 0), ("x0", -1)]
    assert result.clustering.k == 1
    assert result.segments.where(F.col(C.SEGMENT_ID) == 0).count() == 2
