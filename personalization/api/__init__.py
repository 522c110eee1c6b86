"""The read API for apps: HTTP over the published serving data.

``create_app(config) -> FastAPI`` (:mod:`personalization.api.app`) serves

- ``GET /v1/users/{user_id}/recommendations?surface=&limit=&region=``
- ``GET /v1/users/{user_id}/home`` (every surface in one response)
- ``GET /v1/users/{user_id}/insights``
- ``GET /v1/apps/{app_id}/similar?limit=``
- ``GET /v1/version`` and ``GET /health`` (the only route without an API key)

and its OpenAPI document at ``/openapi.json``. Reads go to Redis first
(:mod:`personalization.serving.redis_sink`), then to the stable serving views
through the read-only role (:mod:`personalization.api.store`). ``pe serve``
starts it with uvicorn.
"""

from personalization.api.app import create_app

__all__ = ["create_app"]
