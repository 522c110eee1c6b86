"""Run a stage on a local copy of the part of an ``s3://`` lake it reads.

Spark here has no ``s3a://`` support (no hadoop-aws jars), and the model and
serving stages read Parquet with pandas/pyarrow. So when the lake is in object
storage, a stage runs like this (see ``pipeline._timed``):

1. :func:`stage_down`: copy the stage's input prefixes (``STAGE_INPUTS`` in
   ``pipeline``) to a fresh local work directory, committed partitions only;
2. the stage runs against that directory as its lake root;
3. :func:`stage_up`: upload what the stage added or changed, partition by
   partition: the data files first, then the partition's ``_manifest.json``
   listing them (the commit), then delete the objects the manifest no longer
   lists. Objects are written in full, then referenced.

Readers trust a partition directory (``name=value``) in the table zones
(``silver/``, ``gold/``) only when it holds a commit marker: ``_manifest.json``
(only the files it lists are read) or Spark's own ``_SUCCESS`` (a partition
written by Spark straight to ``s3a://``). A half-uploaded partition is thus
invisible, and a retried upload is safe.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from personalization import storage
from personalization.config import Config

log = logging.getLogger("personalization.staging")

#: Zones holding Spark-style tables, whose partitions need a commit marker.
TABLE_ZONES = ("silver", "gold")
MANIFEST = "_manifest.json"
SPARK_SUCCESS = "_SUCCESS"
_PARTITION = re.compile(r"^[A-Za-z0-9_]+=[^/]+$")

#: ``relative path -> (size in bytes, modification time in ns)`` of every local file.
Snapshot = dict[str, tuple[int, int]]


def _in_tables(relative: str) -> bool:
    return relative.split("/", 1)[0] in TABLE_ZONES


def _hidden(relative: str) -> bool:
    """Spark's convention: names starting with ``_`` or ``.`` are not data (markers, scratch, checksums)."""
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


def is_partition_dir(relative_dir: str) -> bool:
    """True for a table partition directory such as ``gold/profiles/date=2026-10-14``."""
    return _in_tables(relative_dir) and bool(_PARTITION.match(posixpath.basename(relative_dir)))


def committed_files(listing: dict[str, int], manifests: dict[str, list[str]]) -> list[str]:
    """The files of ``listing`` (relative path -> size) a reader may trust, sorted.

    ``manifests`` maps a partition directory to the file names its ``_manifest.json``
    lists. Outside the table zones every file counts; inside them, hidden names never
    do, and a partition's files count only when it is committed (see the module doc).
    """
    by_dir: dict[str, set[str]] = defaultdict(set)
    for relative in listing:
        by_dir[posixpath.dirname(relative)].add(posixpath.basename(relative))
    trusted: list[str] = []
    for directory, names in by_dir.items():
        if not _in_tables(directory or "."):
            trusted.extend(posixpath.join(directory, name) for name in names)
            continue
        if _hidden(directory):
            continue
        data = {name for name in names if not _hidden(name)}
        if is_partition_dir(directory):
            if directory in manifests:
                missing = set(manifests[directory]) - data
                if missing:
                    raise FileNotFoundError(f"{directory}/{MANIFEST} lists missing objects {sorted(missing)}")
                data = set(manifests[directory])
            elif SPARK_SUCCESS not in names:
                if data:
                    log.warning("skipping uncommitted partition %s (no %s or %s)", directory, MANIFEST, SPARK_SUCCESS)
                continue
        trusted.extend(posixpath.join(directory, name) for name in data)
    return sorted(trusted)


def _listing(lake_root: str, prefix: str) -> dict[str, int]:
    """Objects under ``lake_root/prefix`` as ``path relative to lake_root -> size``."""
    base = lake_root.rstrip("/") + "/"
    return {uri[len(base):]: size for uri, size in storage.list_sizes(f"{base}{prefix}")}


def stage_down(lake_root: str, prefixes: list[str], local_root: str | os.PathLike[str]) -> int:
    """Copy the committed objects under each ``prefix`` of ``lake_root`` to ``local_root``; returns the count."""
    count = 0
    for prefix in prefixes:
        listing = _listing(lake_root, prefix)
        manifests = {
            posixpath.dirname(relative): json.loads(storage.read_bytes(f"{lake_root}/{relative}"))["files"]
            for relative in listing
            if posixpath.basename(relative) == MANIFEST and is_partition_dir(posixpath.dirname(relative))
        }
        for relative in committed_files(listing, manifests):
            storage.download_file(f"{lake_root}/{relative}", Path(local_root) / relative)
            count += 1
    return count


def snapshot(local_root: str | os.PathLike[str]) -> Snapshot:
    """Size and modification time of every file under ``local_root`` (relative POSIX paths)."""
    root = Path(local_root)
    files: Snapshot = {}
    for path in root.rglob("*"):
        if path.is_file():
            stat = path.stat()
            files[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return files


def _uploadable(relative: str) -> bool:
    if relative.endswith(".crc"):
        return False
    return not (_in_tables(relative) and _hidden(relative))


def plan_upload(before: Snapshot, after: Snapshot) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``(files to upload, files removed)`` per directory, for the uploadable files that changed."""
    uploads: dict[str, list[str]] = defaultdict(list)
    removed: dict[str, list[str]] = defaultdict(list)
    for relative, state in sorted(after.items()):
        if _uploadable(relative) and before.get(relative) != state:
            uploads[posixpath.dirname(relative)].append(relative)
    for relative in sorted(set(before) - set(after)):
        if _uploadable(relative):
            removed[posixpath.dirname(relative)].append(relative)
    return dict(uploads), dict(removed)


def stage_up(local_root: str | os.PathLike[str], lake_root: str, before: Snapshot) -> dict[str, int]:
    """Upload what changed under ``local_root`` since ``before``; returns counts (uploaded, deleted, committed)."""
    after = snapshot(local_root)
    uploads, removed = plan_upload(before, after)
    counts = {"uploaded": 0, "deleted": 0, "committed": 0}
    for directory in sorted(set(uploads) | set(removed)):
        for relative in uploads.get(directory, []):
            storage.upload_file(Path(local_root) / relative, f"{lake_root}/{relative}")
            counts["uploaded"] += 1
        if is_partition_dir(directory):
            names = sorted(posixpath.basename(r) for r in after
                           if posixpath.dirname(r) == directory and _uploadable(r))
            remote = _listing(lake_root, directory)
            stale = [r for r in remote if posixpath.dirname(r) == directory and posixpath.basename(r) not in names]
            if names:
                # The commit: from here on readers see exactly these files.
                storage.write_text(f"{lake_root}/{directory}/{MANIFEST}", json.dumps({"files": names}, indent=1))
                counts["committed"] += 1
                stale = [r for r in stale if posixpath.basename(r) != MANIFEST]
            else:  # the partition is gone: un-commit it first, then remove its files
                stale.sort(key=lambda r: posixpath.basename(r) not in (MANIFEST, SPARK_SUCCESS))
            targets = stale
        else:
            targets = removed.get(directory, [])
        for relative in targets:
            storage.delete_object(f"{lake_root}/{relative}")
            counts["deleted"] += 1
    return counts


def relocate(value: Any, local_root: str, lake_root: str) -> Any:
    """``value`` (a stage's JSON-able result) with local work paths replaced by lake URIs."""
    if isinstance(value, str):
        return value.replace(local_root.rstrip("/"), lake_root.rstrip("/"))
    if isinstance(value, dict):
        return {key: relocate(item, local_root, lake_root) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(relocate(item, local_root, lake_root) for item in value)
    return value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def remove_stale_work_dirs(work_parent: str | os.PathLike[str]) -> list[str]:
    """Delete the local lake copies (``lake-<pid>-*``) of runs whose process is gone; returns their names.

    :func:`local_lake` removes its copy on exit, but a killed run cannot. Copies of live
    processes (another stage running now) and unnamed ones are left alone.
    """
    removed = []
    for path in sorted(Path(work_parent).glob("lake-*-*")):
        pid = path.name.split("-")[1]
        if path.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    if removed:
        log.info("removed the local lake copies of ended runs: %s", removed)
    return removed


@contextmanager
def local_lake(config: Config, prefixes: Sequence[str]) -> Iterator[str]:
    """Point ``config`` at a local copy of ``prefixes`` of its ``s3://`` lake for the block; sync back after.

    The configuration object is changed in place (``paths.lake_root``) and restored
    on exit, so code holding it (a stage's closures) reads and writes the copy. The
    changes are uploaded on success and also on failure (a failed validation leaves
    its quarantine and report for people to read). Yields the local root.
    """
    lake_root = config.lake_root
    work_parent = Path(config.var_dir) / "work"
    work_parent.mkdir(parents=True, exist_ok=True)
    remove_stale_work_dirs(work_parent)
    # Unique per run and named by its pid, so a crashed run's copy is recognised and removed later.
    with tempfile.TemporaryDirectory(prefix=f"lake-{os.getpid()}-", dir=work_parent) as work:
        downloaded = stage_down(lake_root, list(prefixes), work)
        before = snapshot(work)
        log.info("staged %d objects of %s to %s", downloaded, lake_root, work)
        original = config.paths.lake_root
        config.paths.lake_root = work
        try:
            yield work
        except BaseException:
            config.paths.lake_root = original
            try:
                stage_up(work, lake_root, before)
            except Exception:  # noqa: BLE001 - the stage's own error is the one to report
                log.exception("uploading the outputs of a failed stage to %s failed", lake_root)
            raise
        config.paths.lake_root = original
        counts = stage_up(work, lake_root, before)
        log.info("uploaded to %s: %s", lake_root, counts)
