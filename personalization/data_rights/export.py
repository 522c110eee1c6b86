"""Subject access and portability: one JSON document per user (``reports/exports/<user_id>.json``).

The document holds every personal datum the product keeps about the user: the
account records and the raw event lines as received (``ip`` included, kept in
``raw/`` for ``privacy.raw_retention_days``), the quarantined lines attributed to
the user (by the user-id field, as deletion does), the validated events, profile,
segment, consent, and the live serving rows. An id that is not a known user is
refused unless ``allow_unknown``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from personalization import storage
from personalization.config import Config
from personalization.data_rights import files, lake_store, serving_store
from personalization.data_rights.aliases import refuse_unknown, resolve_aliases
from personalization.data_rights.common import audit, partitions, utc_now
from personalization.data_rights.ids import IdMatcher, validate_actor
from personalization.lake import Lake
from personalization.security import validate_user_id

#: Version of the export document's layout (bump on any incompatible change).
EXPORT_FORMAT_VERSION = 2

#: The document's sections and what each holds (written into every export).
EXPORT_SECTIONS = {
    "account": "The sign-up record as received (raw/users): demographics, location, device, consent at sign-up.",
    "account_records": "Every account record received for the user (raw/users: the sign-up and any later "
                       "correction), as received, with its file and line number.",
    "profile": "The behavioural profile computed for the latest date (gold/profiles), one record or null.",
    "segment": "The user's segment on the latest date (gold/segments): id and name, or null.",
    "events": "Every validated event of the user (silver/events), oldest first. Validated events hold no IP "
              "address: ingestion drops it.",
    "raw_events": "Every raw event line of the user as received (raw/events), with its file and line number, "
                  "including the IP address (field ip) sent with it; raw lines are kept for "
                  "privacy.raw_retention_days days (400 by default). A line that is not valid JSON is shown as "
                  "text (line) and, when it is not valid UTF-8, as its exact bytes (line_base64).",
    "quarantine": "Lines of the user that validation set aside (silver/quarantine): landing date, reason, event "
                  "id and the line as received (line; line_base64 when it is not valid UTF-8). A line is the "
                  "user's when its user_id field names the user.",
    "consent": "Consent at sign-up, every consent_change event received (raw/events), and the current flags "
               "(latest silver/users snapshot).",
    "insights": "The live serving insights (user_insights): engagement, churn risk, lifetime value, interests, "
                "next best action and notification preferences.",
    "recommendations": "The live recommendations per surface (serving recommendations) with the reason shown.",
    "recommended_categories": "Live recommended categories (serving).",
    "search_personalization": "Live search boosts per category (serving).",
    "suggested_queries": "Live suggested search queries (serving).",
    "privacy_requests": "Earlier privacy requests about this user (audit log): action, time, details.",
}


def _jsonable(value: Any) -> Any:
    """JSON-safe copies of Arrow/SQL values: ISO dates, no NaN, lists for tuples and arrays."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat() + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if hasattr(value, "item") and not isinstance(value, (str, int, bool)):
        return _jsonable(value.item())  # numpy scalars
    return value


def _user_rows(table_prefix: str, user_id: str, selected: list[tuple[str, str, str]],
               lake_ids: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """The user's rows in the ``selected`` partitions of a Parquet table, with the partition column added.

    Rows are found by any of ``lake_ids`` (the app's id and its pseudonyms; default the id
    alone) and their ``user_id`` is shown as the app's id: the pseudonym is an internal key.
    """
    lake_ids = lake_ids or frozenset([user_id])
    wanted = pa.array(sorted(lake_ids), type=pa.string())
    rows: list[dict[str, Any]] = []
    for folder, column, value in selected:
        for uri in files.list_files(f"{table_prefix}/{folder}"):
            if not uri.endswith(".parquet"):
                continue
            with files.local_copy(uri) as path:
                if "user_id" not in pq.read_schema(path).names:
                    continue
                # The filter lets Parquet statistics skip row groups that cannot hold the user.
                table = pq.read_table(path, filters=[("user_id", "in", sorted(lake_ids))],
                                      coerce_int96_timestamp_unit="us")
            table = table.filter(pc.fill_null(pc.is_in(table.column("user_id"), value_set=wanted), False))
            maps = {f.name for f in table.schema if pa.types.is_map(f.type)}
            for row in table.to_pylist():
                row = {key: (dict(item) if key in maps and item is not None else item) for key, item in row.items()}
                row["user_id"] = user_id
                row[column] = value
                rows.append(_jsonable(row))
    return rows


def export_user(config: Config, user_id: str, requested_by: str, *, allow_unknown: bool = False) -> dict[str, Any]:
    """Write the user's data as one JSON document to ``reports/exports/<user_id>.json`` and audit it.

    Raises :class:`personalization.data_rights.aliases.UnknownUserError` (before anything
    is written) when ``user_id`` is not a known user, unless ``allow_unknown``.

    The document holds ``format_version``, ``generated_at``, ``user_id``,
    ``sections`` (what each section means) and one key per section; nothing about
    other users. Returns ``{"user_id", "path", "counts": {section: records}, "document"}``.
    """
    user_id = validate_user_id(user_id)
    actor = validate_actor(requested_by)
    matcher = IdMatcher([user_id], resolve_aliases(config, [user_id]))
    if not allow_unknown:
        refuse_unknown(config, [user_id], matcher, "export")
    lake_ids = matcher.ids  # silver and gold know the user by the pseudonym
    lake = Lake(config)

    profiles = lake.gold("profiles")
    profile_rows = _user_rows(profiles, user_id, partitions(profiles)[-1:], lake_ids)
    segments = lake.gold("segments")
    segment_rows = _user_rows(segments, user_id, partitions(segments)[-1:], lake_ids)
    events_table = lake.silver("events")
    events = sorted(_user_rows(events_table, user_id, partitions(events_table), lake_ids),
                    key=lambda row: (str(row.get("ts")), str(row.get("event_id"))))
    users_table = lake.silver("users")
    current = _user_rows(users_table, user_id, partitions(users_table)[-1:], lake_ids)

    account_records = lake_store.owned_raw_lines(config, lake.raw_users(), matcher)
    signups = [entry["record"] for entry in account_records if "record" in entry]
    raw_events = lake_store.owned_raw_lines(config, lake.raw_events(), matcher)
    quarantined = lake_store.owned_quarantine_rows(config, matcher)
    consent_fields = ("consent_behavioral", "consent_location", "consent_demographics", "consent_third_party")
    consent_events = sorted(
        ({key: record.get(key) for key in ("event_id", "ts", "consent_type", "consent_value")}
         for record in (entry["record"] for entry in raw_events if "record" in entry)
         if record.get("event_type") == "consent_change"),
        key=lambda row: (str(row["ts"]), str(row["event_id"])))
    # The same event may land twice (at-least-once delivery upstream): keep its first copy.
    unique: dict[Any, dict[str, Any]] = {}
    for row in consent_events:
        unique.setdefault(row["event_id"], row)
    consent_events = list(unique.values())

    serving = serving_store.read_user_rows(config, user_id)
    insights = serving.get("user_insights", [])
    for row in insights:
        if isinstance(row.get("primary_interests"), str):
            row["primary_interests"] = json.loads(row["primary_interests"])
    document: dict[str, Any] = {
        "format_version": EXPORT_FORMAT_VERSION,
        "generated_at": utc_now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "user_id": user_id,
        "sections": EXPORT_SECTIONS,
        "account": _jsonable(signups[0]) if signups else None,
        "account_records": _jsonable(account_records),
        "profile": ({**profile_rows[0]} if profile_rows else None),
        "segment": ({k: segment_rows[0].get(k) for k in ("segment_id", "segment_name", "date")}
                    if segment_rows else None),
        "events": events,
        "raw_events": _jsonable(raw_events),
        "quarantine": _jsonable(quarantined),
        "consent": {
            "at_signup": ({key: signups[0].get(key) for key in ("signup_date", *consent_fields)}
                          if signups else None),
            "changes": _jsonable(consent_events),
            "current": ({key: current[0].get(key) for key in (*consent_fields, "consent_updated_at")
                         if key in current[0]} if current else None),
        },
        "insights": _jsonable(insights[0]) if insights else None,
        "recommendations": _jsonable(serving.get("recommendations", [])),
        "recommended_categories": _jsonable(serving.get("recommended_categories", [])),
        "search_personalization": _jsonable(serving.get("search_personalization", [])),
        "suggested_queries": _jsonable(serving.get("suggested_queries", [])),
        "privacy_requests": _jsonable(serving_store.audit_rows(config, user_id)),
    }
    uri = lake_store.export_uri(config, user_id)
    storage.write_text(uri, json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    counts = {
        section: (len(document[section]) if isinstance(document[section], list) else int(document[section] is not None))
        for section in EXPORT_SECTIONS if section != "consent"
    }
    counts["consent_changes"] = len(consent_events)
    relative = files.relative(lake.root, uri)
    audit(config, actor, "export", user_id, {"path": relative, "counts": counts})
    return {"user_id": user_id, "path": uri, "counts": counts, "document": document}
