"""User profiles: ``gold/profiles/date=D``, one row per user known on D.

The design document's UserProfile as a flat table:

- demographics: ``age_group``/``gender`` (null without demographics consent),
  ``country``/``region``/``city`` (null without location consent), ``language``,
  ``timezone``, ``device``, ``signup_date`` and the four consent flags;
- behaviour over the last ``profiles.window_days`` days (events of users while
  their behavioural consent was in force), with exponential time decay
  ``weight = 0.5 ** (age_days / half_life_days)`` where ``age_days`` is the number
  of whole days between the event's UTC date and D (an event on D weighs 1);
- RFM and activity.

Users whose behavioural consent is withdrawn on D keep only demographic and
consent fields (every behavioural column is null); users with no events get a
cold-start row (zeros, empty arrays and maps).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import build_daily_aggregates as A
from jobs import columns as C
from jobs import io
from jobs.consent import consented_events
from jobs.inputs import read_consent_changes, read_events_window, read_snapshot, window_start
from jobs.spark import get_spark
from personalization.config import Config
from personalization.lake import Lake, check_date

log = logging.getLogger(__name__)

#: Events that do not show the user was active (system-initiated).
NON_ACTIVITY_EVENTS = ("notification_sent", "consent_change")
#: Weight of each event type in category preference (ratings count only when >= 4).
CATEGORY_EVENT_WEIGHTS = {"app_view": 1.0, "app_open": 2.0, "install": 3.0, "purchase": 5.0, "rating": 1.0}
#: Search terms kept per user, and the shortest term kept (characters).
TOP_TERMS = 5
MIN_TERM_LENGTH = 2

DEMOGRAPHIC_COLUMNS = (
    C.USER_ID, C.AGE_GROUP, C.GENDER, C.COUNTRY, C.REGION, C.CITY, C.LANGUAGE, C.TIMEZONE, C.DEVICE,
    C.SIGNUP_DATE, C.CONSENT_BEHAVIORAL, C.CONSENT_LOCATION, C.CONSENT_DEMOGRAPHICS, C.CONSENT_THIRD_PARTY,
    C.BEHAVIOR_ALLOWED,
)
BEHAVIOR_COLUMNS = (
    C.N_EVENTS, C.APP_USAGE, C.INSTALLED_APPS, C.PURCHASE_COUNT, C.PURCHASE_REVENUE, C.LAST_PURCHASE_TS,
    C.VIEWS_BY_CATEGORY, C.TOP_SEARCH_TERMS, C.HOUR_HISTOGRAM, C.WEEKDAY_HISTOGRAM, C.CATEGORY_SCORES,
    C.FREE_ONLY, C.MAX_PRICE_PAID, C.CONTENT_TYPES, C.NOTIFICATIONS_SENT, C.NOTIFICATION_OPEN_RATE,
    C.RECENCY_DAYS, C.FREQUENCY, C.MONETARY, C.ACTIVE_DAYS_7, C.ACTIVE_DAYS_30, C.ACTIVE_DAYS_90, C.TREND,
)
PROFILE_COLUMNS = DEMOGRAPHIC_COLUMNS + BEHAVIOR_COLUMNS
#: Columns of the intermediate behaviour table (events + decay + catalogue attributes).
BEHAVIOUR_INPUT_COLUMNS = (
    C.USER_ID, C.EVENT_ID, C.EVENT_TYPE, C.APP_ID, C.TS, C.EVENT_DATE, C.SESSION_ID, C.LOCAL_HOUR,
    C.LOCAL_WEEKDAY, C.DURATION_S, C.AMOUNT, C.RATING_VALUE, C.QUERY, "_age", "_w", C.CATEGORY, "_price",
    C.CONTENT_TYPE,
)


#: Type of ``app_usage`` (one struct per opened app, most decayed minutes first).
APP_USAGE_TYPE = (
    "array<struct<app_id:string,sessions:bigint,minutes:double,decayed_minutes:double,last_used:timestamp>>"
)


def decay_weight(age_days: Column, half_life_days: float) -> Column:
    """``0.5 ** (age_days / half_life_days)``: 1 today, 0.5 one half-life ago."""
    return F.pow(F.lit(0.5), age_days.cast("double") / F.lit(float(half_life_days)))


def _is(event_type: str) -> Column:
    return F.col(C.EVENT_TYPE) == event_type


def build_profiles(
    events: DataFrame,
    users: DataFrame,
    apps: DataFrame,
    consent_changes: DataFrame,
    as_of: str,
    window_days: int,
    half_life_days: float,
    materialise: Callable[[DataFrame], DataFrame] | None = None,
) -> DataFrame:
    """Profiles as of ``as_of`` (columns ``PROFILE_COLUMNS``).

    Args:
        events: silver events (any dates; only ``as_of - window_days + 1 .. as_of`` are used).
        users: silver users snapshot of ``as_of``.
        apps: silver apps snapshot of ``as_of`` (category, price, content_type).
        consent_changes: consent_change events landed by ``as_of`` (all history).
        window_days: behaviour window length in days (>= 1).
        half_life_days: decay half-life in days (> 0).
        materialise: computes the consented, decayed window events once (main
            stages them as Parquet); default ``localCheckpoint`` (small data, tests).
    """
    day = F.lit(check_date(as_of)).cast("date")
    first_day = (dt.date.fromisoformat(as_of) - dt.timedelta(days=window_days - 1)).isoformat()
    in_window = events.where(F.col(C.EVENT_DATE).between(F.lit(first_day).cast("date"), day))
    catalogue = apps.select(C.APP_ID, C.CATEGORY, F.col(C.PRICE).alias("_price"), C.CONTENT_TYPE)
    behaviour = (
        consented_events(in_window, users, consent_changes)
        .withColumn("_age", F.datediff(day, F.col(C.EVENT_DATE)))
        .withColumn("_w", decay_weight(F.col("_age"), half_life_days))
        .join(F.broadcast(catalogue), C.APP_ID, "left")
        .select(*BEHAVIOUR_INPUT_COLUMNS)
    )
    # Every aggregate below reads this: compute it once and cut the lineage, so the
    # consent timeline is not recomputed (and re-planned) per aggregate.
    behaviour = materialise(behaviour) if materialise is not None else behaviour.localCheckpoint(eager=True)
    is_active = ~F.col(C.EVENT_TYPE).isin(*NON_ACTIVITY_EVENTS)
    purchase_amount = F.when(_is("purchase"), F.coalesce(F.col(C.AMOUNT), F.lit(0.0)))
    age = F.col("_age")

    # One pass per user for every user-level aggregate (few shuffles matter more than
    # anything else for small batches); histograms are folded from the collected
    # (hour, weekday, weight) triples of active events.
    user_level = behaviour.groupBy(C.USER_ID).agg(
        F.sum(is_active.cast("long")).alias(C.N_EVENTS),
        F.sum(_is("purchase").cast("long")).alias(C.PURCHASE_COUNT),
        F.coalesce(F.sum(purchase_amount), F.lit(0.0)).alias(C.PURCHASE_REVENUE),
        F.max(F.when(_is("purchase"), F.col(C.TS))).alias(C.LAST_PURCHASE_TS),
        F.coalesce(F.max(purchase_amount), F.lit(0.0)).alias(C.MAX_PRICE_PAID),
        F.max((_is("install") & (F.col("_price") > 0)).cast("int")).alias("_paid_install"),
        F.sum(_is("notification_sent").cast("long")).alias(C.NOTIFICATIONS_SENT),
        F.sum(_is("notification_open").cast("long")).alias("_opens"),
        F.array_sort(
            F.collect_set(
                F.when(F.col(C.EVENT_TYPE).isin("install", "app_open", "purchase"), F.col(C.CONTENT_TYPE))
            )
        ).alias(C.CONTENT_TYPES),
        F.datediff(day, F.max(F.when(is_active, F.col(C.EVENT_DATE)))).alias(C.RECENCY_DAYS),
        F.countDistinct(F.when(is_active, F.col(C.SESSION_ID))).alias(C.FREQUENCY),
        *[
            F.countDistinct(F.when(is_active & (age < days), F.col(C.EVENT_DATE))).alias(name)
            for days, name in ((7, C.ACTIVE_DAYS_7), (30, C.ACTIVE_DAYS_30), (90, C.ACTIVE_DAYS_90))
        ],
        F.sum((is_active & (age < 7)).cast("long")).alias("_n7"),
        F.sum((is_active & age.between(7, 27)).cast("long")).alias("_n21"),
        F.collect_list(
            F.when(is_active, F.struct(F.col(C.LOCAL_HOUR).alias("h"), F.col(C.LOCAL_WEEKDAY).alias("d"), F.col("_w").alias("w")))
        ).alias("_times"),
    )
    times = F.col("_times")
    total_weight = F.aggregate(times, F.lit(0.0), lambda acc, x: acc + x["w"])

    def histogram(key: str, first: int, last: int) -> Column:
        """Decayed share of active events per key value first..last; null when no weight."""
        return F.when(
            total_weight > 0,
            F.transform(
                F.sequence(F.lit(first), F.lit(last)),
                lambda k: F.aggregate(F.filter(times, lambda x: x[key] == k), F.lit(0.0), lambda acc, x: acc + x["w"])
                / total_weight,
            ),
        )

    user_level = user_level.withColumn(C.HOUR_HISTOGRAM, histogram("h", 0, 23)).withColumn(
        C.WEEKDAY_HISTOGRAM, histogram("d", 1, 7)
    ).drop("_times")

    # Per (user, app): usage of opened apps, and whether the last install/uninstall was an install.
    install_change = F.col(C.EVENT_TYPE).isin("install", "uninstall")
    per_app = (
        behaviour.where(F.col(C.APP_ID).isNotNull() & F.col(C.EVENT_TYPE).isin("app_open", "install", "uninstall"))
        .groupBy(C.USER_ID, C.APP_ID)
        .agg(
            F.sum(_is("app_open").cast("long")).alias("sessions"),
            (F.coalesce(F.sum(F.when(_is("app_open"), F.col(C.DURATION_S))), F.lit(0.0)) / 60.0).alias("minutes"),
            (
                F.coalesce(F.sum(F.when(_is("app_open"), F.col(C.DURATION_S) * F.col("_w"))), F.lit(0.0)) / 60.0
            ).alias("decayed_minutes"),
            F.max(F.when(_is("app_open"), F.col(C.TS))).alias("last_used"),
            F.max_by(
                F.when(install_change, F.col(C.EVENT_TYPE)),
                F.when(install_change, F.struct(F.col(C.TS), F.col(C.EVENT_ID))),
            ).alias("_last_change"),
        )
    )
    apps_level = _apps_level(per_app)

    category_weight = F.coalesce(
        F.when(_is("rating") & (F.coalesce(F.col(C.RATING_VALUE), F.lit(0)) < 4), F.lit(0.0)),
        F.create_map(*[F.lit(x) for pair in CATEGORY_EVENT_WEIGHTS.items() for x in pair])[F.col(C.EVENT_TYPE)],
        F.lit(0.0),
    )
    per_category = (
        behaviour.where(F.col(C.CATEGORY).isNotNull())
        .groupBy(C.USER_ID, C.CATEGORY)
        .agg(
            F.sum(category_weight * F.col("_w")).alias("_score"),
            F.sum(_is("app_view").cast("long")).alias("_views"),
        )
    )
    categories = _category_maps(per_category)

    terms = _top_terms(
        behaviour.where(_is("search") & F.col(C.QUERY).isNotNull())
        .select(C.USER_ID, "_w", F.explode(F.split(F.lower(F.col(C.QUERY)), r"[^\p{L}\p{N}]+")).alias("_term"))
        .where(F.length("_term") >= MIN_TERM_LENGTH)
        .groupBy(C.USER_ID, "_term")
        .agg(F.sum("_w").alias("_score"))
    )
    return assemble_profiles(users, (user_level, apps_level, categories, terms))


def _apps_level(per_app: DataFrame) -> DataFrame:
    """``app_usage`` and ``installed_apps`` from (user, app, sessions, minutes, decayed_minutes, last_used, _last_change)."""
    return (
        per_app.groupBy(C.USER_ID)
        .agg(
            F.collect_list(
                F.when(
                    F.col("sessions") > 0,
                    F.struct(
                        F.negative("decayed_minutes").alias("_k"),
                        C.APP_ID, "sessions", "minutes", "decayed_minutes", "last_used",
                    ),
                )
            ).alias("_usage"),
            F.array_sort(F.collect_list(F.when(F.col("_last_change") == "install", F.col(C.APP_ID)))).alias(
                C.INSTALLED_APPS
            ),
        )
        .select(
            C.USER_ID,
            F.transform(F.array_sort("_usage"), lambda u: u.dropFields("_k")).alias(C.APP_USAGE),
            C.INSTALLED_APPS,
        )
    )


def _category_maps(per_category: DataFrame) -> DataFrame:
    """``views_by_category`` and ``category_scores`` from (user, category, ``_score``, ``_views``)."""
    return per_category.groupBy(C.USER_ID).agg(
        F.map_from_entries(
            F.collect_list(F.when(F.col("_views") > 0, F.struct(C.CATEGORY, "_views")))
        ).alias(C.VIEWS_BY_CATEGORY),
        F.map_from_entries(
            F.collect_list(F.when(F.col("_score") > 0, F.struct(C.CATEGORY, "_score")))
        ).alias("_scores"),
        F.sum("_score").alias("_score_total"),
    ).select(
        C.USER_ID,
        C.VIEWS_BY_CATEGORY,
        F.when(F.col("_score_total") > 0, F.transform_values("_scores", lambda _, v: v / F.col("_score_total")))
        .otherwise(F.create_map().cast("map<string,double>"))
        .alias(C.CATEGORY_SCORES),
    )


def _top_terms(scores: DataFrame) -> DataFrame:
    """``top_search_terms`` from (user, ``_term``, decayed ``_score``): highest first, ties by term."""
    return (
        scores.groupBy(C.USER_ID)
        .agg(F.array_sort(F.collect_list(F.struct(F.negative("_score").alias("_k"), "_term"))).alias("_t"))
        .select(C.USER_ID, F.transform(F.slice("_t", 1, TOP_TERMS), lambda t: t["_term"]).alias(C.TOP_SEARCH_TERMS))
    )


def assemble_profiles(users: DataFrame, parts: tuple[DataFrame, ...]) -> DataFrame:
    """Profiles (``PROFILE_COLUMNS``) from the users snapshot and the per-user behaviour parts.

    ``parts`` hold ``user_id`` and the behaviour columns (plus ``_paid_install``, ``_opens``,
    ``_n7``, ``_n21``); a user without a row in a part is a cold start for its columns.
    """
    profiles = users
    for part in parts:
        profiles = profiles.join(part, C.USER_ID, "left")

    allowed = F.coalesce(F.col(C.CONSENT_BEHAVIORAL), F.lit(False))
    zeros = lambda n: F.array_repeat(F.lit(0.0), n)  # noqa: E731
    empty_map = F.create_map().cast("map<string,double>")
    behaviour_values: dict[str, Column] = {
        C.N_EVENTS: F.coalesce(F.col(C.N_EVENTS), F.lit(0)),
        C.APP_USAGE: F.coalesce(F.col(C.APP_USAGE), F.array().cast(APP_USAGE_TYPE)),
        C.INSTALLED_APPS: F.coalesce(F.col(C.INSTALLED_APPS), F.array().cast("array<string>")),
        C.PURCHASE_COUNT: F.coalesce(F.col(C.PURCHASE_COUNT), F.lit(0)),
        C.PURCHASE_REVENUE: F.coalesce(F.col(C.PURCHASE_REVENUE), F.lit(0.0)),
        C.LAST_PURCHASE_TS: F.col(C.LAST_PURCHASE_TS),
        C.VIEWS_BY_CATEGORY: F.coalesce(F.col(C.VIEWS_BY_CATEGORY), F.create_map().cast("map<string,bigint>")),
        C.TOP_SEARCH_TERMS: F.coalesce(F.col(C.TOP_SEARCH_TERMS), F.array().cast("array<string>")),
        C.HOUR_HISTOGRAM: F.coalesce(F.col(C.HOUR_HISTOGRAM), zeros(24)),
        C.WEEKDAY_HISTOGRAM: F.coalesce(F.col(C.WEEKDAY_HISTOGRAM), zeros(7)),
        C.CATEGORY_SCORES: F.coalesce(F.col(C.CATEGORY_SCORES), empty_map),
        C.FREE_ONLY: (F.coalesce(F.col(C.PURCHASE_COUNT), F.lit(0)) == 0)
        & (F.coalesce(F.col("_paid_install"), F.lit(0)) == 0),
        C.MAX_PRICE_PAID: F.coalesce(F.col(C.MAX_PRICE_PAID), F.lit(0.0)),
        C.CONTENT_TYPES: F.coalesce(F.col(C.CONTENT_TYPES), F.array().cast("array<string>")),
        C.NOTIFICATIONS_SENT: F.coalesce(F.col(C.NOTIFICATIONS_SENT), F.lit(0)),
        # Opens of notifications sent before the window can exceed sends: capped at 1.
        C.NOTIFICATION_OPEN_RATE: F.when(
            F.col(C.NOTIFICATIONS_SENT) > 0, F.least(F.lit(1.0), F.col("_opens") / F.col(C.NOTIFICATIONS_SENT))
        ).otherwise(F.lit(0.0)),
        C.RECENCY_DAYS: F.col(C.RECENCY_DAYS),
        C.FREQUENCY: F.coalesce(F.col(C.FREQUENCY), F.lit(0)),
        C.MONETARY: F.coalesce(F.col(C.PURCHASE_REVENUE), F.lit(0.0)),
        C.ACTIVE_DAYS_7: F.coalesce(F.col(C.ACTIVE_DAYS_7), F.lit(0)),
        C.ACTIVE_DAYS_30: F.coalesce(F.col(C.ACTIVE_DAYS_30), F.lit(0)),
        C.ACTIVE_DAYS_90: F.coalesce(F.col(C.ACTIVE_DAYS_90), F.lit(0)),
        C.TREND: F.when(F.col("_n21") > 0, (F.col("_n7") / 7.0) / (F.col("_n21") / 21.0)),
    }
    demographics = F.coalesce(F.col(C.CONSENT_DEMOGRAPHICS), F.lit(False))
    location = F.coalesce(F.col(C.CONSENT_LOCATION), F.lit(False))
    return profiles.select(
        C.USER_ID,
        F.when(demographics, F.col(C.AGE_GROUP)).alias(C.AGE_GROUP),
        F.when(demographics, F.col(C.GENDER)).alias(C.GENDER),
        F.when(location, F.col(C.COUNTRY)).alias(C.COUNTRY),
        F.when(location, F.col(C.REGION)).alias(C.REGION),
        F.when(location, F.col(C.CITY)).alias(C.CITY),
        C.LANGUAGE,
        C.TIMEZONE,
        C.DEVICE,
        C.SIGNUP_DATE,
        C.CONSENT_BEHAVIORAL,
        C.CONSENT_LOCATION,
        C.CONSENT_DEMOGRAPHICS,
        C.CONSENT_THIRD_PARTY,
        allowed.alias(C.BEHAVIOR_ALLOWED),
        # Without behavioural consent on D only demographic and consent fields remain.
        *[F.when(allowed, value).alias(name) for name, value in behaviour_values.items()],
    )


def build_profiles_from_aggregates(
    daily: A.DailyAggregates,
    users: DataFrame,
    apps: DataFrame,
    as_of: str,
    window_days: int,
    half_life_days: float,
) -> DataFrame:
    """Profiles as of ``as_of`` from the window's daily aggregates; same columns as :func:`build_profiles`.

    Args:
        daily: aggregates of (at least) the ``window_days`` event dates ending ``as_of``
            (``jobs.build_daily_aggregates.read_window``); other dates are ignored.
        users, apps: silver snapshots of ``as_of``.

    Counts, dates and sets equal :func:`build_profiles`' exactly; float sums within
    ``build_daily_aggregates.FLOAT_RELATIVE_TOLERANCE`` (see that module).
    """
    day = F.lit(check_date(as_of)).cast("date")
    window = daily.between(window_start(as_of, window_days), as_of)
    age = F.datediff(day, F.col(C.EVENT_DATE))
    weight = decay_weight(age, half_life_days)
    n_active = F.col(A.N_ACTIVE)

    days = window.user.withColumn("_age", age).withColumn("_w", weight)
    age = F.col("_age")
    entries = F.col("_days")
    total_weight = F.aggregate(entries, F.lit(0.0), lambda acc, x: acc + x["n"] * x["w"])

    def histogram(key: str, size: int) -> Column:
        """Decayed share of active events per bucket; null when no weight."""
        return F.when(
            total_weight > 0,
            F.transform(
                F.sequence(F.lit(0), F.lit(size - 1)),
                lambda k: F.aggregate(entries, F.lit(0.0), lambda acc, x: acc + x[key][k] * x["w"]) / total_weight,
            ),
        )

    user_level = days.groupBy(C.USER_ID).agg(
        F.sum(n_active).alias(C.N_EVENTS),
        F.sum(A.N_PURCHASES).alias(C.PURCHASE_COUNT),
        F.coalesce(F.sum(A.REVENUE), F.lit(0.0)).alias(C.PURCHASE_REVENUE),
        F.max(A.LAST_PURCHASE_TS).alias(C.LAST_PURCHASE_TS),
        F.coalesce(F.max(A.MAX_PURCHASE), F.lit(0.0)).alias(C.MAX_PRICE_PAID),
        F.sum(A.N_NOTIFICATIONS).alias(C.NOTIFICATIONS_SENT),
        F.sum(A.N_NOTIFICATION_OPENS).alias("_opens"),
        F.datediff(day, F.max(F.when(n_active > 0, F.col(C.EVENT_DATE)))).alias(C.RECENCY_DAYS),
        F.size(F.array_distinct(F.flatten(F.collect_list(A.SESSIONS)))).cast("long").alias(C.FREQUENCY),
        *[
            F.count(F.when((n_active > 0) & (age < days_), F.lit(1))).alias(name)
            for days_, name in ((7, C.ACTIVE_DAYS_7), (30, C.ACTIVE_DAYS_30), (90, C.ACTIVE_DAYS_90))
        ],
        F.sum(F.when(age < 7, n_active).otherwise(F.lit(0))).cast("long").alias("_n7"),
        F.sum(F.when(age.between(7, 27), n_active).otherwise(F.lit(0))).cast("long").alias("_n21"),
        F.collect_list(
            F.struct(n_active.alias("n"), F.col(A.HOUR_COUNTS).alias("h"), F.col(A.WEEKDAY_COUNTS).alias("d"),
                     F.col("_w").alias("w"))
        ).alias("_days"),
    )
    user_level = user_level.withColumn(C.HOUR_HISTOGRAM, histogram("h", 24)).withColumn(
        C.WEEKDAY_HISTOGRAM, histogram("d", 7)
    ).drop("_days")

    catalogue = apps.select(C.APP_ID, C.CATEGORY, F.col(C.PRICE).alias("_price"), C.CONTENT_TYPE)
    pairs = window.user_app.withColumn("_w", weight).join(F.broadcast(catalogue), C.APP_ID, "left")
    per_app = pairs.groupBy(C.USER_ID, C.APP_ID).agg(
        F.sum(A.OPENS).alias("sessions"),
        (F.coalesce(F.sum(A.OPEN_SECONDS), F.lit(0.0)) / 60.0).alias("minutes"),
        (F.coalesce(F.sum(F.col(A.OPEN_SECONDS) * F.col("_w")), F.lit(0.0)) / 60.0).alias("decayed_minutes"),
        F.max(A.LAST_OPEN_TS).alias("last_used"),
        F.max(A.LAST_CHANGE)[C.EVENT_TYPE].alias("_last_change"),
    )
    apps_level = _apps_level(per_app)
    used = (F.col(A.INSTALLS) + F.col(A.OPENS) + F.col(A.PURCHASES)) > 0
    apps_used = pairs.groupBy(C.USER_ID).agg(
        F.max((F.col(A.INSTALLS) > 0) & (F.col("_price") > 0)).cast("int").alias("_paid_install"),
        F.array_sort(F.collect_set(F.when(used, F.col(C.CONTENT_TYPE)))).alias(C.CONTENT_TYPES),
    )

    category_points = (
        F.col(A.VIEWS) * CATEGORY_EVENT_WEIGHTS["app_view"]
        + F.col(A.OPENS) * CATEGORY_EVENT_WEIGHTS["app_open"]
        + F.col(A.INSTALLS) * CATEGORY_EVENT_WEIGHTS["install"]
        + F.col(A.PURCHASES) * CATEGORY_EVENT_WEIGHTS["purchase"]
        + F.col(A.GOOD_RATINGS) * CATEGORY_EVENT_WEIGHTS["rating"]
    )
    per_category = (
        pairs.where(F.col(C.CATEGORY).isNotNull())
        .groupBy(C.USER_ID, C.CATEGORY)
        .agg(F.sum(category_points * F.col("_w")).alias("_score"), F.sum(A.VIEWS).alias("_views"))
    )
    categories = _category_maps(per_category)

    terms = _top_terms(
        window.user_terms.withColumn("_w", weight).groupBy(C.USER_ID, A.TERM)
        .agg(F.sum(F.col(A.N_TERM) * F.col("_w")).alias("_score"))
        .withColumnRenamed(A.TERM, "_term")
    )
    return assemble_profiles(users, (user_level, apps_level, apps_used, categories, terms))


def main(config: Config, date: str, spark: SparkSession | None = None, known_by: str | None = None) -> dict:
    """Build ``gold/profiles/date=D``; return its path and row count.

    ``known_by`` (default D): use events landed up to that date, to restate D with late arrivals.
    ``profiles.source`` chooses the input: the window's daily aggregates or its raw events.
    """
    as_of = check_date(date)
    spark = spark or get_spark(config, "build_profiles")
    lake = Lake(config)
    users = read_snapshot(spark, lake, "users", as_of)
    apps = read_snapshot(spark, lake, "apps", as_of)
    if config.profiles.source == "aggregates":
        daily = A.read_window(spark, config, as_of, config.profiles.window_days, known_by)
        profiles = build_profiles_from_aggregates(
            daily, users, apps, as_of, config.profiles.window_days, config.profiles.half_life_days)
        path = io.write_partition(profiles, lake.gold("profiles"), "date", as_of)
        rows = spark.read.parquet(path).count()
        log.info("profiles %s: %d users (from daily aggregates)", as_of, rows)
        return {"date": as_of, "profiles_path": path, "rows": rows, "source": "aggregates"}
    events = read_events_window(spark, lake, as_of, config.profiles.window_days, known_by)
    if events is None:  # no events at all yet: every user is a cold start
        events = spark.createDataFrame([], _empty_events_schema(spark, lake))
    scratch = lake.gold(f"_staging/profiles/date={as_of}")
    profiles = build_profiles(
        events, users, apps, read_consent_changes(spark, lake, as_of, known_by), as_of,
        config.profiles.window_days, config.profiles.half_life_days,
        materialise=lambda df: io.stage(df, scratch),
    )
    path = io.write_partition(profiles, lake.gold("profiles"), "date", as_of)
    io.delete_path(spark, scratch)
    rows = spark.read.parquet(path).count()
    log.info("profiles %s: %d users", as_of, rows)
    return {"date": as_of, "profiles_path": path, "rows": rows}


def _empty_events_schema(spark: SparkSession, lake: Lake):
    """Schema of silver events, for a lake without any event partition yet."""
    from pyspark.sql import types as T

    from jobs.columns import spark_schemas

    fields = [f for f in spark_schemas()["raw_events"].fields if f.name not in (C.IP, C.TS)]
    return T.StructType(
        fields
        + [
            T.StructField(C.TS, T.TimestampType()),
            T.StructField(C.LANDING_DATE, T.DateType()),
            T.StructField(C.LOCAL_HOUR, T.IntegerType()),
            T.StructField(C.LOCAL_WEEKDAY, T.IntegerType()),
            T.StructField(C.DAYTIME, T.StringType()),
            T.StructField(C.DEVICE_CLASS, T.StringType()),
            T.StructField(C.IS_LATE, T.BooleanType()),
            T.StructField(C.EVENT_DATE, T.DateType()),
        ]
    )


if __name__ == "__main__":
    from jobs import submit

    raise SystemExit(submit.run("build_profiles", main))
