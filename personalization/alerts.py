"""Alerts: a record in the serving DB's ``alerts`` table plus a pluggable notifier.

An :class:`Alert` says which DAG, task and run it concerns, its kind (``failure``,
``sla`` or ``drift``), a message and when it was raised. :func:`send_alert` writes it
to the ``alerts`` table (created when missing) and hands it to a :class:`Notifier`.
Notifiers are chosen by a dotted path (``config.monitoring.notifier`` when the
configuration has it, else :class:`LoggingNotifier`), e.g.
``"mycompany.alerting.SlackNotifier"`` or ``"mycompany.alerting:make_notifier"``; the
object named may be a class (built with no arguments), an object with ``notify`` or
a plain function taking the alert.

Airflow hooks (usable in ``default_args`` / on the DAG):
- :func:`on_failure_callback(context)` for ``on_failure_callback``;
- :func:`sla_callback` for Airflow 3 Deadline Alerts (the SLA replacement; called
  with ``context={"dag_run": {...}, "deadline": {...}}``) and also accepting the
  Airflow 2 ``sla_miss_callback`` positional arguments; :func:`deadline_alert`
  builds the ``DeadlineAlert`` that calls it.

This module imports only the standard library at the top, so DAG files can import
it at parse time; SQLAlchemy and the configuration load inside the functions. A
callback never raises: a broken notifier or an unreachable database is logged,
never allowed to mask the task's own failure.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

ALERT_TABLE = "alerts"
ALERT_KINDS = ("failure", "sla", "drift")
DEFAULT_NOTIFIER = "personalization.alerts.LoggingNotifier"
#: Longest message stored (exception texts can be huge).
MAX_MESSAGE_CHARS = 4000


@dataclasses.dataclass(frozen=True)
class Alert:
    """One alert. ``date`` is the pipeline run's date (YYYY-MM-DD) when known; ``at`` is UTC."""

    dag_id: str
    task_id: str
    run_id: str
    kind: str
    message: str
    at: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    date: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ALERT_KINDS:
            raise ValueError(f"alert kind must be one of {ALERT_KINDS}, got {self.kind!r}")

    def as_row(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["message"] = self.message[:MAX_MESSAGE_CHARS]
        return row


@runtime_checkable
class Notifier(Protocol):
    """Delivers an alert somewhere (log, chat, pager). Must not block for long."""

    def notify(self, alert: Alert) -> None: ...


class LoggingNotifier:
    """The default notifier: one log line per alert (ERROR for failures, WARNING otherwise)."""

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or log

    def notify(self, alert: Alert) -> None:
        level = logging.ERROR if alert.kind == "failure" else logging.WARNING
        self.logger.log(
            level,
            "ALERT %s %s.%s run=%s date=%s: %s",
            alert.kind,
            alert.dag_id,
            alert.task_id,
            alert.run_id,
            alert.date,
            alert.message,
        )


class _FunctionNotifier:
    def __init__(self, function: Callable[[Alert], Any]):
        self.function = function

    def notify(self, alert: Alert) -> None:
        self.function(alert)


def load_notifier(path: str | None = None) -> Notifier:
    """The notifier named by a dotted path (``pkg.mod.Name`` or ``pkg.mod:Name``); default logging."""
    path = (path or DEFAULT_NOTIFIER).strip()
    module_name, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"notifier must be a dotted path like 'package.module.Name', got {path!r}")
    target = getattr(importlib.import_module(module_name), attribute)
    if isinstance(target, type):
        target = target()
    if isinstance(target, Notifier):
        return target
    if callable(target):
        return _FunctionNotifier(target)
    raise TypeError(f"{path} is neither a notifier (with notify(alert)) nor a callable")


def configured_notifier(config: Any) -> Notifier:
    """``config.monitoring.notifier`` when the configuration has that key, else the logging notifier."""
    return load_notifier(getattr(getattr(config, "monitoring", None), "notifier", None) or None)


# ------------------------------------------------------------------ serving DB
def serving_engine(config: Any, write: bool) -> Any:
    """An engine on ``config.serving_url``; None for a read of a SQLite file that does not exist yet.

    For writes the SQLite file's folder is created, so a fresh ``var/`` works.
    """
    import os

    from personalization.serving.db import make_engine

    url = config.serving_url
    if url.startswith("sqlite:///") and ":memory:" not in url:
        path = url[len("sqlite:///") :]
        if not write and not os.path.exists(path):
            return None
        if write:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return make_engine(url)


def alert_table(metadata: Any) -> Any:
    """The ``alerts`` table (append-only)."""
    import sqlalchemy as sa

    return sa.Table(
        ALERT_TABLE,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("task_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("date", sa.String(10), nullable=True, index=True),
    )


def record_alert(config: Any, alert: Alert) -> int:
    """Insert ``alert`` into the serving DB's ``alerts`` table (created when missing); returns its id."""
    import sqlalchemy as sa

    from personalization.serving.db import write_transaction

    engine = serving_engine(config, write=True)
    try:
        metadata = sa.MetaData()
        table = alert_table(metadata)
        with write_transaction(engine) as connection:
            metadata.create_all(connection, checkfirst=True)
            result = connection.execute(sa.insert(table).values(**alert.as_row()))
            return int(result.inserted_primary_key[0])
    finally:
        engine.dispose()


def read_alerts(
    config: Any, date: str | None = None, kind: str | None = None, dag_id: str | None = None
) -> list[dict[str, Any]]:
    """Alerts, oldest first, optionally only those of one run date / kind / DAG; [] when the table is missing."""
    import sqlalchemy as sa

    engine = serving_engine(config, write=False)
    if engine is None:
        return []
    try:
        if not sa.inspect(engine).has_table(ALERT_TABLE):
            return []
        table = alert_table(sa.MetaData())
        query = sa.select(table).order_by(table.c.id)
        for column, value in (("date", date), ("kind", kind), ("dag_id", dag_id)):
            if value is not None:
                query = query.where(table.c[column] == value)
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]
    finally:
        engine.dispose()


def count_alerts(config: Any, date: str, kind: str | None = None, dag_id: str | None = None) -> int:
    """How many alerts of run date ``date`` (and ``kind`` / ``dag_id`` when given) were recorded."""
    return len(read_alerts(config, date=date, kind=kind, dag_id=dag_id))


def send_alert(config: Any, alert: Alert, notifier: Notifier | None = None) -> dict[str, Any]:
    """Record ``alert`` and notify; returns ``{"id", "recorded", "notified"}``. Never raises."""
    outcome: dict[str, Any] = {"id": None, "recorded": False, "notified": False}
    try:
        outcome["id"] = record_alert(config, alert)
        outcome["recorded"] = True
    except Exception:  # noqa: BLE001 - the notification must still go out
        log.exception("could not record alert %s for %s.%s", alert.kind, alert.dag_id, alert.task_id)
    try:
        (notifier or configured_notifier(config)).notify(alert)
        outcome["notified"] = True
    except Exception:  # noqa: BLE001 - a broken notifier must not fail the caller
        log.exception("notifier failed for alert %s of %s.%s", alert.kind, alert.dag_id, alert.task_id)
    return outcome


# ------------------------------------------------------------------ Airflow callbacks
def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Attribute or mapping key (Airflow passes objects in task callbacks, dicts in deadline callbacks)."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _run_date(context: Mapping[str, Any]) -> str | None:
    """The pipeline date of a run: the ``date`` param, else the logical date's day (YYYY-MM-DD)."""
    params = context.get("params") or {}
    if params.get("date"):
        return str(params["date"])
    dag_run = context.get("dag_run")
    conf = _get(dag_run, "conf") or {}
    if isinstance(conf, Mapping) and conf.get("date"):
        return str(conf["date"])
    logical = context.get("logical_date") or _get(dag_run, "logical_date")
    if isinstance(logical, str):
        return logical[:10]
    if isinstance(logical, (dt.date, dt.datetime)):
        return logical.date().isoformat() if isinstance(logical, dt.datetime) else logical.isoformat()
    return None


def alert_from_context(context: Mapping[str, Any], kind: str, message: str | None = None) -> Alert:
    """An alert from an Airflow callback context (task callbacks and deadline callbacks)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    dag_id = _get(ti, "dag_id") or _get(dag_run, "dag_id") or _get(context.get("dag"), "dag_id") or "unknown"
    task_id = _get(ti, "task_id") or _get(context.get("task"), "task_id") or "-"
    run_id = context.get("run_id") or _get(ti, "run_id") or _get(dag_run, "run_id") or "-"
    if message is None:
        exception = context.get("exception")
        attempt = _get(ti, "try_number")
        message = (
            f"task {task_id} failed"
            + (f" (try {attempt})" if attempt else "")
            + (f": {type(exception).__name__}: {exception}" if exception is not None else "")
        )
    return Alert(str(dag_id), str(task_id), str(run_id), kind, message, date=_run_date(context))


def _load_config() -> Any:
    from personalization.config import load_config

    return load_config()


def on_failure_callback(context: Mapping[str, Any]) -> None:
    """Airflow ``on_failure_callback``: record a ``failure`` alert and notify (never raises)."""
    try:
        send_alert(_load_config(), alert_from_context(context, "failure"))
    except Exception:  # noqa: BLE001 - a callback must not raise
        log.exception("on_failure_callback could not send the alert")


def sla_callback(*args: Any, context: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
    """Record an ``sla`` alert (never raises).

    Airflow 3 Deadline Alerts call it as ``sla_callback(context={"dag_run": {...},
    "deadline": {"deadline_time": ...}}, **kwargs)``; the Airflow 2 ``sla_miss_callback``
    signature ``(dag, task_list, blocking_task_list, slas, blocking_tis)`` is accepted too.
    """
    try:
        if context is not None:
            deadline = _get(context.get("deadline"), "deadline_time")
            message = f"deadline missed (deadline {deadline})" + (f": {kwargs}" if kwargs else "")
            alert = alert_from_context(context, "sla", message)
        else:
            dag = args[0] if args else kwargs.get("dag")
            task_list = args[1] if len(args) > 1 else kwargs.get("task_list", "")
            alert = Alert(
                str(_get(dag, "dag_id", "unknown")), "-", "-", "sla", f"SLA missed for tasks: {task_list}"
            )
        send_alert(_load_config(), alert)
    except Exception:  # noqa: BLE001 - a callback must not raise
        log.exception("sla_callback could not send the alert")


def deadline_alert(minutes: float) -> Any:
    """An Airflow 3 ``DeadlineAlert``: :func:`sla_callback` fires when a run is not done ``minutes`` after queueing."""
    from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(minutes=minutes),
        callback=SyncCallback(sla_callback),
    )
