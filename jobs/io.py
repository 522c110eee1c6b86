"""Read/write helpers for date-partitioned lake tables.

Everything goes through Spark's Hadoop FileSystem, so the same calls work for
local paths today and ``s3a://`` URIs later. A partition is a directory
``<table>/<column>=<YYYY-MM-DD>`` written explicitly with mode overwrite, so a
rerun of a date replaces exactly that date and nothing else.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Iterable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from personalization.lake import check_date


def _fs_path(spark: SparkSession, path: str) -> tuple[Any, Any]:
    """The Hadoop FileSystem owning ``path`` and the JVM Path object."""
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())  # type: ignore[attr-defined]
    return fs, jpath


def path_exists(spark: SparkSession, path: str) -> bool:
    """True when a file or directory exists at ``path``."""
    fs, jpath = _fs_path(spark, path)
    return bool(fs.exists(jpath))


def delete_path(spark: SparkSession, path: str) -> None:
    """Recursively delete ``path`` if it exists."""
    fs, jpath = _fs_path(spark, path)
    if fs.exists(jpath):
        fs.delete(jpath, True)


def partition_path(table_path: str, column: str, value: str) -> str:
    """``<table>/<column>=<value>`` for a checked YYYY-MM-DD value."""
    return f"{table_path.rstrip('/')}/{column}={check_date(value)}"


def list_partitions(spark: SparkSession, table_path: str, column: str) -> list[str]:
    """Sorted partition values (YYYY-MM-DD) of ``column`` present under ``table_path``.

    Only directories that contain a ``_SUCCESS`` marker or data files count, so a
    half-written partition left by a crashed job is still listed (Spark replaces
    it on rerun) but stray files are not.
    """
    fs, jpath = _fs_path(spark, table_path)
    if not fs.exists(jpath):
        return []
    prefix = f"{column}="
    values = []
    for status in fs.listStatus(jpath):
        name = status.getPath().getName()
        if status.isDirectory() and name.startswith(prefix):
            value = name[len(prefix):]
            try:
                values.append(check_date(value))
            except ValueError:
                continue
    return sorted(values)


def read_partitions(
    spark: SparkSession,
    table_path: str,
    column: str,
    values: Iterable[str],
    schema: T.StructType | None = None,
) -> DataFrame | None:
    """Read the given partitions of a Parquet table, with ``column`` as a date column.

    Missing partitions are skipped. Returns None when none exists and no
    ``schema`` was given; with a schema, an empty DataFrame of that schema.
    """
    existing = set(list_partitions(spark, table_path, column))
    paths = [partition_path(table_path, column, value) for value in sorted(set(values)) if value in existing]
    if not paths:
        return None if schema is None else spark.createDataFrame([], schema)
    return spark.read.option("basePath", table_path.rstrip("/")).parquet(*paths)


def read_partitions_between(
    spark: SparkSession,
    table_path: str,
    column: str,
    first: str | None,
    last: str,
    schema: T.StructType | None = None,
) -> DataFrame | None:
    """Read partitions with ``first <= value <= last`` (``first`` None: from the start)."""
    values = [v for v in list_partitions(spark, table_path, column) if (first is None or v >= first) and v <= last]
    return read_partitions(spark, table_path, column, values, schema)


def read_partition(spark: SparkSession, table_path: str, column: str, value: str) -> DataFrame | None:
    """One partition, without the partition column (None when it does not exist)."""
    path = partition_path(table_path, column, value)
    return spark.read.parquet(path) if path_exists(spark, path) else None


def write_partition(df: DataFrame, table_path: str, column: str, value: str) -> str:
    """Overwrite one partition directory with ``df`` (which must not read that directory)."""
    path = partition_path(table_path, column, value)
    df.write.mode("overwrite").parquet(path)
    return path


def replace_partition(
    spark: SparkSession, df: DataFrame, table_path: str, column: str, value: str, staging_root: str
) -> str:
    """Overwrite one partition with ``df`` even when ``df`` is derived from it.

    ``df`` is first written to a staging directory, then the old partition is
    deleted and the staging directory renamed into place (a copy on object
    stores; the window in which the partition is missing is short).
    """
    path = partition_path(table_path, column, value)
    staging = f"{staging_root.rstrip('/')}/{uuid.uuid4().hex}"
    df.write.mode("overwrite").parquet(staging)
    fs, target = _fs_path(spark, path)
    _, source = _fs_path(spark, staging)
    if fs.exists(target):
        fs.delete(target, True)
    fs.mkdirs(target.getParent())
    if not fs.rename(source, target):
        raise OSError(f"could not move {staging} to {path}")
    return path


def stage(df: DataFrame, path: str) -> DataFrame:
    """Write ``df`` to a scratch Parquet directory and return it read back.

    Cuts a long lineage (and its recomputation by several consumers) without
    holding the data in executor memory, unlike cache() or localCheckpoint().
    The caller deletes ``path`` when done.
    """
    df.write.mode("overwrite").parquet(path)
    return df.sparkSession.read.parquet(path)


def write_text(spark: SparkSession, path: str, text: str) -> str:
    """Write a small UTF-8 text file (reports), replacing it."""
    fs, jpath = _fs_path(spark, path)
    fs.mkdirs(jpath.getParent())
    stream = fs.create(jpath, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()
    return path


def read_text(spark: SparkSession, path: str) -> str:
    """Read a small UTF-8 text file written by :func:`write_text`."""
    df = spark.read.text(path, wholetext=True)
    rows = df.collect()  # one row: the whole (small) file
    return rows[0][0] if rows else ""


def write_json(spark: SparkSession, path: str, payload: dict[str, Any]) -> str:
    """Write ``payload`` as pretty JSON (sorted keys, so reruns are byte-identical)."""
    return write_text(spark, path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
