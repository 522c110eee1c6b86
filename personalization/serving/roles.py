"""The read-only database role apps connect as (PostgreSQL).

The role gets SELECT on the stable views only. PostgreSQL views run with their
owner's rights by default (``security_invoker`` off), so the role reads the
current version through a view without any privilege on the versioned tables,
``publish_log`` or ``audit_log``. Because a switch re-creates the views (which
drops their grants), roles are remembered in ``serving_reader_roles`` and
re-granted inside every switch transaction.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from personalization.serving.db import dialect_of, iso, utc_now, write_transaction
from personalization.serving.schema import SERVING_TABLES

log = logging.getLogger("personalization.serving")

#: Role names we create: lower-case identifiers, so quoting them is trivial and safe.
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
DEFAULT_READER_ROLE = "pe_app_reader"
#: Environment variable with the role's password (no double underscore: not a config key).
DEFAULT_PASSWORD_ENV = "PE_APP_READER_PASSWORD"


def _quoted_role(role: str) -> str:
    if not isinstance(role, str) or not _ROLE.match(role):
        raise ValueError(f"role name must match {_ROLE.pattern}, got {role!r}")
    return f'"{role}"'


def _existing_views(connection: Connection) -> list[str]:
    present = set(connection.execute(sa.text(
        "SELECT viewname FROM pg_views WHERE schemaname = current_schema()")).scalars())
    return [name for name in SERVING_TABLES if name in present]


def grant_reader_roles(connection: Connection) -> list[str]:
    """GRANT SELECT on the existing stable views to every remembered reader role; returns the roles."""
    roles = list(connection.execute(sa.text(
        "SELECT r.role FROM serving_reader_roles r JOIN pg_roles p ON p.rolname = r.role ORDER BY r.role"
    )).scalars())
    views = _existing_views(connection)
    if views:
        for role in roles:
            connection.exec_driver_sql(f"GRANT SELECT ON {', '.join(views)} TO {_quoted_role(role)}")
    return roles


def _create_role(connection: Connection, quoted: str) -> bool:
    """CREATE ROLE in a savepoint; False when a publish to another database created it first.

    Roles are cluster-wide but advisory locks are per database, so two databases'
    publishes can race here: the loser gets a unique violation and goes on.
    """
    try:
        with connection.begin_nested():
            connection.exec_driver_sql(
                f"CREATE ROLE {quoted} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION")
    except sa.exc.DBAPIError as error:
        if getattr(error.orig, "pgcode", None) not in ("23505", "42710"):  # unique_violation, duplicate_object
            raise
        return False
    return True


def _revoke_public_create(connection: Connection) -> dict[str, list[str]]:
    """REVOKE CREATE FROM PUBLIC on ``public`` and the serving schema where the server still grants it.

    PostgreSQL 14 and older (and databases upgraded from them) let every role create
    tables in ``public``; a reader that can create objects is not read-only. Revoking
    needs the schema's owner: when we are not, the grant stays and is reported.
    Returns ``{"revoked": [...], "still_granted": [...]}`` (schema names).
    """
    schemas = connection.execute(sa.text(
        "SELECT nspname FROM pg_namespace WHERE nspname IN ('public', current_schema()) ORDER BY nspname"
    )).scalars().all()

    def granted(schema: str) -> bool:
        return bool(connection.execute(sa.text("SELECT has_schema_privilege('public', :schema, 'CREATE')"),
                                       {"schema": schema}).scalar_one())

    revoked, still = [], []
    for schema in schemas:
        if not granted(schema):
            continue
        quoted = connection.execute(sa.text("SELECT quote_ident(:schema)"), {"schema": schema}).scalar_one()
        connection.exec_driver_sql(f"REVOKE CREATE ON SCHEMA {quoted} FROM PUBLIC")  # a warning if not the owner
        (still if granted(schema) else revoked).append(schema)
    if still:
        log.warning("PUBLIC may still CREATE in schema(s) %s: run `REVOKE CREATE ON SCHEMA ... FROM PUBLIC` "
                    "as their owner, or readers are not read-only", still)
    return {"revoked": revoked, "still_granted": still}


def ensure_reader_role(
    engine: Engine, role: str = DEFAULT_READER_ROLE, password_env: str | None = DEFAULT_PASSWORD_ENV
) -> dict[str, Any]:
    """Create or repair the apps' read-only LOGIN role; idempotent (publish and ``pe serving-roles`` call it).

    The role may SELECT the stable views and nothing else in the schema (all
    other table privileges are revoked, and CREATE on ``public`` is revoked from
    PUBLIC where the server still grants it). Its password comes from the
    environment variable ``password_env`` when set (never from configuration
    files or code). Without one, a new role gets no password, so password logins
    are refused and only the server's other rules (a client certificate, peer or
    trust on a private network) let apps in; an existing role keeps its password.
    Either way a warning is logged.

    On SQLite (no roles) nothing is done: give apps a read-only URL instead,
    ``sqlite:///file:/path/serving.db?mode=ro&uri=true``.

    Returns ``{"role", "created", "password_set", "granted_views", "public_create_revoked",
    "public_create_still_granted"}``.
    """
    if dialect_of(engine) != "postgresql":
        return {"role": None, "skipped": "SQLite has no roles; open it read-only (?mode=ro&uri=true)"}
    from personalization.serving.migrations import migrate

    quoted = _quoted_role(role)
    migrate(engine)
    password = os.environ.get(password_env) if password_env else None
    with write_transaction(engine) as connection:
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(7320451120)"))  # CREATE ROLE races
        created = connection.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :role"),
                                     {"role": role}).first() is None
        if created:
            created = _create_role(connection, quoted)
        if password:
            # psycopg2 interpolates the bound value client-side as a quoted literal.
            connection.execute(sa.text(f"ALTER ROLE {quoted} PASSWORD :password"), {"password": password})
        else:
            log.warning("reader role %s: $%s is not set, so %s; password logins as %s fail unless a password "
                        "was set before", role, password_env,
                        "it has no password" if created else "its password is unchanged", role)
        database, schema = connection.execute(
            sa.text("SELECT quote_ident(current_database()), quote_ident(current_schema())")).one()
        connection.exec_driver_sql(f"GRANT CONNECT ON DATABASE {database} TO {quoted}")
        connection.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {quoted}")
        connection.exec_driver_sql(f"REVOKE CREATE ON SCHEMA {schema} FROM {quoted}")
        connection.exec_driver_sql(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {quoted}")
        connection.exec_driver_sql(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {quoted}")
        public_create = _revoke_public_create(connection)
        connection.execute(
            sa.text("INSERT INTO serving_reader_roles (role, granted_at) VALUES (:role, :at)"
                    " ON CONFLICT (role) DO NOTHING"),
            {"role": role, "at": iso(utc_now())},
        )
        grant_reader_roles(connection)
        views = _existing_views(connection)
    return {"role": role, "created": created, "password_set": bool(password), "granted_views": views,
            "public_create_revoked": public_create["revoked"],
            "public_create_still_granted": public_create["still_granted"]}
