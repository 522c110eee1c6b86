"""Daily aggregates: incremental outputs equal a from-scratch recomputation.

A tiny generated world is run night by night with ``profiles.source: aggregates``
(validate, fold the night's event dates, restate late partitions, profiles,
features). After each night every output table of the night (and of the dates
restated by late events) is compared row by row with the from-scratch path
(``profiles.source: events``) on the same inputs: exact for counts, dates and sets,
within ``FLOAT_RELATIVE_TOLERANCE`` for float sums. Between the nights a user is
deleted, one user withdraws behavioural consent on the night and another one late.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import pytest

from jobs import build_daily_aggregates as A
from jobs import build_features, build_profiles
from jobs import columns as C
from jobs import validate_raw_events as V
from jobs.recompute_late_partitions import main as recompute_late_partitions
from personalization.config import Config
from personalization.generator import SCALE_PRESETS, generate_world
from personalization.lake import Lake
from personalization.privacy import lake_user_ids

KEYS = {
    "profiles": (C.USER_ID,),
    "app_features": (C.APP_ID,),
    "user_features": (C.USER_ID,),
    "interactions": (C.USER_ID, C.APP_ID, C.SPLIT),
    "popularity": (C.REGION, C.CATEGORY, C.APP_ID),
}


def _same(left: Any, right: Any, where: str) -> None:
    if isinstance(left, float) and isinstance(right, float):
        assert math.isclose(left, right, rel_tol=A.FLOAT_RELATIVE_TOLERANCE, abs_tol=1e-12), (where, left, right)
    elif isinstance(left, dict) and isinstance(right, dict):
        assert sorted(left) == sorted(right), (where, left, right)
        for key in left:
            _same(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        assert len(left) == len(right), (where, left, right)
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            _same(a, b, f"{where}[{i}]")
    else:
        assert left == right, (where, left, right)


def _rows(spark, config: Config, table: str, date: str) -> tuple[list[str], dict[tuple, dict]]:
    frame = spark.read.parquet(f"{config.lake_root}/gold/{table}/date={date}")
    rows = [row.asDict(recursive=True) for row in frame.collect()]
    keyed = {tuple(row[k] for k in KEYS[table]): row for row in rows}
    assert len(keyed) == len(rows), f"{table}: duplicate keys"
    return [f"{f.name}:{f.dataType.simpleString()}" for f in frame.schema.fields], keyed


def _outputs(spark, config: Config, date: str) -> dict[str, tuple[list[str], dict[tuple, dict]]]:
    return {table: _rows(spark, config, table, date) for table in KEYS}


def _build(spark, config: Config, date: str, known_by: str | None) -> None:
    build_profiles.main(config, date, spark=spark, known_by=known_by)
    build_features.main(config, date, spark=spark, known_by=known_by)


def _assert_equal_to_scratch(spark, config: Config, date: str, known_by: str | None = None) -> dict[str, int]:
    """Compare the aggregates path's tables of ``date`` (already in gold) with the events path's."""
    incremental = _outputs(spark, config, date)
    reference = copy.deepcopy(config)
    reference.profiles.source = "events"
    _build(spark, reference, date, known_by)
    scratch = _outputs(spark, reference, date)
    for table in KEYS:
        schema, rows = incremental[table]
        expected_schema, expected = scratch[table]
        assert schema == expected_schema, table
        assert sorted(rows) == sorted(expected), (table, date, set(rows) ^ set(expected))
        for key, row in expected.items():
            _same(rows[key], row, f"{table}/{date}/{key}")
    return {table: len(rows) for table, (_, rows) in incremental.items()}


def _raw_lines(config: Config, date: str) -> list[dict]:
    """The well-formed JSON objects of a landing partition (the generator injects bad lines too)."""
    folder = Path(Lake(config).raw_events(date))
    lines = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                lines.append(record)
    return lines


def _withdrawal(template: dict, ts: str, event_id: str) -> dict:
    line = {field: None for field in C.RAW_EVENT_FIELDS}
    line.update({C.EVENT_ID: event_id, C.EVENT_TYPE: "consent_change", C.USER_ID: template[C.USER_ID], C.TS: ts,
                 C.TIMEZONE: template.get(C.TIMEZONE), C.DEVICE: template.get(C.DEVICE),
                 C.COUNTRY: template.get(C.COUNTRY), C.CITY: template.get(C.CITY),
                 C.SESSION_ID: template.get(C.SESSION_ID), C.CONSENT_TYPE: "behavioral", C.CONSENT_VALUE: False})
    return line


def _active_users(lines: list[dict]) -> list[str]:
    """Users with app opens in these lines, most opens first (ties by id)."""
    counts: dict[str, int] = {}
    for line in lines:
        if line.get(C.EVENT_TYPE) == "app_open" and isinstance(line.get(C.USER_ID), str):
            counts[line[C.USER_ID]] = counts.get(line[C.USER_ID], 0) + 1
    return sorted(counts, key=lambda user: (-counts[user], user))


def _stored_user_ids(spark, config: Config) -> set[str]:
    ids: set[str] = set()
    for name in A.TABLES:
        ids.update(row[0] for row in spark.read.parquet(f"{config.lake_root}/gold/{name}").select(C.USER_ID)
                   .distinct().collect())
    return ids


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_incremental_outputs_equal_a_from_scratch_recomputation(spark, tmp_config: Config, caplog) -> None:
    config = tmp_config
    config.profiles.window_days = 3
    config.validation.recompute_late_max_days = 1
    config.features.min_group_size = 2
    assert config.profiles.source == "aggregates"  # the default
    preset = dataclasses.replace(SCALE_PRESETS["tiny"], n_users=45, n_apps=40, days=3, new_users_per_day=1)
    generate_world(config, progress=False, preset=preset)
    dates = sorted(p.name.removeprefix("date=") for p in Path(Lake(config).raw_events()).glob("date=*"))
    d1, d2, d3 = dates

    # Night 2 lands two behavioural withdrawals: one at 00:00:00 of the night's day (the user's
    # later events of that day must never be folded), one of day 1 landing late (restates
    # day 1 and the days after it). A third user is deleted after night 1.
    night2 = _raw_lines(config, d2)
    active = [user for user in _active_users(night2) if user in set(_active_users(_raw_lines(config, d1)))]
    opted_out, late_opted_out, deleted = active[0], active[1], active[2]
    by_user = {line[C.USER_ID]: line for line in night2 if isinstance(line.get(C.USER_ID), str)}
    extra = [_withdrawal(by_user[opted_out], f"{d2}T00:00:00Z", "test-withdrawal-1"),
             _withdrawal(by_user[late_opted_out], f"{d1}T12:00:00Z", "test-withdrawal-2")]
    (Path(Lake(config).raw_events(d2)) / "part-test-consent.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in extra), encoding="utf-8")

    compared: dict[str, dict[str, int]] = {}
    late_seen = False
    restated_seen: list[str] = []
    for night in dates:
        report = V.main(config, night, spark, run_expectations_suites=False)
        late_seen = late_seen or bool(report["late_event_dates"])
        folded = A.main(config, night, spark=spark)
        assert night in folded["folded"]
        restated = recompute_late_partitions(config, night, spark=spark)["recomputed"]
        _build(spark, config, night, None)
        compared[night] = _assert_equal_to_scratch(spark, config, night)
        restated_seen += restated
        for day in restated:  # restated with what landed by tonight
            _assert_equal_to_scratch(spark, config, day, known_by=night)
        if night == d1:
            from personalization.data_rights import delete_users

            delete_users(config, [deleted], "test", allow_unknown=False)
            (pseudonym,) = lake_user_ids(config, [deleted])
            assert pseudonym not in _stored_user_ids(spark, config)  # deletion reaches the aggregates

    assert late_seen and restated_seen, "the world must hold late events that restate a partition"
    assert A.main(config, d3, spark=spark)["folded"] == []  # a rerun of the fold has nothing left to do
    assert all(counts["profiles"] > 0 and counts["interactions"] > 0 for counts in compared.values())
    # The withdrawals (at 00:00:00 of day 2, and late on day 1) keep both users' day 2 out of the aggregates.
    opted, late = lake_user_ids(config, [opted_out, late_opted_out])
    day2 = spark.read.parquet(f"{config.lake_root}/gold/{A.DAILY_USER}/{C.EVENT_DATE}={d2}")
    assert day2.where(f"{C.USER_ID} in ('{opted}', '{late}')").count() == 0
    profiles = {row[C.USER_ID]: row for row in spark.read.parquet(f"{config.lake_root}/gold/profiles/date={d3}").collect()}
    assert profiles[opted][C.BEHAVIOR_ALLOWED] is False and profiles[opted][C.N_EVENTS] is None
    # Day 1 was restated by night 2 (late events, the late withdrawal).
    assert json.loads((Path(config.lake_root) / "gold" / A.STATE / "folded" / f"{C.EVENT_DATE}={d1}.json")
                      .read_text())["known_by"] >= d2

    # A rerun of night 1 with what it knew then (the stored days know more): folded in memory.
    caplog.set_level("INFO", logger=A.__name__)
    build_profiles.main(config, d1, spark=spark)
    assert f"folding 1 day(s) in memory for {d1} known by {d1}: {d1}" in caplog.text
    build_features.main(config, d1, spark=spark)
    _assert_equal_to_scratch(spark, config, d1)
    assert dt.date.fromisoformat(d3) - dt.date.fromisoformat(d1) == dt.timedelta(days=2)


def _events(spark, rows: list[dict]):
    """Silver events from partial rows (other columns null; ``event_date`` from ``ts``)."""
    from jobs.build_profiles import _empty_events_schema

    schema = _empty_events_schema(spark, None)
    full = []
    for row in rows:
        ts = dt.datetime.fromisoformat(row["ts"])
        values = {**row, C.TS: ts, C.EVENT_DATE: ts.date(), C.LANDING_DATE: ts.date(), C.LOCAL_HOUR: ts.hour,
                  C.LOCAL_WEEKDAY: ts.isoweekday()}
        full.append(tuple(values.get(field.name) for field in schema.fields))
    return spark.createDataFrame(full, schema)


def test_one_day_folds_into_exact_counts(spark) -> None:
    day = "2026-10-01"
    events = _events(spark, [
        {C.EVENT_ID: "e1", C.EVENT_TYPE: "notification_sent", C.USER_ID: "u1", C.TS: f"{day}T08:00:00"},
        {C.EVENT_ID: "e2", C.EVENT_TYPE: "search", C.USER_ID: "u1", C.TS: f"{day}T08:30:00", C.SESSION_ID: "s1",
         C.QUERY: "Photo editor, photo"},
        {C.EVENT_ID: "e3", C.EVENT_TYPE: "impression", C.USER_ID: "u1", C.APP_ID: "a2", C.TS: f"{day}T09:00:00",
         C.SESSION_ID: "s1"},
        {C.EVENT_ID: "e4", C.EVENT_TYPE: "impression", C.USER_ID: "u1", C.APP_ID: "a1", C.TS: f"{day}T09:30:00",
         C.SESSION_ID: "s1"},
        {C.EVENT_ID: "e5", C.EVENT_TYPE: "app_view", C.USER_ID: "u1", C.APP_ID: "a1", C.TS: f"{day}T09:40:00",
         C.SESSION_ID: "s1"},
        {C.EVENT_ID: "e6", C.EVENT_TYPE: "install", C.USER_ID: "u1", C.APP_ID: "a1", C.TS: f"{day}T09:50:00",
         C.SESSION_ID: "s1"},
        {C.EVENT_ID: "e7", C.EVENT_TYPE: "app_open", C.USER_ID: "u1", C.APP_ID: "a1", C.TS: f"{day}T10:00:00",
         C.SESSION_ID: "s2", C.DURATION_S: 120.0},
        {C.EVENT_ID: "e8", C.EVENT_TYPE: "purchase", C.USER_ID: "u1", C.APP_ID: "a1", C.TS: f"{day}T11:00:00",
         C.SESSION_ID: "s2", C.AMOUNT: 2.5},
        {C.EVENT_ID: "e9", C.EVENT_TYPE: "impression", C.USER_ID: "u1", C.APP_ID: "a2", C.TS: f"{day}T12:00:00",
         C.SESSION_ID: "s2"},
    ])
    daily = A.aggregate_events(events)
    (user,) = [row.asDict() for row in daily.user.collect()]
    assert (user[A.N_ACTIVE], user[A.N_PURCHASES], user[A.REVENUE], user[A.N_NOTIFICATIONS], user[A.N_POSITIVES]) == (
        8, 1, 2.5, 1, 3)
    assert user[A.SESSIONS] == ["s1", "s2"]
    assert sum(user[A.HOUR_COUNTS]) == 8 and user[A.HOUR_COUNTS][9] == 4 and user[A.HOUR_COUNTS][8] == 1
    assert user[A.WEEKDAY_COUNTS] == [0, 0, 0, 8, 0, 0, 0]  # 2026-10-01 is a Thursday
    apps = {row[C.APP_ID]: row.asDict(recursive=True) for row in daily.user_app.collect()}
    a1, a2 = apps["a1"], apps["a2"]
    assert (a1[A.VIEWS], a1[A.OPENS], a1[A.INSTALLS], a1[A.PURCHASES], a1[A.OPEN_SECONDS]) == (1, 1, 1, 1, 120.0)
    assert a1[A.LAST_CHANGE][C.EVENT_TYPE] == "install"
    assert math.isclose(a1[A.POS_WEIGHT], 1.0 + math.log1p(2.0) + 2.0)
    assert (a1[A.POS_TS].hour, a1[A.POS_PRIOR], a1[A.NEG_TS]) == (9, 0, None)  # the impression was followed by a view
    # a2: both impressions ignored; the first one (09:00) comes before any positive of the day,
    assert (a2[A.NEG_TS].hour, a2[A.NEG_PRIOR], a2[A.POS_TS]) == (9, 0, None)
    assert a2[A.NEG_CONTEXT][C.LOCAL_HOUR] == 9
    terms = {row[A.TERM]: row[A.N_TERM] for row in daily.user_terms.collect()}
    assert terms == {"photo": 2, "editor": 1}


def test_retention_drops_old_daily_aggregate_partitions(tmp_config: Config) -> None:
    """Daily aggregates are date-partitioned gold tables: retention removes days past the limit."""
    from personalization.data_rights import apply_retention

    config = tmp_config
    config.privacy.raw_retention_days = 0
    config.privacy.model_retention_days = 0
    config.privacy.aggregate_retention_days = 10
    gold = Path(config.lake_root) / "gold"
    for table in A.TABLES:
        for day in ("2026-09-01", "2026-10-05"):
            folder = gold / table / f"{C.EVENT_DATE}={day}"
            folder.mkdir(parents=True)
            (folder / "part-0.parquet").write_bytes(b"PAR1")
    result = apply_retention(config, "2026-10-10", requested_by="test")
    removed = sorted(entry["partition"] for entry in result["aggregates"])
    assert removed == [f"gold/{table}/{C.EVENT_DATE}=2026-09-01" for table in sorted(A.TABLES)]
    for table in A.TABLES:
        assert [p.name for p in (gold / table).iterdir()] == [f"{C.EVENT_DATE}=2026-10-05"]


def test_a_stored_day_is_used_only_when_no_landing_in_between_touched_it() -> None:
    knowledge = object.__new__(A._Knowledge)  # the state as read from the lake, without Spark
    knowledge.landings = ["2026-09-30", "2026-10-01", "2026-10-02", "2026-10-03"]
    knowledge.recorded = {
        "2026-09-30": ["2026-09-30", "2026-10-01"],
        "2026-10-01": ["2026-10-01", "2026-10-02"],
        "2026-10-02": ["2026-10-02", "2026-10-03"],
        "2026-10-03": ["2026-10-01", "2026-10-03", "2026-10-04"],  # a late event of 10-01
    }
    knowledge.folded = {"2026-10-01": "2026-10-02", "2026-10-02": "2026-10-02"}
    knowledge.seen = {"2026-10-01": {"2026-10-01", "2026-10-02"}, "2026-10-02": {"2026-10-01", "2026-10-02"}}
    assert knowledge.usable("2026-10-02", "2026-10-02")
    assert knowledge.usable("2026-10-02", "2026-10-03")  # landing 10-03 did not touch 10-02
    assert not knowledge.usable("2026-10-01", "2026-10-03")  # its late event did touch 10-01
    assert not knowledge.usable("2026-10-02", "2026-10-01")  # folded knowing more: landing 10-02 touched it
    assert not knowledge.usable("2026-10-03", "2026-10-03")  # never folded
    # Landing 09-30 was validated after the fold (out of order) and touches 10-01, not 10-02.
    assert not knowledge.usable("2026-10-01", "2026-10-02")
    knowledge.seen["2026-10-01"].add("2026-09-30")
    assert knowledge.usable("2026-10-01", "2026-10-02")
