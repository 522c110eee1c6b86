"""Privacy primitives: the design document's PrivacySettings, pseudonyms, noise, suppression.

- :func:`pseudonymise` turns an app user id into a keyed HMAC-SHA256 pseudonym. The
  key comes from configuration (``PE_PRIVACY__HMAC_KEY``) or an Airflow connection,
  never from code; without the key a pseudonym cannot be linked back to a person.
- :func:`laplace_noise` adds Laplace(0, sensitivity/epsilon) noise to published
  aggregate counts (epsilon-differential privacy for counting queries).
- :func:`suppress_small_groups` drops aggregate rows computed over fewer than k users.
- :func:`resolve_hmac_key` finds the key (configuration, Airflow connection, or a
  random key generated once into ``privacy.hmac_key_file``); :func:`load_user_map`
  maps the lake's pseudonyms back to the app's ids for the serving layer.
- :func:`noisy_counts` is :func:`laplace_noise` seeded by the run date and table,
  so a rerun of a date publishes the same noisy counts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from personalization.config import Config
from personalization.security import validate_user_id

log = logging.getLogger("personalization.privacy")

#: Lake table (silver zone) mapping each pseudonym (``user_id``) to the app's id (``app_user_id``).
PSEUDONYM_TABLE = "user_pseudonyms"
#: Column of the mapping table (and of the tombstone) holding the app's own user id.
APP_USER_ID = "app_user_id"
#: Column of the tombstone holding the deleted user's pseudonym.
PSEUDONYM = "pseudonym"
#: HMAC-SHA256 block size in bytes (RFC 2104).
_BLOCK = 64


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
                hash_user_ids=privacy.pseudonymise_user_ids,
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
                  rng: np.random.Generator | None = None, *, integer: bool = True) -> np.ndarray:
    """Counts plus Laplace(0, sensitivity / epsilon) noise, clipped at 0 (rounded when ``integer``).

    ``epsilon <= 0`` disables the noise (returns the counts unchanged). Rounding and
    clipping are post-processing: they keep the epsilon-DP guarantee.
    """
    counts = np.asarray(counts, dtype=float)
    if epsilon <= 0:
        return counts
    rng = rng or np.random.default_rng()
    noisy = counts + rng.laplace(0.0, sensitivity / epsilon, size=counts.shape)
    return np.clip(np.rint(noisy) if integer else noisy, 0, None)


def suppress_small_groups(n_users: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the groups that may be published (at least ``k`` distinct users)."""
    return np.asarray(n_users) >= k


# ------------------------------------------------------------------- the key
def resolve_hmac_key(config: Config, *, create: bool = True) -> str | None:
    """The pseudonymisation key: ``privacy.hmac_key`` (``PE_PRIVACY__HMAC_KEY``), else the password of
    the Airflow connection ``privacy.hmac_conn_id``, else the key file ``privacy.hmac_key_file``.

    The key file is the embedded default (laptop runs, tests): when it is missing and
    ``create`` is true, 32 random bytes (hex) are written to it with mode 0600 and a
    warning says so. ``create=False`` returns None instead (the privacy tools must not
    invent a key that no earlier run used).
    """
    privacy = config.privacy
    if privacy.hmac_key:
        return privacy.hmac_key
    if privacy.hmac_conn_id:
        from airflow.sdk import Connection

        key = Connection.get(privacy.hmac_conn_id).password
        if not key:
            raise MissingKeyError(f"Airflow connection {privacy.hmac_conn_id!r} has no password (the HMAC key)")
        return str(key)
    path = Path(config.resolve(privacy.hmac_key_file))
    if path.exists():
        return _read_key_file(path)
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting at once never write two different keys.
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key_file(path)
    with os.fdopen(handle, "w", encoding="ascii") as key_file:
        key_file.write(secrets.token_hex(32) + "\n")
    log.warning("privacy: generated a random pseudonymisation key in %s (mode 0600); set PE_PRIVACY__HMAC_KEY "
                "or privacy.hmac_conn_id in production and keep it: a new key makes new pseudonyms", path)
    return _read_key_file(path)


def _read_key_file(path: Path) -> str:
    key = path.read_text(encoding="ascii").strip()
    if not key:
        raise MissingKeyError(f"the key file {path} is empty")
    return key


def lake_key(config: Config) -> str | None:
    """The key when ``privacy.pseudonymise_user_ids`` is on (creating the default file), else None."""
    return resolve_hmac_key(config) if config.privacy.pseudonymise_user_ids else None


def hmac_pads(key: str) -> tuple[bytes, bytes]:
    """``(key XOR ipad, key XOR opad)``, the two 64-byte blocks of HMAC-SHA256 (RFC 2104).

    HMAC(k, m) = SHA256(opad_block || SHA256(ipad_block || m)); with the blocks
    precomputed, Spark evaluates the HMAC with its built-in ``sha2`` in the JVM.
    """
    if not key:
        raise MissingKeyError("no pseudonymisation key: set PE_PRIVACY__HMAC_KEY or the Airflow connection")
    raw = key.encode("utf-8")
    if len(raw) > _BLOCK:
        raw = hashlib.sha256(raw).digest()
    raw = raw.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in raw), bytes(b ^ 0x5C for b in raw)


def lake_user_ids(config: Config, user_ids: Iterable[str]) -> list[str]:
    """The ids the lake and models use for the app's ``user_ids`` (pseudonyms when the switch is on)."""
    key = lake_key(config)
    return [pseudonymise(user_id, key) if key else user_id for user_id in user_ids]


# ------------------------------------------------------------- serving map
class UnmappedPseudonymError(ValueError):
    """A pseudonym to publish has no row in the mapping table (it would leak into serving)."""


class UserIdMap:
    """Pseudonym -> app user id, applied to Arrow arrays and id streams before anything reaches serving."""

    def __init__(self, pseudonyms: pa.Array, app_user_ids: pa.Array):
        self.pseudonyms = pc.cast(pseudonyms, pa.string())
        self.app_user_ids = pc.cast(app_user_ids, pa.string())

    def __len__(self) -> int:
        return len(self.pseudonyms)

    def map_array(self, values: pa.Array, *, strict: bool = True) -> pa.Array:
        """App ids for the pseudonyms in ``values`` (nulls stay null).

        ``strict``: an unknown non-null value raises :class:`UnmappedPseudonymError`;
        otherwise it is returned unchanged (expectation sets may hold app ids already).
        """
        values = pc.cast(values, pa.string())
        positions = pc.index_in(values, value_set=self.pseudonyms)
        mapped = self.app_user_ids.take(positions)
        unknown = pc.and_(pc.is_null(positions), pc.is_valid(values))
        if pc.any(unknown).as_py():
            if strict:
                examples = values.filter(unknown).unique().to_pylist()[:3]
                raise UnmappedPseudonymError(
                    f"{pc.sum(unknown).as_py()} user id(s) have no row in silver/{PSEUDONYM_TABLE}, "
                    f"e.g. {examples}: refusing to publish pseudonyms")
            mapped = pc.if_else(unknown, values, mapped)
        return mapped

    def map_rows(self, rows: Iterable[tuple[str, ...]], column: int = 0,
                 batch: int = 10_000) -> Iterator[tuple[str, ...]]:
        """``rows`` with element ``column`` mapped (unknown ids unchanged), streamed in batches."""
        pending: list[tuple[str, ...]] = []

        def flush() -> Iterator[tuple[str, ...]]:
            mapped = self.map_array(pa.array([row[column] for row in pending], pa.string()), strict=False)
            for row, value in zip(pending, mapped.to_pylist(), strict=True):
                yield (*row[:column], value, *row[column + 1:])

        for row in rows:
            pending.append(row)
            if len(pending) >= batch:
                yield from flush()
                pending = []
        if pending:
            yield from flush()


def load_user_map(config: Config, date: str) -> UserIdMap | None:
    """The mapping written by ingestion for ``date`` (``silver/user_pseudonyms/date=D``).

    None when pseudonymisation is off (the lake holds the app's ids). Raises
    FileNotFoundError when it is on and validation has not run for ``date``.
    """
    if not config.privacy.pseudonymise_user_ids:
        return None
    from models.insights import read_table  # the lake reader every serving-side stage uses
    from personalization.lake import Lake

    lake = Lake(config)
    table = read_table(lake.partition(lake.silver(PSEUDONYM_TABLE), date), ["user_id", APP_USER_ID],
                       what=f"silver/{PSEUDONYM_TABLE} for {date}")
    return UserIdMap(table.column("user_id").combine_chunks(), table.column(APP_USER_ID).combine_chunks())


# -------------------------------------------------------------------- noise
def noise_rng(date: str, table: str) -> np.random.Generator:
    """A generator seeded by ``(date, table)``: the same run date always draws the same noise."""
    seed = int.from_bytes(hashlib.sha256(f"{date}|{table}".encode("utf-8")).digest()[:8], "big")
    return np.random.default_rng(seed)


def noisy_counts(counts: np.ndarray, epsilon: float, date: str, table: str,
                 sensitivity: float = 1.0, *, integer: bool = True) -> np.ndarray:
    """:func:`laplace_noise` seeded by the run date and table; ``epsilon <= 0`` returns the counts.

    Apply after small-group suppression (a group is dropped on its true size, then
    its count is noised), so the noise never decides what is published.
    """
    return laplace_noise(counts, epsilon, sensitivity, rng=noise_rng(date, table), integer=integer)


def publishable_popularity(config: Config, popularity: pd.DataFrame, date: str) -> pd.DataFrame:
    """gold/popularity rows as they may reach serving: small groups suppressed, then Laplace noise.

    Rows over fewer than ``features.min_group_size`` distinct users (``n_users``, and
    ``group_users`` when present) are dropped on their true counts. With
    ``privacy.dp_epsilon`` > 0 each kept row's two counts get Laplace noise of
    epsilon / 2 each (sequential composition: epsilon per row): ``n_users`` (distinct
    users, sensitivity 1, rounded) and ``score`` (the decayed count, where one user adds
    at most 1, not rounded); both clipped at 0. The draws are seeded by ``date`` over
    rows sorted by their key, so a rerun of a date publishes the same numbers.
    ``dp_epsilon`` 0 (the default) returns the suppressed rows with their true counts.
    """
    k = int(config.features.min_group_size)
    kept = popularity[popularity["n_users"] >= k]
    if "group_users" in kept.columns:
        kept = kept[kept["group_users"] >= k]
    epsilon = float(config.privacy.dp_epsilon)
    if epsilon <= 0 or kept.empty:
        return kept
    keys = [column for column in ("region", "category", "app_id") if column in kept.columns]
    kept = kept.sort_values(keys, kind="mergesort").reset_index(drop=True)
    return kept.assign(
        n_users=noisy_counts(kept["n_users"].to_numpy(), epsilon / 2, date, "popularity.n_users"),
        score=noisy_counts(kept["score"].to_numpy(), epsilon / 2, date, "popularity.score", integer=False),
    )
