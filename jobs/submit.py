"""The command line every job shares under ``spark-submit``.

Each job module ends with::

    if __name__ == "__main__":
        raise SystemExit(submit.run("build_profiles", main))

so a cluster runs it as::

    spark-submit --master spark://host:7077 --py-files dist/personalization-jobs.zip \
        jobs/build_profiles.py --date 2026-10-14 [--config prod.yaml]

The session is the one ``spark-submit`` configured (master, memory and any
``--conf`` win); only the project's runtime settings (UTC, shuffle partitions,
dynamic partition overwrite, ...) are added from the configuration, never the
master, which belongs to the submitter.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from personalization.config import Config, load_config
from personalization.lake import check_date

#: Static settings fixed when the JVM starts: under spark-submit they belong to its command line.
_SUBMITTER_SETTINGS = ("spark.master", "spark.driver.memory")


def parse_args(job: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--date YYYY-MM-DD`` (required) and ``--config FILE`` (optional YAML, else ``$PE_CONFIG``)."""
    parser = argparse.ArgumentParser(
        prog=f"{job}.py",
        description=f"Run the {job} Spark job for one date (the same code the nightly DAG runs).",
    )
    parser.add_argument("--date", required=True, type=check_date, help="run date, YYYY-MM-DD")
    parser.add_argument("--config", default=None, help="YAML configuration file (default: $PE_CONFIG)")
    return parser.parse_args(argv)


def session_for(config: Config, job: str):
    """The submitter's SparkSession with the project's runtime settings applied."""
    from pyspark.sql import SparkSession

    from jobs.spark import spark_settings

    builder = SparkSession.builder.appName(f"{config.spark.app_name}-{job}")
    for key, value in spark_settings(config).items():
        if key not in _SUBMITTER_SETTINGS:
            builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


def run(job: str, main: Callable[..., dict], argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run ``main(config, date, spark=...)`` and print its result as JSON.

    Returns the process exit status (0 on success); a failure raises, so spark-submit
    reports the job as failed with the traceback.
    """
    args = parse_args(job, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config)
    import jobs

    # Where the job's code came from: the --py-files package on a cluster.
    print(f"{job} for {args.date}: code from {Path(jobs.__file__).parent.parent}", file=sys.stderr, flush=True)
    spark = session_for(config, job)
    try:
        result = main(config, args.date, spark=spark)
    finally:
        spark.stop()
    # One JSON line on stdout: what the Airflow task (SparkSubmitOperator) logs and a caller may parse.
    print(json.dumps(result, sort_keys=True, default=str), file=sys.stdout, flush=True)
    return 0
