"""Stages on a local copy of an ``s3://`` lake: committed partitions down, manifests written last on the way up."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from personalization import staging, storage
from personalization.config import load_config
from tests.s3_server import apply_environment, moto_server, restore_environment, s3_environment

D = "2026-10-14"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        previous = apply_environment(s3_environment(endpoint))
        try:
            yield endpoint
        finally:
            restore_environment(previous)


@pytest.fixture
def bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    name = request.node.name.replace("_", "-")[:50].strip("-").lower()
    storage.s3_client().create_bucket(Bucket=name)
    return f"s3://{name}/lake"


def _write(root: Path, relative: str, data: bytes = b"x") -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _keys(uri: str) -> list[str]:
    base = uri.rstrip("/") + "/"
    return [found[len(base):] for found in storage.list_files(uri)]


def test_committed_files_trust_only_marked_partitions() -> None:
    listing = {
        "raw/events/date=2026-10-14/events-0.jsonl": 10,          # landing zone: taken as is
        "gold/profiles/date=2026-10-13/part-0.parquet": 5,         # Spark's _SUCCESS marks it
        "gold/profiles/date=2026-10-13/_SUCCESS": 0,
        "gold/profiles/date=2026-10-14/part-1.parquet": 5,         # listed by the manifest
        "gold/profiles/date=2026-10-14/part-0.parquet": 5,         # stale: not listed
        "gold/profiles/date=2026-10-14/_manifest.json": 30,
        "gold/profiles/date=2026-10-15/part-9.parquet": 5,         # half uploaded: no marker
        "gold/_staging/profiles/part-0.parquet": 5,                 # scratch
        "silver/deleted_users/part-20261014.parquet": 5,            # flat table, not a partition
    }
    manifests = {"gold/profiles/date=2026-10-14": ["part-1.parquet"]}
    assert staging.committed_files(listing, manifests) == [
        "gold/profiles/date=2026-10-13/part-0.parquet",
        "gold/profiles/date=2026-10-14/part-1.parquet",
        "raw/events/date=2026-10-14/events-0.jsonl",
        "silver/deleted_users/part-20261014.parquet",
    ]
    with pytest.raises(FileNotFoundError, match="lists missing objects"):
        staging.committed_files(listing, {"gold/profiles/date=2026-10-14": ["part-7.parquet"]})


def test_plan_upload_skips_markers_scratch_and_checksums() -> None:
    before = {"gold/t/date=2026-10-14/part-0.parquet": (5, 1), "reports/r.json": (2, 1)}
    after = {
        "gold/t/date=2026-10-14/part-1.parquet": (5, 2),
        "gold/t/date=2026-10-14/_SUCCESS": (0, 2),
        "gold/t/date=2026-10-14/.part-1.parquet.crc": (1, 2),
        "gold/_staging/x/part-0.parquet": (1, 2),
        "reports/r.json": (3, 2),
    }
    uploads, removed = staging.plan_upload(before, after)
    assert uploads == {"gold/t/date=2026-10-14": ["gold/t/date=2026-10-14/part-1.parquet"],
                       "reports": ["reports/r.json"]}
    assert removed == {"gold/t/date=2026-10-14": ["gold/t/date=2026-10-14/part-0.parquet"]}


def test_stage_up_commits_partitions_and_replaces_them_whole(bucket: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    _write(work, f"gold/profiles/date={D}/part-0.parquet", b"PAR1-a")
    _write(work, f"gold/profiles/date={D}/_SUCCESS", b"")
    _write(work, f"gold/profiles/date={D}/.part-0.parquet.crc", b"c")
    _write(work, f"reports/validation/date={D}/report.json", b"{}")
    counts = staging.stage_up(work, bucket, {})
    assert counts == {"uploaded": 2, "deleted": 0, "committed": 1}
    assert _keys(bucket) == [f"gold/profiles/date={D}/_manifest.json", f"gold/profiles/date={D}/part-0.parquet",
                             f"reports/validation/date={D}/report.json"]
    manifest = json.loads(storage.read_bytes(f"{bucket}/gold/profiles/date={D}/_manifest.json"))
    assert manifest == {"files": ["part-0.parquet"]}
    key = bucket.split("/", 3)[3] + f"/gold/profiles/date={D}/part-0.parquet"
    head = storage.s3_client().head_object(Bucket=bucket.split("/")[2], Key=key)
    assert head["ServerSideEncryption"] == "AES256"

    # A rerun on a fresh copy rewrites the partition with a new file name.
    again = tmp_path / "again"
    assert staging.stage_down(bucket, ["gold/profiles"], again) == 1
    before = staging.snapshot(again)
    (again / f"gold/profiles/date={D}/part-0.parquet").unlink()
    _write(again, f"gold/profiles/date={D}/part-1.parquet", b"PAR1-b")
    assert staging.stage_up(again, bucket, before) == {"uploaded": 1, "deleted": 1, "committed": 1}
    assert _keys(f"{bucket}/gold/profiles") == [f"date={D}/_manifest.json", f"date={D}/part-1.parquet"]

    # A partition upload that died before its manifest is invisible to readers.
    storage.write_bytes(f"{bucket}/gold/profiles/date=2026-10-15/part-0.parquet", b"half")
    third = tmp_path / "third"
    assert staging.stage_down(bucket, ["gold/profiles"], third) == 1
    assert sorted(p.name for p in (third / "gold/profiles").iterdir()) == [f"date={D}"]

    # A partition the stage removed is un-committed, then deleted.
    before = staging.snapshot(third)
    (third / f"gold/profiles/date={D}/part-1.parquet").unlink()
    staging.stage_up(third, bucket, before)
    assert _keys(f"{bucket}/gold/profiles") == ["date=2026-10-15/part-0.parquet"]


def test_a_stage_runs_on_a_local_copy_and_its_outputs_land_in_s3(bucket: str, tmp_path: Path) -> None:
    from personalization import pipeline
    from personalization.lake import Lake

    config = load_config(environ={"PE_ROOT": str(tmp_path), "PE_PATHS__LAKE_ROOT": bucket})
    storage.write_text(f"{bucket}/gold/popularity/date={D}/_manifest.json", json.dumps({"files": ["p.txt"]}))
    storage.write_text(f"{bucket}/gold/popularity/date={D}/p.txt", "12")
    seen: dict[str, str] = {}

    def work() -> dict:
        lake = Lake(config)
        seen["root"] = lake.root
        # Reads its input from the local copy, writes a new partition beside it.
        value = int(Path(lake.partition(lake.gold("popularity"), D), "p.txt").read_text())
        out = Path(lake.partition(lake.gold("doubled"), D))
        out.mkdir(parents=True)
        (out / "part-0.txt").write_text(str(2 * value))
        return {"path": str(out)}

    result = pipeline._timed("custom_stage", config, D, work)
    assert not seen["root"].startswith("s3://") and not Path(seen["root"]).exists()  # a removed temp copy
    assert config.lake_root == bucket  # restored
    assert result["path"] == f"{bucket}/gold/doubled/date={D}"
    assert storage.read_bytes(f"{bucket}/gold/doubled/date={D}/part-0.txt") == b"24"
    assert json.loads(storage.read_bytes(f"{bucket}/gold/doubled/date={D}/_manifest.json")) == {
        "files": ["part-0.txt"]}
