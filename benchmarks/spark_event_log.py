"""Summarise Spark event logs: the slowest stages with their call sites, records and shuffle bytes.

Spark writes one JSON event per line when ``spark.eventLog.enabled`` is true (``make
benchmark-pipeline`` with ``--spark-event-log``, or ``PE_SPARK__EXTRA`` for a single stage).
This reads those files without a history server and prints, per application, the stages
that took the longest, so a slow job step can be traced back to a line of ``jobs/``.

Usage: ``python benchmarks/spark_event_log.py DIR_OR_FILE [--top 15] [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def _events(path: Path) -> Iterator[dict[str, Any]]:
    """Events of one application: a plain log file, or a rolling ``eventlog_v2_*`` folder (files in order)."""
    files = sorted((p for p in path.iterdir() if p.name.startswith("events_")),
                   key=lambda p: int(p.name.split("_")[1])) if path.is_dir() else [path]
    for file in files:
        for line in _lines(file):
            line = line.strip()
            if line:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:  # a log still being written ends mid-line
                    continue


def _lines(file: Path) -> Iterator[str]:
    """Text lines of a log file; ``.zstd``/``.lz4``/... (Spark's default codec is zstd) through pyarrow."""
    codec = {".zstd": "zstd", ".lz4": "lz4", ".snappy": "snappy", ".gz": "gzip"}.get(file.suffix)
    if codec is None:
        with file.open(encoding="utf-8", errors="replace") as handle:
            yield from handle
        return
    import io

    import pyarrow as pa

    with pa.input_stream(str(file), compression=codec) as stream:
        yield from io.TextIOWrapper(io.BufferedReader(stream), encoding="utf-8", errors="replace")


def _call_site(details: str, name: str) -> str:
    """The first frame of the stage's call site inside this project (``jobs/...py:123``), else its name."""
    for frame in details.splitlines():
        for marker in ("/jobs/", "/models/", "/personalization/"):
            if marker in frame:
                return frame.strip()[frame.strip().find(marker.strip("/")):]
    return name


def _metric_reader(accumulables: dict[str, Any]):  # noqa: ANN202 - a small closure
    """``metric(name) -> int``: a stage's accumulated task metric, 0 when absent."""

    def metric(name: str) -> int:
        try:
            return int(accumulables.get(name))
        except (TypeError, ValueError):
            return 0

    return metric


def summarise(path: Path) -> dict[str, Any]:
    """Stages of one event log: wall seconds, tasks, input/output records, shuffle bytes, call site."""
    stages: dict[tuple[int, int], dict[str, Any]] = {}
    app = {"name": path.name, "start_ms": None, "end_ms": None}
    for event in _events(path):
        kind = event.get("Event") if isinstance(event, dict) else None
        if kind == "SparkListenerApplicationStart":
            app["name"], app["start_ms"] = event.get("App Name", path.name), event.get("Timestamp")
        elif kind == "SparkListenerApplicationEnd":
            app["end_ms"] = event.get("Timestamp")
        elif kind == "SparkListenerStageCompleted":
            info = event["Stage Info"]
            key = (info["Stage ID"], info.get("Stage Attempt ID", 0))
            accumulables = {item.get("Name"): item.get("Value") for item in info.get("Accumulables", [])}
            metric = _metric_reader(accumulables)
            started, ended = info.get("Submission Time"), info.get("Completion Time")
            stages[key] = {
                "stage_id": info["Stage ID"],
                "seconds": round((ended - started) / 1000.0, 3) if started and ended else None,
                "tasks": info.get("Number of Tasks"),
                "call_site": _call_site(info.get("Details", ""), info.get("Stage Name", "")),
                "input_records": metric("internal.metrics.input.recordsRead"),
                "output_records": metric("internal.metrics.output.recordsWritten"),
                "shuffle_read_mb": round((metric("internal.metrics.shuffle.read.remoteBytesRead")
                                          + metric("internal.metrics.shuffle.read.localBytesRead")) / 2**20, 1),
                "shuffle_write_mb": round(metric("internal.metrics.shuffle.write.bytesWritten") / 2**20, 1),
                "executor_cpu_seconds": metric("internal.metrics.executorCpuTime") / 1e9,
                "gc_seconds": metric("internal.metrics.jvmGCTime") / 1000.0,
            }
    ordered = sorted(stages.values(), key=lambda stage: -(stage["seconds"] or 0.0))
    total = sum(stage["seconds"] or 0.0 for stage in ordered)
    wall = (app["end_ms"] - app["start_ms"]) / 1000.0 if app["start_ms"] and app["end_ms"] else None
    return {"application": app["name"], "log": str(path), "wall_seconds": wall, "stage_seconds_total": round(total, 3),
            "stages": ordered}


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="an event log file, or a folder of them")
    parser.add_argument("--top", type=int, default=15, help="stages listed per application")
    parser.add_argument("--json", help="write the full summary here")
    args = parser.parse_args(argv)
    root = Path(args.path)
    if root.name.startswith("eventlog_v2_") or not root.is_dir():
        logs = [root]
    else:
        logs = sorted(p for p in root.iterdir() if p.is_file() or p.name.startswith("eventlog_v2_"))
    if not logs:
        sys.exit(f"no event logs under {root}: enable spark.eventLog.enabled and spark.eventLog.dir")
    summaries = [summarise(log) for log in logs]
    for summary in summaries:
        wall = f"{summary['wall_seconds']:.1f} s" if summary["wall_seconds"] else "still running"
        print(f"\n== {summary['application']} ({summary['log']}): wall {wall}, "
              f"stages {summary['stage_seconds_total']:.1f} s")
        print(f"  {'seconds':>8} {'tasks':>6} {'in rows':>11} {'out rows':>10} {'shuffle MB':>10} {'gc s':>6}  call site")
        for stage in summary["stages"][: args.top]:
            shuffle = stage["shuffle_read_mb"] + stage["shuffle_write_mb"]
            print(f"  {stage['seconds'] or 0:8.2f} {stage['tasks'] or 0:6d} {stage['input_records']:11d} "
                  f"{stage['output_records']:10d} {shuffle:10.1f} {stage['gc_seconds']:6.1f}  {stage['call_site']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summaries, indent=2))
        print(f"\nwrote {args.json}")
    return summaries


if __name__ == "__main__":
    main()
