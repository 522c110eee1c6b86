"""Shared pytest fixtures: one local Spark session, an isolated Config, the shared tiny world.

The Spark session is session-scoped because starting a JVM costs seconds; tests
must not stop it. ``local[1]`` and one shuffle partition keep tiny-data jobs fast
and make row order inside a partition deterministic.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from personalization.config import Config, load_config

# Spark's Python workers must use this interpreter (the project venv), not whatever
# `python3` is on PATH.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator["pyspark.sql.SparkSession"]:  # noqa: F821
    """A local[1] SparkSession for the whole test session (UTC, 1 shuffle partition)."""
    from pyspark.sql import SparkSession

    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    session = (
        SparkSession.builder.master("local[1]")
        .appName("personalization-tests")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.default.parallelism", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "2g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.warehouse.dir", str(warehouse))
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def tmp_config(tmp_path: Path) -> Config:
    """A Config rooted at a fresh tmp dir: lake at <tmp>/lake, var at <tmp>/var.

    MLflow uses a SQLite file under the tmp dir, Spark runs local[1] with one
    shuffle partition, so nothing escapes the test's directory.
    """
    root = tmp_path
    return load_config(
        overrides={
            "paths": {
                "root": str(root),
                "var_dir": str(root / "var"),
                "lake_root": str(root / "lake"),
                "airflow_home": str(root / "var" / "airflow"),
                "results_dir": str(root / "results"),
            },
            "spark": {"master": "local[1]", "shuffle_partitions": 1, "driver_memory": "2g"},
            "mlflow": {
                "tracking_uri": f"sqlite:///{root / 'var' / 'mlflow.db'}",
                "artifact_root": str(root / "var" / "mlartifacts"),
            },
            "serving": {"url": f"sqlite:///{root / 'var' / 'serving.db'}"},
        },
        environ={},
    )


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> "World":  # noqa: F821
    """One fresh ``tiny`` world run by ``pe run`` (a separate process), shared by the session's tests.

    Read-only: a test that changes the world works on ``tests.worlds.copy_world(tiny_world, tmp_path)``.
    The first test that asks for it pays the run (minutes): give it a ``timeout`` mark that covers that.
    """
    from tests.worlds import build_world

    return build_world(tmp_path_factory.mktemp("tiny-world"))
