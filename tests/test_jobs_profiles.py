"""build_profiles on hand-made silver tables (pure transform) plus one main() run.

As of 2026-10-29, window 90 days (first day 2026-08-01), half-life 14 days:
events on 10-29 weigh 1, on 10-15 0.5, on 10-01 0.25.
"""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from jobs import build_profiles as P
from jobs import columns as C
from jobs.build_daily_aggregates import aggregate_events
from jobs.consent import consented_events, with_behavioral_consent

AS_OF = "2026-10-29"
EVENT_SCHEMA = (
    "event_id string, event_type string, user_id string, app_id string, ts timestamp, event_date date, "
    "session_id string, local_hour int, local_weekday int, duration_s double, amount double, "
    "rating_value bigint, query string, consent_type string, consent_value boolean, landing_date date"
)
USER_SCHEMA = (
    "user_id string, age_group string, gender string, country string, region string, city string, "
    "language string, tz string, device string, signup_date date, consent_behavioral boolean, "
    "consent_location boolean, consent_demographics boolean, consent_third_party boolean, "
    "signup_consent_behavioral boolean"
)


def _ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _event(event_id, event_type, user, app, ts, session=None, hour=8, weekday=4, duration=None, amount=None,
           rating=None, query=None, consent_type=None, consent_value=None):
    moment = _ts(ts)
    return (event_id, event_type, user, app, moment, moment.date(), session, hour, weekday, duration, amount,
            rating, query, consent_type, consent_value, moment.date())


EVENTS = [
    # p1: full behaviour
    _event("p1-1", "app_view", "p1", "g1", "2026-10-29 10:00:00", "s1", hour=20),
    _event("p1-2", "search", "p1", None, "2026-10-29 10:01:00", "s1", hour=20, query="Puzzle games, puzzle!"),
    _event("p1-3", "notification_sent", "p1", None, "2026-10-29 09:00:00", None, hour=20),
    _event("p1-4", "notification_sent", "p1", None, "2026-10-29 09:30:00", None, hour=20),
    _event("p1-5", "notification_open", "p1", None, "2026-10-29 09:31:00", "s1", hour=20),
    _event("p1-6", "install", "p1", "g1", "2026-10-15 08:00:00", "s2"),
    _event("p1-7", "app_open", "p1", "g1", "2026-10-15 08:05:00", "s2", duration=600.0),
    _event("p1-8", "install", "p1", "t1", "2026-10-01 08:00:00", "s3"),
    _event("p1-9", "purchase", "p1", "t1", "2026-10-01 08:01:00", "s3", amount=4.99),
    _event("p1-10", "uninstall", "p1", "t1", "2026-10-01 08:30:00", "s3"),
    # outside the 90-day window (first day 2026-08-01)
    _event("p1-11", "app_view", "p1", "t1", "2026-07-31 08:00:00", "s0"),
    # p2: withdraws behavioural consent on 10-20: no behaviour on D at all
    _event("p2-1", "app_view", "p2", "g1", "2026-10-10 08:00:00", "s1"),
    _event("p2-2", "consent_change", "p2", None, "2026-10-20 08:00:00", "s2", consent_type="behavioral",
           consent_value=False),
    # p3: withdraws on 10-10 12:00, re-grants on 10-20: the gap (and the instant of withdrawal) is excluded
    _event("p3-1", "app_view", "p3", "g1", "2026-10-05 08:00:00", "s1", weekday=1),
    _event("p3-2", "consent_change", "p3", None, "2026-10-10 12:00:00", "s2", consent_type="behavioral",
           consent_value=False),
    _event("p3-3", "app_view", "p3", "g1", "2026-10-10 12:00:00", "s2"),
    _event("p3-4", "app_view", "p3", "t1", "2026-10-15 08:00:00", "s3"),
    _event("p3-5", "consent_change", "p3", None, "2026-10-20 08:00:00", "s4", consent_type="behavioral",
           consent_value=True),
    _event("p3-6", "app_view", "p3", "t1", "2026-10-25 08:00:00", "s5", weekday=7),
    # p5: never consented to behaviour
    _event("p5-1", "app_view", "p5", "g1", "2026-10-29 08:00:00", "s1"),
]


def _user(user_id, behavioral, location=True, demographics=True, signup_behavioral=None):
    return (user_id, "25-34", "f", "DE", "BY", "Munich", "de", "Europe/Berlin", "android_phone",
            dt.date(2026, 7, 1), behavioral, location, demographics, False,
            behavioral if signup_behavioral is None else signup_behavioral)


USERS = [
    _user("p1", True),
    _user("p2", False, location=True, demographics=False, signup_behavioral=True),
    _user("p3", True),
    _user("p4", True, location=False),
    _user("p5", False),
]
APPS = [("g1", "games", 0.0, "game"), ("t1", "tools", 4.99, "app")]


@pytest.fixture(scope="module", params=["events", "aggregates"])
def profiles(spark, request):
    """The same expectations hold from the raw events and from their daily aggregates."""
    events = spark.createDataFrame(EVENTS, EVENT_SCHEMA)
    users = spark.createDataFrame(USERS, USER_SCHEMA)
    apps = spark.createDataFrame(APPS, "app_id string, category string, price double, content_type string")
    changes = events.where(F.col(C.EVENT_TYPE) == "consent_change").select(
        C.USER_ID, C.TS, C.EVENT_ID, C.CONSENT_TYPE, C.CONSENT_VALUE
    )
    if request.param == "events":
        result = P.build_profiles(events, users, apps, changes, AS_OF, 90, 14.0)
    else:
        # the silver columns the aggregates read, absent from this hand-made table
        events = events.withColumn(C.DAYTIME, F.lit(None).cast("string")).withColumn(
            C.DEVICE_CLASS, F.lit(None).cast("string"))
        daily = aggregate_events(consented_events(events, users, changes))
        result = P.build_profiles_from_aggregates(daily, users, apps, AS_OF, 90, 14.0)
    return {row[C.USER_ID]: row.asDict(recursive=True) for row in result.collect()}, result.columns


def test_decay_weight(spark):
    ages = spark.createDataFrame([(0,), (7,), (14,), (28,)], "age int")
    got = [r[0] for r in ages.select(P.decay_weight(F.col("age"), 14.0)).orderBy("age").collect()]
    assert got == pytest.approx([1.0, 2 ** -0.5, 0.5, 0.25], abs=1e-12)


def test_full_behaviour_profile(profiles):
    rows, columns = profiles
    assert tuple(columns) == P.PROFILE_COLUMNS
    p1 = rows["p1"]
    assert p1[C.N_EVENTS] == 8  # window events minus notification_sent
    assert p1[C.INSTALLED_APPS] == ["g1"]  # t1 was uninstalled after its install
    assert (p1[C.PURCHASE_COUNT], p1[C.PURCHASE_REVENUE], p1[C.MAX_PRICE_PAID]) == (1, 4.99, 4.99)
    assert p1[C.LAST_PURCHASE_TS] == _ts("2026-10-01 08:01:00")
    assert p1[C.FREE_ONLY] is False
    assert p1[C.VIEWS_BY_CATEGORY] == {"games": 1}
    assert p1[C.TOP_SEARCH_TERMS] == ["puzzle", "games"]
    # games: view 1*1 + install 3*0.5 + open 2*0.5 = 3.5; tools: purchase 5*0.25 + install 3*0.25 = 2
    assert p1[C.CATEGORY_SCORES] == pytest.approx({"games": 3.5 / 5.5, "tools": 2.0 / 5.5})
    # hour 20: three events of weight 1; hour 8: 0.5 + 0.5 + 3 * 0.25
    expected_hours = [0.0] * 24
    expected_hours[20], expected_hours[8] = 3 / 4.75, 1.75 / 4.75
    assert p1[C.HOUR_HISTOGRAM] == pytest.approx(expected_hours)
    assert p1[C.WEEKDAY_HISTOGRAM] == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]  # all Thursdays
    assert p1[C.APP_USAGE] == [
        {"app_id": "g1", "sessions": 1, "minutes": 10.0, "decayed_minutes": 5.0,
         "last_used": _ts("2026-10-15 08:05:00")}
    ]
    assert p1[C.CONTENT_TYPES] == ["app", "game"]
    assert (p1[C.NOTIFICATIONS_SENT], p1[C.NOTIFICATION_OPEN_RATE]) == (2, 0.5)
    assert (p1[C.RECENCY_DAYS], p1[C.FREQUENCY], p1[C.MONETARY]) == (0, 3, 4.99)
    assert (p1[C.ACTIVE_DAYS_7], p1[C.ACTIVE_DAYS_30], p1[C.ACTIVE_DAYS_90]) == (1, 3, 3)
    # 3 events in the last 7 days, 2 in the 21 days before: (3/7) / (2/21)
    assert p1[C.TREND] == pytest.approx(4.5)


def test_consent_withdrawal(profiles):
    rows, _ = profiles
    p2 = rows["p2"]
    assert p2[C.BEHAVIOR_ALLOWED] is False
    assert all(p2[name] is None for name in P.BEHAVIOR_COLUMNS)
    # no demographics consent: age group and gender removed; location consent kept
    assert (p2[C.AGE_GROUP], p2[C.GENDER], p2[C.COUNTRY], p2[C.LANGUAGE]) == (None, None, "DE", "de")
    p3 = rows["p3"]
    # p3-1 kept (before withdrawal), p3-3 at the withdrawal instant and p3-4 in the gap excluded, p3-6 kept
    assert p3[C.N_EVENTS] == 2
    assert p3[C.VIEWS_BY_CATEGORY] == {"games": 1, "tools": 1}
    w1, w6 = 0.5 ** (24 / 14), 0.5 ** (4 / 14)
    assert p3[C.CATEGORY_SCORES] == pytest.approx({"games": w1 / (w1 + w6), "tools": w6 / (w1 + w6)})
    expected_weekdays = [w1 / (w1 + w6), 0, 0, 0, 0, 0, w6 / (w1 + w6)]
    assert p3[C.WEEKDAY_HISTOGRAM] == pytest.approx(expected_weekdays)
    p5 = rows["p5"]
    assert p5[C.BEHAVIOR_ALLOWED] is False and p5[C.N_EVENTS] is None


def test_cold_start_row(profiles):
    rows, _ = profiles
    assert sorted(rows) == ["p1", "p2", "p3", "p4", "p5"]
    p4 = rows["p4"]
    assert (p4[C.COUNTRY], p4[C.REGION], p4[C.CITY], p4[C.AGE_GROUP]) == (None, None, None, "25-34")
    assert (p4[C.N_EVENTS], p4[C.FREQUENCY], p4[C.PURCHASE_COUNT], p4[C.FREE_ONLY]) == (0, 0, 0, True)
    assert (p4[C.APP_USAGE], p4[C.INSTALLED_APPS], p4[C.CATEGORY_SCORES], p4[C.TOP_SEARCH_TERMS]) == ([], [], {}, [])
    assert p4[C.HOUR_HISTOGRAM] == [0.0] * 24 and p4[C.WEEKDAY_HISTOGRAM] == [0.0] * 7
    assert (p4[C.RECENCY_DAYS], p4[C.TREND], p4[C.NOTIFICATION_OPEN_RATE]) == (None, None, 0.0)


def test_consent_state_at_each_event(spark):
    events = spark.createDataFrame(
        [("a", _ts("2026-10-01 00:00:00")), ("a", _ts("2026-10-02 00:00:00")), ("b", _ts("2026-10-02 00:00:00"))],
        "user_id string, ts timestamp",
    )
    users = spark.createDataFrame([("a", False), ("b", True)], "user_id string, signup_consent_behavioral boolean")
    changes = spark.createDataFrame(
        [("a", _ts("2026-10-01 12:00:00"), "c1", "behavioral", True),
         ("b", _ts("2026-10-01 12:00:00"), "c2", "location", False)],
        "user_id string, ts timestamp, event_id string, consent_type string, consent_value boolean",
    )
    got = sorted(tuple(r) for r in with_behavioral_consent(events, users, changes).collect())
    # a: not consenting until the grant at 10-01 12:00; b: a location change does not matter
    assert got == [
        ("a", _ts("2026-10-01 00:00:00"), False),
        ("a", _ts("2026-10-02 00:00:00"), True),
        ("b", _ts("2026-10-02 00:00:00"), True),
    ]
