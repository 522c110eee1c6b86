"""Per-day aggregates: the nightly unit of work of profiles, features and popularity.

Every gold product of date D reads a rolling window of event dates. Instead of
re-aggregating the window's raw events every night, this job folds each event
date E once into compact per-day tables (``gold/<table>/event_date=E``), and the
gold jobs combine the window's days (``profiles.source: aggregates``, the default;
``events`` keeps the from-scratch path as the reference). Only the consented
events are folded (``jobs.consent``, the same filter as the from-scratch path),
and every table is keyed by ``user_id``, so a deletion (``personalization.data_rights``
drops rows by ``user_id`` in every Parquet file) and retention (``<col>=D``
partitions of gold tables) reach them like any other gold table.

Tables (one row per key and event date):

- ``daily_user`` (user_id): ``n_active`` (events other than notification_sent and
  consent_change), ``n_purchases``, ``purchase_revenue`` (USD, null without purchases),
  ``last_purchase_ts``, ``max_purchase_amount``, ``notifications_sent``,
  ``notification_opens``, ``sessions`` (distinct session ids of active events),
  ``hour_counts`` (array<long>[24], active events per local hour) and
  ``weekday_counts`` (array<long>[7], Monday first), ``n_positives`` (positive events
  of ``build_features.POSITIVE_EVENTS`` with a weight > 0).
- ``daily_user_app`` (user_id, app_id): counts per event type (``views``,
  ``opens``, ``installs``, ``uninstalls``, ``purchases``, ``good_ratings`` >= 4),
  ``open_seconds`` (sum of app_open durations, null when none), ``last_open_ts``,
  ``last_change`` (struct ts, event_id, event_type of the last install/uninstall),
  the day's positives (``pos_weight``, first ``pos_ts``, its ``pos_context`` and
  ``pos_prior``: the user's positives of the day strictly before it) and the day's
  first impression not followed by a view/install that day (``neg_ts``,
  ``neg_context``, ``neg_prior``).
- ``daily_user_terms`` (user_id, term): ``n`` search-term occurrences.

Which aggregates reproduce which output (``w(E) = 0.5 ** ((D - E) / half_life)`` is
constant within a day, so a decayed sum is ``sum_E w(E) * daily_sum(E)``):

============================  ======================================================
profiles: n_events, purchase  sums of ``n_active``, ``n_purchases``, ``purchase_revenue``,
count/revenue, notifications  ``notifications_sent``/``notification_opens`` (exact)
last_purchase_ts, max price   max of the daily maxima (exact)
recency, active_days_*, trend days with ``n_active > 0`` and the age-bucketed sums (exact)
frequency                     size of the union of the daily ``sessions`` (exact, also
                              for sessions spanning midnight)
hour/weekday histograms       ``sum_E w(E) * counts(E) / sum_E w(E) * n_active(E)`` (float)
app_usage, installed_apps     per (user, app): sums of ``opens``/``open_seconds``, decayed
                              ``open_seconds``, max ``last_open_ts``, max ``last_change``
category_scores, views, free  ``daily_user_app`` joined to the catalogue of D (so a price
only, content_types           or category change applies to the whole window, as today)
top_search_terms              ``sum_E w(E) * n`` per term (float)
app_features pop_7d/pop_30d,  latest day with ``installs > 0`` (resp. installs, purchases
popularity                    or opens) per (user, app) in the range (exact per user)
interactions                  positives: sums of ``pos_weight``, min ``pos_ts``/context; ignored
                              impressions are a within-day property (min ``neg_ts``);
                              ``app_pop_7d_asof`` from daily installers = ``installs > 0``
                              rows per (app, day); ``user_prior_positives`` = the example
                              day's ``pos_prior``/``neg_prior`` + ``n_positives`` of earlier days
============================  ======================================================

Counts, maxima, minima, sets and dates are exact. Float sums (revenue, minutes,
weights, decayed values and the shares built from them) are added in another order
than the from-scratch path (per day first), so they agree within a relative 1e-9
(``FLOAT_RELATIVE_TOLERANCE``): floating-point addition is not associative, and the
from-scratch path's own order depends on Spark's partitioning.

Knowledge (``known_by``): a day's aggregates are folded from the events landed by
some night K (and consent changes landed by K), recorded in
``gold/daily_aggregates_state/folded/event_date=E.json``. Each landing L records the
event dates it touched in ``.../landings/landing_date=L.json``: the landing date, the
dates of its late events, and, for a late behavioural consent change of date c, every
date from c to L + 1 (the change decides the consent of that user's later events). A
reader for D with ``known_by`` K uses the stored day E when no landing between K_E
and K touched E; otherwise (or when E was never folded) it folds E in memory from
silver with K, so point-in-time reads, reruns and backfills give what the
from-scratch path gives. Each day also records the landings validated when it was
folded, so a landing validated later out of order (a late raw partition) is noticed
too. Nightly (K = D), after this job, every day is up to date.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs import columns as C
from jobs import io
from jobs.consent import consented_events
from jobs.inputs import read_consent_changes, read_snapshot
from jobs.spark import get_spark
from personalization.config import Config
from personalization.lake import Lake, check_date

log = logging.getLogger(__name__)

DAILY_USER = "daily_user"
DAILY_USER_APP = "daily_user_app"
DAILY_USER_TERMS = "daily_user_terms"
TABLES = (DAILY_USER, DAILY_USER_APP, DAILY_USER_TERMS)
STATE = "daily_aggregates_state"
#: Relative tolerance within which decayed and other float sums equal the from-scratch path's.
FLOAT_RELATIVE_TOLERANCE = 1e-9

# daily_user
N_ACTIVE = "n_active"
N_PURCHASES = "n_purchases"
REVENUE = "purchase_revenue"
LAST_PURCHASE_TS = "last_purchase_ts"
MAX_PURCHASE = "max_purchase_amount"
N_NOTIFICATIONS = "notifications_sent"
N_NOTIFICATION_OPENS = "notification_opens"
SESSIONS = "sessions"
HOUR_COUNTS = "hour_counts"
WEEKDAY_COUNTS = "weekday_counts"
N_POSITIVES = "n_positives"
# daily_user_app
VIEWS = "views"
OPENS = "opens"
INSTALLS = "installs"
UNINSTALLS = "uninstalls"
PURCHASES = "purchases"
GOOD_RATINGS = "good_ratings"
OPEN_SECONDS = "open_seconds"
LAST_OPEN_TS = "last_open_ts"
LAST_CHANGE = "last_change"
POS_WEIGHT = "pos_weight"
POS_TS = "pos_ts"
POS_CONTEXT = "pos_context"
POS_PRIOR = "pos_prior"
NEG_TS = "neg_ts"
NEG_CONTEXT = "neg_context"
NEG_PRIOR = "neg_prior"
# daily_user_terms
TERM = "term"
N_TERM = "n"

#: Event types that do not show the user was active (same as build_profiles.NON_ACTIVITY_EVENTS).
NON_ACTIVITY_EVENTS = ("notification_sent", "consent_change")
POSITIVE_EVENTS = ("install", "purchase", "app_open", "rating")
ENGAGEMENT_AFTER_IMPRESSION = ("app_view", "install")
MIN_TERM_LENGTH = 2


@dataclass(frozen=True)
class DailyAggregates:
    """The three daily tables (each with an ``event_date`` date column)."""

    user: DataFrame
    user_app: DataFrame
    user_terms: DataFrame

    def tables(self) -> dict[str, DataFrame]:
        return {DAILY_USER: self.user, DAILY_USER_APP: self.user_app, DAILY_USER_TERMS: self.user_terms}

    def between(self, first: str, last: str) -> DailyAggregates:
        """Only the event dates ``first .. last`` (inclusive)."""
        rows = F.col(C.EVENT_DATE).between(F.lit(check_date(first)).cast("date"), F.lit(check_date(last)).cast("date"))
        return DailyAggregates(self.user.where(rows), self.user_app.where(rows), self.user_terms.where(rows))


# ------------------------------------------------------------------ transforms
def _is(event_type: str) -> Column:
    return F.col(C.EVENT_TYPE) == event_type


def _count(condition: Column) -> Column:
    """Rows where ``condition`` holds (0, never null)."""
    return F.sum(F.when(condition, F.lit(1)).otherwise(F.lit(0))).cast("long")


def positive_weight() -> Column:
    """Weight of one positive event (``build_features.positive_weight``, repeated to stay below it)."""
    minutes = F.coalesce(F.col(C.DURATION_S), F.lit(0.0)) / 60.0
    return (
        F.when(_is("install"), 1.0)
        .when(_is("purchase"), 2.0)
        .when(_is("app_open"), F.log1p(F.greatest(minutes, F.lit(0.0))))
        .when(_is("rating") & (F.col(C.RATING_VALUE) >= 4), 1.0)
        .otherwise(0.0)
    )


def _context() -> Column:
    return F.struct(C.LOCAL_HOUR, C.LOCAL_WEEKDAY, C.DAYTIME, C.DEVICE_CLASS)


def aggregate_events(events: DataFrame) -> DailyAggregates:
    """Fold consented silver events (any event dates) into the three daily tables.

    Args:
        events: consented events (``jobs.consent.consented_events``), silver columns.
    """
    is_active = ~F.col(C.EVENT_TYPE).isin(*NON_ACTIVITY_EVENTS)
    purchase_amount = F.when(_is("purchase"), F.coalesce(F.col(C.AMOUNT), F.lit(0.0)))
    is_positive = F.col(C.EVENT_TYPE).isin(*POSITIVE_EVENTS) & F.col(C.APP_ID).isNotNull() & (positive_weight() > 0)
    day_keys = [C.USER_ID, C.EVENT_DATE]
    user = events.groupBy(*day_keys).agg(
        _count(is_active).alias(N_ACTIVE),
        _count(_is("purchase")).alias(N_PURCHASES),
        F.sum(purchase_amount).alias(REVENUE),
        F.max(F.when(_is("purchase"), F.col(C.TS))).alias(LAST_PURCHASE_TS),
        F.max(purchase_amount).alias(MAX_PURCHASE),
        _count(_is("notification_sent")).alias(N_NOTIFICATIONS),
        _count(_is("notification_open")).alias(N_NOTIFICATION_OPENS),
        F.array_sort(F.collect_set(F.when(is_active, F.col(C.SESSION_ID)))).alias(SESSIONS),
        F.array(*[_count(is_active & (F.col(C.LOCAL_HOUR) == h)) for h in range(24)]).alias(HOUR_COUNTS),
        F.array(*[_count(is_active & (F.col(C.LOCAL_WEEKDAY) == d)) for d in range(1, 8)]).alias(WEEKDAY_COUNTS),
        _count(is_positive).alias(N_POSITIVES),
    )

    app_keys = [C.USER_ID, C.APP_ID, C.EVENT_DATE]
    engaged_ts = F.max(F.when(F.col(C.EVENT_TYPE).isin(*ENGAGEMENT_AFTER_IMPRESSION), F.col(C.TS))).over(
        Window.partitionBy(*app_keys)
    )
    # An impression is ignored when no view/install of that app by that user follows it the same UTC day.
    ignored = _is("impression") & (engaged_ts.isNull() | (engaged_ts < F.col(C.TS)))
    app_events = events.where(F.col(C.APP_ID).isNotNull()).withColumn("_ignored", ignored)
    install_change = F.col(C.EVENT_TYPE).isin("install", "uninstall")
    positive_ts = F.when(is_positive, F.col(C.TS))
    ignored_ts = F.when(F.col("_ignored"), F.col(C.TS))
    user_app = app_events.groupBy(*app_keys).agg(
        _count(_is("app_view")).alias(VIEWS),
        _count(_is("app_open")).alias(OPENS),
        _count(_is("install")).alias(INSTALLS),
        _count(_is("uninstall")).alias(UNINSTALLS),
        _count(_is("purchase")).alias(PURCHASES),
        _count(_is("rating") & (F.coalesce(F.col(C.RATING_VALUE), F.lit(0)) >= 4)).alias(GOOD_RATINGS),
        F.sum(F.when(_is("app_open"), F.col(C.DURATION_S))).alias(OPEN_SECONDS),
        F.max(F.when(_is("app_open"), F.col(C.TS))).alias(LAST_OPEN_TS),
        F.max(F.when(install_change, F.struct(C.TS, C.EVENT_ID, C.EVENT_TYPE))).alias(LAST_CHANGE),
        F.sum(F.when(is_positive, positive_weight())).alias(POS_WEIGHT),
        F.min(positive_ts).alias(POS_TS),
        F.min_by(F.when(is_positive, _context()), positive_ts).alias(POS_CONTEXT),
        F.min(ignored_ts).alias(NEG_TS),
        F.min_by(F.when(F.col("_ignored"), _context()), ignored_ts).alias(NEG_CONTEXT),
    )
    user_app = _with_prior_positives(user_app, events.where(is_positive))

    terms = (
        events.where(_is("search") & F.col(C.QUERY).isNotNull())
        .select(C.USER_ID, C.EVENT_DATE, F.explode(F.split(F.lower(F.col(C.QUERY)), r"[^\p{L}\p{N}]+")).alias(TERM))
        .where(F.length(TERM) >= MIN_TERM_LENGTH)
        .groupBy(C.USER_ID, C.EVENT_DATE, TERM)
        .agg(F.count(F.lit(1)).alias(N_TERM))
    )
    return DailyAggregates(user, user_app, terms)


def _with_prior_positives(user_app: DataFrame, positives: DataFrame) -> DataFrame:
    """Add ``pos_prior``/``neg_prior``: the user's positives of the day strictly before ``pos_ts``/``neg_ts``.

    Probes sort before events at the same instant (as in ``build_interactions``).
    """
    keys = [C.USER_ID, C.APP_ID, C.EVENT_DATE]
    probes = [
        user_app.where(F.col(ts).isNotNull()).select(
            *keys, F.col(ts).alias("_t"), F.lit(0).alias("_is_event"), F.lit(name).alias("_probe"))
        for ts, name in ((POS_TS, POS_PRIOR), (NEG_TS, NEG_PRIOR))
    ]
    events = positives.select(C.USER_ID, C.EVENT_DATE, F.col(C.TS).alias("_t"), F.lit(1).alias("_is_event"))
    timeline = Window.partitionBy(C.USER_ID, C.EVENT_DATE).orderBy("_t", "_is_event").rowsBetween(
        Window.unboundedPreceding, Window.currentRow
    )
    counted = (
        probes[0].unionByName(probes[1]).unionByName(events, allowMissingColumns=True)
        .withColumn("_prior", F.sum("_is_event").over(timeline).cast("long"))
        .where(F.col("_is_event") == 0)
        .groupBy(*keys)
        .agg(*[F.max(F.when(F.col("_probe") == name, F.col("_prior"))).alias(name) for name in (POS_PRIOR, NEG_PRIOR)])
    )
    return user_app.join(counted, keys, "left")


# ------------------------------------------------------------------ state
def _state(lake: Lake, kind: str) -> str:
    return f"{lake.gold(STATE)}/{kind}"


def _read_small(spark: SparkSession, path: str) -> str:
    """A small UTF-8 file through the Hadoop FileSystem (no Spark job)."""
    fs, jpath = io._fs_path(spark, path)
    stream = fs.open(jpath)
    try:
        return spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")  # type: ignore[attr-defined]
    finally:
        stream.close()


def _read_states(spark: SparkSession, lake: Lake, kind: str, column: str) -> dict[str, dict[str, Any]]:
    """``{date: record}`` of the JSON records ``<kind>/<column>=<date>.json``."""
    fs, jpath = io._fs_path(spark, _state(lake, kind))
    if not fs.exists(jpath):
        return {}
    found: dict[str, dict[str, Any]] = {}
    prefix = f"{column}="
    for status in fs.listStatus(jpath):
        name = status.getPath().getName()
        if name.startswith(prefix) and name.endswith(".json"):
            found[name[len(prefix):-len(".json")]] = json.loads(_read_small(spark, status.getPath().toString()))
    return found


def _validation_report(lake: Lake, date: str) -> str:
    return f"{lake.report('validation', date)}/report.json"


def validated_landing_dates(spark: SparkSession, lake: Lake) -> list[str]:
    """Landing dates that validation has processed (those with a validation report)."""
    base = lake.report("validation", "2000-01-01").rsplit("/", 1)[0]
    return [day for day in io.list_partitions(spark, base, "date") if io.path_exists(spark, _validation_report(lake, day))]


def _days(first: dt.date, last: dt.date) -> list[str]:
    return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def touched_by_landing(spark: SparkSession, lake: Lake, landing: str) -> list[str]:
    """Event dates whose aggregates the landing ``landing`` can change, oldest first.

    The landing date and the next (events up to validation.future_tolerance_minutes
    after the day), the dates of its late events, and for each late behavioural
    consent change of date c every date from c on (its user's consent changes from then).
    """
    landing = check_date(landing)
    day = dt.date.fromisoformat(landing)
    report_path = _validation_report(lake, landing)
    late = json.loads(io.read_text(spark, report_path)).get("late_event_dates", []) if io.path_exists(
        spark, report_path) else []
    touched = {landing, (day + dt.timedelta(days=1)).isoformat(), *late}
    if late:
        changes = io.read_partitions(spark, lake.silver("events"), C.EVENT_DATE, late)
        if changes is not None:
            first = (
                changes.where(
                    (F.col(C.LANDING_DATE) == F.lit(landing).cast("date"))
                    & _is("consent_change")
                    & (F.col(C.CONSENT_TYPE) == "behavioral")
                    & F.col(C.CONSENT_VALUE).isNotNull()
                )
                .agg(F.min(C.EVENT_DATE))
                .first()[0]
            )
            if first is not None:
                touched.update(_days(first, day + dt.timedelta(days=1)))
    return sorted(touched)


class _Knowledge:
    """What the stored aggregates know, and which landings touched which days (read once)."""

    def __init__(self, spark: SparkSession, lake: Lake) -> None:
        self.spark, self.lake = spark, lake
        folded = _read_states(spark, lake, "folded", C.EVENT_DATE)
        self.folded = {day: str(record["known_by"]) for day, record in folded.items()}
        #: The landings validated when each day was folded (a landing validated later, out of order, is news).
        self.seen = {day: set(record.get("landings", ())) for day, record in folded.items()}
        self.recorded = {day: list(record["touched"])
                         for day, record in _read_states(spark, lake, "landings", C.LANDING_DATE).items()}
        self.landings = validated_landing_dates(spark, lake)

    def touched(self, landing: str) -> list[str]:
        if landing not in self.recorded:  # validated but never folded: ask silver
            self.recorded[landing] = touched_by_landing(self.spark, self.lake, landing)
        return self.recorded[landing]

    def usable(self, day: str, known_by: str) -> bool:
        """True when the stored aggregates of ``day`` equal a fold with ``known_by``."""
        stored = self.folded.get(day)
        if stored is None:
            return False
        low, high = sorted((stored, known_by))
        news = [landing for landing in self.landings
                if low < landing <= high or (landing <= low and landing not in self.seen[day])]
        return not any(day in self.touched(landing) for landing in news)


# ------------------------------------------------------------------ reading and folding
def _empty_events(spark: SparkSession) -> DataFrame:
    from jobs.build_profiles import _empty_events_schema

    return spark.createDataFrame([], _empty_events_schema(spark, None))  # type: ignore[arg-type]


def fold_days(
    spark: SparkSession,
    lake: Lake,
    days: Iterable[str],
    known_by: str,
    users: DataFrame,
    materialise: Callable[[DataFrame], DataFrame] | None = None,
) -> DailyAggregates:
    """The aggregates of ``days`` from silver: events and consent changes landed by ``known_by``."""
    days = sorted(set(days))
    events = io.read_partitions(spark, lake.silver("events"), C.EVENT_DATE, days) if days else None
    if events is None:
        events = _empty_events(spark)
    events = events.where(F.col(C.LANDING_DATE) <= F.lit(check_date(known_by)).cast("date"))
    last = max(days) if days else check_date(known_by)
    consented = consented_events(events, users, read_consent_changes(spark, lake, last, known_by))
    if materialise is not None:
        consented = materialise(consented)
    return aggregate_events(consented)


def _schemas(spark: SparkSession) -> dict[str, T.StructType]:
    return {name: table.schema for name, table in aggregate_events(_empty_events(spark)).tables().items()}


def read_window(
    spark: SparkSession, config: Config, as_of: str, days: int, known_by: str | None = None
) -> DailyAggregates:
    """The aggregates of the ``days`` event dates ending ``as_of``, as known by ``known_by`` (default ``as_of``).

    Stored days are used where they hold the same knowledge; others are folded in memory.
    """
    as_of = check_date(as_of)
    known_by = check_date(known_by or as_of)
    lake = Lake(config)
    last = dt.date.fromisoformat(as_of)
    wanted = _days(last - dt.timedelta(days=days - 1), last)
    knowledge = _Knowledge(spark, lake)
    stale = [day for day in wanted if not knowledge.usable(day, known_by)]
    fresh = [day for day in wanted if day not in stale]
    schemas = _schemas(spark)
    tables: dict[str, DataFrame] = {}
    for name in TABLES:
        stored = io.read_partitions(spark, lake.gold(name), C.EVENT_DATE, fresh)
        tables[name] = (
            stored if stored is not None else spark.createDataFrame([], schemas[name])
        ).select(*schemas[name].fieldNames())
    if stale:
        log.info("daily aggregates: folding %d day(s) in memory for %s known by %s: %s",
                 len(stale), as_of, known_by, ", ".join(stale))
        folded = fold_days(spark, lake, stale, known_by, read_snapshot(spark, lake, "users", as_of)).tables()
        tables = {name: tables[name].unionByName(folded[name]) for name in TABLES}
    return DailyAggregates(tables[DAILY_USER], tables[DAILY_USER_APP], tables[DAILY_USER_TERMS])


def _write_days(spark: SparkSession, lake: Lake, aggregates: DailyAggregates, days: list[str], known_by: str,
                landings: list[str]) -> None:
    """Replace the stored aggregates of ``days`` (a day without rows keeps no partition).

    ``landings``: the validated landing dates up to ``known_by``, recorded with each day.
    """
    for day in days:  # forget first: a crash midway leaves days unfolded, never half-written as folded
        io.delete_path(spark, f"{_state(lake, 'folded')}/{C.EVENT_DATE}={day}.json")
    for name, table in aggregates.tables().items():
        for day in days:
            io.delete_path(spark, io.partition_path(lake.gold(name), C.EVENT_DATE, day))
        table.write.mode("append").partitionBy(C.EVENT_DATE).parquet(lake.gold(name))
    for day in days:
        io.write_json(spark, f"{_state(lake, 'folded')}/{C.EVENT_DATE}={day}.json",
                      {"event_date": day, "known_by": known_by, "landings": landings})


def main(config: Config, date: str, spark: SparkSession | None = None) -> dict[str, Any]:
    """Fold the event dates that landing ``date`` touched (and any unfolded day of the window).

    The days are those a reader of the next windows needs (``profiles.window_days`` plus the
    features' point-in-time history) whose stored aggregates do not hold what had landed by
    ``date``. Days already folded with later knowledge are left alone (no downgrade).
    """
    from jobs.build_features import ASOF_POPULARITY_DAYS

    date = check_date(date)
    spark = spark or get_spark(config, "build_daily_aggregates")
    lake = Lake(config)
    touched = touched_by_landing(spark, lake, date)
    io.write_json(spark, f"{_state(lake, 'landings')}/{C.LANDING_DATE}={date}.json",
                  {"landing_date": date, "touched": touched})
    knowledge = _Knowledge(spark, lake)
    span = config.profiles.window_days + ASOF_POPULARITY_DAYS
    day = dt.date.fromisoformat(date)
    wanted = _days(day - dt.timedelta(days=span - 1), day)
    to_fold = [e for e in wanted if knowledge.folded.get(e, "") < date and not knowledge.usable(e, date)]
    scratch = lake.gold(f"_staging/daily_aggregates/date={date}")
    try:
        if to_fold:
            aggregates = fold_days(spark, lake, to_fold, date, read_snapshot(spark, lake, "users", date),
                                   materialise=lambda df: io.stage(df, scratch))
            _write_days(spark, lake, aggregates, to_fold, date,
                        [landing for landing in knowledge.landings if landing <= date])
    finally:
        io.delete_path(spark, scratch)
    log.info("daily aggregates %s: folded %s", date, ", ".join(to_fold) or "nothing")
    return {"date": date, "touched": touched, "folded": to_fold,
            "tables": {name: lake.gold(name) for name in TABLES}}


if __name__ == "__main__":
    from jobs import submit

    raise SystemExit(submit.run("build_daily_aggregates", main))
