"""One writer per lake at a time: an exclusive lock that ``pe run``, ``pe stage`` and ``pe generate`` hold.

A nightly run rewrites tables that every date shares (``silver/events`` partitions
of late events, the model registry, the serving database), so the unit is the
lake, not the date: a second run, for any date, would delete or overwrite what the
first is reading. The second one fails at once with :class:`LakeBusyError`, which
names the holder (pid, host, start time, command).

The lock is ``fcntl.flock`` on a file, so the kernel releases it when its holder
exits, even on ``kill -9``: a crashed run never blocks the next one. The file
(never deleted, which would let two processes lock two different inodes) holds
the holder's description as JSON. Where it lives:

- local lake: ``<lake>/_locks/run.lock`` (hidden, like Spark's ``_`` names), shared
  by every process that sees that directory (NFS needs working ``flock``);
- ``s3://`` lake: ``<var>/locks/lake-<hash of the URI>.lock`` on this machine. That
  serialises the runs of one host only; across hosts, Airflow's ``max_active_runs=1``
  on the nightly DAG is the guard (S3 has no lock that frees itself when a holder dies).

Airflow's own task processes do not take it (the DAG serialises its runs; ``pe run``
holds it around the ``airflow dags test`` it starts).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from personalization.config import Config
from personalization.storage import is_s3

LOCK_DIR = "_locks"
LOCK_NAME = "run.lock"


class LakeBusyError(RuntimeError):
    """Another process holds the lake's lock; ``holder`` is its description (may be empty)."""

    def __init__(self, lake_root: str, lock_path: Path, holder: dict[str, Any]) -> None:
        self.lake_root, self.lock_path, self.holder = lake_root, lock_path, holder
        if holder:
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_at')}: "
                   f"{holder.get('command')}")
        else:
            who = "a process that has not written its description yet"
        super().__init__(f"the lake {lake_root} is busy: {who} (lock {lock_path}); wait for it to finish, "
                         "or stop it first: one run per lake at a time")


def lock_path(config: Config) -> Path:
    """The lock file of ``config``'s lake (see the module doc)."""
    root = config.lake_root
    if is_s3(root):
        digest = hashlib.sha256(root.rstrip("/").encode()).hexdigest()[:16]
        return Path(config.var_dir) / "locks" / f"lake-{digest}.lock"
    return Path(root) / LOCK_DIR / LOCK_NAME


def read_holder(path: Path) -> dict[str, Any]:
    """The description the current (or last) holder wrote; ``{}`` when none or unreadable."""
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextmanager
def lake_lock(config: Config, command: str | None = None) -> Iterator[dict[str, Any]]:
    """Hold the lake's exclusive lock for the block; yields the description written for others.

    Raises:
        LakeBusyError: another process holds it (no waiting: a second run is a mistake to report).
    """
    path = lock_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LakeBusyError(config.lake_root, path, read_holder(path)) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command or " ".join(["pe", *sys.argv[1:]]),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder, sort_keys=True).encode(), 0)
        try:
            yield holder
        finally:
            os.ftruncate(fd, 0)  # released: nobody to name
    finally:
        os.close(fd)  # closing the descriptor releases the flock
