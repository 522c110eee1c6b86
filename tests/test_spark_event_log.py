"""benchmarks/spark_event_log.py on hand-written event logs (plain and zstd, rolling v2 folder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import spark_event_log  # noqa: E402


def _stage(stage_id: int, start_ms: int, end_ms: int, details: str, **metrics: int) -> dict:
    return {
        "Event": "SparkListenerStageCompleted",
        "Stage Info": {
            "Stage ID": stage_id, "Stage Attempt ID": 0, "Stage Name": f"stage {stage_id}", "Number of Tasks": 2,
            "Details": details, "Submission Time": start_ms, "Completion Time": end_ms,
            "Accumulables": [{"Name": f"internal.metrics.{name.replace('_', '.')}", "Value": str(value)}
                             for name, value in metrics.items()],
        },
    }


EVENTS = [
    {"Event": "SparkListenerLogStart", "Spark Version": "4.3.0"},
    {"Event": "SparkListenerApplicationStart", "App Name": "build_profiles", "Timestamp": 1_000},
    _stage(0, 2_000, 3_500, "org.apache.spark.sql.Dataset.collect\n/repo/jobs/build_profiles.py:120 in main",
           input_recordsRead=1000, shuffle_write_bytesWritten=2 * 2**20, jvmGCTime=250),
    _stage(1, 4_000, 9_000, "org.apache.spark.rdd.RDD.map\nCompletableFuture.java:1768",
           output_recordsWritten=10, executorCpuTime=3_000_000_000),
    {"Event": "SparkListenerApplicationEnd", "Timestamp": 11_000},
]


def _expected(log: Path) -> dict:
    return {
        "application": "build_profiles", "log": str(log), "wall_seconds": 10.0, "stage_seconds_total": 6.5,
        "stages": [
            {"stage_id": 1, "seconds": 5.0, "tasks": 2, "call_site": "stage 1", "input_records": 0,
             "output_records": 10, "shuffle_read_mb": 0.0, "shuffle_write_mb": 0.0, "executor_cpu_seconds": 3.0,
             "gc_seconds": 0.0},
            {"stage_id": 0, "seconds": 1.5, "tasks": 2, "call_site": "jobs/build_profiles.py:120 in main",
             "input_records": 1000, "output_records": 0, "shuffle_read_mb": 0.0, "shuffle_write_mb": 2.0,
             "executor_cpu_seconds": 0.0, "gc_seconds": 0.25},
        ],
    }


def _text() -> str:
    return "".join(json.dumps(event) + "\n" for event in EVENTS) + '{"Event": "truncated'


def test_plain_log_slowest_stage_first(tmp_path: Path) -> None:
    log = tmp_path / "local-1"
    log.write_text(_text())
    assert spark_event_log.summarise(log) == _expected(log)


def test_rolling_zstd_folder_and_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "events" / "eventlog_v2_local-2"
    folder.mkdir(parents=True)
    lines = _text().splitlines(keepends=True)
    # Spark rolls a long log into numbered files; order is by number, not by name.
    for number, chunk in ((1, lines[:3]), (2, lines[3:])):
        with pa.output_stream(str(folder / f"events_{number}_local-2.zstd"), compression="zstd") as stream:
            stream.write("".join(chunk).encode())
    (folder / "appstatus_local-2").write_text("")
    out = tmp_path / "summary.json"
    summaries = spark_event_log.main([str(tmp_path / "events"), "--top", "1", "--json", str(out)])
    assert summaries == [_expected(folder)]
    assert json.loads(out.read_text()) == summaries
    printed = capsys.readouterr().out
    assert "wall 10.0 s, stages 6.5 s" in printed and "stage 1" in printed
    assert "jobs/build_profiles.py:120" not in printed  # --top 1
