"""The FastAPI application: routes, API-key authentication, id validation, error mapping.

Authentication: every route but ``/health`` (and the OpenAPI document and its
``/docs`` page) needs a key in the ``X-API-Key`` header, one of the comma-separated
keys in ``$PE_API_KEYS`` (at least 16 characters each; never in configuration
files or code); a missing or wrong key gets 401 before anything is validated or
read. Without any key the app refuses to start unless ``allow_no_auth`` is
given (``pe serve --insecure-no-auth``, for local development only).
"""

from __future__ import annotations

import contextlib
import hmac
import importlib.metadata
import logging
import os
from collections.abc import AsyncIterator, Sequence
from enum import Enum
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader

from personalization.api.models import (
    ErrorResponse,
    HealthResponse,
    HomeResponse,
    InsightsResponse,
    RecommendationsResponse,
    SimilarResponse,
    VersionResponse,
)
from personalization.api.store import (
    MAX_LIMIT,
    SURFACES,
    NotFound,
    NothingPublished,
    ServingStore,
    reader_url,
)
from personalization.config import Config, load_config
from personalization.security import InvalidIdentifierError, validate_app_id, validate_id, validate_user_id
from personalization.serving.publish import REDIS_PREFIX

log = logging.getLogger("personalization.api")

#: Environment variable with the accepted API keys, comma-separated.
API_KEYS_ENV = "PE_API_KEYS"
API_KEY_HEADER = "X-API-Key"
#: Shortest accepted key: a guessable key is no authentication.
MIN_KEY_LENGTH = 16

#: The key header as an OpenAPI security scheme (module level: the routes' annotations name it).
KEY_HEADER = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="one of $PE_API_KEYS")

Surface = Enum("Surface", {name: name for name in SURFACES}, type=str)


def api_keys_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """The keys in ``$PE_API_KEYS`` (comma-separated, blanks dropped)."""
    value = (os.environ if environ is None else environ).get(API_KEYS_ENV, "")
    return [key.strip() for key in value.split(",") if key.strip()]


def _package_version() -> str:
    try:
        return importlib.metadata.version("appstore-personalization")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _checked(validate, value: str) -> str:
    try:
        return validate(value)
    except InvalidIdentifierError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None


# The dependencies are ``async def``: they only compute, and each sync one would cost a thread-pool hop.
async def valid_user_id(
        user_id: Annotated[str, Path(description="the app's user id: letters, digits, _ and -, 1-64")]) -> str:
    return _checked(validate_user_id, user_id)


async def valid_app_id(app_id: Annotated[str, Path(description="app id: letters, digits, _ and -, 1-64")]) -> str:
    return _checked(validate_app_id, app_id)


async def valid_region(region: Annotated[str | None, Query(
        description="the user's region (e.g. US-CA), used only when the user was not scored")] = None) -> str | None:
    return None if region is None else _checked(lambda value: validate_id(value, "region"), region)


def create_app(
    config: Config | None = None,
    *,
    api_keys: Sequence[str] | None = None,
    allow_no_auth: bool = False,
    redis_prefix: str = REDIS_PREFIX,
    pool_size: int = 16,
) -> FastAPI:
    """The read API over ``config``'s serving database and Redis.

    Args:
        api_keys: accepted keys (None: ``$PE_API_KEYS``).
        allow_no_auth: serve without keys when none is configured (local development).
        redis_prefix: the key prefix publish wrote Redis with.
        pool_size: database connections kept (as many more may open under load).

    Raises:
        ValueError: no key and not ``allow_no_auth``; a key shorter than 16 characters;
            no read-only URL for PostgreSQL (see :func:`personalization.api.store.reader_url`).
    """
    config = config or load_config()
    keys = list(api_keys_from_env() if api_keys is None else api_keys)
    short = [key for key in keys if len(key) < MIN_KEY_LENGTH]
    if short:
        raise ValueError(f"{len(short)} API key(s) shorter than {MIN_KEY_LENGTH} characters in ${API_KEYS_ENV}")
    if not keys and not allow_no_auth:
        raise ValueError(f"no API key: set {API_KEYS_ENV}=key1,key2 (at least {MIN_KEY_LENGTH} characters each), "
                         "or pass --insecure-no-auth for local development")
    if not keys:
        log.warning("api: serving WITHOUT authentication (--insecure-no-auth); never do this outside a laptop")
    encoded = [key.encode() for key in keys]
    store = ServingStore(reader_url(config), config.serving.redis_url, redis_prefix, pool_size)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(
        title="App-store personalization read API", version=_package_version(), lifespan=lifespan,
        description="Published recommendations, insights and similar apps for apps. Every data answer comes "
                    "from one serving version (`version`). Send an API key in the `X-API-Key` header.",
    )
    app.state.store = store
    async def require_key(key: Annotated[str | None, Security(KEY_HEADER)]) -> None:
        if not encoded:
            return
        # Compare with every key in constant time, so timing tells nothing about a near miss.
        given = (key or "").encode()
        if not key or not any([hmac.compare_digest(given, accepted) for accepted in encoded]):
            raise HTTPException(status_code=401, detail=f"missing or wrong API key (header {API_KEY_HEADER})",
                                headers={"WWW-Authenticate": "APIKey"})

    errors = {401: {"model": ErrorResponse, "description": "missing or wrong API key"},
              422: {"description": "invalid id, region, surface or limit"},
              503: {"model": ErrorResponse, "description": "nothing published yet, or the database is unreachable"}}
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=errors)

    @v1.get("/users/{user_id}/recommendations", response_model=RecommendationsResponse)
    def recommendations(
        user_id: Annotated[str, Depends(valid_user_id)],
        region: Annotated[str | None, Depends(valid_region)],
        surface: Annotated[Surface, Query(description="which list")] = Surface.for_you,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="at most this many items")] = 10,
    ) -> dict:
        """One surface of a user's recommendations; a user who was not scored gets the regional-popular
        fallback (`personalized: false`, `reason` says which list)."""
        return store.recommendations(user_id, surface.value, limit, region)

    @v1.get("/users/{user_id}/home", response_model=HomeResponse)
    def home(user_id: Annotated[str, Depends(valid_user_id)],
             region: Annotated[str | None, Depends(valid_region)]) -> dict:
        """Every surface of a user's home page in one answer (the fallback for a user not scored)."""
        return store.home(user_id, region)

    @v1.get("/users/{user_id}/insights", response_model=InsightsResponse,
            responses={404: {"model": ErrorResponse, "description": "the user was not scored"}})
    def insights(user_id: Annotated[str, Depends(valid_user_id)]) -> dict:
        """A user's segment, engagement, churn risk, value and next best action."""
        return store.insights(user_id)

    @v1.get("/apps/{app_id}/similar", response_model=SimilarResponse,
            responses={404: {"model": ErrorResponse, "description": "no similar apps for this app"}})
    def similar(app_id: Annotated[str, Depends(valid_app_id)],
                limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="at most this many items")] = 10) -> dict:
        """The "similar apps" strip of an app's page."""
        return store.similar(app_id, limit)

    @v1.get("/version", response_model=VersionResponse)
    def version() -> dict:
        """The live serving version in the database and in Redis."""
        try:
            live = store.live()
        except NothingPublished:
            live = {"version": None, "model_version": None, "generated_for": None, "published_at": None}
        return {"api_version": app.version, **live, "redis_version": store.redis_version()}

    app.include_router(v1)

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    def health() -> JSONResponse:
        """Liveness and readiness, without a key: the database and Redis answer or not."""
        state = store.health()
        status = "unavailable" if state["database"] != "ok" else (
            "degraded" if state["redis"] not in ("ok", "off") else "ok")
        body = {"status": status, **state, "auth": "api_key" if encoded else "off"}
        return JSONResponse(body, status_code=503 if status == "unavailable" else 200)

    @app.exception_handler(NotFound)
    def not_found(_request: Request, error: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(NothingPublished)
    def nothing_published(_request: Request, error: NothingPublished) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503)

    @app.exception_handler(sa.exc.DBAPIError)
    def database_error(_request: Request, error: sa.exc.DBAPIError) -> JSONResponse:
        log.error("api: serving database error: %s", str(error.orig).strip())
        return JSONResponse({"detail": "serving database unavailable"}, status_code=503)

    return app
