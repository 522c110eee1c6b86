"""Atomic publish, validation and rollback of the serving tables.

A publish builds a complete new *version*: one physical table per serving table
(``recommendations__v000012``, ...), bulk-loaded from the scored Parquet
datasets, checked (:mod:`personalization.serving.checks`), indexed, and only
then made live by re-pointing the stable VIEWs (``recommendations``, ...) in ONE
transaction (``DROP VIEW`` + ``CREATE VIEW`` for every name, transactional DDL on
both SQLite and PostgreSQL). Readers therefore see either the old version or the
new one, never a mix, and a failed publish leaves the old version live.
The last ``config.serving.keep_versions`` versions stay for instant :func:`rollback`.

The lake holds pseudonymised user ids (``privacy.pseudonymise_user_ids``); the
pipeline passes a :class:`personalization.privacy.UserIdMap` so the loaded rows and
the checks' id sets carry the app's own user ids.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from personalization.config import Config
from personalization.lake import check_date
from personalization.serving.checks import Expectations, ServingValidationError, expectations_from, run_checks
from personalization.serving.db import (
    current_user,
    dialect_of,
    from_json,
    iso,
    make_engine,
    publish_lock,
    utc_now,
    write_transaction,
)
from personalization.serving.loader import LoadStats, load_table
from personalization.serving.migrations import migrate
from personalization.serving.roles import ensure_reader_role, grant_reader_roles
from personalization.serving.schema import SERVING_TABLES, create_index_sql, create_table_sql, physical_name

log = logging.getLogger("personalization.serving")

#: Variant written into ``recommendations.variant`` when the dataset has no such column.
DEFAULT_VARIANT = "default"
#: Default key prefix of the Redis sink.
REDIS_PREFIX = "pe"


# ------------------------------------------------------------------ helpers
def current_version(connection: Connection) -> int | None:
    """The version the stable views point at (None before the first publish)."""
    return connection.execute(sa.text("SELECT current_version FROM serving_state WHERE id = 1")).scalar_one_or_none()


def _switch(connection: Connection, version: int) -> None:
    """Point every stable name at ``version``: call inside the one switch transaction."""
    for name in SERVING_TABLES:  # fixed allow-list; the version is an int
        connection.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
        connection.exec_driver_sql(f"CREATE VIEW {name} AS SELECT * FROM {physical_name(name, version)}")
    if dialect_of(connection) == "postgresql":
        grant_reader_roles(connection)  # DROP VIEW dropped the grants; restore them before commit
    connection.execute(
        sa.text("UPDATE serving_state SET current_version = :version, switched_at = :at WHERE id = 1"),
        {"version": version, "at": iso(utc_now())},
    )


def _drop_version_tables(connection: Connection, version: int) -> None:
    for name in SERVING_TABLES:
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {physical_name(name, version)}")


def _log(
    connection: Connection, *, version: int | None, action: str, generated_for: str | None,
    model_version: str | None, row_counts: dict[str, int] | None, status: str, details: dict[str, Any],
    published_at: str,
) -> int:
    """Insert one publish_log row; returns its id."""
    return int(connection.execute(
        sa.text(
            "INSERT INTO publish_log (version, action, generated_for, model_version, row_counts, status, details,"
            " published_at) VALUES (:version, :action, :generated_for, :model_version, :row_counts, :status,"
            " :details, :published_at) RETURNING id"
        ),
        {
            "version": version, "action": action, "generated_for": generated_for, "model_version": model_version,
            "row_counts": None if row_counts is None else json.dumps(row_counts, sort_keys=True),
            "status": status, "details": json.dumps(details, sort_keys=True, default=str),
            "published_at": published_at,
        },
    ).scalar_one())


def record_audit(
    target: Config | Engine, who: str, action: str, subject: str | None, details: dict[str, Any]
) -> int:
    """Append one ``audit_log`` row (who did what to which subject, details as JSON); returns its id.

    ``target`` is the configuration (its serving database) or an engine.
    """
    engine = make_engine(target.serving_url) if isinstance(target, Config) else target
    try:
        migrate(engine)
        with write_transaction(engine) as connection:
            return _audit(connection, who, action, subject, details)
    finally:
        if isinstance(target, Config):
            engine.dispose()


def _audit(connection: Connection, who: str, action: str, subject: str | None, details: dict[str, Any]) -> int:
    return int(connection.execute(
        sa.text("INSERT INTO audit_log (who, action, subject, details, at) VALUES (:who, :action, :subject,"
                " :details, :at) RETURNING id"),
        {"who": who, "action": action, "subject": subject,
         "details": json.dumps(details, sort_keys=True, default=str), "at": iso(utc_now())},
    ).scalar_one())


def _prune(engine: Engine, keep: int) -> list[int]:
    """Drop the tables of ready versions beyond the newest ``keep`` (never the live one).

    Runs under the publish lock, so any other version still marked ``building`` was
    left by a crashed publish and is dropped too. Returns the dropped version numbers.
    """
    keep = max(1, int(keep))
    with write_transaction(engine) as connection:
        live = current_version(connection)
        rows = connection.execute(sa.text(
            "SELECT version, status FROM serving_versions WHERE status IN ('ready', 'building') ORDER BY version DESC"
        )).all()
        ready = [row.version for row in rows if row.status == "ready"]
        kept = set(ready[:keep]) | {live}
        dropped = []
        for row in rows:
            if row.version in kept:
                continue
            _drop_version_tables(connection, row.version)
            connection.execute(
                sa.text("UPDATE serving_versions SET status = :status, dropped_at = :at WHERE version = :version"),
                {"status": "dropped" if row.status == "ready" else "failed", "at": iso(utc_now()),
                 "version": row.version},
            )
            dropped.append(row.version)
    return sorted(dropped)


def _ensure_reader(config: Config, engine: Engine) -> None:
    """Create or repair ``serving.reader_role`` on PostgreSQL (README: apps read through it).

    A failure here (typically a writer without CREATEROLE) is logged as an error and the
    publish goes on: roles set up before are still re-granted at the switch, and the
    error says to run ``pe serving-roles`` once as a role that may.
    """
    if not config.serving.reader_role or dialect_of(engine) != "postgresql":
        return
    try:
        ensure_reader_role(engine, role=config.serving.reader_role)
    except sa.exc.DBAPIError as error:  # e.g. no CREATEROLE: the data publish itself must not fail on it
        log.error("serving: could not create or update reader role %s (%s); run `pe serving-roles` as a role "
                  "with CREATEROLE", config.serving.reader_role, str(error.orig).strip())


def _redis_sync(config: Config, engine: Engine, version: int, prefix: str) -> dict[str, Any] | None:
    if not config.serving.redis_url:
        return None
    from personalization.serving.redis_sink import sync_version

    return sync_version(engine, version, config.serving.redis_url, config.serving.redis_ttl_seconds, prefix)


# ------------------------------------------------------------------ publish
def publish(
    config: Config,
    date: str,
    tables: dict[str, str],
    model_version: str,
    variant_info: dict[str, Any] | None = None,
    *,
    expected: dict[str, Any] | None = None,
    redis_prefix: str = REDIS_PREFIX,
    user_map: Any = None,
) -> dict[str, Any]:
    """Build, check and atomically switch to a new serving version for ``date``.

    Args:
        tables: serving table name -> Parquet dataset path. ``recommendations`` is
            required; a table left out is published empty. Columns the datasets lack
            among ``model_version``, ``variant`` and ``generated_for`` are filled from
            ``model_version``, ``variant_info["variant"]`` and ``date``; ``published_at``
            is always the switch's publish time.
        variant_info: experiment description, recorded in publish_log's details.
        expected: see :func:`personalization.serving.checks.expectations_from`.
        redis_prefix: key prefix of the optional Redis sink.
        user_map: a :class:`personalization.privacy.UserIdMap` from the lake's pseudonyms
            to the app's ids (None: the datasets already hold the app's ids).

    Returns ``{"version", "previous_version", "generated_for", "model_version",
    "row_counts", "published_at", "pruned", "redis"}``.

    Raises:
        ServingValidationError: a check failed; nothing was switched, the new
            tables were dropped and a ``failed`` publish_log row was written.
    """
    date = check_date(date)
    unknown = sorted(set(tables) - set(SERVING_TABLES))
    if unknown:
        raise ValueError(f"unknown serving tables {unknown}; known: {list(SERVING_TABLES)}")
    if "recommendations" not in tables:
        raise ValueError("publish needs at least the recommendations dataset")
    variant_info = dict(variant_info or {})
    expectations = expectations_from(config, expected, user_map)
    engine = make_engine(config.serving_url)
    try:
        migrate(engine)
        with publish_lock(engine):  # role DDL too: GRANT/REVOKE must not race a build's DDL
            _ensure_reader(config, engine)
            result = _publish_locked(config, engine, date, tables, model_version, variant_info, expectations)
        result["redis"] = _redis_sync(config, engine, result["version"], redis_prefix)
        return result
    finally:
        engine.dispose()


def _publish_locked(
    config: Config, engine: Engine, date: str, tables: dict[str, str], model_version: str,
    variant_info: dict[str, Any], expectations: Expectations,
) -> dict[str, Any]:
    dialect = dialect_of(engine)
    published_at = iso(utc_now())
    fill = {
        "model_version": str(model_version),
        "variant": str(variant_info.get("variant", DEFAULT_VARIANT)),
        "generated_for": date,
        "published_at": published_at,
    }
    with write_transaction(engine) as connection:
        version = int(connection.execute(
            sa.text("INSERT INTO serving_versions (generated_for, model_version, status, created_at)"
                    " VALUES (:date, :model_version, 'building', :at) RETURNING version"),
            {"date": date, "model_version": str(model_version), "at": published_at},
        ).scalar_one())
        previous = current_version(connection)
    log.info("serving: building version %d for %s (live: %s)", version, date, previous)
    row_counts: dict[str, int] | None = None
    try:
        stats: dict[str, LoadStats] = {}
        with write_transaction(engine) as connection:  # the whole load in one transaction
            for name, table_spec in SERVING_TABLES.items():
                connection.exec_driver_sql(create_table_sql(name, version, dialect))
                stats[name] = load_table(connection, table_spec, version, tables.get(name), fill,
                                         expectations.user_map)
        reasons = [
            f"{name}_invalid_json: {s.invalid_json} value(s), e.g. {json.dumps(s.invalid_json_examples)}"
            for name, s in stats.items() if s.invalid_json
        ]
        with engine.connect() as connection, connection.begin():
            check_reasons, row_counts = run_checks(connection, date, expectations, version)
        reasons += check_reasons
        if reasons:
            raise ServingValidationError(reasons, version)
        with write_transaction(engine) as connection:
            for name in SERVING_TABLES:
                for statement in create_index_sql(name, version):
                    connection.exec_driver_sql(statement)
        with write_transaction(engine) as connection:  # THE switch: views, state, bookkeeping at once
            _switch(connection, version)
            connection.execute(
                sa.text("UPDATE serving_versions SET status = 'ready', row_counts = :counts WHERE version = :version"),
                {"counts": json.dumps(row_counts, sort_keys=True), "version": version},
            )
            _log(connection, version=version, action="publish", generated_for=date, model_version=str(model_version),
                 row_counts=row_counts, status="succeeded", published_at=published_at,
                 details={"previous_version": previous, "variant_info": variant_info, "sources": tables})
    except BaseException as error:
        details: dict[str, Any] = {"previous_version": previous, "variant_info": variant_info, "sources": tables}
        if isinstance(error, ServingValidationError):
            details["reasons"] = error.reasons
        else:
            details["error"] = f"{type(error).__name__}: {error}"
        with write_transaction(engine) as connection:
            _drop_version_tables(connection, version)
            connection.execute(sa.text("UPDATE serving_versions SET status = 'failed' WHERE version = :version"),
                               {"version": version})
            _log(connection, version=version, action="publish", generated_for=date, model_version=str(model_version),
                 row_counts=row_counts, status="failed", published_at=published_at, details=details)
        log.error("serving: version %d for %s failed; version %s stays live", version, date, previous)
        raise
    pruned = _prune(engine, config.serving.keep_versions)
    log.info("serving: version %d live for %s (%s); pruned %s", version, date, row_counts, pruned)
    return {
        "version": version, "previous_version": previous, "generated_for": date,
        "model_version": str(model_version), "row_counts": row_counts, "published_at": published_at,
        "pruned": pruned,
    }


# ----------------------------------------------------------------- rollback
def list_versions(config: Config, include_dropped: bool = False) -> list[dict[str, Any]]:
    """Versions newest first: ``version, generated_for, model_version, status, row_counts, created_at, live``.

    By default only the kept ones (status ``ready``: tables present, rollback possible).
    """
    engine = make_engine(config.serving_url)
    try:
        migrate(engine)
        with engine.connect() as connection:
            live = current_version(connection)
            where = "" if include_dropped else " WHERE status = 'ready'"
            rows = connection.execute(sa.text(
                "SELECT version, generated_for, model_version, status, row_counts, created_at FROM serving_versions"
                f"{where} ORDER BY version DESC"
            )).mappings().all()
        return [
            {**{key: iso(value) for key, value in row.items()}, "row_counts": from_json(row["row_counts"]),
             "live": row["version"] == live}
            for row in rows
        ]
    finally:
        engine.dispose()


def rollback(config: Config, version: int | None = None, *, redis_prefix: str = REDIS_PREFIX) -> dict[str, Any]:
    """Switch the stable names to a kept version in one transaction (default: the newest one older than live).

    Logged in publish_log (action ``rollback``) and audit_log. Returns
    ``{"version", "previous_version", "generated_for", "model_version", "row_counts", "redis"}``.
    """
    engine = make_engine(config.serving_url)
    try:
        migrate(engine)
        with publish_lock(engine):
            _ensure_reader(config, engine)
            with write_transaction(engine) as connection:
                live = current_version(connection)
                kept = {
                    row.version: row for row in connection.execute(sa.text(
                        "SELECT version, generated_for, model_version, row_counts FROM serving_versions"
                        " WHERE status = 'ready'")).all()
                }
                if version is None:
                    older = [v for v in kept if live is None or v < live]
                    if not older:
                        raise ValueError(f"no kept version older than the live version {live}; kept: {sorted(kept)}")
                    version = max(older)
                if version not in kept:
                    raise ValueError(f"version {version} is not kept (kept: {sorted(kept)})")
                target = kept[version]
                _switch(connection, version)
                generated_for = iso(target.generated_for)
                row_counts = from_json(target.row_counts)
                details = {"from_version": live, "who": current_user()}
                _log(connection, version=version, action="rollback", generated_for=generated_for,
                     model_version=target.model_version, row_counts=row_counts, status="succeeded",
                     published_at=iso(utc_now()), details=details)
                _audit(connection, current_user(), "serving_rollback", f"serving_version:{version}", details)
        log.warning("serving: rolled back from version %s to %d", live, version)
        return {
            "version": version, "previous_version": live, "generated_for": generated_for,
            "model_version": target.model_version, "row_counts": row_counts,
            "redis": _redis_sync(config, engine, version, redis_prefix),
        }
    finally:
        engine.dispose()


# --------------------------------------------------------------- validation
def validate_serving(config: Config, date: str, expected: dict[str, Any] | None = None,
                     user_map: Any = None) -> dict[str, Any]:
    """Post-publish checks on the live stable names for ``date`` (the DAG's last task).

    Runs the pre-switch rules against the views, and checks that the live version
    was generated for ``date`` and that its successful publish_log row's row counts
    match what the views return. Raises :class:`ServingValidationError` on failure.
    """
    date = check_date(date)
    expectations = expectations_from(config, expected, user_map)
    engine = make_engine(config.serving_url)
    try:
        migrate(engine)
        reasons: list[str] = []
        # One read transaction: SQLite (WAL) and PostgreSQL (REPEATABLE READ) give a
        # single snapshot, so a concurrent switch cannot make the checks mix versions.
        options = {"isolation_level": "REPEATABLE READ"} if dialect_of(engine) == "postgresql" else {}
        with engine.connect().execution_options(**options) as connection, connection.begin():
            live = current_version(connection)
            if live is None:
                raise ServingValidationError(["nothing published: no live serving version"])
            version_row = connection.execute(sa.text(
                "SELECT generated_for, model_version, status, row_counts FROM serving_versions WHERE version = :version"),
                {"version": live}).one()
            log_row = connection.execute(sa.text(
                "SELECT id, row_counts, published_at FROM publish_log WHERE version = :version AND action = 'publish'"
                " AND status = 'succeeded' ORDER BY id DESC LIMIT 1"), {"version": live}).first()
            if iso(version_row.generated_for) != date:
                reasons.append(f"live_version_wrong_date: version {live} was generated for "
                               f"{iso(version_row.generated_for)}, not {date}")
            check_reasons, row_counts = run_checks(connection, date, expectations, version=None)
            reasons += check_reasons
            if log_row is None:
                reasons.append(f"publish_log_missing: no succeeded publish row for live version {live}")
            # serving_versions.row_counts is kept current by privacy deletions; publish_log keeps the
            # counts as published, so a lawful deletion is not reported as a mismatch.
            elif from_json(version_row.row_counts) != row_counts:
                reasons.append(f"row_counts_mismatch: version {live} records {from_json(version_row.row_counts)}, "
                               f"views return {row_counts}")
        if reasons:
            raise ServingValidationError(reasons, live)
        return {
            "version": live, "generated_for": date, "model_version": version_row.model_version,
            "row_counts": row_counts, "published_at": iso(log_row.published_at), "checks": "passed",
        }
    finally:
        engine.dispose()
