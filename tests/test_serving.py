"""Serving database: migrations, atomic versioned publish, checks, rollback, role, queries, Redis.

Most tests run on SQLite and on PostgreSQL (parametrised ``serving_url``). The
PostgreSQL and Redis tests skip when the local servers are unreachable, unless
``CI`` is set, where they fail instead. Each PostgreSQL test gets its own
database (``pe_serving_test_<random>``, dropped afterwards); Redis tests use DB
13 and a unique key prefix, deleted afterwards.
"""

from __future__ import annotations

import datetime
import json
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from personalization.config import Config, load_config
from personalization.serving import migrations as migrations_module
from personalization.serving.checks import ServingValidationError
from personalization.serving.db import iso, make_engine
from personalization.serving.loader import LoadStats, ServingLoadError, convert_batch
from personalization.serving.migrations import migrate
from personalization.serving.publish import list_versions, publish, record_audit, rollback, validate_serving
from personalization.serving.queries import run_query
from personalization.serving.roles import ensure_reader_role
from personalization.serving.schema import RECOMMENDATIONS, USER_INSIGHTS, physical_name
from tests.services import REDIS_URL, require_postgres, temporary_postgres_database, unreachable

DATE = "2026-10-05"


# ------------------------------------------------------------------ servers
@pytest.fixture(scope="module")
def postgres_server() -> str:
    """The admin URL of a reachable PostgreSQL server (skip/fail otherwise)."""
    return require_postgres()


@pytest.fixture
def postgres_url(postgres_server: str) -> Any:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with temporary_postgres_database("pe_serving_test", postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def serving_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'serving.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def redis_client() -> Any:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as error:
        unreachable(f"Redis at {REDIS_URL}", error)
    yield client
    client.close()


def make_config(tmp_path: Path, url: str, **serving: Any) -> Config:
    return load_config(
        overrides={
            "paths": {"root": str(tmp_path), "var_dir": str(tmp_path / "var"), "lake_root": str(tmp_path / "lake")},
            # No reader role unless a test asks: roles are cluster-wide, and these tests drop only their own.
            "serving": {"url": url, "keep_versions": 2, "reader_role": "", **serving},
            "scoring": {"top_n": 3},
        },
        environ={},
    )


# -------------------------------------------------------------------- data
REC = [  # user_id, surface, rank, app_id, score, reason, reason_app_id
    ("u1", "for_you", 1, "a1", 0.9, "Because you use Alpha", "a9"),
    ("u1", "for_you", 2, "a2", 0.8, "Popular in EU", None),
    ("u1", "for_you", 3, "a3", 0.8, "New in games", None),
    ("u1", "because_you_liked", 1, "a4", 0.7, "Because you use Alpha", "a9"),
    ("u1", "because_you_liked", 2, "a5", 0.5, "Because you use Alpha", "a9"),
    ("u2", "for_you", 1, "a2", 0.75, "Popular on the store", None),
    ("u2", "for_you", 2, "a4", 0.5, "Popular on the store", None),
    ("u2", "for_you", 3, "a5", 0.25, "Popular on the store", None),
]
INSIGHTS = [  # user_id, segment, engagement, churn, ltv, interests, action, hour, channel, cap
    ("u1", "gamers", 72.5, 0.125, 19.99, '{"games": 0.75, "tools": 0.25}', "suggest_category:games", 20, "push", 3),
    ("u2", "casual", 10.0, 0.875, 0.0, '{"tools": 1.0}', "re_engage_notification", 8, "email", 1),
]
SIMILAR = [("a1", 1, "a2", 0.9), ("a1", 2, "a3", 0.5), ("a2", 1, "a1", 0.9)]
CATEGORIES = [("u1", 1, "games", 0.75), ("u1", 2, "tools", 0.25)]
BOOSTS = [("u1", "games", 1.5), ("u2", "tools", 1.25)]
QUERIES = [("u1", 1, "puzzle games"), ("u1", 2, "chess")]
COLUMNS = {
    "recommendations": ["user_id", "surface", "rank", "app_id", "score", "reason", "reason_app_id"],
    "user_insights": ["user_id", "segment", "engagement_score", "churn_risk", "lifetime_value", "primary_interests",
                      "next_best_action", "best_notification_hour", "notification_channel",
                      "notification_cap_per_week"],
    "similar_apps": ["app_id", "rank", "similar_app_id", "score"],
    "recommended_categories": ["user_id", "rank", "category", "score"],
    "search_personalization": ["user_id", "category", "boost"],
    "suggested_queries": ["user_id", "rank", "query"],
}
ROW_COUNTS = {"recommendations": 8, "user_insights": 2, "similar_apps": 3, "recommended_categories": 2,
              "search_personalization": 2, "suggested_queries": 2}


def write_world(root: Path, tag: str, **rows: list[tuple]) -> dict[str, str]:
    """Write the six datasets like Spark does (part files + _SUCCESS); ``rows`` replaces tables."""
    data = {"recommendations": REC, "user_insights": INSIGHTS, "similar_apps": SIMILAR,
            "recommended_categories": CATEGORIES, "search_personalization": BOOSTS, "suggested_queries": QUERIES}
    data.update(rows)
    tables = {}
    for name, table_rows in data.items():
        folder = root / "gold" / tag / name
        folder.mkdir(parents=True)
        frame = pd.DataFrame(table_rows, columns=COLUMNS[name])
        half = len(frame) // 2
        for part, piece in enumerate((frame.iloc[:half], frame.iloc[half:])):
            table = pa.Table.from_pandas(piece, preserve_index=False)
            # an all-None column would be typed "null" in one part file and string in the other
            table = table.cast(pa.schema([pa.field(f.name, pa.string() if pa.types.is_null(f.type) else f.type)
                                          for f in table.schema]))
            pq.write_table(table, folder / f"part-0000{part}.parquet")
        (folder / "_SUCCESS").write_text("")
        tables[name] = str(folder)
    return tables


def expected_rec(model_version: str, rows: list[tuple] = REC) -> list[tuple]:
    return sorted(row + (model_version, "default", DATE) for row in rows)


def live_rec(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as connection:
        return sorted(tuple(row) for row in connection.execute(sa.text(
            "SELECT user_id, surface, rank, app_id, score, reason, reason_app_id, model_version, variant,"
            " CAST(generated_for AS TEXT) FROM recommendations")))


def publish_rows(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text(
            "SELECT version, action, status FROM publish_log ORDER BY id"))]


def version_tables(engine: sa.Engine) -> list[str]:
    return sorted(name for name in sa.inspect(engine).get_table_names() if "__v" in name)


@pytest.fixture
def engines() -> Any:
    created: list[sa.Engine] = []

    def factory(url: str) -> sa.Engine:
        created.append(make_engine(url))
        return created[-1]

    yield factory
    for engine in created:
        engine.dispose()


# -------------------------------------------------------------- migrations
def test_migrate_is_idempotent(serving_url: str, engines: Any) -> None:
    engine = engines(serving_url)
    assert migrate(engine) == ["001_init"]
    assert migrate(serving_url) == []
    inspector = sa.inspect(engine)
    assert {"schema_migrations", "serving_versions", "serving_state", "publish_log", "audit_log",
            "serving_reader_roles"} <= set(inspector.get_table_names())
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT version, name FROM schema_migrations")).all() == [(1, "001_init")]
        assert connection.execute(sa.text("SELECT id, current_version FROM serving_state")).all() == [(1, None)]


def test_record_audit(serving_url: str, tmp_path: Path, engines: Any) -> None:
    config = make_config(tmp_path, serving_url)
    assert record_audit(config, "privacy-job", "delete_user", "user:u1", {"rows": {"recommendations": 5}}) == 1
    assert record_audit(engines(serving_url), "ops", "note", None, {}) == 2
    with engines(serving_url).connect() as connection:
        rows = connection.execute(sa.text("SELECT id, who, action, subject, details FROM audit_log ORDER BY id")).all()
    assert [(r[0], r[1], r[2], r[3], r[4] if isinstance(r[4], dict) else json.loads(r[4])) for r in rows] == [
        (1, "privacy-job", "delete_user", "user:u1", {"rows": {"recommendations": 5}}), (2, "ops", "note", None, {})]


def test_edited_applied_migration_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sql_copy = tmp_path / "sql"
    shutil.copytree(migrations_module.SQL_DIR, sql_copy)
    monkeypatch.setattr(migrations_module, "SQL_DIR", sql_copy)
    url = f"sqlite:///{tmp_path / 'serving.db'}"
    assert migrate(url) == ["001_init"]
    (sql_copy / "sqlite" / "002_add_note.sql").write_text("ALTER TABLE audit_log ADD COLUMN note TEXT;\n")
    assert migrate(url) == ["002_add_note"]
    (sql_copy / "sqlite" / "001_init.sql").write_text("-- edited\n")
    with pytest.raises(migrations_module.MigrationError, match="001_init was applied with checksum"):
        migrate(url)


# ----------------------------------------------------------------- publish
def test_publish_serves_the_contract(serving_url: str, tmp_path: Path, engines: Any) -> None:
    config = make_config(tmp_path, serving_url)
    result = publish(config, DATE, write_world(tmp_path, "w1"), "m1", {"variant": "default", "experiment": None})
    assert {k: v for k, v in result.items() if k != "published_at"} == {
        "version": 1, "previous_version": None, "generated_for": DATE, "model_version": "m1",
        "row_counts": ROW_COUNTS, "pruned": [], "redis": None,
    }
    engine = engines(serving_url)
    inspector = sa.inspect(engine)
    assert sorted(inspector.get_view_names()) == sorted(ROW_COUNTS)
    assert version_tables(engine) == sorted(physical_name(name, 1) for name in ROW_COUNTS)
    assert live_rec(engine) == expected_rec("m1")
    with engine.connect() as connection:
        published = connection.execute(sa.text("SELECT DISTINCT published_at FROM recommendations")).scalars().all()
        assert [iso(value) if not isinstance(value, str) else value for value in published] == [result["published_at"]]
        insights = connection.execute(sa.text(
            "SELECT user_id, segment, engagement_score, churn_risk, lifetime_value, primary_interests,"
            " next_best_action, best_notification_hour, notification_channel, notification_cap_per_week,"
            " model_version, CAST(generated_for AS TEXT) FROM user_insights ORDER BY user_id")).all()
        assert [tuple(row) for row in insights] == [row + ("m1", DATE) for row in INSIGHTS]
        log_row = connection.execute(sa.text(
            "SELECT version, action, CAST(generated_for AS TEXT), model_version, row_counts, status FROM publish_log"
        )).one()
    row_counts = log_row[4] if isinstance(log_row[4], dict) else json.loads(log_row[4])
    assert (log_row[:4], row_counts, log_row[5]) == ((1, "publish", DATE, "m1"), ROW_COUNTS, "succeeded")


def test_apps_queries(serving_url: str, tmp_path: Path, engines: Any) -> None:
    publish(make_config(tmp_path, serving_url), DATE, write_world(tmp_path, "w1"), "m1")
    engine = engines(serving_url)
    home = run_query(engine, "home_page", user_id="u1")
    assert [(r["surface"], r["rank"], r["app_id"], r["reason_app_id"]) for r in home] == [
        ("for_you", 1, "a1", "a9"), ("for_you", 2, "a2", None), ("for_you", 3, "a3", None),
        ("because_you_liked", 1, "a4", "a9"), ("because_you_liked", 2, "a5", "a9"),
    ]
    assert home[0] == {"surface": "for_you", "rank": 1, "app_id": "a1", "score": 0.9,
                       "reason": "Because you use Alpha", "reason_app_id": "a9", "model_version": "m1",
                       "variant": "default", "generated_for": DATE}
    assert run_query(engine, "home_page", user_id="u3") == []
    assert run_query(engine, "surface", user_id="u2", surface="for_you", limit=2) == [
        {"rank": 1, "app_id": "a2", "score": 0.75, "reason": "Popular on the store", "reason_app_id": None,
         "variant": "default"},
        {"rank": 2, "app_id": "a4", "score": 0.5, "reason": "Popular on the store", "reason_app_id": None,
         "variant": "default"},
    ]
    assert run_query(engine, "similar_apps", app_id="a1", limit=5) == [
        {"rank": 1, "similar_app_id": "a2", "score": 0.9}, {"rank": 2, "similar_app_id": "a3", "score": 0.5}]
    assert run_query(engine, "user_insights", user_id="u2") == [{
        "user_id": "u2", "segment": "casual", "engagement_score": 10.0, "churn_risk": 0.875, "lifetime_value": 0.0,
        "primary_interests": '{"tools": 1.0}', "next_best_action": "re_engage_notification",
        "best_notification_hour": 8, "notification_channel": "email", "notification_cap_per_week": 1,
        "model_version": "m1", "generated_for": DATE}]
    assert run_query(engine, "recommended_categories", user_id="u1") == [
        {"rank": 1, "category": "games", "score": 0.75}, {"rank": 2, "category": "tools", "score": 0.25}]
    assert [tuple(r.values()) for r in run_query(engine, "search_personalization", user_id="u1")] == [
        ("boost", "games", 1.5, None), ("query", "puzzle games", None, 1), ("query", "chess", None, 2)]
    # a hostile value is only ever a bound parameter
    assert run_query(engine, "home_page", user_id="u1' OR '1'='1") == []
    with pytest.raises(ValueError, match="unknown query"):
        run_query(engine, "../secrets")


def test_republishing_a_date_creates_an_identical_new_version(serving_url: str, tmp_path: Path, engines: Any) -> None:
    config = make_config(tmp_path, serving_url)
    tables = write_world(tmp_path, "w1")
    first = publish(config, DATE, tables, "m1")
    second = publish(config, DATE, tables, "m1")
    assert (first["version"], second["version"], second["previous_version"]) == (1, 2, 1)
    assert first["row_counts"] == second["row_counts"] == ROW_COUNTS
    assert live_rec(engines(serving_url)) == expected_rec("m1")
    assert [(v["version"], v["live"], v["row_counts"]) for v in list_versions(config)] == [
        (2, True, ROW_COUNTS), (1, False, ROW_COUNTS)]


# --------------------------------------------------------------- failures
BAD_REC = [
    ("u1", "for_you", 1, "a1", 0.9, "r", None),
    ("u1", "for_you", 2, "a2", 0.8, "r", None),
    ("u1", "for_you", 4, "a3", 0.85, "r", None),  # rank gap, and the score goes up
    ("u1", "because_you_liked", 1, "a6", 0.7, "r", "a9"),  # a6 is denylisted
    ("u2", "for_you", 1, "a2", 0.75, "r", None),
    ("u2", "for_you", 2, "a4", 0.5, "r", None),  # an active user with 2 of 3 rows
    ("u2", "because_you_liked", 1, "a9", 0.5, "r", None),  # a9 is excluded for u2 (installed)
    ("u3", "for_you", 1, "a1", 0.5, "r", None),  # u3 was deleted
    ("u3", "for_you", 2, "a2", 0.4, "r", None),
    ("u3", "for_you", 3, "a3", 0.3, "r", None),
]
BAD_INSIGHTS = [INSIGHTS[0][:3] + (1.5,) + INSIGHTS[0][4:], INSIGHTS[1]]  # churn_risk 1.5
EXPECTED = {"active_users": ["u1", "u2"], "deleted_users": ["u3"], "denylist": ["a6"], "exclusions": [["u2", "a9"]]}


def test_failed_checks_keep_the_previous_version_live(serving_url: str, tmp_path: Path, engines: Any) -> None:
    config = make_config(tmp_path, serving_url)
    publish(config, DATE, write_world(tmp_path, "good"), "m1", expected=EXPECTED)
    bad = write_world(tmp_path, "bad", recommendations=BAD_REC, user_insights=BAD_INSIGHTS)
    with pytest.raises(ServingValidationError) as raised:
        publish(config, DATE, bad, "m2", expected=EXPECTED)
    reasons = raised.value.reasons
    assert sorted(reason.split(":")[0] for reason in reasons) == sorted([
        "recommendations_ranks_not_contiguous", "recommendations_score_increases_with_rank",
        "active_user_without_top_n_for_you", "denylisted_app", "excluded_app", "deleted_user",
        "user_insights_null_or_out_of_range",
    ])
    assert 'active_user_without_top_n_for_you: 1 violation(s), e.g. [["u2", 2]]' in reasons
    assert 'deleted_user: 3 violation(s), e.g. [["recommendations", "u3"], ["recommendations", "u3"], ' \
           '["recommendations", "u3"]]' in reasons
    assert 'recommendations_ranks_not_contiguous: 1 violation(s), e.g. [["u1", "for_you", 1, 4, 3]]' in reasons
    engine = engines(serving_url)
    assert live_rec(engine) == expected_rec("m1")  # the old version still serves
    assert version_tables(engine) == sorted(physical_name(name, 1) for name in ROW_COUNTS)
    assert publish_rows(engine) == [(1, "publish", "succeeded"), (2, "publish", "failed")]
    with engine.connect() as connection:
        details = connection.execute(sa.text("SELECT details FROM publish_log WHERE status = 'failed'")).scalar_one()
        status = connection.execute(sa.text("SELECT status FROM serving_versions WHERE version = 2")).scalar_one()
    details = details if isinstance(details, dict) else json.loads(details)
    assert (details["reasons"], details["previous_version"], status) == (reasons, 1, "failed")
    assert [(v["version"], v["live"]) for v in list_versions(config)] == [(1, True)]


def test_expectation_sets_from_parquet_paths(tmp_path: Path) -> None:
    """The scoring stage passes dataset paths (duplicates possible); counts must not double."""
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'serving.db'}")
    checks_dir = tmp_path / "checks"
    (checks_dir / "active_users").mkdir(parents=True)
    (checks_dir / "exclusions").mkdir()
    pq.write_table(pa.table({"user_id": ["u1", "u2", "u2"]}), checks_dir / "active_users" / "part-0.parquet")
    pq.write_table(pa.table({"user_id": ["u2", "u2"], "app_id": ["a9", "a9"]}),
                   checks_dir / "exclusions" / "part-0.parquet")
    expected = {"active_users": str(checks_dir / "active_users"), "exclusions": str(checks_dir / "exclusions"),
                "min_rows": {"similar_apps": 1}}
    with pytest.raises(ServingValidationError) as raised:
        publish(config, DATE, write_world(tmp_path, "bad", recommendations=BAD_REC), "m1", expected=expected)
    assert [r for r in raised.value.reasons if r.startswith(("active_user", "excluded"))] == [
        'excluded_app: 1 violation(s), e.g. [["u2", "because_you_liked", "a9"]]',
        'active_user_without_top_n_for_you: 1 violation(s), e.g. [["u2", 2]]',
    ]


def test_nan_scores_and_invalid_json_fail_the_checks(serving_url: str, tmp_path: Path, engines: Any) -> None:
    config = make_config(tmp_path, serving_url)
    rec = [REC[0][:4] + (float("nan"),) + REC[0][5:], *REC[1:]]
    insights = [INSIGHTS[0][:5] + ("{not json",) + INSIGHTS[0][6:], INSIGHTS[1]]
    with pytest.raises(ServingValidationError) as raised:
        publish(config, DATE, write_world(tmp_path, "w", recommendations=rec, user_insights=insights), "m1")
    assert raised.value.reasons == [
        'user_insights_invalid_json: 1 value(s), e.g. ["{not json"]',
        'recommendations_null_fields: 1 violation(s), e.g. [["u1", "for_you", 1, "a1"]]',
    ]
    engine = engines(serving_url)
    assert version_tables(engine) == [] and sa.inspect(engine).get_view_names() == []
    assert publish_rows(engine) == [(1, "publish", "failed")]


def test_a_dataset_missing_a_column_is_a_failed_publish(serving_url: str, tmp_path: Path, engines: Any) -> None:
    config = make_config(tmp_path, serving_url)
    publish(config, DATE, write_world(tmp_path, "good"), "m1")
    tables = write_world(tmp_path, "bad")
    folder = Path(tables["recommendations"])
    for part in folder.glob("*.parquet"):
        pd.read_parquet(part).drop(columns=["reason"]).to_parquet(part, index=False)
    with pytest.raises(ServingLoadError, match=r"recommendations lacks column\(s\) \['reason'\]"):
        publish(config, DATE, tables, "m2")
    engine = engines(serving_url)
    assert live_rec(engine) == expected_rec("m1")
    assert publish_rows(engine) == [(1, "publish", "succeeded"), (2, "publish", "failed")]
    assert version_tables(engine) == sorted(physical_name(name, 1) for name in ROW_COUNTS)


def test_lake_denylist_is_the_default(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'serving.db'}")
    editorial = tmp_path / "lake" / "raw" / "editorial"
    editorial.mkdir(parents=True)
    (editorial / "denylist.jsonl").write_text('{"app_id": "a5", "reason": "malware"}\n')
    with pytest.raises(ServingValidationError) as raised:
        publish(config, DATE, write_world(tmp_path, "w"), "m1")
    assert raised.value.reasons == [
        'denylisted_app: 2 violation(s), e.g. [["recommendations", "u1", "a5"], ["recommendations", "u2", "a5"]]']


def test_table_names_come_only_from_the_allow_list(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'serving.db'}")
    with pytest.raises(ValueError, match="unknown serving tables"):
        publish(config, DATE, {"recommendations": "x", "users; DROP TABLE publish_log": "y"}, "m1")
    with pytest.raises(ValueError, match="unknown serving table"):
        physical_name("recommendations; --", 1)
    with pytest.raises(ValueError, match="version must be an int"):
        physical_name("recommendations", "1 OR 1=1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected a date"):
        publish(config, "2026-10-05'; --", {"recommendations": "x"}, "m1")


def test_convert_batch_types() -> None:
    batch = pa.RecordBatch.from_pydict({
        "user_id": pa.array(["u1", "u2"]).dictionary_encode(),
        "surface": ["for_you", "for_you"], "rank": pa.array([1.0, 2.0]), "app_id": ["a1", "a2"],
        "score": pa.array([0.5, float("nan")], pa.float32()), "reason": ["r", "r"],
        "generated_for": pa.array([datetime.date(2026, 10, 5)] * 2, pa.date32()),
    })
    stats = LoadStats()
    fill = {"model_version": "m7", "variant": "B", "generated_for": "unused", "published_at": "2026-10-06T00:00:00Z"}
    out = convert_batch(batch, RECOMMENDATIONS, fill, stats, "test")
    assert out.to_pydict() == {
        "user_id": ["u1", "u2"], "surface": ["for_you", "for_you"], "rank": [1, 2], "app_id": ["a1", "a2"],
        "score": [0.5, None], "reason": ["r", "r"], "reason_app_id": [None, None], "model_version": ["m7", "m7"],
        "variant": ["B", "B"], "generated_for": ["2026-10-05", "2026-10-05"],
        "published_at": ["2026-10-06T00:00:00Z", "2026-10-06T00:00:00Z"],
    }
    insights = pa.RecordBatch.from_pydict({
        "user_id": ["u1"], "segment": ["s"], "engagement_score": [1], "churn_risk": [0.5], "lifetime_value": [2.0],
        "primary_interests": pa.array([[{"category": "games", "weight": 0.5}]]), "next_best_action": ["none"],
        "best_notification_hour": [7], "notification_channel": ["push"], "notification_cap_per_week": [2],
    })
    out = convert_batch(insights, USER_INSIGHTS, fill, stats, "test")
    assert out.column(5).to_pylist() == ['[{"category": "games", "weight": 0.5}]']
    assert out.column(2).to_pylist() == [1.0] and stats.invalid_json == 0
    with pytest.raises(ServingLoadError, match="column rank"):
        convert_batch(batch.set_column(2, "rank", pa.array([1.5, 2.0])), RECOMMENDATIONS, fill, stats, "test")


# ----------------------------------------------------------- rollback, keep-K
def test_rollback_and_keep_k_pruning(serving_url: str, tmp_path: Path, engines: Any) -> None:
    config = make_config(tmp_path, serving_url)  # keep_versions = 2
    results = [publish(config, DATE, write_world(tmp_path, f"w{i}"), f"m{i}") for i in (1, 2, 3)]
    assert [(r["version"], r["pruned"]) for r in results] == [(1, []), (2, []), (3, [1])]
    engine = engines(serving_url)
    assert version_tables(engine) == sorted(physical_name(n, v) for n in ROW_COUNTS for v in (2, 3))
    assert [(v["version"], v["model_version"], v["live"]) for v in list_versions(config)] == [
        (3, "m3", True), (2, "m2", False)]

    back = rollback(config)
    assert {k: back[k] for k in ("version", "previous_version", "model_version", "row_counts")} == {
        "version": 2, "previous_version": 3, "model_version": "m2", "row_counts": ROW_COUNTS}
    assert live_rec(engine) == expected_rec("m2")
    assert publish_rows(engine)[-1] == (2, "rollback", "succeeded")
    with engine.connect() as connection:
        audit = connection.execute(sa.text("SELECT action, subject FROM audit_log")).all()
    assert [tuple(row) for row in audit] == [("serving_rollback", "serving_version:2")]
    assert validate_serving(config, DATE)["version"] == 2
    with pytest.raises(ValueError, match=r"version 1 is not kept \(kept: \[2, 3\]\)"):
        rollback(config, 1)
    with pytest.raises(ValueError, match="no kept version older than the live version 2"):
        rollback(config)

    assert rollback(config, 3)["version"] == 3
    assert live_rec(engine) == expected_rec("m3")
    fourth = publish(config, DATE, write_world(tmp_path, "w4"), "m4")
    assert (fourth["version"], fourth["previous_version"], fourth["pruned"]) == (4, 3, [2])
    assert [(v["version"], v["live"]) for v in list_versions(config)] == [(4, True), (3, False)]
    assert [(v["version"], v["status"]) for v in list_versions(config, include_dropped=True)] == [
        (4, "ready"), (3, "ready"), (2, "dropped"), (1, "dropped")]


# ------------------------------------------------------------- validation
def test_validate_serving(serving_url: str, tmp_path: Path, engines: Any) -> None:
    config = make_config(tmp_path, serving_url)
    with pytest.raises(ServingValidationError, match="nothing published"):
        validate_serving(config, DATE)
    published = publish(config, DATE, write_world(tmp_path, "w1"), "m1", expected=EXPECTED)
    assert validate_serving(config, DATE, EXPECTED) == {
        "version": 1, "generated_for": DATE, "model_version": "m1", "row_counts": ROW_COUNTS,
        "published_at": published["published_at"], "checks": "passed",
    }
    with pytest.raises(ServingValidationError) as raised:
        validate_serving(config, "2026-10-06")
    assert [r.split(":")[0] for r in raised.value.reasons] == ["live_version_wrong_date", "generated_for_mismatch"]
    assert raised.value.reasons[0] == "live_version_wrong_date: version 1 was generated for 2026-10-05, not 2026-10-06"

    engine = engines(serving_url)  # damage the live version behind the publisher's back
    with engine.connect() as connection, connection.begin():
        connection.exec_driver_sql(
            f"DELETE FROM {physical_name('recommendations', 1)} WHERE user_id = 'u2' AND rank = 3")
    with pytest.raises(ServingValidationError) as raised:
        validate_serving(config, DATE, EXPECTED)
    assert [r.split(":")[0] for r in raised.value.reasons] == [
        "active_user_without_top_n_for_you", "row_counts_mismatch"]


# ------------------------------------------------------------ concurrency
def test_concurrent_reader_never_sees_a_mixed_version(serving_url: str, tmp_path: Path, engines: Any) -> None:
    """A reader polling u1's home page while two publishes switch versions sees whole versions only."""
    config = make_config(tmp_path, serving_url, keep_versions=3)
    worlds = [write_world(tmp_path, f"w{i}") for i in (1, 2, 3)]
    publish(config, DATE, worlds[0], "m1")
    reader_engine = engines(serving_url)
    stop = threading.Event()
    seen: list[str] = []
    problems: list[str] = []

    # One snapshot per read (SQLite transactions are snapshots; PostgreSQL needs REPEATABLE READ),
    # so the home page and the insights must come from the same version too.
    snapshot = {"isolation_level": "REPEATABLE READ"} if serving_url.startswith("postgresql") else {}

    def reader() -> None:
        deadline = time.monotonic() + 30  # bounded even if the publishes hang
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with reader_engine.connect().execution_options(**snapshot) as connection, connection.begin():
                    rows = run_query(connection, "home_page", user_id="u1")
                    insights = run_query(connection, "user_insights", user_id="u1")
            except Exception as error:  # noqa: BLE001 - any error is a finding
                problems.append(f"error: {error}")
                continue
            versions = {row["model_version"] for row in rows + insights}
            shape = [(row["surface"], row["rank"], row["app_id"]) for row in rows]
            if len(versions) != 1 or len(insights) != 1 or shape != [(s, r, a) for _, s, r, a, *_ in REC[:5]]:
                problems.append(f"mixed or partial read: {versions} {shape}")
            else:
                seen.append(versions.pop())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        started = time.monotonic()
        for index, tables in enumerate(worlds[1:], start=2):
            publish(config, DATE, tables, f"m{index}")
        # keep reading for at least 1 s, and until the reader has seen the last switch (bounded)
        while time.monotonic() - started < 10 and not problems and (
                time.monotonic() - started < 1.0 or not seen or seen[-1] != "m3"):
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert problems == []
    assert len(seen) > 10 and set(seen) <= {"m1", "m2", "m3"} and seen[-1] == "m3"
    assert seen == sorted(seen)  # versions only move forward


# ------------------------------------------------------------ reader role
def test_reader_role_reads_views_only(postgres_url: str, tmp_path: Path, engines: Any,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg2
    from psycopg2 import errors

    role = f"pe_reader_{uuid.uuid4().hex[:8]}"
    engine = engines(postgres_url)
    monkeypatch.setenv("PE_TEST_READER_PASSWORD", "s3cret-for-tests")
    try:
        assert ensure_reader_role(engine, role=role, password_env="PE_TEST_READER_PASSWORD") == {
            "role": role, "created": True, "password_set": True, "granted_views": [],
            "public_create_revoked": [], "public_create_still_granted": []}
        config = make_config(tmp_path, postgres_url)
        publish(config, DATE, write_world(tmp_path, "w1"), "m1")
        assert ensure_reader_role(engine, role=role, password_env=None) == {
            "role": role, "created": False, "password_set": False, "granted_views": list(ROW_COUNTS),
            "public_create_revoked": [], "public_create_still_granted": []}
        publish(config, DATE, write_world(tmp_path, "w2"), "m2")  # views re-created: grants must survive

        reader = psycopg2.connect(postgres_url.replace("postgres@", f"{role}:s3cret-for-tests@"), connect_timeout=3)
        reader.autocommit = True
        try:
            with reader.cursor() as cursor:
                cursor.execute("SELECT COUNT(*), MIN(model_version) FROM recommendations")
                assert cursor.fetchone() == (8, "m2")
                cursor.execute("SELECT COUNT(*) FROM user_insights")
                assert cursor.fetchone() == (2,)
                forbidden = [
                    "INSERT INTO recommendations (user_id, surface, rank) VALUES ('x', 'for_you', 1)",
                    "UPDATE recommendations SET score = 0",
                    "DELETE FROM recommendations",
                    f"SELECT * FROM {physical_name('recommendations', 2)}",
                    "SELECT * FROM publish_log", "SELECT * FROM audit_log", "SELECT * FROM serving_state",
                    "INSERT INTO audit_log (who, action, at) VALUES ('x', 'y', now())",
                    "CREATE TABLE sneaky (x int)",
                ]
                for statement in forbidden:
                    with pytest.raises(errors.InsufficientPrivilege):
                        cursor.execute(statement)
        finally:
            reader.close()
    finally:
        with engine.connect() as connection, connection.begin():
            connection.exec_driver_sql(f'DROP OWNED BY "{role}"')
            connection.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')


def test_reader_role_is_a_no_op_on_sqlite(tmp_path: Path, engines: Any) -> None:
    result = ensure_reader_role(engines(f"sqlite:///{tmp_path / 'serving.db'}"))
    assert result["role"] is None and "read-only" in result["skipped"]


# ------------------------------------------------------------------ Redis
def test_redis_sink_switches_a_pointer(serving_url: str, tmp_path: Path, redis_client: Any) -> None:
    from personalization.serving import redis_sink

    prefix = f"pe_test_{uuid.uuid4().hex[:10]}"
    config = make_config(tmp_path, serving_url, redis_url=REDIS_URL, redis_ttl_seconds=600)
    try:
        first = publish(config, DATE, write_world(tmp_path, "w1"), "m1", redis_prefix=prefix)
        assert first["redis"] == {"version": 1, "written": True, "users": 2, "apps": 2}
        assert redis_client.get(f"{prefix}:current") == b"1" and redis_client.ttl(f"{prefix}:current") == -1
        assert 0 < redis_client.ttl(f"{prefix}:v1:user:u1") <= 600
        assert redis_sink.read_user(redis_client, "u1", prefix) == {
            "version": 1, "user_id": "u1", "model_version": "m1", "generated_for": DATE,
            "surfaces": {
                "because_you_liked": [
                    {"rank": 1, "app_id": "a4", "score": 0.7, "reason": "Because you use Alpha",
                     "reason_app_id": "a9", "variant": "default"},
                    {"rank": 2, "app_id": "a5", "score": 0.5, "reason": "Because you use Alpha",
                     "reason_app_id": "a9", "variant": "default"}],
                "for_you": [
                    {"rank": 1, "app_id": "a1", "score": 0.9, "reason": "Because you use Alpha",
                     "reason_app_id": "a9", "variant": "default"},
                    {"rank": 2, "app_id": "a2", "score": 0.8, "reason": "Popular in EU", "reason_app_id": None,
                     "variant": "default"},
                    {"rank": 3, "app_id": "a3", "score": 0.8, "reason": "New in games", "reason_app_id": None,
                     "variant": "default"}],
            },
            "insights": {"segment": "gamers", "engagement_score": 72.5, "churn_risk": 0.125, "lifetime_value": 19.99,
                         "primary_interests": {"games": 0.75, "tools": 0.25},
                         "next_best_action": "suggest_category:games", "best_notification_hour": 20,
                         "notification_channel": "push", "notification_cap_per_week": 3, "model_version": "m1",
                         "generated_for": DATE},
            "categories": [{"rank": 1, "category": "games", "score": 0.75},
                           {"rank": 2, "category": "tools", "score": 0.25}],
            "search_boosts": {"games": 1.5},
            "suggested_queries": ["puzzle games", "chess"],
        }
        assert redis_sink.read_similar_apps(redis_client, "a2", prefix) == {
            "version": 1, "app_id": "a2", "similar_apps": [{"rank": 1, "similar_app_id": "a1", "score": 0.9}]}
        assert redis_sink.read_user(redis_client, "nobody", prefix) is None

        publish(config, DATE, write_world(tmp_path, "w2"), "m2", redis_prefix=prefix)
        assert redis_sink.read_user(redis_client, "u2", prefix)["model_version"] == "m2"
        assert redis_client.exists(f"{prefix}:v1:user:u2") == 1  # old versions expire by TTL
        back = rollback(config, redis_prefix=prefix)
        assert back["redis"] == {"version": 1, "written": False, "users": 2, "apps": 2}
        assert redis_sink.read_user(redis_client, "u2", prefix)["model_version"] == "m1"
    finally:
        keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            redis_client.delete(*keys)
