"""Spark data layer benchmark: ingestion, profiles, segments and features on a lake.

Every landing date is validated in order (so silver has its history), then
profiles, segments and features are built for the last date. Each stage runs in
a fresh child process with local Spark (``--master``, default ``local[2]``, and a
4g driver), the way an Airflow task runs it, so its wall time includes the JVM
start and its peak memory is its own: the largest resident set of the child and
its JVM together, sampled every 0.2 s.

Reported per stage: wall seconds (process), stage seconds (inside ``main``),
input rows, rows/s (input rows / stage seconds), peak RSS in MiB and the stage's
own result. Results go to ``<results_dir>/bench_spark_layer.json``.

Usage::

    python benchmarks/bench_spark_layer.py --root /path/to/project [--scale medium]
        [--dates 2026-10-01,2026-10-02] [--last-only] [--no-mlflow]

``--scale`` generates the synthetic world first when the lake has no raw events.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

STAGES = ("validate_raw_events", "build_profiles", "build_segments", "build_features")


def _config(args: argparse.Namespace):
    from personalization.config import load_config

    return load_config(
        args.config,
        overrides={
            "paths": {"root": args.root},
            "spark": {
                "master": args.master,
                "driver_memory": args.driver_memory,
                "shuffle_partitions": args.shuffle_partitions,
                "extra": {"spark.ui.enabled": "false"},
            },
        },
    )


# --------------------------------------------------------------------- child
def run_child(args: argparse.Namespace) -> None:
    """Run one stage for one date and print one JSON line with its timing and result."""
    from pyspark.sql import functions as F

    from jobs import build_features, build_profiles, build_segments, validate_raw_events
    from jobs import columns as C
    from jobs.inputs import read_events_window
    from jobs.spark import get_spark
    from personalization.lake import Lake

    config = _config(args)
    spark = get_spark(config, f"bench-{args.child}")
    spark.sparkContext.setLogLevel("ERROR")
    date = args.date
    started = time.perf_counter()
    if args.child == "validate_raw_events":
        result = validate_raw_events.main(config, date, spark, run_expectations_suites=not args.no_gx)
    elif args.child == "build_profiles":
        result = build_profiles.main(config, date, spark)
    elif args.child == "build_segments":
        result = build_segments.main(config, date, spark, log_mlflow=not args.no_mlflow)
    else:
        result = build_features.main(config, date, spark)
    seconds = time.perf_counter() - started

    # Input size, counted after the timed part.
    if args.child == "validate_raw_events":
        input_rows = int(result["total"])
    elif args.child == "build_segments":
        input_rows = int(spark.read.parquet(Lake(config).partition(Lake(config).gold("profiles"), date)).count())
    else:
        events = read_events_window(spark, Lake(config), date, config.profiles.window_days)
        input_rows = 0 if events is None else int(events.agg(F.count(C.EVENT_ID)).first()[0])
    common.print_report({"seconds": seconds, "input_rows": input_rows, "result": result})


# -------------------------------------------------------------------- parent
def measure(args: argparse.Namespace, stage: str, date: str) -> dict[str, Any]:
    """Run a stage in a child process; return wall time, peak RSS and the child's report."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--child", stage, "--date", date, "--root", args.root,
        "--master", args.master, "--driver-memory", args.driver_memory,
        "--shuffle-partitions", str(args.shuffle_partitions),
    ]
    if args.config:
        command += ["--config", args.config]
    command += ["--no-mlflow"] if args.no_mlflow else []
    command += ["--no-gx"] if args.no_gx else []
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    child = common.run_child(command, env, ROOT)
    report = child.report()
    wall, peak = child.wall_seconds, child.peak_rss_bytes
    seconds = report["seconds"]
    return {
        "stage": stage,
        "date": date,
        "wall_seconds": round(wall, 2),
        "stage_seconds": round(seconds, 2),
        "input_rows": report["input_rows"],
        "rows_per_second": round(report["input_rows"] / seconds, 1) if seconds > 0 else None,
        "peak_rss_mib": round(peak / 2**20, 1),
        "result": report["result"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT), help="project root whose lake is benchmarked")
    parser.add_argument("--config", help="YAML configuration file")
    parser.add_argument("--scale", choices=["tiny", "small", "medium", "large"], help="generate this world if missing")
    parser.add_argument("--dates", help="comma-separated landing dates (default: every raw date)")
    parser.add_argument("--last-only", action="store_true", help="validate only the last date (silver already built)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    parser.add_argument("--no-mlflow", action="store_true", help="segments without MLflow logging")
    parser.add_argument("--no-gx", action="store_true", help="validation without Great Expectations")
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--date", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.root = str(Path(args.root).resolve())
    if args.child:
        run_child(args)
        return 0

    from personalization.lake import Lake

    config = _config(args)
    lake = Lake(config)
    raw = Path(lake.raw_events())
    if not raw.exists() and args.scale:
        subprocess.run(
            [sys.executable, "-m", "personalization.cli", "generate", "--scale", args.scale, "--quiet"],
            cwd=args.root, env=dict(os.environ, PE_ROOT=args.root), check=True,
        )
    dates = args.dates.split(",") if args.dates else sorted(p.name.split("=", 1)[1] for p in raw.glob("date=*"))
    if not dates:
        raise SystemExit(f"no raw events under {raw}")
    rows = []
    for date in dates[-1:] if args.last_only else dates:
        rows.append(measure(args, "validate_raw_events", date))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "result"}), flush=True)
    for stage in STAGES[1:]:
        rows.append(measure(args, stage, dates[-1]))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "result"}), flush=True)

    validation = [r for r in rows if r["stage"] == "validate_raw_events"]
    summary = {
        "root": args.root,
        "master": args.master,
        "driver_memory": args.driver_memory,
        "shuffle_partitions": args.shuffle_partitions,
        "cpu_count": os.cpu_count(),
        "dates": dates,
        "validation_total_lines": sum(r["input_rows"] for r in validation),
        "validation_stage_seconds": round(sum(r["stage_seconds"] for r in validation), 2),
        "stages": rows,
    }
    out = Path(config.results_dir) / "bench_spark_layer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
