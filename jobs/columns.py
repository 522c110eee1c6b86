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

# quarantine
RAW_RECORD = "raw_record"  # the original line, byte for byte
REASON = "reason"

#: Reason codes, in precedence order: a record with several defects gets the first.
QUARANTINE_REASONS = (
    "malformed_json",  # not a JSON object
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
