"""
### Personalization KPIs, A/B experiment report and monitoring

Runs after every publish of the serving recommendations (scheduled on the asset
`personalization://serving/recommendations`), for the published date `D`:

1. **compute_kpis**: the daily PersonalizationKPIs (engagement, recommendation quality,
   business, technical) from `silver/events` and the nightly run records, upserted into the
   serving DB table `kpis`.
2. **experiment_report**: per experiment and variant over the last 14 days: CTR, install rate,
   conversion, revenue and engagement per user, lifts with confidence intervals and p-values,
   the sample-ratio-mismatch check and sample-size notes. Rows go to `experiment_results`, one
   MLflow run per date to the `<experiment>-ab` MLflow experiment, and a self-contained page to
   `reports/experiments/date=D/report.html` in the lake.
3. **monitor**: feature drift (PSI of `gold/user_features`, D against D-1), score drift (PSI of
   recommendation scores) and event-volume anomalies (z-score against the trailing 7 days). Findings
   become a `drift` alert in the `alerts` table; in `fail` mode a breach fails the task (no retry).

`D` is the `date` param of a manual run, else the date carried by the triggering asset event
(its `extra["date"]`, else the publishing run's `date` param or logical date). Task failures are
recorded in `alerts` and sent to the configured notifier. Tasks pass only dates, paths and run ids.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from personalization.alerts import on_failure_callback
from personalization.assets import SERVING_RECOMMENDATIONS

DEFAULT_ARGS = {
    "owner": "personalization",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=5),
    "on_failure_callback": on_failure_callback,
}
#: A run still unfinished this long after it was queued raises an ``sla`` alert.


def _date_of_event(event: object) -> str | None:
    """The pipeline date an asset event is about: ``extra["date"]``, else its source run's date."""
    extra = getattr(event, "extra", None) or {}
    if extra.get("date"):
        return str(extra["date"])
    source = getattr(event, "source_dag_run", None)
    if source is None:
        return None
    conf = getattr(source, "conf", None) or {}
    if conf.get("date"):
        return str(conf["date"])
    logical = getattr(source, "logical_date", None)
    return logical.date().isoformat() if logical is not None else None


def _config_and_date(context: dict) -> tuple:
    """The configuration and the run's date: the ``date`` param, the triggering publish, or the logical date."""
    from personalization.config import load_config
    from personalization.lake import check_date

    date = (context.get("params") or {}).get("date") or ""
    if not date:
        events = context.get("triggering_asset_events") or {}
        dates = sorted(filter(None, (_date_of_event(e) for batch in events.values() for e in batch)))
        date = dates[-1] if dates else ""
    if not date:
        logical = context.get("logical_date") or context.get("data_interval_start")
        if logical is None:
            raise ValueError(
                "no run date: trigger with the 'date' param (YYYY-MM-DD) or from a serving publish"
            )
        date = logical.date().isoformat()
    return load_config(), check_date(date)


@dag(
    dag_id="personalization_experiment_report",
    description="Daily KPIs, A/B experiment report and drift/volume monitoring after each serving publish",
    schedule=[SERVING_RECOMMENDATIONS],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["personalization", "experiments", "kpis", "monitoring"],
    doc_md=__doc__,
    params={
        "date": Param(
            "", type="string", description="Report date YYYY-MM-DD; empty uses the triggering publish"
        ),
    },
)
def personalization_experiment_report():
    @task
    def compute_kpis(**context) -> dict:
        from personalization import kpis

        config, date = _config_and_date(context)
        kpis.write_kpis(config, date, kpis.compute_kpis(config, date))
        return {"date": date, "table": kpis.KPI_TABLE}

    @task
    def experiment_report(kpi_result: dict, **context) -> dict:
        from personalization.experiment_report import RESULTS_TABLE, build_report

        config, _ = _config_and_date(context)
        report = build_report(config, kpi_result["date"])
        return {
            "date": report["date"],
            "report_path": report["report_path"],
            "mlflow_run_id": report["mlflow_run_id"],
            "table": RESULTS_TABLE,
        }

    @task
    def monitor(report_result: dict, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from personalization.monitoring import MonitoringBreach, check

        config, _ = _config_and_date(context)
        ti = context["ti"]
        where = {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id}
        try:
            result = check(config, report_result["date"], alert_context=where)
        except MonitoringBreach as breach:
            # Retrying cannot change the data: fail once, the alert is already recorded.
            raise AirflowFailException(str(breach)) from breach
        return {"date": result["date"], "status": result["status"], "report_path": result["report_path"]}

    monitor(experiment_report(compute_kpis()))


personalization_experiment_report()
