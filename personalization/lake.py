"""The data lake's layout: one function per table, so no path is spelled twice.

Zones:
- ``raw/``: the landing zone, immutable (only audited privacy deletion rewrites it).
  ``raw/events/date=D/*.jsonl`` (landing date D), ``raw/apps/date=D/apps.jsonl``
  (apps released on D), ``raw/users/date=D/users.jsonl`` (users who signed up on D),
  ``raw/_manifests/date=D/injected.json`` (what the generator injected, for tests).
- ``silver/``: validated, typed Parquet. ``silver/events/event_date=D``,
  ``silver/quarantine/landing_date=D``, ``silver/apps/date=D`` and
  ``silver/users/date=D`` (snapshots as of D).
- ``gold/``: per-date products (profiles, segments, features, scores).
- ``reports/``: validation run reports and Great Expectations Data Docs.
"""

from __future__ import annotations

import datetime as dt
import re

from personalization.config import Config

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def check_date(value: str | dt.date) -> str:
    """Return ``YYYY-MM-DD`` for a date, rejecting anything else before it reaches a path."""
    if isinstance(value, dt.date):
        return value.isoformat()
    if not isinstance(value, str) or not _DATE.match(value):
        raise ValueError(f"expected a date as YYYY-MM-DD, got {value!r}")
    dt.date.fromisoformat(value)  # rejects 2026-02-31
    return value


class Lake:
    """Paths (or URIs) of every lake table for one configuration."""

    def __init__(self, config: Config):
        self.root = config.lake_root.rstrip("/")

    def _join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # raw
    def raw_events(self, landing_date: str | None = None) -> str:
        base = self._join("raw", "events")
        return base if landing_date is None else f"{base}/date={check_date(landing_date)}"

    def raw_apps(self, date: str | None = None) -> str:
        base = self._join("raw", "apps")
        return base if date is None else f"{base}/date={check_date(date)}"

    def raw_users(self, date: str | None = None) -> str:
        base = self._join("raw", "users")
        return base if date is None else f"{base}/date={check_date(date)}"

    def raw_manifest(self, date: str) -> str:
        return self._join("raw", "_manifests", f"date={check_date(date)}", "injected.json")

    def world_manifest(self) -> str:
        """The generator's description of the world (scale, seed, dates)."""
        return self._join("raw", "_manifests", "world.json")

    def editorial(self) -> str:
        """Editorial inputs: featured list and denylist (JSON lines)."""
        return self._join("raw", "editorial")

    def sim_truth(self) -> str:
        """Hidden simulation traits (never read by the pipeline; for evaluation only)."""
        return self._join("sim", "user_traits.parquet")

    # silver
    def silver(self, table: str) -> str:
        return self._join("silver", table)

    # gold
    def gold(self, table: str) -> str:
        return self._join("gold", table)

    def partition(self, table_path: str, date: str, column: str = "date") -> str:
        return f"{table_path}/{column}={check_date(date)}"

    # reports
    def report(self, kind: str, date: str) -> str:
        return self._join("reports", kind, f"date={check_date(date)}")
