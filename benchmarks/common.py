"""Helpers shared by the benchmarks: child processes with peak memory, and growth exponents.

A stage is measured in its own child process (the way an Airflow task runs it), so its
peak resident memory is its own: the largest sum of RSS over the child and all its
descendants (the JVM that PySpark starts is one), sampled every ``interval`` seconds.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Prefix of the one JSON line a benchmark child prints with its report.
REPORT_PREFIX = "BENCH "


def tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and all its descendants (0 when it is gone)."""
    import psutil

    try:
        process = psutil.Process(pid)
        members = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


@dataclass
class ChildRun:
    """What :func:`run_child` observed: exit code, output, wall seconds and peak tree RSS in bytes."""

    returncode: int
    stdout: str
    stderr: str
    wall_seconds: float
    peak_rss_bytes: int

    def report(self) -> dict[str, Any]:
        """The child's last ``BENCH {...}`` line as a dict (raises RuntimeError when it failed)."""
        lines = [line for line in self.stdout.splitlines() if line.startswith(REPORT_PREFIX)]
        if self.returncode != 0 or not lines:
            raise RuntimeError(f"child failed (rc={self.returncode}):\n{self.stderr[-4000:]}")
        return json.loads(lines[-1][len(REPORT_PREFIX):])


def run_child(command: list[str], env: dict[str, str], cwd: Path, interval: float = 0.2,
              log_path: Path | None = None) -> ChildRun:
    """Run ``command``; sample the RSS of its process tree every ``interval`` s until it exits.

    With ``log_path`` the child's stderr goes to that file (large Spark logs stay off the pipe).
    """
    started = time.perf_counter()
    stderr_target = open(log_path, "w", encoding="utf-8") if log_path else subprocess.PIPE  # noqa: SIM115
    try:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr_target, text=True, env=env, cwd=cwd)
        peak = 0
        # stdout is small (one report line and progress); read it after the loop.
        while child.poll() is None:
            peak = max(peak, tree_rss(child.pid))
            time.sleep(interval)
        stdout, stderr = child.communicate()
    finally:
        if log_path:
            stderr_target.close()
    if log_path:
        stderr = Path(log_path).read_text(encoding="utf-8", errors="replace")
    return ChildRun(child.returncode, stdout, stderr or "", time.perf_counter() - started, peak)


def print_report(report: dict[str, Any]) -> None:
    """Print a child's report line (read back by :meth:`ChildRun.report`)."""
    print(REPORT_PREFIX + json.dumps(report, default=str), flush=True)


def growth_exponent(sizes: list[float], seconds: list[float]) -> float | None:
    """Least-squares slope ``b`` of ``log(seconds) = a + b log(size)`` (None with < 2 distinct sizes).

    ``b`` = 1 is linear growth; ``b`` > 1 grows faster than the data.
    """
    points = [(math.log(s), math.log(t)) for s, t in zip(sizes, seconds, strict=True) if s > 0 and t > 0]
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return sxy / sxx


def growth_ratio(size_small: float, seconds_small: float, size_large: float, seconds_large: float) -> float | None:
    """(large time / small time) / (large size / small size): 1.0 is linear, > 1.2 is flagged."""
    if min(size_small, seconds_small, size_large, seconds_large) <= 0 or size_large == size_small:
        return None
    return (seconds_large / seconds_small) / (size_large / size_small)
