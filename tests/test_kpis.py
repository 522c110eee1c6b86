"""Daily KPIs on a crafted two-day event set (plus one older day for churn), hand-computed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from personalization.alerts import Alert, record_alert
from personalization.config import Config, load_config
from personalization.kpis import (
    KPI_COLUMNS,
    compute_kpis,
    kpi_table,
    read_kpis,
    upsert_statement,
    write_kpis,
)

D = "2026-10-10"
D_1 = "2026-10-09"
D_10 = "2026-09-30"

EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_type", pa.string()),
        ("user_id", pa.string()),
        ("app_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("session_id", pa.string()),
        ("surface", pa.string()),
        ("position", pa.int64()),
        ("variant", pa.string()),
        ("amount", pa.float64()),
        ("duration_s", pa.float64()),
    ]
)


def make_config(root: Path) -> Config:
    return load_config(
        overrides={
            "paths": {"root": str(root), "var_dir": str(root / "var"), "lake_root": str(root / "lake")},
            "serving": {"url": f"sqlite:///{root / 'var' / 'serving.db'}"},
            "mlflow": {
                "tracking_uri": f"sqlite:///{root / 'var' / 'mlflow.db'}",
                "artifact_root": str(root / "var" / "mlartifacts"),
            },
        },
        environ={},
    )


def ev(
    event_type: str,
    user: str,
    app: str | None = None,
    session: str | None = None,
    surface: str | None = None,
    variant: str | None = None,
    amount: float | None = None,
    duration: float | None = None,
) -> dict[str, Any]:
    return {
        "event_type": event_type,
        "user_id": user,
        "app_id": app,
        "session_id": session,
        "surface": surface,
        "variant": variant,
        "amount": amount,
        "duration_s": duration,
    }


def write_events(config: Config, date: str, rows: list[dict[str, Any]]) -> None:
    """Write rows as ``silver/events/event_date=<date>/part-0.parquet`` with the silver column types."""
    folder = Path(config.lake_root) / "silver" / "events" / f"event_date={date}"
    folder.mkdir(parents=True, exist_ok=True)
    full = [
        {**{name: None for name in EVENT_SCHEMA.names}, "event_id": f"e{i}", **row}
        for i, row in enumerate(rows)
    ]
    pq.write_table(pa.Table.from_pylist(full, schema=EVENT_SCHEMA), folder / "part-0.parquet")


def write_gold(config: Config, table: str, date: str, columns: dict[str, list[Any]]) -> None:
    folder = Path(config.lake_root) / "gold" / table / f"date={date}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), folder / "part-0.parquet")


RECORDS = {
    "validate_raw_events": {"total": 1000, "quarantined": 12},
    "train_models": {
        "best_model": "ease",
        "metrics": {"ease": {"ndcg@10": 0.31}, "popularity": {"ndcg@10": 0.2}},
    },
    # Not promoted: the champion stays the previous one, whose NDCG@10 is 0.35.
    "evaluate_and_promote": {
        "promoted": False,
        "champion_metrics": {"ndcg@10": 0.35},
        "challenger_metrics": {"ndcg@10": 0.31},
    },
    "score_users": {
        "seconds": 12.0,
        "users_scored": 3000,
        "diversity": {"ild_before": 0.3, "ild_after": 0.42},
    },
}


@pytest.fixture
def world(tmp_path: Path) -> Config:
    config = make_config(tmp_path)
    write_events(config, D_10, [ev("app_open", "u7", "a1", "s0", duration=10.0), ev("search", "u1")])
    write_events(
        config,
        D_1,
        [
            ev("app_open", "u1", "a1", "s1", duration=60.0),
            ev("impression", "u2", "a1", surface="for_you"),
            ev("search", "u3"),
            ev("notification_sent", "u9", "a1", surface="notification"),  # system event: u9 is not active
        ],
    )
    write_events(
        config,
        D,
        [
            ev("impression", "u1", "a1", surface="for_you"),
            ev("impression", "u1", "a2", surface="for_you"),
            ev("app_view", "u1", "a1", surface="for_you"),
            ev("install", "u1", "a1", surface="for_you"),
            ev("app_open", "u1", "a1", "s10", duration=100.0),
            ev("app_open", "u1", "a2", "s10", duration=50.0),
            ev("purchase", "u1", "a1", "s10", amount=4.99),
            ev("impression", "u2", "a3", surface="because_you_liked"),
            ev("app_open", "u2", "a3", "s11", duration=30.0),
            # search is not a recommendation surface: counts for activity, not for CTR
            ev("impression", "u4", "a4", surface="search"),
            ev("app_view", "u4", "a4", surface="search"),
            ev("install", "u4", "a4", surface="search"),
            ev("purchase", "u4", "a4", amount=1.0),
            ev("notification_sent", "u5", "a1", surface="notification"),
            ev("consent_change", "u5"),
        ],
    )
    write_gold(
        config,
        "recommendations",
        D,
        {
            "user_id": ["u1", "u1", "u2"],
            "surface": ["for_you"] * 3,
            "app_id": ["a1", "a2", "a9"],
            "score": [0.9, 0.8, 0.7],
        },
    )
    write_gold(
        config, "user_insights", D, {"user_id": ["u1", "u2", "u4"], "lifetime_value": [10.0, 20.0, None]}
    )
    runs = Path(config.var_dir) / "runs" / D
    runs.mkdir(parents=True)
    for stage, record in RECORDS.items():
        (runs / f"{stage}.json").write_text(json.dumps(record))
    return config


def test_kpis_on_a_crafted_two_day_event_set(world: Config) -> None:
    # One failed attempt of the nightly DAG on D counts; other DAGs and dates do not.
    record_alert(world, Alert("personalization_nightly", "train_models", "r1", "failure", "boom", date=D))
    record_alert(world, Alert("personalization_experiment_report", "monitor", "r2", "failure", "x", date=D))
    record_alert(world, Alert("personalization_nightly", "train_models", "r0", "failure", "old", date=D_1))
    kpis = compute_kpis(world, D)
    assert kpis["date"] == D
    # Active on D: u1, u2, u4 (u5 only received a notification and changed consent).
    # Usage sessions: s10 = 100 + 50 s over 2 apps, s11 = 30 s over 1 app. Yesterday's active: u1, u2, u3.
    assert kpis["engagement"] == pytest.approx(
        {
            "daily_active_users": 3,
            "mean_session_duration_s": 90.0,
            "apps_per_session": 1.5,
            "return_rate": 2 / 3,
        }
    )
    # Recommendation-surface impressions: 2 (u1 for_you) + 1 (u2 because_you_liked); 1 view and 1 install there.
    # Novelty: a1 and a2 used by 1 of 3 users -> -log2(2/4) = 1 bit each; a9 by none -> -log2(1/4) = 2.
    assert kpis["quality"] == pytest.approx(
        {"ctr": 1 / 3, "install_rate": 1 / 3, "diversity": 0.42, "novelty": 4 / 3}
    )
    # Revenue 4.99 + 1.00 over 3 active users; 2 purchasers. Active in D-13..D: u1, u2, u3, u4, u7; u7 not in
    # D-6..D -> churn 1/5. LTV mean of 10 and 20 (null ignored).
    assert kpis["business"] == pytest.approx(
        {"revenue_per_active_user": 5.99 / 3, "conversion_rate": 2 / 3, "churn_rate": 0.2, "ltv_mean": 15.0}
    )
    # 4 completed stage records + 1 failed attempt -> 1/5; 12 of 1000 lines quarantined; 12 s for 3000 users.
    assert kpis["technical"] == pytest.approx(
        {"ndcg_at_10": 0.35, "scoring_seconds_per_1k_users": 4.0, "error_rate": 0.2, "quarantine_rate": 0.012}
    )


def test_kpis_of_a_day_without_data_are_none_not_errors(tmp_path: Path) -> None:
    kpis = compute_kpis(make_config(tmp_path), D, records={})
    assert kpis["engagement"] == {
        "daily_active_users": 0,
        "mean_session_duration_s": None,
        "apps_per_session": None,
        "return_rate": None,
    }
    assert kpis["quality"] == {"ctr": None, "install_rate": None, "diversity": None, "novelty": None}
    assert kpis["business"] == {
        "revenue_per_active_user": None,
        "conversion_rate": None,
        "churn_rate": None,
        "ltv_mean": None,
    }
    assert kpis["technical"] == {
        "ndcg_at_10": None,
        "scoring_seconds_per_1k_users": None,
        "error_rate": None,
        "quarantine_rate": None,
    }


def test_write_kpis_upserts_one_row_per_date(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    first = {"date": D, "engagement": {"daily_active_users": 3}, "quality": {"ctr": 0.5}}
    write_kpis(config, D, first)
    write_kpis(config, D_1, {"date": D_1, "engagement": {"daily_active_users": 7}})
    # A rerun of D replaces its row (ctr 0.5 -> 0.25, the missing KPI becomes null).
    write_kpis(config, D, {"date": D, "engagement": {"daily_active_users": 4}, "quality": {"ctr": 0.25}})
    table = read_kpis(config)
    assert table["date"].tolist() == [D_1, D]
    assert table["daily_active_users"].tolist() == [7.0, 4.0]
    assert table.loc[table["date"] == D, "ctr"].item() == 0.25
    assert table.loc[table["date"] == D_1, "ctr"].isna().item()
    assert read_kpis(config, start=D)["date"].tolist() == [D]
    assert len(table.columns) == 2 + len(KPI_COLUMNS)  # date, 16 KPIs, computed_at


def test_upsert_compiles_for_postgresql() -> None:
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql

    sql = str(
        upsert_statement(kpi_table(sa.MetaData()), "postgresql", ["date"]).compile(
            dialect=postgresql.dialect()
        )
    )
    assert "ON CONFLICT (date) DO UPDATE SET" in sql
    assert "ctr = excluded.ctr" in sql
    assert "%(date)s" in sql  # parameterised, never formatted
