"""Per-user insights (the design document's ``computeInsights``) and the lake readers they need.

One streaming pass over ``silver/events`` (a few columns, one record batch at a
time) accumulates per-user activity for several cutoffs at once; from that:

- ``engagement_score`` in [0, 100]: see :func:`engagement_score`;
- ``churn_risk`` = P(no activity in the next 14 days), a logistic regression on
  activity features, trained on a time-based holdout (features as of D-14, label
  "no activity in (D-14, D]") and evaluated out of time (features as of D-28,
  scored on D-14); see :func:`fit_churn_model`;
- ``lifetime_value`` = expected revenue (USD) over the next 365 days: see
  :func:`lifetime_value`;
- ``primary_interests``: time-decayed category weights of the user's app events;
- ``next_best_action``, ``best_notification_hour`` (local time),
  ``notification_channel`` and ``notification_cap_per_week``: explicit rules.

"Activity" is any event the user made: every event type except
``notification_sent`` (which the store sends, not the user). Only events that
landed on or before the run date count, so a rerun of an old date sees the
same data. Users without behavioural consent get no behavioural insights: their
row carries the population means of consenting users (the same for all of them),
the neutral action ``none`` and default notification settings, never a profile
built from their own behaviour.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from jobs import columns as C
from personalization.config import Config
from personalization.lake import Lake, check_date

log = logging.getLogger("personalization.insights")

# ------------------------------------------------------------------ constants
#: Churn horizon in days: churn_risk = P(no activity in the next CHURN_HORIZON_DAYS days).
CHURN_HORIZON_DAYS = 14
#: Fewer days of features than this before a cutoff makes a training cutoff unusable.
MIN_FEATURE_DAYS = 7
#: Fewer labelled users (or a single class) than this: fall back to the Poisson heuristic.
MIN_TRAINING_USERS = 20
#: Engagement weights of the recency, frequency and duration percentiles (sum to 1).
ENGAGEMENT_WEIGHTS = (0.40, 0.35, 0.25)
#: LTV horizon (days) and the empirical-Bayes prior strengths of the purchase rate and amount.
LTV_HORIZON_DAYS = 365
LTV_PRIOR_DAYS = 30.0
LTV_PRIOR_PURCHASES = 1.0
#: Weights of app events in the category interests (before the time decay).
INTEREST_EVENT_WEIGHTS = {
    "purchase": 5.0, "install": 3.0, "rating": 2.0, "app_open": 1.0, "app_view": 0.5, "uninstall": -2.0,
}
PRIMARY_INTERESTS_N = 3
#: Rules of next_best_action and the notification settings (documented in :func:`next_best_action`).
NEW_USER_DAYS = 14
CHURN_ACTION_THRESHOLD = 0.5
PREMIUM_ENGAGEMENT_THRESHOLD = 60.0
IN_APP_ENGAGEMENT_THRESHOLD = 70.0
EMAIL_MIN_SENT = 3
EMAIL_MAX_OPEN_RATE = 0.05
DEFAULT_NOTIFICATION_HOUR = 19  # early evening, local time, for users without any hour data
NEXT_BEST_ACTIONS = ("re_engage_notification", "suggest_category", "offer_premium", "onboard_new_user", "none")
CHANNELS = ("push", "email", "in_app")

#: Silver event columns read by the scan (the first two are required).
_EVENT_COLUMNS = (C.USER_ID, C.EVENT_TYPE, C.APP_ID, C.DURATION_S, C.AMOUNT, C.LOCAL_HOUR, C.QUERY,
                  C.LANDING_DATE, C.TS)
#: Events that change whether a user owns an app (the last one per app wins).
_OWNERSHIP_EVENTS = ("install", "uninstall", "purchase")
_NOT_ACTIVITY = ("notification_sent",)

FEATURE_NAMES = (
    "recency_days", "active_days", "log_events", "log_duration_min", "log_purchases", "log_revenue",
    "notification_open_rate", "log_events_last_7d", "tenure_days",
)


# ------------------------------------------------------------------ lake readers
def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem path of a local path or URI (``s3://``)."""
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def path_exists(path: str) -> bool:
    """True when a file or directory exists at ``path``."""
    filesystem, inner = _fs(path)
    return filesystem.get_file_info(inner).type != pafs.FileType.NotFound


def list_partitions(table_path: str, column: str) -> list[str]:
    """Sorted ``YYYY-MM-DD`` values of the ``column=`` partition directories under ``table_path``."""
    filesystem, inner = _fs(table_path)
    if filesystem.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    values = []
    for info in filesystem.get_file_info(pafs.FileSelector(inner)):
        name = info.base_name
        if info.type == pafs.FileType.Directory and name.startswith(f"{column}="):
            try:
                values.append(check_date(name.split("=", 1)[1]))
            except ValueError:
                continue
    return sorted(values)


def read_table(path: str, columns: Sequence[str] | None = None, what: str = "") -> pa.Table:
    """Read a Parquet file or directory; a clear error when it is missing or lacks columns."""
    if not path_exists(path):
        raise FileNotFoundError(f"{what or 'table'} not found at {path}: run the stage that writes it first")
    filesystem, inner = _fs(path)
    dataset = ds.dataset(inner, format="parquet", filesystem=filesystem, partitioning=None)
    if columns is not None:
        missing = [name for name in columns if name not in dataset.schema.names]
        if missing:
            raise KeyError(f"{what or path} lacks columns {missing}; it has {dataset.schema.names}")
    return dataset.to_table(columns=list(columns) if columns is not None else None)


def pick_columns(available: Sequence[str], wanted: dict[str, tuple[str, ...]], required: Sequence[str],
                 what: str) -> dict[str, str]:
    """Resolve logical column names to the first alias present; KeyError naming what is missing.

    ``wanted`` maps a logical name to accepted physical names (aliases), so a
    renamed upstream column is fixed in one place.
    """
    resolved: dict[str, str] = {}
    for logical, aliases in wanted.items():
        for alias in aliases:
            if alias in available:
                resolved[logical] = alias
                break
    missing = [logical for logical in required if logical not in resolved]
    if missing:
        raise KeyError(
            f"{what} lacks required columns {[wanted[name] for name in missing]} "
            f"(logical {missing}); it has {sorted(available)}"
        )
    return resolved


# ------------------------------------------------------------------ activity scan
@dataclass
class Activity:
    """Per-user activity over the feature window ``(cutoff - window_days, cutoff]``.

    Arrays are indexed like the ``user_ids`` given to :func:`scan_activity`. Day
    numbers are days since 1970-01-01; ``last_active`` is -1 without activity.
    The ``next_*`` fields cover the label window ``(cutoff, cutoff + horizon_days]``.
    """

    cutoff: dt.date
    window_days: int
    horizon_days: int
    n_events: np.ndarray
    n_all_events: np.ndarray
    active_days: np.ndarray
    last_active: np.ndarray
    duration_s: np.ndarray
    n_purchases: np.ndarray
    revenue: np.ndarray
    notifications_sent: np.ndarray
    notifications_opened: np.ndarray
    events_last_7d: np.ndarray
    active_next: np.ndarray
    revenue_next: np.ndarray
    days_seen: int = 0

    @classmethod
    def empty(cls, n: int, cutoff: dt.date, window_days: int, horizon_days: int) -> "Activity":
        return cls(
            cutoff, window_days, horizon_days,
            n_events=np.zeros(n), n_all_events=np.zeros(n), active_days=np.zeros(n, dtype=np.int32),
            last_active=np.full(n, -1, dtype=np.int64), duration_s=np.zeros(n), n_purchases=np.zeros(n),
            revenue=np.zeros(n), notifications_sent=np.zeros(n), notifications_opened=np.zeros(n),
            events_last_7d=np.zeros(n), active_next=np.zeros(n, dtype=bool), revenue_next=np.zeros(n),
        )

    @property
    def is_active(self) -> np.ndarray:
        """Any activity in the feature window."""
        return self.active_days > 0


@dataclass
class ScanResult:
    """Everything one pass over silver events yields."""

    activities: dict[dt.date, Activity]
    #: ``[n_users, 24]`` event counts by local hour, run date's window.
    hour_histogram: np.ndarray
    #: ``[n_users, n_categories]`` time-decayed interest weights, run date's window.
    category_weights: np.ndarray
    #: Search history: ``user_pos``, ``query``, ``count``, ``last_day`` (run date's window).
    queries: pd.DataFrame
    #: First event date found in silver (None when there is none).
    first_date: dt.date | None
    partitions_read: int = 0
    #: Apps owned (installed and not uninstalled since, or purchased) in the scanned days, only
    #: for the users ``track_ownership`` selected: ``{user_pos: [app_id, ...]}``.
    owned_apps: dict[int, list[str]] = field(default_factory=dict)


def _epoch_day(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days


def normalize_query(text: str) -> str:
    """Lower-case, trimmed, single-spaced search text of at most 100 characters."""
    return " ".join(str(text).lower().split())[:100]


def _numeric_column(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A numeric column as float64 with nulls as 0 (zeros when the column is absent)."""
    if name not in batch.schema.names:
        return np.zeros(batch.num_rows)
    values = pc.cast(batch.column(name), pa.float64()).to_numpy(zero_copy_only=False)
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)


def scan_activity(
    config: Config,
    date: str,
    user_ids: Sequence[str],
    cutoffs: Sequence[dt.date],
    horizon_days: int,
    app_category: dict[str, int] | None = None,
    n_categories: int = 0,
    batch_rows: int = 262_144,
    track_ownership: np.ndarray | None = None,
) -> ScanResult:
    """One pass over ``silver/events`` partitions up to ``date`` accumulating per-user activity.

    Args:
        user_ids: the users to track (others' events are skipped); arrays follow this order.
        cutoffs: feature cutoffs (the run date first); features cover
            ``(cutoff - profiles.window_days, cutoff]``, labels ``(cutoff, cutoff + horizon_days]``.
        app_category: app id -> category code, for the interest weights (run date's window).
        batch_rows: record-batch size; memory is one batch plus per-user arrays.
        track_ownership: ``bool [n_users]``: users whose owned apps are rebuilt from the events
            (those whose profile carries none, e.g. without behavioural consent: an installed
            app must never be recommended back, whatever the consent).
    """
    lake = Lake(config)
    run_day = dt.date.fromisoformat(check_date(date))
    window = int(config.profiles.window_days)
    half_life = float(config.profiles.half_life_days)
    n = len(user_ids)
    users = pa.array(list(user_ids), type=pa.string())
    activities = {cutoff: Activity.empty(n, cutoff, window, horizon_days) for cutoff in cutoffs}
    hours = np.zeros(n * 24, dtype=np.int64)
    interests = np.zeros(n * max(n_categories, 1))
    query_parts: list[pd.DataFrame] = []
    ownership_parts: list[pd.DataFrame] = []
    earliest = min(cutoffs) - dt.timedelta(days=window - 1)
    table_path = lake.silver("events")
    dates = [d for d in list_partitions(table_path, C.EVENT_DATE)
             if earliest <= dt.date.fromisoformat(d) <= run_day]
    all_dates = list_partitions(table_path, C.EVENT_DATE)
    first_date = dt.date.fromisoformat(all_dates[0]) if all_dates else None
    category_lookup = None
    if app_category:
        category_lookup = (pa.array(list(app_category.keys()), type=pa.string()),
                           np.array(list(app_category.values()), dtype=np.int64))
    for day_text in dates:
        day = dt.date.fromisoformat(day_text)
        epoch = _epoch_day(day)
        filesystem, inner = _fs(lake.partition(table_path, day_text, C.EVENT_DATE))
        dataset = ds.dataset(inner, format="parquet", filesystem=filesystem, partitioning=None)
        names = [name for name in _EVENT_COLUMNS if name in dataset.schema.names]
        if C.USER_ID not in names or C.EVENT_TYPE not in names:
            raise KeyError(f"silver events {day_text} lack user_id/event_type; has {dataset.schema.names}")
        seen_today = np.zeros(n, dtype=bool)
        for batch in dataset.to_batches(columns=names, batch_size=batch_rows):
            if C.LANDING_DATE in names:
                landing = pc.cast(batch.column(C.LANDING_DATE), pa.string())
                batch = batch.filter(pc.less_equal(landing, pa.scalar(run_day.isoformat())))
            position = pc.index_in(batch.column(C.USER_ID), value_set=users)
            keep = pc.is_valid(position)
            batch = batch.filter(keep)
            if batch.num_rows == 0:
                continue
            pos = pc.filter(position, keep).to_numpy(zero_copy_only=False).astype(np.int64)
            kind = batch.column(C.EVENT_TYPE).to_numpy(zero_copy_only=False).astype(str)
            activity_mask = ~np.isin(kind, _NOT_ACTIVITY)
            purchase = kind == "purchase"
            sent = kind == "notification_sent"
            opened = kind == "notification_open"

            duration = np.clip(_numeric_column(batch, C.DURATION_S), 0.0, None)
            amount = np.clip(_numeric_column(batch, C.AMOUNT), 0.0, None)
            if track_ownership is not None and C.APP_ID in names:
                owning = np.isin(kind, _OWNERSHIP_EVENTS) & track_ownership[pos]
                if owning.any():
                    order_key = (batch.column(C.TS).to_numpy(zero_copy_only=False)[owning] if C.TS in names
                                 else np.full(int(owning.sum()), epoch))
                    ownership_parts.append(pd.DataFrame({
                        "user_pos": pos[owning], "app_id": batch.column(C.APP_ID).to_numpy(zero_copy_only=False)[owning],
                        "event_type": kind[owning], "day": epoch, "ts": order_key}))
            act_pos = pos[activity_mask]
            counts = np.bincount(act_pos, minlength=n).astype(np.float64)
            seen_today |= counts > 0
            per_user = {
                "n_events": counts,
                "n_all_events": np.bincount(pos, minlength=n).astype(np.float64),
                "duration_s": np.bincount(pos, weights=duration, minlength=n),
                "n_purchases": np.bincount(pos[purchase], minlength=n).astype(np.float64),
                "revenue": np.bincount(pos[purchase], weights=amount[purchase], minlength=n),
                "notifications_sent": np.bincount(pos[sent], minlength=n).astype(np.float64),
                "notifications_opened": np.bincount(pos[opened], minlength=n).astype(np.float64),
            }
            for cutoff, act in activities.items():
                age = (cutoff - day).days  # 0 on the cutoff day
                if 0 <= age < window:
                    for name, values in per_user.items():
                        getattr(act, name)[:] += values
                    if age < 7:
                        act.events_last_7d += counts
                elif -act.horizon_days <= age < 0:
                    act.revenue_next += per_user["revenue"]
            if day == run_day or (run_day - day).days < window:
                if C.LOCAL_HOUR in names:
                    hour = pc.cast(batch.column(C.LOCAL_HOUR), pa.int64()).to_numpy(zero_copy_only=False)
                    hour = np.asarray(hour, dtype=np.float64)
                    ok = activity_mask & np.isfinite(hour) & (hour >= 0) & (hour < 24)
                    hours += np.bincount(pos[ok] * 24 + hour[ok].astype(np.int64), minlength=n * 24)
                if category_lookup is not None and C.APP_ID in names:
                    app_pos = pc.index_in(batch.column(C.APP_ID), value_set=category_lookup[0])
                    app_pos = np.asarray(app_pos.to_numpy(zero_copy_only=False), dtype=np.float64)
                    weight = np.array([INTEREST_EVENT_WEIGHTS.get(k, 0.0) for k in kind])
                    ok = np.isfinite(app_pos) & (weight != 0)
                    if ok.any():
                        decay = 0.5 ** ((run_day - day).days / half_life)
                        cats = category_lookup[1][app_pos[ok].astype(np.int64)]
                        interests += np.bincount(pos[ok] * n_categories + cats, weights=weight[ok] * decay,
                                                 minlength=n * n_categories)
                if C.QUERY in names:
                    search = (kind == "search") & pc.is_valid(batch.column(C.QUERY)).to_numpy(
                        zero_copy_only=False)
                    if search.any():
                        texts = batch.column(C.QUERY).to_numpy(zero_copy_only=False)[search]
                        frame = pd.DataFrame({"user_pos": pos[search], "query": [normalize_query(t) for t in texts]})
                        frame = frame[frame["query"] != ""]
                        query_parts.append(frame.groupby(["user_pos", "query"]).size().rename("count")
                                           .reset_index().assign(last_day=epoch))
        for cutoff, act in activities.items():
            age = (cutoff - day).days
            if 0 <= age < window:
                act.active_days += seen_today
                act.last_active = np.where(seen_today, np.maximum(act.last_active, epoch), act.last_active)
                act.days_seen += 1
            elif -act.horizon_days <= age < 0:
                act.active_next |= seen_today
    if query_parts:
        queries = (pd.concat(query_parts).groupby(["user_pos", "query"])
                   .agg(count=("count", "sum"), last_day=("last_day", "max")).reset_index())
    else:
        queries = pd.DataFrame({"user_pos": pd.Series([], dtype=np.int64), "query": pd.Series([], dtype=object),
                                "count": pd.Series([], dtype=np.int64), "last_day": pd.Series([], dtype=np.int64)})
    owned: dict[int, list[str]] = {}
    if ownership_parts:
        actions = pd.concat(ownership_parts, ignore_index=True).dropna(subset=["app_id"])
        last = actions.sort_values(["day", "ts"], kind="stable").groupby(["user_pos", "app_id"]).tail(1)
        last = last[last["event_type"] != "uninstall"].sort_values(["user_pos", "app_id"])
        owned = {int(u): group["app_id"].astype(str).tolist() for u, group in last.groupby("user_pos")}
    return ScanResult(
        owned_apps=owned,
        activities=activities,
        hour_histogram=hours.reshape(n, 24),
        category_weights=interests.reshape(n, max(n_categories, 1))[:, :n_categories],
        queries=queries,
        first_date=first_date,
        partitions_read=len(dates),
    )


# ------------------------------------------------------------------ features and scores
def activity_features(activity: Activity, signup_day: np.ndarray) -> np.ndarray:
    """``float [n, len(FEATURE_NAMES)]`` features as of ``activity.cutoff``.

    ``signup_day`` is days since epoch (-1 unknown). Recency without activity in
    the window is ``window_days``; tenure is capped at 365 days (unknown: the window).
    """
    cutoff = _epoch_day(activity.cutoff)
    recency = np.where(activity.last_active >= 0, cutoff - activity.last_active, activity.window_days)
    tenure = np.where(signup_day >= 0, np.clip(cutoff - signup_day, 0, 365), activity.window_days)
    open_rate = (activity.notifications_opened + 1.0) / (activity.notifications_sent + 2.0)
    return np.column_stack([
        recency.astype(np.float64),
        activity.active_days.astype(np.float64),
        np.log1p(activity.n_events),
        np.log1p(activity.duration_s / 60.0),
        np.log1p(activity.n_purchases),
        np.log1p(activity.revenue),
        open_rate,
        np.log1p(activity.events_last_7d),
        tenure.astype(np.float64),
    ])


def midrank_percentile(values: np.ndarray) -> np.ndarray:
    """Mid-rank percentile in [0, 1]: ``(#{x_j < x_i} + (#{x_j = x_i} - 1) / 2) / (n - 1)``; 0.5 when n = 1."""
    from scipy.stats import rankdata

    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return values
    if len(values) == 1:
        return np.array([0.5])
    return (rankdata(values, method="average") - 1.0) / (len(values) - 1.0)


def engagement_score(recency_days: np.ndarray, active_days: np.ndarray, duration_s: np.ndarray) -> np.ndarray:
    """Engagement in [0, 100] from recency, frequency and duration, percentile-normalised.

    ``E = 100 * (0.40 * P(-recency_days) + 0.35 * P(active_days) + 0.25 * P(duration_s))``
    where ``P`` is :func:`midrank_percentile` taken over the users active in the
    window (``active_days > 0``); users with no activity in the window get 0.
    Recency is days since the last activity (lower is better, hence the minus).
    """
    recency_days = np.asarray(recency_days, dtype=np.float64)
    active_days = np.asarray(active_days, dtype=np.float64)
    duration_s = np.asarray(duration_s, dtype=np.float64)
    score = np.zeros(len(active_days))
    active = active_days > 0
    if active.any():
        w_recency, w_frequency, w_duration = ENGAGEMENT_WEIGHTS
        score[active] = 100.0 * (
            w_recency * midrank_percentile(-recency_days[active])
            + w_frequency * midrank_percentile(active_days[active])
            + w_duration * midrank_percentile(duration_s[active])
        )
    return score


def poisson_churn(active_days: np.ndarray, exposure_days: np.ndarray, horizon_days: int) -> np.ndarray:
    """Fallback churn risk: P(no active day in ``horizon_days``) = exp(-horizon * active_days / exposure).

    Treats active days as a Poisson process with the user's observed daily rate.
    """
    rate = np.asarray(active_days, dtype=np.float64) / np.maximum(np.asarray(exposure_days, dtype=np.float64), 1.0)
    return np.exp(-horizon_days * rate)


@dataclass
class ChurnModel:
    """A fitted churn classifier, or the Poisson fallback when ``estimator`` is None."""

    estimator: Any | None
    horizon_days: int
    #: How it was trained/evaluated: "out_of_time", "user_split" or "poisson_fallback".
    holdout: str
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    reliability: list[dict[str, float]] = field(default_factory=list)
    #: The estimator fitted one horizon before the served one (out-of-time evaluation), if any.
    eval_estimator: Any | None = None

    def predict(self, features: np.ndarray, exposure_days: np.ndarray) -> np.ndarray:
        """P(no activity in the next CHURN_HORIZON_DAYS days), in [0, 1].

        A classifier trained on a shorter label window ``h`` (too little history) serves
        its P(no activity in ``h`` days) unchanged: an upper bound of the 14-day risk
        (14 idle days imply ``h`` idle days). The run's notes say so.
        """
        if self.estimator is None:
            return poisson_churn(features[:, FEATURE_NAMES.index("active_days")], exposure_days,
                                 CHURN_HORIZON_DAYS)
        probability = self.estimator.predict_proba(features)[:, 1]
        return np.clip(probability, 0.0, 1.0)


def reliability_bins(probability: np.ndarray, label: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Calibration table: per equal-width probability bin, count, mean prediction and observed rate."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(probability, edges[1:-1]), 0, bins - 1)
    table = []
    for b in range(bins):
        inside = index == b
        if inside.any():
            table.append({"bin_low": float(edges[b]), "bin_high": float(edges[b + 1]), "count": int(inside.sum()),
                          "mean_predicted": float(probability[inside].mean()),
                          "observed_rate": float(label[inside].mean())})
    return table


def _new_estimator(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, random_state=seed))


def _usable(label: np.ndarray) -> bool:
    return len(label) >= MIN_TRAINING_USERS and 0 < int(label.sum()) < len(label)


def _evaluate(estimator: Any, features: np.ndarray, label: np.ndarray) -> tuple[dict[str, float], list]:
    from sklearn.metrics import brier_score_loss, roc_auc_score

    probability = estimator.predict_proba(features)[:, 1]
    metrics = {"churn_brier": float(brier_score_loss(label, probability)),
               "churn_base_rate": float(label.mean()), "churn_eval_users": float(len(label))}
    if 0 < label.sum() < len(label):
        metrics["churn_auc"] = float(roc_auc_score(label, probability))
    return metrics, reliability_bins(probability, label)


def fit_churn_model(
    train: tuple[np.ndarray, np.ndarray] | None,
    evaluate: tuple[np.ndarray, np.ndarray] | None,
    final: tuple[np.ndarray, np.ndarray] | None,
    horizon_days: int,
    seed: int,
    notes: Sequence[str] = (),
) -> ChurnModel:
    """Fit and evaluate the churn classifier.

    Args:
        train, evaluate: ``(features, churned)`` at an earlier and a later cutoff
            (out-of-time evaluation); ``evaluate`` None means only ``final`` exists.
        final: ``(features, churned)`` at the latest labelled cutoff (run date - horizon);
            the served model is refit on it.
    With only ``final``, evaluation uses a seeded 75/25 user split of it. Without
    two label classes or :data:`MIN_TRAINING_USERS` users, returns the Poisson fallback.
    """
    notes = list(notes)
    if final is None or not _usable(final[1]):
        notes.append("too little labelled history for a classifier: Poisson fallback on active days")
        return ChurnModel(None, horizon_days, "poisson_fallback", notes)
    if train is not None and evaluate is not None and _usable(train[1]) and len(evaluate[1]) > 0:
        estimator = _new_estimator(seed).fit(*train)
        metrics, table = _evaluate(estimator, *evaluate)
        holdout = "out_of_time"
    else:
        estimator = None
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(final[1]))
        cut = int(len(order) * 0.75)
        fit_rows, eval_rows = order[:cut], order[cut:]
        if _usable(final[1][fit_rows]) and len(eval_rows):
            # Not kept as eval_estimator: it saw 75 % of the labels the LTV holdout is scored on.
            split_estimator = _new_estimator(seed).fit(final[0][fit_rows], final[1][fit_rows])
            metrics, table = _evaluate(split_estimator, final[0][eval_rows], final[1][eval_rows])
        else:
            metrics, table = {}, []
        holdout = "user_split"
        notes.append("one labelled cutoff only: evaluated on a 75/25 user split, not out of time")
    served = _new_estimator(seed).fit(*final)
    metrics["churn_train_users"] = float(len(final[1]))
    return ChurnModel(served, horizon_days, holdout, notes, metrics, table, eval_estimator=estimator)


def lifetime_value(
    n_purchases: np.ndarray,
    revenue: np.ndarray,
    exposure_days: np.ndarray,
    churn_risk: np.ndarray,
    horizon_days: int = LTV_HORIZON_DAYS,
    population: tuple[float, float] | None = None,
) -> np.ndarray:
    """Expected revenue (USD) over the next ``horizon_days``: rate x amount x expected alive days.

    - purchase rate per day, shrunk to the population rate ``r0``:
      ``lambda = (purchases + r0 * 30) / (exposure_days + 30)``;
    - amount per purchase, shrunk to the population mean ``m0``:
      ``m = (revenue + 1 * m0) / (purchases + 1)``;
    - daily survival from the 14-day churn risk ``r = (1 - churn) ** (1 / 14)`` and
      expected alive days ``S = sum_{t=1..H} r**t = r (1 - r**H) / (1 - r)`` (``H`` when r = 1).
    ``population = (r0, m0)``; computed from the inputs when None.
    """
    n_purchases = np.asarray(n_purchases, dtype=np.float64)
    revenue = np.asarray(revenue, dtype=np.float64)
    exposure = np.maximum(np.asarray(exposure_days, dtype=np.float64), 1.0)
    if population is None:
        total = n_purchases.sum()
        population = (total / exposure.sum() if exposure.sum() else 0.0, revenue.sum() / total if total else 0.0)
    rate0, amount0 = population
    rate = (n_purchases + rate0 * LTV_PRIOR_DAYS) / (exposure + LTV_PRIOR_DAYS)
    amount = (revenue + LTV_PRIOR_PURCHASES * amount0) / (n_purchases + LTV_PRIOR_PURCHASES)
    survival = np.clip(1.0 - np.asarray(churn_risk, dtype=np.float64), 0.0, 1.0) ** (1.0 / CHURN_HORIZON_DAYS)
    with np.errstate(divide="ignore", invalid="ignore"):
        alive_days = np.where(survival >= 1.0 - 1e-12, float(horizon_days),
                              survival * (1.0 - survival ** horizon_days) / (1.0 - survival))
    return rate * amount * alive_days


def next_best_action(
    *,
    is_new: bool,
    churn_risk: float,
    engagement: float,
    n_purchases: float,
    top_category: str | None,
) -> str:
    """The one action to take for a user, first matching rule wins:

    1. signed up in the last 14 days (or never active) -> ``onboard_new_user``;
    2. churn risk >= 0.5 -> ``re_engage_notification``;
    3. engagement >= 60 and never purchased -> ``offer_premium``;
    4. a primary interest exists -> ``suggest_category:<category>``;
    5. otherwise ``none``.
    """
    if is_new:
        return "onboard_new_user"
    if churn_risk >= CHURN_ACTION_THRESHOLD:
        return "re_engage_notification"
    if engagement >= PREMIUM_ENGAGEMENT_THRESHOLD and n_purchases <= 0:
        return "offer_premium"
    if top_category:
        return f"suggest_category:{top_category}"
    return "none"


def best_notification_hour(hour_histogram: np.ndarray) -> np.ndarray:
    """Argmax local hour (0..23) of each row; ties go to the earliest hour; empty rows get 19."""
    hour_histogram = np.asarray(hour_histogram)
    best = np.argmax(hour_histogram, axis=1)
    return np.where(hour_histogram.sum(axis=1) > 0, best, DEFAULT_NOTIFICATION_HOUR).astype(np.int64)


def notification_channel(engagement: np.ndarray, sent: np.ndarray, opened: np.ndarray) -> np.ndarray:
    """``in_app`` for engagement >= 70 (they open the store anyway), ``email`` when push is ignored
    (at least 3 sent and open rate < 5 %), else ``push``."""
    engagement = np.asarray(engagement, dtype=np.float64)
    sent = np.asarray(sent, dtype=np.float64)
    open_rate = np.divide(opened, sent, out=np.zeros(len(sent)), where=sent > 0)
    ignored = (sent >= EMAIL_MIN_SENT) & (open_rate < EMAIL_MAX_OPEN_RATE)
    return np.where(engagement >= IN_APP_ENGAGEMENT_THRESHOLD, "in_app", np.where(ignored, "email", "push"))


def notification_cap(engagement: np.ndarray) -> np.ndarray:
    """Notifications per week: 1 below engagement 30, 3 below 70, else 5."""
    engagement = np.asarray(engagement, dtype=np.float64)
    return np.where(engagement < 30, 1, np.where(engagement < 70, 3, 5)).astype(np.int64)


def primary_interests(weights: np.ndarray, categories: Sequence[str], n: int = PRIMARY_INTERESTS_N) -> list[str]:
    """JSON list ``[{"category": c, "weight": w}, ...]`` of each row's top positive categories.

    Weights are the positive parts normalised to sum to 1 over all categories, rounded to 3 decimals.
    """
    out = []
    positive = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    totals = positive.sum(axis=1)
    for row, total in zip(positive, totals, strict=True):
        if total <= 0:
            out.append("[]")
            continue
        order = np.argsort(-row, kind="stable")[:n]
        items = [{"category": categories[c], "weight": round(float(row[c] / total), 3)} for c in order if row[c] > 0]
        out.append(json.dumps(items))
    return out


# ------------------------------------------------------------------ the whole computation
@dataclass
class InsightsResult:
    """The insights table plus per-user arrays that batch scoring reuses (same user order)."""

    table: pd.DataFrame
    #: Activity (any event but notification_sent) in the window.
    is_active: np.ndarray
    #: Any event at all in the window (notification_sent included): who gets recommendations.
    has_events: np.ndarray
    is_buyer: np.ndarray
    category_weights: np.ndarray
    queries: pd.DataFrame
    summary: dict[str, Any]
    #: Owned apps of users without behavioural consent (their profile has none): ``{user_pos: [app_id]}``.
    owned_apps: dict[int, list[str]] = field(default_factory=dict)


def compute_insights(
    config: Config,
    date: str,
    users: pd.DataFrame,
    categories: Sequence[str],
    app_category: dict[str, int],
    model_version: str,
    log_to_mlflow: bool = True,
) -> InsightsResult:
    """Insights for every user in ``users`` (columns ``user_id``, ``segment``, ``consent_behavioral``,
    ``signup_date`` (date or None), ``purchase_count`` (lifetime, may be NaN)).

    Trains the churn classifier (time-based holdout), evaluates it and the LTV model,
    logs both to MLflow (experiment ``config.mlflow.experiment``, tag ``stage=insights``).
    """
    run_day = dt.date.fromisoformat(check_date(date))
    horizon = CHURN_HORIZON_DAYS
    lake = Lake(config)
    partitions = [d for d in list_partitions(lake.silver("events"), C.EVENT_DATE) if d <= run_day.isoformat()]
    notes: list[str] = []
    first = dt.date.fromisoformat(partitions[0]) if partitions else run_day
    history_days = (run_day - first).days + 1
    if history_days < horizon + MIN_FEATURE_DAYS:
        horizon = max(1, (history_days - 1) // 2)
        notes.append(f"only {history_days} days of events: churn label window shortened to {horizon} days; "
                     f"a classifier's churn_risk is then P(idle {horizon} days), an upper bound of the "
                     f"{CHURN_HORIZON_DAYS}-day risk")
    final_cutoff = run_day - dt.timedelta(days=horizon)
    train_cutoff = final_cutoff - dt.timedelta(days=horizon)
    use_out_of_time = (train_cutoff - first).days + 1 >= MIN_FEATURE_DAYS
    cutoffs = [run_day, final_cutoff] + ([train_cutoff] if use_out_of_time else [])
    user_ids = users[C.USER_ID].astype(str).tolist()
    signup_day = np.array([_epoch_day(d) if isinstance(d, dt.date) else -1 for d in users["signup_date"]],
                          dtype=np.int64)
    consent = users["consent_behavioral"].fillna(False).astype(bool).to_numpy()
    scan = scan_activity(config, date, user_ids, cutoffs, horizon, app_category, len(categories),
                         track_ownership=~consent)

    def labelled(cutoff: dt.date) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        act = scan.activities[cutoff]
        known = consent & ((signup_day < 0) | (signup_day <= _epoch_day(cutoff)))
        return activity_features(act, signup_day)[known], (~act.active_next)[known].astype(np.int64), known

    final = labelled(final_cutoff)
    train = labelled(train_cutoff) if use_out_of_time else None
    model = fit_churn_model(
        train[:2] if train else None, final[:2] if train else None, final[:2], horizon, config.training.seed, notes)

    now = scan.activities[run_day]
    window = config.profiles.window_days

    def exposure(cutoff: dt.date) -> np.ndarray:
        """Days each user could have been observed up to ``cutoff``: tenure, data history and window."""
        observed = (cutoff - first).days + 1
        tenure = np.where(signup_day >= 0, _epoch_day(cutoff) - signup_day + 1, observed)
        return np.clip(np.minimum(tenure, observed), 1, window).astype(np.float64)

    features = activity_features(now, signup_day)
    churn = model.predict(features, exposure(run_day))
    recency = features[:, FEATURE_NAMES.index("recency_days")]
    engagement = np.zeros(len(user_ids))
    engagement[consent] = engagement_score(recency[consent], now.active_days[consent], now.duration_s[consent])
    population = _population(now, exposure(run_day), consent)
    ltv = lifetime_value(now.n_purchases, now.revenue, exposure(run_day), churn, population=population)

    # LTV holdout: the same formula at the labelled cutoff over its label window, against real revenue.
    metrics = dict(model.metrics)
    held = scan.activities[final_cutoff]
    # Churn at the held-out cutoff from the model trained one horizon earlier (no label leak);
    # the Poisson fallback when there is no such model.
    held_model = ChurnModel(model.eval_estimator, horizon, model.holdout)
    held_churn = held_model.predict(activity_features(held, signup_day), exposure(final_cutoff))
    held_pop = _population(held, exposure(final_cutoff), consent)
    predicted = lifetime_value(held.n_purchases, held.revenue, exposure(final_cutoff), held_churn,
                               horizon_days=horizon, population=held_pop)
    known = final[2]
    if known.any():
        actual = held.revenue_next[known]
        metrics["ltv_holdout_mae"] = float(np.mean(np.abs(predicted[known] - actual)))
        metrics["ltv_holdout_mae_zero_baseline"] = float(np.mean(np.abs(actual)))
        metrics["ltv_holdout_mean_actual"] = float(np.mean(actual))

    pref = scan.category_weights
    interests = primary_interests(pref, categories)
    top_category = [None if not row.any() or row.max() <= 0 else categories[int(np.argmax(row))] for row in pref]
    lifetime_purchases = pd.to_numeric(users.get("purchase_count"), errors="coerce") if "purchase_count" in users \
        else pd.Series(np.nan, index=users.index)
    purchases_any = np.maximum(now.n_purchases, np.nan_to_num(lifetime_purchases.to_numpy(dtype=np.float64)))
    # New: signed up in the last NEW_USER_DAYS days, or signed up within the window and never active since.
    tenure = np.where(signup_day >= 0, _epoch_day(run_day) - signup_day, np.iinfo(np.int64).max)
    is_new = (tenure < NEW_USER_DAYS) | ((tenure < window) & ~now.is_active)
    actions = [
        next_best_action(is_new=bool(is_new[i]), churn_risk=float(churn[i]), engagement=float(engagement[i]),
                         n_purchases=float(purchases_any[i]), top_category=top_category[i])
        for i in range(len(user_ids))
    ]
    hour = best_notification_hour(scan.hour_histogram)
    channel = notification_channel(engagement, now.notifications_sent, now.notifications_opened)
    cap = notification_cap(engagement)
    table = pd.DataFrame({
        "user_id": user_ids,
        "segment": users["segment"].astype(object).where(users["segment"].notna(), None).tolist(),
        "engagement_score": np.round(engagement, 3),
        "churn_risk": np.round(churn, 4),
        "lifetime_value": np.round(ltv, 2),
        "primary_interests": interests,
        "next_best_action": actions,
        "best_notification_hour": hour,
        "notification_channel": channel,
        "notification_cap_per_week": cap,
    })
    # No behavioural consent: no profile built from their behaviour. They get the population
    # means of consenting users (the same values for all of them) and neutral settings.
    no_consent = ~consent
    for name in ("engagement_score", "churn_risk", "lifetime_value"):
        population_mean = float(table.loc[consent, name].mean()) if consent.any() else 0.0
        table.loc[no_consent, name] = round(population_mean, 4)
    table.loc[no_consent, "best_notification_hour"] = DEFAULT_NOTIFICATION_HOUR
    table.loc[no_consent, "primary_interests"] = "[]"
    table.loc[no_consent, "next_best_action"] = "none"
    table.loc[no_consent, "notification_channel"] = "in_app"
    table.loc[no_consent, "notification_cap_per_week"] = 0
    table["model_version"] = model_version
    table["generated_for"] = run_day

    summary: dict[str, Any] = {
        "churn_model": "logistic_regression" if model.estimator is not None else "poisson_fallback",
        "churn_holdout": model.holdout, "churn_label_days": horizon, "notes": model.notes,
        "history_days": history_days, "silver_partitions_read": scan.partitions_read,
        **{key: round(value, 6) for key, value in metrics.items()},
    }
    truth = sim_truth_correlation(config, user_ids, churn, consent)
    if truth is not None:
        summary["sim_truth_churn_spearman"] = truth
    if log_to_mlflow:
        summary["mlflow_run_id"] = _log_mlflow(config, date, model, summary)
    log.info("insights for %s: %s", date, summary)
    return InsightsResult(
        table=table,
        is_active=now.is_active,
        has_events=now.n_all_events > 0,
        is_buyer=purchases_any > 0,
        category_weights=pref,
        queries=scan.queries,
        summary=summary,
        owned_apps=scan.owned_apps,
    )


def _population(activity: Activity, exposure: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    purchases = activity.n_purchases[mask].sum()
    days = exposure[mask].sum()
    return (float(purchases / days) if days else 0.0,
            float(activity.revenue[mask].sum() / purchases) if purchases else 0.0)


def sim_truth_correlation(config: Config, user_ids: Sequence[str], churn: np.ndarray,
                          mask: np.ndarray) -> float | None:
    """Spearman correlation of churn_risk with the generator's hidden churn propensity, when present."""
    path = Lake(config).sim_truth()
    if not path_exists(path):
        return None
    truth = read_table(path).to_pandas()
    candidates = [name for name in truth.columns if "churn" in name.lower()]
    if C.USER_ID not in truth.columns or not candidates:
        return None
    from personalization.privacy import lake_user_ids

    truth[C.USER_ID] = lake_user_ids(config, truth[C.USER_ID].astype(str))  # the simulator keeps the app's ids
    mine = pd.DataFrame({C.USER_ID: list(user_ids), "churn_risk": churn})[mask]
    joined = mine.merge(truth[[C.USER_ID, candidates[0]]], on=C.USER_ID)
    if len(joined) < 3:
        return None
    value = joined["churn_risk"].corr(joined[candidates[0]], method="spearman")
    return None if pd.isna(value) else round(float(value), 4)


def _log_mlflow(config: Config, date: str, model: ChurnModel, summary: dict[str, Any]) -> str:
    """Log the insights models' evaluation to MLflow; returns the run id."""
    import mlflow

    from models.tracking import configure_mlflow  # the experiment set-up every stage shares

    configure_mlflow(config)
    with mlflow.start_run(run_name=f"insights-{date}", tags={"stage": "insights", "date": date}) as run:
        mlflow.log_params({"churn_model": summary["churn_model"], "churn_holdout": model.holdout,
                           "churn_label_days": model.horizon_days, "ltv_horizon_days": LTV_HORIZON_DAYS,
                           "window_days": config.profiles.window_days})
        mlflow.log_metrics({key: float(value) for key, value in summary.items()
                            if isinstance(value, (int, float)) and not isinstance(value, bool)
                            and math.isfinite(float(value))})
        mlflow.log_dict({"reliability_bins": model.reliability, "notes": model.notes}, "churn_calibration.json")
        if model.estimator is not None:
            coefficients = model.estimator[-1].coef_[0].tolist()
            mlflow.log_dict(dict(zip(FEATURE_NAMES, coefficients, strict=True)), "churn_coefficients.json")
        return run.info.run_id
