"""Pieces shared by the data-rights modules: store names, the clock, the audit, date partitions."""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import Any

from personalization.config import Config
from personalization.data_rights import files
from personalization.serving.publish import record_audit

#: Store names used in every result, in the order they are reported. ``run_records`` (run records
#: and logs under ``var/``) is searched by verification only: nothing there may hold a personal id.
STORES = ("raw", "silver", "quarantine", "gold", "lake_other", "serving_db", "redis", "mlflow", "run_records")

_PARTITION = re.compile(r"^(?P<column>[A-Za-z_]+)=(?P<value>\d{4}-\d{2}-\d{2})$")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def audit(config: Config, who: str, action: str, subject: str | None, details: dict[str, Any]) -> int:
    """One audit_log row; creates the SQLite file's folder first (the audit must not be lost)."""
    url = config.serving_url
    if url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(url[len("sqlite:///"):]) or ".", exist_ok=True)
    return record_audit(config, who, action, subject, details)


def partitions(table_prefix: str) -> list[tuple[str, str, str]]:
    """``(folder name, column, YYYY-MM-DD)`` of a table's date partitions, oldest first."""
    found = []
    for name in files.child_dirs(table_prefix):
        match = _PARTITION.match(name)
        if match:
            found.append((name, match["column"], match["value"]))
    return sorted(found, key=lambda item: item[2])
