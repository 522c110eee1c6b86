"""Model inputs of date D: user/app features, labelled interactions, regional popularity.

Outputs (``gold/<table>/date=D``):

- ``app_features``: catalogue attributes, ``price_bucket``, ``pop_7d``/``pop_30d``
  (distinct installers over the last 7/30 days, each weighted by
  ``0.5 ** (age_days / features.popularity_half_life_days)`` of their latest
  install), ``freshness_days`` and ``text_vec`` (description + tags through
  RegexTokenizer, StopWordsRemover, HashingTF, IDF and L2 normalisation, as a
  dense ``array<float>`` of ``TEXT_DIM``).
- ``user_features``: numeric profile columns, indexed categorical columns
  (fixed vocabularies or stable hash buckets, so indices never move between
  days), the segment id and context features (preferred hour, weekday, daytime).
- ``interactions``: per (user, app, split) positives (label 1; weight = install
  1.0 + purchase 2.0 + app_open log1p(minutes) + rating >= 4 1.0) and explicit
  negatives (label 0, weight 1.0): impressions not followed by a view or
  install of that app by that user on the same UTC day. ``split`` is
  ``validation`` for event dates in the last ``features.validation_days`` days
  and ``train`` before. Point-in-time features use only information strictly
  before the example: ``app_pop_7d_asof`` (decayed installers of the app in
  the 7 days before the example's date) and ``user_prior_positives`` (the
  user's positive events before ``event_ts``). Sampled negatives are left to
  model training.
- ``popularity``: per region (and ``global``) and category, the decayed count of
  distinct users with a positive event per app; groups (region, category) with
  fewer than ``features.min_group_size`` distinct users are suppressed.

Consent: only events made while behavioural consent was in force are used; in
addition, ``interactions`` hold no rows of users without behavioural consent on D.
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.ml import Pipeline
from pyspark.ml.feature import IDF, HashingTF, Normalizer, RegexTokenizer, StopWordsRemover
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs import build_daily_aggregates as A
from jobs import columns as C
from jobs import io
from jobs.build_profiles import decay_weight
from jobs.consent import consented_events
from jobs.inputs import read_consent_changes, read_events_window, read_snapshot, window_start
from jobs.spark import get_spark
from personalization.config import Config
from personalization.lake import Lake, check_date

log = logging.getLogger(__name__)

TEXT_DIM = 256
#: Days before an example that app_pop_7d_asof looks at.
ASOF_POPULARITY_DAYS = 7
POSITIVE_EVENTS = ("install", "purchase", "app_open", "rating")
ENGAGEMENT_AFTER_IMPRESSION = ("app_view", "install")
GLOBAL_REGION = "global"
#: Silver event columns the feature tables read.
EVENT_COLUMNS_USED = (
    C.EVENT_ID, C.EVENT_TYPE, C.USER_ID, C.APP_ID, C.TS, C.EVENT_DATE, C.DURATION_S, C.RATING_VALUE,
    C.LOCAL_HOUR, C.LOCAL_WEEKDAY, C.DAYTIME, C.DEVICE_CLASS,
)
#: Hash buckets for open-vocabulary categorical columns (index 0 = unknown).
HASH_BUCKETS = 1024


def _date(value: str) -> Column:
    return F.lit(check_date(value)).cast("date")


# -------------------------------------------------------------------- apps
def price_bucket(price: Column) -> Column:
    """``free`` (0 or unknown), ``low`` (< 2 USD), ``mid`` (< 5 USD), ``high``."""
    return (
        F.when(price.isNull() | (price <= 0), "free").when(price < 2, "low").when(price < 5, "mid").otherwise("high")
    )


def installer_popularity(events: DataFrame, as_of: str, days: int, half_life_days: float) -> DataFrame:
    """``app_id``, ``pop``: decayed distinct installers in the ``days`` days ending ``as_of``.

    Each installer counts once, weighted by the age of their latest install.
    """
    day = _date(as_of)
    first = dt.date.fromisoformat(as_of) - dt.timedelta(days=days - 1)
    rows = events.where((F.col(C.EVENT_TYPE) == "install") & F.col(C.EVENT_DATE).between(_date(first.isoformat()), day))
    return _decayed_installers(rows, as_of, half_life_days)


def _decayed_installers(installs: DataFrame, as_of: str, half_life_days: float) -> DataFrame:
    """``app_id``, ``pop``: each (app, user) of ``installs`` weighted by the age of its latest ``event_date``."""
    return (
        installs.groupBy(C.APP_ID, C.USER_ID)
        .agg(F.max(C.EVENT_DATE).alias("_last"))
        .groupBy(C.APP_ID)
        .agg(F.sum(decay_weight(F.datediff(_date(as_of), F.col("_last")), half_life_days)).alias("pop"))
    )


def text_vectors(apps: DataFrame, dim: int = TEXT_DIM) -> DataFrame:
    """``app_id``, ``text_vec``: TF-IDF of description + tags, L2-normalised, ``array<float>[dim]``."""
    text = F.concat_ws(" ", F.coalesce(F.col(C.DESCRIPTION), F.lit("")), F.array_join(F.coalesce(F.col(C.TAGS), F.array()), " "))
    docs = apps.select(C.APP_ID, text.alias("_text"))
    pipeline = Pipeline(
        stages=[
            RegexTokenizer(inputCol="_text", outputCol="_tokens", pattern=r"[^\p{L}\p{N}]+", minTokenLength=2),
            StopWordsRemover(inputCol="_tokens", outputCol="_words"),
            HashingTF(inputCol="_words", outputCol="_tf", numFeatures=dim),
            IDF(inputCol="_tf", outputCol="_tfidf"),
            Normalizer(inputCol="_tfidf", outputCol="_vec", p=2.0),
        ]
    )
    vectors = pipeline.fit(docs).transform(docs)
    return vectors.select(C.APP_ID, vector_to_array("_vec", dtype="float32").alias(C.TEXT_VEC))


def build_app_features(apps: DataFrame, events: DataFrame, as_of: str, half_life_days: float) -> DataFrame:
    """App features as of ``as_of`` from the catalogue snapshot and consented events."""
    pop7 = installer_popularity(events, as_of, 7, half_life_days)
    pop30 = installer_popularity(events, as_of, 30, half_life_days)
    return app_features_with_popularity(apps, pop7, pop30, as_of)


def app_features_with_popularity(apps: DataFrame, pop7: DataFrame, pop30: DataFrame, as_of: str) -> DataFrame:
    """App features from the catalogue snapshot and the 7/30-day installer popularity (``app_id``, ``pop``)."""
    pop7 = pop7.withColumnRenamed("pop", C.POP_7D)
    pop30 = pop30.withColumnRenamed("pop", C.POP_30D)
    return (
        apps.join(pop7, C.APP_ID, "left")
        .join(pop30, C.APP_ID, "left")
        .join(text_vectors(apps), C.APP_ID, "left")
        .select(
            C.APP_ID, C.APP_NAME, C.CATEGORY, C.DEVELOPER_ID, C.PRICE,
            price_bucket(F.col(C.PRICE)).alias(C.PRICE_BUCKET),
            C.RATING,
            F.coalesce(F.col(C.POP_7D), F.lit(0.0)).alias(C.POP_7D),
            F.coalesce(F.col(C.POP_30D), F.lit(0.0)).alias(C.POP_30D),
            F.datediff(_date(as_of), F.col(C.RELEASE_DATE)).alias(C.FRESHNESS_DAYS),
            C.AGE_RATING, C.REGIONS, C.LANGUAGES, C.CONTENT_TYPE, C.TEXT_VEC,
        )
    )


# ------------------------------------------------------------------- users
def _vocabulary_index(column: str, vocabulary: tuple[str, ...]) -> Column:
    """1-based position in a fixed vocabulary, 0 when unknown or null."""
    return F.coalesce(F.array_position(F.array(*[F.lit(v) for v in vocabulary]), F.col(column)), F.lit(0)).cast("int")


def _hash_index(column: str) -> Column:
    """Stable bucket 1..HASH_BUCKETS of an open-vocabulary value, 0 when null."""
    return F.when(F.col(column).isNull(), F.lit(0)).otherwise(
        (F.pmod(F.xxhash64(F.col(column)), F.lit(HASH_BUCKETS)) + 1).cast("int")
    )


def _argmax(array: Column) -> Column:
    """Index of the largest element of a fixed-size array, -1 when all are 0 or null."""
    best = F.array_max(array)
    return F.when(best > 0, F.array_position(array, best) - 1).otherwise(F.lit(-1)).cast("int")


def build_user_features(profiles: DataFrame, segments: DataFrame | None, window_days: int) -> DataFrame:
    """User features from profiles (and segments, when given)."""
    hours = F.coalesce(F.col(C.HOUR_HISTOGRAM), F.array_repeat(F.lit(0.0), 24))
    daytime = F.array(
        *[
            sum((hours[h] for h in range(start, start + 6)), F.lit(0.0))
            for start in (0, 6, 12, 18)
        ]
    )
    weekdays = F.coalesce(F.col(C.WEEKDAY_HISTOGRAM), F.array_repeat(F.lit(0.0), 7))
    top_categories = F.transform(
        F.slice(
            F.array_sort(
                F.transform(
                    F.map_entries(F.coalesce(F.col(C.CATEGORY_SCORES), F.create_map().cast("map<string,double>"))),
                    lambda e: F.struct(F.negative(e["value"]).alias("k"), e["key"].alias("c")),
                )
            ),
            1,
            3,
        ),
        lambda t: t["c"],
    )
    out = profiles.select(
        C.USER_ID,
        F.col(C.BEHAVIOR_ALLOWED).cast("int").alias(C.BEHAVIOR_ALLOWED),
        F.coalesce(F.col(C.N_EVENTS), F.lit(0)).cast("double").alias(C.N_EVENTS),
        F.coalesce(F.col(C.FREQUENCY), F.lit(0)).cast("double").alias(C.FREQUENCY),
        F.log1p(F.coalesce(F.col(C.MONETARY), F.lit(0.0))).alias("log_monetary"),
        F.coalesce(F.col(C.PURCHASE_COUNT), F.lit(0)).cast("double").alias(C.PURCHASE_COUNT),
        F.coalesce(F.col(C.MAX_PRICE_PAID), F.lit(0.0)).alias(C.MAX_PRICE_PAID),
        F.coalesce(F.col(C.FREE_ONLY), F.lit(True)).cast("int").alias(C.FREE_ONLY),
        *[
            F.coalesce(F.col(c), F.lit(0)).cast("double").alias(c)
            for c in (C.ACTIVE_DAYS_7, C.ACTIVE_DAYS_30, C.ACTIVE_DAYS_90)
        ],
        # No activity: as old as the window allows.
        F.coalesce(F.col(C.RECENCY_DAYS), F.lit(window_days)).cast("double").alias(C.RECENCY_DAYS),
        F.coalesce(F.col(C.TREND), F.lit(1.0)).alias(C.TREND),
        F.coalesce(F.col(C.NOTIFICATION_OPEN_RATE), F.lit(0.0)).alias(C.NOTIFICATION_OPEN_RATE),
        _vocabulary_index(C.AGE_GROUP, C.AGE_GROUPS).alias("age_group_idx"),
        _vocabulary_index(C.DEVICE, C.DEVICES).alias("device_idx"),
        _hash_index(C.GENDER).alias("gender_idx"),
        _hash_index(C.COUNTRY).alias("country_idx"),
        _hash_index(C.LANGUAGE).alias("language_idx"),
        # context features
        _argmax(hours).alias("preferred_hour"),  # 0..23, -1 unknown
        (_argmax(weekdays) + 1).alias("preferred_weekday"),  # 1=Mon..7, 0 unknown
        _argmax(daytime).alias("preferred_daytime_idx"),  # 0 night .. 3 evening, -1 unknown
        *[daytime[i].alias(f"share_{name}") for i, name in enumerate(("night", "morning", "afternoon", "evening"))],
        top_categories.alias(C.TOP_CATEGORIES),
    )
    if segments is not None:
        out = out.join(segments.select(C.USER_ID, C.SEGMENT_ID), C.USER_ID, "left")
    else:
        out = out.withColumn(C.SEGMENT_ID, F.lit(None).cast("int"))
    return out.withColumn(C.SEGMENT_ID, F.coalesce(F.col(C.SEGMENT_ID), F.lit(-1)))


# ------------------------------------------------------------ interactions
def positive_weight() -> Column:
    """Weight of one positive event: install 1, purchase 2, app_open log1p(minutes), rating >= 4: 1."""
    minutes = F.coalesce(F.col(C.DURATION_S), F.lit(0.0)) / 60.0
    return (
        F.when(F.col(C.EVENT_TYPE) == "install", 1.0)
        .when(F.col(C.EVENT_TYPE) == "purchase", 2.0)
        .when(F.col(C.EVENT_TYPE) == "app_open", F.log1p(F.greatest(minutes, F.lit(0.0))))
        .when((F.col(C.EVENT_TYPE) == "rating") & (F.col(C.RATING_VALUE) >= 4), 1.0)
        .otherwise(0.0)
    )


def split_of(event_date: Column, as_of: str, validation_days: int) -> Column:
    """``validation`` for the last ``validation_days`` days up to ``as_of``, ``train`` before."""
    cutoff = dt.date.fromisoformat(as_of) - dt.timedelta(days=validation_days - 1)
    return F.when(event_date >= _date(cutoff.isoformat()), "validation").otherwise("train")


def daily_installers(events: DataFrame) -> DataFrame:
    """``app_id``, ``day``, ``installers``: distinct users installing the app each UTC day."""
    return (
        events.where(F.col(C.EVENT_TYPE) == "install")
        .groupBy(C.APP_ID, F.col(C.EVENT_DATE).alias("day"))
        .agg(F.countDistinct(C.USER_ID).alias("installers"))
    )


def build_interactions(
    events: DataFrame,
    consenting_users: DataFrame,
    as_of: str,
    window_days: int,
    validation_days: int,
    popularity_half_life_days: float,
) -> DataFrame:
    """Labelled examples of the ``window_days`` days ending ``as_of`` with point-in-time features.

    Args:
        events: consented events; should start ``ASOF_POPULARITY_DAYS`` days before
            the window so the first examples see a full popularity history.
        consenting_users: ``user_id`` of users with behavioural consent on ``as_of``.
    """
    first_day = (dt.date.fromisoformat(as_of) - dt.timedelta(days=window_days - 1)).isoformat()
    in_window = events.where(F.col(C.EVENT_DATE).between(_date(first_day), _date(as_of))).join(
        consenting_users.select(C.USER_ID).distinct(), C.USER_ID, "left_semi"
    )
    keys = [C.USER_ID, C.APP_ID, C.SPLIT]
    context = F.struct(C.LOCAL_HOUR, C.LOCAL_WEEKDAY, C.DAYTIME, C.DEVICE_CLASS)

    positives = (
        in_window.where(F.col(C.EVENT_TYPE).isin(*POSITIVE_EVENTS) & F.col(C.APP_ID).isNotNull())
        .withColumn("_weight", positive_weight())
        .where(F.col("_weight") > 0)
        .withColumn(C.SPLIT, split_of(F.col(C.EVENT_DATE), as_of, validation_days))
        .groupBy(*keys)
        .agg(
            F.sum("_weight").alias(C.WEIGHT),
            F.min(C.TS).alias(C.EVENT_TS),
            F.min_by(context, F.col(C.TS)).alias("_context"),
        )
        .withColumn(C.LABEL, F.lit(1))
    )

    impressions = in_window.where((F.col(C.EVENT_TYPE) == "impression") & F.col(C.APP_ID).isNotNull())
    engaged = in_window.where(F.col(C.EVENT_TYPE).isin(*ENGAGEMENT_AFTER_IMPRESSION)).select(
        C.USER_ID, C.APP_ID, F.col(C.EVENT_DATE).alias("_e_date"), F.col(C.TS).alias("_e_ts")
    )
    i = impressions.alias("i")
    e = engaged.alias("e")
    ignored = i.join(
        e,
        (F.col(f"i.{C.USER_ID}") == F.col(f"e.{C.USER_ID}"))
        & (F.col(f"i.{C.APP_ID}") == F.col(f"e.{C.APP_ID}"))
        & (F.col(f"i.{C.EVENT_DATE}") == F.col("e._e_date"))
        & (F.col("e._e_ts") >= F.col(f"i.{C.TS}")),
        "left_anti",
    )
    negatives = (
        ignored.withColumn(C.SPLIT, split_of(F.col(C.EVENT_DATE), as_of, validation_days))
        .groupBy(*keys)
        .agg(F.min(C.TS).alias(C.EVENT_TS), F.min_by(context, F.col(C.TS)).alias("_context"))
        .join(positives.select(*keys), keys, "left_anti")  # a positive wins over an ignored impression
        .withColumn(C.WEIGHT, F.lit(1.0))
        .withColumn(C.LABEL, F.lit(0))
    )
    positive_events = (
        events.where(F.col(C.EVENT_TYPE).isin(*POSITIVE_EVENTS) & F.col(C.APP_ID).isNotNull())
        .withColumn("_weight", positive_weight())
        .where(F.col("_weight") > 0)
        .join(consenting_users.select(C.USER_ID).distinct(), C.USER_ID, "left_semi")
        .select(C.USER_ID, F.col(C.TS).alias("_t_ts"), F.lit(1).alias("_is_event"))
    )
    example_keys = (
        positives.unionByName(negatives).select(*keys, F.col(C.EVENT_TS).alias("_t_ts"), F.lit(0).alias("_is_event"))
    )
    timeline = Window.partitionBy(C.USER_ID).orderBy("_t_ts", "_is_event").rowsBetween(
        Window.unboundedPreceding, Window.currentRow
    )
    prior = (
        example_keys.unionByName(positive_events, allowMissingColumns=True)
        .withColumn(C.USER_PRIOR_POSITIVES, F.sum("_is_event").over(timeline))
        .where(F.col("_is_event") == 0)
        .select(*keys, C.USER_PRIOR_POSITIVES)
    )
    return _label_examples(positives, negatives, daily_installers(events), prior, popularity_half_life_days)


def _label_examples(
    positives: DataFrame, negatives: DataFrame, daily: DataFrame, prior: DataFrame, popularity_half_life_days: float
) -> DataFrame:
    """Interactions from positives and negatives (keys, ``event_ts``, ``_context``, ``weight``, ``label``).

    ``daily``: installers per (app, day) of the loaded history; ``prior``: ``user_prior_positives`` per key.
    """
    keys = [C.USER_ID, C.APP_ID, C.SPLIT]
    examples = positives.unionByName(negatives)

    train_pairs = positives.where(F.col(C.SPLIT) == "train").select(C.USER_ID, C.APP_ID).withColumn("_t", F.lit(True))
    examples = examples.join(train_pairs, [C.USER_ID, C.APP_ID], "left").withColumn(
        C.IN_TRAIN, (F.col(C.SPLIT) == "validation") & F.col("_t").isNotNull()
    )

    # Point in time, app side: installers on the 7 days strictly before the example's date.
    example_day = F.to_date(F.col(C.EVENT_TS))
    daily = daily.alias("d")
    dated = examples.withColumn("_day", example_day).alias("x")
    pop = (
        dated.join(
            daily,
            (F.col(f"x.{C.APP_ID}") == F.col(f"d.{C.APP_ID}"))
            & (F.col("d.day") < F.col("x._day"))
            & (F.col("d.day") >= F.date_sub(F.col("x._day"), ASOF_POPULARITY_DAYS)),
            "inner",
        )
        .groupBy(*[F.col(f"x.{k}") for k in keys])
        .agg(
            F.sum(
                F.col("d.installers") * decay_weight(F.datediff(F.col("x._day"), F.col("d.day")), popularity_half_life_days)
            ).alias(C.APP_POP_7D_ASOF)
        )
    )
    examples = examples.join(pop, keys, "left")
    # Point in time, user side: the user's positive events strictly before event_ts
    # (examples sort before events at the same instant), over the loaded history (window + 7 days).
    examples = examples.join(prior, keys, "left")

    return examples.select(
        C.USER_ID, C.APP_ID, C.EVENT_TS, C.WEIGHT, C.LABEL, C.SPLIT, C.IN_TRAIN,
        F.coalesce(F.col(C.APP_POP_7D_ASOF), F.lit(0.0)).alias(C.APP_POP_7D_ASOF),
        F.coalesce(F.col(C.USER_PRIOR_POSITIVES), F.lit(0)).cast("long").alias(C.USER_PRIOR_POSITIVES),
        F.col("_context.local_hour").alias(C.LOCAL_HOUR),
        F.col("_context.local_weekday").alias(C.LOCAL_WEEKDAY),
        F.col("_context.daytime").alias(C.DAYTIME),
        F.col("_context.device_class").alias(C.DEVICE_CLASS),
    )


# -------------------------------------------------------------- popularity
def build_popularity(
    events: DataFrame,
    users: DataFrame,
    apps: DataFrame,
    as_of: str,
    half_life_days: float,
    min_group_size: int,
) -> DataFrame:
    """Decayed popularity per (region, category, app); small groups suppressed.

    Each user counts once per app, weighted by the age of their latest positive
    event (install, purchase, app_open). A user's region is used only with
    location consent; every user counts in the ``global`` region.
    """
    used = events.where(F.col(C.EVENT_TYPE).isin("install", "purchase", "app_open") & F.col(C.APP_ID).isNotNull())
    return _popularity_of(used, users, apps, as_of, half_life_days, min_group_size)


def _popularity_of(
    used: DataFrame, users: DataFrame, apps: DataFrame, as_of: str, half_life_days: float, min_group_size: int
) -> DataFrame:
    """Popularity from (``user_id``, ``app_id``, ``event_date``) rows of positive use (see :func:`build_popularity`)."""
    day = _date(as_of)
    latest = (
        used.groupBy(C.USER_ID, C.APP_ID)
        .agg(F.max(C.EVENT_DATE).alias("_last"))
        .withColumn("_w", decay_weight(F.datediff(day, F.col("_last")), half_life_days))
        .join(F.broadcast(apps.select(C.APP_ID, C.CATEGORY)), C.APP_ID)
    )
    regions = users.select(
        C.USER_ID,
        F.when(F.coalesce(F.col(C.CONSENT_LOCATION), F.lit(False)), F.col(C.REGION)).alias("_region"),
    )
    with_region = latest.join(regions, C.USER_ID, "left")
    by_region = with_region.where(F.col("_region").isNotNull()).withColumn(C.REGION, F.col("_region"))
    everywhere = with_region.withColumn(C.REGION, F.lit(GLOBAL_REGION))
    rows = by_region.unionByName(everywhere)
    groups = rows.groupBy(C.REGION, C.CATEGORY).agg(F.countDistinct(C.USER_ID).alias(C.GROUP_USERS))
    kept = groups.where(F.col(C.GROUP_USERS) >= min_group_size)
    return (
        rows.join(kept, [C.REGION, C.CATEGORY], "inner")
        .groupBy(C.REGION, C.CATEGORY, C.APP_ID, C.GROUP_USERS)
        .agg(F.sum("_w").alias(C.SCORE), F.countDistinct(C.USER_ID).alias(C.N_USERS))
        .select(C.REGION, C.CATEGORY, C.APP_ID, C.SCORE, C.N_USERS, C.GROUP_USERS)
    )


# ------------------------------------------------------ from daily aggregates
def build_app_features_from_aggregates(
    apps: DataFrame, daily: A.DailyAggregates, as_of: str, window_days: int, half_life_days: float
) -> DataFrame:
    """:func:`build_app_features` from the daily aggregates (installs over the window's last 7/30 days)."""
    window = daily.between(window_start(as_of, window_days), as_of)
    installs = window.user_app.where(F.col(A.INSTALLS) > 0)
    pops = [
        _decayed_installers(installs.where(F.col(C.EVENT_DATE) >= _date(window_start(as_of, days))), as_of,
                            half_life_days)
        for days in (7, 30)
    ]
    return app_features_with_popularity(apps, pops[0], pops[1], as_of)


def build_popularity_from_aggregates(
    daily: A.DailyAggregates,
    users: DataFrame,
    apps: DataFrame,
    as_of: str,
    window_days: int,
    half_life_days: float,
    min_group_size: int,
) -> DataFrame:
    """:func:`build_popularity` from the daily aggregates of the window."""
    window = daily.between(window_start(as_of, window_days), as_of).user_app
    used = window.where((F.col(A.INSTALLS) + F.col(A.PURCHASES) + F.col(A.OPENS)) > 0)
    return _popularity_of(used, users, apps, as_of, half_life_days, min_group_size)


def build_interactions_from_aggregates(
    daily: A.DailyAggregates,
    consenting_users: DataFrame,
    as_of: str,
    window_days: int,
    validation_days: int,
    popularity_half_life_days: float,
) -> DataFrame:
    """:func:`build_interactions` from the daily aggregates.

    Args:
        daily: aggregates of the window and the ``ASOF_POPULARITY_DAYS`` days before it (the
            loaded history of the from-scratch path).
    """
    loaded_from = window_start(as_of, window_days + ASOF_POPULARITY_DAYS)
    history = daily.between(loaded_from, as_of)
    consenting = consenting_users.select(C.USER_ID).distinct()
    in_window = history.between(window_start(as_of, window_days), as_of).user_app.join(
        consenting, C.USER_ID, "left_semi")
    keys = [C.USER_ID, C.APP_ID, C.SPLIT]
    split = split_of(F.col(C.EVENT_DATE), as_of, validation_days)
    # The example's first event: its time, context, day and the user's positives of that day before it.
    first = F.struct(F.col("_ts"), F.col("_context"), F.col(C.EVENT_DATE), F.col("_prior"))

    def examples(ts: str, context: str, prior: str, weight: Column | None) -> DataFrame:
        rows = in_window.where(F.col(ts).isNotNull()).select(
            C.USER_ID, C.APP_ID, C.EVENT_DATE, split.alias(C.SPLIT), F.col(ts).alias("_ts"),
            F.col(context).alias("_context"), F.col(prior).alias("_prior"),
            (weight if weight is not None else F.lit(None).cast("double")).alias("_weight"),
        )
        return rows.groupBy(*keys).agg(F.sum("_weight").alias(C.WEIGHT), F.min(first).alias("_first"))

    positives = examples(A.POS_TS, A.POS_CONTEXT, A.POS_PRIOR, F.col(A.POS_WEIGHT)).withColumn(C.LABEL, F.lit(1))
    negatives = (
        examples(A.NEG_TS, A.NEG_CONTEXT, A.NEG_PRIOR, None)
        .join(positives.select(*keys), keys, "left_anti")  # a positive wins over an ignored impression
        .withColumn(C.WEIGHT, F.lit(1.0))
        .withColumn(C.LABEL, F.lit(0))
    )
    both = positives.unionByName(negatives)
    # Positives of the user on the loaded days before the example's day, plus that day's before it.
    earlier = history.user.join(consenting, C.USER_ID, "left_semi").select(
        C.USER_ID, F.col(C.EVENT_DATE).alias("_day"), A.N_POSITIVES)
    running = Window.partitionBy(C.USER_ID).orderBy("_day").rowsBetween(Window.unboundedPreceding, -1)
    earlier = earlier.select(C.USER_ID, "_day", F.coalesce(F.sum(A.N_POSITIVES).over(running), F.lit(0)).alias("_before"))
    prior = (
        both.select(*keys, F.col("_first")[C.EVENT_DATE].alias("_day"), F.col("_first._prior").alias("_within"))
        .join(earlier, [C.USER_ID, "_day"], "left")
        .select(*keys, (F.coalesce(F.col("_within"), F.lit(0)) + F.coalesce(F.col("_before"), F.lit(0)))
                .cast("long").alias(C.USER_PRIOR_POSITIVES))
    )
    daily_installs = (
        history.user_app.where(F.col(A.INSTALLS) > 0)
        .groupBy(C.APP_ID, F.col(C.EVENT_DATE).alias("day"))
        .agg(F.count(F.lit(1)).alias("installers"))
    )

    def shaped(frame: DataFrame) -> DataFrame:
        return frame.select(
            *keys, C.WEIGHT, F.col("_first._ts").alias(C.EVENT_TS), F.col("_first._context").alias("_context"), C.LABEL)

    return _label_examples(shaped(positives), shaped(negatives), daily_installs, prior, popularity_half_life_days)


# -------------------------------------------------------------------- main
def main(config: Config, date: str, spark: SparkSession | None = None, known_by: str | None = None) -> dict:
    """Build the four feature tables of ``date``; return their paths and row counts.

    ``known_by`` (default D): use events landed up to that date, to restate D with late arrivals.
    """
    as_of = check_date(date)
    spark = spark or get_spark(config, "build_features")
    lake = Lake(config)
    users = read_snapshot(spark, lake, "users", as_of)
    apps = read_snapshot(spark, lake, "apps", as_of)
    profiles = io.read_partition(spark, lake.gold("profiles"), "date", as_of)
    if profiles is None:
        raise FileNotFoundError(f"gold/profiles/date={as_of} is missing: run build_profiles first")
    segments = io.read_partition(spark, lake.gold("segments"), "date", as_of)
    window_days = config.profiles.window_days
    if config.profiles.source == "aggregates":
        return _main_from_aggregates(config, as_of, spark, known_by, users, apps, profiles, segments)
    raw_events = read_events_window(spark, lake, as_of, window_days + ASOF_POPULARITY_DAYS, known_by)
    if raw_events is None:
        from jobs.build_profiles import _empty_events_schema

        raw_events = spark.createDataFrame([], _empty_events_schema(spark, lake))
    # Materialised once (as scratch Parquet) and cut from its lineage: four tables aggregate it.
    scratch = lake.gold(f"_staging/features/date={as_of}")
    consented = consented_events(raw_events, users, read_consent_changes(spark, lake, as_of, known_by))
    events = io.stage(consented.select(*EVENT_COLUMNS_USED), scratch)
    try:
        half_life = config.features.popularity_half_life_days
        consenting = users.where(F.col(C.CONSENT_BEHAVIORAL)).select(C.USER_ID)
        first_day = (dt.date.fromisoformat(as_of) - dt.timedelta(days=window_days - 1)).isoformat()
        window_events = events.where(F.col(C.EVENT_DATE) >= _date(first_day))
        tables = {
            "app_features": build_app_features(apps, window_events, as_of, half_life),
            "user_features": build_user_features(profiles, segments, window_days),
            "interactions": build_interactions(
                events, consenting, as_of, window_days, config.features.validation_days, half_life
            ),
            "popularity": build_popularity(
                window_events, users, apps, as_of, half_life, config.features.min_group_size
            ),
        }
        result = _write_tables(spark, lake, as_of, tables)
    finally:
        io.delete_path(spark, scratch)
    log.info("features %s: %s", as_of, result)
    return result


def _write_tables(spark: SparkSession, lake: Lake, as_of: str, tables: dict[str, DataFrame]) -> dict:
    result: dict = {"date": as_of}
    for name, table in tables.items():
        path = io.write_partition(table, lake.gold(name), "date", as_of)
        result[f"{name}_path"] = path
        result[f"{name}_rows"] = spark.read.parquet(path).count()
    return result


def _main_from_aggregates(config: Config, as_of: str, spark: SparkSession, known_by: str | None, users: DataFrame,
                          apps: DataFrame, profiles: DataFrame, segments: DataFrame | None) -> dict:
    """The four tables from the daily aggregates of the window and the 7 days before it."""
    window_days = config.profiles.window_days
    half_life = config.features.popularity_half_life_days
    daily = A.read_window(spark, config, as_of, window_days + ASOF_POPULARITY_DAYS, known_by)
    consenting = users.where(F.col(C.CONSENT_BEHAVIORAL)).select(C.USER_ID)
    result = _write_tables(spark, Lake(config), as_of, {
        "app_features": build_app_features_from_aggregates(apps, daily, as_of, window_days, half_life),
        "user_features": build_user_features(profiles, segments, window_days),
        "interactions": build_interactions_from_aggregates(
            daily, consenting, as_of, window_days, config.features.validation_days, half_life),
        "popularity": build_popularity_from_aggregates(
            daily, users, apps, as_of, window_days, half_life, config.features.min_group_size),
    })
    result["source"] = "aggregates"
    log.info("features %s: %s", as_of, result)
    return result


if __name__ == "__main__":
    from jobs import submit

    raise SystemExit(submit.run("build_features", main))
