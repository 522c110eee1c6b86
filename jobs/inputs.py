"""Readers of silver inputs shared by the gold jobs (profiles, segments, features).

Every reader is "as of" a date D: it only returns what had landed by D
(``landing_date <= D``), so rerunning an old date after later dates were ingested
gives the same result (no information from the future).
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs import columns as C
from jobs import io
from personalization.lake import Lake, check_date

CONSENT_CHANGE_SCHEMA = T.StructType(
    [
        T.StructField(C.USER_ID, T.StringType()),
        T.StructField(C.TS, T.TimestampType()),
        T.StructField(C.EVENT_ID, T.StringType()),
        T.StructField(C.CONSENT_TYPE, T.StringType()),
        T.StructField(C.CONSENT_VALUE, T.BooleanType()),
    ]
)


def window_start(as_of: str, days: int) -> str:
    """First date of a ``days``-long window ending on ``as_of`` (inclusive)."""
    return (dt.date.fromisoformat(check_date(as_of)) - dt.timedelta(days=days - 1)).isoformat()


def read_events_window(spark: SparkSession, lake: Lake, as_of: str, days: int,
                       known_by: str | None = None) -> DataFrame | None:
    """Silver events with event_date in the ``days`` days ending ``as_of``, landed by ``known_by``.

    ``known_by`` defaults to ``as_of`` (what was known that night); a later date restates
    the partition with events that arrived late (see ``personalization.late_arrivals``).
    """
    events = io.read_partitions_between(spark, lake.silver("events"), C.EVENT_DATE, window_start(as_of, days), as_of)
    if events is None:
        return None
    return events.where(F.col(C.LANDING_DATE) <= F.lit(check_date(known_by or as_of)).cast("date"))


def read_consent_changes(spark: SparkSession, lake: Lake, as_of: str, known_by: str | None = None) -> DataFrame:
    """Every consent_change event up to ``as_of`` landed by ``known_by`` (default ``as_of``).

    All history: a withdrawal never expires.
    """
    last = (dt.date.fromisoformat(check_date(as_of)) + dt.timedelta(days=1)).isoformat()
    events = io.read_partitions_between(spark, lake.silver("events"), C.EVENT_DATE, None, last)
    if events is None:
        return spark.createDataFrame([], CONSENT_CHANGE_SCHEMA)
    return events.where(
        (F.col(C.EVENT_TYPE) == "consent_change")
        & (F.col(C.LANDING_DATE) <= F.lit(check_date(known_by or as_of)).cast("date"))
    ).select(*CONSENT_CHANGE_SCHEMA.fieldNames())


def read_snapshot(spark: SparkSession, lake: Lake, table: str, as_of: str) -> DataFrame:
    """``silver/<table>/date=<as_of>`` (users or apps); fails clearly when validation has not run."""
    snapshot = io.read_partition(spark, lake.silver(table), "date", as_of)
    if snapshot is None:
        raise FileNotFoundError(f"silver/{table}/date={as_of} is missing: run validate_raw_events for {as_of}")
    return snapshot
