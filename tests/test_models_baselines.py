"""Popularity, EASE and the content model on hand-checkable data."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from models.baselines import EASERecommender, ease_weights, fit_ease, fit_popularity, fit_regional_popularity
from models.common import ModelOptions
from models.content import ContentRecommender, app_feature_matrix, fit_content
from models.data import from_frames, toy_frames
from personalization.config import load_config


def _frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "app_id", "weight", "label", "split"])


# Items a, b: users 1 and 4 have both, user 2 only a, user 3 only b.
TWO_ITEMS = _frame(
    [
        ("u1", "a", 1, 1, "train"),
        ("u1", "b", 1, 1, "train"),
        ("u2", "a", 5, 1, "train"),
        ("u3", "b", 1, 1, "train"),
        ("u4", "a", 1, 1, "train"),
        ("u4", "b", 2, 1, "train"),
        ("u2", "b", 1, 1, "validation"),
    ]
)


def test_popularity_scores_distinct_users() -> None:
    data = from_frames(TWO_ITEMS)
    fit = fit_popularity(data, load_config(environ={}), ModelOptions())
    # 3 users each; scaled by (max + 1) = 4.
    scores = fit.recommender.score(["u1", "new"], sp.csr_matrix((2, 2)))
    assert scores.tolist() == [[0.75, 0.75], [0.75, 0.75]]


def test_regional_popularity_shrinks_regions_towards_the_global_share() -> None:
    # Region 1: u1 (a, b), u2 (a); region 2: u3 (b); u4 (a, b) has no known region (0).
    users = pd.DataFrame({"user_id": ["u1", "u2", "u3", "u4"], "country_idx": [1, 1, 2, 0]})
    data = from_frames(TWO_ITEMS, user_features=users)
    fit = fit_regional_popularity(data, load_config(environ={}), ModelOptions(group_popularity_prior=2.0))
    # Global share over the 4 active users: a 3/4, b 3/4.
    # Region 1: a (2 + 2 * 0.75) / (2 + 2) = 0.875, b (1 + 1.5) / 4 = 0.625;
    # region 2: a (0 + 1.5) / 3 = 0.5, b (1 + 1.5) / 3 = 0.8333.
    scores = fit.recommender.score(["u1", "u3", "u4", "new"], sp.csr_matrix((4, 2)))
    np.testing.assert_allclose(scores, [[0.875, 0.625], [0.5, 2.5 / 3], [0.75, 0.75], [0.75, 0.75]], atol=1e-6)
    assert fit.params["n_groups"] == 2
    # deletion removes the user's region, the user then scores like any unknown user
    assert fit.recommender.drop_users(["u3", "nobody"]) == 1
    np.testing.assert_allclose(fit.recommender.score(["u3"], sp.csr_matrix((1, 2))), [[0.75, 0.75]])
    # without the column every user gets the global share
    plain = fit_regional_popularity(from_frames(TWO_ITEMS), load_config(environ={}), ModelOptions())
    assert plain.params["n_groups"] == 0


def test_ease_closed_form_two_items() -> None:
    data = from_frames(TWO_ITEMS)
    # Gram of the binary matrix: aa = 3, bb = 3, ab = 2. For two items B[a, b] = G_ab / (G_aa + lambda).
    weights = ease_weights(data.train, lam=1.0)
    np.testing.assert_allclose(weights, [[0.0, 2 / 4], [2 / 4, 0.0]], atol=1e-6)
    model = EASERecommender(data.app_ids, data.user_ids, weights, 1.0, fallback=np.array([0.1, 0.2], np.float32))
    history = sp.csr_matrix(np.array([[7.0, 0.0], [0.0, 0.0]], dtype=np.float32))  # weights count as 1
    np.testing.assert_allclose(model.score(["u2", "cold"], history), [[0.0, 0.5], [0.1, 0.2]], atol=1e-6)
    with pytest.raises(ValueError):
        ease_weights(data.train, 0.0)


def test_ease_lambda_chosen_on_validation() -> None:
    data = from_frames(**{k: v for k, v in toy_frames().items() if k == "interactions"})
    config = load_config(environ={}, overrides={"training": {"ease_lambda": 3.0, "k": 5}})
    single = fit_ease(data, config, ModelOptions())
    assert single.recommender.lam == 3.0 and single.history == []
    grid = fit_ease(data, config, ModelOptions(ease_lambda_grid=[1000.0, 1.0, 10.0], ease_weight_power_grid=[0.5, 0]))
    assert [(row["ease_lambda"], row["ease_weight_power"]) for row in grid.history] == [
        (1.0, 0.0),
        (10.0, 0.0),
        (1000.0, 0.0),
        (1.0, 0.5),
        (10.0, 0.5),
        (1000.0, 0.5),
    ]
    best = max(grid.history, key=lambda row: row["val/ndcg@5"])
    assert (grid.recommender.lam, grid.recommender.weight_power) == (best["ease_lambda"], best["ease_weight_power"])
    assert grid.params["ease_lambda"] == best["ease_lambda"]


def test_content_features_and_similarity() -> None:
    apps = pd.DataFrame(
        {
            "app_id": ["a", "b", "c", "new"],
            "category": ["games", "games", "tools", "tools"],
            "text_vec": [[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 1.0]],
        }
    )
    features = app_feature_matrix(apps.drop(columns=["app_id"]), category_weight=1.0, numeric_weight=0.0)
    # [unit text | one-hot category] scaled to unit length: a = b = (1, 0, 1, 0) / sqrt 2.
    half = 1 / math.sqrt(2)
    np.testing.assert_allclose(
        features, [[half, 0, half, 0], [half, 0, half, 0], [0, half, 0, half], [0, half, 0, half]], atol=1e-6
    )
    model = ContentRecommender(
        np.array(["a", "b", "c", "new"], dtype=object),
        np.array(["u"], dtype=object),
        features,
        fallback=np.zeros(4, np.float32),
    )
    similar = model.similar(["a", "new"], k=2)
    assert similar.to_dict(orient="records") == [
        {"app_id": "a", "rank": 1, "similar_app_id": "b", "score": pytest.approx(1.0)},
        {"app_id": "a", "rank": 2, "similar_app_id": "c", "score": pytest.approx(0.0)},
        {"app_id": "new", "rank": 1, "similar_app_id": "c", "score": pytest.approx(1.0)},
        {"app_id": "new", "rank": 2, "similar_app_id": "a", "score": pytest.approx(0.0)},
    ]
    # A user who used c gets the never-installed "new" app scored like c itself (cold start reached).
    history = sp.csr_matrix(np.array([[0, 0, 1, 0], [1, 0, 1, 0]], dtype=np.float32))
    np.testing.assert_allclose(model.score(["u", "v"], history), [[0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5]], atol=1e-6)


def test_content_numeric_block_and_fit() -> None:
    apps = pd.DataFrame({"price": [0.0, 10.0], "rating": [5.0, 5.0]})
    features = app_feature_matrix(apps, category_weight=1.0, numeric_weight=1.0)
    # price min-max -> (0, 1), centred -> (-0.5, 0.5); constant rating -> 0; then unit length.
    np.testing.assert_allclose(features, [[-1.0, 0.0], [1.0, 0.0]], atol=1e-6)
    frames = toy_frames()
    data = from_frames(frames["interactions"], app_features=frames["app_features"])
    fit = fit_content(data, load_config(environ={}), ModelOptions())
    assert fit.params["apps_without_features"] == 0
    assert fit.recommender.features.shape[0] == data.n_apps


def test_blend_standardises_and_weights_components() -> None:
    from models.ensemble import BlendRecommender, _standardise_rows, weight_grid

    np.testing.assert_allclose(
        _standardise_rows(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])),
        [[-math.sqrt(1.5), 0.0, math.sqrt(1.5)], [0.0, 0.0, 0.0]],
    )
    assert weight_grid(2, 0.5) == [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]
    assert len(weight_grid(3, 0.25)) == 15
    data = from_frames(TWO_ITEMS)
    popularity = fit_popularity(data, load_config(environ={}), ModelOptions()).recommender  # [0.75, 0.75]
    ease = EASERecommender(
        data.app_ids,
        data.user_ids,
        np.array([[0.0, 1.0], [0.0, 0.0]], np.float32),
        1.0,
        fallback=np.zeros(2, np.float32),
    )
    blend = BlendRecommender([popularity, ease], [0.5, 0.5])
    history = sp.csr_matrix(np.array([[1.0, 0.0]], dtype=np.float32))
    # popularity is constant (z-scores 0); EASE gives [0, 1] -> z-scores [-1, 1], weighted by 0.5.
    np.testing.assert_allclose(blend.score(["u2"], history), [[-0.5, 0.5]])


def test_fit_blend_picks_weights_on_validation() -> None:
    from models.ensemble import fit_blend

    data = from_frames(**{k: v for k, v in toy_frames().items() if k in ("interactions", "app_features")})
    config = load_config(environ={}, overrides={"training": {"ease_lambda": 3.0}})
    options = ModelOptions(blend_models=["popularity", "ease"], blend_weight_step=0.5)
    components = {
        "popularity": fit_popularity(data, config, options).recommender,
        "ease": fit_ease(data, config, options).recommender,
    }
    fit = fit_blend(data, config, options, components=components)
    assert [(row["weight.popularity"], row["weight.ease"]) for row in fit.history] == [
        (1.0, 0.0),
        (0.5, 0.5),
        (0.0, 1.0),
    ]
    best = max(fit.history, key=lambda row: row["val/ndcg@10"])
    assert fit.params["weight.ease"] == best["weight.ease"]
    # The cached weight search (default) and the plain one (no cache budget) agree.
    uncached = fit_blend(
        data,
        config,
        ModelOptions(blend_models=["popularity", "ease"], blend_weight_step=0.5, blend_cache_max_floats=0),
        components=components,
    )
    assert [row["val/ndcg@10"] for row in uncached.history] == pytest.approx(
        [row["val/ndcg@10"] for row in fit.history]
    )
    with pytest.raises(ValueError, match="at least two fitted components"):
        fit_blend(data, config, options, components={"ease": components["ease"]})


def test_blend_search_samples_validation_users_beyond_the_cache_budget() -> None:
    from models.ensemble import _search_data, fit_blend
    from models.evaluation import evaluation_users

    data = from_frames(**{k: v for k, v in toy_frames().items() if k in ("interactions", "app_features")})
    config = load_config(environ={}, overrides={"training": {"ease_lambda": 3.0}})
    all_rows = evaluation_users(data)[0]
    budget = data.n_apps * 2 * 3  # three users' scores for two components
    options = ModelOptions(blend_models=["popularity", "ease"], blend_weight_step=0.5,
                           blend_cache_max_floats=budget, blend_min_search_users=2)
    search = _search_data(data, 2, options)
    rows = evaluation_users(search)[0]
    assert len(all_rows) > 3 and len(rows) == 3 and set(rows) <= set(all_rows)
    assert evaluation_users(_search_data(data, 2, options))[0].tolist() == rows.tolist()  # seeded
    assert (search.validation[rows] != data.validation[rows]).nnz == 0  # their rows are kept whole
    assert _search_data(data, 2, dataclasses.replace(options, blend_min_search_users=4)) is None
    components = {
        "popularity": fit_popularity(data, config, options).recommender,
        "ease": fit_ease(data, config, options).recommender,
    }
    sampled = fit_blend(data, config, options, components=components)
    # The same scores as the plain (uncached) search over exactly the sampled users.
    plain = fit_blend(search, config, dataclasses.replace(options, blend_cache_max_floats=0,
                                                          blend_min_search_users=10**9), components=components)
    assert [row["val/ndcg@10"] for row in sampled.history] == pytest.approx(
        [row["val/ndcg@10"] for row in plain.history]
    )


def test_ease_weight_power_uses_damped_weights() -> None:
    data = from_frames(TWO_ITEMS)  # weights: u1 (1, 1), u2 (5, 0), u3 (0, 1), u4 (1, 2)
    # sqrt weights: G_aa = 1 + 5 + 1 = 7, G_ab = 1 + sqrt 2; B[a, b] = G_ab / (G_aa + 1), B[b, a] = G_ab / (G_bb + 1).
    weights = ease_weights(data.train, lam=1.0, weight_power=0.5)
    np.testing.assert_allclose(weights, [[0.0, (1 + math.sqrt(2)) / 8], [(1 + math.sqrt(2)) / 5, 0.0]], rtol=1e-6)
    model = EASERecommender(data.app_ids, data.user_ids, weights, 1.0, np.zeros(2, np.float32), weight_power=0.5)
    history = sp.csr_matrix(np.array([[4.0, 0.0]], dtype=np.float32))  # sqrt(4) = 2
    np.testing.assert_allclose(model.score(["u"], history), [[0.0, 2 * (1 + math.sqrt(2)) / 8]], rtol=1e-6)
