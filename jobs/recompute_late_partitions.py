"""Spark job: recompute what late-arriving events made stale.

A landing batch for date D can hold events of earlier dates (late arrivals).
``validate_raw_events`` merges them into their own event-date partitions and lists
those dates in its record (``late_event_dates``). Tonight's run for D already sees
them, because every job reads its rolling window from silver. What is stale are the
gold partitions published earlier, for dates p < D whose window covers a late event:
a profile of date p reads events of ``p - window_days + 1 .. p``, so an event of date
e reaches the profiles and features of every p in ``e .. e + window_days - 1``.

Each nightly partition is built from what had landed by its own night (``known_by``
= its date), so a rerun of that night reproduces it. :func:`stale_dates` finds the
existing partitions that late events touch; :func:`recompute` restates the newest
``validation.recompute_late_max_days`` of them with what has landed by tonight
(``known_by`` = D): the daily aggregates of the late dates (``build_daily_aggregates``,
with ``profiles.source: aggregates``), then profiles, then features, each an overwrite of one date partition,
and reports the rest as stale-but-kept, so the cost per night stays bounded.
Segments are not rebuilt: segment ids are matched night to night against the previous
night's centroids, and rewriting history would re-label users behind the apps' backs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from pyspark.sql import SparkSession

from jobs import build_daily_aggregates, build_features, build_profiles, io
from jobs.io import list_partitions
from jobs.spark import get_spark
from personalization.config import Config
from personalization.lake import Lake, check_date

log = logging.getLogger(__name__)


def stale_dates(late_event_dates: Iterable[str], existing_dates: Iterable[str], run_date: str,
                window_days: int) -> list[str]:
    """Existing partition dates (before ``run_date``) whose window covers a late event date.

    Args:
        late_event_dates: event dates (``YYYY-MM-DD``) of tonight's late arrivals.
        existing_dates: dates that already have a gold partition.
        run_date: tonight's landing date; it is never returned (tonight rebuilds it anyway).
        window_days: the profile window length in days (>= 1).

    Returns:
        The affected dates, oldest first.
    """
    run_day = dt.date.fromisoformat(check_date(run_date))
    late_days = sorted(dt.date.fromisoformat(check_date(value)) for value in late_event_dates)
    affected: list[str] = []
    for value in sorted(set(existing_dates)):
        day = dt.date.fromisoformat(check_date(value))
        if day >= run_day:
            continue
        # Event date e is inside the window of p when p - window_days < e <= p.
        if any(day - dt.timedelta(days=window_days) < late <= day for late in late_days):
            affected.append(value)
    return affected


def recompute(config: Config, date: str, late_event_dates: Sequence[str], spark: SparkSession) -> dict[str, Any]:
    """Rebuild gold profiles and features of the dates that tonight's late events made stale.

    Returns a JSON-able record: ``late_event_dates``, ``stale`` (every affected date),
    ``recomputed`` (the dates rebuilt, newest ``validation.recompute_late_max_days``) and
    ``skipped`` (affected dates left as they are, older than that bound).
    """
    date = check_date(date)
    lake = Lake(config)
    existing = list_partitions(spark, lake.gold("profiles"), "date")
    stale = stale_dates(late_event_dates, existing, date, config.profiles.window_days)
    limit = max(0, int(config.validation.recompute_late_max_days))
    recomputed = stale[len(stale) - limit:] if limit else []
    skipped = [value for value in stale if value not in recomputed]
    if recomputed and config.profiles.source == "aggregates":
        # The late dates' aggregates first (a no-op when build_daily_aggregates ran tonight).
        build_daily_aggregates.main(config, date, spark=spark)
    for value in recomputed:
        log.info("late arrivals: recomputing profiles and features of %s", value)
        build_profiles.main(config, value, spark=spark, known_by=date)
        build_features.main(config, value, spark=spark, known_by=date)
    if skipped:
        log.warning("late arrivals: %d older partition(s) stay stale (validation.recompute_late_max_days=%d): %s",
                    len(skipped), limit, ", ".join(skipped))
    return {
        "late_event_dates": sorted(late_event_dates),
        "stale": stale,
        "recomputed": recomputed,
        "skipped": skipped,
    }


def main(config: Config, date: str, spark: SparkSession | None = None) -> dict[str, Any]:
    """Restate the partitions that the late events of landing date ``date`` made stale.

    The late event dates come from ``validate_raw_events``' report of ``date``
    (``reports/validation/date=D/report.json``), so this job runs after it.
    """
    date = check_date(date)
    spark = spark or get_spark(config, "recompute_late_partitions")
    report_path = f"{Lake(config).report('validation', date)}/report.json"
    if not io.path_exists(spark, report_path):
        raise FileNotFoundError(f"{report_path} is missing: run validate_raw_events for {date} first")
    late_event_dates = json.loads(io.read_text(spark, report_path)).get("late_event_dates", [])
    return {"date": date, **recompute(config, date, late_event_dates, spark)}


if __name__ == "__main__":
    from jobs import submit

    raise SystemExit(submit.run("recompute_late_partitions", main))
