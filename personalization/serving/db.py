"""Engines for the serving database (SQLite or PostgreSQL) with real transactions.

SQLite note: Python's ``sqlite3`` (3.11) does not BEGIN before DDL, so a
``DROP VIEW`` + ``CREATE VIEW`` pair would be autocommitted one statement at a
time. The engine below disables the driver's transaction handling and emits
``BEGIN`` itself (the recipe from SQLAlchemy's SQLite docs), so DDL is
transactional and a switch is atomic. WAL mode lets readers keep reading the
previous snapshot while a publish writes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

#: Seconds a SQLite connection waits on a lock before failing (writers are serialised).
SQLITE_BUSY_TIMEOUT_S = 30
#: Arbitrary constant key of the PostgreSQL advisory lock that serialises publishes.
PG_PUBLISH_LOCK_KEY = 7_320_451_118


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``sqlite:///...`` or ``postgresql://...`` with transactional DDL."""
    if url.startswith("sqlite"):
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        engine = sa.create_engine(url, connect_args=connect_args, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
            cursor.execute("PRAGMA foreign_keys = ON")
            # WAL is persistent and lets readers keep their snapshot while a publish
            # writes; outside any transaction here. Read-only files keep their mode.
            try:
                cursor.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError:
                pass
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            # IMMEDIATE takes the write lock up front for writers, so two writers
            # never deadlock upgrading a read lock; readers use a plain BEGIN.
            options = connection.get_execution_options()
            if options.get("isolation_level") == "AUTOCOMMIT":
                return
            connection.exec_driver_sql(options.get("sqlite_begin", "BEGIN"))

        return engine
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg2://")):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed;
        # the COPY path also uses psycopg2's copy_expert, so pin the driver here.
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
        return sa.create_engine(url, pool_pre_ping=True, **kwargs)
    raise ValueError(f"unsupported serving database URL {url!r}: expected sqlite:/// or postgresql://")


def dialect_of(bind: Engine | Connection) -> str:
    """``"sqlite"`` or ``"postgresql"``."""
    name = bind.dialect.name
    if name not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported dialect {name!r}")
    return name


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in one write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success."""
    options = {"sqlite_begin": "BEGIN IMMEDIATE"} if dialect_of(engine) == "sqlite" else {}
    with engine.connect().execution_options(**options) as connection:
        with connection.begin():
            yield connection


@contextlib.contextmanager
def publish_lock(engine: Engine) -> Iterator[None]:
    """Serialise publishes and rollbacks across processes.

    PostgreSQL: a session advisory lock. SQLite: an exclusive ``flock`` on
    ``<db file>.publish.lock`` (the switch itself is already serialised by
    SQLite; this keeps version builds and pruning from interleaving).
    """
    if dialect_of(engine) == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": PG_PUBLISH_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": PG_PUBLISH_LOCK_KEY})
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.publish.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def utc_now() -> dt.datetime:
    """Now, UTC, microseconds kept."""
    return dt.datetime.now(dt.timezone.utc)


def iso(value: Any) -> Any:
    """Dates and datetimes as ISO strings (both dialects return the same shapes)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def from_json(value: Any) -> Any:
    """JSON columns: PostgreSQL JSONB arrives decoded, SQLite TEXT as a string."""
    if value is None or not isinstance(value, str):
        return value
    return json.loads(value)


def current_user() -> str:
    """Who runs this process, for audit rows (``$PE_OPERATOR`` wins over the OS user)."""
    return os.environ.get("PE_OPERATOR") or os.environ.get("USER") or "unknown"
