"""Response bodies of the read API (pydantic models; they are also its OpenAPI schemas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

#: Where a response was read: the Redis copy of a version, or the serving views.
Source = Literal["redis", "database"]


class Served(BaseModel):
    """What every data response says about the published version it was read from (one version)."""

    version: int = Field(description="serving version number (pe versions); the whole response comes from it")
    model_version: str | None = Field(description="model that produced the version; null when unknown")
    generated_for: str | None = Field(description="date the version was scored for, YYYY-MM-DD")
    source: Source = Field(description="redis or database")


class Item(BaseModel):
    """One recommended app on a surface."""

    rank: int = Field(description="1..N within the surface")
    app_id: str
    score: float = Field(description="model score; for the not-scored fallback, the share (0-1) of the "
                                     "region's non-personalised lists that hold the app")
    reason: str | None = Field(description="the explanation shown to the user")
    reason_app_id: str | None = Field(description="the app the reason refers to, if any")
    variant: str | None = Field(description="A/B variant of the user; null for the fallback")


class RecommendationsResponse(Served):
    user_id: str
    surface: str
    personalized: bool = Field(description="false when the user was not scored and this is the fallback")
    reason: str | None = Field(description="why the answer is not the user's own list (null when it is)")
    items: list[Item]


class HomeResponse(Served):
    user_id: str
    personalized: bool = Field(description="false when the user was not scored and this is the fallback")
    reason: str | None = Field(description="why the answer is not the user's own page (null when it is)")
    surfaces: dict[str, list[Item]] = Field(description="surface -> items, in display order")


class Insights(BaseModel):
    segment: str | None
    engagement_score: float | None = Field(description="0-100")
    churn_risk: float | None = Field(description="0-1")
    lifetime_value: float | None
    primary_interests: list[dict[str, Any]] | dict[str, Any] | None = Field(
        description="as published: scoring writes [{category, weight}, ...], heaviest first")
    next_best_action: str | None
    best_notification_hour: int | None = Field(description="0-23, the user's local hour")
    notification_channel: str | None
    notification_cap_per_week: int | None


class InsightsResponse(Served):
    user_id: str
    insights: Insights


class SimilarItem(BaseModel):
    rank: int
    app_id: str = Field(description="the similar app")
    score: float


class SimilarResponse(Served):
    app_id: str
    items: list[SimilarItem]


class VersionResponse(BaseModel):
    api_version: str = Field(description="version of this package")
    version: int | None = Field(description="live serving version in the database (null before a publish)")
    model_version: str | None
    generated_for: str | None
    published_at: str | None = Field(description="ISO-8601 UTC time of the live version's publish")
    redis_version: int | None = Field(description="live version in Redis (null when Redis is off or empty)")


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="ok; degraded when Redis fails (answers come from the database); unavailable "
                    "when the database fails (HTTP 503)")
    database: str = Field(description="ok, or the error")
    redis: str = Field(description="ok, off, or the error")
    auth: Literal["api_key", "off"]


class ErrorResponse(BaseModel):
    detail: str
