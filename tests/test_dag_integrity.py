"""DAG integrity: every DAG imports cleanly, cheaply, and declares what operators need."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
HEAVY_MODULES = ("pandas", "torch", "pyspark", "mlflow", "great_expectations", "lightning", "pytorch_lightning", "sklearn")

_PROBE = r"""
import json, sys, os
from airflow.dag_processing.dagbag import DagBag


def _first_runs(dag):
    # The first two scheduled runs from 2026-10-14 on: (logical date, earliest start), ISO strings.
    import pendulum
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    # The scheduler's view: the serialized DAG's core timetable (the DAG file's is the SDK's).
    timetable = decode_timetable(encode_timetable(dag.timetable))
    if not hasattr(timetable, "next_dagrun_info") or not timetable.can_be_scheduled:
        return []
    runs, last = [], None
    restriction = TimeRestriction(earliest=pendulum.datetime(2026, 10, 14, tz="UTC"), latest=None, catchup=True)
    for _ in range(2):
        info = timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        if info is None:
            break
        runs.append([info.logical_date.isoformat(), info.run_after.isoformat()])
        last = info.data_interval
    return runs


bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
heavy = [name for name in sys.argv[1].split(",") if name in sys.modules]
dags = {}
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {
        "tags": sorted(dag.tags),
        "catchup": dag.catchup,
        "doc_md": bool(dag.doc_md and dag.doc_md.strip()),
        "retries": {task.task_id: task.retries for task in dag.tasks},
        "task_ids": [task.task_id for task in dag.tasks],
        "edges": sorted([up.task_id, task.task_id] for task in dag.tasks for up in task.upstream_list),
        "outlets": {task.task_id: [getattr(o, "uri", str(o)) for o in task.outlets] for task in dag.tasks},
        "types": {task.task_id: type(task).__name__ for task in dag.tasks},
        "pools": {task.task_id: task.pool for task in dag.tasks},
        "submit": {task.task_id: {name: getattr(task, name, None) for name in (
            "application", "py_files", "application_args", "conn_id", "_conn_id", "conf")}
            for task in dag.tasks if type(task).__name__ == "SparkSubmitOperator"},
        "params": {name: dag.params.get_param(name).schema for name in dag.params.keys()},
        "deadlines": [str(getattr(d, "interval", d)) for d in (dag.deadline or [])],
        "first_runs": _first_runs(dag),
    }
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "heavy": heavy, "dags": dags}))
"""


def _load_dagbag(home: Path, **extra_env: str) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PE_SPARK__")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        **extra_env,
    )
    # A fresh interpreter, so "no heavy import" is measured on the DAG files alone.
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(HEAVY_MODULES)], env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory) -> dict:
    return _load_dagbag(tmp_path_factory.mktemp("airflow_home"))


@pytest.fixture(scope="module")
def submit_dagbag(tmp_path_factory) -> dict:
    """The DAGs parsed with a Spark connection configured (the cluster shape)."""
    return _load_dagbag(tmp_path_factory.mktemp("airflow_home_submit"), PE_SPARK__SUBMIT_CONN_ID="spark_cluster",
                        PE_SPARK__POOL="spark_jobs", PE_MONITORING__DEADLINE_MINUTES="240")


def test_dags_import_without_errors(dagbag: dict) -> None:
    assert dagbag["errors"] == {}
    assert "personalization_nightly" in dagbag["dags"]


def test_dag_files_do_not_import_heavy_modules(dagbag: dict) -> None:
    assert dagbag["heavy"] == []


def test_every_dag_has_tags_docs_retries_and_no_catchup(dagbag: dict) -> None:
    for dag_id, dag in dagbag["dags"].items():
        assert dag["tags"], dag_id
        assert dag["doc_md"], dag_id
        assert dag["catchup"] is False, dag_id
        # Parameter checks fail fast (a bad value does not improve on retry); everything else retries.
        retried = {task: n for task, n in dag["retries"].items() if task != "check_params"}
        assert all(retries >= 2 for retries in retried.values()), (dag_id, dag["retries"])
        assert dag["retries"].get("check_params", 0) == 0


def test_nightly_dag_runs_the_stages_in_order(dagbag: dict) -> None:
    from personalization.pipeline import STAGES

    nightly = dagbag["dags"]["personalization_nightly"]
    order = ["check_params", *STAGES]
    assert sorted(nightly["task_ids"]) == sorted(order)
    assert nightly["edges"] == _chain(order)


def _chain(order: list[str]) -> list[list[str]]:
    """The sorted edges of tasks that run one after the other in ``order``."""
    return sorted([list(pair) for pair in itertools.pairwise(order)])


SPARK_STAGES = [
    "validate_raw_events", "recompute_late_partitions", "build_profiles", "build_segments", "build_features"
]


def test_without_a_spark_connection_spark_runs_in_process_in_the_spark_pool(dagbag: dict) -> None:
    nightly = dagbag["dags"]["personalization_nightly"]
    assert {stage: nightly["types"][stage] for stage in SPARK_STAGES} == dict.fromkeys(SPARK_STAGES, "_PythonDecoratedOperator")
    assert {stage: nightly["pools"][stage] for stage in SPARK_STAGES} == dict.fromkeys(SPARK_STAGES, "spark")
    assert nightly["pools"]["train_models"] == "default_pool"
    assert nightly["submit"] == {}
    assert nightly["deadlines"] == []  # off by default (dag.test() cannot load deadline alerts)


def test_with_a_spark_connection_the_spark_tasks_are_spark_submit(submit_dagbag: dict) -> None:
    from personalization.pipeline import STAGES

    assert submit_dagbag["errors"] == {}
    assert submit_dagbag["heavy"] == []
    nightly = submit_dagbag["dags"]["personalization_nightly"]
    order = ["check_params", *STAGES]
    assert sorted(nightly["task_ids"]) == sorted(order)
    assert nightly["edges"] == _chain(order)
    assert {stage: nightly["types"][stage] for stage in SPARK_STAGES} == dict.fromkeys(SPARK_STAGES, "SparkSubmitOperator")
    assert nightly["types"]["train_models"] == "_PythonDecoratedOperator"
    assert nightly["deadlines"] == ["4:00:00"]  # monitoring.deadline_minutes=240: the SLA alert
    assert {stage: nightly["pools"][stage] for stage in SPARK_STAGES} == dict.fromkeys(SPARK_STAGES, "spark_jobs")
    for stage in SPARK_STAGES:
        submit = nightly["submit"][stage]
        assert submit["application"] == str(ROOT / "jobs" / f"{stage}.py")
        assert submit["py_files"].endswith("/dist/personalization-jobs.zip")
        assert submit["application_args"] == ["--date", "{{ ti.xcom_pull(task_ids='check_params')['date'] }}"]
        assert "spark_cluster" in (submit["conn_id"], submit["_conn_id"])
        assert submit["conf"]["spark.sql.session.timeZone"] == "UTC"
        assert "spark.master" not in submit["conf"]  # the connection names the master
    assert "personalization://silver/events" in nightly["outlets"]["validate_raw_events"]


def test_nightly_params_have_json_schemas(dagbag: dict) -> None:
    params = dagbag["dags"]["personalization_nightly"]["params"]
    assert sorted(params) == ["date", "dry_run", "models", "scale", "skip_training"]
    assert params["date"]["pattern"] == r"^(\d{4}-\d{2}-\d{2})?$"
    assert params["scale"]["enum"] == ["", "tiny", "small", "medium", "large"]
    assert params["models"]["items"]["enum"] == [
        "popularity", "regional_popularity", "ease", "cf_bpr", "two_tower", "content", "blend"
    ]
    assert params["skip_training"]["type"] == params["dry_run"]["type"] == "boolean"


def test_nightly_dag_publishes_serving_assets(dagbag: dict) -> None:
    outlets = dagbag["dags"]["personalization_nightly"]["outlets"]
    assert "personalization://serving/recommendations" in outlets["publish_serving"]
    assert "personalization://silver/events" in outlets["validate_raw_events"]


def test_nightly_scheduled_run_processes_the_day_that_has_ended(dagbag: dict) -> None:
    """The run for D starts at 00:00 UTC on D+1 with logical date D (a trigger timetable would run D at 00:00 of D)."""
    assert dagbag["dags"]["personalization_nightly"]["first_runs"] == [
        ["2026-10-14T00:00:00+00:00", "2026-10-15T00:00:00+00:00"],
        ["2026-10-15T00:00:00+00:00", "2026-10-16T00:00:00+00:00"],
    ]
