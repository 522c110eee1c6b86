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
    if config.spark.s3a_enabled:
        settings.update(s3a_settings(os.environ.get("AWS_ENDPOINT_URL", "")))
    settings.update({str(key): str(value) for key, value in config.spark.extra.items()})
    return settings


def s3a_settings(endpoint: str = "") -> dict[str, str]:
    """Hadoop settings that let Spark read and write the lake's ``s3://`` URIs through s3a.

    Needs the hadoop-aws jar matching Spark's Hadoop (see README); credentials come from
    the standard AWS chain, and every write asks for server-side encryption.
    """
    settings = {
        # The lake's URIs say s3://; s3a is the maintained Hadoop connector for them.
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.aws.credentials.provider":
            "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider",
        "spark.hadoop.fs.s3a.encryption.algorithm": "SSE-S3",
    }
    if endpoint:  # an S3-compatible store (MinIO): path-style URLs on its own endpoint
        settings["spark.hadoop.fs.s3a.endpoint"] = endpoint
        settings["spark.hadoop.fs.s3a.path.style.access"] = "true"
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
