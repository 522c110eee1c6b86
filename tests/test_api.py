"""The read API for apps over real HTTP: `pe serve` in its own process on a loopback port.

Each test publishes tiny tables through the real publish path (SQLite, and PostgreSQL
through the apps' read-only role), starts ``pe serve`` as a separate process and
talks to it with httpx. PostgreSQL and Redis tests skip when the local servers are
unreachable, unless ``CI`` is set (tests/services.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from personalization.api.launch import PE, free_port, serve_subprocess
from personalization.serving.db import make_engine
from personalization.serving.publish import publish
from tests.services import REDIS_URL
from tests.test_serving import (  # noqa: F401 - the PostgreSQL and Redis fixtures
    DATE,
    INSIGHTS,
    REC,
    SIMILAR,
    make_config,
    postgres_server,
    postgres_url,
    redis_client,
    write_world,
)

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}
START_TIMEOUT_S = 60


# ------------------------------------------------------------------ fixtures
@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The serving URL, and on PostgreSQL a reader role of this test's own (roles are cluster-wide)."""
    if request.param == "sqlite":
        return {"url": f"sqlite:///{tmp_path / 'serving.db'}", "role": ""}
    url = request.getfixturevalue("postgres_url")
    role = f"pe_api_reader_{uuid.uuid4().hex[:8]}"
    request.addfinalizer(lambda: _drop_role(url, role))
    return {"url": url, "role": role}


def _drop_role(url: str, role: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection, connection.begin():
            if connection.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
                connection.exec_driver_sql(f'DROP OWNED BY "{role}"')
                connection.exec_driver_sql(f'DROP ROLE "{role}"')
    finally:
        engine.dispose()


def _env(tmp_path: Path, backend: dict[str, str], **extra: str) -> dict[str, str]:
    """A clean environment for `pe serve`: no inherited PE_* settings, then this test's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PE_")}
    env.update({"PE_ROOT": str(tmp_path), "PE_SERVING__URL": backend["url"],
                "PE_SERVING__READER_ROLE": backend["role"], "PE_API_KEYS": f"{KEY},another-key-0123456789"})
    env.update(extra)
    return env


def api_server(tmp_path: Path, env: dict[str, str], *args: str) -> contextlib.AbstractContextManager[str]:
    """``pe serve`` (its own process) on a free loopback port until the block ends; yields its base URL."""
    return serve_subprocess(env, args, tmp_path, cwd=ROOT, timeout_s=START_TIMEOUT_S)


def config_for(tmp_path: Path, backend: dict[str, str], **serving: Any) -> Any:
    return make_config(tmp_path, backend["url"], reader_role=backend["role"], **serving)


def item(rank: int, app_id: str, score: float, reason: str | None, reason_app_id: str | None = None,
         variant: str | None = "default") -> dict[str, Any]:
    return {"rank": rank, "app_id": app_id, "score": score, "reason": reason, "reason_app_id": reason_app_id,
            "variant": variant}


SERVED = {"version": 1, "model_version": "m1", "generated_for": DATE, "source": "database"}
U1_SURFACES = {
    "for_you": [item(1, "a1", 0.9, "Because you use Alpha", "a9"), item(2, "a2", 0.8, "Popular in EU"),
                item(3, "a3", 0.8, "New in games")],
    "because_you_liked": [item(1, "a4", 0.7, "Because you use Alpha", "a9"),
                          item(2, "a5", 0.5, "Because you use Alpha", "a9")],
}


# ------------------------------------------------------------------ contract
def test_api_contract_over_http(backend: dict[str, str], tmp_path: Path) -> None:
    published = publish(config_for(tmp_path, backend), DATE, write_world(tmp_path, "w1"), "m1")
    with api_server(tmp_path, _env(tmp_path, backend)) as base, httpx.Client(base_url=base, headers=AUTH) as client:
        assert client.get("/health").json() == {"status": "ok", "database": "ok", "redis": "off",
                                                "auth": "api_key"}
        assert client.get("/v1/version").json() == {
            "api_version": "0.1.0", "version": 1, "model_version": "m1", "generated_for": DATE,
            "published_at": published["published_at"], "redis_version": None}
        assert client.get("/v1/users/u1/home").json() == {
            **SERVED, "user_id": "u1", "personalized": True, "reason": None, "surfaces": U1_SURFACES}
        assert client.get("/v1/users/u2/recommendations", params={"surface": "for_you", "limit": 2}).json() == {
            **SERVED, "user_id": "u2", "surface": "for_you", "personalized": True, "reason": None,
            "items": [item(1, "a2", 0.75, "Popular on the store"), item(2, "a4", 0.5, "Popular on the store")]}
        # A scored user's empty surface is empty, not a fallback.
        assert client.get("/v1/users/u2/recommendations", params={"surface": "featured"}).json()["items"] == []
        assert client.get("/v1/users/u1/insights").json() == {**SERVED, "user_id": "u1", "insights": {
            "segment": "gamers", "engagement_score": 72.5, "churn_risk": 0.125, "lifetime_value": 19.99,
            "primary_interests": {"games": 0.75, "tools": 0.25}, "next_best_action": "suggest_category:games",
            "best_notification_hour": 20, "notification_channel": "push", "notification_cap_per_week": 3}}
        assert client.get("/v1/apps/a1/similar").json() == {**SERVED, "app_id": "a1", "items": [
            {"rank": 1, "app_id": "a2", "score": 0.9}, {"rank": 2, "app_id": "a3", "score": 0.5}]}
        assert client.get("/v1/apps/a1/similar", params={"limit": 1}).json()["items"] == [
            {"rank": 1, "app_id": "a2", "score": 0.9}]
        missing = client.get("/v1/apps/a7/similar")
        assert (missing.status_code, missing.json()) == (404, {"detail": "app 'a7' has no similar apps in version 1"})

        spec = client.get("/openapi.json").json()
        assert sorted(spec["paths"]) == [
            "/health", "/v1/apps/{app_id}/similar", "/v1/users/{user_id}/home", "/v1/users/{user_id}/insights",
            "/v1/users/{user_id}/recommendations", "/v1/version"]
        assert spec["components"]["securitySchemes"]["APIKeyHeader"] == {
            "type": "apiKey", "in": "header", "name": "X-API-Key", "description": "one of $PE_API_KEYS"}


# ------------------------------------------------------------------ fallback
FALLBACK_REC = [  # u3, u4: no behavioural consent, location consent in US-CA; u2: no consent at all
    ("u1", "for_you", 1, "a1", 0.9, "Because you use Alpha", "a9"),
    ("u2", "for_you", 1, "a2", 0.75, "Popular on the store", None),
    ("u2", "for_you", 2, "a4", 0.5, "Popular on the store", None),
    ("u3", "for_you", 1, "a2", 0.9, "Popular in US-CA", None),
    ("u3", "for_you", 2, "a6", 0.8, "Popular in US-CA", None),
    ("u4", "for_you", 1, "a6", 0.9, "Popular in US-CA", None),
    ("u4", "for_you", 2, "a7", 0.8, "Popular in US-CA", None),
    ("u4", "for_you", 3, "a8", 0.7, "Popular on the store", None),
]
FALLBACK_INSIGHTS = [  # u5: inactive, so insights but no lists; interests as scoring writes them
    (user, "casual", 10.0, 0.5, 0.0, '{"tools": 1.0}', "none", 8, "push", 1) for user in ("u1", "u2", "u3", "u4")
] + [("u5", "casual", 1.0, 0.75, 0.0, '[{"category": "tools", "weight": 0.5}]', "none", 8, "push", 1)]


def test_unscored_user_gets_the_regional_popular_fallback(backend: dict[str, str], tmp_path: Path) -> None:
    world = write_world(tmp_path, "w1", recommendations=FALLBACK_REC, user_insights=FALLBACK_INSIGHTS)
    publish(config_for(tmp_path, backend), DATE, world, "m1")
    fallback = {**SERVED, "user_id": "newbie", "personalized": False}
    # US-CA: a6 shown to both of its users, a2 and a7 to one; topped up with the store-wide list's other apps.
    us_ca = [item(1, "a6", 1.0, "Popular in US-CA", variant=None), item(2, "a2", 0.5, "Popular in US-CA", variant=None),
             item(3, "a7", 0.5, "Popular in US-CA", variant=None),
             item(4, "a4", 0.5, "Popular on the store", variant=None),
             item(5, "a8", 0.5, "Popular on the store", variant=None)]
    # u2 and u4 got store-wide picks: each app was shown to one of the two; better mean rank first.
    store = [item(1, "a2", 0.5, "Popular on the store", variant=None),
             item(2, "a4", 0.5, "Popular on the store", variant=None),
             item(3, "a8", 0.5, "Popular on the store", variant=None)]
    with api_server(tmp_path, _env(tmp_path, backend)) as base, httpx.Client(base_url=base, headers=AUTH) as client:
        assert client.get("/v1/users/newbie/home", params={"region": "US-CA"}).json() == {
            **fallback, "reason": "not_scored: Popular in US-CA", "surfaces": {"for_you": us_ca}}
        assert client.get("/v1/users/newbie/home").json() == {
            **fallback, "reason": "not_scored: Popular on the store", "surfaces": {"for_you": store}}
        assert client.get("/v1/users/newbie/home", params={"region": "FR-75"}).json() == {
            **fallback, "reason": "not_scored: Popular on the store (no regional list for FR-75)",
            "surfaces": {"for_you": store}}
        assert client.get("/v1/users/newbie/recommendations",
                          params={"region": "US-CA", "limit": 2, "surface": "for_you"}).json() == {
            **fallback, "surface": "for_you", "reason": "not_scored: Popular in US-CA", "items": us_ca[:2]}
        # An inactive user has insights but no lists: the fallback too.
        inactive = client.get("/v1/users/u5/home", params={"region": "US-CA"}).json()
        assert inactive == {**fallback, "user_id": "u5", "reason": "not_scored: Popular in US-CA",
                            "surfaces": {"for_you": us_ca}}
        assert client.get("/v1/users/u5/insights").json()["insights"]["primary_interests"] == [
            {"category": "tools", "weight": 0.5}]
        # A scored user's own list, whatever region is asked.
        own = client.get("/v1/users/u3/home", params={"region": "FR-75"}).json()
        assert (own["personalized"], own["reason"], [i["app_id"] for i in own["surfaces"]["for_you"]]) == (
            True, None, ["a2", "a6"])
        insights = client.get("/v1/users/newbie/insights")
        assert (insights.status_code, insights.json()) == (
            404, {"detail": "user 'newbie' was not scored: version 1 has no insights for it"})


# ---------------------------------------------------------- auth, validation
def test_auth_refusal_and_id_validation(tmp_path: Path) -> None:
    backend = {"url": f"sqlite:///{tmp_path / 'serving.db'}", "role": ""}
    publish(config_for(tmp_path, backend), DATE, write_world(tmp_path, "w1"), "m1")
    refusal = {"detail": "missing or wrong API key (header X-API-Key)"}
    with api_server(tmp_path, _env(tmp_path, backend)) as base, httpx.Client(base_url=base) as client:
        for path in ("/v1/users/u1/home", "/v1/users/u1/recommendations", "/v1/users/u1/insights",
                     "/v1/apps/a1/similar", "/v1/version", "/v1/users/bad'id/home"):
            for headers in ({}, {"X-API-Key": "wrong-key-0123456789abc"}, {"X-API-Key": KEY[:-1]}):
                response = client.get(path, headers=headers)
                assert (response.status_code, response.json()) == (401, refusal), (path, headers)
                assert response.headers["www-authenticate"] == "APIKey"
        assert client.get("/v1/users/u1/home", headers={"X-API-Key": "another-key-0123456789"}).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/openapi.json").status_code == 200

        client.headers.update(AUTH)
        bad = {
            "/v1/users/u1'--/home": "user id \"u1'--\" contains characters other than letters, digits, '_' and '-'",
            f"/v1/users/{'u' * 65}/insights": "user id is 65 characters long; at most 64 are allowed",
            "/v1/apps/a%20b/similar": "app id 'a b' contains characters other than letters, digits, '_' and '-'",
            "/v1/users/u1/home?region=US%3BCA": "region 'US;CA' contains characters other than letters, digits, "
                                                "'_' and '-'",
        }
        for path, message in bad.items():
            response = client.get(path)
            assert (response.status_code, response.json()) == (422, {"detail": message}), path
        for params in ({"surface": "nope"}, {"limit": 0}, {"limit": 101}, {"limit": "ten"}):
            response = client.get("/v1/users/u1/recommendations", params=params)
            assert response.status_code == 422 and response.json()["detail"][0]["loc"][0] == "query", params

    # No key configured: refuse to start, with the reason.
    env = _env(tmp_path, backend)
    env.pop("PE_API_KEYS")
    refused = subprocess.run([PE, "serve", "--port", str(free_port())], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2
    assert "error: no API key: set PE_API_KEYS=key1,key2 (at least 16 characters each)" in refused.stderr


def test_nothing_published_is_503_and_insecure_mode_needs_no_key(tmp_path: Path) -> None:
    backend = {"url": f"sqlite:///{tmp_path / 'serving.db'}", "role": ""}
    env = _env(tmp_path, backend)
    env.pop("PE_API_KEYS")
    database = tmp_path / "serving.db"
    with api_server(tmp_path, env, "--insecure-no-auth") as base, httpx.Client(base_url=base) as client:
        # No database file yet: the API does not create one.
        health = client.get("/health")
        assert (health.status_code, health.json()) == (503, {
            "status": "unavailable", "database": f"missing: no serving database at {database} (nothing published yet)",
            "redis": "off", "auth": "off"})
        response = client.get("/v1/users/u1/home")
        assert (response.status_code, response.json()) == (
            503, {"detail": f"nothing published yet: no serving database at {database}"})
        assert not database.exists()
        # A database without a version yet.
        from personalization.serving.migrations import migrate

        migrate(backend["url"])
        assert client.get("/health").json() == {"status": "ok", "database": "ok", "redis": "off", "auth": "off"}
        response = client.get("/v1/users/u1/home")
        assert (response.status_code, response.json()) == (
            503, {"detail": "nothing published yet: the serving views do not exist"})
        assert client.get("/v1/version").json()["version"] is None
        publish(config_for(tmp_path, backend), DATE, write_world(tmp_path, "w1"), "m1")
        assert client.get("/v1/users/u1/home").json()["surfaces"] == U1_SURFACES


# ------------------------------------------------------------------ Redis
def test_redis_first_then_database(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = request.getfixturevalue("redis_client")  # tests.test_serving's fixture: skips without Redis
    backend = {"url": f"sqlite:///{tmp_path / 'serving.db'}", "role": ""}
    prefix = f"pe_api_test_{uuid.uuid4().hex[:10]}"
    try:
        config = config_for(tmp_path, backend, redis_url=REDIS_URL, redis_ttl_seconds=600)
        inactive = ("u5", "casual", 1.0, 0.5, 0.0, '{"tools": 1.0}', "none", 8, "push", 1)  # insights, no lists
        publish(config, DATE, write_world(tmp_path, "w1", user_insights=[*INSIGHTS, inactive]), "m1",
                redis_prefix=prefix)
        env = _env(tmp_path, backend, PE_SERVING__REDIS_URL=REDIS_URL)
        with api_server(tmp_path, env, "--redis-prefix", prefix) as base, \
                httpx.Client(base_url=base, headers=AUTH) as client:
            assert client.get("/health").json()["redis"] == "ok"
            assert client.get("/v1/version").json()["redis_version"] == 1
            home = client.get("/v1/users/u1/home").json()
            assert home == {**SERVED, "source": "redis", "user_id": "u1", "personalized": True, "reason": None,
                            "surfaces": U1_SURFACES}
            similar = client.get("/v1/apps/a1/similar").json()
            assert (similar["source"], similar["model_version"], similar["items"][0]) == (
                "redis", "m1", {"rank": 1, "app_id": "a2", "score": 0.9})
            insights = client.get("/v1/users/u2/insights").json()
            assert (insights["source"], insights["insights"]["primary_interests"]) == ("redis", {"tools": 1.0})
            # Redis holds no key for a user who was not scored: the database answers with the fallback.
            newbie = client.get("/v1/users/newbie/home").json()
            assert (newbie["source"], newbie["personalized"]) == ("database", False)
            # Redis holds an inactive user's insights but no lists: the database answers /home with the fallback.
            u5_home = client.get("/v1/users/u5/home").json()
            assert (u5_home["source"], u5_home["personalized"], u5_home["reason"]) == (
                "database", False, "not_scored: Popular on the store")
            assert client.get("/v1/users/u5/insights").json()["source"] == "redis"
            # Keys gone from Redis (expired): the database still answers the same.
            for key in store.scan_iter(match=f"{prefix}:v1:user:*"):
                store.delete(key)
            assert client.get("/v1/users/u1/home").json() == {**home, "source": "database"}
        # Redis down: the database answers, health says degraded.
        env["PE_SERVING__REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
        with api_server(tmp_path, env) as base, httpx.Client(base_url=base, headers=AUTH) as client:
            assert client.get("/health").json()["status"] == "degraded"
            assert client.get("/v1/users/u1/home").json() == {**home, "source": "database"}
    finally:
        keys = list(store.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            store.delete(*keys)


# ------------------------------------------------------------ concurrency
def tagged_world(tmp_path: Path, k: int) -> dict[str, str]:
    """World ``k``: every app id carries ``k`` (``a1k2``), so a mixed answer shows."""
    recommendations = [(u, s, r, f"{a}k{k}", sc, reason, ra) for (u, s, r, a, sc, reason, ra) in REC]
    similar = [(a, r, f"{b}k{k}", sc) for (a, r, b, sc) in SIMILAR]
    return write_world(tmp_path, f"w{k}", recommendations=recommendations, similar_apps=similar)


@pytest.mark.parametrize("via", ["database", "redis"])
def test_no_mixed_versions_during_publishes(backend: dict[str, str], via: str, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    """Readers hammer /home and /similar while two publishes switch versions: whole versions, zero errors."""
    redis_url, prefix = "", f"pe_api_test_{uuid.uuid4().hex[:10]}"
    if via == "redis":
        redis = request.getfixturevalue("redis_client")  # skips without Redis (fails in CI)
        redis_url = REDIS_URL
        request.addfinalizer(lambda: [redis.delete(key) for key in redis.scan_iter(match=f"{prefix}:*")])
    config = config_for(tmp_path, backend, keep_versions=3, redis_url=redis_url, redis_ttl_seconds=600)
    worlds = [tagged_world(tmp_path, k) for k in (1, 2, 3)]
    publish(config, DATE, worlds[0], "m1", redis_prefix=prefix)
    stop = threading.Event()
    problems: list[str] = []
    seen: list[list[int]] = [[] for _ in range(4)]
    sources: set[str] = set()

    def reader(index: int, base: str) -> None:
        deadline = time.monotonic() + 120  # bounded even if the publishes hang
        path = "/v1/users/u1/home" if index % 2 == 0 else "/v1/apps/a1/similar"
        with httpx.Client(base_url=base, headers=AUTH, timeout=30) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    response = client.get(path)
                except httpx.HTTPError as error:
                    problems.append(f"{path}: {type(error).__name__}: {error}")
                    continue
                if response.status_code != 200:
                    problems.append(f"{path}: HTTP {response.status_code} {response.text[:200]}")
                    continue
                body = response.json()
                version = body["version"]
                sources.add(body["source"])
                if index % 2 == 0:
                    apps = [i["app_id"] for items in body["surfaces"].values() for i in items]
                    expected = [f"{a}k{version}" for a in ("a1", "a2", "a3", "a4", "a5")]
                else:
                    apps = [i["app_id"] for i in body["items"]]
                    expected = [f"a2k{version}", f"a3k{version}"]
                if apps != expected or body["model_version"] != f"m{version}":
                    problems.append(f"{path}: mixed answer: version {version}, {body['model_version']}, {apps}")
                else:
                    seen[index].append(version)

    env = _env(tmp_path, backend, PE_SERVING__REDIS_URL=redis_url)
    with api_server(tmp_path, env, "--redis-prefix", prefix) as base:
        threads = [threading.Thread(target=reader, args=(index, base)) for index in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)
            for k in (2, 3):
                assert publish(config, DATE, worlds[k - 1], f"m{k}", redis_prefix=prefix)["version"] == k
            started = time.monotonic()
            while time.monotonic() - started < 10 and not all(s and s[-1] == 3 for s in seen):
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert problems == [] and sources == {via}
    for versions in seen:
        assert len(versions) > 5 and versions == sorted(versions) and versions[-1] == 3, versions


# ------------------------------------------------------------------ Compose
def test_compose_runs_the_api_as_the_read_only_role() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    api = compose["services"]["api"]
    assert api["entrypoint"] == ["pe", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert api["ports"] == ["8000:8000"] and api["image"] == compose["x-project"]["image"]
    assert set(api["depends_on"]) == {"serving-db", "redis"}
    # Its own environment (not the project's): the reader role's password and the keys, no writer or lake secrets.
    assert api["environment"] == {
        "PE_ROOT": "/opt/personalization", "PE_SERVING__URL": "postgresql://pe_writer@serving-db:5432/serving",
        "PE_SERVING__REDIS_URL": "redis://redis:6379/0", "PE_SERVING__READER_ROLE": "pe_app_reader",
        "PE_APP_READER_PASSWORD": "${PE_APP_READER_PASSWORD:?set in .env}",
        "PE_API_KEYS": "${PE_API_KEYS:?set in .env (comma-separated, 16+ characters each)}"}
    # The publishing side sets the same password on the role.
    assert compose["x-project"]["environment"]["PE_APP_READER_PASSWORD"] == "${PE_APP_READER_PASSWORD:?set in .env}"
