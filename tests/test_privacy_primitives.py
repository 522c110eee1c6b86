"""Pseudonyms, Laplace noise and small-group suppression."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pandas as pd
import pytest

from personalization.config import load_config
from personalization.privacy import (
    MissingKeyError,
    PrivacySettings,
    laplace_noise,
    pseudonymise,
    suppress_small_groups,
)
from personalization.security import InvalidIdentifierError


def test_pseudonym_is_a_keyed_hmac() -> None:
    expected = "p" + hmac.new(b"k1", b"u0000042", hashlib.sha256).hexdigest()[:32]
    assert pseudonymise("u0000042", "k1") == expected
    assert pseudonymise("u0000042", "k2") != expected
    assert len(expected) == 33


def test_pseudonymise_needs_a_key_and_a_valid_id() -> None:
    with pytest.raises(MissingKeyError, match="PE_PRIVACY__HMAC_KEY"):
        pseudonymise("u1", "")
    with pytest.raises(InvalidIdentifierError):
        pseudonymise("../etc/passwd", "k")


def test_laplace_noise_scale_matches_epsilon() -> None:
    rng = np.random.default_rng(0)
    counts = np.full(200_000, 1000.0)
    noisy = laplace_noise(counts, epsilon=0.5, rng=rng)
    # Laplace(0, b) has mean absolute deviation b = sensitivity / epsilon = 2.
    assert np.mean(np.abs(noisy - counts)) == pytest.approx(2.0, rel=0.02)
    assert np.array_equal(laplace_noise(counts[:3], epsilon=0.0), counts[:3])
    assert laplace_noise(np.array([0.0] * 1000), epsilon=0.1, rng=rng).min() == 0.0


def test_small_groups_are_suppressed() -> None:
    assert suppress_small_groups(np.array([3, 10, 11, 0]), k=10).tolist() == [False, True, True, False]


def test_settings_follow_configuration() -> None:
    config = load_config(environ={"PE_PRIVACY__HMAC_KEY": "secret", "PE_PRIVACY__DP_EPSILON": "1.0"})
    settings = PrivacySettings.from_config(config)
    assert settings.anonymization.hash_user_ids is True
    assert settings.anonymization.differential_privacy is True
    assert settings.retention.raw_events == config.privacy.raw_retention_days


# ------------------------------------------------- noise on published counts
def test_noisy_counts_have_the_laplace_scale_and_reruns_repeat() -> None:
    from personalization.privacy import noisy_counts

    counts = np.full(200_000, 1000.0)
    first = noisy_counts(counts, 0.5, "2026-10-14", "popularity.n_users")
    # Laplace(0, b): mean absolute deviation b = sensitivity / epsilon = 2.
    assert np.mean(np.abs(first - counts)) == pytest.approx(2.0, rel=0.02)
    assert np.array_equal(first, noisy_counts(counts, 0.5, "2026-10-14", "popularity.n_users"))  # a rerun
    assert not np.array_equal(first, noisy_counts(counts, 0.5, "2026-10-15", "popularity.n_users"))
    assert not np.array_equal(first, noisy_counts(counts, 0.5, "2026-10-14", "segment_counts.0"))
    assert np.array_equal(noisy_counts(counts[:5], 0.0, "2026-10-14", "t"), counts[:5])
    assert noisy_counts(np.zeros(1000), 0.1, "2026-10-14", "t").min() == 0.0  # clipped at 0


def _popularity(n: int) -> pd.DataFrame:
    return pd.DataFrame({"region": ["DE"] * n, "app_id": [f"a{i:06d}" for i in range(n)],
                         "score": [50.0] * n, "n_users": [100] * n})


def test_published_popularity_is_suppressed_then_noised_reproducibly() -> None:
    from personalization.privacy import publishable_popularity

    config = load_config(environ={})
    config.features.min_group_size = 10
    frame = pd.DataFrame({"region": ["DE", "DE", "FR", "FR"], "app_id": ["a1", "a2", "a1", "a3"],
                          "score": [2.5, 9.75, 40.0, 7.0], "n_users": [3, 10, 50, 12]})
    # Off (the default): only the suppression, true counts.
    assert publishable_popularity(config, frame, "2026-10-14").to_dict("records") == [
        {"region": "DE", "app_id": "a2", "score": 9.75, "n_users": 10},
        {"region": "FR", "app_id": "a1", "score": 40.0, "n_users": 50},
        {"region": "FR", "app_id": "a3", "score": 7.0, "n_users": 12}]

    config.privacy.dp_epsilon = 1.0
    noisy = publishable_popularity(config, frame, "2026-10-14")
    # Suppression uses the true counts: the same three groups, whatever the noise does to n_users.
    assert noisy[["region", "app_id"]].values.tolist() == [["DE", "a2"], ["FR", "a1"], ["FR", "a3"]]
    shuffled = frame.sample(frac=1.0, random_state=3)
    pd.testing.assert_frame_equal(publishable_popularity(config, shuffled, "2026-10-14"), noisy)  # a rerun
    assert (noisy["n_users"] >= 0).all() and (noisy["n_users"] == noisy["n_users"].round()).all()

    # Each of a row's two counts gets epsilon / 2: mean absolute deviation 2 / epsilon = 2.
    big = publishable_popularity(config, _popularity(50_000), "2026-10-14")
    assert np.mean(np.abs(big["n_users"] - 100)) == pytest.approx(2.0, rel=0.03)
    assert np.mean(np.abs(big["score"] - 50.0)) == pytest.approx(2.0, rel=0.03)


def test_scoring_reads_popularity_as_published(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.scoring import load_popularity

    config = load_config(overrides={"paths": {"root": str(tmp_path), "lake_root": str(tmp_path / "lake")},
                                    "features": {"min_group_size": 10}}, environ={})
    for date, rows in (("2026-10-07", 300), ("2026-10-14", 400)):
        folder = tmp_path / "lake" / "gold" / "popularity" / f"date={date}"
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(_popularity(rows), preserve_index=False), folder / "part-0.parquet")
    now, previous = load_popularity(config, "2026-10-14")
    assert now["n_users"].tolist() == [100] * 400 and len(previous) == 300  # dp_epsilon 0: true counts
    config.privacy.dp_epsilon = 2.0
    noisy_now, noisy_previous = load_popularity(config, "2026-10-14")
    again_now, again_previous = load_popularity(config, "2026-10-14")
    assert noisy_now.equals(again_now) and noisy_previous.equals(again_previous)
    assert (noisy_now["n_users"] != 100).any() and (noisy_previous["score"] != 50.0).any()
    # Each partition is noised with its own date's seed (what that night published).
    assert not np.array_equal(noisy_now["n_users"].to_numpy()[:300], noisy_previous["n_users"].to_numpy())
