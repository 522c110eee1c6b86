"""
### Nightly personalization

For the run's date `D` (the logical date, or the `date` param of a manual run):

1. **validate_raw_events**: read the landing partition `raw/events/date=D`, validate it with
   Great Expectations, write clean events to `silver/events` and bad records to
   `silver/quarantine` with a reason code; fail when the bad-record rate passes the threshold.
2. **build_daily_aggregates**: fold the event dates the landing touched (its date, its late
   events' dates, the days a late consent change restates) into per-day aggregates
   (`gold/daily_*`), the input of profiles, features and popularity.
3. **recompute_late_partitions**: events that arrived late (event date before `D`) make earlier
   `gold/profiles` and feature partitions stale; the newest `validation.recompute_late_max_days`
   of them are rebuilt with what has landed by `D`, the rest are reported.
4. **build_profiles**, **build_segments**, **build_features**: Spark jobs writing `gold/*/date=D`.
5. **train_models**: every configured model, one MLflow parent run with a nested run per model.
6. **evaluate_and_promote**: the champion/challenger gate on validation NDCG@10 and guardrails
   (a run for a date before the live champion's data is judged against the champion as of that
   date and never moves the live alias, so reruns and backfills are idempotent).
7. **score_users**: every active user, scored by the champion (loaded by alias), with business
   rules, consent, diversity, explanations, surfaces and insights.
8. **publish_serving** then **validate_serving**: an atomic version switch in the serving DB.

Every task overwrites the partition of `D`, so clearing and rerunning a date is safe, and
`airflow backfill create --dag-id personalization_nightly --from-date A --to-date B` rebuilds a range.
Tasks pass paths and run ids only. Configuration comes from `PE_CONFIG` / `PE_*` variables.

**Trigger params** (checked against their JSON schema when the run is created, then by
**check_params**, the first task, which fails the run before any Spark job on a bad value):
`date` (YYYY-MM-DD, default the logical date), `scale` (the synthetic world the lake must hold),
`models` (list of models to train), `skip_training` (score with the current champion),
`dry_run` (everything up to scoring, nothing published). A date whose landing partition
`raw/events/date=D` does not exist fails check_params once (no retry) with the landed dates.

**Fresh lake**: validate_raw_events first validates every earlier landing date that has no
validation report yet (oldest first), as `pe run` does, so the first run has its history.

**Spark**: with `spark.submit_conn_id` set, the five Spark tasks are `SparkSubmitOperator`s that
submit `jobs/<stage>.py --date D` with the packaged code (`make jobs-zip`,
`spark.submit_py_files`) through that connection; otherwise they run Spark in-process.
Either way they run in the pool `spark.pool` (default `spark`), which bounds concurrent Spark jobs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.sdk import CronDataIntervalTimetable, Param, chain, dag, task

from personalization.alerts import on_failure_callback
from personalization.assets import (
    GOLD_APP_FEATURES,
    GOLD_INTERACTIONS,
    GOLD_POPULARITY,
    GOLD_PROFILES,
    GOLD_SEGMENTS,
    GOLD_USER_FEATURES,
    MODEL_CHAMPION,
    SERVING_ASSETS,
    SILVER_EVENTS,
    SILVER_QUARANTINE,
)
from personalization.run_params import PARAM_SCHEMAS

DEFAULT_ARGS = {
    "owner": "personalization",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=5),
    "retry_exponential_backoff": True,
    # Every failed attempt leaves an alert record (serving DB `alerts`) and goes to the notifier.
    "on_failure_callback": on_failure_callback,
}
JOBS_DIR = Path(__file__).resolve().parent.parent / "jobs"
#: The Spark stages, in order, with the assets each one updates.
SPARK_TASKS = (
    ("validate_raw_events", [SILVER_EVENTS, SILVER_QUARANTINE]),
    # Folds the event dates tonight's landing touched into gold/daily_* (profiles and features read them).
    ("build_daily_aggregates", []),
    # Restates earlier profile/feature partitions that tonight's late events touched.
    ("recompute_late_partitions", [GOLD_PROFILES, GOLD_USER_FEATURES]),
    ("build_profiles", [GOLD_PROFILES]),
    ("build_segments", [GOLD_SEGMENTS]),
    ("build_features", [GOLD_USER_FEATURES, GOLD_APP_FEATURES, GOLD_INTERACTIONS, GOLD_POPULARITY]),
)
#: The run date check_params resolved, for operators that take templated arguments.
RUN_DATE = "{{ ti.xcom_pull(task_ids='check_params')['date'] }}"


def _options(context: dict):
    """The validated trigger params; an empty ``date`` falls back to the logical date (scheduled runs, backfills)."""
    from personalization.run_params import validate_run_params

    logical = context.get("logical_date") or context.get("data_interval_start")
    return validate_run_params(context.get("params") or {}, logical.date().isoformat() if logical else None)


def _config_and_date(context: dict) -> tuple:
    """The configuration (with the params' overrides) and the run's date."""
    from personalization.config import load_config

    options = _options(context)
    return options.apply(load_config()), options.date


def _spark_submit_task(stage: str, outlets: list, config):
    """``spark-submit jobs/<stage>.py --date D`` through the configured Spark connection."""
    import os

    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    from jobs.spark import spark_settings

    args = ["--date", RUN_DATE]
    if os.environ.get("PE_CONFIG"):
        args += ["--config", os.environ["PE_CONFIG"]]
    return SparkSubmitOperator(
        task_id=stage,
        conn_id=config.spark.submit_conn_id,
        application=str(JOBS_DIR / f"{stage}.py"),
        py_files=config.resolve(config.spark.submit_py_files),
        application_args=args,
        # The master comes from the connection; the rest of the project's Spark settings travel as --conf.
        conf={key: value for key, value in spark_settings(config).items()
              if key not in ("spark.master", "spark.driver.memory")},
        driver_memory=config.spark.driver_memory,
        name=f"{config.spark.app_name}-{stage}",
        pool=config.spark.pool,
        outlets=outlets,
    )


def _in_process_task(stage: str, outlets: list, pool: str):
    """The stage's Spark job in this worker's process (local Spark from ``spark.master``)."""

    def run_stage(**context) -> dict:
        from personalization import pipeline

        config, date = _config_and_date(context)
        if stage == "validate_raw_events":
            # A fresh lake has days of landed data; without them the window and the training split are empty.
            pipeline.ingest_pending_landing_dates(config, date)
        return getattr(pipeline, stage)(config, date)

    run_stage.__doc__ = f"Run pipeline.{stage} for the run's date."
    return task(task_id=stage, outlets=outlets, pool=pool)(run_stage)()


@dag(
    dag_id="personalization_nightly",
    description="Validate events, build profiles and features, train, score and publish recommendations",
    # The run for date D starts when D has ended (00:00 UTC on D+1) and its logical date is D: a
    # plain "@daily" is a trigger timetable in Airflow 3, whose run at 00:00 would be for the day
    # that is only starting, with nothing landed yet.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    # No automatic catch-up of missed days; a range is rebuilt on purpose with `airflow backfill create`.
    catchup=False,
    max_active_runs=1,
    # No `deadline=personalization.alerts.deadline_alert(...)` here: Airflow 3.3's dag.test()
    # fails to load deadline alerts on its SQLite metadata DB ('dict' object has no attribute 'hex').
    default_args=DEFAULT_ARGS,
    tags=["personalization", "nightly", "spark", "mlflow"],
    doc_md=__doc__,
    params={name: Param(schema["default"], **{k: v for k, v in schema.items() if k != "default"})
            for name, schema in PARAM_SCHEMAS.items()},
)
def personalization_nightly():
    # Parse time: the configuration decides the shape of the Spark tasks (no data is read).
    from personalization.config import load_config

    config = load_config()

    @task(retries=0)  # a bad parameter does not get better with retries
    def check_params(**context) -> dict:
        """Validate the trigger params (and the world's scale); return the resolved options."""
        from personalization.airflow_runner import require_landing_data
        from personalization.run_params import check_world_scale

        options = _options(context)
        if options.scale:
            from personalization.generator import read_world_summary

            summary = read_world_summary(options.apply(load_config()))
            check_world_scale(options, summary.scale if summary else None)
        # A day whose data has not landed (the scheduled run for today on a synthetic world) fails
        # here, once, with the landed dates in the message: retries cannot make the data land.
        require_landing_data(options.apply(load_config()), options.date)
        return options.to_dict()

    spark_tasks = [
        _spark_submit_task(stage, outlets, config) if config.spark.submit_conn_id
        else _in_process_task(stage, outlets, config.spark.pool)
        for stage, outlets in SPARK_TASKS
    ]

    @task
    def train_models(**context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from models.train import NoTrainingPairs
        from personalization import pipeline

        if _options(context).skip_training:
            return {"stage": "train_models", "skipped": True}
        try:
            return pipeline.train_models(*_config_and_date(context))
        except NoTrainingPairs as error:
            raise AirflowFailException(str(error)) from error  # the same data on every retry

    @task(outlets=[MODEL_CHAMPION])
    def evaluate_and_promote(train_result: dict, **context) -> dict:
        from personalization import pipeline

        if train_result.get("skipped"):
            return {"stage": "evaluate_and_promote", "skipped": True}
        config, date = _config_and_date(context)
        return pipeline.evaluate_and_promote(config, date, train_result)

    @task
    def score_users(_promoted: dict, **context) -> dict:
        from personalization import pipeline

        return pipeline.score_users(*_config_and_date(context))

    @task(outlets=SERVING_ASSETS)
    def publish_serving(score_result: dict, **context) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from personalization import pipeline

        if _options(context).dry_run:
            # Skipped, not succeeded: no serving asset event, so no downstream DAG reacts.
            raise AirflowSkipException("dry run: scored tables are in gold/, nothing published")
        config, date = _config_and_date(context)
        result = pipeline.publish_serving(config, date, score_result)
        # Downstream DAGs (experiment report, privacy requests) read the date from the asset event.
        for asset in SERVING_ASSETS:
            context["outlet_events"][asset].extra = {"date": date, "version": result.get("version")}
        return result

    @task
    def validate_serving(publish_result: dict, **context) -> dict:
        from personalization import pipeline

        config, date = _config_and_date(context)
        return pipeline.validate_serving(config, date, publish_result)

    trained = train_models()
    chain(check_params(), *spark_tasks, trained)
    validate_serving(publish_serving(score_users(evaluate_and_promote(trained))))


nightly_dag = personalization_nightly()


def _attach_deadline(dag) -> None:
    """The SLA as an Airflow 3 Deadline Alert when ``monitoring.deadline_minutes`` > 0 (parse time, no I/O)."""
    from personalization.config import load_config

    minutes = load_config().monitoring.deadline_minutes
    if minutes > 0:
        from personalization.alerts import deadline_alert

        dag.deadline = [deadline_alert(minutes)]


_attach_deadline(nightly_dag)
