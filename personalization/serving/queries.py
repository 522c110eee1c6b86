"""The apps' read queries, kept as parameterised SQL files in ``sql/queries/``.

Each file uses ``:name`` bind parameters and only the stable view names, and runs
unchanged on SQLite and PostgreSQL (``CAST(generated_for AS TEXT)`` makes the
date a ``YYYY-MM-DD`` string on both).
"""

from __future__ import annotations

import functools
import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from personalization.serving.migrations import SQL_DIR

QUERY_DIR = SQL_DIR / "queries"
_NAME = re.compile(r"^[a-z_]+$")


def query_names() -> list[str]:
    """Names of the available queries (file stems)."""
    return sorted(path.stem for path in QUERY_DIR.glob("*.sql"))


@functools.cache
def load_query(name: str) -> sa.TextClause:
    """The query ``sql/queries/<name>.sql`` as a bindable text clause (names are an allow-list)."""
    if not _NAME.match(name) or name not in query_names():
        raise ValueError(f"unknown query {name!r}; known: {query_names()}")
    lines = (QUERY_DIR / f"{name}.sql").read_text(encoding="utf-8").splitlines()
    # Comment lines are dropped: they name the parameters, which text() would otherwise bind.
    return sa.text("\n".join(line for line in lines if not line.lstrip().startswith("--")))


def run_query(bind: Engine | Connection, name: str, **params: Any) -> list[dict[str, Any]]:
    """Run a named query with bound parameters; rows as dicts in query order."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return [dict(row) for row in connection.execute(load_query(name), params).mappings()]
    return [dict(row) for row in bind.execute(load_query(name), params).mappings()]
