"""SparkSession construction from the engine's Config.

Every Spark job gets its session here so master, memory, shuffle partitions and
time zone come from configuration (``config.spark``) and never from code.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from personalization.config import Config

if TYPE_CHECKING:  # pyspark is heavy; DAG files import this module only for names
    from pyspark.sql import SparkSession


def spark_settings(config: Config) -> dict[str, str]:
    """The ``spark.*`` settings derived from ``config.spark`` (extra settings win)."""
    settings = {
        "spark.driver.memory": config.spark.driver_memory,
        "spark.sql.shuffle.partitions": str(config.spark.shuffle_partitions),
        # All lake dates are UTC; the session zone decides how timestamps render and
        # how to_date() cuts days, so it must not depend on the machine's zone.
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "true",
        # Only the partitions a job names are replaced when it overwrites a table.
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.parquet.compression.codec": "snappy",
        "spark.ui.showConsoleProgress": "false",
    }
    settings.update({str(key): str(value) for key, value in config.spark.extra.items()})
    return settings


def get_spark(config: Config, app_name: str | None = None) -> "SparkSession":
    """Return the active SparkSession, or build one from ``config.spark``.

    An already running session (the test fixture, or ``spark-submit``) is reused
    as is: static settings such as driver memory cannot change after start.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        # Runtime setting: whoever started the session, lake dates are cut in UTC.
        active.conf.set("spark.sql.session.timeZone", "UTC")
        return active
    # Python workers must run the driver's interpreter (the project venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(config.spark.master).appName(app_name or config.spark.app_name)
    for key, value in spark_settings(config).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
