"""Experiment assignment (sticky, independent, on target) and the statistics behind reports."""

from __future__ import annotations

import numpy as np
import pytest

from personalization.experiments import (
    Experiment,
    Variant,
    assign,
    bucket,
    compare_means,
    minimum_detectable_effect,
    required_sample_size,
    sample_ratio_mismatch,
)

USERS = [f"u{i:07d}" for i in range(100_000)]
AB = Experiment("champion_vs_popularity", "salt-1", (Variant("control", 50), Variant("treatment", 50)))


def test_assignment_is_sticky_across_calls_and_orders() -> None:
    first = dict(zip(USERS[:5000], assign(USERS[:5000], AB), strict=True))
    reversed_users = USERS[:5000][::-1]
    second = dict(zip(reversed_users, assign(reversed_users, AB), strict=True))
    assert first == second
    # A known value pins the hash, so a change of algorithm (which would reshuffle users) is caught.
    assert bucket("u0000001", "salt-1") == pytest.approx(0.8949270394594752, abs=1e-15)


def test_allocation_within_tolerance_for_100k_ids() -> None:
    experiment = Experiment("three_way", "s3", (Variant("a", 20), Variant("b", 30), Variant("c", 40)), holdout_pct=10)
    arms = assign(USERS, experiment)
    counts = {arm: arms.count(arm) for arm in set(arms)}
    for arm, share in experiment.expected_shares().items():
        assert abs(counts[arm] / len(USERS) - share) < 0.006, (arm, counts[arm])
    assert sample_ratio_mismatch(counts, experiment.expected_shares())["ok"]


def test_two_experiments_are_independent() -> None:
    other = Experiment("diversity", "salt-2", (Variant("mmr", 50), Variant("none", 50)))
    first, second = np.array(assign(USERS, AB)), np.array(assign(USERS, other))
    # Within each arm of the first experiment the second still splits 50/50.
    for arm in ("control", "treatment"):
        share = float(np.mean(second[first == arm] == "mmr"))
        assert abs(share - 0.5) < 0.01, (arm, share)


def test_bad_allocations_are_rejected() -> None:
    with pytest.raises(ValueError, match="sum to 100"):
        Experiment("x", "s", (Variant("a", 60), Variant("b", 60)))
    with pytest.raises(ValueError, match="unique"):
        Experiment("x", "s", (Variant("a", 50), Variant("a", 50)))


def test_compare_means_hand_computed() -> None:
    control, treatment = [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]
    result = compare_means("installs", control, treatment)
    # means 2 and 3, variances 1 and 1: se = sqrt(1/3 + 1/3) = 0.8165; z(0.975) = 1.95996
    assert result.absolute_lift == pytest.approx(1.0)
    assert result.absolute_ci == pytest.approx((1.0 - 1.959964 * 0.816497, 1.0 + 1.959964 * 0.816497), rel=1e-5)
    assert result.relative_lift == pytest.approx(0.5)
    # delta method: sqrt(1/3/4 + 9*1/3/16) = sqrt(0.083333 + 0.1875) = 0.520416
    assert result.relative_ci == pytest.approx((0.5 - 1.959964 * 0.520416, 0.5 + 1.959964 * 0.520416), rel=1e-5)
    # Welch t = 1/0.8165 = 1.2247 with 4 degrees of freedom: two-sided p = 0.2879
    assert result.p_value == pytest.approx(0.2879, abs=1e-3)
    assert not result.significant


def test_broken_allocation_trips_the_srm_check() -> None:
    report = sample_ratio_mismatch({"control": 5200, "treatment": 4800}, AB.expected_shares())
    # chi2 = (200^2 + 200^2) / 5000 = 16
    assert report["chi2"] == pytest.approx(16.0)
    assert report["ok"] is False


def test_sample_size_note_is_consistent() -> None:
    n = required_sample_size(std=1.0, effect=0.1)
    assert n == 1570  # 2 * ((1.959964 + 0.841621) / 0.1)^2 = 1569.8
    assert minimum_detectable_effect(std=1.0, n_per_arm=n) == pytest.approx(0.1, rel=1e-3)
