"""Optional Redis copy of a serving version, for apps that want one GET per page.

Layout (``<p>`` is the key prefix, ``pe`` by default):
- ``<p>:v<version>:user:<user_id>``: one JSON value with all of a user's lists
  and insights; ``<p>:v<version>:app:<app_id>``: an app's similar apps.
- ``<p>:v<version>:meta``: written after every key of the version (it marks the
  version complete).
- ``<p>:current``: the live version number, switched with one SET after the
  version is complete, so a reader that resolves the pointer then GETs the key
  always reads one complete version. Every versioned key has a TTL
  (``config.serving.redis_ttl_seconds``), so old versions expire by themselves;
  the pointer has none.

Users are streamed from the version's tables ordered by user_id (one cursor per
table, merged), so memory holds one user at a time plus one pipeline batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import groupby
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from personalization.serving.db import dialect_of, iso
from personalization.serving.schema import physical_name

#: Keys per pipeline round trip.
PIPELINE_BATCH = 1000
#: Rows fetched per round trip from each table cursor.
FETCH_ROWS = 5000

#: (table, payload columns, ORDER BY after user_id) streamed per user.
_USER_STREAMS = (
    ("recommendations", "surface, rank, app_id, score, reason, reason_app_id, variant, model_version, generated_for",
     ", surface, rank"),
    ("user_insights", "segment, engagement_score, churn_risk, lifetime_value, primary_interests, next_best_action,"
                      " best_notification_hour, notification_channel, notification_cap_per_week, model_version,"
                      " generated_for", ""),
    ("recommended_categories", "rank, category, score", ", rank"),
    ("search_personalization", "category, boost", ", category"),
    ("suggested_queries", "rank, query", ", rank"),
)


def user_key(prefix: str, version: int, user_id: str) -> str:
    return f"{prefix}:v{version}:user:{user_id}"


def app_key(prefix: str, version: int, app_id: str) -> str:
    return f"{prefix}:v{version}:app:{app_id}"


def meta_key(prefix: str, version: int) -> str:
    return f"{prefix}:v{version}:meta"


def pointer_key(prefix: str) -> str:
    return f"{prefix}:current"


def _stream(engine: Engine, table: str, key: str, columns: str, order: str) -> Iterator[tuple[str, list[dict]]]:
    """``(key value, rows)`` groups of one table, ordered by the key in code-point order."""
    # "C" collation: byte order of UTF-8 = code-point order = Python's str order, which the merge relies on.
    collate = ' COLLATE "C"' if dialect_of(engine) == "postgresql" else ""
    query = f"SELECT {key}, {columns} FROM {table} ORDER BY {key}{collate}{order}"
    with engine.connect().execution_options(stream_results=True, yield_per=FETCH_ROWS) as connection:
        rows = connection.execute(sa.text(query)).mappings()
        for value, group in groupby(rows, key=lambda row: row[key]):
            yield value, [dict(row) for row in group]


def _user_payloads(engine: Engine, version: int) -> Iterator[dict[str, Any]]:
    """One JSON-ready dict per user of the version, merging the per-table streams."""
    streams = {
        name: _stream(engine, physical_name(name, version), "user_id", columns, order)
        for name, columns, order in _USER_STREAMS
    }
    heads = {name: next(stream, None) for name, stream in streams.items()}
    heads = {name: head for name, head in heads.items() if head is not None}
    while heads:
        user_id = min(head[0] for head in heads.values())
        parts: dict[str, list[dict]] = {}
        for name in list(heads):
            if heads[name][0] == user_id:
                parts[name] = heads[name][1]
                following = next(streams[name], None)
                if following is None:
                    del heads[name]
                else:
                    heads[name] = following
        surfaces: dict[str, list[dict]] = {}
        for row in parts.get("recommendations", []):
            surfaces.setdefault(row["surface"], []).append(
                {k: row[k] for k in ("rank", "app_id", "score", "reason", "reason_app_id", "variant")})
        insights = (parts.get("user_insights") or [None])[0]
        if insights is not None:
            insights = {k: iso(v) for k, v in insights.items() if k != "user_id"}
            insights["primary_interests"] = json.loads(insights["primary_interests"] or "null")
        first_rec = (parts.get("recommendations") or [{}])[0]
        yield {
            "user_id": user_id,
            "model_version": first_rec.get("model_version") or (insights or {}).get("model_version"),
            "generated_for": iso(first_rec.get("generated_for")) or (insights or {}).get("generated_for"),
            "surfaces": surfaces,
            "insights": insights,
            "categories": [{k: r[k] for k in ("rank", "category", "score")} for r in parts.get("recommended_categories", [])],
            "search_boosts": {r["category"]: r["boost"] for r in parts.get("search_personalization", [])},
            "suggested_queries": [r["query"] for r in parts.get("suggested_queries", [])],
        }


def write_version(engine: Engine, version: int, client: redis.Redis, ttl_seconds: int, prefix: str) -> dict[str, int]:
    """Write every user and app key of ``version`` with a TTL, then its meta key. Returns key counts."""
    counts = {"users": 0, "apps": 0}
    pipe = client.pipeline(transaction=False)
    pending = 0

    def queue(key: str, payload: dict[str, Any]) -> None:
        nonlocal pending
        pipe.set(key, json.dumps(payload, separators=(",", ":"), default=str), ex=ttl_seconds)
        pending += 1
        if pending >= PIPELINE_BATCH:
            pipe.execute()
            pending = 0

    for payload in _user_payloads(engine, version):
        queue(user_key(prefix, version, payload["user_id"]), {"version": version, **payload})
        counts["users"] += 1
    for app_id, rows in _stream(engine, physical_name("similar_apps", version), "app_id",
                                "rank, similar_app_id, score", ", rank"):
        queue(app_key(prefix, version, app_id),
              {"version": version, "app_id": app_id,
               "similar_apps": [{k: r[k] for k in ("rank", "similar_app_id", "score")} for r in rows]})
        counts["apps"] += 1
    if pending:
        pipe.execute()
    client.set(meta_key(prefix, version), json.dumps({"version": version, **counts}), ex=ttl_seconds)
    return counts


def sync_version(engine: Engine, version: int, redis_url: str, ttl_seconds: int, prefix: str = "pe") -> dict[str, Any]:
    """Make ``version`` current in Redis: write it unless already complete there, then switch the pointer."""
    client = redis.Redis.from_url(redis_url)
    try:
        meta = client.get(meta_key(prefix, version))
        if meta is None:
            counts = write_version(engine, version, client, ttl_seconds, prefix)
            written = True
        else:
            counts = {k: v for k, v in json.loads(meta).items() if k != "version"}
            written = False
        client.set(pointer_key(prefix), str(version))  # the atomic switch for Redis readers
        return {"version": version, "written": written, **counts}
    finally:
        client.close()


def read_user(client: redis.Redis, user_id: str, prefix: str = "pe") -> dict[str, Any] | None:
    """A user's payload from the live version (None when unknown or nothing published)."""
    version = client.get(pointer_key(prefix))
    if version is None:
        return None
    value = client.get(user_key(prefix, int(version), user_id))
    return None if value is None else json.loads(value)


def read_similar_apps(client: redis.Redis, app_id: str, prefix: str = "pe") -> dict[str, Any] | None:
    """An app's similar apps from the live version (None when unknown)."""
    version = client.get(pointer_key(prefix))
    if version is None:
        return None
    value = client.get(app_key(prefix, int(version), app_id))
    return None if value is None else json.loads(value)
