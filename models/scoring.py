"""Nightly batch scoring: every active user against the catalogue, in bounded memory.

``score_users(config, date)`` reads the gold tables of ``date``, computes the
insights (:mod:`models.insights`), loads the champion by alias and streams the
active users through it in blocks of ``config.scoring.block_size``: one score
matrix ``[block, n_apps]`` per block, business rules as a boolean mask
(:mod:`models.rules`), a candidate pool of ``config.scoring.candidate_pool`` by
``torch.topk``, diversity re-ranking, explanations and the other surfaces
(:mod:`models.surfaces`). Each block's rows are appended to Parquet writers as
row groups, so peak memory depends on the block size and the catalogue, not on
the number of users (per-user metadata aside: ids, flags and a few floats each).

Who is scored:
- users in ``gold/profiles`` minus deleted users (the ``deleted_users`` argument
  plus any ``silver/deleted_users`` table with a ``user_id`` column: the hook for
  privacy deletions);
- *active* users get recommendations: any event at all (a notification received
  counts: it may bring the user back to the store) in the last
  ``profiles.window_days`` days up to ``D``, or a signup in that window (new users
  must see something on day one);
- every non-deleted user gets a ``user_insights`` row (inactive users are the ones
  the re-engagement action is for).

Consent: users without behavioural consent get non-personalised lists (regional
popularity "Popular in <region>" with location consent, otherwise store-wide
"Popular on the store"), no because_you_liked, categories, search boosts or
query suggestions. Users with consent but no history (cold start) get their
segment's popular apps ("Popular with people like you"), then regional, then
store-wide popularity. New apps with no interactions reach users through a
content score blended into the champion's scores (:func:`blend_cold_apps`).

Outputs (``gold/<table>/date=D``, overwritten): ``recommendations``,
``user_insights``, ``similar_apps``, ``recommended_categories``,
``search_personalization``, ``suggested_queries``; plus the expectation sets the
serving checks use (``gold/scoring_expectations/date=D/{active_users,exclusions}``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import resource
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch

from jobs import columns as C
from models import insights as ins
from models import rules
from models import surfaces as surf
from models.base import Recommender
from personalization.config import Config
from personalization.lake import Lake, check_date

log = logging.getLogger("personalization.scoring")

# --------------------------------------------------------------- column references (one place)
#: Logical name -> accepted physical names in gold/profiles (first present wins).
PROFILE_COLUMNS: dict[str, tuple[str, ...]] = {
    "user_id": (C.USER_ID,),
    # behavior_allowed: behavioural consent as of D (after consent changes); preferred when present.
    "consent_behavioral": ("behavior_allowed", C.CONSENT_BEHAVIORAL, "consent_behavioural"),
    "consent_location": ("location_allowed", C.CONSENT_LOCATION),
    "country": (C.COUNTRY,),
    "region": (C.REGION,),
    "age_group": (C.AGE_GROUP,),
    "signup_date": (C.SIGNUP_DATE,),
    "installed_apps": ("installed_apps", "installed_app_ids", "installed"),
    "purchased_apps": ("purchased_apps", "purchased_app_ids"),
    "purchase_count": ("purchase_count", "purchases_count", "n_purchases", "purchases"),
    "free_only": ("free_only",),  # never paid: neither a purchase nor a paid install
}
PROFILE_REQUIRED = ("user_id", "consent_behavioral", "consent_location", "country", "age_group")
#: silver/users: the store account's country and age group. Used only for the legal rules
#: (availability by country, age ratings), never for personalisation: profiles null these
#: fields without location/demographics consent.
ACCOUNT_COLUMNS: dict[str, tuple[str, ...]] = {
    "user_id": (C.USER_ID,), "store_country": (C.COUNTRY,), "store_age_group": (C.AGE_GROUP,),
}
APP_FEATURE_COLUMNS: dict[str, tuple[str, ...]] = {
    "app_id": (C.APP_ID,), "category": (C.CATEGORY,), "developer_id": (C.DEVELOPER_ID,),
    "price": (C.PRICE,), "age_rating": (C.AGE_RATING,), "regions": (C.REGIONS,), "text_vec": ("text_vec",),
    "pop_7d": ("pop_7d",), "pop_30d": ("pop_30d",), "freshness_days": ("freshness_days",),
}
APP_FEATURE_REQUIRED = ("app_id", "category")
SILVER_APP_COLUMNS: dict[str, tuple[str, ...]] = {
    "app_id": (C.APP_ID,), "name": (C.APP_NAME,), "release_date": (C.RELEASE_DATE,),
}
SEGMENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "user_id": (C.USER_ID,), "segment_id": ("segment_id",), "segment_name": ("segment_name",),
}
POPULARITY_COLUMNS: dict[str, tuple[str, ...]] = {
    "region": (C.REGION,), "app_id": (C.APP_ID,), "score": ("score",), "n_users": ("n_users",),
}
#: gold/popularity's store-wide pseudo-region (every user counts in it); never a user's area.
GLOBAL_REGION = "global"
INTERACTION_COLUMNS: dict[str, tuple[str, ...]] = {
    "user_id": (C.USER_ID,), "app_id": (C.APP_ID,), "weight": ("weight",), "label": ("label",),
}

#: Tables written by scoring (the serving tables of personalization.pipeline.SERVING_TABLES).
OUTPUT_TABLES = ("recommendations", "user_insights", "similar_apps", "recommended_categories",
                 "search_personalization", "suggested_queries")
#: Cold-start apps: weight of the content score in the blend and its reach in standard deviations.
COLD_APP_CONTENT_WEIGHT = 0.5
COLD_APP_CONTENT_SPREAD = 3.0
#: Warm apps sampled (evenly, fixed) for the per-user score mean/std of :func:`blend_cold_apps`.
COLD_APP_STAT_SAMPLE = 2048
#: Co-occurrence is accumulated densely up to this many apps (n^2 float32), sparsely beyond.
DENSE_COOCCURRENCE_MAX_APPS = 16_384
VARIANT_MODEL = "champion"
VARIANT_COLD_START = "cold_start"
VARIANT_NON_PERSONALIZED = "non_personalized"

SCHEMAS: dict[str, pa.Schema] = {
    "recommendations": pa.schema([
        ("user_id", pa.string()), ("surface", pa.string()), ("rank", pa.int32()), ("app_id", pa.string()),
        ("score", pa.float64()), ("reason", pa.string()), ("reason_app_id", pa.string()),
        ("model_version", pa.string()), ("variant", pa.string()), ("generated_for", pa.date32()),
    ]),
    "user_insights": pa.schema([
        ("user_id", pa.string()), ("segment", pa.string()), ("engagement_score", pa.float64()),
        ("churn_risk", pa.float64()), ("lifetime_value", pa.float64()), ("primary_interests", pa.string()),
        ("next_best_action", pa.string()), ("best_notification_hour", pa.int32()),
        ("notification_channel", pa.string()), ("notification_cap_per_week", pa.int32()),
        ("model_version", pa.string()), ("generated_for", pa.date32()),
    ]),
    "similar_apps": pa.schema([
        ("app_id", pa.string()), ("rank", pa.int32()), ("similar_app_id", pa.string()), ("score", pa.float64()),
    ]),
    "recommended_categories": pa.schema([
        ("user_id", pa.string()), ("rank", pa.int32()), ("category", pa.string()), ("score", pa.float64()),
    ]),
    "search_personalization": pa.schema([
        ("user_id", pa.string()), ("category", pa.string()), ("boost", pa.float64()),
    ]),
    "suggested_queries": pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("query", pa.string())]),
    "active_users": pa.schema([("user_id", pa.string())]),
    "exclusions": pa.schema([("user_id", pa.string()), ("app_id", pa.string())]),
}


# --------------------------------------------------------------- writing
class PartitionWriter:
    """Writes one date partition of a table as Parquet row groups, then swaps it into place.

    Local paths: written to a hidden staging directory and renamed over ``date=D``
    on :meth:`close` (a crash leaves the old partition intact). URIs (``s3://``):
    the partition is deleted and written in place (object stores have no rename).
    """

    def __init__(self, partition_path: str, schema: pa.Schema):
        self.final = partition_path
        self.schema = schema
        self.rows = 0
        self.local = "://" not in partition_path
        if self.local:
            parent = Path(partition_path).parent
            parent.mkdir(parents=True, exist_ok=True)
            self.staging = str(parent / f".staging-{Path(partition_path).name}-{uuid.uuid4().hex[:8]}")
            Path(self.staging).mkdir()
            self._filesystem = None
            file_path = f"{self.staging}/part-00000.parquet"
        else:
            filesystem, inner = ins._fs(partition_path)
            if filesystem.get_file_info(inner).type != ins.pafs.FileType.NotFound:
                filesystem.delete_dir(inner)
            filesystem.create_dir(inner)
            self._filesystem = filesystem
            file_path = f"{inner}/part-00000.parquet"
        self._writer = pq.ParquetWriter(file_path, schema, filesystem=self._filesystem, compression="zstd")

    def write(self, frame: pd.DataFrame) -> None:
        """Append ``frame`` (columns of the schema) as one row group; empty frames are skipped."""
        if len(frame) == 0:
            return
        table = pa.Table.from_pandas(frame.loc[:, self.schema.names], schema=self.schema, preserve_index=False)
        self._writer.write_table(table)
        self.rows += len(frame)

    def close(self) -> str:
        self._writer.close()
        if self.local:
            final = Path(self.final)
            if final.exists():
                shutil.rmtree(final)
            Path(self.staging).rename(final)
        return self.final

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            if self.local:
                shutil.rmtree(self.staging, ignore_errors=True)


def write_partition(partition_path: str, schema: pa.Schema, frame: pd.DataFrame) -> int:
    """Write one small frame as a whole partition (overwrite). Returns the row count."""
    writer = PartitionWriter(partition_path, schema)
    try:
        writer.write(frame)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.rows


# --------------------------------------------------------------- loading
def _resolved_frame(path: str, wanted: dict[str, tuple[str, ...]], required: Sequence[str], what: str
                    ) -> pd.DataFrame:
    """Read the columns of ``wanted`` present at ``path``, renamed to their logical names."""
    if not ins.path_exists(path):
        raise FileNotFoundError(f"{what} not found at {path}: run the stage that writes it first")
    filesystem, inner = ins._fs(path)
    names = ds.dataset(inner, format="parquet", filesystem=filesystem, partitioning=None).schema.names
    resolved = ins.pick_columns(names, wanted, required, what)
    table = ins.read_table(path, list(resolved.values()), what)
    return table.to_pandas().rename(columns={v: k for k, v in resolved.items()})


def _read_jsonl(path: str) -> pd.DataFrame:
    if not ins.path_exists(path):
        return pd.DataFrame()
    filesystem, inner = ins._fs(path)
    with filesystem.open_input_stream(inner) as stream:
        text = stream.read().decode("utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return pd.DataFrame(rows)


def _epoch_days(values: pd.Series) -> np.ndarray:
    """Days since 1970-01-01 of date-like values (-1 where missing)."""
    parsed = pd.to_datetime(values, errors="coerce", utc=True)
    days = (parsed - pd.Timestamp("1970-01-01", tz="UTC")).dt.days
    return days.fillna(-1).to_numpy(dtype=np.int64)


def load_catalog(config: Config, date: str) -> tuple[surf.Catalog, np.ndarray]:
    """The catalogue of ``date`` (gold/app_features + silver/apps names and release dates + denylist).

    Returns ``(catalog, featured)`` where ``featured`` holds catalogue positions in editorial order.
    """
    lake = Lake(config)
    apps = _resolved_frame(lake.partition(lake.gold("app_features"), date), APP_FEATURE_COLUMNS,
                           APP_FEATURE_REQUIRED, "gold/app_features")
    apps = apps.drop_duplicates("app_id", keep="last").sort_values("app_id").reset_index(drop=True)
    apps["app_id"] = apps["app_id"].astype(str)
    silver_path = lake.partition(lake.silver("apps"), date)
    if ins.path_exists(silver_path):
        names = _resolved_frame(silver_path, SILVER_APP_COLUMNS, ("app_id",), "silver/apps")
        names["app_id"] = names["app_id"].astype(str)
        apps = apps.merge(names.drop_duplicates("app_id", keep="last"), on="app_id", how="left")
    run_day = dt.date.fromisoformat(date)
    today = (run_day - dt.date(1970, 1, 1)).days
    if "release_date" in apps:
        release_day = _epoch_days(apps["release_date"])
    elif "freshness_days" in apps:
        freshness = pd.to_numeric(apps["freshness_days"], errors="coerce")
        release_day = np.where(freshness.notna(), today - freshness.fillna(0).astype(np.int64), -1)
    else:
        release_day = np.full(len(apps), -1, dtype=np.int64)
    name = apps["name"].fillna(apps["app_id"]) if "name" in apps else apps["app_id"]
    category = apps["category"].fillna("unknown").astype(str)
    categories = sorted(category.unique().tolist())
    developer = apps["developer_id"].fillna(apps["app_id"]).astype(str) if "developer_id" in apps else apps["app_id"]
    text_unit = None
    if "text_vec" in apps and apps["text_vec"].notna().any():
        width = max(len(v) for v in apps["text_vec"] if v is not None)
        text = np.zeros((len(apps), width), dtype=np.float32)
        for row, vector in enumerate(apps["text_vec"]):
            if vector is not None and len(vector) == width:
                text[row] = np.asarray(vector, dtype=np.float32)
        text_unit = rules.unit_rows(text)
    denylist = _read_jsonl(f"{lake.editorial()}/denylist.jsonl")
    denied = set(denylist[C.APP_ID].astype(str)) if C.APP_ID in denylist else set()

    def numeric(column: str, default: float) -> np.ndarray:
        if column not in apps:
            return np.full(len(apps), default)
        return pd.to_numeric(apps[column], errors="coerce").fillna(default).to_numpy(dtype=np.float64)

    catalog = surf.Catalog(
        app_ids=apps["app_id"].to_numpy(dtype=object),
        names=name.astype(str).to_numpy(dtype=object),
        categories=categories,
        category=pd.Index(categories).get_indexer(category).astype(np.int64),
        developer=pd.factorize(developer, sort=True)[0].astype(np.int64),
        price=numeric("price", 0.0),
        age_rating=(pd.to_numeric(apps["age_rating"], errors="coerce").to_numpy(dtype=np.float64)
                    if "age_rating" in apps else np.full(len(apps), np.nan)),
        regions=[None if r is None else list(r) for r in apps["regions"]] if "regions" in apps
        else [None] * len(apps),
        release_day=np.asarray(release_day, dtype=np.int64),
        text_unit=text_unit,
        allowed=rules.denylist_mask(apps["app_id"].tolist(), denied),
        pop_7d=numeric("pop_7d", 0.0),
        pop_30d=numeric("pop_30d", 0.0),
    )
    featured_frame = _read_jsonl(f"{lake.editorial()}/featured.jsonl")
    featured = np.zeros(0, dtype=np.int64)
    if C.APP_ID in featured_frame:
        if C.POSITION in featured_frame:
            featured_frame = featured_frame.sort_values(C.POSITION, kind="stable")
        featured = catalog.positions(featured_frame[C.APP_ID].astype(str))
        featured = featured[featured >= 0]
    return catalog, featured


def load_deleted_users(config: Config, extra: Sequence[str] | None = None) -> set[str]:
    """Deleted users: ``extra`` plus the ``user_id`` column of ``silver/deleted_users`` when it exists.

    ``silver/deleted_users`` is the hook for the privacy-deletion job (any Parquet layout).
    """
    deleted = {str(u) for u in (extra or [])}
    path = Lake(config).silver("deleted_users")
    if ins.path_exists(path):
        filesystem, inner = ins._fs(path)
        dataset = ds.dataset(inner, format="parquet", filesystem=filesystem, partitioning="hive")
        # user_id is the app's id; "pseudonym" the lake's id of the same user (what gold/profiles holds).
        for column in (C.USER_ID, "pseudonym"):
            if column in dataset.schema.names:
                deleted |= {str(u) for u in dataset.to_table(columns=[column]).column(0).to_pylist() if u}
    return deleted


def load_users(config: Config, date: str, deleted: set[str]) -> tuple[pd.DataFrame, int]:
    """Non-deleted users of gold/profiles with their segment, sorted by user id.

    Returns ``(users, n_deleted_found)``. Missing optional columns become None/NaN.
    """
    lake = Lake(config)
    users = _resolved_frame(lake.partition(lake.gold("profiles"), date), PROFILE_COLUMNS, PROFILE_REQUIRED,
                            "gold/profiles")
    users["user_id"] = users["user_id"].astype(str)
    users = users.drop_duplicates("user_id", keep="last")
    found = users["user_id"].isin(deleted)
    users = users[~found].sort_values("user_id").reset_index(drop=True)
    account_path = lake.partition(lake.silver("users"), date)
    if ins.path_exists(account_path):
        accounts = _resolved_frame(account_path, ACCOUNT_COLUMNS, ("user_id",), "silver/users")
        accounts["user_id"] = accounts["user_id"].astype(str)
        users = users.merge(accounts.drop_duplicates("user_id", keep="last"), on="user_id", how="left")
    for account, profile in (("store_country", "country"), ("store_age_group", "age_group")):
        if account not in users:
            users[account] = None
        users[account] = users[account].where(users[account].notna(), users[profile])
    for optional in ("region", "signup_date", "installed_apps", "purchased_apps", "purchase_count", "free_only"):
        if optional not in users:
            users[optional] = None
    users["consent_behavioral"] = users["consent_behavioral"].fillna(False).astype(bool)
    users["consent_location"] = users["consent_location"].fillna(False).astype(bool)
    users["signup_date"] = [None if d < 0 else dt.date(1970, 1, 1) + dt.timedelta(days=int(d))
                            for d in _epoch_days(users["signup_date"])]
    segment_path = lake.partition(lake.gold("segments"), date)
    if ins.path_exists(segment_path):
        segments = _resolved_frame(segment_path, SEGMENT_COLUMNS, ("user_id",), "gold/segments")
        segments["user_id"] = segments["user_id"].astype(str)
        label = segments["segment_name"] if "segment_name" in segments else segments.get("segment_id")
        segments = segments.assign(segment=label.astype(str)).drop_duplicates("user_id", keep="last")
        users = users.merge(segments[["user_id", "segment"]], on="user_id", how="left")
    else:
        users["segment"] = None
    return users, int(found.sum())


def load_popularity(config: Config, date: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """gold/popularity of ``date`` and of the latest partition at least 7 days older (None if none)."""
    lake = Lake(config)
    table = lake.gold("popularity")
    empty = pd.DataFrame({"region": pd.Series(dtype=str), "app_id": pd.Series(dtype=str),
                          "score": pd.Series(dtype=float), "n_users": pd.Series(dtype=float)})
    path = lake.partition(table, date)
    if not ins.path_exists(path):
        log.warning("no gold/popularity for %s: popularity fallbacks use app_features only", date)
        return empty, None
    now = _resolved_frame(path, POPULARITY_COLUMNS, tuple(POPULARITY_COLUMNS), "gold/popularity")
    week_ago = (dt.date.fromisoformat(date) - dt.timedelta(days=7)).isoformat()
    older = [d for d in ins.list_partitions(table, "date") if d <= week_ago]
    previous = None
    if older:
        previous = _resolved_frame(lake.partition(table, older[-1]), POPULARITY_COLUMNS,
                                   tuple(POPULARITY_COLUMNS), "gold/popularity")
    for frame in (now, previous):
        if frame is not None:
            frame["region"] = frame["region"].astype(str)
            frame["app_id"] = frame["app_id"].astype(str)
    from personalization.privacy import publishable_popularity

    # What may reach serving: small groups suppressed, then Laplace noise (privacy.dp_epsilon) seeded by date.
    now = publishable_popularity(config, now, date)
    previous = None if previous is None else publishable_popularity(config, previous, older[-1])
    return now, previous


def popularity_geography(users: pd.DataFrame, popularity: pd.DataFrame) -> str:
    """Which user column (``region`` or ``country``) gold/popularity's ``region`` is keyed by.

    Chosen by the larger overlap of values, so either upstream choice works.
    """
    keys = set(popularity["region"].unique()) - {GLOBAL_REGION}
    overlap = {column: len(keys & set(users[column].dropna().astype(str))) for column in ("region", "country")}
    return "region" if overlap["region"] >= overlap["country"] and overlap["region"] > 0 else "country"


# --------------------------------------------------------------- the interaction pass
@dataclass
class HistoryStore:
    """Positive interactions bucketed by user block on local disk, plus co-installation statistics."""

    directory: str
    block_size: int
    order: np.ndarray  # user ids in bucket order (scored users first)
    cooccurrence: np.ndarray | sp.csr_matrix
    installs: np.ndarray  # distinct users with a positive interaction, per app
    segment_counts: np.ndarray  # [n_segments, n_apps] distinct users per segment and app
    segment_users: np.ndarray  # users with any history per segment

    def block(self, index: int, n_apps: int) -> sp.csr_matrix:
        """``[rows of block index, n_apps]`` summed positive weights, float32 CSR."""
        start = index * self.block_size
        rows = min(self.block_size, len(self.order) - start)
        path = Path(self.directory) / f"block={index}"
        if rows <= 0 or not path.exists():
            return sp.csr_matrix((max(rows, 0), n_apps), dtype=np.float32)
        table = pq.read_table(path, columns=["user_pos", "app_pos", "weight"])
        user = table.column("user_pos").to_numpy() - start
        app = table.column("app_pos").to_numpy()
        weight = table.column("weight").to_numpy()
        matrix = sp.csr_matrix((weight.astype(np.float32), (user, app)), shape=(rows, n_apps), dtype=np.float32)
        matrix.sum_duplicates()
        return matrix

    def n_blocks(self) -> int:
        return (len(self.order) + self.block_size - 1) // self.block_size


def build_history_store(
    config: Config,
    date: str,
    catalog: surf.Catalog,
    order: np.ndarray,
    segment_code: np.ndarray,
    n_segments: int,
    directory: str,
    batch_rows: int = 262_144,
) -> HistoryStore:
    """One streaming pass over gold/interactions: bucket positives by user block, then count co-installs.

    ``order`` fixes bucket positions (users not in it, e.g. deleted ones, are dropped);
    ``segment_code`` is aligned with ``order`` (-1 = no segment).
    """
    lake = Lake(config)
    path = lake.partition(lake.gold("interactions"), date)
    if not ins.path_exists(path):
        raise FileNotFoundError(f"gold/interactions not found at {path}: run build_features first")
    block_size = int(config.scoring.block_size)
    filesystem, inner = ins._fs(path)
    dataset = ds.dataset(inner, format="parquet", filesystem=filesystem, partitioning=None)
    resolved = ins.pick_columns(dataset.schema.names, INTERACTION_COLUMNS, ("user_id", "app_id"),
                                "gold/interactions")
    user_set = pa.array(order.tolist(), type=pa.string())
    app_set = pa.array(catalog.app_ids.tolist(), type=pa.string())
    schema = pa.schema([("block", pa.int32()), ("user_pos", pa.int64()), ("app_pos", pa.int64()),
                        ("weight", pa.float32())])

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in dataset.to_batches(columns=list(resolved.values()), batch_size=batch_rows):
            weight = (pc.cast(batch.column(resolved["weight"]), pa.float64()) if "weight" in resolved
                      else pa.array(np.ones(batch.num_rows)))
            keep = pc.greater(pc.fill_null(weight, 0.0), 0.0)
            if "label" in resolved:
                keep = pc.and_(keep, pc.equal(pc.fill_null(pc.cast(batch.column(resolved["label"]), pa.int64()),
                                                           0), 1))
            user = pc.index_in(pc.cast(batch.column(resolved["user_id"]), pa.string()), value_set=user_set)
            app = pc.index_in(pc.cast(batch.column(resolved["app_id"]), pa.string()), value_set=app_set)
            keep = pc.and_(pc.and_(keep, pc.is_valid(user)), pc.is_valid(app))
            user = pc.filter(user, keep).to_numpy(zero_copy_only=False).astype(np.int64)
            if len(user) == 0:
                continue
            yield pa.record_batch([
                pa.array((user // block_size).astype(np.int32)), pa.array(user),
                pa.array(pc.filter(app, keep).to_numpy(zero_copy_only=False).astype(np.int64)),
                pa.array(pc.filter(weight, keep).to_numpy(zero_copy_only=False).astype(np.float32)),
            ], schema=schema)

    n_blocks = max(1, (len(order) + block_size - 1) // block_size)
    ds.write_dataset(
        batches(), directory, schema=schema, format="parquet",
        partitioning=ds.partitioning(pa.schema([("block", pa.int32())]), flavor="hive"),
        existing_data_behavior="delete_matching", max_partitions=n_blocks + 1,
    )
    n = catalog.n
    dense = n <= DENSE_COOCCURRENCE_MAX_APPS
    cooc: np.ndarray | sp.csr_matrix = np.zeros((n, n), dtype=np.float32) if dense else sp.csr_matrix(
        (n, n), dtype=np.float32)
    segment_counts = np.zeros((max(n_segments, 1), n), dtype=np.float64)
    segment_users = np.zeros(max(n_segments, 1), dtype=np.int64)
    store = HistoryStore(directory, block_size, order, cooc, np.zeros(n), segment_counts, segment_users)
    for index in range(store.n_blocks()):
        history = store.block(index, n)
        if history.nnz == 0:
            continue
        binary = history.copy()
        binary.data[:] = 1.0
        pairs = (binary.T @ binary).tocoo()
        if dense:
            cooc[pairs.row, pairs.col] += pairs.data
        else:
            store.cooccurrence = store.cooccurrence + pairs.tocsr()
        start = index * block_size
        codes = segment_code[start:start + history.shape[0]]
        has = np.diff(binary.indptr) > 0
        ok = (codes >= 0) & has
        if ok.any():
            onehot = sp.csr_matrix((np.ones(ok.sum()), (codes[ok], np.flatnonzero(ok))),
                                   shape=(segment_counts.shape[0], history.shape[0]))
            segment_counts += (onehot @ binary).toarray()
            segment_users += np.bincount(codes[ok], minlength=segment_counts.shape[0])
    store.installs = np.asarray(store.cooccurrence.diagonal(), dtype=np.float64)
    return store


# --------------------------------------------------------------- scoring one block
@dataclass
class ScoringContext:
    """Everything a block needs besides its users and their history (broadcast to Spark executors)."""

    date: dt.date
    model_version: str
    top_n: int
    candidate_pool: int
    max_per_developer: int
    paid_only_for_buyers: bool
    diversity: str
    mmr_lambda: float
    category_cap: int
    catalog: surf.Catalog
    model: Recommender | None
    cat_to_model: np.ndarray  # catalogue position -> model column (-1 absent)
    model_to_cat: np.ndarray  # model column -> catalogue position (-1 absent)
    cold_apps: np.ndarray  # bool [n]: no interactions or unknown to the model
    availability: np.ndarray  # [n_countries + 1, n]
    country_row: dict[str, int]
    global_share: np.ndarray  # [n] in [0, 1]
    region_share: np.ndarray  # [n_regions + 1, n]; last row zeros
    region_row: dict[str, int]
    geography: str  # "region" or "country": the user column popularity is keyed by
    segment_share: np.ndarray  # [n_segments + 1, n]; last row zeros (suppressed or none)
    segment_row: dict[str, int]
    trending: dict[str, tuple[np.ndarray, np.ndarray]]
    neighbours: np.ndarray
    neighbour_scores: np.ndarray
    new_apps: np.ndarray  # positions of apps released in the last NEW_APP_DAYS days
    featured: np.ndarray  # positions in editorial order
    category_weights: np.ndarray | None = None  # [n_all_users, n_categories] (insights order)
    #: Search history as (user_pos sorted, queries in suggestion order), see surfaces.order_queries.
    query_index: tuple[np.ndarray, np.ndarray] | None = None
    segment_queries: dict[object, list[str]] = field(default_factory=dict)
    #: Built on first use by a block (per worker on Spark): per-app reason texts, padded trending lists.
    reason_texts: dict[str, np.ndarray] | None = None
    trending_table: tuple[dict[str, int], np.ndarray, np.ndarray] | None = None
    #: Score chunks of a block run on this many threads (1 on Spark executors: a task per core there).
    chunk_threads: int = 1


@dataclass
class BlockResult:
    """A block's output frames and diversity/coverage statistics."""

    frames: dict[str, pd.DataFrame]
    ild_before_sum: float = 0.0
    ild_after_sum: float = 0.0
    ild_count: int = 0
    #: Wall-clock seconds of the block's two parts: ``for_you`` (model scores, rules, consent fallback,
    #: top-k, re-ranking, diversity statistics, explanations) and ``other_outputs`` (the other surfaces,
    #: categories, search, rows as frames).
    seconds: dict[str, float] = field(default_factory=dict)


def blend_cold_apps(scores: np.ndarray, cold: np.ndarray, content_cosine: np.ndarray) -> np.ndarray:
    """Blend a content score into the model's scores of cold apps (no interactions), in place.

    Per user, with ``mu``/``sd`` the mean/std of the model's scores on warm apps and
    ``z = (s - mu) / sd`` (0 where the model has no score):
    ``s_cold = mu + sd * ((1 - w) * z + w * SPREAD * cos)``, ``w = 0.5``, ``SPREAD = 3``,
    so a cold app whose text matches the user's history perfectly (cos = 1) lands
    1.5 standard deviations above the user's average warm app.
    """
    if not cold.any():
        return scores
    cold_index = np.flatnonzero(cold)
    # take() gives a C-ordered copy; boolean-mask indexing (scores[:, cold]) gives a Fortran-ordered
    # one, and the in-place arithmetic below against C-ordered operands then ran ~15x slower.
    cold_scores = scores.take(cold_index, axis=1)
    warm_index = np.flatnonzero(~cold)
    if len(warm_index):
        # mu and sd only set the scale of the cold apps' content scores, so above
        # COLD_APP_STAT_SAMPLE warm apps they are estimated on an evenly spaced, fixed sample of
        # them (sd to ~1.5% at 2,048): exact float64 statistics over every warm column were ~10 ms
        # of a 512 x 10,000 chunk, more than the model's matrix product.
        if len(warm_index) > COLD_APP_STAT_SAMPLE:
            warm_index = warm_index[np.linspace(0, len(warm_index) - 1, COLD_APP_STAT_SAMPLE).astype(np.int64)]
        warm = scores.take(warm_index, axis=1).astype(np.float64)
        if np.isfinite(warm).all():
            mu, sd = warm.mean(axis=1, keepdims=True), warm.std(axis=1, keepdims=True)
        else:  # NaN (unscored) or infinite scores; an all-NaN row gives mu = NaN -> 0 and sd = 1 below
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mu = np.nanmean(warm, axis=1, keepdims=True)
                sd = np.nanstd(warm, axis=1, keepdims=True)
    else:
        mu, sd = np.zeros((len(scores), 1)), np.ones((len(scores), 1))
    mu = np.nan_to_num(mu)
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
    # mu + sd * ((1 - w) * z + w * SPREAD * cos) expanded to w * mu + (1 - w) * s + w * SPREAD * sd * cos:
    # the same value (to a float32 rounding) in a few in-place passes over the [b, n_cold] copy instead
    # of ten float64 temporaries; z = 0 for a NaN s means s = mu.
    blended = cold_scores.astype(np.float32, copy=False)
    missing = np.isnan(blended)
    if missing.any():
        np.copyto(blended, np.broadcast_to(mu.astype(np.float32), blended.shape), where=missing)
    blended *= np.float32(1 - COLD_APP_CONTENT_WEIGHT)
    blended += np.multiply(content_cosine, ((COLD_APP_CONTENT_WEIGHT * COLD_APP_CONTENT_SPREAD) * sd)
                           .astype(np.float32), dtype=np.float32)
    blended += (COLD_APP_CONTENT_WEIGHT * mu).astype(np.float32)
    if scores.dtype == np.float32 and scores.flags.c_contiguous and scores.flags.writeable:
        # torch's index_copy_ writes the columns back about 2x faster than numpy's fancy assignment.
        torch.from_numpy(scores).index_copy_(1, torch.from_numpy(cold_index), torch.from_numpy(blended))
    else:
        scores[:, cold_index] = blended
    return scores


def model_scores(ctx: ScoringContext, user_ids: Sequence[str], history: sp.csr_matrix) -> np.ndarray:
    """Champion scores ``float32 [b, n_catalog]`` with cold apps blended (see :func:`blend_cold_apps`).

    NaN (unscored) becomes 0 and infinities the largest float32, after blending.
    """
    n = ctx.catalog.n
    b = history.shape[0]
    if b == 0:
        return np.zeros((0, n), dtype=np.float32)
    identity = len(ctx.model_to_cat) == n and bool((ctx.model_to_cat == np.arange(n)).all())
    full: np.ndarray | None = None
    if ctx.model is not None:
        coo = history.tocoo()
        keep = ctx.cat_to_model[coo.col] >= 0
        model_history = sp.csr_matrix(
            (coo.data[keep], (coo.row[keep], ctx.cat_to_model[coo.col[keep]])),
            shape=(b, len(ctx.model_to_cat)), dtype=np.float32)
        raw = np.asarray(ctx.model.score(list(user_ids), model_history), dtype=np.float32)
        if identity:  # the model's columns are the catalogue: use its matrix as is (no [b, n] copy)
            full = raw if raw.flags.writeable and raw.flags.c_contiguous else np.array(raw, order="C")
        else:
            full = np.full((b, n), np.nan, dtype=np.float32)
            present = ctx.model_to_cat >= 0
            full[:, ctx.model_to_cat[present]] = raw[:, present]
    if full is None:
        full = np.full((b, n), np.nan, dtype=np.float32)
    # Only a column whose sum is NaN can be all-NaN (unscored for the whole block).
    column_sums = full.sum(axis=0)
    suspect = np.flatnonzero(np.isnan(column_sums))
    unscored = np.zeros(n, dtype=bool)
    if len(suspect):
        unscored[suspect] = np.isnan(full[:, suspect]).all(axis=0)
    cold = ctx.cold_apps | unscored
    if ctx.catalog.text_unit is not None and cold.any():
        profile = rules.unit_rows(history @ ctx.catalog.text_unit)
        cosine = profile @ ctx.catalog.text_unit[cold].T
    else:
        cosine = np.zeros((b, int(cold.sum())), dtype=np.float32)
    full = blend_cold_apps(full, cold, cosine)
    if not np.isfinite(column_sums).all():  # finite column sums: no NaN or infinity anywhere
        np.nan_to_num(full, copy=False, nan=0.0)
    return full


def fallback_scores(ctx: ScoringContext, users: pd.DataFrame, use_segment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-personalised scores and their reason tier per app: ``(scores [b, n], tier int8 [b, n])``.

    Tiers: 3 = segment popularity (cold start with behavioural consent), 2 = regional
    popularity (location consent), 1 = store-wide popularity. ``score = tier + 0.999 * share``
    so a higher tier always ranks first and each tier is ordered by its own popularity share.
    """
    b = len(users)
    region_rows = np.array([ctx.region_row.get(str(v), -1) if loc else -1 for v, loc in
                            zip(users[ctx.geography], users["consent_location"], strict=True)], dtype=np.int64)
    region_rows = np.where(region_rows < 0, ctx.region_share.shape[0] - 1, region_rows)
    segment_rows = np.array([ctx.segment_row.get(str(v), -1) if ok else -1 for v, ok in
                             zip(users["segment"], use_segment, strict=True)], dtype=np.int64)
    segment_rows = np.where(segment_rows < 0, ctx.segment_share.shape[0] - 1, segment_rows)
    segment = ctx.segment_share[segment_rows]
    region = ctx.region_share[region_rows]
    tier = np.where(segment > 0, 3, np.where(region > 0, 2, 1)).astype(np.int8)
    share = np.where(tier == 3, segment, np.where(tier == 2, region, np.broadcast_to(ctx.global_share, (b, ctx.catalog.n))))
    return (tier + 0.999 * share).astype(np.float32), tier


def _owned_matrix(ctx: ScoringContext, users: pd.DataFrame) -> sp.csr_matrix:
    """``[b, n]`` installed and purchased apps listed in the profiles."""
    rows: list[int] = []
    apps: list[str] = []
    for column in ("installed_apps", "purchased_apps"):
        for row, listed in enumerate(users[column]):
            if listed is None or (isinstance(listed, float) and np.isnan(listed)) or len(listed) == 0:
                continue
            rows.extend([row] * len(listed))
            apps.extend(str(a) for a in listed)
    positions = ctx.catalog.positions(apps)
    known = positions >= 0
    return sp.csr_matrix((np.ones(int(known.sum()), dtype=np.float32),
                          (np.asarray(rows, dtype=np.int64)[known], positions[known])),
                         shape=(len(users), ctx.catalog.n))


def rule_groups(ctx: ScoringContext, users: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The business rules per group of users: ``(allowed bool [G, n], group int [b])``.

    The rules depend on a user only through (minimum age, store country, buyer), so they are
    evaluated once per distinct combination (a few dozen), instead of several ``[b, n]`` passes.
    """
    catalog = ctx.catalog
    min_age = rules.user_min_age(users["store_age_group"].tolist())
    countries = np.array([ctx.country_row.get(str(c).upper(), -1) for c in users["store_country"]], dtype=np.int64)
    buyer = users["is_buyer"].to_numpy(dtype=bool)
    keys = np.stack([min_age.astype(np.int64), countries, buyer.astype(np.int64)], axis=1)
    groups, inverse = np.unique(keys.reshape(len(users), 3), axis=0, return_inverse=True)
    allowed = rules.eligibility(
        min_age=groups[:, 0].astype(np.int16), app_age_rating=catalog.age_rating,
        user_country_row=groups[:, 1], availability=ctx.availability, is_buyer=groups[:, 2].astype(bool),
        app_price=catalog.price, paid_only_for_buyers=ctx.paid_only_for_buyers, allowed_apps=catalog.allowed)
    return allowed, inverse.reshape(-1)


def blocked_apps(groups: tuple[np.ndarray, np.ndarray], owned: Sequence[sp.csr_matrix]) -> np.ndarray:
    """``bool [b, n]``: True where an app may not be recommended to the user (``~`` :func:`rules.eligibility`
    per :func:`rule_groups`, gathered per user), or is owned (any stored entry of ``owned``)."""
    allowed, group = groups
    blocked = (~allowed)[group]
    for matrix in owned:
        if matrix is not None and matrix.nnz:
            coo = matrix.tocoo()
            blocked[coo.row, coo.col] = True
    return blocked


def capped_capacity(eligible: np.ndarray, developer: np.ndarray, cap: int) -> np.ndarray:
    """Longest list each user can get under the developer cap: ``sum_dev min(cap, eligible apps of dev)``."""
    n_dev = int(developer.max()) + 1 if len(developer) else 0
    onehot = sp.csr_matrix((np.ones(len(developer), dtype=np.float32), (np.arange(len(developer)), developer)),
                           shape=(len(developer), n_dev))
    per_developer = (onehot.T @ eligible.astype(np.float32).T).T  # [b, n_dev] dense
    return np.minimum(np.asarray(per_developer), cap).sum(axis=1).astype(np.int64)


def select_for_you(ctx: ScoringContext, masked: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-N per user from masked scores (``-inf`` = ineligible).

    Candidate pool by ``torch.topk``; re-ranking with the developer cap and the configured
    diversity. Returns ``(before, after, after_scores)`` as catalogue positions ``int [b, N]``
    (-1 padding): ``before`` is relevance order with the developer cap only.
    """
    b, n = masked.shape
    k = min(ctx.candidate_pool, n)
    if b == 0 or k == 0:
        empty = np.full((b, ctx.top_n), -1, dtype=np.int64)
        return empty, empty.copy(), np.zeros((b, ctx.top_n))
    values, index = torch.topk(torch.from_numpy(masked), k, dim=1, sorted=True)
    values, index = values.numpy().astype(np.float64), index.numpy().astype(np.int64)
    developer = ctx.catalog.developer[index]
    category = ctx.catalog.category[index]
    before = rules.rerank(values, ctx.top_n, developer=developer, max_per_developer=ctx.max_per_developer)
    if ctx.diversity == "mmr":
        text = None if ctx.catalog.text_unit is None else ctx.catalog.text_unit[index]
        similarity = rules.PoolSimilarity(category, text, surf.CATEGORY_SIMILARITY_WEIGHT)
        after = rules.rerank(values, ctx.top_n, developer=developer, max_per_developer=ctx.max_per_developer,
                             similarity=similarity, mmr_lambda=ctx.mmr_lambda)
    elif ctx.diversity == "category_cap":
        after = rules.rerank(values, ctx.top_n, developer=developer, max_per_developer=ctx.max_per_developer,
                             category=category, max_per_category=ctx.category_cap)
    elif ctx.diversity == "none":
        after = before.copy()
    else:
        raise ValueError(f"scoring.diversity must be mmr, category_cap or none, got {ctx.diversity!r}")

    def to_catalog(picked: np.ndarray) -> np.ndarray:
        return np.where(picked >= 0, np.take_along_axis(index, np.maximum(picked, 0), axis=1), -1)

    before_pos, after_pos = to_catalog(before), to_catalog(after)
    # Top up short lists from the whole catalogue (the pool or the category cap ran out);
    # the developer cap is a business rule and stays, the category cap is relaxed. Rare: a loop.
    short = np.flatnonzero((after_pos >= 0).sum(axis=1) < ctx.top_n)
    for row in short:
        picked = [int(p) for p in after_pos[row] if p >= 0]
        counts: dict[int, int] = {}
        for p in picked:
            counts[int(ctx.catalog.developer[p])] = counts.get(int(ctx.catalog.developer[p]), 0) + 1
        order = np.argsort(-masked[row], kind="stable")
        for p in order.tolist():
            if len(picked) >= ctx.top_n or not np.isfinite(masked[row, p]):
                break
            code = int(ctx.catalog.developer[p])
            if p in picked or counts.get(code, 0) >= ctx.max_per_developer:
                continue
            picked.append(p)
            counts[code] = counts.get(code, 0) + 1
        after_pos[row] = -1
        after_pos[row, :len(picked)] = picked
    after_scores = np.where(after_pos >= 0, np.take_along_axis(masked, np.maximum(after_pos, 0), axis=1), 0.0)
    return before_pos, after_pos, after_scores


@dataclass
class _SurfaceList:
    """One surface's lists for some rows of a block (``[m, w]`` arrays, ``-1`` padding at the end)."""

    surface: str
    rows: np.ndarray  # int [m]: block rows
    apps: np.ndarray  # int [m, w]: catalogue positions
    scores: np.ndarray  # float [m, w]
    reasons: np.ndarray  # object [m, w]
    anchors: np.ndarray  # int [m, w]: reason_app positions, -1 none


def _reason_texts(ctx: ScoringContext) -> dict[str, np.ndarray]:
    """Per-app reason strings (``object [n]``), built once per context (per worker on Spark)."""
    if ctx.reason_texts is None:
        names, catalog = ctx.catalog.names, ctx.catalog
        ctx.reason_texts = {
            "use": np.array([surf.reason_because_you_use(str(a)) for a in names] + [None], dtype=object),
            "liked": np.array([surf.reason_because_you_liked(str(a)) for a in names] + [None], dtype=object),
            "new": np.array([surf.reason_new_in(catalog.categories[c]) for c in catalog.category] + [None],
                            dtype=object),
        }
    return ctx.reason_texts


def _trending_table(ctx: ScoringContext) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """The trending lists as padded arrays ``(region -> row, ranked int [R, L], scores [R, L])``, built once."""
    if ctx.trending_table is None:
        regions = list(ctx.trending)
        length = max((len(ranked) for ranked, _ in ctx.trending.values()), default=0)
        ranked = np.full((len(regions) + 1, length), -1, dtype=np.int64)  # last row: no trending list
        scores = np.zeros((len(regions) + 1, length), dtype=np.float64)
        for r, region in enumerate(regions):
            positions, trend = ctx.trending[region]
            ranked[r, :len(positions)] = positions
            scores[r, :len(trend)] = trend
        ctx.trending_table = ({region: r for r, region in enumerate(regions)}, ranked, scores)
    return ctx.trending_table


def _with_reason(picks: np.ndarray, texts: np.ndarray, codes: np.ndarray | None = None) -> np.ndarray:
    """``object [m, w]``: ``texts[codes]`` (``codes`` default ``picks``) where a pick exists, else None."""
    codes = picks if codes is None else codes
    return texts[np.where((picks >= 0) & (codes >= 0), codes, len(texts) - 1)]


def _records(ctx: ScoringContext, lists: list[_SurfaceList], user_ids: np.ndarray, variants: np.ndarray
             ) -> pd.DataFrame:
    """The recommendations rows of a block, per user and surface (home-page order), rank ascending.

    Scores are made non-increasing in rank (re-ranking may lift a lower-scored app above a
    higher one): a running minimum along each list.
    """
    parts: dict[str, list[np.ndarray]] = {key: [] for key in ("row", "surface", "rank", "app", "score", "reason",
                                                              "anchor")}
    for code, item in enumerate(lists):
        valid = item.apps >= 0
        monotone = np.minimum.accumulate(np.where(valid, item.scores, np.inf), axis=1)
        local, column = np.nonzero(valid)
        parts["row"].append(item.rows[local])
        parts["surface"].append(np.full(len(local), code))
        parts["rank"].append(column + 1)
        parts["app"].append(item.apps[local, column])
        parts["score"].append(monotone[local, column])
        parts["reason"].append(item.reasons[local, column])
        parts["anchor"].append(item.anchors[local, column])
    flat = {key: np.concatenate(values) if values else np.zeros(0) for key, values in parts.items()}
    surface_of = np.array([item.surface for item in lists] or ["for_you"], dtype=object)
    order = np.lexsort((flat["rank"], flat["surface"], flat["row"]))
    row = flat["row"][order].astype(np.int64)
    anchor = flat["anchor"][order].astype(np.int64)
    app_ids = ctx.catalog.app_ids
    return pd.DataFrame({
        "user_id": user_ids[row], "surface": surface_of[flat["surface"][order].astype(np.int64)],
        "rank": flat["rank"][order].astype(np.int64), "app_id": app_ids[flat["app"][order].astype(np.int64)],
        "score": flat["score"][order].astype(np.float64), "reason": flat["reason"][order].astype(object),
        "reason_app_id": np.where(anchor >= 0, app_ids[np.maximum(anchor, 0)], None),
        "variant": variants[row],
    }).assign(model_version=ctx.model_version, generated_for=ctx.date)


def _ranked_rows(codes: np.ndarray, values: np.ndarray, rows: np.ndarray, user_ids: np.ndarray,
                 names: Sequence[str], monotone: bool) -> tuple[np.ndarray, ...]:
    """``(user_id, rank, name, value)`` columns of per-user ranked lists (``codes`` -1 = none), values rounded
    to 6 decimals (Python ``round``) and, when ``monotone``, non-increasing in rank."""
    valid = codes >= 0
    local, column = np.nonzero(valid)
    kept = np.array([round(v, 6) for v in values[local, column].tolist()], dtype=np.float64)
    if monotone and len(kept):
        grid = np.full(values.shape, np.inf)
        grid[local, column] = kept
        kept = np.minimum.accumulate(grid, axis=1)[local, column]
    names_array = np.asarray(list(names), dtype=object)
    return user_ids[rows[local]], column + 1, names_array[codes[local, column]], kept


#: Rows scored at a time inside a block: the dense [rows, n] float32 score matrices stay this
#: size whatever ``scoring.block_size`` is, while blocks stay large for the per-block work (Parquet
#: writes, frames). At 100k users x 10k apps (block 2,048) it lowered peak RSS by ~8% (1,553 ->
#: 1,438 MiB); for_you time was unchanged within this machine's noise.
SCORE_CHUNK_ROWS = 512


def _for_you_lists(ctx: ScoringContext, users: pd.DataFrame, user_ids: np.ndarray, history: sp.csr_matrix,
                   personal: np.ndarray, behavioural: np.ndarray, groups: tuple[np.ndarray, np.ndarray],
                   owned: Sequence[sp.csr_matrix]) -> tuple[np.ndarray, ...]:
    """for_you for a block, :data:`SCORE_CHUNK_ROWS` users at a time; ``groups`` from :func:`rule_groups`,
    ``owned`` as for :func:`blocked_apps` (the same apps are masked).

    Returns ``(before, after, after_scores, new_scores, featured_scores, level)``: the lists of
    :func:`select_for_you`, the unmasked scores of the new and featured apps (those surfaces rank
    by them) and ``level int8 [b, N]``, the fallback tier of each pick (0 for personalised rows).
    """
    b, top_n = len(users), ctx.top_n
    before = np.full((b, top_n), -1, dtype=np.int64)
    after = np.full((b, top_n), -1, dtype=np.int64)
    after_scores = np.zeros((b, top_n))
    new_scores = np.zeros((b, len(ctx.new_apps)), dtype=np.float32)
    featured_scores = np.zeros((b, len(ctx.featured)))
    level = np.zeros((b, top_n), dtype=np.int8)
    # Masking by a minimum with +inf (allowed) / -inf (blocked) per rule group runs about 3x faster
    # than a boolean copyto over [rows, n]; owned apps are few per user and set one by one.
    allowed, group = groups
    caps = np.where(allowed, np.float32(np.inf), np.float32(-np.inf))
    owned_csr = [matrix.tocsr() for matrix in owned if matrix is not None and matrix.nnz]

    def score_chunk(start: int) -> None:
        rows = slice(start, min(start + SCORE_CHUNK_ROWS, b))
        mine = personal[rows]
        own, other = np.flatnonzero(mine), np.flatnonzero(~mine)
        tier = np.zeros((0, ctx.catalog.n), dtype=np.int8)
        if len(other) == 0:
            scores = model_scores(ctx, user_ids[rows].tolist(), history[rows])  # the model's matrix, no copy
        else:
            scores = np.zeros((len(mine), ctx.catalog.n), dtype=np.float32)
            if len(own):
                scores[own] = model_scores(ctx, user_ids[rows][own].tolist(), history[rows][own])
            scores[other], tier = fallback_scores(ctx, users.iloc[start + other], behavioural[rows][other])
        # new_for_you and featured rank by unmasked scores: keep those columns, then mask in place.
        new_scores[rows] = scores[:, ctx.new_apps]
        featured_scores[rows] = scores[:, ctx.featured]
        np.minimum(scores, caps[group[rows]], out=scores)
        for matrix in owned_csr:
            chunk_owned = matrix[rows].tocoo()
            scores[chunk_owned.row, chunk_owned.col] = -np.inf
        before[rows], after[rows], after_scores[rows] = select_for_you(ctx, scores)
        if len(other):
            level[start + other] = np.take_along_axis(tier, np.maximum(after[rows][other], 0), axis=1)

    starts = range(0, b, SCORE_CHUNK_ROWS)
    workers = min(ctx.chunk_threads, len(starts))
    if workers > 1:
        # Chunks write disjoint rows. Numpy and torch release the GIL in their kernels, so a second
        # chunk's single-threaded numpy passes (masking, gathers, re-ranking) use the core that
        # torch's matrix products and top-k would otherwise leave idle between its own calls.
        with ThreadPoolExecutor(workers, thread_name_prefix="score-chunk") as pool:
            list(pool.map(score_chunk, starts))
    else:
        for start in starts:
            score_chunk(start)
    return before, after, after_scores, new_scores, featured_scores, level


def score_block(ctx: ScoringContext, users: pd.DataFrame, history: sp.csr_matrix) -> BlockResult:
    """All per-user outputs of one block of users, vectorised over the block.

    ``users`` needs ``user_id``, ``user_pos`` (row in ``ctx.category_weights``),
    ``consent_behavioral``, ``consent_location``, ``country``, ``region`` (consented geography),
    ``store_country``, ``store_age_group`` (account values for the legal rules),
    ``segment``, ``is_buyer``, ``installed_apps``, ``purchased_apps``; ``history`` is
    ``[b, n_catalog]`` positive interaction weights in catalogue order.

    One ``bool [b, n]`` matrix ``blocked`` carries the business rules and, as surfaces fill in
    home-page order, the apps already shown to the user (de-duplication across surfaces).
    """
    started = time.perf_counter()
    catalog = ctx.catalog
    b = len(users)
    user_ids = users["user_id"].astype(str).to_numpy(dtype=object)
    behavioural = users["consent_behavioral"].to_numpy(dtype=bool)
    location = users["consent_location"].to_numpy(dtype=bool)
    history = history.tocsr()
    has_history = np.diff(history.indptr) > 0
    personal = behavioural & has_history
    owned = _owned_matrix(ctx, users)
    groups = rule_groups(ctx, users)
    blocked = blocked_apps(groups, (history, owned))
    personal_rows, other_rows = np.flatnonzero(personal), np.flatnonzero(~personal)
    before, after, after_scores, new_scores, featured_scores, level = _for_you_lists(
        ctx, users, user_ids, history, personal, behavioural, groups, (history, owned))
    result = BlockResult(frames={})
    for lists, attr in ((before, "ild_before_sum"), (after, "ild_after_sum")):
        total, count = rules.intra_list_diversity_sum(lists, catalog.category, catalog.text_unit)
        setattr(result, attr, total)
        result.ild_count = count
    # Active users the checks expect a full list for: a short list means the rules leave fewer apps
    # (greedy filling under the developer cap stops short only then); confirmed by the capacity.
    short = np.flatnonzero((after >= 0).sum(axis=1) < ctx.top_n)
    expected = np.ones(b, dtype=bool)
    expected[short] = capped_capacity(~blocked[short], catalog.developer, ctx.max_per_developer) >= ctx.top_n

    texts = _reason_texts(ctx)
    geo_values = users[ctx.geography].tolist()
    region_names = [str(g) if loc and g is not None and g == g else None
                    for g, loc in zip(geo_values, location, strict=True)]
    variants = np.where(personal, VARIANT_MODEL, np.where(behavioural, VARIANT_COLD_START,
                                                           VARIANT_NON_PERSONALIZED)).astype(object)
    # for_you: reasons from the history (personal) or the fallback tier of each pick.
    reasons = np.full(after.shape, None, dtype=object)
    anchors = np.full(after.shape, -1, dtype=np.int64)
    history_apps, _ = surf.sorted_histories(history.indptr, history.indices, history.data)
    if len(personal_rows):
        anchors[personal_rows] = surf.explain_block(catalog, after[personal_rows], history_apps[personal_rows])
        reasons[personal_rows] = _with_reason(after[personal_rows], texts["use"], anchors[personal_rows])
    if len(other_rows):
        picks = after[other_rows]
        level = level[other_rows]
        regional = np.array([surf.reason_popular_in(region_names[r]) for r in other_rows], dtype=object)
        reasons[other_rows] = np.where(level == 3, surf.REASON_SIMILAR_USERS, np.where(
            level == 2, regional[:, None], surf.reason_popular_in(None)))
        reasons[other_rows] = np.where(picks >= 0, reasons[other_rows], None)
    everyone = np.arange(b)
    lists = [_SurfaceList("for_you", everyone, after, after_scores, reasons, anchors)]
    for_you_done = time.perf_counter()
    result.seconds["for_you"] = for_you_done - started
    valid = after >= 0
    blocked[np.nonzero(valid)[0], after[valid]] = True
    if len(personal_rows):
        liked, liked_scores, liked_anchor = surf.because_you_liked_block(
            history_apps[personal_rows], ctx.neighbours, ctx.neighbour_scores, blocked, rows=personal_rows)
        lists.append(_SurfaceList("because_you_liked", personal_rows, liked, liked_scores,
                                  _with_reason(liked, texts["liked"], liked_anchor), liked_anchor))
    region_of, trending_ranked, trending_scores = _trending_table(ctx)
    trending_rows = np.array([r for r in range(b) if region_names[r] in region_of], dtype=np.int64)
    if len(trending_rows):
        table_rows = np.array([region_of[region_names[r]] for r in trending_rows], dtype=np.int64)
        kept, kept_scores = surf.fill_ranked_block(
            trending_ranked[table_rows], trending_scores[table_rows], blocked, ctx.top_n, catalog.developer,
            ctx.max_per_developer, rows=trending_rows)
        lists.append(_SurfaceList("trending_in_your_area", trending_rows, kept, kept_scores,
                                  np.where(kept >= 0, surf.REASON_TRENDING, None), np.full(kept.shape, -1)))
    if len(ctx.new_apps):
        new_scores[~behavioural] = ctx.global_share[ctx.new_apps]
        order = np.argsort(-new_scores, axis=1, kind="stable")  # ties: lower catalogue position
        kept, kept_scores = surf.fill_ranked_block(
            ctx.new_apps[order], np.take_along_axis(new_scores, order, axis=1), blocked, ctx.top_n,
            catalog.developer, ctx.max_per_developer)
        lists.append(_SurfaceList("new_for_you", everyone, kept, kept_scores, _with_reason(kept, texts["new"]),
                                  np.full(kept.shape, -1)))
    if len(ctx.featured):
        editorial = 1.0 / np.arange(1, len(ctx.featured) + 1)
        featured_scores[~behavioural] = editorial
        order = np.argsort(-featured_scores, axis=1, kind="stable")  # editorial order for ties
        kept, kept_scores = surf.fill_ranked_block(
            ctx.featured[order], np.take_along_axis(featured_scores, order, axis=1), blocked, ctx.top_n)
        lists.append(_SurfaceList("featured", everyone, kept, kept_scores,
                                  np.where(kept >= 0, surf.REASON_FEATURED, None), np.full(kept.shape, -1)))
    recommendations = _records(ctx, lists, user_ids, variants)

    category_columns: tuple[np.ndarray, ...] = (np.zeros(0, dtype=object),) * 4
    boost_columns: tuple[np.ndarray, ...] = (np.zeros(0, dtype=object),) * 4
    consented = np.flatnonzero(behavioural)
    if len(consented) and ctx.category_weights is not None:
        weights = ctx.category_weights[users["user_pos"].to_numpy(dtype=np.int64)[consented]]
        picks = after[consented]
        shown = np.where(picks >= 0, catalog.category[np.maximum(picks, 0)], -1)
        codes, values = surf.recommended_categories_block(weights, shown, len(catalog.categories))
        category_columns = _ranked_rows(codes, values, consented, user_ids, catalog.categories, monotone=True)
        codes, values = surf.search_boosts_block(weights)
        boost_columns = _ranked_rows(codes, values, consented, user_ids, catalog.categories, monotone=False)
    query_rows: list[tuple] = []
    if len(consented) and ctx.query_index is not None:
        positions, query_texts = ctx.query_index
        user_positions = users["user_pos"].to_numpy(dtype=np.int64)[consented]
        low = np.searchsorted(positions, user_positions, "left")
        high = np.searchsorted(positions, user_positions, "right")
        segments = users["segment"].to_numpy(dtype=object)[consented]
        by_segment: dict[object, list[str]] = {}  # users without searches of their own: one list per segment
        for row, lo, hi, segment in zip(consented.tolist(), low.tolist(), high.tolist(), segments, strict=True):
            if lo == hi:
                if segment not in by_segment:
                    by_segment[segment] = surf.suggested_queries([], ctx.segment_queries.get(segment, []))
                suggestions = by_segment[segment]
            else:
                suggestions = surf.suggested_queries(query_texts[lo:hi].tolist(),
                                                     ctx.segment_queries.get(segment, []))
            query_rows.extend((user_ids[row], rank, query) for rank, query in enumerate(suggestions, start=1))

    owned_all = (history + owned).tocsr()
    owned_all.sum_duplicates()
    owned_all = owned_all.tocoo()
    result.frames = {
        "recommendations": recommendations,
        "recommended_categories": pd.DataFrame(dict(zip(["user_id", "rank", "category", "score"], category_columns,
                                                        strict=True))),
        "search_personalization": pd.DataFrame({"user_id": boost_columns[0], "category": boost_columns[2],
                                                "boost": boost_columns[3]}),
        "suggested_queries": pd.DataFrame.from_records(query_rows, columns=["user_id", "rank", "query"]),
        "exclusions": pd.DataFrame({"user_id": user_ids[owned_all.row], "app_id": catalog.app_ids[owned_all.col]}),
        "active_users": pd.DataFrame({"user_id": user_ids[expected]}),
    }
    result.seconds["other_outputs"] = time.perf_counter() - for_you_done
    return result


# --------------------------------------------------------------- context
def build_context(
    config: Config,
    date: str,
    catalog: surf.Catalog,
    featured: np.ndarray,
    users: pd.DataFrame,
    store: HistoryStore,
    segment_names: list[str],
    popularity: pd.DataFrame,
    previous_popularity: pd.DataFrame | None,
    model: Recommender | None,
    model_version: str,
) -> tuple[ScoringContext, pd.DataFrame]:
    """The block-independent state: rules' matrices, fallbacks, trending, similar apps.

    Returns ``(context, similar_apps frame)``.
    """
    scoring = config.scoring
    min_group = int(config.features.min_group_size)
    run_day = dt.date.fromisoformat(date)
    countries = sorted({str(c).upper() for regions in catalog.regions if regions for c in regions}
                       | {str(c).upper() for c in users["store_country"].dropna()})
    availability = rules.availability_matrix(catalog.regions, countries)
    geography = popularity_geography(users, popularity) if len(popularity) else "region"
    kept = popularity[popularity["n_users"] >= min_group]
    kept = kept[kept["app_id"].isin(catalog.index)]
    store_wide = kept[kept["region"] == GLOBAL_REGION]
    kept = kept[kept["region"] != GLOBAL_REGION]
    by_region = kept.groupby(["region", "app_id"], as_index=False)["score"].sum()
    region_names = sorted(by_region["region"].unique().tolist())
    region_share = np.zeros((len(region_names) + 1, catalog.n), dtype=np.float32)
    for r, (_region, group) in enumerate(by_region.groupby("region", sort=True)):
        values = group["score"].to_numpy(dtype=np.float64)
        if values.max() > 0:
            region_share[r, catalog.positions(group["app_id"])] = values / values.max()
    overall = np.zeros(catalog.n)
    # Store-wide rows when upstream provides them, else the sum over regions.
    totals = (store_wide if len(store_wide) else by_region).groupby("app_id")["score"].sum()
    overall[catalog.positions(totals.index)] = totals.to_numpy()
    fallback = catalog.pop_30d if catalog.pop_30d.max() > 0 else catalog.pop_7d
    overall = overall / overall.max() if overall.max() > 0 else overall
    fallback = fallback / fallback.max() if fallback.max() > 0 else fallback
    # Store-wide popularity; app_features' pop_30d only breaks ties (and orders apps without regional data).
    global_share = (0.999 * overall + 0.001 * fallback).astype(np.float32)
    # Segment popularity only for segments with enough users with history (small-group suppression).
    segment_share = np.zeros((len(segment_names) + 1, catalog.n), dtype=np.float32)
    for s in range(len(segment_names)):
        counts = store.segment_counts[s] if s < len(store.segment_counts) else np.zeros(catalog.n)
        if store.segment_users[s] >= min_group and counts.max() > 0:
            from personalization.privacy import noisy_counts

            # Distinct users per app in the segment (sensitivity 1): noised after suppression, seeded by date.
            counts = noisy_counts(counts, float(config.privacy.dp_epsilon), date, f"segment_counts.{s}")
            segment_share[s] = counts / max(counts.max(), 1.0)
    similar_frame, neighbours, neighbour_scores = surf.similar_apps(catalog, store.cooccurrence,
                                                                    int(scoring.similar_apps_n), block=256)
    cat_to_model = np.full(catalog.n, -1, dtype=np.int64)
    model_to_cat = np.zeros(0, dtype=np.int64)
    if model is not None:
        model_to_cat = catalog.positions([str(a) for a in model.app_ids])
        present = model_to_cat >= 0
        cat_to_model[model_to_cat[present]] = np.flatnonzero(present)
    context = ScoringContext(
        date=run_day, model_version=model_version, top_n=int(scoring.top_n),
        candidate_pool=max(int(scoring.candidate_pool), int(scoring.top_n)),
        chunk_threads=int(scoring.threads) if int(scoring.threads) > 0 else (os.cpu_count() or 1),
        max_per_developer=int(scoring.max_per_developer), paid_only_for_buyers=bool(scoring.paid_only_for_buyers),
        diversity=str(scoring.diversity), mmr_lambda=float(scoring.mmr_lambda),
        category_cap=int(scoring.category_cap), catalog=catalog, model=model,
        cat_to_model=cat_to_model, model_to_cat=model_to_cat,
        cold_apps=(store.installs <= 0) | (cat_to_model < 0),
        availability=availability, country_row={c: i for i, c in enumerate(countries)},
        global_share=global_share, region_share=region_share,
        region_row={r: i for i, r in enumerate(region_names)}, geography=geography,
        segment_share=segment_share, segment_row={s: i for i, s in enumerate(segment_names)},
        trending=surf.trending_by_region(
            popularity[popularity["region"] != GLOBAL_REGION],
            None if previous_popularity is None else previous_popularity[previous_popularity["region"] != GLOBAL_REGION],
            catalog, min_group),
        neighbours=neighbours, neighbour_scores=neighbour_scores,
        new_apps=np.flatnonzero(surf.is_new(catalog, run_day) & catalog.allowed),
        featured=featured,
    )
    return context, similar_frame


def _load_model(config: Config, champion: tuple[Recommender, str] | None, date: str) -> tuple[Recommender, str]:
    if champion is not None:
        return champion
    from models.registry import load_champion  # lazy: the registry module is optional at import time

    # The champion as of the run's date: the alias holder, unless it saw later data (backfill).
    return load_champion(config, as_of=date)


# --------------------------------------------------------------- entry point
def score_users(
    config: Config,
    date: str,
    deleted_users: Sequence[str] | None = None,
    champion: tuple[Recommender, str] | None = None,
    log_to_mlflow: bool = True,
    user_ids: Collection[str] | None = None,
    personalized: bool = True,
) -> dict[str, Any]:
    """Score every active user for ``date`` and write the serving tables to gold (overwrite).

    Args:
        deleted_users: user ids to leave out entirely (added to ``silver/deleted_users``).
        champion: ``(model, version)``; default: ``models.registry.load_champion(config, as_of=date)`` (the champion as of the run date).
        log_to_mlflow: log the insights models' evaluation (experiment ``config.mlflow.experiment``).
        user_ids: score only these users' lists (an experiment cell, see :mod:`models.variants`);
            ``user_insights`` still covers every user.
        personalized: False gives the scored users the non-personalised lists of users without
            behavioural consent (an experiment's holdout).

    Returns a JSON-able record: ``tables`` (paths), ``rows``, ``model_version``, ``diversity``
    (intra-list diversity of for_you before/after re-ranking), user counts, the insights
    summary, ``peak_rss_mb`` and ``expected`` (inputs of the serving checks).
    """
    date = check_date(date)
    started = time.perf_counter()
    if config.scoring.engine not in ("local", "spark"):
        raise ValueError(f"scoring.engine must be local or spark, got {config.scoring.engine!r}")
    lake = Lake(config)
    deleted = load_deleted_users(config, deleted_users)
    catalog, featured = load_catalog(config, date)
    users, n_deleted = load_users(config, date, deleted)
    model, model_version = _load_model(config, champion, date)
    model_version = str(model_version)
    stages: dict[str, float] = {}  # seconds per stage, for the benchmark and the run record
    peak_mb: dict[str, float] = {}  # peak RSS (MiB) reached by the end of each stage: where memory grows

    def mark(stage: str) -> None:
        stages[stage] = time.perf_counter() - started - sum(value for name, value in stages.items() if name != stage)
        peak_mb[stage] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)

    mark("load")

    insight = ins.compute_insights(
        config, date,
        users[["user_id", "segment", "consent_behavioral", "signup_date", "purchase_count"]],
        catalog.categories, dict(zip(catalog.app_ids.tolist(), catalog.category.tolist(), strict=True)),
        model_version, log_to_mlflow=log_to_mlflow,
    )
    run_day = dt.date.fromisoformat(date)
    window = int(config.profiles.window_days)
    signed_up_recently = np.array([d is not None and 0 <= (run_day - d).days < window for d in users["signup_date"]])
    active = insight.has_events | signed_up_recently
    if user_ids is not None:
        active &= users["user_id"].isin(set(user_ids)).to_numpy()
    # A buyer: a purchase in the window or in the profile's lifetime counters (free_only False).
    paid_before = users["free_only"].map(lambda value: value is False or value == 0).to_numpy(dtype=bool)
    users = users.assign(user_pos=np.arange(len(users)), is_buyer=insight.is_buyer | paid_before, active=active)
    if not personalized:
        users["consent_behavioral"] = False
    # Profiles carry no installed apps without behavioural consent; the events do (never recommend
    # an installed app back, whatever the consent).
    if insight.owned_apps:
        extra = pd.Series(insight.owned_apps)
        users["installed_apps"] = [
            sorted(set(_as_list(listed)) | set(extra.get(pos, []))) for pos, listed in
            zip(users["user_pos"], users["installed_apps"], strict=True)]
    scored = users[active].reset_index(drop=True)
    order = np.concatenate([scored["user_id"].to_numpy(dtype=object),
                            users.loc[~active, "user_id"].to_numpy(dtype=object)])
    segment_names = sorted(users["segment"].dropna().astype(str).unique().tolist())
    segment_lookup = {s: i for i, s in enumerate(segment_names)}
    ordered_segments = pd.concat([scored["segment"], users.loc[~active, "segment"]])
    segment_code = np.array([segment_lookup.get(str(s), -1) if s is not None and s == s else -1
                             for s in ordered_segments], dtype=np.int64)
    popularity, previous = load_popularity(config, date)

    outputs: dict[str, str] = {}
    rows: dict[str, int] = {}
    partitions = {name: lake.partition(lake.gold(name), date) for name in OUTPUT_TABLES}
    checks_root = lake.partition(lake.gold("scoring_expectations"), date)
    rows["user_insights"] = write_partition(partitions["user_insights"], SCHEMAS["user_insights"],
                                            _insights_frame(insight.table))
    outputs["user_insights"] = partitions["user_insights"]
    mark("insights")

    scratch = Path(tempfile.mkdtemp(prefix="scoring-", dir=_scratch_parent(config)))
    try:
        store = build_history_store(config, date, catalog, order, segment_code, len(segment_names),
                                    str(scratch / "history"))
        mark("history_store")
        context, similar_frame = build_context(config, date, catalog, featured, users, store, segment_names,
                                               popularity, previous, model, model_version)
        context.category_weights = insight.category_weights
        queries = surf.order_queries(insight.queries)
        context.query_index = (queries["user_pos"].to_numpy(dtype=np.int64), queries["query"].to_numpy(dtype=object))
        context.segment_queries = surf.popular_queries_by_segment(
            insight.queries, users["segment"].to_numpy(dtype=object), int(config.features.min_group_size))
        rows["similar_apps"] = write_partition(partitions["similar_apps"], SCHEMAS["similar_apps"], similar_frame)
        outputs["similar_apps"] = partitions["similar_apps"]
        mark("context_and_similar_apps")

        per_user = ("recommendations", "recommended_categories", "search_personalization", "suggested_queries")
        targets = {**{name: partitions[name] for name in per_user},
                   "active_users": f"{checks_root}/active_users", "exclusions": f"{checks_root}/exclusions"}
        if config.scoring.engine == "spark":
            stats = score_spark(config, context, scored, store, targets)
        else:
            stats = _score_local(context, scored, store, targets)
        rows.update(stats.pop("rows"))
        outputs.update({name: partitions[name] for name in per_user})
        mark("blocks")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    before = stats["ild_before_sum"] / stats["ild_count"] if stats["ild_count"] else float("nan")
    after = stats["ild_after_sum"] / stats["ild_count"] if stats["ild_count"] else float("nan")
    log.info("for_you intra-list diversity before %.4f after %.4f (%s)", before, after, config.scoring.diversity)
    return {
        "date": date,
        "engine": config.scoring.engine,
        "model_version": model_version,
        "tables": outputs,
        "rows": rows,
        "users_total": int(len(users)),
        "users_scored": int(len(scored)),
        "users_deleted_excluded": n_deleted,
        "blocks": stats["blocks"],
        "diversity": {"method": config.scoring.diversity, "ild_before": _round(before), "ild_after": _round(after)},
        "catalog_coverage": _round(stats["distinct_for_you_apps"] / catalog.n if catalog.n else 0.0),
        "insights": insight.summary,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "seconds": round(time.perf_counter() - started, 3),
        # Stages of the run; "blocks_detail" splits the local engine's blocks (for_you vs the rest).
        "stage_seconds": {**{name: round(value, 3) for name, value in stages.items()},
                          "blocks_detail": stats.get("seconds", {})},
        "stage_peak_rss_mb": peak_mb,
        "expected": {
            "top_n": int(config.scoring.top_n),
            "active_users": targets["active_users"],
            "exclusions": targets["exclusions"],
            # Only ids a caller passed (none in the nightly run): run records hold no personal ids, so
            # the publish reads the tombstone itself (personalization.pipeline.publish_expectations).
            "deleted_users": sorted(str(user) for user in (deleted_users or [])),
            "min_rows": {"recommendations": 1, "user_insights": 1, "similar_apps": 1} if len(scored) else
            {"user_insights": 1},
        },
    }


def _as_list(value: Any) -> list[str]:
    """A list of app ids from a Parquet list cell (None, NaN, list or numpy array)."""
    if value is None or (isinstance(value, float) and value != value):
        return []
    return [str(item) for item in value]


def _round(value: float) -> float | None:
    return None if value != value else round(float(value), 6)


def _scratch_parent(config: Config) -> str:
    parent = Path(config.var_dir) / "tmp"
    parent.mkdir(parents=True, exist_ok=True)
    return str(parent)


def _insights_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The insights table in the serving schema's types (nullable ints, text segment)."""
    frame = table.copy()
    frame["segment"] = [None if s is None or s != s else str(s) for s in frame["segment"]]
    frame["best_notification_hour"] = frame["best_notification_hour"].astype("Int32")
    frame["notification_cap_per_week"] = frame["notification_cap_per_week"].astype("Int32")
    return frame


def _score_local(context: ScoringContext, scored: pd.DataFrame, store: HistoryStore,
                 targets: dict[str, str]) -> dict[str, Any]:
    """The local engine: blocks of users through :func:`score_block`, appended to Parquet writers."""
    writers = {name: PartitionWriter(path, SCHEMAS[name]) for name, path in targets.items()}
    stats: dict[str, Any] = {"ild_before_sum": 0.0, "ild_after_sum": 0.0, "ild_count": 0, "blocks": 0}
    seconds = dict.fromkeys(("history_read", "for_you", "other_outputs", "write"), 0.0)
    distinct = np.zeros(context.catalog.n, dtype=bool)
    try:
        for index in range(0, (len(scored) + store.block_size - 1) // store.block_size):
            started = time.perf_counter()
            block_users = scored.iloc[index * store.block_size:(index + 1) * store.block_size]
            # The last scored block may share its bucket with inactive users: keep the scored rows.
            history = store.block(index, context.catalog.n)[:len(block_users)]
            seconds["history_read"] += time.perf_counter() - started
            result = score_block(context, block_users, history)
            for part, value in result.seconds.items():
                seconds[part] += value
            started = time.perf_counter()
            for name, frame in result.frames.items():
                writers[name].write(frame)
            seconds["write"] += time.perf_counter() - started
            stats["ild_before_sum"] += result.ild_before_sum
            stats["ild_after_sum"] += result.ild_after_sum
            stats["ild_count"] += result.ild_count
            stats["blocks"] += 1
            recs = result.frames["recommendations"]
            distinct[context.catalog.positions(recs.loc[recs["surface"] == "for_you", "app_id"])] = True
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    for writer in writers.values():
        writer.close()
    stats["rows"] = {name: writers[name].rows for name in targets if name not in ("active_users", "exclusions")}
    stats["distinct_for_you_apps"] = int(distinct.sum())
    stats["seconds"] = {part: round(value, 3) for part, value in seconds.items()}
    return stats


# --------------------------------------------------------------- Spark engine
#: One row type for every output of a block (a ``table`` column says which), so one
#: mapInPandas pass produces all tables; columns a table does not use are null.
_SPARK_ROW_FIELDS = (
    ("table", "string"), ("user_id", "string"), ("surface", "string"), ("rank", "int"), ("app_id", "string"),
    ("score", "double"), ("reason", "string"), ("reason_app_id", "string"), ("variant", "string"),
    ("category", "string"), ("boost", "double"), ("query", "string"), ("ild_before", "double"),
    ("ild_after", "double"), ("ild_count", "long"),
)
_SPARK_USER_COLUMNS = ("user_id", "user_pos", "consent_behavioral", "consent_location", "country", "region",
                       "age_group", "segment", "is_buyer", "installed_apps", "purchased_apps", "store_country",
                       "store_age_group")


def spark_block_rows(ctx: ScoringContext, frame: pd.DataFrame) -> pd.DataFrame:
    """Score one Arrow batch of users (with ``history_apps``/``history_weights`` lists) into union rows."""
    rows, cols, values = [], [], []
    for row, (apps, weights) in enumerate(zip(frame["history_apps"], frame["history_weights"], strict=True)):
        if apps is None or len(apps) == 0:
            continue
        positions = ctx.catalog.positions([str(a) for a in apps])
        keep = positions >= 0
        rows.extend([row] * int(keep.sum()))
        cols.extend(positions[keep].tolist())
        values.extend(np.asarray(weights, dtype=np.float64)[keep].tolist())
    history = sp.csr_matrix((np.asarray(values, dtype=np.float32), (rows, cols)), shape=(len(frame), ctx.catalog.n),
                            dtype=np.float32)
    history.sum_duplicates()
    users = frame.drop(columns=["history_apps", "history_weights"]).reset_index(drop=True)
    result = score_block(ctx, users, history)
    parts = [frame_part.assign(table=name) for name, frame_part in result.frames.items()]
    parts.append(pd.DataFrame({"table": ["_stats"], "ild_before": [result.ild_before_sum],
                               "ild_after": [result.ild_after_sum], "ild_count": [result.ild_count]}))
    out = pd.concat(parts, ignore_index=True)
    names = [name for name, _ in _SPARK_ROW_FIELDS]
    for name in names:
        if name not in out:
            out[name] = None
    out = out[names]
    out["rank"] = out["rank"].astype("Int32")
    out["ild_count"] = out["ild_count"].astype("Int64")
    for name in ("score", "boost", "ild_before", "ild_after"):
        out[name] = out[name].astype("float64")
    for name in ("table", "user_id", "surface", "app_id", "reason", "reason_app_id", "variant", "category", "query"):
        out[name] = out[name].astype(object).where(out[name].notna(), None)
    return out


#: Unpickled broadcast contexts per Python worker (one unpickle per worker, not per partition).
_CONTEXT_CACHE: dict[str, ScoringContext] = {}


def _broadcast_context(broadcast_id: str, broadcast: Any) -> ScoringContext:
    import pickle

    if broadcast_id not in _CONTEXT_CACHE:
        _CONTEXT_CACHE.clear()  # one run's context at a time
        _CONTEXT_CACHE[broadcast_id] = pickle.loads(broadcast.value)
    return _CONTEXT_CACHE[broadcast_id]


def score_spark(config: Config, context: ScoringContext, scored: pd.DataFrame, store: HistoryStore,
                targets: dict[str, str]) -> dict[str, Any]:
    """The Spark engine: users (with their histories grouped by Spark) through :func:`score_block`
    in ``mapInPandas``, with the scoring context (catalogue, model, rules' matrices) broadcast.

    Each Arrow batch holds at most ``block_size`` users, so executor memory per task is one
    block's score matrix. The histories never reach the driver; the per-user metadata
    (consent flags, country, installed apps) comes from the driver's profile read.
    ``store`` is unused here (the local engine's disk buckets); kept for one signature.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from jobs.spark import get_spark

    del store
    spark = get_spark(config)
    lake = Lake(config)
    date = context.date.isoformat()
    interactions = spark.read.parquet(lake.partition(lake.gold("interactions"), date))
    resolved = ins.pick_columns(interactions.columns, INTERACTION_COLUMNS, ("user_id", "app_id"), "gold/interactions")
    weight = F.col(resolved["weight"]).cast("double") if "weight" in resolved else F.lit(1.0)
    positives = interactions.select(F.col(resolved["user_id"]).cast("string").alias("user_id"),
                                    F.col(resolved["app_id"]).cast("string").alias("app_id"),
                                    weight.alias("weight"),
                                    (F.col(resolved["label"]).cast("int") if "label" in resolved else F.lit(1))
                                    .alias("label"))
    positives = positives.where((F.col("label") == 1) & (F.col("weight") > 0))
    histories = positives.groupBy("user_id").agg(F.collect_list("app_id").alias("history_apps"),
                                                 F.collect_list("weight").alias("history_weights"))
    meta = scored.loc[:, list(_SPARK_USER_COLUMNS)].copy()
    for column in ("installed_apps", "purchased_apps"):
        meta[column] = [None if v is None or (isinstance(v, float) and v != v) else [str(a) for a in v]
                        for v in meta[column]]
    for column in ("user_id", "country", "region", "age_group", "segment", "store_country", "store_age_group"):
        meta[column] = [None if v is None or v != v else str(v) for v in meta[column]]
    schema = T.StructType([
        T.StructField("user_id", T.StringType()), T.StructField("user_pos", T.LongType()),
        T.StructField("consent_behavioral", T.BooleanType()), T.StructField("consent_location", T.BooleanType()),
        T.StructField("country", T.StringType()), T.StructField("region", T.StringType()),
        T.StructField("age_group", T.StringType()), T.StructField("segment", T.StringType()),
        T.StructField("is_buyer", T.BooleanType()),
        T.StructField("installed_apps", T.ArrayType(T.StringType())),
        T.StructField("purchased_apps", T.ArrayType(T.StringType())),
        T.StructField("store_country", T.StringType()), T.StructField("store_age_group", T.StringType()),
    ])
    users = spark.createDataFrame(meta, schema=schema)
    block_size = max(1, int(config.scoring.block_size))
    partitions = max(1, (len(scored) + block_size - 1) // block_size)
    joined = users.join(histories, "user_id", "left").repartition(partitions, "user_id")
    from pyspark import cloudpickle

    # cloudpickle (not the broadcast's plain pickle) so models whose classes live outside an
    # importable package (a notebook, a test) still reach the executors.
    # One chunk thread per task: Spark already runs a task per executor core.
    broadcast = spark.sparkContext.broadcast(cloudpickle.dumps(dataclasses.replace(context, chunk_threads=1)))
    broadcast_id = uuid.uuid4().hex  # cache key of this run's context on the workers

    def score_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        ctx = _broadcast_context(broadcast_id, broadcast)
        for batch in batches:
            if len(batch):
                yield spark_block_rows(ctx, batch)

    row_schema = ", ".join(f"{name} {kind}" for name, kind in _SPARK_ROW_FIELDS)
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(block_size))
    try:
        rows = joined.mapInPandas(score_batches, schema=row_schema).persist()
        counts = {r["table"]: r["count"] for r in rows.groupBy("table").count().collect()}
        stats = rows.where(F.col("table") == "_stats").agg(
            F.sum("ild_before").alias("before"), F.sum("ild_after").alias("after"),
            F.sum("ild_count").alias("count"), F.count("*").alias("blocks")).collect()[0]
        distinct = rows.where((F.col("table") == "recommendations") & (F.col("surface") == "for_you")) \
            .select("app_id").distinct().count()
        extra = {"recommendations": {"model_version": F.lit(context.model_version),
                                     "generated_for": F.lit(date).cast("date")}}
        for name, path in targets.items():
            columns = []
            for field in SCHEMAS[name]:
                if name in extra and field.name in extra[name]:
                    column = extra[name][field.name]
                else:
                    column = F.col(field.name)
                kind = {"int32": "int", "int64": "bigint", "double": "double", "string": "string",
                        "date32[day]": "date"}[str(field.type)]
                columns.append(column.cast(kind).alias(field.name))
            rows.where(F.col("table") == name).select(*columns).write.mode("overwrite").parquet(path)
        rows.unpersist()
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
        broadcast.destroy()
    return {
        "ild_before_sum": float(stats["before"] or 0.0), "ild_after_sum": float(stats["after"] or 0.0),
        "ild_count": int(stats["count"] or 0), "blocks": int(stats["blocks"] or 0),
        "rows": {name: int(counts.get(name, 0)) for name in targets if name not in ("active_users", "exclusions")},
        "distinct_for_you_apps": int(distinct),
    }
