"""File access for the privacy jobs: local paths and ``s3://`` URIs behind one small interface.

Every rewrite goes to a temporary file first and then replaces the original in
one step (``os.replace`` locally, one whole-object PUT on S3), so a reader or a
crash never sees a half-written file, and untouched files keep their bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from personalization import storage


def to_location(uri: str) -> str:
    """A local path for ``file://`` URIs and plain paths; ``s3://`` URIs unchanged."""
    if uri.startswith("file:"):
        return unquote(urlparse(uri).path)
    return uri


def name_of(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def list_files(prefix: str, *, include_hidden: bool = False) -> Iterator[str]:
    """Files under ``prefix`` (sorted; nothing when it does not exist)."""
    for uri in storage.list_files(prefix):
        if include_hidden or not any(part.startswith((".", "_")) for part in _relative_parts(prefix, uri)):
            yield uri


def _relative_parts(prefix: str, uri: str) -> list[str]:
    rest = uri[len(prefix.rstrip("/")):].lstrip("/")
    return rest.split("/") if rest else []


def relative(prefix: str, uri: str) -> str:
    """``uri`` relative to ``prefix`` with ``/`` separators."""
    return "/".join(_relative_parts(prefix, uri))


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path holding ``uri``'s bytes: the file itself, or a downloaded temporary copy."""
    if not storage.is_s3(uri):
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix="pe-privacy-") as folder:
        path = os.path.join(folder, name_of(uri))
        location = storage.S3Location.parse(uri)
        storage.s3_client().download_file(location.bucket, location.key, path)
        yield path


@contextlib.contextmanager
def replacement(uri: str) -> Iterator[str]:
    """Yield a temporary local path; on success its content atomically replaces ``uri``.

    Locally the temporary file sits next to the target (same filesystem, so the
    rename is atomic) and takes over the original's permissions.
    """
    if storage.is_s3(uri):
        with tempfile.TemporaryDirectory(prefix="pe-privacy-") as folder:
            path = os.path.join(folder, name_of(uri))
            yield path
            storage.upload_file(path, uri)
        return
    target = Path(uri)
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield tmp_name
        if target.exists():
            shutil.copymode(target, tmp_name)
        os.replace(tmp_name, target)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def drop_checksum(uri: str) -> None:
    """Remove Hadoop's ``.<name>.crc`` next to a rewritten local file.

    A stale checksum would make Spark's local filesystem reject the new bytes;
    without one, Hadoop simply skips verification.
    """
    if storage.is_s3(uri):
        return
    path = Path(uri)
    (path.parent / f".{path.name}.crc").unlink(missing_ok=True)


def delete_file(uri: str) -> None:
    if storage.is_s3(uri):
        location = storage.S3Location.parse(uri)
        storage.s3_client().delete_object(Bucket=location.bucket, Key=location.key)
        return
    Path(uri).unlink(missing_ok=True)
    drop_checksum(uri)


def child_dirs(prefix: str) -> list[str]:
    """Names of the direct sub-folders of ``prefix`` that hold at least one file."""
    names = set()
    for uri in storage.list_files(prefix):
        parts = _relative_parts(prefix, uri)
        if len(parts) > 1:
            names.add(parts[0])
    return sorted(names)
