"""
### Nightly personalization

For the run's date `D` (the logical date, or the `date` param of a manual run):

1. **validate_raw_events**: read the landing partition `raw/events/date=D`, validate it with
   Great Expectations, write clean events to `silver/events` and bad records to
   `silver/quarantine` with a reason code; fail when the bad-record rate passes the threshold.
2. **build_profiles**, **build_segments**, **build_features**: Spark jobs writing `gold/*/date=D`.
3. **train_models**: every configured model, one MLflow parent run with a nested run per model.
4. **evaluate_and_promote**: the champion/challenger gate on validation NDCG@10 and guardrails.
5. **score_users**: every active user, scored by the champion (loaded by alias), with business
   rules, consent, diversity, explanations, surfaces and insights.
6. **publish_serving** then **validate_serving**: an atomic version switch in the serving DB.

Every task overwrites the partition of `D`, so clearing and rerunning a date is safe.
Tasks pass paths and run ids only. Configuration comes from `PE_CONFIG` / `PE_*` variables.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

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

DEFAULT_ARGS = {
    "owner": "personalization",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=5),
    "retry_exponential_backoff": True,
    # Every failed attempt leaves an alert record (serving DB `alerts`) and goes to the notifier.
    "on_failure_callback": on_failure_callback,
}


def _config_and_date(context: dict) -> tuple:
    """The configuration and the run's date (a ``date`` param wins over the logical date)."""
    from personalization.config import load_config
    from personalization.lake import check_date

    params = context.get("params") or {}
    date = params.get("date") or ""
    if not date:
        logical = context.get("logical_date") or context.get("data_interval_start")
        if logical is None:
            raise ValueError("no run date: trigger with a logical date or the 'date' param (YYYY-MM-DD)")
        date = logical.date().isoformat()
    return load_config(), check_date(date)


@dag(
    dag_id="personalization_nightly",
    description="Validate events, build profiles and features, train, score and publish recommendations",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    # No `deadline=personalization.alerts.deadline_alert(...)` here: Airflow 3.3's dag.test()
    # fails to load deadline alerts on its SQLite metadata DB ('dict' object has no attribute 'hex').
    default_args=DEFAULT_ARGS,
    tags=["personalization", "nightly", "spark", "mlflow"],
    doc_md=__doc__,
    params={
        "date": Param("", type="string", description="Run date YYYY-MM-DD; empty uses the logical date"),
    },
)
def personalization_nightly():
    @task(outlets=[SILVER_EVENTS, SILVER_QUARANTINE])
    def validate_raw_events(**context) -> dict:
        from personalization import pipeline

        return pipeline.validate_raw_events(*_config_and_date(context))

    @task(outlets=[GOLD_PROFILES])
    def build_profiles(_upstream: dict, **context) -> dict:
        from personalization import pipeline

        return pipeline.build_profiles(*_config_and_date(context))

    @task(outlets=[GOLD_SEGMENTS])
    def build_segments(_upstream: dict, **context) -> dict:
        from personalization import pipeline

        return pipeline.build_segments(*_config_and_date(context))

    @task(outlets=[GOLD_USER_FEATURES, GOLD_APP_FEATURES, GOLD_INTERACTIONS, GOLD_POPULARITY])
    def build_features(_upstream: dict, **context) -> dict:
        from personalization import pipeline

        return pipeline.build_features(*_config_and_date(context))

    @task
    def train_models(_upstream: dict, **context) -> dict:
        from personalization import pipeline

        return pipeline.train_models(*_config_and_date(context))

    @task(outlets=[MODEL_CHAMPION])
    def evaluate_and_promote(train_result: dict, **context) -> dict:
        from personalization import pipeline

        config, date = _config_and_date(context)
        return pipeline.evaluate_and_promote(config, date, train_result)

    @task
    def score_users(_upstream: dict, **context) -> dict:
        from personalization import pipeline

        return pipeline.score_users(*_config_and_date(context))

    @task(outlets=SERVING_ASSETS)
    def publish_serving(score_result: dict, **context) -> dict:
        from personalization import pipeline

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

    validated = validate_raw_events()
    profiles = build_profiles(validated)
    segments = build_segments(profiles)
    features = build_features(segments)
    trained = train_models(features)
    promoted = evaluate_and_promote(trained)
    scored = score_users(promoted)
    published = publish_serving(scored)
    validate_serving(published)


personalization_nightly()
