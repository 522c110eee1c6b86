"""Pseudonyms, Laplace noise and small-group suppression."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
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
