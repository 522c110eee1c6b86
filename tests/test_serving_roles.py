"""The apps' read-only role on the real PostgreSQL: made by every publish and by ``pe serving-roles``.

README tells apps to read through ``serving.reader_role`` (``pe_app_reader``). These
tests take the operator's route: a publish (what ``publish_serving`` calls), ``pe
rollback`` and ``pe serving-roles`` as separate processes, then connect AS the role.
Roles are cluster-wide in PostgreSQL, so each test uses its own role name (config key
``serving.reader_role``) and drops it afterwards. Skipped without a local server,
failing instead when ``CI`` is set (tests/services.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from personalization.serving.publish import publish
from personalization.serving.schema import SERVING_TABLES, physical_name
from tests.services import admin_sql, require_postgres, temporary_postgres_database
from tests.test_serving import ROW_COUNTS, make_config, write_world

PE = Path(sys.executable).with_name("pe")
DATE = "2026-10-05"
PASSWORD = "reader-secret-from-the-environment"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with temporary_postgres_database("pe_roles_test", require_postgres()) as url:
        yield url


@pytest.fixture
def role(postgres_url: str) -> Iterator[str]:
    """A unique reader role name; the role is dropped afterwards (with its privileges in the test DB)."""
    name = f"pe_app_reader_{uuid.uuid4().hex[:8]}"
    yield name
    admin_sql(f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN "
              f'EXECUTE \'DROP OWNED BY "{name}"\'; EXECUTE \'DROP ROLE "{name}"\'; END IF; END $$', postgres_url)


def _pe(tmp_path: Path, url: str, role: str, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PE_")}
    env.update(PE_PATHS__ROOT=str(tmp_path), PE_PATHS__VAR_DIR=str(tmp_path / "var"),
               PE_PATHS__LAKE_ROOT=str(tmp_path / "lake"), PE_SERVING__URL=url, PE_SERVING__KEEP_VERSIONS="2",
               PE_SERVING__READER_ROLE=role)
    if password is not None:
        env["PE_APP_READER_PASSWORD"] = password
    return subprocess.run([str(PE), *args], env=env, capture_output=True, text=True, timeout=120)


def _scalar(url: str, sql: str) -> Any:
    import psycopg2

    connection = psycopg2.connect(url, connect_timeout=3)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()
    finally:
        connection.close()


@contextmanager
def _as_role(url: str, role: str) -> Iterator[Any]:
    """A cursor connected AS ``role`` (the local server trusts 127.0.0.1; the password is sent anyway)."""
    import psycopg2

    connection = psycopg2.connect(url.replace("postgres@", f"{role}:{PASSWORD}@"), connect_timeout=3)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()


def _check_reads_views_only(url: str, role: str, model_version: str, live: int) -> None:
    from psycopg2 import errors

    with _as_role(url, role) as cursor:
        for name in SERVING_TABLES:
            cursor.execute(f"SELECT COUNT(*) FROM {name}")
            assert cursor.fetchone() == (ROW_COUNTS[name],), name
        cursor.execute("SELECT DISTINCT model_version FROM recommendations")
        assert cursor.fetchall() == [(model_version,)]
        forbidden = [
            f"SELECT * FROM {physical_name('recommendations', live)}",
            "SELECT * FROM publish_log", "SELECT * FROM serving_state", "SELECT * FROM serving_reader_roles",
            "INSERT INTO recommendations (user_id, surface, rank) VALUES ('x', 'for_you', 1)",
            "DELETE FROM user_insights",
            "CREATE TABLE public.sneaky (x int)",
            "CREATE VIEW public.sneaky_view AS SELECT 1 AS x",
        ]
        for statement in forbidden:
            with pytest.raises(errors.InsufficientPrivilege):
                cursor.execute(statement)


def test_publish_makes_the_app_role_which_reads_the_views_only(
        postgres_url: str, role: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A server from before PostgreSQL 15 (or upgraded from one) still lets PUBLIC create in public.
    admin_sql("GRANT CREATE ON SCHEMA public TO PUBLIC", postgres_url)
    assert _scalar(postgres_url, "SELECT has_schema_privilege('public', 'public', 'CREATE')") == (True,)
    monkeypatch.setenv("PE_APP_READER_PASSWORD", PASSWORD)
    config = make_config(tmp_path, postgres_url, reader_role=role)

    assert publish(config, DATE, write_world(tmp_path, "w1"), "m1")["version"] == 1
    # Created by the publish, LOGIN with the password from the environment, nothing more.
    assert _scalar(postgres_url, "SELECT rolcanlogin, rolpassword IS NOT NULL, rolsuper, rolcreaterole, rolcreatedb"
                                 f" FROM pg_authid WHERE rolname = '{role}'") == (True, True, False, False, False)
    assert _scalar(postgres_url, "SELECT has_schema_privilege('public', 'public', 'CREATE')") == (False,)
    _check_reads_views_only(postgres_url, role, "m1", live=1)

    assert publish(config, DATE, write_world(tmp_path, "w2"), "m2")["version"] == 2  # views re-created
    _check_reads_views_only(postgres_url, role, "m2", live=2)

    rolled = _pe(tmp_path, postgres_url, role, "rollback", password=PASSWORD)
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    assert json.loads(rolled.stdout)["version"] == 1
    _check_reads_views_only(postgres_url, role, "m1", live=1)


def test_serving_roles_command_sets_up_the_role_once_and_repairs_it(
        postgres_url: str, role: str, tmp_path: Path) -> None:
    first = _pe(tmp_path, postgres_url, role, "serving-roles")  # no password in the environment
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(first.stdout) == {"role": role, "created": True, "password_set": False, "granted_views": [],
                                        "public_create_revoked": [], "public_create_still_granted": []}
    assert "PE_APP_READER_PASSWORD is not set" in first.stderr and "it has no password" in first.stderr
    # No password: password logins are refused; trust/certificate rules still apply.
    assert _scalar(postgres_url, f"SELECT rolcanlogin, rolpassword IS NULL FROM pg_authid WHERE rolname = '{role}'"
                   ) == (True, True)

    config = make_config(tmp_path, postgres_url, reader_role=role)
    publish(config, DATE, write_world(tmp_path, "w1"), "m1")
    # Someone granted the role more than it should have; setup with a password repairs both.
    admin_sql(f'GRANT ALL ON publish_log TO "{role}"', postgres_url)
    second = _pe(tmp_path, postgres_url, role, "serving-roles", password=PASSWORD)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout) == {"role": role, "created": False, "password_set": True,
                                         "granted_views": list(SERVING_TABLES), "public_create_revoked": [],
                                         "public_create_still_granted": []}
    assert _scalar(postgres_url, f"SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = '{role}'") == (True,)
    _check_reads_views_only(postgres_url, role, "m1", live=1)


def test_serving_roles_command_on_sqlite_says_there_is_nothing_to_do(tmp_path: Path) -> None:
    completed = _pe(tmp_path, f"sqlite:///{tmp_path / 'serving.db'}", "pe_app_reader", "serving-roles")
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout)
    assert result["role"] is None and "read-only" in result["skipped"]
