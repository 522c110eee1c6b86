"""Object storage for the lake, exports and reports: local paths or ``s3://`` URIs.

S3 goes through boto3 with the standard AWS credential chain (environment,
shared config, instance role); ``AWS_ENDPOINT_URL`` points it at an
S3-compatible server. Every write:
- requests server-side encryption (``ServerSideEncryption=AES256`` by default);
- is written in full before it is visible: S3 PUTs are atomic per object, and
  local files go to a temporary name first and are renamed, so a retried or
  killed write never leaves a partial object under the final name.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SSE_ALGORITHM = os.environ.get("PE_S3_SSE", "AES256")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> "S3Location":
        if not uri.startswith(("s3://", "s3a://")):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        rest = uri.split("://", 1)[1]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {uri!r}")
        return cls(bucket, key)


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def s3_client():
    """A boto3 S3 client from the standard credential chain (``AWS_ENDPOINT_URL`` honoured)."""
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object or file; visible only once complete; encrypted at rest on S3."""
    if is_s3(uri):
        location = S3Location.parse(uri)
        s3_client().put_object(Bucket=location.bucket, Key=location.key, Body=data,
                               ServerSideEncryption=SSE_ALGORITHM)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(data)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def upload_file(local_path: str | os.PathLike[str], uri: str) -> None:
    """Copy a local file to ``uri`` (multipart for large files, with server-side encryption)."""
    if is_s3(uri):
        location = S3Location.parse(uri)
        s3_client().upload_file(str(local_path), location.bucket, location.key,
                                ExtraArgs={"ServerSideEncryption": SSE_ALGORITHM})
        return
    write_bytes(uri, Path(local_path).read_bytes())


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        location = S3Location.parse(uri)
        return s3_client().get_object(Bucket=location.bucket, Key=location.key)["Body"].read()
    return Path(uri).read_bytes()


def exists(uri: str) -> bool:
    if is_s3(uri):
        location = S3Location.parse(uri)
        response = s3_client().list_objects_v2(Bucket=location.bucket, Prefix=location.key, MaxKeys=1)
        return response.get("KeyCount", 0) > 0
    return Path(uri).exists()


def list_sizes(prefix: str) -> Iterator[tuple[str, int]]:
    """``(uri, size in bytes)`` of every file (object) under ``prefix``, in sorted order."""
    if is_s3(prefix):
        location = S3Location.parse(prefix)
        key_prefix = location.key.rstrip("/") + "/" if location.key else ""
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=location.bucket, Prefix=key_prefix):
            for item in page.get("Contents", []):
                yield f"s3://{location.bucket}/{item['Key']}", int(item["Size"])
        return
    for path in list_files(prefix):
        yield path, Path(path).stat().st_size


def list_files(prefix: str) -> Iterator[str]:
    """Every file (object) under ``prefix``, as full URIs or paths, in sorted order."""
    if is_s3(prefix):
        yield from (uri for uri, _ in list_sizes(prefix))
        return
    root = Path(prefix)
    if root.is_file():
        yield str(root)
    elif root.exists():
        yield from (str(path) for path in sorted(root.rglob("*")) if path.is_file())


def download_file(uri: str, local_path: str | os.PathLike[str]) -> None:
    """Copy an object (or file) to ``local_path``, creating its folder."""
    target = Path(local_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        location = S3Location.parse(uri)
        s3_client().download_file(location.bucket, location.key, str(target))
        return
    write_bytes(str(target), Path(uri).read_bytes())


def delete_object(uri: str) -> None:
    """Delete one object or file (missing is fine: deletes are retried)."""
    if is_s3(uri):
        location = S3Location.parse(uri)
        s3_client().delete_object(Bucket=location.bucket, Key=location.key)
        return
    Path(uri).unlink(missing_ok=True)


def delete_prefix(prefix: str) -> int:
    """Delete every object under ``prefix``; returns how many were deleted."""
    if is_s3(prefix):
        location = S3Location.parse(prefix)
        client = s3_client()
        keys = [S3Location.parse(uri).key for uri in list_files(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            client.delete_objects(Bucket=location.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)
    import shutil

    root = Path(prefix)
    files = list(list_files(prefix))
    if root.is_dir():
        shutil.rmtree(root)
    elif root.exists():
        root.unlink()
    return len(files)


def sync_down(prefix: str, local_dir: str | os.PathLike[str]) -> int:
    """Copy every object under an ``s3://`` prefix to ``local_dir`` (same relative layout)."""
    location = S3Location.parse(prefix)
    base = location.key.rstrip("/") + "/" if location.key else ""
    count = 0
    for uri in list_files(prefix):
        download_file(uri, Path(local_dir) / S3Location.parse(uri).key[len(base):])
        count += 1
    return count


def sync_up(local_dir: str | os.PathLike[str], prefix: str) -> int:
    """Upload every file under ``local_dir`` to an ``s3://`` prefix (encrypted, whole objects)."""
    root = Path(local_dir)
    count = 0
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.endswith(".crc"):
            upload_file(path, prefix.rstrip("/") + "/" + path.relative_to(root).as_posix())
            count += 1
    return count
