"""Erasure and its verification across every store (see the package docstring)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from personalization.config import Config
from personalization.data_rights import files, lake_store, mlflow_store, redis_store, serving_store
from personalization.data_rights.aliases import (
    UnknownUserError,
    refuse_unknown,
    resolve_aliases,
    unknown_users,
)
from personalization.data_rights.common import STORES, audit, utc_now
from personalization.data_rights.ids import (
    MAX_IDS_PER_REQUEST,
    IdMatcher,
    validate_actor,
    validate_request_ids,
)
from personalization.lake import Lake
from personalization.serving.publish import REDIS_PREFIX

log = logging.getLogger("personalization.privacy")

__all__ = ["RECHECK_DAYS", "UnknownUserError", "delete_users", "recheck_deleted", "verify_deleted"]

#: The post-publish re-check looks at users deleted within this many days.
RECHECK_DAYS = 30
#: Locations of hits listed by verify_deleted (the counts are always complete).
MAX_LOCATIONS = 50


def _per_user(ids: list[str], sources: dict[str, Any]) -> dict[str, dict[str, int]]:
    """``{user: {store: count}}`` from ``{store: Counter-or-dict by user}``."""
    return {user: {store: int(by_user.get(user, 0)) for store, by_user in sources.items()} for user in ids}


# ------------------------------------------------------------------- deletion
def delete_users(
    config: Config, user_ids: list[str], requested_by: str, *, redis_prefix: str = REDIS_PREFIX,
    dry_run: bool = False, allow_unknown: bool = False,
) -> dict[str, Any]:
    """Erase the users from every store, then audit it (one ``delete`` row per user).

    All ids are validated before anything is touched, and ids that are not known
    users are refused (:class:`UnknownUserError`) unless ``allow_unknown``. Only
    records that belong to a user by their user-id field are removed (see the
    package docstring). The tombstone and a pending-deletion journal entry are written
    first; the journal entry is removed when every store is done, so a deletion that
    fails midway is finished by running it again (the stores are idempotent; the ids
    stay known through the tombstone), or by the next :func:`recheck_deleted`.

    ``dry_run`` counts what would be removed, per store, and changes nothing (no
    tombstone, no journal, no audit row).

    Returns ``{"request_id", "requested_by", "user_ids", "deleted_at", "dry_run",
    "unknown", "resumed", "counts": {store: records removed}, "by_user": {user: {store: n}},
    "details": {...}}``. ``counts`` are lines (raw), rows (Parquet, serving DB), keys
    (Redis) and artifacts (MLflow: pickled models purged plus JSON examples rewritten).
    """
    ids = validate_request_ids(user_ids)
    actor = validate_actor(requested_by)
    aliases = resolve_aliases(config, ids)  # the pseudonyms the lake and models know them by
    matcher = IdMatcher(ids, aliases)
    unknown = unknown_users(config, ids, matcher) if allow_unknown else []
    if not allow_unknown:
        refuse_unknown(config, ids, matcher, "delete")
    tokens = sorted(matcher.ids)
    request_id = uuid.uuid4().hex
    deleted_at = utc_now()
    pending = [] if dry_run else [entry for entry in lake_store.read_pending(config) if set(entry["user_ids"]) & set(ids)]
    log.warning("privacy: %s %d user(s), request %s by %s", "dry run for" if dry_run else "deleting", len(ids),
                request_id, actor)
    journal = None
    if not dry_run:
        tombstone = lake_store.write_tombstone(config, ids, request_id, deleted_at, aliases)
        journal = lake_store.write_pending(config, request_id, ids, actor, deleted_at)

    try:
        # Serving and Redis hold the app's ids; the pseudonyms are searched too (a lake-side id must never
        # have reached them, and if one did it goes as well).
        serving = serving_store.purge_serving(config, tokens, dry_run=dry_run)
        redis = redis_store.purge_redis(config, tokens, redis_prefix, dry_run=dry_run)
        raw = lake_store.purge_raw(config, matcher, dry_run=dry_run)
        parquet = lake_store.purge_parquet(config, matcher, dry_run=dry_run)
        reports = lake_store.purge_reports(config, matcher, dry_run=dry_run)
        models = mlflow_store.purge_models(config, matcher, dry_run=dry_run)
    except BaseException as error:
        if not dry_run:
            try:
                for user_id in ids:
                    audit(config, actor, "delete_failed", user_id,
                          {"request_id": request_id, "error": f"{type(error).__name__}: {error}",
                           "resume": "run the same deletion again"})
            except Exception:  # noqa: BLE001 - the deletion's own error is the one to raise
                log.exception("privacy: could not audit the failure of request %s", request_id)
        raise
    empty = lake_store.Tally()
    sources: dict[str, Any] = {
        "raw": raw.by_user,
        **{zone: parquet.get(zone, empty).by_user for zone in ("silver", "quarantine", "gold", "lake_other")},
        "serving_db": matcher.fold(serving["by_user"]),
        "redis": matcher.fold(redis["by_user"]),
        "mlflow": models["by_user"],
        "run_records": {},
    }
    by_user = _per_user(ids, sources)
    for user_id in ids:
        # A user's own export is part of what was erased: count it under lake_other.
        if f"{lake_store.EXPORTS}/{user_id}.json" in reports["exports_deleted"]:
            by_user[user_id]["lake_other"] += 1
    counts = {store: sum(user[store] for user in by_user.values()) for store in STORES}
    details = {
        "files_rewritten": {"raw": raw.files, **{zone: tally.files for zone, tally in parquet.items()}},
        "reports": reports,
        "serving_tables": serving.get("tables", {}),
        "redis": {key: value for key, value in redis.items() if key != "by_user"},
        "mlflow": {key: value for key, value in models.items() if key != "by_user"},
        "skipped": {name: result["skipped"] for name, result in (("serving_db", serving), ("redis", redis))
                    if "skipped" in result},
    }
    resumed: list[str] = []
    if not dry_run:
        details["tombstone"] = files.relative(Lake(config).root, tombstone)
        for user_id in ids:
            audit(config, actor, "delete", user_id, {
                "request_id": request_id, "counts": by_user[user_id], "known_user": user_id not in unknown,
                "model_versions": models["model_versions"], "runs": models["runs"],
                "needs_retraining": models["needs_retraining"],
            })
        files.delete_file(journal)
        resumed = lake_store.finish_pending(config, pending, set(ids))
    log.warning("privacy: request %s %s: %s", request_id, "would remove" if dry_run else "done", counts)
    return {"request_id": request_id, "requested_by": actor, "user_ids": ids, "deleted_at": deleted_at.isoformat(),
            "dry_run": dry_run, "unknown": unknown, "resumed": resumed, "counts": counts, "by_user": by_user,
            "details": details}


# --------------------------------------------------------------- verification
def verify_deleted(config: Config, user_ids: list[str], *, redis_prefix: str = REDIS_PREFIX) -> dict[str, Any]:
    """Search every store for the ids (whole tokens) and count the hits; zero is expected after deletion.

    Stores are every place the product writes: the lake, the serving DB, Redis, the
    MLflow artifacts, and the run records and logs under ``var/`` (``run_records``).

    Returns ``{"clean": bool, "hits": {store: n}, "by_user": {user: {store: n}},
    "mentions": {store: n}, "mention_locations": [...], "retained": {"audit_log": n,
    "tombstone": n, "request_logs": n}, "pending": [request ids], "locations": [...], "skipped": {...}}``:
    ``hits`` are raw/quarantined lines that still belong to a user (user-id field) and
    rows/keys/files that still hold an id as a token; ``mentions`` are other users'
    lines that name it (not the user's records, never removed); ``retained`` are the
    records kept on purpose (not hits).
    """
    ids = validate_request_ids(user_ids)
    matcher = IdMatcher(ids, resolve_aliases(config, ids))  # the app's ids and their pseudonyms
    lake = lake_store.scan_lake(config, matcher)
    serving = serving_store.scan_serving(config, matcher)
    redis = redis_store.scan_redis(config, matcher, redis_prefix)
    models = mlflow_store.scan_models(config, matcher)
    records, request_logs = lake_store.scan_run_records(config, matcher)
    sources: dict[str, Any] = {name: tally.by_user for name, tally in lake["stores"].items()}
    sources.update(serving_db=serving["by_user"], redis=redis["by_user"], mlflow=models["by_user"],
                   run_records=records.by_user)
    by_user = _per_user(ids, {store: sources[store] for store in STORES})
    hits = {store: sum(user[store] for user in by_user.values()) for store in STORES}
    locations = [f"lake:{where}" for tally in lake["stores"].values() for where in tally.files]
    locations += [f"serving_db:{table}" for table in serving["tables"] if table != serving_store.AUDIT_TABLE]
    locations += [f"mlflow:{uri}" for uri in models["files"]]
    locations += [f"run_records:{where}" for where in records.files]
    mentions = {store: int(sum(tally.by_user.values())) for store, tally in lake["mentions"].items()
                if tally.by_user}
    return {
        "clean": not any(hits.values()),
        # Lines of other users (or of nobody) that name an id: listed for review, not the user's data.
        "mentions": mentions,
        "mention_locations": [f"lake:{where}" for tally in lake["mentions"].values()
                              for where in tally.files][:MAX_LOCATIONS],
        "user_ids": ids,
        "hits": hits,
        "by_user": by_user,
        "retained": {"audit_log": int(sum(serving["retained"].values())),
                     "tombstone": int(sum(lake["tombstone"].by_user.values())),
                     "request_logs": int(sum(request_logs.by_user.values()))},
        "pending": [entry.get("request_id") for entry in lake_store.read_pending(config)
                    if set(entry["user_ids"]) & set(ids)],
        "locations": locations[:MAX_LOCATIONS],
        "skipped": {name: result["skipped"] for name, result in (("serving_db", serving), ("redis", redis))
                    if "skipped" in result},
    }


def recheck_deleted(
    config: Config, requested_by: str, *, within_days: int = RECHECK_DAYS, redis_prefix: str = REDIS_PREFIX
) -> dict[str, Any]:
    """Re-verify users deleted in the last ``within_days`` days and delete again any that reappeared.

    Run after every serving publish: a nightly run that read its inputs before a
    deletion can write the user back. Interrupted deletions (pending journal entries) are
    finished too. Returns ``{"checked", "reappeared", "unfinished", "delete"}``.
    """
    actor = validate_actor(requested_by)
    since = utc_now() - dt.timedelta(days=within_days)
    recent = [user for user, when in lake_store.read_tombstone(config) if when >= since]
    reappeared: list[str] = []
    for start in range(0, len(recent), MAX_IDS_PER_REQUEST):
        chunk = recent[start:start + MAX_IDS_PER_REQUEST]
        result = verify_deleted(config, chunk, redis_prefix=redis_prefix)
        # Run records and logs are not erased by a deletion (nothing may write ids there): their hits
        # fail the verification instead of triggering endless re-deletions.
        reappeared += [user for user in chunk
                       if any(n for store, n in result["by_user"][user].items() if store != "run_records")]
    # Deletions that were interrupted are finished whatever the search found.
    unfinished = [user for entry in lake_store.read_pending(config) for user in entry["user_ids"]]
    redo = list(dict.fromkeys(reappeared + unfinished))
    deletions = [delete_users(config, redo[start:start + MAX_IDS_PER_REQUEST], actor, redis_prefix=redis_prefix)
                 for start in range(0, len(redo), MAX_IDS_PER_REQUEST)]
    deletion = deletions[0] if len(deletions) == 1 else None
    if len(deletions) > 1:
        deletion = {"counts": {store: sum(d["counts"][store] for d in deletions) for store in STORES},
                    "requests": deletions}
    return {"checked": len(recent), "reappeared": reappeared, "unfinished": sorted(set(unfinished)),
            "delete": deletion}
