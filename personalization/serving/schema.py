"""The serving contract as data: table names, columns, logical types and indexes.

Everything that formats an identifier into SQL takes it from here: the stable
names in :data:`SERVING_TABLES` and version numbers (integers), so no table name
ever comes from user input. The versioned physical tables (``recommendations__v000012``)
are created from these specs on each publish; the persistent bookkeeping tables
(``publish_log``, ``audit_log``, ...) come from the numbered migrations under
``sql/<dialect>/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Logical column kinds, mapped to one SQL type per dialect. Floats are DOUBLE
#: PRECISION on PostgreSQL so both databases return the same values (SQLite REAL is 8 bytes).
SQL_TYPES: dict[str, dict[str, str]] = {
    "text": {"sqlite": "TEXT", "postgresql": "TEXT"},
    "int": {"sqlite": "INTEGER", "postgresql": "INTEGER"},
    "real": {"sqlite": "REAL", "postgresql": "DOUBLE PRECISION"},
    "date": {"sqlite": "TEXT", "postgresql": "DATE"},  # ISO YYYY-MM-DD in SQLite
    "timestamp": {"sqlite": "TEXT", "postgresql": "TIMESTAMPTZ"},  # ISO-8601 UTC in SQLite
    "json": {"sqlite": "TEXT", "postgresql": "TEXT"},  # JSON text, validated at load
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # a key of SQL_TYPES


@dataclass(frozen=True)
class TableSpec:
    """One stable serving table: ordered columns, its unique key and read indexes."""

    name: str
    columns: tuple[Column, ...]
    unique: tuple[str, ...]
    #: Extra non-unique indexes for the apps' reads (column tuples).
    indexes: tuple[tuple[str, ...], ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def kind(self, column: str) -> str:
        return next(c.kind for c in self.columns if c.name == column)


def _cols(*pairs: str) -> tuple[Column, ...]:
    return tuple(Column(*pair.split(":")) for pair in pairs)


RECOMMENDATIONS = TableSpec(
    "recommendations",
    _cols(
        "user_id:text", "surface:text", "rank:int", "app_id:text", "score:real", "reason:text",
        "reason_app_id:text", "model_version:text", "variant:text", "generated_for:date",
        "published_at:timestamp",
    ),
    unique=("user_id", "surface", "rank"),  # also serves reads by user_id and (user_id, surface)
)
USER_INSIGHTS = TableSpec(
    "user_insights",
    _cols(
        "user_id:text", "segment:text", "engagement_score:real", "churn_risk:real", "lifetime_value:real",
        "primary_interests:json", "next_best_action:text", "best_notification_hour:int",
        "notification_channel:text", "notification_cap_per_week:int", "model_version:text",
        "generated_for:date",
    ),
    unique=("user_id",),
)
SIMILAR_APPS = TableSpec(
    "similar_apps",
    _cols("app_id:text", "rank:int", "similar_app_id:text", "score:real"),
    unique=("app_id", "rank"),
)
RECOMMENDED_CATEGORIES = TableSpec(
    "recommended_categories",
    _cols("user_id:text", "rank:int", "category:text", "score:real"),
    unique=("user_id", "rank"),
)
SEARCH_PERSONALIZATION = TableSpec(
    "search_personalization",
    _cols("user_id:text", "category:text", "boost:real"),
    unique=("user_id", "category"),
)
SUGGESTED_QUERIES = TableSpec(
    "suggested_queries",
    _cols("user_id:text", "rank:int", "query:text"),
    unique=("user_id", "rank"),
)

#: The stable names apps read, in publish order (the allow-list for identifiers).
SERVING_TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        RECOMMENDATIONS, USER_INSIGHTS, SIMILAR_APPS, RECOMMENDED_CATEGORIES,
        SEARCH_PERSONALIZATION, SUGGESTED_QUERIES,
    )
}
#: Serving tables keyed by user (used for deleted-user checks and the Redis sink).
USER_TABLES = ("recommendations", "user_insights", "recommended_categories", "search_personalization",
               "suggested_queries")

_VERSIONED = re.compile(r"^(?P<name>[a-z_]+)__v(?P<version>\d{6})$")


def spec(name: str) -> TableSpec:
    """The spec of a stable serving table; ValueError for any other name."""
    try:
        return SERVING_TABLES[name]
    except KeyError:
        raise ValueError(f"unknown serving table {name!r}; known: {sorted(SERVING_TABLES)}") from None


def physical_name(name: str, version: int) -> str:
    """``recommendations__v000012``: the versioned table behind a stable name."""
    spec(name)
    if not isinstance(version, int) or isinstance(version, bool) or not 0 < version < 1_000_000:
        raise ValueError(f"version must be an int in 1..999999, got {version!r}")
    return f"{name}__v{version:06d}"


def parse_physical_name(table: str) -> tuple[str, int] | None:
    """Inverse of :func:`physical_name`; None for anything that is not a versioned serving table."""
    match = _VERSIONED.match(table)
    if not match or match["name"] not in SERVING_TABLES:
        return None
    return match["name"], int(match["version"])


def create_table_sql(name: str, version: int, dialect: str) -> str:
    """``CREATE TABLE`` for one versioned table (no constraints: checks report violations by name)."""
    table_spec = spec(name)
    columns = ",\n  ".join(f"{c.name} {SQL_TYPES[c.kind][dialect]}" for c in table_spec.columns)
    return f"CREATE TABLE {physical_name(name, version)} (\n  {columns}\n)"


def create_index_sql(name: str, version: int) -> list[str]:
    """Unique key index plus read indexes; created after the bulk load and the checks (faster)."""
    table_spec = spec(name)
    table = physical_name(name, version)
    statements = [f"CREATE UNIQUE INDEX {table}_key ON {table} ({', '.join(table_spec.unique)})"]
    for number, columns in enumerate(table_spec.indexes, start=1):
        statements.append(f"CREATE INDEX {table}_ix{number} ON {table} ({', '.join(columns)})")
    return statements
