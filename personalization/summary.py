"""The end-of-run summary: where each output is and how to look at it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from personalization.config import Config
from personalization.pipeline import SERVING_TABLES, read_record
from personalization.serving.db import make_engine

_SUMMARY_TABLES = (*SERVING_TABLES, "publish_log")


def serving_counts(config: Config) -> dict[str, int | None]:
    """Row count of each stable serving name (None when the table does not exist)."""
    import sqlalchemy as sa

    engine = make_engine(config.serving_url)
    counts: dict[str, int | None] = {}
    try:
        with engine.connect() as connection:
            for table in _SUMMARY_TABLES:  # fixed allow-list: safe to format into SQL
                try:
                    counts[table] = int(connection.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())
                except sa.exc.DBAPIError:
                    connection.rollback()
                    counts[table] = None
    finally:
        engine.dispose()
    return counts


def sample_user(config: Config) -> str | None:
    import sqlalchemy as sa

    engine = make_engine(config.serving_url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                sa.text("SELECT MIN(user_id) FROM recommendations WHERE surface = 'for_you'")
            ).scalar_one_or_none()
    except sa.exc.DBAPIError:
        return None
    finally:
        engine.dispose()


def user_rows(config: Config, user_id: str) -> Iterator[str]:
    """Human-readable lines of a user's insights and recommendations (parameterised SQL)."""
    import sqlalchemy as sa

    from personalization.security import validate_user_id

    user_id = validate_user_id(user_id)
    engine = make_engine(config.serving_url)
    try:
        with engine.connect() as connection:
            insight = connection.execute(
                sa.text("SELECT * FROM user_insights WHERE user_id = :user_id"), {"user_id": user_id}
            ).mappings().first()
            yield f"user {user_id}"
            if insight is None:
                yield "  no insights (unknown, inactive or deleted user)"
            else:
                for key, value in insight.items():
                    if key != "user_id":
                        yield f"  {key}: {value}"
            rows = connection.execute(
                sa.text(
                    "SELECT surface, rank, app_id, score, reason FROM recommendations "
                    "WHERE user_id = :user_id "
                    "ORDER BY CASE surface WHEN 'for_you' THEN 0 ELSE 1 END, surface, rank"
                ),
                {"user_id": user_id},
            ).all()
            surface = None
            for row in rows:
                if row.surface != surface:
                    surface = row.surface
                    yield f"  [{surface}]"
                yield f"    {row.rank:>2}. {row.app_id}  {row.score:.4f}  {row.reason}"
    finally:
        engine.dispose()


def _headline_metrics(train: dict[str, Any] | None) -> list[str]:
    if not train:
        return ["  (no training record)"]
    lines = [f"  parent run: {train.get('parent_run_id')}  best model: {train.get('best_model')}"]
    for model, metrics in sorted((train.get("metrics") or {}).items()):
        shown = {key: metrics[key] for key in metrics if key.split("/")[-1] in
                 ("ndcg@10", "precision@10", "recall@10", "coverage", "ndcg_at_10")}
        formatted = ", ".join(f"{key}={value:.4f}" for key, value in sorted(shown.items())
                              if isinstance(value, (int, float)))
        lines.append(f"  {model:<12} {formatted}")
    return lines


def build_summary(config: Config, date: str) -> str:
    """The text printed at the end of ``make run``."""
    validate = read_record(config, date, "validate_raw_events") or {}
    train = read_record(config, date, "train_models")
    promote = read_record(config, date, "evaluate_and_promote") or {}
    score = read_record(config, date, "score_users") or {}
    publish = read_record(config, date, "publish_serving") or {}
    experiments = read_record(config, date, "experiment_report") or {}
    counts = serving_counts(config)
    lines = [
        "",
        "=" * 78,
        f"Nightly personalization run for {date}",
        "=" * 78,
        f"Serving database: {config.serving_url}",
    ]
    for table, count in counts.items():
        lines.append(f"  {table:<24} {'missing' if count is None else f'{count:,} rows'}")
    lines.append(f"  published version: {publish.get('version')}  model version: {publish.get('model_version')}")
    report = validate.get("report") or validate
    lines.append("")
    lines.append(
        f"Validation: {report.get('total', '?')} raw records, {report.get('clean', '?')} clean, "
        f"{report.get('quarantined', '?')} quarantined (bad rate {report.get('bad_rate', '?')})"
    )
    for reason, count in sorted((report.get("by_reason") or {}).items(), key=lambda item: -item[1]):
        lines.append(f"  {reason:<24} {count}")
    lines.append("")
    lines.append(f"MLflow ({config.mlflow_tracking_uri}), experiment '{config.mlflow.experiment}':")
    lines.extend(_headline_metrics(train))
    if promote:
        lines.append(f"  promotion: {'promoted' if promote.get('promoted') else 'kept champion'}; "
                     f"reasons: {'; '.join(map(str, promote.get('reasons', [])))}")
    if score:
        lines.append(f"Scoring: {json.dumps({k: v for k, v in score.items() if k in ('users_scored', 'model_version', 'ild_before', 'ild_after')}, default=str)}")
    user = sample_user(config)
    if user:
        lines.append("")
        lines.extend(list(user_rows(config, user))[:40])
    db_path = config.serving_url.removeprefix("sqlite:///")
    lines += [
        "",
        "How to look at it:",
        f"  SQL:      sqlite3 {db_path} \"SELECT * FROM recommendations WHERE user_id='{user or 'u0000001'}' ORDER BY surface, rank\""
        if config.serving_url.startswith("sqlite") else f"  SQL:      psql '{config.serving_url}'",
        f"  MLflow:   .venv/bin/mlflow ui --backend-store-uri {config.mlflow_tracking_uri} --port 5000",
        "  Airflow:  make airflow-standalone  (= eval \"$(.venv/bin/pe airflow-env)\" && .venv/bin/pe airflow-setup"
        " && airflow standalone; README \"Airflow\"), then http://localhost:8080",
        f"  Lake:     {config.lake_root}  (quarantine: silver/quarantine, reports: reports/)",
        f"  Data Docs: {Path(config.lake_root) / 'reports' / 'data_docs'}",
        *([f"  KPIs and A/B report: {experiments['report_path']}  (open in a browser; "
           f"{len(experiments.get('experiments') or {})} experiment(s), KPI trends)"] if experiments else []),
        f"  Run records: {Path(config.var_dir) / 'runs' / date}",
        "=" * 78,
    ]
    return "\n".join(lines)


def print_summary(config: Config, date: str) -> None:
    print(build_summary(config, date))
