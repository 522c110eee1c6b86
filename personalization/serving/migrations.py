"""Versioned schema migrations: ``sql/<dialect>/NNN_name.sql`` applied once, in order.

``schema_migrations`` records each applied file with its SHA-256, so an applied
migration that was edited afterwards is reported instead of silently skipped.
Each file runs in one transaction (both databases have transactional DDL here),
so a failing migration leaves no half-applied schema.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from personalization.serving.db import dialect_of, iso, make_engine, utc_now, write_transaction

#: ``sql/`` at the project root.
SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
_MIGRATION_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_DIALECT_DIRS = {"sqlite": "sqlite", "postgresql": "postgres"}


class MigrationError(RuntimeError):
    """An applied migration changed on disk, or migration files are malformed."""


def migration_files(dialect: str) -> list[tuple[int, str, Path]]:
    """``(number, name, path)`` of every migration of a dialect, ordered by number."""
    folder = SQL_DIR / _DIALECT_DIRS[dialect]
    found: list[tuple[int, str, Path]] = []
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if match:
            found.append((int(match[1]), path.stem, path))
    numbers = [number for number, _, _ in found]
    if len(set(numbers)) != len(numbers):
        raise MigrationError(f"duplicate migration numbers in {folder}: {numbers}")
    return found


def split_statements(script: str) -> list[str]:
    """Split a migration into statements on ``;`` at line ends (our files hold no procedural code)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    statements = re.split(r";\s*(?:\n|$)", "\n".join(lines))
    return [statement.strip() for statement in statements if statement.strip()]


def migrate(engine_or_url: Engine | str) -> list[str]:
    """Apply pending migrations idempotently; return the names applied by this call.

    Safe to run concurrently: PostgreSQL takes a transaction-level advisory lock,
    SQLite a ``BEGIN IMMEDIATE`` write lock, and the applied set is re-read under it.
    """
    engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    dialect = dialect_of(engine)
    applied_now: list[str] = []
    try:
        for number, name, path in migration_files(dialect):
            script = path.read_text(encoding="utf-8")
            checksum = hashlib.sha256(script.encode("utf-8")).hexdigest()
            with write_transaction(engine) as connection:
                if dialect == "postgresql":
                    connection.execute(sa.text("SELECT pg_advisory_xact_lock(7320451119)"))
                connection.exec_driver_sql(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,"
                    " applied_at TEXT NOT NULL)"
                )
                row = connection.execute(
                    sa.text("SELECT name, checksum FROM schema_migrations WHERE version = :version"),
                    {"version": number},
                ).first()
                if row is not None:
                    if row.checksum != checksum:
                        raise MigrationError(
                            f"migration {name} was applied with checksum {row.checksum[:12]} but the file "
                            f"now has {checksum[:12]}: add a new migration instead of editing an applied one"
                        )
                    continue
                for statement in split_statements(script):
                    connection.exec_driver_sql(statement)
                connection.execute(
                    sa.text(
                        "INSERT INTO schema_migrations (version, name, checksum, applied_at)"
                        " VALUES (:version, :name, :checksum, :applied_at)"
                    ),
                    {"version": number, "name": name, "checksum": checksum, "applied_at": iso(utc_now())},
                )
                applied_now.append(name)
    finally:
        if isinstance(engine_or_url, str):
            engine.dispose()
    return applied_now


def applied_migrations(engine: Engine) -> list[str]:
    """Names of the applied migrations, in order (empty before the first ``migrate``)."""
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table("schema_migrations"):
            return []
        return list(connection.execute(sa.text("SELECT name FROM schema_migrations ORDER BY version")).scalars())
