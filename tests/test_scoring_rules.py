"""Business rules and re-ranking (models/rules.py) on tiny hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models import rules

INF = np.inf


def test_user_min_age_maps_groups_and_treats_unknown_as_youngest():
    assert rules.user_min_age(["13-17", "25-34", "55+", None, "unknown"]).tolist() == [13, 25, 55, 13, 13]


def test_age_mask_allows_ratings_up_to_the_users_minimum_age():
    mask = rules.age_mask(np.array([13, 18]), np.array([4.0, 12.0, 17.0, np.nan]))
    # A missing rating counts as 17+: hidden from a 13-year-old, shown to an 18-year-old.
    assert mask.tolist() == [[True, True, False, False], [True, True, True, True]]


def test_availability_by_country_with_empty_meaning_everywhere():
    matrix = rules.availability_matrix([["US"], None, ["de", "FR"], []], ["DE", "FR", "US"])
    assert matrix.tolist() == [
        [False, True, True, True],  # DE
        [False, True, True, True],  # FR
        [True, True, False, True],  # US
        [False, True, False, True],  # unknown country: only apps available everywhere
    ]
    assert rules.region_mask(np.array([2, -1]), matrix).tolist() == [
        [True, True, False, True], [False, True, False, True]]


def test_paid_apps_only_for_buyers_when_enabled():
    price = np.array([0.0, 1.99, np.nan])
    buyer = np.array([True, False])
    assert rules.paid_mask(buyer, price, True).tolist() == [[True, True, True], [True, False, True]]
    assert rules.paid_mask(buyer, price, False).tolist() == [[True, True, True], [True, True, True]]


def test_denylist_and_owned_masks():
    assert rules.denylist_mask(["a", "b", "c"], ["b"]).tolist() == [True, False, True]
    installed = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 0]], dtype=np.float32))
    purchased = sp.csr_matrix(np.array([[0, 0, 0], [0, 0, 2]], dtype=np.float32))
    assert rules.owned_mask(installed, purchased, None, shape=(2, 3)).tolist() == [
        [False, True, True], [True, True, False]]


def test_eligibility_combines_every_rule():
    # apps: 0 free/4+/everywhere, 1 paid, 2 rated 17+, 3 only in DE, 4 denylisted, 5 installed by user 0
    availability = rules.availability_matrix([None, None, None, ["DE"], None, None], ["DE", "US"])
    mask = rules.eligibility(
        min_age=np.array([25, 13]),
        app_age_rating=np.array([4, 4, 17, 4, 4, 4], dtype=float),
        user_country_row=np.array([1, 0]),  # user 0 in US, user 1 in DE
        availability=availability,
        is_buyer=np.array([False, True]),
        app_price=np.array([0, 0.99, 0, 0, 0, 0]),
        paid_only_for_buyers=True,
        allowed_apps=np.array([True, True, True, True, False, True]),
        owned=(sp.csr_matrix(([1.0], ([0], [5])), shape=(2, 6)),),
    )
    assert mask.tolist() == [
        [True, False, True, False, False, False],
        [True, True, False, True, False, True],
    ]


def test_rerank_developer_cap_keeps_relevance_order():
    picked = rules.rerank(np.array([[5.0, 4, 3, 2, 1]]), 3, developer=np.array([[0, 0, 0, 1, 1]]),
                          max_per_developer=2)
    assert picked.tolist() == [[0, 1, 3]]


def test_rerank_category_cap_and_ineligible_padding():
    picked = rules.rerank(np.array([[5.0, 4, 3, 2, 1]]), 3, category=np.array([[0, 0, 1, 1, 2]]),
                          max_per_category=1)
    assert picked.tolist() == [[0, 2, 4]]
    assert rules.rerank(np.array([[3.0, -INF, 1.0]]), 3).tolist() == [[0, 2, -1]]


def test_mmr_trades_relevance_for_novelty():
    relevance = np.array([[1.0, 0.9, 0.5]])
    similarity = np.array([[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    # rel_norm = [1, 0.8, 0]; step 2 with lambda 0.5: item1 0.4 - 0.5 = -0.1 < item2 0 - 0 = 0.
    assert rules.rerank(relevance, 3, similarity=similarity, mmr_lambda=0.5).tolist() == [[0, 2, 1]]
    assert rules.rerank(relevance, 3, similarity=similarity, mmr_lambda=1.0).tolist() == [[0, 1, 2]]


def test_intra_list_diversity_by_category():
    categories = np.array([0, 0, 1])
    lists = np.array([[0, 1, 2], [0, 1, -1], [2, -1, -1]])
    # list 1: pairs (0,1)->0, (0,2)->1, (1,2)->1: 2/3; list 2: (0,1)->0; list 3 skipped (one item).
    assert rules.intra_list_diversity_sum(lists, categories, None) == pytest.approx((2 / 3, 2))
    assert rules.intra_list_diversity(lists, categories, None) == pytest.approx(1 / 3)


def test_pairwise_similarity_blends_category_and_text():
    text = rules.unit_rows(np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]))
    sim = rules.pairwise_similarity(np.array([0, 0, 1]), text, category_weight=0.5)
    assert sim[0, 1] == pytest.approx(0.5 + 0.5 * 0.6)
    assert sim[0, 2] == pytest.approx(0.0)
    assert sim[1, 2] == pytest.approx(0.5 * 0.8)


def test_cap_per_developer_greedy():
    # developer of app j is developer[j]: apps 4, 2 (dev 0) kept, 0 (third of dev 0) dropped, 1 (dev 1) kept.
    assert rules.cap_per_developer([4, 2, 0, 1, 3], np.array([0, 1, 0, 0, 0]), 2) == [4, 2, 1]


def test_pool_similarity_rows_equal_the_full_matrix_and_give_the_same_mmr_lists():
    codes = np.array([[0, 0, 1, 1], [2, 0, 2, 1]])
    text = rules.unit_rows(np.array([[[1, 0], [0.6, 0.8], [0, 1], [1, 1]], [[1, 1], [0, 1], [1, 0], [0.8, 0.6]]],
                                    dtype=np.float32))
    full = rules.pairwise_similarity(codes, text, category_weight=0.5)
    pool = rules.PoolSimilarity(codes, text, category_weight=0.5)
    # Row 0 for user 0 and row 2 for user 1, e.g. user 1: sim(2, 0) = 0.5 * 1 + 0.5 * cos 0.7071.
    assert pool.rows(np.array([0, 2])) == pytest.approx(np.stack([full[0, 0], full[1, 2]]))
    assert pool.rows(np.array([0, 2]))[1, 0] == pytest.approx(0.5 + 0.5 * 2 ** -0.5)
    relevance = np.array([[4.0, 3.0, 2.0, 1.0], [4.0, 3.5, 3.0, -INF]])
    # User 0: rel_norm [1, 2/3, 1/3, 0]; after 0, objectives 1: 1/3 - 0.4, 2: 1/6 - 0, 3: 0 - 0.177 -> 2;
    # then 1: 1/3 - 0.4 beats 3: 0 - 0.427. User 1: after 0, 1: 0.25 - 0.177 beats 2: 0 - 0.427.
    assert rules.rerank(relevance, 3, similarity=pool, mmr_lambda=0.5).tolist() == \
        rules.rerank(relevance, 3, similarity=full, mmr_lambda=0.5).tolist() == [[0, 2, 1], [0, 1, 2]]
