"""build_profiles.main + build_features.main on a hand-made silver lake, exact outputs.

As of 2026-10-10; window 10 days (2026-10-01..10-10, history loaded from 09-24),
validation = the last 2 days (10-09, 10-10), popularity half-life 7 days, groups
under 2 users suppressed. u5 withdraws behavioural consent on 10-06 08:00.
"""

from __future__ import annotations

import datetime as dt
import math

import pytest
from pyspark.ml.feature import HashingTF

from jobs import build_features as Fe
from jobs import columns as C
from personalization.config import load_config
from personalization.lake import Lake

AS_OF = "2026-10-10"
SILVER_SCHEMA = (
    "event_id string, event_type string, user_id string, app_id string, ts timestamp, tz string, "
    "device string, country string, city string, session_id string, surface string, position bigint, "
    "variant string, query string, amount double, duration_s double, rating_value bigint, "
    "consent_type string, consent_value boolean, landing_date date, local_hour int, local_weekday int, "
    "daytime string, device_class string, is_late boolean, event_date date"
)


def _event(n, event_type, user, app, ts, amount=None, duration=None, rating=None, consent=None):
    moment = dt.datetime.fromisoformat(ts)
    hour = moment.hour
    daytime = ["night", "morning", "afternoon", "evening"][hour // 6]
    return (
        f"e{n}", event_type, user, app, moment, "UTC", "ios_phone", "DE", None, f"s-{user}-{moment.date()}",
        "for_you", 1, None, None, amount, duration, rating,
        "behavioral" if consent is not None else None, consent, moment.date(), hour, moment.isoweekday(),
        daytime, "phone", False, moment.date(),
    )


EVENTS = [
    _event(1, "install", "u1", "A", "2026-10-03 09:00:00"),
    _event(2, "impression", "u1", "B", "2026-10-03 10:00:00"),  # never engaged: negative
    _event(3, "impression", "u1", "B", "2026-10-04 20:00:00"),  # engaged only the next day: negative
    _event(4, "app_view", "u1", "B", "2026-10-05 08:00:00"),
    _event(5, "impression", "u2", "A", "2026-10-05 09:00:00"),  # followed by an install
    _event(6, "install", "u2", "A", "2026-10-05 10:00:00"),
    _event(7, "purchase", "u2", "A", "2026-10-05 10:01:00", amount=1.99),
    _event(8, "impression", "u2", "B", "2026-10-05 10:00:00"),  # followed by a view
    _event(9, "app_view", "u2", "B", "2026-10-05 10:05:00"),
    _event(10, "rating", "u2", "A", "2026-10-09 09:00:00", rating=5),
    _event(11, "app_open", "u3", "B", "2026-10-09 08:00:00", duration=600.0),
    _event(12, "install", "u3", "A", "2026-10-09 12:00:00"),
    _event(13, "app_open", "u3", "B", "2026-10-09 15:00:00", duration=0.0),
    _event(14, "install", "u4", "A", "2026-10-10 11:00:00"),
    _event(15, "install", "u4", "A", "2026-09-28 11:00:00"),  # before the window, inside the loaded history
    _event(16, "install", "u5", "A", "2026-10-04 08:00:00"),  # before u5's withdrawal: counts
    _event(17, "consent_change", "u5", None, "2026-10-06 08:00:00", consent=False),
    _event(18, "install", "u5", "B", "2026-10-07 08:00:00"),  # after the withdrawal: never used
]
USERS = [
    # user_id, region, consent_location, consent_behavioral (on D), signup behavioural consent
    ("u1", "R1", True, True, True),
    ("u2", "R1", True, True, True),
    ("u3", "R2", True, True, True),
    ("u4", "R1", False, True, True),
    ("u5", "R2", True, False, True),
]
APPS = [
    ("A", "Alpha", "games", "d1", 0.0, 4.5, "Fast racing cars game", ["racing"], dt.date(2026, 9, 1), 4, "game"),
    ("B", "Beta", "tools", "d2", 2.99, 4.0, "Photo editor with filters", ["photo"], dt.date(2026, 10, 8), 4, "app"),
    ("C", "Gamma", "games", "d1", 9.99, 3.0, "Fast racing cars game", ["racing"], dt.date(2026, 10, 10), 12, "game"),
]


def w(days: float) -> float:
    """Decay weight with the 7-day popularity half-life."""
    return 0.5 ** (days / 7)


@pytest.fixture(scope="module", params=["aggregates", "events"])
def lake(spark, tmp_path_factory, request):
    """The same exact outputs from the daily aggregates (the default) and from the raw events."""
    root = tmp_path_factory.mktemp("features")
    config = load_config(
        overrides={
            "paths": {"root": str(root), "lake_root": str(root / "lake")},
            "profiles": {"window_days": 10, "source": request.param},
            "features": {"validation_days": 2, "popularity_half_life_days": 7.0, "min_group_size": 2},
        },
        environ={},
    )
    lake = Lake(config)
    events = spark.createDataFrame(EVENTS, SILVER_SCHEMA)
    assert tuple(events.columns) == (*C.SILVER_EVENT_COLUMNS, C.EVENT_DATE)
    events.write.partitionBy(C.EVENT_DATE).parquet(lake.silver("events"))
    users = spark.createDataFrame(
        [
            (u, "25-34", "f", "DE", region, None, "de", "UTC", "ios_phone", dt.date(2026, 9, 1), behavioral,
             location, True, False, signup, None)
            for u, region, location, behavioral, signup in USERS
        ],
        "user_id string, age_group string, gender string, country string, region string, city string, "
        "language string, tz string, device string, signup_date date, consent_behavioral boolean, "
        "consent_location boolean, consent_demographics boolean, consent_third_party boolean, "
        "signup_consent_behavioral boolean, consent_updated_at timestamp",
    )
    users.write.parquet(f"{lake.silver('users')}/date={AS_OF}")
    apps = spark.createDataFrame(
        [(a, n, c, d, "dev", p, r, "1k+", desc, tags, rel, age, ["en"], ["DE"], ct)
         for a, n, c, d, p, r, desc, tags, rel, age, ct in APPS],
        "app_id string, name string, category string, developer_id string, developer_name string, "
        "price double, rating double, downloads_bucket string, description string, tags array<string>, "
        "release_date date, age_rating bigint, languages array<string>, regions array<string>, "
        "content_type string",
    )
    apps.write.parquet(f"{lake.silver('apps')}/date={AS_OF}")
    # Profiles are build_profiles' job (tested there): two hand-made rows are enough here.
    hours = [0.0] * 24
    hours[10], hours[9] = 0.7, 0.3
    profile_rows = [
        ("u2", True, 6, 2, 1.99, 1, 1.99, False, 2, 2, 2, 1, 0.5, 0.0, "25-34", "ios_phone", "f", "DE", "de",
         hours, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], {"games": 0.8, "tools": 0.2}),
        ("u5", False, None, None, None, None, None, None, None, None, None, None, None, None, "25-34",
         "web", None, None, "de", None, None, None),
    ]
    spark.createDataFrame(
        profile_rows,
        "user_id string, behavior_allowed boolean, n_events bigint, frequency bigint, monetary double, "
        "purchase_count bigint, max_price_paid double, free_only boolean, active_days_7 bigint, "
        "active_days_30 bigint, active_days_90 bigint, recency_days int, trend double, "
        "notification_open_rate double, age_group string, device string, gender string, country string, "
        "language string, hour_histogram array<double>, weekday_histogram array<double>, "
        "category_scores map<string,double>",
    ).write.parquet(f"{lake.gold('profiles')}/date={AS_OF}")
    spark.createDataFrame([("u2", 4)], "user_id string, segment_id int").write.parquet(
        f"{lake.gold('segments')}/date={AS_OF}"
    )
    result = Fe.main(config, AS_OF, spark)

    def read(table):
        return spark.read.parquet(f"{lake.gold(table)}/date={AS_OF}")

    return result, read


def test_interactions_labels_weights_and_split(lake):
    result, read = lake
    got = sorted(
        (r[C.USER_ID], r[C.APP_ID], r[C.SPLIT], r[C.LABEL], round(r[C.WEIGHT], 9), str(r[C.EVENT_TS]), r[C.IN_TRAIN])
        for r in read("interactions").collect()
    )
    assert got == [
        ("u1", "A", "train", 1, 1.0, "2026-10-03 09:00:00", False),
        ("u1", "B", "train", 0, 1.0, "2026-10-03 10:00:00", False),  # both ignored impressions, first one
        ("u2", "A", "train", 1, 3.0, "2026-10-05 10:00:00", False),  # install 1 + purchase 2
        ("u2", "A", "validation", 1, 1.0, "2026-10-09 09:00:00", True),  # rating 5
        ("u3", "A", "validation", 1, 1.0, "2026-10-09 12:00:00", False),
        # 10 minutes: log1p(10); the zero-minute open adds nothing
        ("u3", "B", "validation", 1, round(math.log(11.0), 9), "2026-10-09 08:00:00", False),
        ("u4", "A", "validation", 1, 1.0, "2026-10-10 11:00:00", False),
    ]
    assert result["interactions_rows"] == 7  # u5 (no consent on D) has no examples


def test_point_in_time_features(lake):
    _, read = lake
    got = {
        (r[C.USER_ID], r[C.APP_ID], r[C.SPLIT]): (r[C.APP_POP_7D_ASOF], r[C.USER_PRIOR_POSITIVES])
        for r in read("interactions").collect()
    }
    expected = {
        # installers of A on 09-26..10-02: u4 on 09-28 (before the window but before the example)
        ("u1", "A", "train"): (w(5), 0),
        ("u1", "B", "train"): (0.0, 1),  # u1's install of A at 09:00 precedes the 10:00 impression
        # 09-28..10-04: u4 (7 days), u1 (2), u5 (1, before its withdrawal)
        ("u2", "A", "train"): (w(7) + w(2) + w(1), 0),
        # 10-02..10-08: u1 (6), u5 (5), u2 (4); the same-day installs of u3 (10-09) are not visible
        ("u2", "A", "validation"): (w(6) + w(5) + w(4), 2),
        ("u3", "A", "validation"): (w(6) + w(5) + w(4), 1),  # u3's 08:00 open of B came before
        ("u3", "B", "validation"): (0.0, 0),  # u5's install of B followed its withdrawal
        # 10-03..10-09: u1 (7), u5 (6), u2 (5), u3 (1); u4's own install on 10-10 excluded
        ("u4", "A", "validation"): (w(7) + w(6) + w(5) + w(1), 1),
    }
    assert set(got) == set(expected)
    for key, (pop, prior) in expected.items():
        assert got[key][0] == pytest.approx(pop, abs=1e-12), key
        assert got[key][1] == prior, key


def test_popularity_with_small_group_suppression(lake):
    _, read = lake
    got = sorted(
        (r[C.REGION], r[C.CATEGORY], r[C.APP_ID], round(r[C.SCORE], 12), r[C.N_USERS], r[C.GROUP_USERS])
        for r in read("popularity").collect()
    )
    # (R2, tools) and (global, tools) have one user (u3) and are suppressed; u4 has no location consent
    assert got == [
        ("R1", "games", "A", round(w(7) + w(5), 12), 2, 2),
        ("R2", "games", "A", round(w(1) + w(6), 12), 2, 2),
        ("global", "games", "A", round(w(7) + w(5) + w(1) + w(0) + w(6), 12), 5, 5),
    ]


def test_app_features(spark, lake):
    _, read = lake
    apps = {r[C.APP_ID]: r.asDict() for r in read("app_features").collect()}
    assert apps["A"][C.POP_7D] == pytest.approx(w(5) + w(1) + w(0) + w(6))  # u2, u3, u4, u5; u1 is 7 days old
    assert apps["A"][C.POP_30D] == pytest.approx(w(7) + w(5) + w(1) + w(0) + w(6))
    assert (apps["B"][C.POP_7D], apps["C"][C.POP_30D]) == (0.0, 0.0)
    assert [apps[a][C.PRICE_BUCKET] for a in "ABC"] == ["free", "mid", "high"]
    assert [apps[a][C.FRESHNESS_DAYS] for a in "ABC"] == [39, 2, 0]

    # TF-IDF by hand: 3 documents, idf = ln(4 / (df + 1)); "with" is a stop word.
    hashing = HashingTF(numFeatures=Fe.TEXT_DIM)

    def expected(counts: dict[str, int], df: dict[str, int]) -> list[float]:
        vec = [0.0] * Fe.TEXT_DIM
        for term, tf in counts.items():
            vec[hashing.indexOf(term)] += tf * math.log(4 / (df[term] + 1))
        norm = math.sqrt(sum(v * v for v in vec))
        return [v / norm for v in vec]

    df = {"fast": 2, "racing": 2, "cars": 2, "game": 2, "photo": 1, "editor": 1, "filters": 1}
    assert apps["A"][C.TEXT_VEC] == pytest.approx(expected({"fast": 1, "racing": 2, "cars": 1, "game": 1}, df), abs=1e-6)
    assert apps["B"][C.TEXT_VEC] == pytest.approx(expected({"photo": 2, "editor": 1, "filters": 1}, df), abs=1e-6)
    assert apps["C"][C.TEXT_VEC] == apps["A"][C.TEXT_VEC]
    schema = read("app_features").schema[C.TEXT_VEC].dataType
    assert schema.simpleString() == "array<float>"


def test_user_features(lake):
    _, read = lake
    users = {r[C.USER_ID]: r.asDict() for r in read("user_features").collect()}
    u2 = users["u2"]
    assert (u2["age_group_idx"], u2["device_idx"], u2[C.SEGMENT_ID]) == (3, 3, 4)  # "25-34", "ios_phone"
    assert (u2["preferred_hour"], u2["preferred_weekday"], u2["preferred_daytime_idx"]) == (10, 1, 1)
    assert (u2["share_morning"], u2["share_night"]) == (1.0, 0.0)
    assert (u2[C.PURCHASE_COUNT], u2[C.FREE_ONLY], u2["log_monetary"]) == (1.0, 0, math.log1p(1.99))
    assert u2[C.TOP_CATEGORIES] == ["games", "tools"]
    assert 1 <= u2["gender_idx"] <= Fe.HASH_BUCKETS  # stable hash bucket; 0 is reserved for unknown
    u5 = users["u5"]
    # no behavioural consent: neutral values, unknown context, no segment
    assert (u5[C.BEHAVIOR_ALLOWED], u5["preferred_hour"], u5["preferred_weekday"], u5[C.N_EVENTS]) == (0, -1, 0, 0.0)
    assert (u5[C.RECENCY_DAYS], u5[C.TREND], u5["device_idx"], u5["gender_idx"], u5[C.SEGMENT_ID]) == (
        10.0, 1.0, 5, 0, -1
    )
