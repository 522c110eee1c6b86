"""The optional Redis copy of serving versions: delete and search a user's keys.

Keys follow :mod:`personalization.serving.redis_sink` (``<prefix>:v<version>:user:<id>``).
Ids are validated (letters, digits, ``_``, ``-``), so they are literal inside a
``SCAN MATCH`` glob.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from personalization.config import Config
from personalization.data_rights.ids import IdMatcher
from personalization.serving.publish import REDIS_PREFIX

#: Keys per SCAN round trip / per pipelined GET batch.
SCAN_COUNT = 1000


def _client(config: Config) -> Any:
    import redis

    return redis.Redis.from_url(config.serving.redis_url, socket_connect_timeout=5)


def purge_redis(config: Config, user_ids: list[str], prefix: str = REDIS_PREFIX, *,
                dry_run: bool = False) -> dict[str, Any]:
    """Delete every ``<prefix>:v*:user:<id>`` key (``dry_run``: count them); ``{"skipped": why}`` without Redis."""
    if not config.serving.redis_url:
        return {"skipped": "serving.redis_url is not set", "keys": 0, "by_user": {}}
    client = _client(config)
    by_user: Counter = Counter()
    try:
        for user_id in user_ids:
            keys = list(client.scan_iter(match=f"{prefix}:v*:user:{user_id}", count=SCAN_COUNT))
            if keys:
                by_user[user_id] += len(keys) if dry_run else int(client.delete(*keys))
    finally:
        client.close()
    return {"keys": int(sum(by_user.values())), "by_user": dict(sorted(by_user.items()))}


def scan_redis(config: Config, matcher: IdMatcher, prefix: str = REDIS_PREFIX) -> dict[str, Any]:
    """Keys under ``<prefix>:`` whose name or string value contains a deleted id token, per id."""
    if not config.serving.redis_url:
        return {"skipped": "serving.redis_url is not set", "by_user": Counter()}
    client = _client(config)
    by_user: Counter = Counter()
    try:
        batch: list[bytes] = []

        def check(keys: list[bytes]) -> None:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            for key, value in zip(keys, pipe.execute(raise_on_error=False), strict=True):
                owners = matcher.find_bytes(key)
                if isinstance(value, bytes):
                    owners |= matcher.find_bytes(value)
                by_user.update(owners)

        for key in client.scan_iter(match=f"{prefix}:*", count=SCAN_COUNT):
            batch.append(key)
            if len(batch) >= SCAN_COUNT:
                check(batch)
                batch = []
        if batch:
            check(batch)
    finally:
        client.close()
    return {"by_user": by_user}
