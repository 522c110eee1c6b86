"""Batch scoring end to end on a tiny hand-made lake (models/scoring.py).

The champion is a test double with fixed per-app scores (a legitimate Recommender
subclass), so every for_you list below is computed by hand in the comments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from models.base import Recommender
from models.scoring import score_users
from personalization.config import load_config

D = "2026-10-10"
APPS = [f"a{j:02d}" for j in range(1, 13)]
#: Champion score of each app: a01 = 12 ... a12 = 1.
FIXED = {app: float(13 - j) for j, app in enumerate(APPS, start=1)}


class FixedScores(Recommender):
    """Scores every user with the same per-app values; catalogue order deliberately reversed."""

    name = "fixed"

    def __init__(self, scores: dict[str, float]):
        self.app_ids = np.array(sorted(scores, reverse=True), dtype=object)
        self.user_ids = np.array([], dtype=object)
        self.values = np.array([scores[a] for a in self.app_ids], dtype=np.float32)

    def score(self, user_ids: Sequence[str], history: sp.csr_matrix) -> np.ndarray:
        assert history.shape == (len(user_ids), len(self.app_ids))
        return np.tile(self.values, (len(user_ids), 1))


def _write(root: Path, table: str, frame: pd.DataFrame, partition: str = f"date={D}") -> None:
    folder = root / table / partition
    folder.mkdir(parents=True, exist_ok=True)
    # Microsecond timestamps, as Spark writes them (Spark cannot read nanosecond Parquet timestamps).
    frame.to_parquet(folder / "part-0.parquet", index=False, coerce_timestamps="us", allow_truncated_timestamps=True)


def build_lake(lake: Path) -> None:
    #            category dev   price  age regions  text vector       release
    apps = [
        ("a01", "games", "d1", 0.0, 4, None, [1.0, 0.0, 0.0], "2025-01-01"),
        ("a02", "games", "d1", 0.0, 4, None, [1.0, 0.0, 0.0], "2025-01-01"),
        ("a03", "games", "d1", 0.0, 4, None, [0.9, 0.1, 0.0], "2025-01-01"),
        ("a04", "games", "d2", 0.0, 17, None, [1.0, 0.0, 0.0], "2025-01-01"),
        ("a05", "music", "d3", 0.0, 4, None, [0.0, 1.0, 0.0], "2025-01-01"),
        ("a06", "music", "d3", 2.99, 4, None, [0.0, 1.0, 0.0], "2025-01-01"),
        ("a07", "music", "d4", 0.0, 4, ["DE"], [0.0, 1.0, 0.0], "2025-01-01"),
        ("a08", "news", "d5", 0.0, 4, None, [0.0, 0.0, 1.0], "2025-01-01"),
        ("a09", "news", "d6", 0.0, 4, None, [0.0, 0.0, 1.0], "2025-01-01"),  # denylisted
        ("a10", "news", "d7", 0.0, 4, None, [0.0, 0.2, 1.0], "2026-10-05"),  # new, no interactions
        ("a11", "games", "d8", 0.0, 4, None, [1.0, 0.1, 0.0], "2026-10-07"),  # new, no interactions
        ("a12", "music", "d9", 0.0, 9, None, [0.1, 1.0, 0.0], "2025-01-01"),
    ]
    pop_30d = [100, 90, 80, 70, 60, 50, 40, 30, 20, 0, 0, 10]
    _write(lake / "gold", "app_features", pd.DataFrame({
        "app_id": [a[0] for a in apps], "category": [a[1] for a in apps], "developer_id": [a[2] for a in apps],
        "price": [a[3] for a in apps], "rating": 4.0, "pop_7d": [p / 4 for p in pop_30d], "pop_30d": pop_30d,
        "freshness_days": 0, "age_rating": [a[4] for a in apps], "regions": [a[5] for a in apps],
        "text_vec": [a[6] for a in apps],
    }))
    _write(lake / "silver", "apps", pd.DataFrame({
        "app_id": [a[0] for a in apps], "name": [f"App {a[0][1:]}" for a in apps],
        "release_date": pd.to_datetime([a[7] for a in apps]).date,
    }))
    users = [
        # user behav  loc    country region   age      signup        installed  segment
        ("u1", True, True, "US", "US-CA", "25-34", "2026-01-01", ["a02"], "s1"),
        ("u2", False, True, "US", "US-CA", "18-24", "2026-01-01", ["a05"], "s2"),
        ("u3", False, False, "US", "US-NY", "13-17", "2026-01-01", [], "s2"),
        ("u4", True, True, "US", "US-CA", "25-34", "2026-10-07", [], "s1"),  # new, no history
        ("u5", True, True, "US", "US-CA", "25-34", "2026-01-01", [], "s1"),  # deleted
        ("u6", True, True, "US", "US-CA", "25-34", "2025-01-01", [], "s2"),  # inactive
        ("u7", True, True, "DE", "DE-BE", "35-44", "2026-01-01", [], "s1"),  # buyer
        ("u9", True, False, "US", "US-NY", "45-54", "2026-01-01", [], "s1"),
        ("u10", True, True, "US", "US-NY", "25-34", "2026-01-01", [], "s2"),
    ]
    _write(lake / "gold", "profiles", pd.DataFrame({
        "user_id": [u[0] for u in users], "consent_behavioral": [u[1] for u in users],
        "consent_location": [u[2] for u in users], "country": [u[3] for u in users],
        "region": [u[4] for u in users], "age_group": [u[5] for u in users],
        "signup_date": [u[6] for u in users], "installed_apps": [u[7] for u in users],
    }))
    _write(lake / "gold", "segments", pd.DataFrame({
        "user_id": [u[0] for u in users], "segment_id": [int(u[8][1]) for u in users],
        "segment_name": [u[8] for u in users]}))
    history = [("u1", "a01", 2.0), ("u1", "a05", 1.0), ("u1", "a08", 1.0), ("u7", "a01", 1.0), ("u7", "a08", 1.0),
               ("u9", "a01", 1.0), ("u5", "a10", 1.0)] + [
        ("u10", app, 1.0) for app in ("a02", "a03", "a04", "a06", "a07", "a09", "a12")]
    interactions = pd.DataFrame(history, columns=["user_id", "app_id", "weight"]).assign(
        label=1, split="train", event_ts=pd.Timestamp("2026-10-09T12:00:00Z"))
    negative = pd.DataFrame({"user_id": ["u9"], "app_id": ["a12"], "weight": [0.0], "label": [0], "split": ["train"],
                             "event_ts": [pd.Timestamp("2026-10-09T12:00:00Z")]})
    _write(lake / "gold", "interactions", pd.concat([interactions, negative], ignore_index=True))
    _write(lake / "gold", "popularity", pd.DataFrame([
        ("US-CA", "news", "a08", 50.0, 12), ("US-CA", "music", "a05", 40.0, 15), ("US-CA", "music", "a12", 30.0, 11),
        ("US-CA", "games", "a03", 20.0, 1), ("US-CA", "music", "a06", 60.0, 20), ("DE-BE", "music", "a07", 80.0, 10),
        ("US-NY", "games", "a02", 10.0, 5),
    ], columns=["region", "category", "app_id", "score", "n_users"]))
    events = [(user, "app_open", "a01") for user in ("u1", "u2", "u3", "u5", "u7", "u9", "u10")]
    # u3 has no behavioural consent (no profile history) but installed a08: never recommend it back.
    events += [("u7", "purchase", "a01"), ("u1", "search", None), ("u9", "search", None), ("u3", "install", "a08")]
    _write(lake / "silver", "events", pd.DataFrame({
        "user_id": [e[0] for e in events], "event_type": [e[1] for e in events], "app_id": [e[2] for e in events],
        "duration_s": 60.0, "amount": [2.99 if e[1] == "purchase" else None for e in events], "local_hour": 20,
        "query": ["puzzle games" if e[1] == "search" else None for e in events], "landing_date": D,
    }), partition=f"event_date={D}")
    editorial = lake / "raw" / "editorial"
    editorial.mkdir(parents=True, exist_ok=True)
    (editorial / "featured.jsonl").write_text("".join(
        json.dumps({"app_id": app, "position": i}) + "\n" for i, app in
        enumerate(["a09", "a07", "a12", "a01", "a03", "a06"], start=1)))
    (editorial / "denylist.jsonl").write_text(json.dumps({"app_id": "a09", "reason": "policy"}) + "\n")


def make_config(root: Path, **scoring):
    return load_config(overrides={
        "paths": {"root": str(root), "var_dir": str(root / "var"), "lake_root": str(root / "lake"),
                  "results_dir": str(root / "results")},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'var' / 'mlflow.db'}",
                   "artifact_root": str(root / "var" / "mlartifacts")},
        "scoring": {"top_n": 3, "diversity": "none", "candidate_pool": 5, "block_size": 2, **scoring},
        "features": {"min_group_size": 2},
    }, environ={})


def read(root: Path, table: str) -> pd.DataFrame:
    return pq.read_table(root / "lake" / "gold" / table / f"date={D}").to_pandas()


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    build_lake(root / "lake")
    result = score_users(make_config(root), D, deleted_users=["u5"], champion=(FixedScores(FIXED), "7"))
    return root, result


def for_you(recs: pd.DataFrame, user: str) -> list[str]:
    rows = recs[(recs["user_id"] == user) & (recs["surface"] == "for_you")].sort_values("rank")
    return rows["app_id"].tolist()


def test_every_active_user_gets_exactly_top_n_hand_computed(scored):
    root, result = scored
    recs = read(root, "recommendations")
    # u1: owned a01 a05 a08 (history) + a02 (installed); a06 paid, a07 DE-only, a09 denylisted.
    #     a11 is new: blended = 7.3 + 3.2265 * (0.5 * -1.6426 + 1.5 * cos 0.853) = 8.78 < a04 (9).
    assert for_you(recs, "u1") == ["a03", "a04", "a11"]
    # u10 (history a02 a03 a04 a06 a07 a09 a12): profile cos with a11 0.753 -> 8.30 passes a05 (8).
    assert for_you(recs, "u10") == ["a01", "a11", "a05"]
    # u7 buys (paid allowed) and owns a01 and a08: profile (1, 0, 1)/sqrt 2, a11 cos 0.704 -> 8.06 < a04.
    assert for_you(recs, "u7") == ["a02", "a03", "a04"]
    # u9 owns only a01 (games): a11 cos 0.995 -> 7.3 + 3.2265 * (-0.8213 + 1.4925) = 9.47 > a04 (9).
    # Its ignored impression of a12 (label 0) is not an exclusion.
    assert for_you(recs, "u9") == ["a02", "a03", "a11"]
    counts = recs[recs["surface"] == "for_you"].groupby("user_id").size().to_dict()
    assert counts == {u: 3 for u in ("u1", "u2", "u3", "u4", "u7", "u9", "u10")}
    assert result["users_scored"] == 7 and result["users_total"] == 8 and result["users_deleted_excluded"] == 1
    assert result["model_version"] == "7" and set(recs["model_version"]) == {"7"}
    assert set(recs["generated_for"].astype(str)) == {D}
    active = pq.read_table(result["expected"]["active_users"]).to_pandas()["user_id"]
    assert sorted(active) == ["u1", "u10", "u2", "u3", "u4", "u7", "u9"]


def test_consent_fallbacks_and_their_reasons(scored):
    root, _ = scored
    recs = read(root, "recommendations")
    u2 = recs[(recs["user_id"] == "u2") & (recs["surface"] == "for_you")].sort_values("rank")
    # No behavioural consent, location consent: US-CA popularity (a06 paid, a05 installed), then store-wide.
    assert u2[["app_id", "reason"]].values.tolist() == [
        ["a08", "Popular in US-CA"], ["a12", "Popular in US-CA"], ["a02", "Popular on the store"]]
    u3 = recs[(recs["user_id"] == "u3") & (recs["surface"] == "for_you")].sort_values("rank")
    # No consent at all: store-wide popularity only; a04 is 17+ for a 13-17 user; a08 installed (events).
    assert u3[["app_id", "reason"]].values.tolist() == [
        ["a05", "Popular on the store"], ["a12", "Popular on the store"], ["a02", "Popular on the store"]]
    assert set(recs.loc[recs["user_id"].isin(["u2", "u3"]), "surface"]) <= {
        "for_you", "trending_in_your_area", "new_for_you", "featured"}
    assert set(recs.loc[recs["user_id"].isin(["u2", "u3"]), "variant"]) == {"non_personalized"}
    assert "u3" not in set(recs.loc[recs["surface"] == "trending_in_your_area", "user_id"])
    for table in ("recommended_categories", "search_personalization", "suggested_queries"):
        assert not set(read(root, table)["user_id"]) & {"u2", "u3"}


def test_cold_start_user_gets_segment_popularity(scored):
    root, _ = scored
    recs = read(root, "recommendations")
    u4 = recs[(recs["user_id"] == "u4") & (recs["surface"] == "for_you")].sort_values("rank")
    # Segment s1 members with history: u1, u7, u9 -> a01 by 3, a08 by 2, a05 by 1.
    assert u4[["app_id", "reason", "variant"]].values.tolist() == [
        ["a01", "Popular with people like you", "cold_start"], ["a08", "Popular with people like you", "cold_start"],
        ["a05", "Popular with people like you", "cold_start"]]


def test_explanations_name_an_app_from_the_users_history(scored):
    root, _ = scored
    recs = read(root, "recommendations")
    history = {"u1": {"a01", "a05", "a08"}, "u7": {"a01", "a08"}, "u9": {"a01"},
               "u10": {"a02", "a03", "a04", "a06", "a07", "a09", "a12"}}
    personal = recs[recs["user_id"].isin(history) & recs["surface"].isin(["for_you", "because_you_liked"])]
    for row in personal.itertuples():
        assert row.reason_app_id in history[row.user_id]
        verb = "use" if row.surface == "for_you" else "liked"
        assert row.reason == f"Because you {verb} App {row.reason_app_id[1:]}"
    u10 = recs[(recs["user_id"] == "u10") & (recs["surface"] == "for_you")].sort_values("rank")
    # a01 ~ a02/a04 (tie: lower position a02); a11 closest to a03's text; a05 ~ a06/a07 (tie: a06).
    assert u10["reason_app_id"].tolist() == ["a02", "a03", "a06"]
    assert u10["reason"].tolist()[0] == "Because you use App 02"


def test_business_rules_and_deduplication_across_home_surfaces(scored):
    root, result = scored
    recs = read(root, "recommendations")
    assert "a09" not in set(recs["app_id"])  # denylisted
    assert "u5" not in set(recs["user_id"]) and "u6" not in set(recs["user_id"])
    assert recs.groupby("user_id")["app_id"].apply(lambda apps: apps.is_unique).all()
    assert not recs[(recs["user_id"] == "u3") & (recs["app_id"] == "a04")].shape[0]  # 17+ for a minor
    assert not recs[(recs["user_id"] != "u7") & (recs["app_id"].isin(["a06", "a07"]))].shape[0]  # paid / DE-only
    exclusions = pq.read_table(result["expected"]["exclusions"]).to_pandas()
    clash = recs.merge(exclusions, on=["user_id", "app_id"])
    assert clash.empty
    owned = set(map(tuple, exclusions.values.tolist()))
    assert ("u1", "a02") in owned  # the profile's installed list counts as owned
    assert ("u3", "a08") in owned  # so do installs in the events of users without behavioural consent
    # Ranks 1..n and scores non-increasing per (user, surface).
    for _, group in recs.groupby(["user_id", "surface"]):
        group = group.sort_values("rank")
        assert group["rank"].tolist() == list(range(1, len(group) + 1))
        assert (np.diff(group["score"].to_numpy()) <= 1e-12).all()


def test_other_surfaces(scored):
    root, _ = scored
    recs = read(root, "recommendations")

    def surface(user, name):
        rows = recs[(recs["user_id"] == user) & (recs["surface"] == name)].sort_values("rank")
        return rows[["app_id", "reason"]].values.tolist()

    # because_you_liked for u1: anchor a01 has no eligible neighbour with similarity >= 0.1;
    # a05 -> a12 (music), a08 -> a10 (news).
    assert recs[(recs["user_id"] == "u1") & (recs["surface"] == "because_you_liked")][
        ["app_id", "reason_app_id"]].values.tolist() == [["a12", "a05"], ["a10", "a08"]]
    # US-CA trends a06 (paid), a08 and a05 (on u4's for_you), a12; a03 has 1 user (suppressed).
    assert surface("u4", "trending_in_your_area") == [["a12", "Trending in your area"]]
    assert surface("u1", "trending_in_your_area") == []  # a12 already on because_you_liked
    # u4 has no history: new apps by store-wide popularity (both 0: catalogue order).
    assert surface("u4", "new_for_you") == [["a10", "New in news"], ["a11", "New in games"]]
    assert surface("u1", "new_for_you") == []  # a11 on for_you, a10 on because_you_liked
    assert surface("u3", "new_for_you") == [["a10", "New in news"], ["a11", "New in games"]]
    # Editorial order for u3: a09 denylisted, a07 DE-only, a12 on for_you, a06 paid.
    assert surface("u3", "featured") == [["a01", "Featured by our editors"], ["a03", "Featured by our editors"]]
    # u7 (history a01, a08): a01's nearest eligible neighbour a11 (0.998), a08's a10 (0.990).
    assert recs[(recs["user_id"] == "u7") & (recs["surface"] == "because_you_liked")].sort_values("rank")[
        ["app_id", "reason", "reason_app_id"]].values.tolist() == [
        ["a11", "Because you liked App 01", "a01"], ["a10", "Because you liked App 08", "a08"]]
    # u10's anchors (a02, a03, a04) have no similar app left that is neither owned nor shown already.
    assert surface("u10", "because_you_liked") == []


def test_similar_apps_categories_queries_and_insights(scored):
    root, result = scored
    similar = read(root, "similar_apps")
    assert set(similar["app_id"]) == set(APPS)
    assert (similar.groupby("app_id").size() <= 10).all()
    assert (similar["app_id"] != similar["similar_app_id"]).all() and "a09" not in set(similar["similar_app_id"])
    categories = read(root, "recommended_categories")
    u1 = categories[categories["user_id"] == "u1"].sort_values("rank")
    assert u1["rank"].tolist() == list(range(1, len(u1) + 1)) and "games" in set(u1["category"])
    boosts = read(root, "search_personalization")
    assert ((boosts["boost"] > 1.0) & (boosts["boost"] <= 2.0)).all()
    queries = read(root, "suggested_queries")
    assert queries[queries["user_id"] == "u1"]["query"].tolist() == ["puzzle games"]
    insights = read(root, "user_insights").set_index("user_id")
    assert sorted(insights.index) == ["u1", "u10", "u2", "u3", "u4", "u6", "u7", "u9"]
    assert insights["engagement_score"].between(0, 100).all() and insights["churn_risk"].between(0, 1).all()
    assert (insights["lifetime_value"] >= 0).all() and insights["best_notification_hour"].between(0, 23).all()
    assert insights.loc["u4", "next_best_action"] == "onboard_new_user"
    assert insights.loc["u6", "engagement_score"] == 0.0
    assert result["rows"]["user_insights"] == 8
    assert result["insights"]["churn_model"] == "poisson_fallback"
    assert result["rows"]["recommendations"] == len(read(root, "recommendations"))


def test_insights_run_logged_to_mlflow(scored):
    root, result = scored
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'var' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("personalization")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'insights'")
    assert [run.info.run_id for run in runs] == [result["insights"]["mlflow_run_id"]]
    assert runs[0].data.params["churn_model"] == "poisson_fallback"


def test_blocked_scoring_matches_one_block_and_reruns_are_idempotent(scored, tmp_path, monkeypatch):
    root, _ = scored
    build_lake(tmp_path / "lake")
    expected = read(root, "recommendations").sort_values(["user_id", "surface", "rank"]).reset_index(drop=True)
    # One block; one block scored 2 rows at a time inside; one user per block.
    for block_size, chunk_rows in ((100, 512), (100, 2), (1, 512)):
        monkeypatch.setattr("models.scoring.SCORE_CHUNK_ROWS", chunk_rows)
        result = score_users(make_config(tmp_path, block_size=block_size), D, deleted_users=["u5"],
                             champion=(FixedScores(FIXED), "7"), log_to_mlflow=False)
        again = read(tmp_path, "recommendations").sort_values(["user_id", "surface", "rank"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(again, expected)
        assert result["blocks"] == (1 if block_size == 100 else 7)


def test_mmr_keeps_n_rows_and_does_not_reduce_diversity(tmp_path):
    build_lake(tmp_path / "lake")
    result = score_users(make_config(tmp_path, diversity="mmr", mmr_lambda=0.3, candidate_pool=20), D,
                         deleted_users=["u5"], champion=(FixedScores(FIXED), "7"), log_to_mlflow=False)
    recs = read(tmp_path, "recommendations")
    assert (recs[recs["surface"] == "for_you"].groupby("user_id").size() == 3).all()
    assert result["diversity"]["ild_after"] >= result["diversity"]["ild_before"]
    # u9 (relevance a02 > a03 > a11, all games): MMR swaps in another category.
    assert for_you(recs, "u9")[0] == "a02"
    assert len(set(for_you(recs, "u9")) & {"a02", "a03", "a11"}) < 3


def test_spark_engine_matches_the_local_engine(scored, tmp_path, spark):
    import sys

    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test double must reach the workers
    root, local = scored
    build_lake(tmp_path / "lake")
    result = score_users(make_config(tmp_path, engine="spark", block_size=4), D, deleted_users=["u5"],
                         champion=(FixedScores(FIXED), "7"), log_to_mlflow=False)
    keys = {"recommendations": ["user_id", "surface", "rank"], "recommended_categories": ["user_id", "rank"],
            "search_personalization": ["user_id", "category"], "suggested_queries": ["user_id", "rank"]}
    for table, key in keys.items():
        expected = read(root, table).sort_values(key).reset_index(drop=True)
        got = read(tmp_path, table).sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert result["rows"] == local["rows"]
    assert result["diversity"] == local["diversity"]
    assert result["blocks"] >= 2  # 7 users in Arrow batches of at most 4


def test_chunks_scored_on_several_threads_match_one_thread(tmp_path, monkeypatch):
    import models.scoring as scoring_module

    # One user per chunk, so a block of 4 users is 4 chunks spread over the threads.
    monkeypatch.setattr(scoring_module, "SCORE_CHUNK_ROWS", 1)
    tables = {}
    for threads in (1, 3):
        root = tmp_path / f"threads{threads}"
        build_lake(root / "lake")
        score_users(make_config(root, block_size=4, threads=threads, diversity="mmr", mmr_lambda=0.5), D,
                    deleted_users=["u5"], champion=(FixedScores(FIXED), "7"), log_to_mlflow=False)
        tables[threads] = read(root, "recommendations").sort_values(["user_id", "surface", "rank"])
    assert len(tables[1]) > 0
    pd.testing.assert_frame_equal(tables[3].reset_index(drop=True), tables[1].reset_index(drop=True))
