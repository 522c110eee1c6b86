"""User segments: KMeans over profile features, with ids stable from day to day.

Pipeline: VectorAssembler -> StandardScaler (mean 0, std 1) -> KMeans, with k in
``[segments.k_min, segments.k_max]`` (capped at n_users - 1, at least 2) chosen
by silhouette (ClusteringEvaluator, squared Euclidean). Only users with
behavioural consent on D are clustered; the others get segment ``-1``.

Stable ids: today's centroids are matched to the latest earlier centroids
(``gold/segment_centroids``) with the Hungarian algorithm on distances in today's
scaled space; matched clusters keep their id, unmatched ones get new ids above
the previous maximum. Names are derived from the centroids, e.g.
"paying games, evening heavy users".

Outputs (``date=D``): ``gold/segments`` (user_id, segment_id, segment_name),
``gold/segment_summary`` (segment_id, segment_name, size, top_categories,
mean_engagement) and ``gold/segment_centroids`` (segment_id, segment_name,
centroid, feature_names, size).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs import columns as C
from jobs import io
from jobs.spark import get_spark
from personalization.config import Config
from personalization.lake import Lake, check_date

log = logging.getLogger(__name__)

NO_CONSENT_SEGMENT_ID = -1
NO_CONSENT_SEGMENT_NAME = "no behavioural consent"
SINGLE_SEGMENT_NAME = "all users"
#: Behavioural features (before the per-category shares), in centroid order.
BASE_FEATURES = (
    "log_events", "log_frequency", "log_monetary", "payer", "active_days_30", "recency",
    "notification_open_rate", "trend", "night", "morning", "afternoon", "evening",
)
CATEGORY_PREFIX = "cat_"
DAYTIMES = {"night": (0, 6), "morning": (6, 12), "afternoon": (12, 18), "evening": (18, 24)}

CENTROID_SCHEMA = T.StructType(
    [
        T.StructField(C.SEGMENT_ID, T.IntegerType()),
        T.StructField(C.SEGMENT_NAME, T.StringType()),
        T.StructField(C.CENTROID, T.ArrayType(T.DoubleType())),
        T.StructField(C.FEATURE_NAMES, T.ArrayType(T.StringType())),
        T.StructField(C.SEGMENT_SIZE, T.LongType()),
    ]
)


def profile_categories(profiles: DataFrame) -> list[str]:
    """Sorted categories present in any profile's category scores (a small driver list)."""
    keys = profiles.select(F.explode(F.map_keys(C.CATEGORY_SCORES)).alias("c")).distinct().collect()
    return sorted(row["c"] for row in keys if row["c"] is not None)


def segment_features(profiles: DataFrame, categories: list[str], window_days: int) -> DataFrame:
    """Numeric clustering features per consenting user (``user_id`` + feature columns).

    Counts and money are log1p-compressed; ``recency`` of users without activity is
    ``window_days``; an undefined ``trend`` is 1 (steady); daytime shares come from
    the hour histogram; ``cat_<c>`` is the category preference share.
    """
    hour = F.col(C.HOUR_HISTOGRAM)

    def hours_share(start: int, stop: int) -> Column:
        return sum((F.coalesce(hour[h], F.lit(0.0)) for h in range(start, stop)), F.lit(0.0))

    columns: dict[str, Column] = {
        "log_events": F.log1p(F.col(C.N_EVENTS).cast("double")),
        "log_frequency": F.log1p(F.col(C.FREQUENCY).cast("double")),
        "log_monetary": F.log1p(F.col(C.MONETARY)),
        "payer": (F.col(C.PURCHASE_COUNT) > 0).cast("double"),
        "active_days_30": F.col(C.ACTIVE_DAYS_30).cast("double"),
        "recency": F.coalesce(F.col(C.RECENCY_DAYS), F.lit(window_days)).cast("double"),
        "notification_open_rate": F.col(C.NOTIFICATION_OPEN_RATE),
        "trend": F.coalesce(F.col(C.TREND), F.lit(1.0)),
        **{name: hours_share(start, stop) for name, (start, stop) in DAYTIMES.items()},
        **{
            CATEGORY_PREFIX + category: F.coalesce(F.col(C.CATEGORY_SCORES)[category], F.lit(0.0))
            for category in categories
        },
    }
    return profiles.where(F.col(C.BEHAVIOR_ALLOWED)).select(
        C.USER_ID, *[F.coalesce(value, F.lit(0.0)).cast("double").alias(name) for name, value in columns.items()]
    )


def k_range(n_users: int, k_min: int, k_max: int) -> list[int]:
    """Candidate k: ``[k_min, k_max]`` capped at ``n_users - 1`` and at least 2 (empty below 3 users)."""
    if n_users < 3:
        return []
    high = max(2, min(k_max, n_users - 1))
    low = min(max(2, k_min), high)
    return list(range(low, high + 1))


@dataclass
class Clustering:
    """The fitted model and what MLflow logs about it."""

    assignments: DataFrame  # user_id, cluster (0..k-1)
    centroids: np.ndarray  # [k, n_features], original (unscaled) units
    mean: np.ndarray
    std: np.ndarray
    feature_names: list[str]
    k: int
    silhouette_by_k: dict[int, float] = field(default_factory=dict)
    model: PipelineModel | None = None


def cluster(features: DataFrame, k_min: int, k_max: int, seed: int) -> Clustering:
    """Fit scaler + KMeans for each candidate k and keep the best silhouette (ties: smaller k).

    ``features`` is the output of :func:`segment_features`. With fewer than 3 users
    everyone is in one cluster.
    """
    names = [c for c in features.columns if c != C.USER_ID]
    prep = Pipeline(
        stages=[
            VectorAssembler(inputCols=names, outputCol="raw_features"),
            StandardScaler(inputCol="raw_features", outputCol="features", withMean=True, withStd=True),
        ]
    )
    # A stable row order makes the fit independent of how the input was shuffled.
    ordered = features.orderBy(C.USER_ID).coalesce(1)
    prep_model = prep.fit(ordered)
    scaled = prep_model.transform(ordered).select(C.USER_ID, "features").cache()
    scaler = prep_model.stages[1]
    mean, std = np.array(scaler.mean.toArray()), np.array(scaler.std.toArray())
    n_users = scaled.count()
    candidates = k_range(n_users, k_min, k_max)
    if not candidates:
        assignments = scaled.select(C.USER_ID, F.lit(0).alias("cluster"))
        centroid = np.array(
            [float(v or 0.0) for v in features.agg(*[F.avg(n) for n in names]).first()]
        ).reshape(1, -1) if n_users else np.zeros((1, len(names)))
        scaled.unpersist()
        return Clustering(assignments, centroid, mean, std, names, 1, {}, prep_model)

    evaluator = ClusteringEvaluator(
        featuresCol="features", predictionCol="cluster", metricName="silhouette", distanceMeasure="squaredEuclidean"
    )
    best = None
    scores: dict[int, float] = {}
    for k in candidates:
        model = KMeans(k=k, seed=seed, featuresCol="features", predictionCol="cluster", maxIter=30).fit(scaled)
        predictions = model.transform(scaled)
        try:
            score = float(evaluator.evaluate(predictions))
        except Exception:  # noqa: BLE001 - degenerate clusterings (one cluster) have no silhouette
            score = float("nan")
        scores[k] = score
        usable = not math.isnan(score)
        if usable and (best is None or score > best[0] + 1e-12):
            best = (score, k, model)
    if best is None:  # every candidate degenerate: keep the smallest k
        k = candidates[0]
        best = (float("nan"), k, KMeans(k=k, seed=seed, featuresCol="features", predictionCol="cluster").fit(scaled))
    _, k, model = best
    assignments = model.transform(scaled).select(C.USER_ID, "cluster")
    scaled_centers = np.array([np.asarray(c, dtype=float) for c in model.clusterCenters()])
    safe_std = np.where(std > 0, std, 1.0)
    centroids = scaled_centers * safe_std + mean
    pipeline_model = PipelineModel(stages=[*prep_model.stages, model])
    return Clustering(assignments, centroids, mean, std, names, len(centroids), scores, pipeline_model)


def match_segment_ids(
    centroids: np.ndarray,
    feature_names: list[str],
    mean: np.ndarray,
    std: np.ndarray,
    previous: list[dict[str, Any]],
) -> list[int]:
    """Stable segment id for each of today's centroids (rows of ``centroids``).

    ``previous``: rows of the last centroid table (segment_id, centroid,
    feature_names). Both sides are compared in today's scaled space; features
    missing on one side count as 0. The Hungarian algorithm minimises the total
    distance; unmatched clusters get ids above the previous maximum.
    """
    from scipy.optimize import linear_sum_assignment

    previous = [p for p in previous if p[C.SEGMENT_ID] is not None and p[C.SEGMENT_ID] >= 0]
    if not previous:
        return list(range(len(centroids)))
    safe_std = np.where(std > 0, std, 1.0)
    index = {name: i for i, name in enumerate(feature_names)}
    old = np.zeros((len(previous), len(feature_names)))
    for row, prev in enumerate(previous):
        for name, value in zip(prev[C.FEATURE_NAMES], prev[C.CENTROID], strict=True):
            if name in index:
                old[row, index[name]] = value
    new_scaled = (centroids - mean) / safe_std
    old_scaled = (old - mean) / safe_std
    cost = np.linalg.norm(new_scaled[:, None, :] - old_scaled[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost)
    ids = [-1] * len(centroids)
    for r, c in zip(rows, cols, strict=True):
        ids[r] = int(previous[c][C.SEGMENT_ID])
    next_id = max(int(p[C.SEGMENT_ID]) for p in previous) + 1
    for i in range(len(ids)):
        if ids[i] < 0:
            ids[i], next_id = next_id, next_id + 1
    return ids


def segment_name(centroid: np.ndarray, feature_names: list[str], overall_mean: np.ndarray) -> str:
    """Readable name from a centroid in original units, e.g. "paying games, evening heavy users"."""
    value = dict(zip(feature_names, centroid, strict=True))
    average = dict(zip(feature_names, overall_mean, strict=True))
    if value.get("log_events", 0.0) < math.log1p(1.0):
        return "new or dormant users"
    categories = {n[len(CATEGORY_PREFIX):]: v for n, v in value.items() if n.startswith(CATEGORY_PREFIX)}
    category = max(sorted(categories), key=lambda c: categories[c]) if categories else "mixed"
    if categories and categories[category] <= 0:
        category = "mixed"
    spending = "paying" if value.get("payer", 0.0) >= 0.5 else "free"
    daytime = max(DAYTIMES, key=lambda d: value.get(d, 0.0))
    intensity = "heavy" if value.get("log_events", 0.0) >= average.get("log_events", 0.0) else "light"
    return f"{spending} {category}, {daytime} {intensity} users"


def _unique_names(names: list[str], ids: list[int]) -> list[str]:
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    return [f"{name} (segment {sid})" if seen[name] > 1 else name for name, sid in zip(names, ids, strict=True)]


@dataclass
class SegmentResult:
    segments: DataFrame  # user_id, segment_id, segment_name
    summary: DataFrame  # segment_id, segment_name, size, top_categories, mean_engagement
    centroids: DataFrame  # CENTROID_SCHEMA
    clustering: Clustering
    segment_ids: list[int]
    segment_names: list[str]


def build_segments(
    profiles: DataFrame,
    previous_centroids: list[dict[str, Any]],
    k_min: int,
    k_max: int,
    seed: int,
    window_days: int,
) -> SegmentResult:
    """Cluster ``profiles`` (gold profiles of one date) into stable, named segments."""
    spark = profiles.sparkSession
    categories = profile_categories(profiles)
    features = segment_features(profiles, categories, window_days)
    clustering = cluster(features, k_min, k_max, seed)
    ids = match_segment_ids(
        clustering.centroids, clustering.feature_names, clustering.mean, clustering.std, previous_centroids
    )
    names = _unique_names(
        [segment_name(c, clustering.feature_names, clustering.mean) for c in clustering.centroids], ids
    )
    lookup = spark.createDataFrame(
        [(i, sid, name) for i, (sid, name) in enumerate(zip(ids, names, strict=True))],
        f"cluster int, {C.SEGMENT_ID} int, {C.SEGMENT_NAME} string",
    )
    clustered = clustering.assignments.join(F.broadcast(lookup), "cluster").drop("cluster")
    segments = profiles.select(C.USER_ID).join(clustered, C.USER_ID, "left").select(
        C.USER_ID,
        F.coalesce(F.col(C.SEGMENT_ID), F.lit(NO_CONSENT_SEGMENT_ID)).alias(C.SEGMENT_ID),
        F.coalesce(F.col(C.SEGMENT_NAME), F.lit(NO_CONSENT_SEGMENT_NAME)).alias(C.SEGMENT_NAME),
    )

    # Summary: size, top 3 categories by mean preference, engagement = active days / 30 in 0..1.
    members = segments.join(profiles, C.USER_ID)
    per_category = (
        members.select(C.SEGMENT_ID, F.explode_outer(C.CATEGORY_SCORES).alias("_category", "_score"))
        .where(F.col("_category").isNotNull())
        .groupBy(C.SEGMENT_ID, "_category")
        .agg(F.sum("_score").alias("_total"))
        .groupBy(C.SEGMENT_ID)
        .agg(F.array_sort(F.collect_list(F.struct(F.negative("_total").alias("k"), F.col("_category").alias("c")))).alias("_t"))
        .select(C.SEGMENT_ID, F.transform(F.slice("_t", 1, 3), lambda t: t["c"]).alias(C.TOP_CATEGORIES))
    )
    summary = (
        members.groupBy(C.SEGMENT_ID, C.SEGMENT_NAME)
        .agg(
            F.count(F.lit(1)).alias(C.SEGMENT_SIZE),
            F.avg(F.coalesce(F.col(C.ACTIVE_DAYS_30), F.lit(0)) / 30.0).alias(C.MEAN_ENGAGEMENT),
        )
        .join(per_category, C.SEGMENT_ID, "left")
        .select(
            C.SEGMENT_ID, C.SEGMENT_NAME, C.SEGMENT_SIZE,
            F.coalesce(F.col(C.TOP_CATEGORIES), F.array().cast("array<string>")).alias(C.TOP_CATEGORIES),
            C.MEAN_ENGAGEMENT,
        )
    )
    sizes = {row["cluster"]: int(row["count"]) for row in clustering.assignments.groupBy("cluster").count().collect()}
    centroid_rows = [
        (sid, name, [float(v) for v in centroid], list(clustering.feature_names), sizes.get(i, 0))
        for i, (sid, name, centroid) in enumerate(zip(ids, names, clustering.centroids, strict=True))
    ]
    centroids = spark.createDataFrame(centroid_rows, CENTROID_SCHEMA)
    return SegmentResult(segments, summary, centroids, clustering, ids, names)


def previous_centroids(spark: SparkSession, lake: Lake, as_of: str) -> tuple[str | None, list[dict[str, Any]]]:
    """The latest centroid table strictly before ``as_of`` (date, rows as dicts)."""
    earlier = [d for d in io.list_partitions(spark, lake.gold("segment_centroids"), "date") if d < as_of]
    if not earlier:
        return None, []
    table = io.read_partition(spark, lake.gold("segment_centroids"), "date", earlier[-1])
    return earlier[-1], [row.asDict() for row in table.collect()] if table is not None else []


def log_to_mlflow(config: Config, as_of: str, result: SegmentResult, previous_date: str | None) -> str:
    """One MLflow run per date (an earlier run for the same date is deleted); returns its id."""
    import mlflow

    mlflow.set_tracking_uri(config.mlflow_tracking_uri)
    name = config.mlflow.experiment + "-segments"
    experiment = mlflow.get_experiment_by_name(name)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else mlflow.create_experiment(name, artifact_location=config.mlflow_artifact_root)
    )
    client = mlflow.tracking.MlflowClient()
    for run in client.search_runs([experiment_id], filter_string=f"tags.as_of = '{as_of}'"):
        client.delete_run(run.info.run_id)
    clustering = result.clustering
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"segments-{as_of}", tags={"as_of": as_of}) as run:
        mlflow.log_params(
            {
                "k_min": config.segments.k_min,
                "k_max": config.segments.k_max,
                "seed": config.segments.seed,
                "k": clustering.k,
                "n_features": len(clustering.feature_names),
                "previous_centroids": previous_date or "none",
            }
        )
        for k, score in sorted(clustering.silhouette_by_k.items()):
            if not math.isnan(score):
                mlflow.log_metric("silhouette", score, step=k)
        best = clustering.silhouette_by_k.get(clustering.k)
        if best is not None and not math.isnan(best):
            mlflow.log_metric("best_silhouette", best)
        mlflow.log_dict({str(k): v for k, v in clustering.silhouette_by_k.items()}, "k_curve.json")
        mlflow.log_dict(
            {
                "feature_names": clustering.feature_names,
                "segments": [
                    {"segment_id": sid, "segment_name": name, "centroid": [float(v) for v in centroid]}
                    for sid, name, centroid in zip(result.segment_ids, result.segment_names, clustering.centroids, strict=True)
                ],
            },
            "centroids.json",
        )
        return run.info.run_id


def main(config: Config, date: str, spark: SparkSession | None = None, log_mlflow: bool = True) -> dict:
    """Build the three segment tables of ``date``; return paths, k and the MLflow run id."""
    as_of = check_date(date)
    spark = spark or get_spark(config, "build_segments")
    lake = Lake(config)
    profiles = io.read_partition(spark, lake.gold("profiles"), "date", as_of)
    if profiles is None:
        raise FileNotFoundError(f"gold/profiles/date={as_of} is missing: run build_profiles first")
    previous_date, previous = previous_centroids(spark, lake, as_of)
    result = build_segments(
        profiles, previous, config.segments.k_min, config.segments.k_max, config.segments.seed,
        config.profiles.window_days,
    )
    paths = {
        "segments_path": io.write_partition(result.segments, lake.gold("segments"), "date", as_of),
        "summary_path": io.write_partition(result.summary, lake.gold("segment_summary"), "date", as_of),
        "centroids_path": io.write_partition(result.centroids, lake.gold("segment_centroids"), "date", as_of),
    }
    run_id = log_to_mlflow(config, as_of, result, previous_date) if log_mlflow else None
    # NaN (no silhouette for a degenerate clustering) is not JSON: report None.
    scores = {k: (None if math.isnan(v) else v) for k, v in result.clustering.silhouette_by_k.items()}
    log.info("segments %s: k=%d silhouette=%s", as_of, result.clustering.k, scores.get(result.clustering.k))
    return {
        "date": as_of,
        **paths,
        "k": result.clustering.k,
        "silhouette": scores.get(result.clustering.k),
        "segment_ids": sorted(result.segment_ids),
        "mlflow_run_id": run_id,
        "k_curve": {str(k): v for k, v in sorted(scores.items())},
    }


if __name__ == "__main__":
    from jobs import submit

    raise SystemExit(submit.run("build_segments", main))
