"""validate_raw_events on a tiny hand-made lake: one line per defect, exact outputs.

Landing dates: 2026-10-01 (two clean events) and 2026-10-02 (18 lines). Users u1,
u2 sign up on 10-01, u3 on 10-03 (unknown on 10-02); app a1 released 10-01, a2 on
10-03 (unknown on 10-02).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from jobs import columns as C
from jobs import validate_raw_events as V
from personalization.config import load_config
from personalization.privacy import pseudonymise

D1, D2 = "2026-10-01", "2026-10-02"
#: A fixed pseudonymisation key: silver holds pseudonymise(app id, KEY) as user_id.
KEY = "test-hmac-key"


def _line(**fields) -> str:
    return json.dumps(fields, separators=(",", ":"))


USERS = {
    D1: [
        {"user_id": "u1", "age_group": "25-34", "country": "DE", "timezone": "Europe/Berlin", "signup_date": D1,
         "consent_behavioral": True, "consent_location": True, "consent_demographics": True,
         "consent_third_party": False},
        {"user_id": "u2", "age_group": "18-24", "country": "US", "timezone": "America/New_York", "signup_date": D1,
         "consent_behavioral": True, "consent_location": False, "consent_demographics": True,
         "consent_third_party": False},
    ],
    "2026-10-03": [
        {"user_id": "u3", "signup_date": "2026-10-03", "consent_behavioral": True, "consent_location": True,
         "consent_demographics": True, "consent_third_party": True},
    ],
}
APPS = {
    D1: [{"app_id": "a1", "name": "Alpha", "category": "games", "price": 0.0, "release_date": D1}],
    "2026-10-03": [{"app_id": "a2", "name": "Beta", "category": "tools", "price": 1.99, "release_date": "2026-10-03"}],
}
BERLIN = {"tz": "Europe/Berlin", "device": "android_phone"}
DAY1 = [
    _line(event_id="e1", event_type="install", user_id="u1", app_id="a1", ts="2026-10-01T10:00:00Z",
          session_id="s1", ip="1.2.3.4", **BERLIN),
    _line(event_id="e2", event_type="app_open", user_id="u2", app_id="a1", ts="2026-10-01T23:30:00Z",
          tz="America/New_York", device="ios_tablet", duration_s=600.0),
]
# (line, expected reason or None for clean)
DAY2 = [
    (_line(event_id="e3", event_type="app_view", user_id="u1", app_id="a1", ts="2026-10-02T08:00:00Z",
           session_id="s2", surface="for_you", position=1, **BERLIN), None),
    ('{"event_id": "e4", "user_id": ', "malformed_json"),
    # oversized and missing user: oversized comes first
    (_line(event_id="e5", event_type="search", user_id="", ts="2026-10-02T08:00:00Z", query="x" * 3000),
     "oversized_field"),
    # missing user and invalid type: missing user comes first
    (_line(event_id="e6", event_type="zzz", ts="2026-10-02T08:00:00Z"), "missing_user_id"),
    (_line(event_id="e7", event_type="clicked", user_id="u1", ts="not-a-time"), "invalid_event_type"),
    (_line(event_id="e8", event_type="app_view", user_id="u1", app_id="a2", ts="yesterday"), "bad_timestamp"),
    (_line(event_id="e9", event_type="app_view", user_id="u1", app_id="a1", ts="2026-10-03T01:30:00Z"),
     "future_timestamp"),
    # 30 minutes after the landing day: within the 60-minute tolerance, lands in event_date 10-03
    (_line(event_id="e9b", event_type="app_view", user_id="u1", app_id="a1", ts="2026-10-03T00:30:00Z",
           session_id="s3", **BERLIN), None),
    (_line(event_id="e10", event_type="install", user_id="u1", ts="2026-10-02T08:00:00Z"), "missing_app_id"),
    (_line(event_id="e11", event_type="app_view", user_id="u3", app_id="a2", ts="2026-10-02T08:00:00Z"),
     "unknown_user_id"),
    (_line(event_id="e12", event_type="app_view", user_id="u1", app_id="a2", ts="2026-10-02T08:00:00Z"),
     "unknown_app_id"),
    (_line(event_id="e13", event_type="app_open", user_id="u1", app_id="a1", ts="2026-10-02T08:00:00Z",
           duration_s=-5.0, rating_value=9), "negative_duration"),
    (_line(event_id="e14", event_type="rating", user_id="u1", app_id="a1", ts="2026-10-02T08:00:00Z",
           rating_value=6), "out_of_range"),
    # the same line as the first one: the first copy is kept
    (_line(event_id="e3", event_type="app_view", user_id="u1", app_id="a1", ts="2026-10-02T08:00:00Z",
           session_id="s2", surface="for_you", position=1, **BERLIN), "duplicate_event_id"),
    # already accepted on landing date 10-01
    (DAY1[0], "duplicate_event_id"),
    # late arrival: belongs to event_date 10-01
    (_line(event_id="e15", event_type="purchase", user_id="u2", app_id="a1", ts="2026-10-01T12:00:00Z",
           amount=2.99, session_id="s4", tz="America/New_York", device="web"), None),
    (_line(event_id="e16", event_type="app_view", user_id="u1", app_id="a1", ts="2026-10-02T08:00:00Z",
           position="abc"), "malformed_json"),
    (_line(event_id="e17", event_type="consent_change", user_id="u2", ts="2026-10-02T09:00:00Z",
           consent_type="behavioral", consent_value=False, session_id="s5", tz="America/New_York",
           device="ios_phone"), None),
]


def _write_lines(path: Path, lines: list[str]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "part-0000.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _build_lake(root: Path) -> None:
    lake = root / "lake" / "raw"
    for date, rows in USERS.items():
        _write_lines(lake / "users" / f"date={date}", [json.dumps(r) for r in rows])
    for date, rows in APPS.items():
        _write_lines(lake / "apps" / f"date={date}", [json.dumps(r) for r in rows])
    _write_lines(lake / "events" / f"date={D1}", DAY1)
    _write_lines(lake / "events" / f"date={D2}", [line for line, _ in DAY2])


def _config(root: Path, max_bad_rate: float = 1.0):
    return load_config(
        overrides={
            "paths": {"root": str(root), "lake_root": str(root / "lake")},
            "validation": {"max_bad_rate": max_bad_rate},
            "privacy": {"hmac_key": KEY},
        },
        environ={},
    )


def _rows(df, *order):
    return [tuple(r) for r in df.orderBy(*order).collect()]


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    _build_lake(root)
    config = _config(root)
    V.main(config, D1, spark, run_expectations_suites=False)
    result = V.main(config, D2, spark)
    return root, config, result


def _events(spark, root: Path):
    return spark.read.parquet(str(root / "lake" / "silver" / "events"))


def test_reason_codes_and_precedence(spark, lake):
    root, _, result = lake
    quarantine = spark.read.parquet(str(root / "lake" / "silver" / "quarantine" / f"landing_date={D2}"))
    got = sorted((r[C.RAW_RECORD], r[C.REASON]) for r in quarantine.collect())
    expected = sorted((line, reason) for line, reason in DAY2 if reason is not None)
    assert got == expected
    # malformed lines keep a null event id; others keep the id as sent
    ids = {r[C.RAW_RECORD]: r[C.EVENT_ID] for r in quarantine.collect()}
    assert ids[DAY2[1][0]] is None and ids[DAY2[2][0]] == "e5"
    assert (result["total"], result["clean"], result["quarantined"]) == (18, 4, 14)


def test_report_contents(spark, lake):
    root, _, _ = lake
    report = json.loads((root / "lake" / "reports" / "validation" / f"date={D2}" / "report.json").read_text())
    expected_reasons = {reason: 0 for reason in C.QUARANTINE_REASONS}
    expected_reasons.update(
        {"malformed_json": 2, "duplicate_event_id": 2, "oversized_field": 1, "missing_user_id": 1,
         "invalid_event_type": 1, "bad_timestamp": 1, "future_timestamp": 1, "missing_app_id": 1,
         "unknown_user_id": 1, "unknown_app_id": 1, "negative_duration": 1, "out_of_range": 1}
    )
    assert report["by_reason"] == expected_reasons
    assert (report["landing_date"], report["total"], report["clean"], report["quarantined"]) == (D2, 18, 4, 14)
    assert report["bad_rate"] == round(14 / 18, 6)
    assert report["late_event_dates"] == [D1]
    assert report["clean_by_event_date"] == {D1: 1, D2: 2, "2026-10-03": 1}
    # GX: the clean batch satisfies both suites, and Data Docs HTML exists
    assert report["expectations"]["success"] is True
    assert report["expectations"]["sample_rows"] == 4
    assert set(report["expectations"]["suites"]) == {"silver_events_sample", "silver_events_aggregates"}
    assert (root / "lake" / "reports" / "data_docs" / "index.html").exists()


def test_partition_placement_and_normalisation(spark, lake):
    root, _, _ = lake
    events = _events(spark, root)
    got = _rows(
        events.select(
            C.EVENT_ID, F.col(C.EVENT_DATE).cast("string"), F.col(C.LANDING_DATE).cast("string"), C.IS_LATE,
            F.date_format(C.TS, "yyyy-MM-dd HH:mm:ss"), C.LOCAL_HOUR, C.LOCAL_WEEKDAY, C.DAYTIME,
            C.DEVICE_CLASS, C.SESSION_ID,
        ),
        C.EVENT_ID,
    )
    # the generated session id derives from the pseudonym, never the app's id
    e2_session = "s-" + hashlib.sha256(f"{pseudonymise('u2', KEY)}|2026-10-01T23".encode()).hexdigest()[:16]
    assert got == [
        # 10:00Z is 12:00 in Berlin (CEST), Thursday
        ("e1", D1, D1, False, "2026-10-01 10:00:00", 12, 4, "afternoon", "phone", "s1"),
        # 23:30Z is 19:30 in New York (EDT), Thursday; session id derived from user and UTC hour
        ("e15", D1, D2, True, "2026-10-01 12:00:00", 8, 4, "morning", "desktop", "s4"),
        ("e17", D2, D2, False, "2026-10-02 09:00:00", 5, 5, "night", "phone", "s5"),
        ("e2", D1, D1, False, "2026-10-01 23:30:00", 19, 4, "evening", "tablet", e2_session),
        ("e3", D2, D2, False, "2026-10-02 08:00:00", 10, 5, "morning", "phone", "s2"),
        ("e9b", "2026-10-03", D2, False, "2026-10-03 00:30:00", 2, 6, "night", "phone", "s3"),
    ]
    assert C.IP not in events.columns
    assert {r[C.USER_ID] for r in events.select(C.USER_ID).collect()} == {pseudonymise(u, KEY) for u in ("u1", "u2")}
    partitions = sorted(p.name for p in (root / "lake" / "silver" / "events").iterdir() if p.name.startswith("event"))
    assert partitions == [f"event_date={D1}", f"event_date={D2}", "event_date=2026-10-03"]


def test_users_and_apps_snapshots(spark, lake):
    root, _, _ = lake
    users = spark.read.parquet(str(root / "lake" / "silver" / "users" / f"date={D2}"))
    got = _rows(
        users.select(C.USER_ID, C.CONSENT_BEHAVIORAL, C.SIGNUP_CONSENT_BEHAVIORAL, C.CONSENT_LOCATION,
                     F.date_format(C.CONSENT_UPDATED_AT, "yyyy-MM-dd HH:mm"), F.col(C.SIGNUP_DATE).cast("string")),
        C.USER_ID,
    )
    # u3 signs up on 10-03: not in the 10-02 snapshot; u2 withdrew behavioural consent
    assert sorted(got) == sorted([(pseudonymise("u1", KEY), True, True, True, None, D1),
                                  (pseudonymise("u2", KEY), False, True, False, "2026-10-02 09:00", D1)])
    mapping = spark.read.parquet(str(root / "lake" / "silver" / "user_pseudonyms" / f"date={D2}"))
    assert sorted(tuple(r) for r in mapping.collect()) == sorted(
        [(pseudonymise(u, KEY), u) for u in ("u1", "u2")])  # u3 signs up on 10-03
    apps = spark.read.parquet(str(root / "lake" / "silver" / "apps" / f"date={D2}"))
    assert _rows(apps.select(C.APP_ID, F.col(C.RELEASE_DATE).cast("string")), C.APP_ID) == [("a1", D1)]


def test_rerun_is_idempotent(spark, lake):
    root, config, first = lake
    events_before = _rows(_events(spark, root), C.EVENT_ID)
    quarantine_path = root / "lake" / "silver" / "quarantine" / f"landing_date={D2}"
    quarantine_before = _rows(spark.read.parquet(str(quarantine_path)), C.RAW_RECORD)
    second = V.main(config, D2, spark, run_expectations_suites=False)
    assert _rows(_events(spark, root), C.EVENT_ID) == events_before
    assert _rows(spark.read.parquet(str(quarantine_path)), C.RAW_RECORD) == quarantine_before
    assert (second["total"], second["clean"], second["quarantined"]) == (18, 4, 14)
    # the raw landing files are never modified
    raw = (root / "lake" / "raw" / "events" / f"date={D2}" / "part-0000.jsonl").read_text(encoding="utf-8")
    assert raw == "\n".join(line for line, _ in DAY2) + "\n"


def test_threshold_failure_writes_report_then_raises(spark, lake):
    root, _, _ = lake
    events_before = _rows(_events(spark, root), C.EVENT_ID)
    with pytest.raises(V.DataQualityError) as error:
        V.main(_config(root, max_bad_rate=0.5), D2, spark, run_expectations_suites=False)
    message = str(error.value)
    assert "bad rate 0.7778 exceeds 0.5000" in message
    assert (
        "top reasons: duplicate_event_id=2, malformed_json=2, bad_timestamp=1, future_timestamp=1, "
        "invalid_event_type=1" in message
    )
    assert error.value.by_reason["malformed_json"] == 2
    report = json.loads((root / "lake" / "reports" / "validation" / f"date={D2}" / "report.json").read_text())
    assert (report["status"], report["quarantined"]) == ("failed", 14)
    # a rejected batch leaves silver events untouched
    assert _rows(_events(spark, root), C.EVENT_ID) == events_before
    # the run's own staging folder (one per run, under landing_date=D) is removed: no scratch file is left
    staging = root / "lake" / "silver" / "_staging" / "validate"
    assert [path for path in staging.rglob("*") if path.is_file()] == []


def test_assign_reasons_pure_transform(spark):
    """The transform alone: precedence on one record with many defects, no paths involved."""
    lines = spark.createDataFrame(
        [(_line(event_id="x", event_type="nope", user_id="", ts="bad", duration_s=-1.0), "f", 0, 0)],
        [C.RAW_RECORD, "_file", "_block", "_pos"],
    )
    empty = spark.createDataFrame([], f"{C.USER_ID} string")
    flagged = V.assign_reasons(
        V.parse_lines(lines), empty, spark.createDataFrame([], f"{C.APP_ID} string"),
        spark.createDataFrame([], f"{C.EVENT_ID} string"), D2, 2048, 60,
    )
    assert [r[C.REASON] for r in flagged.collect()] == ["missing_user_id"]
