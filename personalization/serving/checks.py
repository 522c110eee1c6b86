"""Checks that a serving version is fit to go live (before the switch) or is live (after it).

Great Expectations 1.x decides, with two suites kept here as code:

- ``serving_user_insights`` (row level): every ``user_insights`` row of the version,
  streamed from the database in batches of :data:`INSIGHT_CHUNK_ROWS` into pandas
  (insights in range, required fields present);
- ``serving_version`` (whole version): one row of violation counts, one column per
  relational rule, computed by parameterised SQL in the database (ranks 1..N
  contiguous with non-increasing scores per (user_id, surface), every active user has
  N for_you rows, anti-joins against the denylist, exclusions and deleted users, ...),
  each expected to be 0, plus each table's row count against its minimum. The rules
  are relational, so the database computes them where the rows are (memory stays
  bounded); only counts and a few example rows leave it.

A failed expectation becomes one reason (rule name, violation count, up to
:data:`EXAMPLES` examples). The same SQL runs on SQLite and PostgreSQL; GX runs on
pandas in an ephemeral context created once per process (its start-up takes seconds).

Identifiers come only from :mod:`personalization.serving.schema` (stable names or
``<name>__vNNNNNN`` built from an int); every value is a bound parameter, and the
expectation sets (active users, denylist, ...) are loaded into temporary tables.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from personalization.config import Config
from personalization.lake import Lake
from personalization.serving.db import dialect_of
from personalization.serving.schema import SERVING_TABLES, USER_TABLES, physical_name

#: Examples quoted per failed check in the error message.
EXAMPLES = 5
#: PostgreSQL work_mem for the check transaction only (SET LOCAL).
CHECK_WORK_MEM = "256MB"
#: Rows per INSERT/COPY batch when loading expectation sets into temp tables.
_BATCH = 10_000
#: user_insights rows per GX validation batch (read with a streaming cursor: bounded memory).
INSIGHT_CHUNK_ROWS = 100_000
#: Columns of user_insights the row-level suite reads (the first six are a violation's example).
INSIGHT_COLUMNS = ("user_id", "engagement_score", "churn_risk", "lifetime_value", "best_notification_hour",
                   "notification_cap_per_week", "model_version")
#: The rule checked row by row by the ``serving_user_insights`` suite.
INSIGHTS_RULE = "user_insights_null_or_out_of_range"
#: Column prefix of the row counts in the one-row table of the ``serving_version`` suite.
ROWS_PREFIX = "rows__"


class ServingValidationError(RuntimeError):
    """A serving version failed its checks; ``reasons`` lists each failed rule."""

    def __init__(self, reasons: list[str], version: int | None = None):
        self.reasons = list(reasons)
        self.version = version
        where = f"version {version}" if version is not None else "serving tables"
        super().__init__(f"{where} failed {len(self.reasons)} check(s):\n- " + "\n- ".join(self.reasons))


#: A set of ids: a list (of ids, pairs or dicts) or a path to a Parquet dataset / JSON-lines file.
IdSource = Any


@dataclass
class Expectations:
    """What a publish must satisfy. Built from the pipeline's ``expected`` dict by :func:`expectations_from`.

    Sets are lists or paths (a Parquet dataset or a JSON-lines file with the named
    columns), so the dict stays small in a run record; paths are streamed into
    temporary tables in batches, never held in memory whole.
    """

    #: Rows each active user must have on ``for_you`` (and the most any user may have).
    top_n: int
    #: ``user_id``s that must each have exactly ``top_n`` for_you rows and an insights row (None: no check).
    active_users: IdSource | None = None
    #: ``user_id``s that must appear in no table.
    deleted_users: IdSource = field(default_factory=list)
    #: ``app_id``s never recommended nor listed as similar.
    denylist: IdSource = field(default_factory=list)
    #: ``(user_id, app_id)`` pairs that must not be recommended to that user (installed, purchased, ...).
    exclusions: IdSource = field(default_factory=list)
    #: Minimum row count per table (an empty nightly publish is a broken scoring run).
    min_rows: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MIN_ROWS))
    #: ``personalization.privacy.UserIdMap``: the sets above hold the lake's pseudonyms, serving the app's ids.
    user_map: Any = None


DEFAULT_MIN_ROWS = {"recommendations": 1, "user_insights": 1}


def iter_ids(source: IdSource | None, columns: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """Rows of ``columns`` (as strings) from a list, list of pairs/dicts, or a file path, streamed."""
    if source is None:
        return
    if isinstance(source, (str, Path)):
        path = str(source)
        if path.endswith((".jsonl", ".json")):
            import pyarrow.json as pa_json

            batches: Iterable[Any] = pa_json.read_json(path).select(list(columns)).to_batches()  # editorial-sized
        else:
            import pyarrow.dataset as ds

            batches = ds.dataset(path, format="parquet").to_batches(columns=list(columns), batch_size=_BATCH)
        for batch in batches:
            for row in zip(*(batch.column(i).to_pylist() for i in range(len(columns))), strict=True):
                yield tuple(str(value) for value in row)
        return
    for item in source:
        if isinstance(item, dict):
            yield tuple(str(item[column]) for column in columns)
        elif isinstance(item, (list, tuple)):
            yield tuple(str(value) for value in item)
        else:
            yield (str(item),)


def expectations_from(config: Config, expected: dict[str, Any] | None, user_map: Any = None) -> Expectations:
    """Build :class:`Expectations` from the pipeline's ``expected`` dict.

    Keys (all optional): ``top_n`` (default ``config.scoring.top_n``), ``active_users``,
    ``deleted_users``, ``denylist`` (default: the lake's ``raw/editorial/denylist.jsonl``
    when it exists), ``exclusions`` (pairs, or a path with ``user_id``, ``app_id``),
    ``min_rows`` ({table: rows}; default ``{"recommendations": 1, "user_insights": 1}``).
    """
    expected = dict(expected or {})
    unknown = set(expected) - {"top_n", "active_users", "deleted_users", "denylist", "exclusions", "min_rows"}
    if unknown:
        raise ValueError(f"unknown expectation keys {sorted(unknown)}")
    denylist = expected.get("denylist")
    if denylist is None:
        default = Path(Lake(config).editorial()) / "denylist.jsonl"
        denylist = str(default) if default.exists() else []
    given = expected.get("min_rows")
    min_rows = dict(DEFAULT_MIN_ROWS) if given is None else {str(k): int(v) for k, v in given.items()}
    for table in min_rows:
        if table not in SERVING_TABLES:
            raise ValueError(f"min_rows names unknown table {table!r}")
    return Expectations(
        top_n=int(expected.get("top_n") or config.scoring.top_n),
        active_users=expected.get("active_users"),
        deleted_users=expected.get("deleted_users") or [],
        denylist=denylist,
        exclusions=expected.get("exclusions") or [],
        min_rows=min_rows,
        user_map=user_map,
    )


# --------------------------------------------------------------- temp tables
_TEMP_TABLES = {
    "pe_check_active_users": ("user_id",),
    "pe_check_deleted_users": ("user_id",),
    "pe_check_denylist": ("app_id",),
    "pe_check_exclusions": ("user_id", "app_id"),
}


def _load_temp(connection: Connection, table: str, rows: Iterator[tuple[str, ...]]) -> int:
    """Stream ``rows`` into a temp table in batches (COPY on PostgreSQL); returns the rows loaded.

    Duplicates are allowed here; the rules read these tables through ``SELECT DISTINCT``.
    """
    columns = _TEMP_TABLES[table]
    connection.exec_driver_sql(f"CREATE TEMP TABLE {table} ({', '.join(f'{c} TEXT NOT NULL' for c in columns)})")
    postgres = dialect_of(connection) == "postgresql"
    loaded = 0
    while True:
        batch = list(itertools.islice(rows, _BATCH))
        if not batch:
            break
        loaded += len(batch)
        if postgres:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows(batch)
            buffer.seek(0)
            cursor = connection.connection.dbapi_connection.cursor()
            cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", buffer)
            cursor.close()
        else:
            placeholders = ", ".join("?" for _ in columns)
            connection.exec_driver_sql(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", batch)
    connection.exec_driver_sql(f"CREATE INDEX {table}_ix ON {table} ({', '.join(columns)})")
    if postgres:
        connection.exec_driver_sql(f"ANALYZE {table}")  # temp tables are never auto-analysed
    return loaded


def _drop_temps(connection: Connection) -> None:
    for table in _TEMP_TABLES:
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")


# --------------------------------------------------------------------- rules
def _ranked_checks(prefix: str, table: str, keys: str, score: str | None) -> list[tuple[str, str]]:
    """Duplicate ranks, ranks not 1..n contiguous, scores increasing with rank, per ``keys``."""
    checks = [
        (f"{prefix}_duplicate_rank",
         f"SELECT {keys}, rank, COUNT(*) AS copies FROM {table} GROUP BY {keys}, rank HAVING COUNT(*) > 1"),
        (f"{prefix}_ranks_not_contiguous",
         f"SELECT {keys}, MIN(rank) AS min_rank, MAX(rank) AS max_rank, COUNT(*) AS n FROM {table} "
         f"GROUP BY {keys} HAVING MIN(rank) <> 1 OR MAX(rank) <> COUNT(*) OR COUNT(DISTINCT rank) <> COUNT(*)"),
    ]
    if score:
        checks.append((
            f"{prefix}_score_increases_with_rank",
            f"SELECT {keys}, rank, {score}, previous_score FROM (SELECT {keys}, rank, {score}, "
            f"LAG({score}) OVER (PARTITION BY {keys} ORDER BY rank) AS previous_score FROM {table}) ordered "
            f"WHERE {score} > previous_score",
        ))
    return checks


def _rules(names: dict[str, str], expectations: Expectations) -> list[tuple[str, str | None]]:
    """``(check name, SQL returning the violating rows)`` in reason order; parameters ``:date`` and
    ``:top_n``. SQL None: the rule is checked row by row by a GX suite instead."""
    rec, ins, sim = names["recommendations"], names["user_insights"], names["similar_apps"]
    cats, boosts, queries = (names["recommended_categories"], names["search_personalization"],
                             names["suggested_queries"])
    rules: list[tuple[str, str | None]] = [
        ("recommendations_null_fields",
         f"SELECT user_id, surface, rank, app_id FROM {rec} WHERE user_id IS NULL OR surface IS NULL "
         "OR rank IS NULL OR app_id IS NULL OR score IS NULL OR reason IS NULL OR model_version IS NULL "
         "OR variant IS NULL OR generated_for IS NULL OR published_at IS NULL"),
        *_ranked_checks("recommendations", rec, "user_id, surface", "score"),
        ("recommendations_duplicate_app",
         f"SELECT user_id, surface, app_id, COUNT(*) AS copies FROM {rec} "
         "GROUP BY user_id, surface, app_id HAVING COUNT(*) > 1"),
        ("for_you_longer_than_top_n",
         f"SELECT user_id, COUNT(*) AS n FROM {rec} WHERE surface = 'for_you' "
         "GROUP BY user_id HAVING COUNT(*) > :top_n"),
        ("generated_for_mismatch",
         f"SELECT 'recommendations' AS tbl, user_id, generated_for FROM {rec} WHERE generated_for <> :date "
         f"UNION ALL SELECT 'user_insights', user_id, generated_for FROM {ins} WHERE generated_for <> :date"),
        (INSIGHTS_RULE, None),  # row by row in GX: insights_suite()
        ("user_insights_duplicate_user",
         f"SELECT user_id, COUNT(*) AS copies FROM {ins} GROUP BY user_id HAVING COUNT(*) > 1"),
        ("similar_apps_null_or_self",
         f"SELECT app_id, rank, similar_app_id FROM {sim} WHERE app_id IS NULL OR rank IS NULL "
         "OR similar_app_id IS NULL OR score IS NULL OR similar_app_id = app_id"),
        *_ranked_checks("similar_apps", sim, "app_id", "score"),
        ("recommended_categories_null_fields",
         f"SELECT user_id, rank, category FROM {cats} WHERE user_id IS NULL OR rank IS NULL "
         "OR category IS NULL OR score IS NULL"),
        *_ranked_checks("recommended_categories", cats, "user_id", "score"),
        ("search_personalization_null_or_duplicate",
         f"SELECT user_id, category, COUNT(*) AS copies FROM {boosts} GROUP BY user_id, category "
         "HAVING COUNT(*) > 1 OR user_id IS NULL OR category IS NULL OR COUNT(boost) < COUNT(*)"),
        ("suggested_queries_null_fields",
         f"SELECT user_id, rank, query FROM {queries} WHERE user_id IS NULL OR rank IS NULL OR query IS NULL"),
        *_ranked_checks("suggested_queries", queries, "user_id", None),
        ("denylisted_app",
         f"SELECT 'recommendations' AS tbl, r.user_id AS owner, r.app_id FROM {rec} r "
         "JOIN (SELECT DISTINCT app_id FROM pe_check_denylist) d ON d.app_id = r.app_id "
         f"UNION ALL SELECT 'similar_apps', s.app_id, s.similar_app_id FROM {sim} s "
         "JOIN (SELECT DISTINCT app_id FROM pe_check_denylist) d ON d.app_id = s.similar_app_id"),
        ("excluded_app",
         f"SELECT r.user_id, r.surface, r.app_id FROM {rec} r "
         "JOIN (SELECT DISTINCT user_id, app_id FROM pe_check_exclusions) e "
         "ON e.user_id = r.user_id AND e.app_id = r.app_id"),
        ("deleted_user",
         " UNION ALL ".join(
             f"SELECT '{table}' AS tbl, t.user_id FROM {names[table]} t "
             "JOIN (SELECT DISTINCT user_id FROM pe_check_deleted_users) d ON d.user_id = t.user_id"
             for table in USER_TABLES
         )),
    ]
    if expectations.active_users is not None:
        rules += [
            ("active_user_without_top_n_for_you",
             f"SELECT a.user_id, COUNT(r.rank) AS n FROM (SELECT DISTINCT user_id FROM pe_check_active_users) a "
             f"LEFT JOIN {rec} r "
             "ON r.user_id = a.user_id AND r.surface = 'for_you' GROUP BY a.user_id HAVING COUNT(r.rank) <> :top_n"),
            ("active_user_without_insights",
             f"SELECT a.user_id FROM (SELECT DISTINCT user_id FROM pe_check_active_users) a "
             f"LEFT JOIN {ins} i ON i.user_id = a.user_id "
             "WHERE i.user_id IS NULL"),
        ]
    return rules


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars from pandas
    if isinstance(value, float) and value != value:
        return None  # NaN read through pandas: NULL in the database
    return value if isinstance(value, (int, float, str)) or value is None else str(value)


# --------------------------------------------------------------- Great Expectations
def insights_suite(name: str = "serving_user_insights") -> Any:
    """Row-level expectations on ``user_insights``: required fields present, scores and plan in range.

    engagement_score in [0, 100], churn_risk in [0, 1], lifetime_value >= 0 (currency units),
    best_notification_hour in [0, 23] and notification_cap_per_week >= 0 when present.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations: list = [gxe.ExpectColumnValuesToNotBeNull(column=column) for column in
                          ("user_id", "model_version", "engagement_score", "churn_risk", "lifetime_value")]
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(column="engagement_score", min_value=0, max_value=100),
        gxe.ExpectColumnValuesToBeBetween(column="churn_risk", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="lifetime_value", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="best_notification_hour", min_value=0, max_value=23),
        gxe.ExpectColumnValuesToBeBetween(column="notification_cap_per_week", min_value=0),
    ]
    return gx.ExpectationSuite(name=name, expectations=expectations)


def version_suite(rule_names: Iterable[str], min_rows: dict[str, int], name: str = "serving_version") -> Any:
    """Whole-version expectations on a one-row table: each rule's violation count is 0 and each
    table has at least its minimum rows (column ``rows__<table>``)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations: list = [gxe.ExpectTableRowCountToEqual(value=1)]
    expectations += [gxe.ExpectColumnValuesToBeBetween(column=f"{ROWS_PREFIX}{table}", min_value=minimum)
                     for table, minimum in sorted(min_rows.items())]
    expectations += [gxe.ExpectColumnValuesToBeBetween(column=rule, min_value=0, max_value=0)
                     for rule in rule_names]
    return gx.ExpectationSuite(name=name, expectations=expectations)


_GX_LOCK = threading.Lock()
_GX: dict[str, Any] = {}  # one ephemeral context per process: GX start-up takes seconds


def gx_validate(suite: Any, frame: Any, result_format: str = "SUMMARY") -> Any:
    """Validate a pandas ``frame`` against ``suite`` (the whole frame as one batch); returns GX's result."""
    with _GX_LOCK:
        if not _GX:
            os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            # GX logs every store save at INFO; failures come back as reasons instead.
            logging.getLogger("great_expectations").setLevel(logging.WARNING)
            context = gx.get_context(mode="ephemeral")
            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            _GX.update(gx=gx, context=context, source=context.data_sources.add_pandas("serving"))
        gx, context, source = _GX["gx"], _GX["context"], _GX["source"]
        asset = next((a for a in source.assets if a.name == suite.name), None) or source.add_dataframe_asset(suite.name)
        batch = next((b for b in asset.batch_definitions if b.name == "whole"), None)
        batch = batch or asset.add_batch_definition_whole_dataframe("whole")
        suite = context.suites.add_or_update(suite)
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=suite))
        return definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)


def _check_insights(connection: Connection, table: str) -> tuple[int, list[list[Any]]]:
    """Rows of ``table`` failing :func:`insights_suite`, and up to :data:`EXAMPLES` of them.

    Streams the table in batches of :data:`INSIGHT_CHUNK_ROWS` (a server-side cursor on
    PostgreSQL), so memory is one batch whatever the table's size.
    """
    import pandas as pd

    suite = insights_suite()
    count, examples = 0, []
    # Per statement (Connection.execution_options would switch the whole connection to streaming).
    result = connection.execute(sa.text(f"SELECT {', '.join(INSIGHT_COLUMNS)} FROM {table}"),
                                execution_options={"stream_results": True, "max_row_buffer": INSIGHT_CHUNK_ROWS})
    with result:  # closes the server-side cursor before the next statement
        for rows in result.partitions(INSIGHT_CHUNK_ROWS):
            frame = pd.DataFrame([tuple(row) for row in rows], columns=list(INSIGHT_COLUMNS))
            for column in INSIGHT_COLUMNS[1:6]:
                frame[column] = pd.to_numeric(frame[column], errors="coerce")  # NULL -> NaN (skipped in ranges)
            validation = gx_validate(suite, frame, result_format="COMPLETE")
            if validation.success:
                continue
            bad: set[int] = set()  # a row may fail several expectations: count it once
            for outcome in validation.results:
                if not outcome.success:
                    bad.update(int(i) for i in outcome.result.get("unexpected_index_list") or [])
            count += len(bad)
            for index in sorted(bad)[:max(0, EXAMPLES - len(examples))]:
                examples.append([_jsonable(v) for v in frame.iloc[index, :6].tolist()])
    return count, examples


def _version_reasons(row_counts: dict[str, int], min_rows: dict[str, int],
                     violations: dict[str, tuple[int, list[list[Any]]]]) -> list[str]:
    """Validate the one-row table of counts with :func:`version_suite`; one reason per failed expectation,
    in suite order (row minimums, then the rules in :func:`_rules` order)."""
    import pandas as pd

    frame = pd.DataFrame([{**{f"{ROWS_PREFIX}{table}": row_counts[table] for table in min_rows},
                           **{name: count for name, (count, _) in violations.items()}}])
    result = gx_validate(version_suite(list(violations), min_rows), frame)
    failed = {r.expectation_config.kwargs.get("column") for r in result.results if not r.success}
    reasons = [f"{table}_too_few_rows: {row_counts[table]} row(s), expected at least {minimum}"
               for table, minimum in sorted(min_rows.items()) if f"{ROWS_PREFIX}{table}" in failed]
    for name, (count, examples) in violations.items():
        if name in failed:
            reasons.append(f"{name}: {count} violation(s), e.g. {json.dumps(examples)}")
    return reasons


def run_checks(
    connection: Connection, date: str, expectations: Expectations, version: int | None = None
) -> tuple[list[str], dict[str, int]]:
    """Run every rule on a version's tables (or on the stable views when ``version`` is None).

    Returns ``(reasons, row_counts)``: one human-readable reason per failed rule
    (with the violation count and up to :data:`EXAMPLES` examples) and each table's rows.
    Must run inside a transaction: it creates and drops temporary tables.
    """
    names = {name: name if version is None else physical_name(name, version) for name in SERVING_TABLES}
    if dialect_of(connection) == "postgresql":
        # Sorts and hash aggregates of the group checks stay in memory (about 40% faster at 1M rows).
        connection.exec_driver_sql(f"SET LOCAL work_mem = '{CHECK_WORK_MEM}'")
    _drop_temps(connection)

    def users(rows: Iterator[tuple[str, ...]]) -> Iterator[tuple[str, ...]]:
        # Pseudonyms become app ids; ids already in the app's form (deleted users) pass unchanged.
        return rows if expectations.user_map is None else expectations.user_map.map_rows(rows)

    _load_temp(connection, "pe_check_active_users", users(iter_ids(expectations.active_users, ("user_id",))))
    _load_temp(connection, "pe_check_deleted_users", users(iter_ids(expectations.deleted_users, ("user_id",))))
    _load_temp(connection, "pe_check_denylist", iter_ids(expectations.denylist, ("app_id",)))
    _load_temp(connection, "pe_check_exclusions", users(iter_ids(expectations.exclusions, ("user_id", "app_id"))))
    params = {"date": date, "top_n": expectations.top_n}
    rules = _rules(names, expectations)
    violations: dict[str, tuple[int, list[list[Any]]]] = {}
    try:
        row_counts = {
            name: int(connection.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())
            for name, table in names.items()
        }
        for name, query in rules:
            if query is None:
                violations[name] = _check_insights(connection, names["user_insights"])
                continue
            # Examples first: a passing rule (the usual case) costs one scan, not two.
            examples = connection.execute(
                sa.text(f"SELECT * FROM ({query}) violations LIMIT {EXAMPLES}"), params).all()
            count = 0
            if examples:
                count = int(connection.execute(
                    sa.text(f"SELECT COUNT(*) FROM ({query}) violations"), params).scalar_one())
            violations[name] = (count, [[_jsonable(v) for v in row] for row in examples])
    finally:
        _drop_temps(connection)
    return _version_reasons(row_counts, expectations.min_rows, violations), row_counts
