"""Airflow Assets published by the personalization DAGs (module constants, no I/O).

The URIs are logical names: where each table physically lives (local lake,
``s3://`` lake, PostgreSQL) is configuration. DAGs in other teams can schedule
on these, e.g. ``schedule=[SERVING_RECOMMENDATIONS]``.
"""

from __future__ import annotations

from airflow.sdk import Asset


def _asset(zone: str, table: str) -> Asset:
    return Asset(name=f"personalization.{zone}.{table}", uri=f"personalization://{zone}/{table}")


SILVER_EVENTS = _asset("silver", "events")
SILVER_QUARANTINE = _asset("silver", "quarantine")
GOLD_PROFILES = _asset("gold", "profiles")
GOLD_SEGMENTS = _asset("gold", "segments")
GOLD_USER_FEATURES = _asset("gold", "user_features")
GOLD_APP_FEATURES = _asset("gold", "app_features")
GOLD_INTERACTIONS = _asset("gold", "interactions")
GOLD_POPULARITY = _asset("gold", "popularity")
MODEL_CHAMPION = _asset("mlflow", "app-recommender")
SERVING_RECOMMENDATIONS = _asset("serving", "recommendations")
SERVING_USER_INSIGHTS = _asset("serving", "user_insights")
SERVING_SIMILAR_APPS = _asset("serving", "similar_apps")

SERVING_ASSETS = [SERVING_RECOMMENDATIONS, SERVING_USER_INSIGHTS, SERVING_SIMILAR_APPS]
