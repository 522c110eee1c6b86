"""One run per lake at a time, with real ``pe`` processes (personalization/locks.py).

Before the lock, a second ``pe`` for the same date deleted
``silver/_staging/validate/...`` under the first, which died with Spark's "file
does not exist". Now the second exits at once (status 75) naming the holder, and
the staging folders are unique per run, so a run killed mid-way (``kill -9``) leaves
nothing that breaks the next one (its folder, which holds raw records, is swept once old).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from personalization.config import load_config
from personalization.locks import LakeBusyError, lake_lock, lock_path, read_holder

PE = Path(sys.executable).with_name("pe")
EXIT_LAKE_BUSY = 75


def _env(root: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PE_")}
    env.update(PE_ROOT=str(root), PE_GENERATOR__SCALE="tiny", PE_SPARK__SHUFFLE_PARTITIONS="2")
    return env


def _start(root: Path, *args: str) -> subprocess.Popen:
    # Own session: the kill below takes Spark's JVM with it, as a crash of the whole run would.
    return subprocess.Popen([str(PE), *args], env=_env(root), cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(condition, timeout: float, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"process ended ({process.returncode}) before {what}: {err[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_the_lock_is_exclusive_names_its_holder_and_frees_itself(tmp_path: Path) -> None:
    config = load_config(overrides={"paths": {"root": str(tmp_path)}}, environ={})
    assert lock_path(config) == Path(config.lake_root) / "_locks" / "run.lock"
    with lake_lock(config, command="pe run --date 2026-10-14") as holder:
        assert read_holder(lock_path(config)) == holder and holder["pid"] == os.getpid()
        with pytest.raises(LakeBusyError, match=rf"pid {os.getpid()} on .*: pe run --date 2026-10-14"):
            with lake_lock(config):  # a second descriptor conflicts even in the same process
                pass
    with lake_lock(config, command="pe stage build_profiles"):  # released on exit
        pass
    assert read_holder(lock_path(config)) == {}
    s3 = load_config(overrides={"paths": {"root": str(tmp_path), "lake_root": "s3://bucket/lake"}}, environ={})
    assert lock_path(s3).parent == Path(s3.var_dir) / "locks"  # one host's runs; see the module doc


@pytest.mark.slow
def test_two_pe_processes_on_one_lake(tmp_path: Path) -> None:
    root = tmp_path / "root"
    generated = subprocess.run([str(PE), "generate", "--scale", "tiny", "--quiet"], env=_env(root), cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)
    assert generated.returncode == 0, generated.stderr[-3000:]
    config = load_config(environ=_env(root))
    date = json.loads(generated.stdout)["first_date"]
    lake = Path(config.lake_root)
    stage = ("stage", "validate_raw_events", "--date", date)

    # A second process while the first runs: refused at once, naming the first, touching nothing.
    first = _start(root, *stage)
    _wait_for(lambda: read_holder(lock_path(config)).get("pid") == first.pid, 60, "the first to hold the lock",
              first)
    started = time.monotonic()
    second = subprocess.run([str(PE), *stage], env=_env(root), cwd=root, capture_output=True, text=True,
                            timeout=120)
    assert time.monotonic() - started < 60
    assert second.returncode == EXIT_LAKE_BUSY, second.stderr[-3000:]
    assert f"the lake {lake} is busy: pid {first.pid} on " in second.stderr
    assert f"pe stage validate_raw_events --date {date}" in second.stderr

    # The first is then killed while Spark writes its staging folder (a crash): the next run still works.
    staging = lake / "silver" / "_staging" / "validate" / f"landing_date={date}"
    _wait_for(lambda: staging.exists() and any(staging.glob("run=*/flagged/*.parquet")), 300,
              "Spark to write the staging folder", first)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    crashed = list(staging.iterdir())
    assert len(crashed) == 1 and crashed[0].name.startswith("run=")  # the crashed run's own folder
    # Another run's fresh folder (junk to this one) stays; the crashed one, once old, is swept (raw records).
    (staging / "run=another").mkdir()
    (staging / "run=another" / "part-0.parquet").write_bytes(b"not parquet")
    old = time.time() - 13 * 3600
    os.utime(crashed[0], (old, old))

    rerun = subprocess.run([str(PE), *stage], env=_env(root), cwd=root, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-6000:]
    report = json.loads((lake / "reports" / "validation" / f"date={date}" / "report.json").read_text())
    injected = json.loads((lake / "raw" / "_manifests" / f"date={date}" / "injected.json").read_text())["injected"]
    assert {k: v for k, v in report["by_reason"].items() if v} == {k: v for k, v in injected.items() if v}
    assert json.loads(rerun.stdout[rerun.stdout.index("{"):])["quarantined"] == sum(injected.values())
    assert [path.name for path in staging.iterdir()] == ["run=another"]  # the rerun removed its own too


def test_local_lake_copies_of_ended_runs_are_removed(tmp_path: Path) -> None:
    from personalization.staging import remove_stale_work_dirs

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    dead_pid = int(ended.stdout)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [f"lake-{dead_pid}-abc", f"lake-{running.pid}-def", f"lake-{os.getpid()}-ghi", "lake-jkl"]
        for name in names:
            (tmp_path / name / "silver").mkdir(parents=True)
        assert remove_stale_work_dirs(tmp_path) == [f"lake-{dead_pid}-abc"]
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names[1:])
    finally:
        running.kill()
        running.wait()
