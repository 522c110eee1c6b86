"""Surfaces, similar apps, trending, explanations and cold-app blending on tiny hand-made data."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from models import rules
from models import surfaces as surf
from models.scoring import blend_cold_apps, capped_capacity


def make_catalog(categories, text=None, developer=None, allowed=None, release_day=None, pop_7d=None, pop_30d=None):
    n = len(categories)
    names = sorted(set(categories))
    return surf.Catalog(
        app_ids=np.array([f"a{j}" for j in range(n)], dtype=object),
        names=np.array([f"App {j}" for j in range(n)], dtype=object),
        categories=names,
        category=np.array([names.index(c) for c in categories]),
        developer=np.arange(n) if developer is None else np.asarray(developer),
        price=np.zeros(n),
        age_rating=np.full(n, 4.0),
        regions=[None] * n,
        release_day=np.full(n, -1) if release_day is None else np.asarray(release_day),
        text_unit=None if text is None else rules.unit_rows(np.asarray(text, dtype=np.float32)),
        allowed=np.ones(n, dtype=bool) if allowed is None else np.asarray(allowed),
        pop_7d=np.zeros(n) if pop_7d is None else np.asarray(pop_7d, dtype=float),
        pop_30d=np.zeros(n) if pop_30d is None else np.asarray(pop_30d, dtype=float),
    )


def test_similar_apps_hybrid_of_coinstalls_and_content():
    catalog = make_catalog(["games", "music", "music"])
    cooc = np.array([[20, 5, 0], [5, 20, 0], [0, 0, 0]], dtype=np.float32)
    frame, neighbours, scores = surf.similar_apps(catalog, cooc, n=2)
    # (0,1): cosine 5/20 = 0.25, w = 20/(20+20) = 0.5, content 0 -> 0.125
    # (1,2): app 2 has no installs -> w = 0, content (same category) 1 -> 1.0; (0,2): 0 -> no neighbour.
    assert neighbours.tolist() == [[1, -1], [2, 0], [1, -1]]
    assert scores == pytest.approx(np.array([[0.125, 0.0], [1.0, 0.125], [1.0, 0.0]]))
    assert frame.loc[frame["app_id"] == "a1", ["rank", "similar_app_id"]].values.tolist() == [[1, "a2"], [2, "a0"]]


def test_similar_apps_never_points_to_self_or_denylisted():
    catalog = make_catalog(["games", "music", "music"], allowed=[True, True, False])
    cooc = np.array([[20, 5, 0], [5, 20, 0], [0, 0, 0]], dtype=np.float32)
    frame, neighbours, _ = surf.similar_apps(catalog, cooc, n=2)
    assert neighbours.tolist() == [[1, -1], [0, -1], [1, -1]]
    assert set(frame["similar_app_id"]) == {"a0", "a1"}
    assert (frame["app_id"] != frame["similar_app_id"]).all()


def test_trending_uses_regional_growth_and_suppresses_small_groups():
    catalog = make_catalog(["g", "g", "g"], pop_7d=[7, 14, 0], pop_30d=[30, 30, 30])
    now = pd.DataFrame({"region": ["US-CA"] * 3, "app_id": ["a0", "a1", "a2"],
                        "score": [10.0, 4.0, 100.0], "n_users": [20, 20, 3]})
    before = pd.DataFrame({"region": ["US-CA"] * 2, "app_id": ["a0", "a1"], "score": [10.0, 1.0],
                           "n_users": [20, 20]})
    ranked, trend = surf.trending_by_region(now, before, catalog, min_group_size=10)["US-CA"]
    # median score s0 = 7: a0 (10+7)/(10+7) = 1 -> 10; a1 (4+7)/(1+7) = 1.375 -> 5.5; a2 suppressed (3 users).
    assert ranked.tolist() == [0, 1]
    assert trend == pytest.approx([10.0, 5.5])
    ranked, trend = surf.trending_by_region(now, None, catalog, min_group_size=10)["US-CA"]
    # store-wide growth (pop_7d/7)/(pop_30d/30): a0 1 -> 10, a1 2 -> 8.
    assert ranked.tolist() == [0, 1]
    assert trend == pytest.approx([10.0, 8.0])


def test_fill_from_ranked_skips_used_ineligible_and_developer_overflow():
    used = {1}
    kept = surf.fill_from_ranked(np.array([0, 1, 2, 3, 4]), np.array([5.0, 4, 3, 2, 1]),
                                 np.array([True, True, False, True, True]), used, n=3,
                                 developer=np.array([0, 9, 9, 0, 0]), max_per_developer=2)
    assert kept == [(0, 5.0), (3, 2.0)]
    assert used == {0, 1, 3}


def test_because_you_liked_anchors_by_weight_and_deduplicates():
    neighbours = np.array([[1, 2, 3], [0, 2, 3], [3, 0, 1], [2, 0, 1]])
    neighbour_scores = np.array([[0.9, 0.8, 0.7], [0.9, 0.5, 0.4], [0.9, 0.8, 0.7], [0.6, 0.5, 0.05]])
    eligible = np.array([False, True, True, True])  # app 0 is in the history
    used = {2}  # app 2 is already on for_you
    out = surf.because_you_liked(np.array([0, 3]), np.array([1.0, 5.0]), neighbours, neighbour_scores,
                                 eligible, used, anchors=2, per_anchor=1)
    # anchor 3 (weight 5) first: 2 used, 0 ineligible, 1 below the 0.1 similarity floor;
    # anchor 0: 1 (0.9) kept.
    assert out == [(1, 0.9, 0)]


def test_explanation_names_the_most_similar_history_app():
    catalog = make_catalog(["games", "music", "games", "music"],
                           text=[[1, 0], [0, 1], [0.9, 0.1], [0.2, 1.0]])
    anchors = surf.explain_with_history(catalog, np.array([2, 3]), np.array([0, 1]), np.array([1.0, 1.0]))
    assert anchors.tolist() == [0, 1]
    assert set(anchors.tolist()) <= {0, 1}
    assert surf.explain_with_history(catalog, np.array([2]), np.array([], dtype=np.int64),
                                     np.array([])).tolist() == [-1]


def test_recommended_categories_and_search_boosts():
    categories = ["games", "music", "news"]
    top = surf.recommended_categories(np.array([3.0, 1.0, -2.0]), [1, 1, 2, 0], categories)
    # interest share [0.75, 0.25, 0]; list share [0.25, 0.5, 0.25]; score = mean of both.
    assert top == [("games", 0.5), ("music", 0.375), ("news", 0.125)]
    assert surf.search_boosts(np.array([3.0, 1.0, -2.0]), categories) == [("games", 1.75), ("music", 1.25)]
    assert surf.search_boosts(np.zeros(3), categories) == []


def test_suggested_queries_own_first_then_k_anonymous_segment_queries():
    queries = pd.DataFrame({
        "user_pos": [0, 0, 1, 2, 2, 3],
        "query": ["chess", "maps", "chess", "chess", "secret diary", "secret diary"],
        "count": [1, 3, 1, 2, 1, 1],
        "last_day": [10, 5, 9, 9, 9, 9],
    })
    segments = np.array(["s1", "s1", "s1", "s2"], dtype=object)
    popular = surf.popular_queries_by_segment(queries, segments, min_users=2)
    # "chess" has 3 users in s1; "secret diary" 1 user in s1 and 1 in s2: never suggested to others.
    assert popular == {"s1": ["chess"]}
    ordered = surf.order_queries(queries)
    assert ordered["query"].tolist()[:2] == ["maps", "chess"]  # user 0: 3 searches before 1
    own = ordered.loc[ordered["user_pos"] == 0, "query"].tolist()
    assert surf.suggested_queries(own, popular["s1"]) == ["maps", "chess"]
    assert surf.suggested_queries([], ["a", "b", "c"], n=2) == ["a", "b"]


def test_new_apps_window():
    day = (dt.date(2026, 10, 31) - dt.date(1970, 1, 1)).days
    catalog = make_catalog(["g"] * 4, release_day=[day - 30, day - 29, day, -1])
    assert surf.is_new(catalog, dt.date(2026, 10, 31)).tolist() == [False, True, True, False]


def test_cold_apps_get_a_blended_content_score():
    scores = np.array([[1.0, 3.0, 0.0, 0.0]], dtype=np.float32)
    cold = np.array([False, False, True, True])
    # warm mean 2, std 1; app 2 cos 1, app 3 cos 0, model score 0 (z = -2).
    blended = blend_cold_apps(scores.copy(), cold, np.array([[1.0, 0.0]]))
    assert blended[0].tolist() == pytest.approx([1.0, 3.0, 2 + 0.5 * -2 + 0.5 * 3.0, 2 + 0.5 * -2])


def test_capacity_under_the_developer_cap():
    eligible = np.array([[True, True, True, True], [True, False, False, False]])
    assert capped_capacity(eligible, np.array([0, 0, 0, 1]), cap=2).tolist() == [3, 1]


def test_fill_ranked_block_walks_each_users_list_with_its_own_rules():
    # Two users, apps 0..4; user 0 may not see app 2, user 1 already has app 0 on another surface.
    blocked = np.array([[False, False, True, False, False], [True, False, False, False, False]])
    ranked = np.array([[0, 1, 2, 3, 4], [0, 2, 4, -1, -1]])
    scores = np.array([[5.0, 4, 3, 2, 1], [9.0, 8, 0.05, 0, 0]])
    picks, kept = surf.fill_ranked_block(ranked, scores, blocked, n=2, developer=np.array([0, 0, 1, 1, 1]),
                                         max_per_developer=1, min_score=0.1)
    # user 0: 0 (dev 0), 1 skipped (dev 0 full), 2 blocked, 3 kept; user 1: 0 blocked, 2 kept, 4 below 0.1.
    assert picks.tolist() == [[0, 3], [2, -1]]
    assert kept.tolist() == [[5.0, 2.0], [8.0, 0.0]]
    assert blocked.tolist() == [[True, False, True, True, False], [True, False, True, False, False]]


def test_block_forms_match_the_per_user_forms():
    catalog = make_catalog(["games", "music", "games", "music", "news"],
                           text=[[1, 0], [0, 1], [0.9, 0.1], [0.2, 1.0], [0.7, 0.7]])
    history = np.array([0, 3, 1, 4]), np.array([2.0, 2.0, 1.0, 3.0])  # user 0: apps 0, 3; user 1: apps 1, 4
    apps, weights = surf.sorted_histories(np.array([0, 2, 4]), *history)
    assert apps.tolist() == [[0, 3], [4, 1]] and weights.tolist() == [[2.0, 2.0], [3.0, 1.0]]
    recommended = np.array([[2, 1, -1], [0, 2, 3]])
    anchors = surf.explain_block(catalog, recommended, apps)
    assert anchors.tolist() == [[0, 3, -1], [4, 4, 1]]
    for user, (lo, hi) in enumerate([(0, 2), (2, 4)]):
        valid = recommended[user] >= 0
        assert surf.explain_with_history(catalog, recommended[user, valid], history[0][lo:hi],
                                         history[1][lo:hi]).tolist() == anchors[user, valid].tolist()
    weights = np.array([[3.0, 1.0, -2.0], [0.0, 0.0, 0.0]])
    codes, values = surf.recommended_categories_block(weights, np.array([[1, 1, 2, 0], [2, -1, -1, -1]]), 3)
    assert [(int(c), round(float(v), 6)) for c, v in zip(codes[1], values[1], strict=True) if c >= 0] == [(2, 0.5)]
    names = ["games", "music", "news"]
    assert surf.recommended_categories(weights[0], [1, 1, 2, 0], names) == [
        (names[c], round(float(v), 6)) for c, v in zip(codes[0], values[0], strict=True) if c >= 0]
    codes, boosts = surf.search_boosts_block(weights)
    assert codes.tolist() == [[0, 1, -1], [-1, -1, -1]] and boosts[0, :2].tolist() == [1.75, 1.25]
