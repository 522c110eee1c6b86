"""The PostgreSQL and Redis servers the tests use: skipped when absent locally, required in CI.

This machine kind starts PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379);
``$PE_TEST_POSTGRES_URL`` / ``$PE_TEST_REDIS_URL`` point the tests elsewhere.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_ADMIN_URL = os.environ.get("PE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("PE_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def unreachable(what: str, error: object) -> None:
    """Fail when ``CI`` is set, else skip with the reason."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} unreachable while CI is set: {error}")
    pytest.skip(f"{what} not reachable ({error}); set CI=true to turn this skip into a failure")


def require_postgres(admin_url: str = PG_ADMIN_URL) -> str:
    """``admin_url`` if the server answers; skip (or fail in CI) otherwise."""
    import psycopg2

    try:
        psycopg2.connect(admin_url, connect_timeout=3).close()
    except psycopg2.OperationalError as error:
        unreachable(f"PostgreSQL at {admin_url}", error)
    return admin_url


def admin_sql(sql: str, admin_url: str = PG_ADMIN_URL) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
    import psycopg2

    connection = psycopg2.connect(admin_url, connect_timeout=3)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
    finally:
        connection.close()


@contextmanager
def temporary_postgres_database(prefix: str, admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    """A fresh, empty database (its URL), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin_sql(f"CREATE DATABASE {name}", admin_url)
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", admin_url)
