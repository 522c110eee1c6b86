"""Late-arriving events make earlier gold partitions stale; they are found and rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import build_profiles
from jobs import columns as C
from jobs import validate_raw_events as V
from jobs.recompute_late_partitions import main as recompute_late_partitions
from jobs.recompute_late_partitions import stale_dates
from personalization.privacy import lake_user_ids
from tests.test_jobs_validate import D1, D2, _build_lake, _config


def test_stale_dates_are_existing_partitions_whose_window_covers_a_late_event() -> None:
    existing = ["2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04", "2026-10-05", "2026-10-06"]
    # window 3: an event of 10-02 reaches the profiles of 10-02, 10-03 and 10-04.
    assert stale_dates(["2026-10-02"], existing, "2026-10-06", window_days=3) == [
        "2026-10-02", "2026-10-03", "2026-10-04"]
    # the run date itself is rebuilt by tonight's run anyway; later dates are never stale
    assert stale_dates(["2026-10-05"], existing, "2026-10-06", window_days=3) == ["2026-10-05"]
    assert stale_dates(["2026-10-01", "2026-10-04"], existing, "2026-10-05", window_days=1) == [
        "2026-10-01", "2026-10-04"]
    assert stale_dates([], existing, "2026-10-06", window_days=90) == []
    # a late event older than every partition's window touches nothing
    assert stale_dates(["2026-09-01"], existing, "2026-10-06", window_days=7) == []
    with pytest.raises(ValueError):
        stale_dates(["2026-13-01"], existing, "2026-10-06", window_days=3)


def _purchases(spark, config, date: str) -> dict[str, int]:
    """Purchase counts per app user id (the lake may hold pseudonyms: map them back)."""
    path = f"{config.lake_root}/gold/profiles/date={date}"
    lake_ids = dict(zip(lake_user_ids(config, ["u1", "u2"]), ["u1", "u2"], strict=True))
    return {lake_ids[row[C.USER_ID]]: row[C.PURCHASE_COUNT] for row in spark.read.parquet(path).collect()}


def test_late_purchase_is_recomputed_into_the_earlier_profile(spark, tmp_path) -> None:
    _build_lake(tmp_path)
    config = _config(tmp_path)
    V.main(config, D1, spark, run_expectations_suites=False)
    build_profiles.main(config, D1, spark=spark)
    assert _purchases(spark, config, D1) == {"u1": 0, "u2": 0}

    # D2's landing batch holds e15: u2's purchase of a1 on D1, arriving a day late.
    report = V.main(config, D2, spark, run_expectations_suites=False)
    assert report["late_event_dates"] == [D1]
    result = recompute_late_partitions(config, D2, spark=spark)  # reads the validation report of D2
    assert result == {"date": D2, "late_event_dates": [D1], "stale": [D1], "recomputed": [D1], "skipped": []}
    assert _purchases(spark, config, D1) == {"u1": 0, "u2": 1}
    # The late date's daily aggregates were restated first, with what had landed by D2.
    folded = json.loads(Path(f"{config.lake_root}/gold/daily_aggregates_state/folded/event_date={D1}.json").read_text())
    assert (folded["event_date"], folded["known_by"]) == (D1, D2)
    assert spark.read.parquet(f"{config.lake_root}/gold/user_features/date={D1}").count() == 2

    # bounded: with the limit at 0 the stale date is reported and left alone
    config.validation.recompute_late_max_days = 0
    assert recompute_late_partitions(config, D2, spark=spark)["skipped"] == [D1]
    # without D2's validation report the job says what to run first
    with pytest.raises(FileNotFoundError, match="run validate_raw_events for 2026-10-05 first"):
        recompute_late_partitions(config, "2026-10-05", spark=spark)
