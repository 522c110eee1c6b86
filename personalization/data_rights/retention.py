"""Retention: drop raw, aggregate and model data older than the configured number of days."""

from __future__ import annotations

import datetime as dt
from typing import Any

from personalization import storage
from personalization.config import Config
from personalization.data_rights import files, lake_store, mlflow_store
from personalization.data_rights.common import audit, partitions
from personalization.data_rights.ids import validate_actor
from personalization.lake import Lake, check_date


def _older_than(found: list[tuple[str, str, str]], cutoff: dt.date) -> list[str]:
    """Partition folders dated strictly before ``cutoff``."""
    return [folder for folder, _, value in found if dt.date.fromisoformat(value) < cutoff]


def apply_retention(config: Config, today: str | dt.date, *, requested_by: str = "retention") -> dict[str, Any]:
    """Delete what is older than the configured retention on ``today`` (UTC), then audit it.

    - ``raw/events/date=D`` and ``raw/_manifests/date=D`` when ``today - D > raw_retention_days``
      (raw/users and raw/apps are the account and catalogue records, kept while they exist);
    - every date partition ``<col>=D`` of the silver and gold tables when
      ``today - D > aggregate_retention_days`` (the tombstone is not date-partitioned);
    - MLflow registered versions and logged models created before ``today - model_retention_days``,
      never an aliased (champion) version.

    A retention of 0 or less disables that rule. Returns what was deleted.
    """
    day = dt.date.fromisoformat(check_date(today))
    actor = validate_actor(requested_by)
    privacy = config.privacy
    lake = Lake(config)
    result: dict[str, Any] = {"today": day.isoformat(), "raw": [], "aggregates": [], "models": None}
    if privacy.raw_retention_days > 0:
        cutoff = day - dt.timedelta(days=privacy.raw_retention_days)
        for table in (lake.raw_events(), f"{lake.root}/raw/_manifests"):
            for folder in _older_than(partitions(table), cutoff):
                files_removed = storage.delete_prefix(f"{table}/{folder}")
                result["raw"].append({"partition": files.relative(lake.root, f"{table}/{folder}"),
                                      "files": files_removed})
    if privacy.aggregate_retention_days > 0:
        cutoff = day - dt.timedelta(days=privacy.aggregate_retention_days)
        for zone in ("silver", "gold"):
            zone_root = f"{lake.root}/{zone}"
            for table_name in files.child_dirs(zone_root):
                table = f"{zone_root}/{table_name}"
                if files.relative(lake.root, table) == lake_store.TOMBSTONE:
                    continue
                for folder in _older_than(partitions(table), cutoff):
                    files_removed = storage.delete_prefix(f"{table}/{folder}")
                    result["aggregates"].append({"partition": files.relative(lake.root, f"{table}/{folder}"),
                                                 "files": files_removed})
    if privacy.model_retention_days > 0:
        start_of_day = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
        result["models"] = mlflow_store.apply_model_retention(
            config, start_of_day - dt.timedelta(days=privacy.model_retention_days))
    audit(config, actor, "retention", None, {
        "today": result["today"], "raw_partitions": len(result["raw"]),
        "aggregate_partitions": len(result["aggregates"]), "models": result["models"],
        "retention_days": {"raw": privacy.raw_retention_days, "aggregate": privacy.aggregate_retention_days,
                           "model": privacy.model_retention_days},
    })
    return result
