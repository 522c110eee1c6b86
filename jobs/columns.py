"""Column names and Spark schemas of every lake table, in one place.

Raw landing records are JSON lines written by the app-store event collector (or
the synthetic generator). Timestamps are ISO-8601 UTC strings ending in ``Z``.
"""

from __future__ import annotations

# ----------------------------------------------------------------- raw events
EVENT_ID = "event_id"
EVENT_TYPE = "event_type"
USER_ID = "user_id"
APP_ID = "app_id"
TS = "ts"  # event time, UTC
TIMEZONE = "tz"  # IANA name of the user's local zone
DEVICE = "device"
COUNTRY = "country"
CITY = "city"
SESSION_ID = "session_id"
SURFACE = "surface"
POSITION = "position"
VARIANT = "variant"
QUERY = "query"
AMOUNT = "amount"  # purchase amount, USD
DURATION_S = "duration_s"  # usage session length, seconds
RATING_VALUE = "rating_value"  # 1..5
IP = "ip"  # dropped at ingestion
CONSENT_TYPE = "consent_type"  # behavioral | location | demographics | third_party
CONSENT_VALUE = "consent_value"  # bool

RAW_EVENT_FIELDS = (
    EVENT_ID, EVENT_TYPE, USER_ID, APP_ID, TS, TIMEZONE, DEVICE, COUNTRY, CITY,
    SESSION_ID, SURFACE, POSITION, VARIANT, QUERY, AMOUNT, DURATION_S,
    RATING_VALUE, IP, CONSENT_TYPE, CONSENT_VALUE,
)

EVENT_TYPES = (
    "impression", "app_view", "search", "install", "uninstall", "purchase",
    "app_open", "rating", "notification_sent", "notification_open", "consent_change",
)
#: Event types that must carry an app id.
APP_EVENT_TYPES = ("impression", "app_view", "install", "uninstall", "purchase", "app_open", "rating")
SURFACES = (
    "for_you", "because_you_liked", "trending_in_your_area", "new_for_you", "featured",
    "search", "category_browse", "top_charts", "notification",
)
DEVICES = ("android_phone", "android_tablet", "ios_phone", "ios_tablet", "web")
CONSENT_TYPES = ("behavioral", "location", "demographics", "third_party")

# ----------------------------------------------------------- silver additions
EVENT_DATE = "event_date"  # UTC date of TS (partition column of silver events)
LANDING_DATE = "landing_date"  # the raw partition the record arrived in
LOCAL_HOUR = "local_hour"  # 0..23 in the user's zone
LOCAL_WEEKDAY = "local_weekday"  # 1=Mon .. 7=Sun in the user's zone
DAYTIME = "daytime"  # night | morning | afternoon | evening
DEVICE_CLASS = "device_class"  # phone | tablet | desktop
IS_LATE = "is_late"  # event_date < landing_date

#: Columns of a silver event row, in order; the partition column ``event_date`` is the directory.
SILVER_EVENT_COLUMNS = tuple(
    [name for name in RAW_EVENT_FIELDS if name != IP]
    + [LANDING_DATE, LOCAL_HOUR, LOCAL_WEEKDAY, DAYTIME, DEVICE_CLASS, IS_LATE]
)
#: Whole-batch counts of a validated landing batch (validate_raw_events.batch_aggregates), checked by GX.
BATCH_AGGREGATE_KEYS = (
    "n_rows", "n_duplicate_event_ids", "n_unknown_user_ids", "n_unknown_app_ids", "n_null_required", "n_bad_ts",
)

# quarantine
RAW_RECORD = "raw_record"  # the line as text: exact when it is valid UTF-8, else invalid bytes as U+FFFD
RAW_BYTES = "raw_bytes"  # binary: the line exactly as received, without its "\n" terminator
REASON = "reason"

#: Reason codes, in precedence order: a record with several defects gets the first.
QUARANTINE_REASONS = (
    "invalid_utf8",  # the line's bytes are not valid UTF-8 (strict decoding fails)
    "malformed_json",  # not a JSON object
    "nul_character",  # a field value holds U+0000 (escaped \u0000): PostgreSQL text cannot store it
    "oversized_field",  # a string field longer than validation.max_field_bytes (UTF-8 bytes)
    "missing_user_id",  # null or empty user_id
    "invalid_event_type",  # event_type not in EVENT_TYPES
    "bad_timestamp",  # ts missing or unparseable
    "future_timestamp",  # ts after the landing day's end + validation.future_tolerance_minutes
    "missing_app_id",  # an APP_EVENT_TYPES event without app_id
    "unknown_user_id",  # user_id not among users known on the landing date
    "unknown_app_id",  # app_id not in the catalogue as of the landing date
    "negative_duration",  # duration_s < 0
    "out_of_range",  # rating_value outside 1..5, amount < 0, position < 1
    "duplicate_event_id",  # event_id seen before (earlier line, or earlier date): first copy kept
)

# ----------------------------------------------------------------- raw apps
APP_NAME = "name"
CATEGORY = "category"
DEVELOPER_ID = "developer_id"
DEVELOPER_NAME = "developer_name"
PRICE = "price"  # USD, 0 for free
RATING = "rating"  # average store rating 1..5
DOWNLOADS_BUCKET = "downloads_bucket"
DESCRIPTION = "description"
TAGS = "tags"
RELEASE_DATE = "release_date"
AGE_RATING = "age_rating"  # minimum age in years: 4, 9, 12, 17
LANGUAGES = "languages"
REGIONS = "regions"  # country codes where the app is available
CONTENT_TYPE = "content_type"  # app | game

# ----------------------------------------------------------------- raw users
AGE_GROUP = "age_group"
GENDER = "gender"
REGION = "region"
LANGUAGE = "language"
SIGNUP_DATE = "signup_date"
CONSENT_BEHAVIORAL = "consent_behavioral"
CONSENT_LOCATION = "consent_location"
CONSENT_DEMOGRAPHICS = "consent_demographics"
CONSENT_THIRD_PARTY = "consent_third_party"

AGE_GROUPS = ("13-17", "18-24", "25-34", "35-44", "45-54", "55+")
#: Minimum age of each age group, used against an app's age rating.
AGE_GROUP_MIN_AGE = {"13-17": 13, "18-24": 18, "25-34": 25, "35-44": 35, "45-54": 45, "55+": 55}


def spark_schemas():
    # pyspark is imported here so that importing column names stays cheap (DAG parsing).
    """Explicit Spark schemas for the raw tables (never inferred)."""
    from pyspark.sql import types as T

    raw_events = T.StructType(
        [
            T.StructField(EVENT_ID, T.StringType()),
            T.StructField(EVENT_TYPE, T.StringType()),
            T.StructField(USER_ID, T.StringType()),
            T.StructField(APP_ID, T.StringType()),
            T.StructField(TS, T.StringType()),
            T.StructField(TIMEZONE, T.StringType()),
            T.StructField(DEVICE, T.StringType()),
            T.StructField(COUNTRY, T.StringType()),
            T.StructField(CITY, T.StringType()),
            T.StructField(SESSION_ID, T.StringType()),
            T.StructField(SURFACE, T.StringType()),
            T.StructField(POSITION, T.LongType()),
            T.StructField(VARIANT, T.StringType()),
            T.StructField(QUERY, T.StringType()),
            T.StructField(AMOUNT, T.DoubleType()),
            T.StructField(DURATION_S, T.DoubleType()),
            T.StructField(RATING_VALUE, T.LongType()),
            T.StructField(IP, T.StringType()),
            T.StructField(CONSENT_TYPE, T.StringType()),
            T.StructField(CONSENT_VALUE, T.BooleanType()),
        ]
    )
    raw_apps = T.StructType(
        [
            T.StructField(APP_ID, T.StringType()),
            T.StructField(APP_NAME, T.StringType()),
            T.StructField(CATEGORY, T.StringType()),
            T.StructField(DEVELOPER_ID, T.StringType()),
            T.StructField(DEVELOPER_NAME, T.StringType()),
            T.StructField(PRICE, T.DoubleType()),
            T.StructField(RATING, T.DoubleType()),
            T.StructField(DOWNLOADS_BUCKET, T.StringType()),
            T.StructField(DESCRIPTION, T.StringType()),
            T.StructField(TAGS, T.ArrayType(T.StringType())),
            T.StructField(RELEASE_DATE, T.StringType()),
            T.StructField(AGE_RATING, T.LongType()),
            T.StructField(LANGUAGES, T.ArrayType(T.StringType())),
            T.StructField(REGIONS, T.ArrayType(T.StringType())),
            T.StructField(CONTENT_TYPE, T.StringType()),
        ]
    )
    raw_users = T.StructType(
        [
            T.StructField(USER_ID, T.StringType()),
            T.StructField(AGE_GROUP, T.StringType()),
            T.StructField(GENDER, T.StringType()),
            T.StructField(COUNTRY, T.StringType()),
            T.StructField(REGION, T.StringType()),
            T.StructField(CITY, T.StringType()),
            T.StructField(LANGUAGE, T.StringType()),
            T.StructField(TIMEZONE, T.StringType()),
            T.StructField(DEVICE, T.StringType()),
            T.StructField(SIGNUP_DATE, T.StringType()),
            T.StructField(CONSENT_BEHAVIORAL, T.BooleanType()),
            T.StructField(CONSENT_LOCATION, T.BooleanType()),
            T.StructField(CONSENT_DEMOGRAPHICS, T.BooleanType()),
            T.StructField(CONSENT_THIRD_PARTY, T.BooleanType()),
        ]
    )
    return {"raw_events": raw_events, "raw_apps": raw_apps, "raw_users": raw_users}

# ------------------------------------------- appended by the Spark data layer
# silver/users extras
SIGNUP_CONSENT_BEHAVIORAL = "signup_consent_behavioral"  # behavioural consent given at signup
CONSENT_UPDATED_AT = "consent_updated_at"  # ts of the last consent_change applied (null: none)

# silver/apps: release_date typed as a date; no new columns.

# gold/profiles (one row per user known on D; see jobs/build_profiles.py)
BEHAVIOR_ALLOWED = "behavior_allowed"  # behavioural consent as of D
APP_USAGE = "app_usage"  # array<struct<app_id, sessions, minutes, decayed_minutes, last_used>>
INSTALLED_APPS = "installed_apps"  # array<string>, installed and not uninstalled since
PURCHASE_COUNT = "purchase_count"
PURCHASE_REVENUE = "purchase_revenue"  # USD in the window
LAST_PURCHASE_TS = "last_purchase_ts"
VIEWS_BY_CATEGORY = "views_by_category"  # map<category, app_view count>
TOP_SEARCH_TERMS = "top_search_terms"  # array<string>, most frequent (decayed) first
HOUR_HISTOGRAM = "hour_histogram"  # array<double>[24], local hour, decayed, sums to 1 (or all 0)
WEEKDAY_HISTOGRAM = "weekday_histogram"  # array<double>[7], index 0 = Monday
CATEGORY_SCORES = "category_scores"  # map<category, double>, decayed, sums to 1 (or empty)
FREE_ONLY = "free_only"  # never paid (no purchase, no paid install)
MAX_PRICE_PAID = "max_price_paid"  # USD, 0 when none
CONTENT_TYPES = "content_types"  # array<string> of app/game used
NOTIFICATIONS_SENT = "notifications_sent"
NOTIFICATION_OPEN_RATE = "notification_open_rate"  # opens / sends in 0..1, 0 when no sends
RECENCY_DAYS = "recency_days"  # days since the last behavioural event (null: none)
FREQUENCY = "frequency"  # distinct sessions in the window
MONETARY = "monetary"  # purchase revenue in the window, USD
ACTIVE_DAYS_7 = "active_days_7"
ACTIVE_DAYS_30 = "active_days_30"
ACTIVE_DAYS_90 = "active_days_90"
TREND = "trend"  # (events/day last 7 days) / (events/day previous 21 days); null if none before
N_EVENTS = "n_events"  # behavioural events in the window

# gold/segments, segment_summary, segment_centroids
SEGMENT_ID = "segment_id"
SEGMENT_NAME = "segment_name"
SEGMENT_SIZE = "size"
TOP_CATEGORIES = "top_categories"
MEAN_ENGAGEMENT = "mean_engagement"
CENTROID = "centroid"  # array<double> in the original (unscaled) feature space
FEATURE_NAMES = "feature_names"  # array<string>, the centroid's coordinates

# gold/app_features, gold/popularity, gold/interactions
PRICE_BUCKET = "price_bucket"  # free | low (<2) | mid (<5) | high
POP_7D = "pop_7d"
POP_30D = "pop_30d"
FRESHNESS_DAYS = "freshness_days"
TEXT_VEC = "text_vec"
SCORE = "score"
N_USERS = "n_users"
GROUP_USERS = "group_users"
EVENT_TS = "event_ts"
WEIGHT = "weight"
LABEL = "label"
SPLIT = "split"  # train | validation
IN_TRAIN = "in_train"  # validation example whose (user, app) also has a train positive
APP_POP_7D_ASOF = "app_pop_7d_asof"  # point-in-time: installers in the 7 days before the example's date
USER_PRIOR_POSITIVES = "user_prior_positives"  # point-in-time: the user's positive events before event_ts
