"""Object storage through boto3 against a local S3-compatible server process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from personalization import storage
from tests.s3_server import apply_environment, moto_server, restore_environment, s3_environment


@pytest.fixture(scope="module")
def s3_bucket() -> Iterator[str]:
    with moto_server() as endpoint:
        previous = apply_environment(s3_environment(endpoint))
        try:
            storage.s3_client().create_bucket(Bucket="lake")
            yield "s3://lake"
        finally:
            restore_environment(previous)


def test_writes_are_whole_and_encrypted(s3_bucket: str) -> None:
    uri = f"{s3_bucket}/reports/date=2026-10-01/report.json"
    storage.write_text(uri, '{"ok": true}')
    assert storage.read_bytes(uri) == b'{"ok": true}'
    head = storage.s3_client().head_object(Bucket="lake", Key="reports/date=2026-10-01/report.json")
    assert head["ServerSideEncryption"] == "AES256"
    # A retried write replaces the object whole.
    storage.write_text(uri, '{"ok": false}')
    assert storage.read_bytes(uri) == b'{"ok": false}'


def test_list_sync_and_delete_prefix(s3_bucket: str, tmp_path: Path) -> None:
    local = tmp_path / "out"
    (local / "date=2026-10-01").mkdir(parents=True)
    (local / "date=2026-10-01" / "part-0.parquet").write_bytes(b"PAR1")
    (local / "date=2026-10-01" / ".part-0.parquet.crc").write_bytes(b"x")
    (local / "_SUCCESS").write_bytes(b"")
    assert storage.sync_up(local, f"{s3_bucket}/gold/profiles") == 2  # .crc files are not uploaded
    listed = list(storage.list_files(f"{s3_bucket}/gold/profiles"))
    assert listed == [f"{s3_bucket}/gold/profiles/_SUCCESS", f"{s3_bucket}/gold/profiles/date=2026-10-01/part-0.parquet"]
    head = storage.s3_client().head_object(Bucket="lake", Key="gold/profiles/date=2026-10-01/part-0.parquet")
    assert head["ServerSideEncryption"] == "AES256"
    back = tmp_path / "back"
    assert storage.sync_down(f"{s3_bucket}/gold/profiles", back) == 2
    assert (back / "date=2026-10-01" / "part-0.parquet").read_bytes() == b"PAR1"
    assert storage.delete_prefix(f"{s3_bucket}/gold/profiles") == 2
    assert not storage.exists(f"{s3_bucket}/gold/profiles")


def test_local_writes_are_atomic_renames(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.json"
    storage.write_text(str(target), "{}")
    assert target.read_text() == "{}"
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]


def test_bad_uris_are_rejected() -> None:
    with pytest.raises(ValueError, match="no bucket"):
        storage.S3Location.parse("s3:///key")
    with pytest.raises(ValueError, match="not an s3"):
        storage.S3Location.parse("/local/path")
