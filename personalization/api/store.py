"""The API's reads: Redis first, then the stable serving views, each answer from ONE version.

Redis (:mod:`personalization.serving.redis_sink`) holds one JSON value per user and
per app under a versioned key; a read resolves the ``current`` pointer and GETs
that version's key, so a Redis answer is one version by construction. A user or
app Redis does not hold (never scored, expired, Redis off or failing) is read
from the database, which is authoritative.

Database reads run in one transaction per answer, through the read-only role:

- SQLite: one read transaction is one WAL snapshot, schema included.
- PostgreSQL: a query on a view keeps an ACCESS SHARE lock on it until the
  transaction ends, and a publish's switch needs ACCESS EXCLUSIVE on every view
  (``DROP VIEW`` in one transaction), so no switch can commit between the first
  and the last statement of an answer. Answers therefore read views in the
  switch's order (:data:`~personalization.serving.schema.SERVING_TABLES`): the
  reverse order would deadlock with a waiting switch. READ COMMITTED, not
  REPEATABLE READ: a statement that waited behind a switch resolves the new view,
  and a REPEATABLE READ snapshot taken before the wait would still show the old
  view's definition in the catalogue.

The version number comes from the views' definitions (``recommendations`` is
``SELECT * FROM recommendations__v000012``), read after the data in the same
transaction; ``pg_views`` is readable by every role, unlike ``serving_state``.

A user with no published rows (not scored: new since the night's snapshot, or
inactive) gets the regional-popular fallback: the non-personalised "Popular in
<region>" lists scoring gave that region's users without personal
recommendations, merged over those users (how many of them were shown each
app), else the store-wide "Popular on the store" list, computed once per version
from the version's own rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from personalization.config import Config
from personalization.serving.db import from_json, iso, make_engine
from personalization.serving.queries import run_query
from personalization.serving.roles import DEFAULT_PASSWORD_ENV

log = logging.getLogger("personalization.api")

#: Surfaces in display order (the order of sql/queries/home_page.sql).
SURFACES = ("for_you", "because_you_liked", "trending_in_your_area", "new_for_you", "featured")
#: Longest list one request may ask for, and the length of the fallback lists.
MAX_LIMIT = 100
#: Reasons scoring gives non-personalised picks (models/surfaces.py: reason_popular_in).
REGIONAL_PREFIX = "Popular in "
STORE_REASON = "Popular on the store"
MOST_RECOMMENDED_REASON = "Often recommended on the store"
#: Attempts at one answer when the views disagree on the version (never seen; a safety net).
ATTEMPTS = 3
#: Per-version caches keep this many versions (the live one and a few before it).
CACHED_VERSIONS = 4
#: Seconds between two logged Redis errors (each failure still falls back to the database).
REDIS_LOG_INTERVAL_S = 60.0

T = TypeVar("T")


class NothingPublished(RuntimeError):
    """The serving views do not exist yet (no publish)."""


class NotFound(LookupError):
    """The version has no row for the user or app asked about."""


class _VersionMismatch(RuntimeError):
    """Views read in one transaction named different versions (retried)."""


# ------------------------------------------------------------------ engines
def reader_url(config: Config, environ: dict[str, str] | None = None) -> sa.URL:
    """The URL the API reads the serving views with.

    ``serving.reader_url`` when set; else the writer's ``serving.url`` on SQLite
    (no roles: connections are made ``query_only``), and on PostgreSQL the
    writer's host and database as ``serving.reader_role`` with the password from
    ``$PE_APP_READER_PASSWORD``. A PostgreSQL reader URL without a password gets
    that variable's value too.
    """
    environ = os.environ if environ is None else environ
    password = environ.get(DEFAULT_PASSWORD_ENV) or None
    if config.serving.reader_url:
        url = sa.make_url(config.resolve_sqlite_url(config.serving.reader_url))
        if url.get_backend_name() == "postgresql" and url.password is None and password:
            url = url.set(password=password)
        return url
    url = sa.make_url(config.serving_url)
    if url.get_backend_name() == "sqlite":
        return url
    if not config.serving.reader_role:
        raise ValueError("serving.reader_role is empty and serving.reader_url is unset: the API reads the "
                         "serving views only through a read-only role; set one of them")
    return url.set(username=config.serving.reader_role, password=password)


def reader_engine(url: sa.URL, pool_size: int = 16) -> Engine:
    """A pooled engine that can only read: ``query_only`` on SQLite, read-only transactions on PostgreSQL."""
    backend = url.get_backend_name()
    pool = {"pool_size": pool_size, "max_overflow": pool_size, "pool_timeout": 10}
    if backend == "sqlite":
        engine = make_engine(url.render_as_string(hide_password=False), **pool)

        @sa.event.listens_for(engine, "connect")
        def _read_only(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA query_only = ON")
            cursor.close()

        return engine
    if backend != "postgresql":
        raise ValueError(f"unsupported serving database {backend!r}: expected sqlite or postgresql")
    # No pool_pre_ping (one round trip per request); a dropped connection is retried once instead.
    return sa.create_engine(
        url.set(drivername="postgresql+psycopg2"), pool_recycle=600,
        connect_args={"connect_timeout": 5, "options": "-c default_transaction_read_only=on"}, **pool)


# ------------------------------------------------------------------ fallback
@dataclass(frozen=True)
class Fallback:
    """A version's non-personalised lists, for users it did not score."""

    model_version: str | None
    generated_for: str | None
    regional: dict[str, list[dict[str, Any]]]
    store: list[dict[str, Any]]
    #: Only when the version has no store-wide list: its most recommended for_you apps.
    most_recommended: list[dict[str, Any]]

    def pick(self, region: str | None) -> tuple[list[dict[str, Any]], str]:
        """``(items, reason)`` for a user in ``region`` (None: unknown)."""
        if region and self.regional.get(region):
            # Scoring itself tops a short regional list up with store-wide picks; so does this.
            regional = self.regional[region]
            seen = {item["app_id"] for item in regional}
            extra = [item for item in self.store if item["app_id"] not in seen]
            items = [*regional, *({**item, "rank": rank} for rank, item in
                                  enumerate(extra, start=len(regional) + 1))][:MAX_LIMIT]
            return items, f"not_scored: Popular in {region}"
        note = f" (no regional list for {region})" if region else ""
        if self.store:
            return self.store, f"not_scored: Popular on the store{note}"
        if self.most_recommended:
            return self.most_recommended, ("not_scored: most recommended on the store (this version has no "
                                           f"non-personalised list){note}")
        return [], "not_scored: this version has no recommendations at all"


def _ranked(counts: list[tuple[str, int, float]], users: int, reason: str) -> list[dict[str, Any]]:
    """Items from ``(app_id, users shown it, mean rank)``: most shown first, then better mean rank."""
    ordered = sorted(counts, key=lambda c: (-c[1], c[2], c[0]))[:MAX_LIMIT]
    return [{"rank": rank, "app_id": app_id, "score": round(shown / users, 6) if users else 0.0,
             "reason": reason, "reason_app_id": None, "variant": None}
            for rank, (app_id, shown, _) in enumerate(ordered, start=1)]


def _compute_fallback(connection: Connection) -> Fallback:
    """Build the fallback lists from the live version's recommendations (one scan of its for_you rows)."""
    meta = connection.execute(sa.text(
        "SELECT model_version, CAST(generated_for AS TEXT) AS generated_for FROM recommendations LIMIT 1")).first()
    where = "surface = 'for_you' AND (reason = :store OR reason LIKE :regional)"
    params = {"store": STORE_REASON, "regional": REGIONAL_PREFIX + "%"}
    rows = connection.execute(sa.text(
        f"SELECT reason, app_id, COUNT(*) AS shown, AVG(rank) AS mean_rank FROM recommendations WHERE {where}"
        " GROUP BY reason, app_id"), params).all()
    users = dict(connection.execute(sa.text(
        f"SELECT reason, COUNT(DISTINCT user_id) FROM recommendations WHERE {where} GROUP BY reason"), params).all())
    groups: dict[str, list[tuple[str, int, float]]] = {}
    for reason, app_id, shown, mean_rank in rows:
        groups.setdefault(reason, []).append((app_id, int(shown), float(mean_rank)))
    regional = {reason[len(REGIONAL_PREFIX):]: _ranked(counts, int(users[reason]), reason)
                for reason, counts in groups.items() if reason.startswith(REGIONAL_PREFIX)}
    store = _ranked(groups.get(STORE_REASON, []), int(users.get(STORE_REASON, 0)), STORE_REASON)
    most: list[dict[str, Any]] = []
    if not store:
        total = connection.execute(sa.text(
            "SELECT COUNT(DISTINCT user_id) FROM recommendations WHERE surface = 'for_you'")).scalar_one()
        counts = connection.execute(sa.text(
            "SELECT app_id, COUNT(*) AS shown, AVG(rank) AS mean_rank FROM recommendations"
            " WHERE surface = 'for_you' GROUP BY app_id ORDER BY shown DESC, app_id LIMIT :n"),
            {"n": MAX_LIMIT * 4}).all()
        most = _ranked([(a, int(s), float(r)) for a, s, r in counts], int(total), MOST_RECOMMENDED_REASON)
    return Fallback(meta.model_version if meta else None, meta.generated_for if meta else None,
                    regional, store, most)


# ------------------------------------------------------------------ the store
def _item(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("rank", "app_id", "score", "reason", "reason_app_id", "variant")}


def _ordered_surfaces(surfaces: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    order = {name: position for position, name in enumerate(SURFACES)}
    return {name: surfaces[name] for name in sorted(surfaces, key=lambda s: (order.get(s, len(order)), s))}


def _missing_view(error: sa.exc.DBAPIError) -> bool:
    return getattr(error.orig, "pgcode", None) == "42P01" or "no such table" in str(error.orig)


class ServingStore:
    """Reads one answer at a time from Redis or the serving views (thread-safe; one per app)."""

    def __init__(self, db_url: sa.URL, redis_url: str = "", redis_prefix: str = "pe", pool_size: int = 16):
        self.engine = reader_engine(db_url, pool_size)
        self.dialect = db_url.get_backend_name()
        #: SQLite file: connecting would create an empty one, so a missing file is "nothing published".
        self.sqlite_file = db_url.database if self.dialect == "sqlite" and db_url.database not in (None, "", ":memory:") \
            else None
        self.redis_prefix = redis_prefix
        self.redis = None
        if redis_url:
            import redis

            # Short timeouts: a stuck Redis must cost milliseconds, then the database answers.
            self.redis = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5,
                                              max_connections=2 * pool_size)
        self.redis_errors = 0
        self._redis_logged_at = 0.0
        self._lock = threading.Lock()  # the small caches
        self._fallback_lock = threading.Lock()  # one fallback computation at a time
        self._fallbacks: dict[int, Fallback] = {}
        self._meta: dict[int, tuple[str | None, str | None]] = {}
        if self.dialect == "sqlite":
            views = "SELECT name, sql FROM sqlite_master WHERE type = 'view' AND name IN :names"
        else:
            views = ("SELECT viewname, definition FROM pg_views WHERE schemaname = current_schema()"
                     " AND viewname IN :names")
        self._views_sql = sa.text(views).bindparams(sa.bindparam("names", expanding=True))

    def close(self) -> None:
        self.engine.dispose()
        if self.redis is not None:
            self.redis.close()

    # ------------------------------------------------------------- plumbing
    def _missing_file(self) -> bool:
        return self.sqlite_file is not None and not os.path.exists(self.sqlite_file)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if self._missing_file():
            raise NothingPublished(f"nothing published yet: no serving database at {self.sqlite_file}")
        with self.engine.connect() as connection, connection.begin():
            yield connection

    def _in_snapshot(self, read: Callable[[Connection], T]) -> T:
        """Run ``read`` in one read transaction; retry a version mismatch or a dropped connection."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with self._transaction() as connection:
                    return read(connection)
            except _VersionMismatch:
                if attempt == ATTEMPTS:
                    raise
                log.warning("api: views disagreed on the version (attempt %d); reading again", attempt)
            except sa.exc.DBAPIError as error:
                if _missing_view(error):
                    raise NothingPublished("nothing published yet: the serving views do not exist") from None
                if not error.connection_invalidated or attempt == ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _version(self, connection: Connection, views: Sequence[str]) -> int:
        """The version behind ``views``, read after their data in the same transaction."""
        versions = set()
        found = 0
        for name, definition in connection.execute(self._views_sql, {"names": list(views)}):
            match = re.search(rf"\b{name}__v(\d{{6}})\b", definition or "")
            if match is None:
                raise RuntimeError(f"view {name} does not select from a versioned table: {definition!r}")
            versions.add(int(match.group(1)))
            found += 1
        if found < len(views):
            raise NothingPublished("nothing published yet: the serving views do not exist")
        if len(versions) != 1:
            raise _VersionMismatch(sorted(versions))
        return versions.pop()

    def _remember(self, version: int, model_version: str | None, generated_for: str | None) -> None:
        with self._lock:
            self._meta[version] = (model_version, generated_for)
            for old in sorted(self._meta)[:-CACHED_VERSIONS]:
                del self._meta[old]

    def _redis_call(self, call: Callable[[], T]) -> T | None:
        if self.redis is None:
            return None
        import redis

        try:
            return call()
        except (redis.RedisError, OSError, ValueError) as error:
            self.redis_errors += 1
            now = time.monotonic()
            if now - self._redis_logged_at > REDIS_LOG_INTERVAL_S:
                self._redis_logged_at = now
                log.warning("api: Redis read failed (%s: %s); answering from the database (%d failures so far)",
                            type(error).__name__, error, self.redis_errors)
            return None

    def _redis_user(self, user_id: str) -> dict[str, Any] | None:
        from personalization.serving.redis_sink import read_user

        payload = self._redis_call(lambda: read_user(self.redis, user_id, self.redis_prefix))
        if payload is not None:
            self._remember(int(payload["version"]), payload.get("model_version"), payload.get("generated_for"))
        return payload

    def _fallback(self, connection: Connection, version: int) -> Fallback:
        """The version's fallback lists, computed once per version (the caller holds recommendations)."""
        cached = self._fallbacks.get(version)
        if cached is not None:
            return cached
        with self._fallback_lock:  # not self._lock: answers for scored users go on meanwhile
            cached = self._fallbacks.get(version)
            if cached is None:
                cached = _compute_fallback(connection)
                with self._lock:
                    self._fallbacks[version] = cached
                    for old in sorted(self._fallbacks)[:-CACHED_VERSIONS]:
                        del self._fallbacks[old]
        return cached

    # ------------------------------------------------------------- answers
    def home(self, user_id: str, region: str | None = None) -> dict[str, Any]:
        """Every surface of a user's page (``personalized`` false: the fallback for a user not scored)."""
        payload = self._redis_user(user_id)
        # Insights without lists (an inactive user): the database answers, with the fallback.
        if payload is not None and payload.get("surfaces"):
            return {"version": int(payload["version"]), "model_version": payload.get("model_version"),
                    "generated_for": payload.get("generated_for"), "source": "redis", "user_id": user_id,
                    "personalized": True, "reason": None, "surfaces": _ordered_surfaces(payload["surfaces"])}

        def read(connection: Connection) -> dict[str, Any]:
            rows = run_query(connection, "home_page", user_id=user_id)
            version = self._version(connection, ["recommendations"])
            answer = {"version": version, "source": "database", "user_id": user_id}
            if rows:
                surfaces: dict[str, list[dict[str, Any]]] = {}
                for row in rows:
                    surfaces.setdefault(row["surface"], []).append(_item(row))
                self._remember(version, rows[0]["model_version"], rows[0]["generated_for"])
                return {**answer, "model_version": rows[0]["model_version"],
                        "generated_for": rows[0]["generated_for"], "personalized": True, "reason": None,
                        "surfaces": _ordered_surfaces(surfaces)}
            fallback = self._fallback(connection, version)
            items, reason = fallback.pick(region)
            return {**answer, "model_version": fallback.model_version, "generated_for": fallback.generated_for,
                    "personalized": False, "reason": reason, "surfaces": {"for_you": items} if items else {}}

        return self._in_snapshot(read)

    def recommendations(self, user_id: str, surface: str, limit: int, region: str | None = None) -> dict[str, Any]:
        """One surface, at most ``limit`` items; a user not scored gets the fallback list whatever the surface."""
        page = self.home(user_id, region)
        if page["personalized"]:
            items = page["surfaces"].get(surface, [])
        else:
            items = next(iter(page["surfaces"].values()), [])
        return {k: page[k] for k in ("version", "model_version", "generated_for", "source", "user_id",
                                     "personalized", "reason")} | {"surface": surface, "items": items[:limit]}

    def insights(self, user_id: str) -> dict[str, Any]:
        """A user's insights; :class:`NotFound` for a user the version did not score."""
        payload = self._redis_user(user_id)
        if payload is not None and payload.get("insights") is not None:
            insights = payload["insights"]
            return {"version": int(payload["version"]), "model_version": insights.get("model_version"),
                    "generated_for": insights.get("generated_for"), "source": "redis", "user_id": user_id,
                    "insights": insights}

        def read(connection: Connection) -> dict[str, Any]:
            rows = run_query(connection, "user_insights", user_id=user_id)
            version = self._version(connection, ["user_insights"])
            if not rows:
                raise NotFound(f"user {user_id!r} was not scored: version {version} has no insights for it")
            row = dict(rows[0])
            row["primary_interests"] = from_json(row["primary_interests"])
            return {"version": version, "model_version": row["model_version"], "generated_for": row["generated_for"],
                    "source": "database", "user_id": user_id, "insights": row}

        return self._in_snapshot(read)

    def similar(self, app_id: str, limit: int) -> dict[str, Any]:
        """An app's similar apps, at most ``limit``; :class:`NotFound` when the version has none for it."""
        from personalization.serving.redis_sink import read_similar_apps

        payload = self._redis_call(lambda: read_similar_apps(self.redis, app_id, self.redis_prefix))
        if payload is not None:
            version = int(payload["version"])
            meta = self._meta.get(version)
            if meta is None:
                live = self.live()
                meta = (live["model_version"], live["generated_for"]) if live["version"] == version else (None, None)
            items = [{"rank": r["rank"], "app_id": r["similar_app_id"], "score": r["score"]}
                     for r in payload["similar_apps"][:limit]]
            return {"version": version, "model_version": meta[0], "generated_for": meta[1], "source": "redis",
                    "app_id": app_id, "items": items}

        def read(connection: Connection) -> dict[str, Any]:
            # recommendations before similar_apps: the switch's order (see the module docstring).
            meta = connection.execute(sa.text(
                "SELECT model_version, CAST(generated_for AS TEXT) AS generated_for FROM recommendations LIMIT 1"
            )).first()
            rows = run_query(connection, "similar_apps", app_id=app_id, limit=limit)
            version = self._version(connection, ["recommendations", "similar_apps"])
            if not rows:
                raise NotFound(f"app {app_id!r} has no similar apps in version {version}")
            return {"version": version, "model_version": meta.model_version if meta else None,
                    "generated_for": meta.generated_for if meta else None, "source": "database", "app_id": app_id,
                    "items": [{"rank": r["rank"], "app_id": r["similar_app_id"], "score": r["score"]} for r in rows]}

        return self._in_snapshot(read)

    def live(self) -> dict[str, Any]:
        """The live database version: ``version, model_version, generated_for, published_at``."""
        def read(connection: Connection) -> dict[str, Any]:
            meta = connection.execute(sa.text(
                "SELECT model_version, CAST(generated_for AS TEXT) AS generated_for, published_at"
                " FROM recommendations LIMIT 1")).first()
            version = self._version(connection, ["recommendations"])
            if meta is None:
                return {"version": version, "model_version": None, "generated_for": None, "published_at": None}
            self._remember(version, meta.model_version, meta.generated_for)
            return {"version": version, "model_version": meta.model_version, "generated_for": meta.generated_for,
                    "published_at": iso(meta.published_at)}

        return self._in_snapshot(read)

    def redis_version(self) -> int | None:
        """The version Redis points at (None: Redis off, empty or failing)."""
        from personalization.serving.redis_sink import pointer_key

        value = self._redis_call(lambda: self.redis.get(pointer_key(self.redis_prefix)))
        return None if value is None else int(value)

    def health(self) -> dict[str, str]:
        """``{"database": "ok" | error, "redis": "ok" | "off" | error}``."""
        try:
            if self._missing_file():
                raise FileNotFoundError(self.sqlite_file)
            with self.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            database = "ok"
        except sa.exc.DBAPIError as error:
            database = f"unreachable: {type(error.orig).__name__}"
        except FileNotFoundError:
            database = f"missing: no serving database at {self.sqlite_file} (nothing published yet)"
        if self.redis is None:
            redis_state = "off"
        else:
            import redis

            try:
                self.redis.ping()
                redis_state = "ok"
            except (redis.RedisError, OSError) as error:
                redis_state = f"unreachable: {type(error).__name__}"
        return {"database": database, "redis": redis_state}
