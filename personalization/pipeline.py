"""The nightly pipeline's stages as plain functions: what each Airflow task calls.

Each stage takes the configuration and the run's date (``YYYY-MM-DD``), does its
work on that date's partitions (overwrite, so reruns are idempotent), writes a
small JSON record of what it did under ``var/runs/<date>/<stage>.json`` and
returns it. Only such small dicts (paths, table names, run ids, counts) travel
between tasks, never data.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from personalization.config import Config
from personalization.lake import Lake, check_date

log = logging.getLogger("personalization.pipeline")

STAGES = (
    "validate_raw_events",
    "build_daily_aggregates",
    "recompute_late_partitions",
    "build_profiles",
    "build_segments",
    "build_features",
    "train_models",
    "evaluate_and_promote",
    "score_users",
    "publish_serving",
    "validate_serving",
)

#: Serving tables published each night, from the gold table of the same name.
SERVING_TABLES = (
    "recommendations",
    "user_insights",
    "similar_apps",
    "recommended_categories",
    "search_personalization",
    "suggested_queries",
)

#: Stages whose work is Spark's: with ``spark.s3a_enabled`` they read and write ``s3a://`` directly.
SPARK_STAGES = ("validate_raw_events", "build_daily_aggregates", "recompute_late_partitions", "build_profiles",
                "build_segments", "build_features")
_TRAINING_INPUTS = tuple(f"gold/{table}/date={{date}}"
                         for table in ("interactions", "app_features", "user_features", "segments"))
_PSEUDONYMS = "silver/user_pseudonyms/date={date}"
#: The daily aggregates (jobs/build_daily_aggregates.py), their state and what validation reported.
_DAILY = ("gold/daily_user", "gold/daily_user_app", "gold/daily_user_terms", "gold/daily_aggregates_state",
          "reports/validation")
#: Lake prefixes each stage reads (``{date}`` is the run's date). When the lake is in object
#: storage and the stage cannot read it directly, they are copied to a local work directory
#: first (personalization.staging). A stage not listed gets the silver and gold zones.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "validate_raw_events": ("raw/events/date={date}", "raw/users", "raw/apps", "silver/events",
                            "reports/gx", "reports/data_docs"),
    "build_daily_aggregates": ("silver/events", "silver/users/date={date}", *_DAILY),
    "recompute_late_partitions": ("reports/validation/date={date}", "silver/events", "silver/users", "silver/apps",
                                  "gold/profiles", "gold/segments", *_DAILY),
    "build_profiles": ("silver/events", "silver/users/date={date}", "silver/apps/date={date}", *_DAILY),
    "build_segments": ("gold/profiles/date={date}", "gold/segment_centroids"),
    "build_features": ("silver/events", "silver/users/date={date}", "silver/apps/date={date}",
                       "gold/profiles/date={date}", "gold/segments/date={date}", *_DAILY),
    "train_models": _TRAINING_INPUTS,
    "evaluate_and_promote": _TRAINING_INPUTS,
    "score_users": ("silver/events", "silver/users/date={date}", "silver/apps/date={date}",
                    "silver/deleted_users", _PSEUDONYMS, "raw/editorial", "gold/app_features/date={date}",
                    "gold/profiles/date={date}", "gold/segments/date={date}", "gold/interactions/date={date}",
                    "gold/popularity"),
    "publish_serving": (_PSEUDONYMS, *(f"gold/{table}/date={{date}}" for table in SERVING_TABLES)),
    "validate_serving": (_PSEUDONYMS,),
}


def run_record_dir(config: Config, date: str) -> Path:
    """Where each stage's JSON record for ``date`` is kept (local, under ``var/``)."""
    return Path(config.var_dir) / "runs" / check_date(date)


def read_record(config: Config, date: str, stage: str) -> dict[str, Any] | None:
    path = run_record_dir(config, date) / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _record(config: Config, date: str, stage: str, result: dict[str, Any], seconds: float) -> dict[str, Any]:
    result = dict(result)
    result.setdefault("stage", stage)
    result.setdefault("date", date)
    result["seconds"] = round(seconds, 3)
    folder = run_record_dir(config, date)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{stage}.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
    os.replace(tmp, folder / f"{stage}.json")
    return result


def _needs_local_lake(config: Config, stage: str) -> bool:
    """An ``s3://`` lake that this stage's engine cannot read in place (see personalization.staging)."""
    from personalization.storage import is_s3

    if not is_s3(config.lake_root):
        return False
    return not (stage in SPARK_STAGES and config.spark.s3a_enabled)


def _timed(stage: str, config: Config, date: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    date = check_date(date)
    log.info("stage %s: starting for %s", stage, date)
    started = time.perf_counter()
    if _needs_local_lake(config, stage):
        from personalization.staging import local_lake, relocate

        lake_root = config.lake_root
        prefixes = [p.format(date=date) for p in STAGE_INPUTS.get(stage, ("silver", "gold"))]
        with local_lake(config, prefixes) as local_root:
            result = relocate(work(), local_root, lake_root)
    else:
        result = work()
    seconds = time.perf_counter() - started
    log.info("stage %s: done for %s in %.1f s", stage, date, seconds)
    return _record(config, date, stage, result, seconds)


# ------------------------------------------------------------------ Spark stages
def validate_raw_events(config: Config, date: str) -> dict[str, Any]:
    """Ingest and validate the landing partition of ``date``; quarantine bad records."""
    from jobs import validate_raw_events as job

    return _timed("validate_raw_events", config, date, lambda: job.main(config, date))


def landing_dates(config: Config) -> list[str]:
    """Every landing date with a ``raw/events/date=D`` partition, oldest first."""
    from personalization.storage import list_files

    prefix = Lake(config).raw_events()
    found = {segment.removeprefix("date=") for uri in list_files(prefix)
             for segment in uri[len(prefix):].split("/") if segment.startswith("date=")}
    return sorted(found)


def pending_landing_dates(config: Config, date: str) -> list[str]:
    """Landing dates before ``date`` never validated (no validation report), oldest first."""
    from personalization.storage import exists

    lake = Lake(config)
    date = check_date(date)
    return [day for day in landing_dates(config)
            if day < date and not exists(f"{lake.report('validation', day)}/report.json")]


def ingest_pending_landing_dates(config: Config, date: str, progress: bool = False) -> list[str]:
    """Validate every earlier landing date not yet ingested, oldest first; return them.

    A fresh lake lands days of raw data at once while a nightly run validates only its
    own date, so without this its profile window and training split would hold that
    one day. Validated dates are skipped: cheap once the lake is current. ``progress``
    shows a progress bar (the CLI; Airflow task logs get one log line per date).
    """
    from tqdm import tqdm

    pending = pending_landing_dates(config, date)
    for day in tqdm(pending, desc="ingesting earlier landing dates", unit="day", disable=not (progress and pending)):
        log.info("ingesting earlier landing date %s before %s", day, date)
        validate_raw_events(config, day)
    return pending


def build_daily_aggregates(config: Config, date: str) -> dict[str, Any]:
    """Fold the event dates that tonight's landing touched into the per-day aggregates."""
    from jobs import build_daily_aggregates as job

    return _timed("build_daily_aggregates", config, date, lambda: job.main(config, date))


def recompute_late_partitions(config: Config, date: str) -> dict[str, Any]:
    """Restate earlier profiles and features that tonight's late-arriving events made stale."""
    from jobs import recompute_late_partitions as job

    return _timed("recompute_late_partitions", config, date, lambda: job.main(config, date))


def build_profiles(config: Config, date: str) -> dict[str, Any]:
    from jobs import build_profiles as job

    return _timed("build_profiles", config, date, lambda: job.main(config, date))


def build_segments(config: Config, date: str) -> dict[str, Any]:
    from jobs import build_segments as job

    return _timed("build_segments", config, date, lambda: job.main(config, date))


def build_features(config: Config, date: str) -> dict[str, Any]:
    from jobs import build_features as job

    return _timed("build_features", config, date, lambda: job.main(config, date))


# ------------------------------------------------------------------ model stages
def train_models(config: Config, date: str) -> dict[str, Any]:
    """Train every configured model and log them to MLflow (one parent run)."""
    from models.train import train

    return _timed("train_models", config, date, lambda: train(config, date))


def evaluate_and_promote(config: Config, date: str, train_result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Register the best challenger; move the champion alias only if it passes the gate."""
    from models.registry import evaluate_and_promote as promote

    train_result = train_result or read_record(config, date, "train_models")
    if not train_result:
        raise RuntimeError(f"no train_models record for {date}: run train_models first")
    return _timed("evaluate_and_promote", config, date, lambda: promote(config, train_result))


def score_users(config: Config, date: str) -> dict[str, Any]:
    """Score every active user with the champion, or with the variants of the configured experiments
    (``monitoring.experiments_file``); write the serving tables to gold."""
    from models.variants import score_with_experiments

    return _timed("score_users", config, date, lambda: score_with_experiments(config, date))


# ---------------------------------------------------------------- serving stages
def publish_expectations(config: Config, score_result: dict[str, Any]) -> dict[str, Any]:
    """The publish checks' expectations with the deleted users read from the tombstone now.

    The score_users record holds no personal ids (run records are searched by
    ``pe verify-deleted``), so the ids the checks need come from ``silver/deleted_users``.
    """
    from models.scoring import load_deleted_users

    expected = dict(score_result.get("expected", {}))
    expected["deleted_users"] = sorted(load_deleted_users(config, expected.get("deleted_users")))
    return expected


def publish_serving(config: Config, date: str, score_result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Atomically publish the scored tables to the serving database."""
    from personalization.privacy import load_user_map
    from personalization.serving.publish import publish

    score_result = score_result or read_record(config, date, "score_users")
    if not score_result:
        raise RuntimeError(f"no score_users record for {date}: run score_users first")
    expected = publish_expectations(config, score_result)  # before staging: the tombstone is not staged

    def work() -> dict[str, Any]:
        lake = Lake(config)  # inside: a staged run points config at the local copy
        return publish(
            config,
            date,
            tables={name: lake.partition(lake.gold(name), date) for name in SERVING_TABLES},
            model_version=str(score_result.get("model_version", "unknown")),
            expected=expected,
            user_map=load_user_map(config, date),  # the lake's pseudonyms -> the app's user ids
        )

    return _timed("publish_serving", config, date, work)


def validate_serving(config: Config, date: str, publish_result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check the live serving tables after the switch."""
    from personalization.privacy import load_user_map
    from personalization.serving.publish import validate_serving as check

    expected = publish_expectations(config, read_record(config, date, "score_users") or {})
    return _timed(
        "validate_serving", config, date,
        lambda: check(config, date, expected=expected, user_map=load_user_map(config, date)),
    )


def experiment_report(config: Config, date: str) -> dict[str, Any]:
    """The day's KPIs row, then the experiment report (table, MLflow run, HTML page).

    What the ``personalization_experiment_report`` DAG does after a publish; ``pe run``
    calls it directly so the run summary can link the page.
    """
    from personalization import kpis
    from personalization.experiment_report import build_report

    def work() -> dict[str, Any]:
        kpis.write_kpis(config, date, kpis.compute_kpis(config, date))
        report = build_report(config, date)
        return {key: report[key] for key in ("report_path", "mlflow_run_id", "rows", "experiments")}

    return _timed("experiment_report", config, date, work)


def run_all(config: Config, date: str, stages: tuple[str, ...] = STAGES) -> dict[str, dict[str, Any]]:
    """Run the stages in order in this process (the DAG's work without Airflow)."""
    results: dict[str, dict[str, Any]] = {}
    for stage in stages:
        results[stage] = globals()[stage](config, date)
    return results
