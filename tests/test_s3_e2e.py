"""End to end with the lake and the MLflow artifacts in S3 buckets (a local S3-compatible server process).

The landing data is uploaded to ``s3://lake/pe/raw`` as producers would; then
the earlier dates are ingested and the nightly DAG runs for the last date
through Airflow's ``dag.test()``, with ``paths.lake_root`` and
``mlflow.artifact_root`` set to ``s3://`` URIs and the standard AWS variables
pointing at the server. Spark has no s3a here, so every stage works on a local
copy (personalization.staging). The checks read the buckets with boto3.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sqlite3
from collections.abc import Iterator

import pytest

from personalization import storage
from personalization.config import load_config
from tests.s3_server import moto_server, s3_environment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

LAKE = "s3://lake/pe"
ARTIFACTS = "s3://mlflow/artifacts"
#: Fewest models and clusters: the test is about where data lives, not quality.
SETTINGS = {"PE_GENERATOR__SCALE": "tiny", "PE_TRAINING__MODELS": "popularity,ease", "PE_SEGMENTS__K_MIN": "2",
            "PE_SEGMENTS__K_MAX": "3", "PE_SPARK__MASTER": "local[2]", "PE_SPARK__SHUFFLE_PARTITIONS": "2",
            "PE_SPARK__DRIVER_MEMORY": "1g", "PE_PATHS__LAKE_ROOT": LAKE, "PE_MLFLOW__ARTIFACT_ROOT": ARTIFACTS}


def _keys(uri: str) -> list[str]:
    base = uri.rstrip("/") + "/"
    return [found[len(base):] for found in storage.list_files(uri)]


def _parquet_rows(prefix: str) -> int:
    """Rows of a committed partition, read from the objects its manifest lists."""
    import pyarrow.parquet as pq

    manifest = json.loads(storage.read_bytes(f"{prefix}/_manifest.json"))
    return sum(pq.read_table(io.BytesIO(storage.read_bytes(f"{prefix}/{name}"))).num_rows
               for name in manifest["files"])


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from personalization import pipeline
    from personalization.airflow_runner import run_dag_in_process
    from personalization.generator import generate_world
    from personalization.generator.presets import SCALE_PRESETS

    root = tmp_path_factory.mktemp("s3e2e")
    patch = pytest.MonkeyPatch()
    with moto_server() as endpoint:
        try:
            patch.delenv("PE_CONFIG", raising=False)
            for name, value in {**s3_environment(endpoint), **SETTINGS, "PE_ROOT": str(root)}.items():
                patch.setenv(name, value)  # the DAG's tasks (a child process) inherit the same environment
            client = storage.s3_client()
            client.create_bucket(Bucket="lake")
            client.create_bucket(Bucket="mlflow")

            # Producers land raw data in the bucket: generate locally, upload raw/.
            local = load_config(overrides={"paths": {"lake_root": str(root / "landing")}})
            summary = generate_world(local, progress=False,
                                     preset=dataclasses.replace(SCALE_PRESETS["tiny"], days=3))
            storage.sync_up(root / "landing" / "raw", f"{LAKE}/raw")

            config = load_config()
            *history, date = summary.dates
            for day in history:
                pipeline.validate_raw_events(config, day)
            run_dag_in_process(config, date)
            yield {"root": root, "config": config, "date": date, "landing": root / "landing"}
        finally:
            patch.undo()


def test_the_lake_is_in_the_bucket_with_committed_partitions(s3_run: dict) -> None:
    date = s3_run["date"]
    keys = set(_keys(LAKE))
    for table in ("gold/profiles", "gold/segments", "gold/interactions", "gold/recommendations",
                  "gold/user_insights", "gold/similar_apps"):
        assert f"{table}/date={date}/_manifest.json" in keys, table
    assert f"silver/events/event_date={date}/_manifest.json" in keys
    assert f"silver/quarantine/landing_date={date}/_manifest.json" in keys
    assert f"reports/validation/date={date}/report.json" in keys
    # Every listed file exists; no scratch, checksum or half-written object was uploaded.
    assert not [key for key in keys if "/_staging/" in key or key.endswith(".crc") or "_temporary" in key]
    head = storage.s3_client().head_object(Bucket="lake", Key=f"pe/gold/profiles/date={date}/_manifest.json")
    assert head["ServerSideEncryption"] == "AES256"
    # Nothing was written to a local lake: only temporary stage copies, removed after each stage.
    root = s3_run["root"]
    assert not (root / "var" / "lake").exists()
    assert not list((root / "var" / "work").iterdir())
    # The quarantine report matches what the generator injected for that date.
    report = json.loads(storage.read_bytes(f"{LAKE}/reports/validation/date={date}/report.json"))
    injected = json.loads((s3_run["landing"] / "raw" / "_manifests" / f"date={date}" / "injected.json").read_text())
    assert {k: v for k, v in report["by_reason"].items() if v} == {
        k: v for k, v in injected["injected"].items() if v}


def test_mlflow_artifacts_are_in_the_artifact_bucket(s3_run: dict) -> None:
    import mlflow

    config = s3_run["config"]
    keys = _keys(ARTIFACTS)
    assert any(key.endswith("/MLmodel") for key in keys), keys[:20]
    client = mlflow.MlflowClient(tracking_uri=config.mlflow_tracking_uri)
    champion = client.get_model_version_by_alias(config.mlflow.registered_model, config.mlflow.champion_alias)
    run = client.get_run(champion.run_id)
    assert run.info.artifact_uri.startswith(f"{ARTIFACTS}/")


def test_serving_tables_hold_the_scored_partitions(s3_run: dict) -> None:
    config, date = s3_run["config"], s3_run["date"]
    top_n = config.scoring.top_n
    users = {json.loads(line)["user_id"]
             for path in (s3_run["landing"] / "raw" / "users").rglob("*.jsonl")
             for line in path.read_text().splitlines() if line.strip()}
    with sqlite3.connect(config.serving_url.removeprefix("sqlite:///")) as connection:
        for table in ("recommendations", "user_insights", "similar_apps"):
            served = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            assert served == _parquet_rows(f"{LAKE}/gold/{table}/date={date}") > 0, table
        ranks: dict[str, list[int]] = {}
        for user, rank in connection.execute(
                "SELECT user_id, rank FROM recommendations WHERE surface = 'for_you' ORDER BY user_id, rank"):
            ranks.setdefault(user, []).append(rank)
        generated_for = {row[0][:10] for row in connection.execute("SELECT generated_for FROM recommendations")}
    assert ranks and all(found == list(range(1, top_n + 1)) for found in ranks.values())
    assert set(ranks) <= users  # the app's own ids (pseudonyms mapped back), every one a known user
    assert generated_for == {date}
