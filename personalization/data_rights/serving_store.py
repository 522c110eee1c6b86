"""The serving database's side of data rights.

Deletion removes the users' rows from every *kept* version (the live one and the
rollback ones), so a rollback can never bring them back. Identifiers formatted
into SQL come only from :mod:`personalization.serving.schema` (a discovered table
name must parse as ``<allow-listed name>__vNNNNNN`` and is rebuilt from the
allow-list and the integer); every id is a bound parameter.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from personalization.config import Config
from personalization.data_rights.ids import IdMatcher
from personalization.serving.db import dialect_of, iso, make_engine, write_transaction
from personalization.serving.schema import USER_TABLES, parse_physical_name, physical_name

#: Ids per bound IN list (SQLite allows 32766 variables; keep statements small).
IN_CHUNK = 500
#: Bookkeeping table that keeps the subject of every privacy action on purpose.
AUDIT_TABLE = "audit_log"
#: Stable (view) names read for exports, with their ORDER BY.
EXPORT_VIEWS = {
    "recommendations": "surface, rank",
    "user_insights": "user_id",
    "recommended_categories": "rank",
    "search_personalization": "category",
    "suggested_queries": "rank",
}


def _chunks(values: list[str], size: int = IN_CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def open_engine(config: Config) -> Engine | None:
    """An engine on the serving DB, or None when a SQLite file does not exist (never creates one)."""
    url = config.serving_url
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if not database or database == ":memory:" or not os.path.exists(database):
            return None
    return make_engine(url)


def _versioned_user_tables(engine: Engine) -> list[tuple[str, int]]:
    """``(name, version)`` of every physical per-user table present, by version then name."""
    found = []
    for table in sa.inspect(engine).get_table_names():
        parsed = parse_physical_name(table)
        if parsed is not None and parsed[0] in USER_TABLES:
            found.append(parsed)
    return sorted(found, key=lambda item: (item[1], item[0]))


def _bump_row_counts(connection: Connection, name: str, version: int, removed: int) -> None:
    """Keep ``serving_versions.row_counts`` equal to what the version's tables hold."""
    row = connection.execute(sa.text("SELECT row_counts FROM serving_versions WHERE version = :version"),
                             {"version": version}).first()
    if row is None or row.row_counts is None:
        return
    counts = row.row_counts if isinstance(row.row_counts, dict) else json.loads(row.row_counts)
    if name in counts:
        counts[name] = max(0, int(counts[name]) - removed)
        connection.execute(sa.text("UPDATE serving_versions SET row_counts = :counts WHERE version = :version"),
                           {"counts": json.dumps(counts, sort_keys=True), "version": version})


def purge_serving(config: Config, user_ids: list[str], *, dry_run: bool = False) -> dict[str, Any]:
    """Delete the users' rows from every kept version, one transaction per physical table.

    Returns ``{"rows", "by_user", "tables": {physical table: rows}}`` or ``{"skipped": why}``.
    With ``dry_run`` the rows are counted in read-only transactions and nothing changes.
    """
    engine = open_engine(config)
    if engine is None:
        return {"skipped": "no serving database", "rows": 0, "by_user": {}, "tables": {}}
    by_user: Counter = Counter()
    tables: dict[str, int] = {}
    sqlite = dialect_of(engine) == "sqlite"
    try:
        for name, version in _versioned_user_tables(engine):
            table = physical_name(name, version)  # rebuilt from the allow-list, never the raw discovered string
            if dry_run:
                tables[table] = _count_rows(engine, table, user_ids, by_user)
                continue
            with write_transaction(engine) as connection:
                if sqlite:
                    # Overwrite freed pages with zeros, so deleted rows do not linger in the file.
                    connection.exec_driver_sql("PRAGMA secure_delete = ON")
                removed = 0
                for chunk in _chunks(user_ids):
                    params = {"ids": chunk}
                    counted = connection.execute(
                        sa.text(f"SELECT user_id, COUNT(*) AS n FROM {table} WHERE user_id IN :ids GROUP BY user_id")
                        .bindparams(sa.bindparam("ids", expanding=True)), params).all()
                    for row in counted:
                        by_user[row.user_id] += int(row.n)
                        removed += int(row.n)
                    connection.execute(
                        sa.text(f"DELETE FROM {table} WHERE user_id IN :ids")
                        .bindparams(sa.bindparam("ids", expanding=True)), params)
                if removed:
                    _bump_row_counts(connection, name, version, removed)
            tables[table] = removed
        if sqlite and not dry_run:
            # Fold the WAL (which still holds pre-delete page images) into the file and truncate it.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    return {"rows": int(sum(by_user.values())), "by_user": dict(sorted(by_user.items())), "tables": tables}


def _count_rows(engine: Engine, table: str, user_ids: list[str], by_user: Counter) -> int:
    """Rows of ``table`` (an allow-listed physical name) held by the users, added to ``by_user``."""
    found = 0
    with engine.connect() as connection:
        for chunk in _chunks(user_ids):
            rows = connection.execute(
                sa.text(f"SELECT user_id, COUNT(*) AS n FROM {table} WHERE user_id IN :ids GROUP BY user_id")
                .bindparams(sa.bindparam("ids", expanding=True)), {"ids": chunk}).all()
            for row in rows:
                by_user[row.user_id] += int(row.n)
                found += int(row.n)
    return found


def _like_pattern(user_id: str) -> str:
    # '_' is a LIKE wildcard and may occur in ids: escape it ('!' is not an id character).
    return "%" + user_id.replace("_", "!_") + "%"


def scan_serving(config: Config, matcher: IdMatcher) -> dict[str, Any]:
    """Rows per id, in every table of the serving DB, whose text columns contain a deleted id token.

    Views are skipped (they show the tables' rows again). ``audit_log`` is counted
    apart as retained: it must keep who was deleted, when and by whom.
    """
    engine = open_engine(config)
    if engine is None:
        return {"skipped": "no serving database", "by_user": Counter(), "retained": Counter(), "tables": {}}
    by_user: Counter = Counter()
    retained: Counter = Counter()
    tables: dict[str, int] = {}
    ids = sorted(matcher.ids)
    try:
        inspector = sa.inspect(engine)
        quote = engine.dialect.identifier_preparer.quote
        with engine.connect() as connection:
            for table in sorted(inspector.get_table_names()):
                if table.startswith("sqlite_"):
                    continue
                # Text columns, and JSON ones read as text (PostgreSQL keeps audit/publish details as JSONB).
                columns = [(c["name"], isinstance(c["type"], sa.JSON)) for c in inspector.get_columns(table)
                           if isinstance(c["type"], (sa.String, sa.JSON))]
                if not columns:
                    continue
                expressions = [f"CAST({quote(name)} AS TEXT)" if is_json else quote(name) for name, is_json in columns]
                where = " OR ".join(f"{expression} LIKE :pattern ESCAPE '!'" for expression in expressions)
                query = sa.text(f"SELECT {', '.join(expressions)} FROM {quote(table)} WHERE {where}")
                found: Counter = Counter()
                for token in ids:
                    # LIKE narrows to substrings (one query per token, each row read once); the token
                    # check then drops neighbours such as u1 inside u10. Hits count under the owner.
                    rows = connection.execute(query, {"pattern": _like_pattern(token)})
                    found[matcher.owner_of[token]] += sum(
                        1 for row in rows if any(token in matcher.tokens_in_text(str(v)) for v in row if v is not None))
                found = +found  # drop zero counts
                if table == AUDIT_TABLE:
                    retained.update(found)
                else:
                    by_user.update(found)
                if found:
                    tables[table] = int(sum(found.values()))
    finally:
        engine.dispose()
    return {"by_user": by_user, "retained": retained, "tables": tables}


def read_user_rows(config: Config, user_id: str) -> dict[str, Any]:
    """The user's rows in the live stable views, per view (``{}`` when nothing was published)."""
    engine = open_engine(config)
    if engine is None:
        return {}
    try:
        views = set(sa.inspect(engine).get_view_names())
        result: dict[str, Any] = {}
        with engine.connect() as connection:
            for view, order in EXPORT_VIEWS.items():
                if view not in views:
                    continue
                rows = connection.execute(
                    sa.text(f"SELECT * FROM {view} WHERE user_id = :user_id ORDER BY {order}"),
                    {"user_id": user_id}).mappings().all()
                result[view] = [{key: iso(value) for key, value in row.items()} for row in rows]
        return result
    finally:
        engine.dispose()


def audit_rows(config: Config, subject: str) -> list[dict[str, Any]]:
    """Audit entries about ``subject`` (for exports: the user's own privacy history)."""
    engine = open_engine(config)
    if engine is None:
        return []
    try:
        if AUDIT_TABLE not in sa.inspect(engine).get_table_names():
            return []
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT who, action, details, at FROM audit_log WHERE subject = :subject ORDER BY id"),
                {"subject": subject}).mappings().all()
        return [{"action": row["action"], "at": iso(row["at"]),
                 "details": row["details"] if isinstance(row["details"], dict) else json.loads(row["details"] or "{}")}
                for row in rows]
    finally:
        engine.dispose()
