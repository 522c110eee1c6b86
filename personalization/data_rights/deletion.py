"""Erasure and its verification across every store (see the package docstring)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from personalization.config import Config
from personalization.data_rights import files, lake_store, mlflow_store, redis_store, serving_store
from personalization.data_rights.aliases import resolve_aliases
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

#: The post-publish re-check looks at users deleted within this many days.
RECHECK_DAYS = 30
#: Locations of hits listed by verify_deleted (the counts are always complete).
MAX_LOCATIONS = 50


def _per_user(ids: list[str], sources: dict[str, Any]) -> dict[str, dict[str, int]]:
    """``{user: {store: count}}`` from ``{store: Counter-or-dict by user}``."""
    return {user: {store: int(by_user.get(user, 0)) for store, by_user in sources.items()} for user in ids}


# ------------------------------------------------------------------- deletion
def delete_users(
    config: Config, user_ids: list[str], requested_by: str, *, redis_prefix: str = REDIS_PREFIX
) -> dict[str, Any]:
    """Erase the users from every store at once, then audit it (one ``delete`` row per user).

    All ids are validated before anything is touched. The tombstone is written
    first, so a crash part-way is finished by the next :func:`recheck_deleted`.

    Returns ``{"request_id", "requested_by", "user_ids", "deleted_at", "counts":
    {store: records removed}, "by_user": {user: {store: n}}, "details": {...}}``.
    ``counts`` are lines (raw), rows (Parquet, serving DB), keys (Redis) and
    artifacts (MLflow: pickled models purged plus text files redacted).
    """
    ids = validate_request_ids(user_ids)
    actor = validate_actor(requested_by)
    aliases = resolve_aliases(config, ids)  # the pseudonyms the lake and models know them by
    matcher = IdMatcher(ids, aliases)
    tokens = sorted(matcher.ids)
    request_id = uuid.uuid4().hex
    deleted_at = utc_now()
    log.warning("privacy: deleting %d user(s), request %s by %s", len(ids), request_id, actor)
    tombstone = lake_store.write_tombstone(config, ids, request_id, deleted_at, aliases)
    try:
        # Serving and Redis hold the app's ids; the pseudonyms are searched too (a lake-side id must never
        # have reached them, and if one did it goes as well).
        serving = serving_store.purge_serving(config, tokens)
        redis = redis_store.purge_redis(config, tokens, redis_prefix)
        raw = lake_store.purge_raw(config, matcher)
        parquet = lake_store.purge_parquet(config, matcher)
        reports = lake_store.purge_reports(config, matcher)
        models = mlflow_store.purge_models(config, matcher)
    except BaseException as error:
        try:
            for user_id in ids:
                audit(config, actor, "delete_failed", user_id,
                       {"request_id": request_id, "error": f"{type(error).__name__}: {error}"})
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
        "tombstone": files.relative(Lake(config).root, tombstone),
        "skipped": {name: result["skipped"] for name, result in (("serving_db", serving), ("redis", redis))
                    if "skipped" in result},
    }
    for user_id in ids:
        audit(config, actor, "delete", user_id, {
            "request_id": request_id, "counts": by_user[user_id],
            "model_versions": models["model_versions"], "runs": models["runs"],
            "needs_retraining": models["needs_retraining"],
        })
    log.warning("privacy: request %s done: %s", request_id, counts)
    return {"request_id": request_id, "requested_by": actor, "user_ids": ids, "deleted_at": deleted_at.isoformat(),
            "counts": counts, "by_user": by_user, "details": details}


# --------------------------------------------------------------- verification
def verify_deleted(config: Config, user_ids: list[str], *, redis_prefix: str = REDIS_PREFIX) -> dict[str, Any]:
    """Search every store for the ids (whole tokens) and count the hits; zero is expected after deletion.

    Returns ``{"clean": bool, "hits": {store: n}, "by_user": {user: {store: n}},
    "retained": {"audit_log": n, "tombstone": n}, "locations": [...], "skipped": {...}}``:
    ``hits`` are lines/rows/keys/files that still mention a user; ``retained`` are
    the records kept on purpose (not hits).
    """
    ids = validate_request_ids(user_ids)
    matcher = IdMatcher(ids, resolve_aliases(config, ids))  # the app's ids and their pseudonyms
    lake = lake_store.scan_lake(config, matcher)
    serving = serving_store.scan_serving(config, matcher)
    redis = redis_store.scan_redis(config, matcher, redis_prefix)
    models = mlflow_store.scan_models(config, matcher)
    sources: dict[str, Any] = {name: tally.by_user for name, tally in lake["stores"].items()}
    sources.update(serving_db=serving["by_user"], redis=redis["by_user"], mlflow=models["by_user"])
    by_user = _per_user(ids, {store: sources[store] for store in STORES})
    hits = {store: sum(user[store] for user in by_user.values()) for store in STORES}
    locations = [f"lake:{where}" for tally in lake["stores"].values() for where in tally.files]
    locations += [f"serving_db:{table}" for table in serving["tables"] if table != serving_store.AUDIT_TABLE]
    locations += [f"mlflow:{uri}" for uri in models["files"]]
    return {
        "clean": not any(hits.values()),
        "user_ids": ids,
        "hits": hits,
        "by_user": by_user,
        "retained": {"audit_log": int(sum(serving["retained"].values())),
                     "tombstone": int(sum(lake["tombstone"].by_user.values()))},
        "locations": locations[:MAX_LOCATIONS],
        "skipped": {name: result["skipped"] for name, result in (("serving_db", serving), ("redis", redis))
                    if "skipped" in result},
    }


def recheck_deleted(
    config: Config, requested_by: str, *, within_days: int = RECHECK_DAYS, redis_prefix: str = REDIS_PREFIX
) -> dict[str, Any]:
    """Re-verify users deleted in the last ``within_days`` days and delete again any that reappeared.

    Run after every serving publish: a nightly run that read its inputs before a
    deletion can write the user back. Returns ``{"checked", "reappeared", "delete"}``.
    """
    actor = validate_actor(requested_by)
    since = utc_now() - dt.timedelta(days=within_days)
    recent = [user for user, when in lake_store.read_tombstone(config) if when >= since]
    reappeared: list[str] = []
    for start in range(0, len(recent), MAX_IDS_PER_REQUEST):
        chunk = recent[start:start + MAX_IDS_PER_REQUEST]
        result = verify_deleted(config, chunk, redis_prefix=redis_prefix)
        reappeared += [user for user in chunk if any(result["by_user"][user].values())]
    deletion = delete_users(config, reappeared, actor, redis_prefix=redis_prefix) if reappeared else None
    return {"checked": len(recent), "reappeared": reappeared, "delete": deletion}
