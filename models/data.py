"""Training data for the models: the ``InteractionData`` container and its loaders.

``InteractionData`` holds everything a model may learn from, indexed by two fixed
vocabularies (users = rows, apps = columns, both sorted ids):
- ``train``: CSR ``[n_users, n_apps]`` float32, summed weights of training positives;
- ``validation``: CSR, 1.0 for each validation positive (binary relevance);
- ``negatives``: CSR, 1.0 for each explicit negative (an ignored impression, label 0) in train;
- ``recent``: CSR, training positives of the newest training days (incremental fine-tuning);
- side features aligned to the vocabularies (``app_features`` rows = apps,
  ``user_features`` rows = users, ``user_segments``).

Sources: the lake's gold tables (:func:`load_training_data`), or the public reference
data sets used by the benchmark (:func:`load_movielens_100k`, :func:`load_frappe`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from jobs import columns as C
from personalization.config import Config
from personalization.lake import Lake, check_date

log = logging.getLogger(__name__)

SPLIT = "split"
LABEL = "label"
WEIGHT = "weight"
EVENT_TS = "event_ts"
TEXT_VEC = "text_vec"
SEGMENT_ID = "segment_id"
SEGMENT_NAME = "segment_name"

INTERACTION_COLUMNS = (C.USER_ID, C.APP_ID, WEIGHT, LABEL, SPLIT)
#: Numeric app columns the models use when present (others are kept but ignored).
APP_NUMERIC_COLUMNS = ("price", "rating", "pop_7d", "pop_30d", "freshness_days", "age_rating")


class MissingColumnsError(ValueError):
    """A lake table lacks columns the models need."""


def require_columns(frame: pd.DataFrame, required: tuple[str, ...] | list[str], table: str) -> None:
    """Raise :class:`MissingColumnsError` naming the table and the absent columns."""
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise MissingColumnsError(f"table {table} lacks required column(s) {missing}; it has {sorted(frame.columns)}")


@dataclass
class InteractionData:
    """Interaction matrices and side features over fixed user and app vocabularies."""

    user_ids: np.ndarray
    app_ids: np.ndarray
    train: sp.csr_matrix
    validation: sp.csr_matrix
    negatives: sp.csr_matrix
    #: One row per app in ``app_ids`` order (index = app_id); may have no columns.
    app_features: pd.DataFrame
    #: Numeric user features, one row per user in ``user_ids`` order (index = user_id).
    user_features: pd.DataFrame
    #: Segment name of each user (``None`` entries for users without one), or None.
    user_segments: np.ndarray | None = None
    #: Training positives of the newest days (incremental fine-tuning); None = all of ``train``.
    recent: sp.csr_matrix | None = None
    date: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_apps(self) -> int:
        return len(self.app_ids)

    def app_popularity(self) -> np.ndarray:
        """Distinct training users per app, int64 ``[n_apps]``."""
        return np.asarray((self.train > 0).sum(axis=0)).ravel().astype(np.int64)

    def app_categories(self) -> np.ndarray | None:
        """Category of each app as strings (``"unknown"`` when missing), or None without a category column."""
        if C.CATEGORY not in self.app_features.columns:
            return None
        return self.app_features[C.CATEGORY].fillna("unknown").astype(str).to_numpy()

    def fine_tune_matrix(self) -> sp.csr_matrix:
        """Positives used by incremental fine-tuning: ``recent`` when known, else ``train``."""
        return self.train if self.recent is None else self.recent

    def version(self) -> str:
        """Short content hash of the matrices (the run's "data version" tag)."""
        digest = hashlib.sha1()
        for matrix in (self.train, self.validation, self.negatives):
            matrix = matrix.tocsr()
            digest.update(np.asarray(matrix.shape, dtype=np.int64).tobytes())
            for array in (matrix.indptr, matrix.indices, matrix.data):
                digest.update(np.ascontiguousarray(array).tobytes())
        digest.update("\x00".join(map(str, self.user_ids.tolist())).encode())
        digest.update("\x00".join(map(str, self.app_ids.tolist())).encode())
        return digest.hexdigest()[:12]

    def summary(self) -> dict[str, int]:
        """Sizes for logging."""
        return {
            "n_users": self.n_users,
            "n_apps": self.n_apps,
            "n_train": int(self.train.nnz),
            "n_validation": int(self.validation.nnz),
            "n_negatives": int(self.negatives.nnz),
        }


# ------------------------------------------------------------------ building
def _matrix(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR with duplicates summed, float32, sorted indices."""
    matrix = sp.csr_matrix((values.astype(np.float32), (rows, cols)), shape=shape, dtype=np.float32)
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def from_frames(
    interactions: pd.DataFrame,
    app_features: pd.DataFrame | None = None,
    user_features: pd.DataFrame | None = None,
    segments: pd.DataFrame | None = None,
    date: str | None = None,
    recent_days: int = 1,
) -> InteractionData:
    """Build :class:`InteractionData` from frames in the lake's gold contract.

    Args:
        interactions: ``user_id, app_id, weight, label, split`` (+ optional ``event_ts``);
            ``label`` 1 = positive (weight > 0), 0 = explicit negative; ``split`` is
            ``train`` or ``validation``. Extra columns are ignored.
        app_features: ``app_id`` + any side columns; its apps join the catalogue even
            without interactions (cold-start apps).
        user_features: ``user_id`` + numeric columns (non-numeric ones are dropped).
        segments: ``user_id`` + ``segment_name`` (or ``segment_id``).
        recent_days: training days (by ``event_ts``, counted back from the newest training
            day) whose positives form ``recent`` for incremental fine-tuning.
    """
    require_columns(interactions, list(INTERACTION_COLUMNS), "gold/interactions")
    frame = interactions.loc[:, [c for c in (*INTERACTION_COLUMNS, EVENT_TS) if c in interactions.columns]].copy()
    frame[C.USER_ID] = frame[C.USER_ID].astype(str)
    frame[C.APP_ID] = frame[C.APP_ID].astype(str)
    unknown_splits = sorted(set(frame[SPLIT].dropna().unique()) - {"train", "validation"})
    if unknown_splits:
        raise ValueError(f"gold/interactions has unknown split values {unknown_splits}")

    app_vocab = set(frame[C.APP_ID].unique())
    if app_features is not None and len(app_features):
        require_columns(app_features, [C.APP_ID], "gold/app_features")
        app_features = app_features.copy()
        app_features[C.APP_ID] = app_features[C.APP_ID].astype(str)
        app_features = app_features.drop_duplicates(C.APP_ID, keep="last")
        app_vocab |= set(app_features[C.APP_ID])
    app_ids = np.array(sorted(app_vocab), dtype=object)
    user_ids = np.array(sorted(frame[C.USER_ID].unique()), dtype=object)
    app_pos = pd.Index(app_ids)
    user_pos = pd.Index(user_ids)
    rows = user_pos.get_indexer(frame[C.USER_ID])
    cols = app_pos.get_indexer(frame[C.APP_ID])
    shape = (len(user_ids), len(app_ids))

    label = frame[LABEL].to_numpy()
    weight = frame[WEIGHT].fillna(0.0).to_numpy(dtype=np.float64)
    is_train = (frame[SPLIT] == "train").to_numpy()
    positive = (label == 1) & (weight > 0)
    negative = label == 0

    train_mask = positive & is_train
    train = _matrix(rows[train_mask], cols[train_mask], weight[train_mask], shape)
    val_mask = positive & ~is_train
    validation = _matrix(rows[val_mask], cols[val_mask], np.ones(val_mask.sum()), shape)
    validation.data[:] = 1.0  # binary relevance even when a pair repeats
    neg_mask = negative & is_train
    negatives = _matrix(rows[neg_mask], cols[neg_mask], np.ones(neg_mask.sum()), shape)
    negatives.data[:] = 1.0

    recent = None
    if EVENT_TS in frame.columns and train_mask.any():
        event_day = pd.to_datetime(frame[EVENT_TS], utc=True).dt.floor("D").to_numpy()
        newest = event_day[train_mask].max()
        cutoff = newest - np.timedelta64(max(recent_days, 1) - 1, "D")
        recent_mask = train_mask & (event_day >= cutoff)
        recent = _matrix(rows[recent_mask], cols[recent_mask], weight[recent_mask], shape)

    apps = pd.DataFrame(index=pd.Index(app_ids, name=C.APP_ID))
    if app_features is not None and len(app_features):
        apps = app_features.set_index(C.APP_ID).reindex(app_ids)
        apps.index.name = C.APP_ID

    users = pd.DataFrame(index=pd.Index(user_ids, name=C.USER_ID))
    if user_features is not None and len(user_features):
        require_columns(user_features, [C.USER_ID], "gold/user_features")
        numeric = user_features.copy()
        numeric[C.USER_ID] = numeric[C.USER_ID].astype(str)
        numeric = numeric.drop_duplicates(C.USER_ID, keep="last").set_index(C.USER_ID)
        numeric = numeric.select_dtypes(include=["number", "bool"]).astype(np.float32)
        users = numeric.reindex(user_ids).fillna(0.0)
        users.index.name = C.USER_ID

    user_segments = None
    if segments is not None and len(segments):
        require_columns(segments, [C.USER_ID], "gold/segments")
        name_column = SEGMENT_NAME if SEGMENT_NAME in segments.columns else SEGMENT_ID
        require_columns(segments, [name_column], "gold/segments")
        by_user = segments.assign(**{C.USER_ID: segments[C.USER_ID].astype(str)}).drop_duplicates(
            C.USER_ID, keep="last"
        )
        names = by_user.set_index(C.USER_ID)[name_column].astype(str).reindex(user_ids)
        user_segments = names.where(names.notna(), None).to_numpy(dtype=object)

    return InteractionData(
        user_ids=user_ids,
        app_ids=app_ids,
        train=train,
        validation=validation,
        negatives=negatives,
        app_features=apps,
        user_features=users,
        user_segments=user_segments,
        recent=recent,
        date=date,
    )


# ------------------------------------------------------------------ lake
def _read_partition(path: str) -> pd.DataFrame | None:
    """A Parquet partition as pandas, or None when the partition does not exist."""
    if "://" not in path and not os.path.exists(path):
        return None
    return pd.read_parquet(path)


def latest_partition_date(config: Config, table: str = "interactions") -> str:
    """Newest ``date=YYYY-MM-DD`` partition of a local gold table."""
    base = Lake(config).gold(table)
    if not os.path.isdir(base):
        raise FileNotFoundError(f"no gold/{table} table under {base}; run the feature stage first")
    dates = sorted(name.split("=", 1)[1] for name in os.listdir(base) if name.startswith("date="))
    if not dates:
        raise FileNotFoundError(f"gold/{table} under {base} has no date partitions")
    return check_date(dates[-1])


def load_training_data(config: Config, date: str | None = None, recent_days: int = 1) -> InteractionData:
    """Load the gold tables of ``date`` (default: newest interactions partition).

    ``gold/interactions`` is required; ``app_features``, ``user_features`` and
    ``segments`` are used when their partition of the same date exists.
    """
    lake = Lake(config)
    date = check_date(date) if date else latest_partition_date(config)
    interactions_path = lake.partition(lake.gold("interactions"), date)
    interactions = _read_partition(interactions_path)
    if interactions is None:
        raise FileNotFoundError(f"missing gold/interactions partition {interactions_path}")
    optional: dict[str, pd.DataFrame | None] = {}
    for table in ("app_features", "user_features", "segments"):
        optional[table] = _read_partition(lake.partition(lake.gold(table), date))
        if optional[table] is None:
            log.warning("gold/%s has no partition for %s; training without it", table, date)
    return from_frames(
        interactions,
        app_features=optional["app_features"],
        user_features=optional["user_features"],
        segments=optional["segments"],
        date=date,
        recent_days=recent_days,
    )


# ------------------------------------------------------------------ reference data sets
def reference_data_dir() -> Path:
    """``../shared/data`` beside the repository (``$PE_REFERENCE_DATA`` overrides)."""
    override = os.environ.get("PE_REFERENCE_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_movielens_100k(data_dir: Path | str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MovieLens 100K as ``(ratings, items)``.

    ratings: ``user, item, rating, timestamp`` (strings for ids, file order kept);
    items: ``item, title, category`` (first listed genre) + one 0/1 column per genre.
    """
    root = Path(data_dir or reference_data_dir()) / "ml-100k"
    ratings = pd.read_csv(root / "u.data", sep="\t", header=None, names=["user", "item", "rating", "timestamp"])
    genres = pd.read_csv(root / "u.genre", sep="|", header=None, names=["genre", "code"]).dropna()
    genre_names = genres["genre"].tolist()
    items = pd.read_csv(
        root / "u.item",
        sep="|",
        header=None,
        encoding="latin-1",
        names=["item", "title", "release", "video_release", "url", *genre_names],
    )
    genre_matrix = items[genre_names].to_numpy()
    first_genre = np.where(genre_matrix.any(axis=1), genre_matrix.argmax(axis=1), 0)
    items = items[["item", "title", *genre_names]].assign(category=[genre_names[i] for i in first_genre])
    ratings["user"] = ratings["user"].astype(str)
    ratings["item"] = ratings["item"].astype(str)
    items["item"] = items["item"].astype(str)
    return ratings, items


def load_frappe(data_dir: Path | str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Frappe as ``(usage, meta)``: usage ``user, item, cnt, ...`` and meta ``item, category, price, rating``."""
    root = Path(data_dir or reference_data_dir()) / "frappe"
    usage = pd.read_csv(root / "frappe.csv", sep="\t")
    meta = pd.read_csv(root / "meta.csv", sep="\t", usecols=["item", "category", "price", "rating"])
    meta["price"] = pd.to_numeric(meta["price"].replace({"Free": "0"}).astype(str).str.lstrip("$"), errors="coerce")
    meta["rating"] = pd.to_numeric(meta["rating"], errors="coerce")
    meta["category"] = meta["category"].replace({"unknown": None})
    usage["user"] = usage["user"].astype(str)
    usage["item"] = usage["item"].astype(str)
    meta["item"] = meta["item"].astype(str)
    return usage, meta


def stratified_split(
    ratings: pd.DataFrame, ratio: float = 0.75, seed: int = 42, group_column: str = "user"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random stratified split: each group keeps ``ratio`` of its rows in train.

    Follows the Microsoft Recommenders ``python_stratified_split`` procedure (one
    uniform draw per row from ``np.random.seed(seed)`` in input order, rows ranked
    by that draw within their group, rank / group size <= ratio goes to train), so
    the same input and seed give the published split.
    """
    rng = np.random.RandomState(seed)
    frame = ratings.copy()
    frame["_draw"] = rng.rand(len(frame))
    frame = frame.sort_values([group_column, "_draw"])
    groups = frame.groupby(group_column)
    share = (groups.cumcount() + 1) / groups[group_column].transform("count")
    train = frame[share <= ratio].drop(columns="_draw")
    test = frame[share > ratio].drop(columns="_draw")
    return train, test


def interactions_frame(train: pd.DataFrame, test: pd.DataFrame, weight_column: str | None = None) -> pd.DataFrame:
    """Benchmark splits in the gold ``interactions`` contract (every row a positive)."""
    parts = []
    for split, frame in (("train", train), ("validation", test)):
        weight = frame[weight_column].astype(float) if weight_column else 1.0
        parts.append(
            pd.DataFrame(
                {
                    C.USER_ID: frame["user"].astype(str).to_numpy(),
                    C.APP_ID: frame["item"].astype(str).to_numpy(),
                    WEIGHT: weight if np.isscalar(weight) else weight.to_numpy(),
                    LABEL: 1,
                    SPLIT: split,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def toy_frames(n_users: int = 40, n_apps: int = 16, seed: int = 0) -> dict[str, pd.DataFrame]:
    """A small two-taste world in the gold contract, for tests and demos.

    Users ``u00..`` of the first half like the apps of the first half (category
    ``games``), the others the second half (``tools``). Each user has 5 training
    positives (2026-10-01..03), 2 validation positives (2026-10-04) in their taste and
    2 explicit negatives from the other one. Returns frames ``interactions``,
    ``app_features``, ``user_features`` and ``segments``.
    """
    rng = np.random.RandomState(seed)
    half_users, half_apps = n_users // 2, n_apps // 2
    apps = [f"a{j:02d}" for j in range(n_apps)]
    rows = []
    for i in range(n_users):
        taste = 0 if i < half_users else 1
        own = np.arange(half_apps) + taste * half_apps
        other = np.arange(half_apps) + (1 - taste) * half_apps
        liked = rng.choice(own, size=7, replace=False)
        for position, j in enumerate(liked):
            split = "train" if position < 5 else "validation"
            day = 1 + position % 3 if split == "train" else 4
            rows.append((f"u{i:02d}", apps[j], f"2026-10-0{day}T12:00:00Z", 1.0 + position % 2, 1, split))
        for j in rng.choice(other, size=2, replace=False):
            rows.append((f"u{i:02d}", apps[j], "2026-10-02T12:00:00Z", 0.0, 0, "train"))
    interactions = pd.DataFrame(rows, columns=[C.USER_ID, C.APP_ID, EVENT_TS, WEIGHT, LABEL, SPLIT])
    interactions[EVENT_TS] = pd.to_datetime(interactions[EVENT_TS], utc=True)
    group = np.array([0] * half_apps + [1] * (n_apps - half_apps))
    text = np.stack([1.0 - group, group.astype(float), rng.rand(n_apps) * 0.1, rng.rand(n_apps) * 0.1], axis=1)
    app_features = pd.DataFrame(
        {
            C.APP_ID: apps,
            C.CATEGORY: np.where(group == 0, "games", "tools"),
            C.DEVELOPER_ID: [f"d{j % 4}" for j in range(n_apps)],
            C.PRICE: np.where(np.arange(n_apps) % 5 == 0, 2.99, 0.0),
            C.RATING: np.round(3.0 + rng.rand(n_apps) * 2, 2),
            "pop_7d": rng.randint(0, 50, n_apps).astype(float),
            "pop_30d": rng.randint(50, 200, n_apps).astype(float),
            "freshness_days": rng.randint(0, 400, n_apps).astype(float),
            C.AGE_RATING: 4,
            TEXT_VEC: list(text.astype(np.float32)),
        }
    )
    users = [f"u{i:02d}" for i in range(n_users)]
    taste = np.array([0] * half_users + [1] * (n_users - half_users))
    user_features = pd.DataFrame(
        {
            C.USER_ID: users,
            "sessions_30d": rng.randint(1, 30, n_users).astype(float),
            "taste_hint": taste + rng.rand(n_users) * 0.1,
        }
    )
    segments = pd.DataFrame(
        {C.USER_ID: users, SEGMENT_ID: taste, SEGMENT_NAME: np.where(taste == 0, "gamers", "workers")}
    )
    return {
        "interactions": interactions,
        "app_features": app_features,
        "user_features": user_features,
        "segments": segments,
    }
