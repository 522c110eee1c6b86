"""Daily personalization KPIs (the design document's ``PersonalizationKPIs``), one row per date.

Groups and definitions (all for one UTC date ``D``; ``None`` when a denominator is zero
or an input is missing):

engagement
    ``daily_active_users``: distinct users with a user-initiated event on D (every event
    type except ``notification_sent`` and ``consent_change``, which the user does not do);
    ``mean_session_duration_s``: mean over usage sessions (a ``session_id`` with at least
    one ``app_open`` on D) of the summed ``duration_s``, seconds;
    ``apps_per_session``: mean distinct apps opened per usage session;
    ``return_rate``: share (0..1) of D-1's active users who are active on D.
quality
    ``ctr``: app views / impressions on the recommendation surfaces (0..1);
    ``install_rate``: installs / impressions on those surfaces (0..1);
    ``diversity``: intra-list diversity of the served ``for_you`` lists after re-ranking
    (from the ``score_users`` run record), 0..1;
    ``novelty``: mean self-information ``-log2((u_app + 1) / (DAU + 1))`` of the apps in
    ``gold/recommendations/date=D``, where ``u_app`` is the number of D's active users who
    viewed, installed or opened the app, bits (0 = everyone uses it).
business
    ``revenue_per_active_user``: purchase amounts on D / DAU, USD;
    ``conversion_rate``: purchasers / DAU (0..1);
    ``churn_rate``: share (0..1) of the users active in the 14 days D-13..D who were not
    active in the last 7 days D-6..D;
    ``ltv_mean``: mean ``lifetime_value`` of ``gold/user_insights/date=D``, USD.
technical
    ``ndcg_at_10``: offline validation NDCG@k of the champion after the night's promotion gate;
    ``scoring_seconds_per_1k_users``: ``score_users`` seconds per 1000 users scored;
    ``error_rate``: failed task attempts / (failed attempts + completed stages) on D, from the
    ``alerts`` table and the run records;
    ``quarantine_rate``: quarantined / total raw lines of D's landing batch (0..1).

Events are read from ``silver/events/event_date=D`` with pyarrow, only the needed
columns, with the event-type filter pushed down to the Parquet scan. The KPIs are
upserted into the serving database's ``kpis`` table (keyed on date). The small
lake-reading helpers here (:func:`read_table`, :func:`count_rows`) are shared by the
experiment report and the monitoring checks.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from jobs import columns as C
from personalization.config import Config
from personalization.lake import Lake, check_date

log = logging.getLogger(__name__)

#: Event types that mean the user did something (the system sends notifications; consent is not engagement).
ACTIVE_EVENT_TYPES = tuple(t for t in C.EVENT_TYPES if t not in ("notification_sent", "consent_change"))
#: Surfaces whose slates come from the recommendations table (``models.surfaces.HOME_SURFACES``).
RECOMMENDATION_SURFACES = ("for_you", "because_you_liked", "trending_in_your_area", "new_for_you", "featured")
#: Event types that show a user used an app (novelty's popularity counts).
APP_USE_EVENT_TYPES = ("app_view", "install", "app_open")
#: Days of activity looked back on for the churn rate, and the recent part of that window.
CHURN_WINDOW_DAYS = 14
CHURN_RECENT_DAYS = 7
#: The DAG whose failed task attempts count in the error rate.
NIGHTLY_DAG_ID = "personalization_nightly"

KPI_TABLE = "kpis"
#: (group, column) of every KPI, in the order of the design document.
KPI_COLUMNS: tuple[tuple[str, str], ...] = (
    ("engagement", "daily_active_users"),
    ("engagement", "mean_session_duration_s"),
    ("engagement", "apps_per_session"),
    ("engagement", "return_rate"),
    ("quality", "ctr"),
    ("quality", "install_rate"),
    ("quality", "diversity"),
    ("quality", "novelty"),
    ("business", "revenue_per_active_user"),
    ("business", "conversion_rate"),
    ("business", "churn_rate"),
    ("business", "ltv_mean"),
    ("technical", "ndcg_at_10"),
    ("technical", "scoring_seconds_per_1k_users"),
    ("technical", "error_rate"),
    ("technical", "quarantine_rate"),
)
KPI_GROUPS = ("engagement", "quality", "business", "technical")


# ------------------------------------------------------------------ lake reading
def _arrow_location(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a local path or an ``s3://`` / ``s3a://`` URI."""
    from pyarrow import fs as pafs

    if uri.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
        return pafs.S3FileSystem(endpoint_override=endpoint), uri.split("://", 1)[1]
    return pafs.LocalFileSystem(), uri


def table_exists(uri: str) -> bool:
    """Whether a Parquet table (file or folder) exists at ``uri``."""
    from pyarrow import fs as pafs

    filesystem, path = _arrow_location(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def _dataset(uri: str) -> Any:
    import pyarrow.dataset as ds

    filesystem, path = _arrow_location(uri)
    # Spark's _SUCCESS / .crc side files start with "_" or "." and are skipped (the default).
    return ds.dataset(path, format="parquet", filesystem=filesystem)


def read_table(
    uri: str, columns: Sequence[str], where: Mapping[str, Iterable[Any]] | None = None
) -> pd.DataFrame:
    """The ``columns`` of the Parquet table at ``uri`` as pandas; empty (same columns) when it is missing.

    ``where`` maps a column to the values to keep (pushed down to the scan). Columns
    absent from the files come back all-null, so older partitions still read.
    """
    if not table_exists(uri):
        return pd.DataFrame({name: pd.Series(dtype=object) for name in columns})
    import pyarrow.dataset as ds

    dataset = _dataset(uri)
    present = [name for name in columns if name in dataset.schema.names]
    condition = None
    for name, values in (where or {}).items():
        if name not in dataset.schema.names:
            return pd.DataFrame({column: pd.Series(dtype=object) for column in columns})
        term = ds.field(name).isin(list(values))
        condition = term if condition is None else condition & term
    frame = dataset.to_table(columns=present, filter=condition).to_pandas()
    for name in columns:
        if name not in frame.columns:
            frame[name] = None
    return frame[list(columns)]


def count_rows(uri: str) -> int | None:
    """Row count of the Parquet table at ``uri`` from file metadata; None when it is missing."""
    if not table_exists(uri):
        return None
    return int(_dataset(uri).count_rows())


def events_path(config: Config, date: str) -> str:
    """``silver/events/event_date=D``."""
    lake = Lake(config)
    return lake.partition(lake.silver("events"), date, column=C.EVENT_DATE)


def shift(date: str, days: int) -> str:
    """``date`` plus ``days`` (negative for the past), as YYYY-MM-DD."""
    return (dt.date.fromisoformat(check_date(date)) + dt.timedelta(days=days)).isoformat()


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def _clean(value: Any) -> Any:
    """NaN and numpy scalars to plain Python (None for NaN), so KPIs are JSON- and SQL-safe."""
    if value is None:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    return value


# ------------------------------------------------------------------ pure KPI functions
def active_users(events: pd.DataFrame) -> set[str]:
    """Distinct user ids with a user-initiated event (``ACTIVE_EVENT_TYPES``)."""
    mask = events[C.EVENT_TYPE].isin(ACTIVE_EVENT_TYPES) & events[C.USER_ID].notna()
    return set(events.loc[mask, C.USER_ID].tolist())


def engagement_kpis(today: pd.DataFrame, yesterday_active: set[str]) -> dict[str, Any]:
    """DAU, mean usage-session duration (s), apps per session and return rate from one day's events."""
    active = active_users(today)
    opens = today[(today[C.EVENT_TYPE] == "app_open") & today[C.SESSION_ID].notna()]
    if len(opens):
        # pandas' sum skips nulls: an open without a duration adds 0 s but still counts its app.
        sessions = opens.groupby(C.SESSION_ID).agg(seconds=(C.DURATION_S, "sum"), apps=(C.APP_ID, "nunique"))
        mean_duration, apps_per_session = float(sessions["seconds"].mean()), float(sessions["apps"].mean())
    else:
        mean_duration = apps_per_session = None
    returned = len(active & yesterday_active)
    return {
        "daily_active_users": len(active),
        "mean_session_duration_s": mean_duration,
        "apps_per_session": apps_per_session,
        "return_rate": _ratio(returned, len(yesterday_active)),
    }


def quality_kpis(
    today: pd.DataFrame,
    surfaces: Sequence[str] = RECOMMENDATION_SURFACES,
    diversity: float | None = None,
    novelty: float | None = None,
) -> dict[str, Any]:
    """CTR and install rate on the recommendation ``surfaces``; diversity and novelty passed through."""
    on_surface = today[today[C.SURFACE].isin(surfaces)]
    counts = on_surface[C.EVENT_TYPE].value_counts()
    impressions = int(counts.get("impression", 0))
    return {
        "ctr": _ratio(int(counts.get("app_view", 0)), impressions),
        "install_rate": _ratio(int(counts.get("install", 0)), impressions),
        "diversity": _clean(diversity),
        "novelty": _clean(novelty),
    }


def business_kpis(
    today: pd.DataFrame,
    window_active: set[str],
    recent_active: set[str],
    ltv_mean: float | None = None,
) -> dict[str, Any]:
    """Revenue per active user (USD), conversion and churn (0..1) and the LTV mean (USD) passed through.

    ``window_active``: users active in the churn window (D-13..D); ``recent_active``:
    users active in its last 7 days (D-6..D).
    """
    active = active_users(today)
    purchases = today[today[C.EVENT_TYPE] == "purchase"]
    revenue = float(np.nansum(purchases[C.AMOUNT].to_numpy(dtype=float))) if len(purchases) else 0.0
    purchasers = purchases[C.USER_ID].dropna().nunique()
    churned = len(window_active - recent_active)
    return {
        "revenue_per_active_user": _ratio(revenue, len(active)),
        "conversion_rate": _ratio(purchasers, len(active)),
        "churn_rate": _ratio(churned, len(window_active)),
        "ltv_mean": _clean(ltv_mean),
    }


def novelty(
    recommended_app_ids: Sequence[str], users_per_app: Mapping[str, int], n_active: int
) -> float | None:
    """Mean self-information ``-log2((u_app + 1) / (n_active + 1))`` of recommended apps, in bits."""
    if len(recommended_app_ids) == 0:
        return None
    counts = np.array([users_per_app.get(app, 0) for app in recommended_app_ids], dtype=float)
    return float(np.mean(-np.log2((counts + 1.0) / (n_active + 1.0))))


def technical_kpis(
    records: Mapping[str, Mapping[str, Any] | None], k: int = 10, task_failures: int = 0
) -> dict[str, Any]:
    """Champion NDCG@k, scoring seconds per 1000 users, error and quarantine rates from run records.

    ``records`` maps a pipeline stage to its JSON record (``var/runs/<date>/<stage>.json``) or None.
    """
    metric = f"ndcg@{k}"
    ndcg = None
    promotion = records.get("evaluate_and_promote") or {}
    if promotion:
        # The champion after the gate: the challenger when promoted, else the previous champion.
        chosen = (
            promotion.get("challenger_metrics")
            if promotion.get("promoted")
            else promotion.get("champion_metrics")
        )
        ndcg = (chosen or {}).get(metric)
    training = records.get("train_models") or {}
    if ndcg is None and training.get("best_model"):
        ndcg = training.get("metrics", {}).get(training["best_model"], {}).get(metric)
    scoring = records.get("score_users") or {}
    users = scoring.get("users_scored", scoring.get("users"))
    seconds_per_1k = (
        _ratio(1000.0 * float(scoring["seconds"]), users) if users and "seconds" in scoring else None
    )
    validation = records.get("validate_raw_events") or {}
    completed = sum(1 for record in records.values() if record)
    return {
        "ndcg_at_10": _clean(ndcg),
        "scoring_seconds_per_1k_users": seconds_per_1k,
        "error_rate": _ratio(task_failures, task_failures + completed),
        "quarantine_rate": _ratio(validation.get("quarantined", 0), validation.get("total", 0)),
    }


# ------------------------------------------------------------------ lake + records -> KPIs
def _active_by_day(config: Config, date: str, days: int) -> dict[str, set[str]]:
    """Active users of each of the ``days`` dates ending at ``date`` (only user ids are read)."""
    result = {}
    for offset in range(days):
        day = shift(date, -offset)
        frame = read_table(
            events_path(config, day), [C.USER_ID, C.EVENT_TYPE], {C.EVENT_TYPE: ACTIVE_EVENT_TYPES}
        )
        result[day] = set(frame[C.USER_ID].dropna().tolist())
    return result


def _served_novelty(config: Config, date: str, today: pd.DataFrame, n_active: int) -> float | None:
    lake = Lake(config)
    served = read_table(lake.partition(lake.gold("recommendations"), date), [C.APP_ID])
    if served.empty:
        return None
    used = today[today[C.EVENT_TYPE].isin(APP_USE_EVENT_TYPES)]
    users_per_app = used.groupby(C.APP_ID)[C.USER_ID].nunique().to_dict()
    return novelty(served[C.APP_ID].tolist(), users_per_app, n_active)


def _ltv_mean(config: Config, date: str) -> float | None:
    lake = Lake(config)
    insights = read_table(lake.partition(lake.gold("user_insights"), date), ["lifetime_value"])
    values = pd.to_numeric(insights["lifetime_value"], errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


def load_records(config: Config, date: str) -> dict[str, dict[str, Any] | None]:
    """Every pipeline stage's run record for ``date`` (None where the stage has none)."""
    from personalization.pipeline import STAGES, read_record

    return {stage: read_record(config, date, stage) for stage in STAGES}


def compute_kpis(
    config: Config, date: str, records: Mapping[str, Mapping[str, Any] | None] | None = None
) -> dict[str, Any]:
    """All KPIs of ``date``.

    Returns ``{"date", "engagement": {...}, "quality": {...}, "business": {...}, "technical": {...}}``
    with the columns of :data:`KPI_COLUMNS` (see the module docstring for units).

    ``records`` defaults to the run records under ``var/runs/<date>/``.
    """
    date = check_date(date)
    records = load_records(config, date) if records is None else records
    columns = [C.USER_ID, C.EVENT_TYPE, C.APP_ID, C.SESSION_ID, C.SURFACE, C.AMOUNT, C.DURATION_S]
    today = read_table(events_path(config, date), columns)
    by_day = _active_by_day(config, date, CHURN_WINDOW_DAYS)
    window_active = set().union(*by_day.values())
    recent_active = set().union(*(by_day[shift(date, -offset)] for offset in range(CHURN_RECENT_DAYS)))
    engagement = engagement_kpis(today, by_day[shift(date, -1)])
    scoring = records.get("score_users") or {}
    diversity = (scoring.get("diversity") or {}).get("ild_after")
    from personalization.alerts import count_alerts

    return {
        "date": date,
        "engagement": engagement,
        "quality": quality_kpis(
            today,
            diversity=diversity,
            novelty=_served_novelty(config, date, today, engagement["daily_active_users"]),
        ),
        "business": business_kpis(today, window_active, recent_active, _ltv_mean(config, date)),
        "technical": technical_kpis(
            records, config.training.k, count_alerts(config, date, kind="failure", dag_id=NIGHTLY_DAG_ID)
        ),
    }


def flatten(kpis: Mapping[str, Any]) -> dict[str, Any]:
    """``{"date", column: value}`` with one column per KPI (the ``kpis`` table's row)."""
    row: dict[str, Any] = {"date": check_date(kpis["date"])}
    for group, name in KPI_COLUMNS:
        row[name] = _clean((kpis.get(group) or {}).get(name))
    return row


# ------------------------------------------------------------------ serving DB
def kpi_table(metadata: Any) -> Any:
    """The ``kpis`` table: one row per date, one nullable float column per KPI."""
    import sqlalchemy as sa

    return sa.Table(
        KPI_TABLE,
        metadata,
        sa.Column("date", sa.String(10), primary_key=True),
        *[sa.Column(name, sa.Float, nullable=True) for _, name in KPI_COLUMNS],
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
    )


def upsert_statement(table: Any, dialect: str, keys: Sequence[str]) -> Any:
    """``INSERT .. ON CONFLICT (keys) DO UPDATE`` for SQLite or PostgreSQL (execute with a list of rows)."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        raise ValueError(f"unsupported dialect {dialect!r}")
    statement = insert(table)
    updates = {
        column.name: statement.excluded[column.name] for column in table.columns if column.name not in keys
    }
    return statement.on_conflict_do_update(index_elements=list(keys), set_=updates)


def write_kpis(config: Config, date: str, kpis: Mapping[str, Any]) -> dict[str, Any]:
    """Upsert the KPIs of ``date`` into the serving DB's ``kpis`` table (created when missing).

    Rerunning a date replaces its row. Returns the row written.
    """
    import sqlalchemy as sa

    from personalization.alerts import serving_engine
    from personalization.serving.db import dialect_of, utc_now, write_transaction

    row = flatten({**kpis, "date": check_date(date)})
    row["computed_at"] = utc_now()
    engine = serving_engine(config, write=True)
    try:
        metadata = sa.MetaData()
        table = kpi_table(metadata)
        with write_transaction(engine) as connection:
            metadata.create_all(connection, checkfirst=True)
            connection.execute(upsert_statement(table, dialect_of(engine), ["date"]), [row])
    finally:
        engine.dispose()
    return row


def read_kpis(config: Config, start: str | None = None, end: str | None = None) -> pd.DataFrame:
    """Rows of the ``kpis`` table between ``start`` and ``end`` (inclusive), by date; empty when none."""
    import sqlalchemy as sa

    from personalization.alerts import serving_engine

    empty = pd.DataFrame(columns=["date", *[name for _, name in KPI_COLUMNS], "computed_at"])
    engine = serving_engine(config, write=False)
    if engine is None:
        return empty
    try:
        if not sa.inspect(engine).has_table(KPI_TABLE):
            return empty
        table = kpi_table(sa.MetaData())
        query = sa.select(table).order_by(table.c.date)
        if start:
            query = query.where(table.c.date >= check_date(start))
        if end:
            query = query.where(table.c.date <= check_date(end))
        with engine.connect() as connection:
            return pd.DataFrame(
                [dict(row._mapping) for row in connection.execute(query)],
                columns=[column.name for column in table.columns],
            )
    finally:
        engine.dispose()
