"""Great Expectations 1.x suites for the lake, kept in the repository as code.

Suites are built from ``jobs.columns`` so allowed values never drift from the
contracts. Two suites per validated table:

- ``silver_events_sample``: row-level checks (columns, types, ranges, allowed
  values, uniqueness) on a bounded, deterministic sample of the clean batch.
- ``silver_events_aggregates``: checks on a one-row table of whole-batch
  aggregates computed in Spark (duplicate ids, referential integrity, nulls), so
  nothing event-level is collected to the driver.
"""

from jobs.expectations.events import (
    AGGREGATE_COLUMNS,
    SAMPLE_ROWS,
    aggregate_suite,
    sample_suite,
)

__all__ = ["AGGREGATE_COLUMNS", "SAMPLE_ROWS", "aggregate_suite", "sample_suite"]
