"""A backfill of 2 consecutive dates, run twice, gives the same rows.

It runs on a copy of the session's tiny world (every landing date ingested, the
last one run), so the backfilled dates have their history and training pairs.

Runs go through the nightly DAG exactly as `airflow backfill create` schedules
them: one run per logical date, no conf (the tasks take the date from the
logical date), executed with ``dag.test()`` in one child process
(``personalization.airflow_runner.backfill_in_process``).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from personalization.config import Config, load_config
from tests.worlds import World, copy_world

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

#: Gold tables of the data layer (Spark jobs), one partition per run date.
DATA_TABLES = ("profiles", "segments", "user_features", "app_features", "interactions", "popularity")
#: Gold tables written by scoring (they depend on the model that scores).
SCORED_TABLES = ("recommendations", "user_insights", "similar_apps")


def _rows(path: Path) -> int:
    import pyarrow.dataset as ds

    return ds.dataset(path, format="parquet").count_rows() if path.exists() else -1


def _counts(config: Config, dates: list[str]) -> dict:
    lake = Path(config.lake_root)
    counts: dict = {"lake": {}, "scored": {}, "serving": {}, "published": {}}
    for date in dates:
        counts["lake"][date] = {
            "silver/events": _rows(lake / "silver" / "events" / f"event_date={date}"),
            "silver/quarantine": _rows(lake / "silver" / "quarantine" / f"landing_date={date}"),
            **{f"gold/{table}": _rows(lake / "gold" / table / f"date={date}") for table in DATA_TABLES},
        }
        counts["scored"][date] = {table: _rows(lake / "gold" / table / f"date={date}") for table in SCORED_TABLES}
    database = config.serving_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as connection:
        for table in ("recommendations", "user_insights", "similar_apps"):
            counts["serving"][table] = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        # The row counts of the last publish of each date.
        for generated_for, row_counts in connection.execute(
            "SELECT generated_for, row_counts FROM publish_log WHERE action = 'publish' AND status = 'succeeded' "
            "ORDER BY id"
        ):
            counts["published"][str(generated_for)[:10]] = json.loads(row_counts)
    return counts


#: Fewest models and clusters: the test is about idempotency, not quality.
SETTINGS = {"PE_GENERATOR__SCALE": "tiny", "PE_TRAINING__MODELS": "popularity", "PE_SEGMENTS__K_MIN": "2",
            "PE_SEGMENTS__K_MAX": "3", "PE_SPARK__MASTER": "local[2]", "PE_SPARK__SHUFFLE_PARTITIONS": "2",
            "PE_SPARK__DRIVER_MEMORY": "1g"}


@pytest.fixture(scope="module")
def two_backfills(tiny_world: World, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, list[str]]:
    from personalization.airflow_runner import backfill_in_process

    world = copy_world(tiny_world, tmp_path_factory.mktemp("backfill"))
    dates = sorted(path.name.split("=", 1)[1] for path in (world.lake / "raw" / "events").iterdir())[-2:]
    patch = pytest.MonkeyPatch()
    try:
        patch.delenv("PE_CONFIG", raising=False)
        for name, value in {**SETTINGS, "PE_ROOT": str(world.root)}.items():
            patch.setenv(name, value)  # the DAG's tasks (a child process) read the same configuration
        config = load_config()
        backfill_in_process(config, dates)
        first = _counts(config, dates)
        backfill_in_process(config, dates)
        second = _counts(config, dates)
    finally:
        patch.undo()
    return first, second, dates


def test_backfill_twice_rebuilds_the_same_lake_partitions(two_backfills: tuple[dict, dict, list[str]]) -> None:
    first, second, dates = two_backfills
    for date in dates:
        assert second["lake"][date] == first["lake"][date], date
        assert all(rows > 0 for rows in first["lake"][date].values()), (date, first["lake"][date])
    assert sorted(first["published"]) == dates  # every date was scored and published (the last one also by the world's own run)


def test_backfill_twice_scores_and_publishes_the_same_rows(two_backfills: tuple[dict, dict, list[str]]) -> None:
    first, second, _ = two_backfills
    assert second["scored"] == first["scored"]
    assert second["published"] == first["published"]
    assert second["serving"] == first["serving"]
