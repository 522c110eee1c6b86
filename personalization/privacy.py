"""Privacy primitives: the design document's PrivacySettings, pseudonyms, noise, suppression.

- :func:`pseudonymise` turns an app user id into a keyed HMAC-SHA256 pseudonym. The
  key comes from configuration (``PE_PRIVACY__HMAC_KEY``) or an Airflow connection,
  never from code; without the key a pseudonym cannot be linked back to a person.
- :func:`laplace_noise` adds Laplace(0, sensitivity/epsilon) noise to published
  aggregate counts (epsilon-differential privacy for counting queries).
- :func:`suppress_small_groups` drops aggregate rows computed over fewer than k users.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import numpy as np

from personalization.config import Config
from personalization.security import validate_user_id


@dataclass(frozen=True)
class DataCollection:
    behavioral: bool = True
    location: bool = True
    demographics: bool = True
    third_party: bool = False


@dataclass(frozen=True)
class Retention:
    """Days each kind of data is kept."""

    raw_events: int
    aggregated_data: int
    ml_models: int


@dataclass(frozen=True)
class Anonymization:
    hash_user_ids: bool
    remove_ip_addresses: bool
    aggregate_small_groups: bool
    differential_privacy: bool


@dataclass(frozen=True)
class PrivacySettings:
    """The design document's PrivacySettings: a user's collection flags plus the engine's policies."""

    data_collection: DataCollection
    retention: Retention
    anonymization: Anonymization

    @classmethod
    def from_config(cls, config: Config, data_collection: DataCollection | None = None) -> "PrivacySettings":
        privacy = config.privacy
        return cls(
            data_collection=data_collection or DataCollection(),
            retention=Retention(privacy.raw_retention_days, privacy.aggregate_retention_days,
                                privacy.model_retention_days),
            anonymization=Anonymization(
                hash_user_ids=bool(privacy.hmac_key),
                remove_ip_addresses=True,  # ingestion always drops the ip field
                aggregate_small_groups=config.features.min_group_size > 1,
                differential_privacy=privacy.dp_epsilon > 0,
            ),
        )


class MissingKeyError(RuntimeError):
    """Pseudonymisation was asked for without a configured key."""


def pseudonymise(user_id: str, key: str) -> str:
    """Keyed pseudonym of ``user_id``: ``p`` + the first 32 hex digits of HMAC-SHA256(key, id).

    Deterministic for one key (joins keep working), irreversible without it. 128 bits
    make collisions negligible for any realistic number of users.
    """
    if not key:
        raise MissingKeyError("no pseudonymisation key: set PE_PRIVACY__HMAC_KEY or the Airflow connection")
    user_id = validate_user_id(user_id)
    digest = hmac.new(key.encode("utf-8"), user_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return "p" + digest[:32]


def laplace_noise(counts: np.ndarray, epsilon: float, sensitivity: float = 1.0,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Counts plus Laplace(0, sensitivity / epsilon) noise, rounded and clipped at 0.

    ``epsilon <= 0`` disables the noise (returns the counts unchanged).
    """
    counts = np.asarray(counts, dtype=float)
    if epsilon <= 0:
        return counts
    rng = rng or np.random.default_rng()
    noisy = counts + rng.laplace(0.0, sensitivity / epsilon, size=counts.shape)
    return np.clip(np.rint(noisy), 0, None)


def suppress_small_groups(n_users: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the groups that may be published (at least ``k`` distinct users)."""
    return np.asarray(n_users) >= k
