"""DAG integrity: every DAG imports cleanly, cheaply, and declares what operators need."""

from __future__ import annotations

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
    }
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "heavy": heavy, "dags": dags}))
"""


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow_home")
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
    )
    # A fresh interpreter, so "no heavy import" is measured on the DAG files alone.
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(HEAVY_MODULES)], env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


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
        assert all(retries >= 2 for retries in dag["retries"].values()), (dag_id, dag["retries"])


def test_nightly_dag_runs_the_stages_in_order(dagbag: dict) -> None:
    from personalization.pipeline import STAGES

    nightly = dagbag["dags"]["personalization_nightly"]
    assert nightly["task_ids"] == list(STAGES)
    expected_edges = sorted([list(pair) for pair in zip(STAGES, STAGES[1:])])
    assert nightly["edges"] == expected_edges


def test_nightly_dag_publishes_serving_assets(dagbag: dict) -> None:
    outlets = dagbag["dags"]["personalization_nightly"]["outlets"]
    assert "personalization://serving/recommendations" in outlets["publish_serving"]
    assert "personalization://silver/events" in outlets["validate_raw_events"]
