"""One typed configuration for the whole engine.

Resolution order (later wins):
1. the embedded defaults below (a laptop run under ``var/``);
2. a YAML file: ``$PE_CONFIG`` or the ``path`` argument of :func:`load_config`;
3. environment variables ``PE_<SECTION>__<KEY>`` (for example
   ``PE_SERVING__URL=postgresql://...`` or ``PE_SPARK__MASTER=spark://host:7077``).

Relative paths are resolved against the project root (``$PE_ROOT``, else the
current directory), so production values such as an ``s3://`` lake or a
PostgreSQL URL are configuration, never code changes. Secrets are never stored
here: they come from the environment (for example ``PE_PRIVACY__HMAC_KEY``) or an
Airflow connection.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCALES = ("tiny", "small", "medium", "large")


@dataclass
class PathsConfig:
    """Where things live. Local paths or URIs (``s3://bucket/prefix``)."""

    root: str = "."
    var_dir: str = "var"
    lake_root: str = "var/lake"
    airflow_home: str = "var/airflow"
    results_dir: str = "results"


@dataclass
class GeneratorConfig:
    """The synthetic app-store world (the embedded default data)."""

    scale: str = "small"
    seed: int = 42
    start_date: str = "2026-10-01"
    #: Fraction of raw lines replaced by an injected bad record (0 disables).
    bad_record_rate: float = 0.01


@dataclass
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "personalization"
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    #: Extra ``spark.*`` settings, e.g. ``{"spark.executor.memory": "8g"}``.
    extra: dict[str, str] = field(default_factory=dict)
    #: Airflow connection id for spark-submit; empty runs Spark in-process.
    submit_conn_id: str = ""
    #: The packaged code spark-submit ships (``make jobs-zip``), relative to the project root.
    submit_py_files: str = "dist/personalization-jobs.zip"
    #: Airflow pool of the Spark tasks (``airflow pools set spark 1 ...`` limits concurrent jobs).
    pool: str = "spark"
    #: Spark reads and writes an ``s3://`` lake through s3a (the cluster has hadoop-aws); when
    #: false, each stage works on a local copy synced with boto3 (personalization.staging).
    s3a_enabled: bool = False


@dataclass
class ValidationConfig:
    #: The run fails when bad records exceed this fraction of the landing batch.
    max_bad_rate: float = 0.05
    #: Oversized free-text fields (bytes) are quarantined.
    max_field_bytes: int = 2048
    #: Events more than this many minutes after the landing day's end are "in the future".
    future_tolerance_minutes: int = 60
    #: Late events make earlier gold partitions stale; the newest this many of them are rebuilt
    #: each night (profiles, features), older ones are reported as stale. 0 turns it off.
    recompute_late_max_days: int = 7


#: Inputs of profiles, features and popularity (``profiles.source``).
PROFILE_SOURCES = ("aggregates", "events")


@dataclass
class ProfileConfig:
    window_days: int = 90
    #: Half-life of the exponential time decay, in days.
    half_life_days: float = 14.0
    #: What profiles, features and popularity are computed from: ``aggregates`` (the window's
    #: per-day aggregates, jobs/build_daily_aggregates.py) or ``events`` (the window's raw
    #: events, from scratch: the reference the aggregates are tested against).
    source: str = "aggregates"


@dataclass
class SegmentConfig:
    k_min: int = 4
    k_max: int = 8
    seed: int = 7


@dataclass
class FeatureConfig:
    #: Days at the end of the window used for validation examples.
    validation_days: int = 2
    negatives_per_positive: int = 4
    #: Regional/category aggregates over fewer distinct users are suppressed.
    min_group_size: int = 10
    popularity_half_life_days: float = 7.0


@dataclass
class TrainingConfig:
    #: Models trained each night; the champion is chosen among them by validation NDCG@10.
    models: list[str] = field(
        default_factory=lambda: [
            "popularity", "regional_popularity", "ease", "cf_bpr", "two_tower", "content", "blend"
        ]
    )
    seed: int = 42
    embedding_dim: int = 64
    max_epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 0.003
    ease_lambda: float = 250.0
    #: "full" retrains from scratch; "incremental" warm-starts from the champion.
    mode: str = "full"
    #: With mode "auto": full retrain on this ISO weekday (1=Mon..7=Sun), incremental otherwise.
    full_retrain_weekday: int = 7
    accelerator: str = "auto"
    k: int = 10


@dataclass
class ModelOptions:
    """Model-specific tunables, section ``models`` (env ``PE_MODELS__TT_HIDDEN_DIM=256``).

    The shared ones (seed, sizes, epochs, learning rate, k) are in ``training``; these are
    the knobs of one model each. Every default lives here, so a model never hard-codes one.
    """

    #: EASE L2 strengths tried on validation; empty = only ``training.ease_lambda``.
    ease_lambda_grid: list[float] = field(default_factory=list)
    #: EASE input: interaction weight ** power (0 = binary; 0.5 damps heavy users and repeat weights).
    ease_weight_power: float = 0.0
    #: Powers tried on validation together with ``ease_lambda_grid``; empty = only ``ease_weight_power``.
    ease_weight_power_grid: list[float] = field(default_factory=list)
    #: L2 penalty on the embeddings touched by a BPR batch (per example, summed over dims).
    cf_l2: float = 1e-2
    #: Two-tower: hidden width of the tower and interaction MLPs.
    tt_hidden_dim: int = 128
    tt_dropout: float = 0.2
    #: Two-tower: catalogues up to this size train with a softmax over every app; larger
    #: ones with ``tt_sampled_negatives`` uniform apps shared by a batch.
    tt_full_softmax_max_apps: int = 5000
    tt_sampled_negatives: int = 256
    #: Two-tower: weight of the pointwise BCE loss (positives, explicit and sampled negatives).
    tt_bce_weight: float = 0.5
    #: Two-tower: sampled apps per positive used as negatives by the pointwise BCE loss.
    tt_pointwise_negatives: int = 4
    #: Two-tower: share of history items dropped from a training example's bag (denoising).
    tt_history_dropout: float = 0.2
    #: Two-tower: positives drawn (a fresh random subset) per epoch when there are more; 0 =
    #: all. Bounds an epoch's cost on big data (medium: 1.9M positives), not on small sets.
    tt_max_epoch_examples: int = 400_000
    #: Two-tower: share of user and app ids replaced by the "unknown" id 0 while training,
    #: so users and apps never seen in training get vectors from history and features.
    tt_id_dropout: float = 0.1
    #: Two-tower: learning rate multiplied by this after every epoch of a full fit (1 = constant).
    tt_lr_decay: float = 0.9
    #: Two-tower: validate and keep an exponential moving average of the weights with this decay
    #: per step (0 = off: the raw weights of the best epoch). See ``tt_ema_warmup``.
    tt_ema_decay: float = 0.0
    #: Two-tower: the average's first updates follow the weights closely (TensorFlow-style
    #: warm-up). Off, it starts at the initial weights and keeps decay ** steps of them, a
    #: shrinkage that only suits fits of many steps (the quality benchmark turns it off: see there).
    tt_ema_warmup: bool = True
    #: Two-tower: steps between updates of that average (decay ** n per update); 0 = one step per
    #: 2M weights, rounded up (ml-100k 1, the medium preset 4).
    tt_ema_every: int = 0
    #: Two-tower: L2 weight decay (AdamW).
    tt_weight_decay: float = 1e-5
    #: Two-tower: catalogues up to this size are scored with the full MLP; larger ones two-stage.
    tt_full_mlp_max_apps: int = 5000
    #: Two-tower, two-stage scoring: apps retrieved per user by dot product for the MLP to re-rank.
    tt_retrieval_pool: int = 100
    #: Regional popularity: the integer user feature naming the user's region (0 = unknown)
    #: and the prior, in pseudo-users, that shrinks a small region towards global popularity.
    group_popularity_column: str = "country_idx"
    group_popularity_prior: float = 10.0
    #: Content model: weights of the one-hot category block and the scaled numeric block
    #: relative to the (unit-norm) text vector.
    content_category_weight: float = 1.0
    content_numeric_weight: float = 0.5
    #: Blend model: components (fitted earlier in the same run) and the weight grid step.
    blend_models: list[str] = field(default_factory=lambda: ["ease", "two_tower"])
    blend_weight_step: float = 0.1
    #: The weight search caches validation scores when users x apps x components fits (float32
    #: count, 100M = 400 MB); with more validation users it searches on a seeded sample of as
    #: many as fit (medium: 5,000 of ~50,000), if at least ``blend_min_search_users``.
    blend_cache_max_floats: int = 100_000_000
    blend_min_search_users: int = 1000
    #: Incremental mode: fine-tuning epochs and the newest training days fine-tuned on.
    incremental_epochs: int = 2
    incremental_days: int = 1
    #: When mode is incremental, also train from scratch and log both side by side.
    compare_modes: bool = False
    #: Stop when validation NDCG has not improved for this many epochs (0 disables).
    early_stopping_patience: int = 3
    #: Lightning smoke-test switches (tests): one batch of train and validation.
    fast_dev_run: bool = False
    limit_train_batches: float = 1.0
    #: torch intra-op threads while training BPR (0 keeps torch's default): its small
    #: embedding kernels run fastest on one thread.
    train_threads: int = 1
    #: The same for the two-tower, whose MLPs over [batch, 128] blocks gain from every core
    #: (2 threads against 1, per step: 47 vs 66 ms at medium, 67 vs 96 ms at ml-100k's size).
    tt_train_threads: int = 0
    #: Users per block in evaluation (peak memory block x n_apps float32).
    eval_block_size: int = 1024
    #: Validation users scored after each training epoch (best epoch, early stopping): a
    #: seeded sample when there are more; 0 = all. The final evaluation scores every user.
    epoch_val_max_users: int = 10000


@dataclass
class PromotionConfig:
    #: A challenger needs validation NDCG@10 above champion + margin.
    ndcg_margin: float = 0.0
    #: Guardrails: the challenger may lose at most this much (absolute) coverage / diversity.
    max_coverage_drop: float = 0.10
    max_diversity_drop: float = 0.10


@dataclass
class MlflowConfig:
    tracking_uri: str = "sqlite:///var/mlflow.db"
    artifact_root: str = "var/mlartifacts"
    experiment: str = "personalization"
    registered_model: str = "app-recommender"
    champion_alias: str = "champion"


@dataclass
class ScoringConfig:
    top_n: int = 10
    #: Users scored per block; peak memory is block_size x n_apps floats.
    block_size: int = 2048
    #: "local" (blocked matrix products) or "spark" (mapInPandas with a broadcast model).
    engine: str = "local"
    max_per_developer: int = 2
    #: Paid apps are recommended only to users who have bought before.
    paid_only_for_buyers: bool = True
    #: "mmr", "category_cap" or "none".
    diversity: str = "mmr"
    mmr_lambda: float = 0.8
    category_cap: int = 3
    similar_apps_n: int = 10
    #: Candidates per user (the best eligible apps, after the business-rule mask) from which the
    #: developer cap and the diversity re-ranking pick the top_n; a list the pool cannot fill is
    #: topped up from the whole catalogue. 50 for 10 picks under MMR; 100 cost ~6 ms more per 512 users.
    candidate_pool: int = 50
    #: Local engine: threads scoring chunks of a block side by side (0: one per CPU core).
    threads: int = 0


@dataclass
class ServingConfig:
    url: str = "sqlite:///var/serving.db"
    #: Published versions kept for instant rollback.
    keep_versions: int = 3
    #: Optional Redis sink, e.g. redis://127.0.0.1:6379/0; empty disables it.
    redis_url: str = ""
    redis_ttl_seconds: int = 172800
    #: PostgreSQL role apps read through (SELECT on the stable views only), created or repaired on
    #: every publish; its password comes from $PE_APP_READER_PASSWORD, never from configuration.
    reader_role: str = "pe_app_reader"
    #: URL the read API (``pe serve``) reads with; empty: serving.url on SQLite, and on PostgreSQL
    #: serving.url's host and database as reader_role (password from $PE_APP_READER_PASSWORD).
    reader_url: str = ""


@dataclass
class PrivacyConfig:
    #: User ids inside the lake and models are keyed HMACs of the app's ids (serving maps back).
    pseudonymise_user_ids: bool = True
    #: Key for keyed-HMAC pseudonymisation; read from the environment, never committed.
    hmac_key: str = ""
    #: Airflow connection whose password is the key (used when hmac_key is empty).
    hmac_conn_id: str = ""
    #: Without a key or connection, a random key is generated once into this 0600 file.
    hmac_key_file: str = "var/secrets/hmac.key"
    raw_retention_days: int = 400
    aggregate_retention_days: int = 400
    model_retention_days: int = 90
    #: Laplace noise on published aggregate counts (epsilon-DP per count); 0 disables it.
    dp_epsilon: float = 0.0


@dataclass
class MonitoringConfig:
    """Drift and volume checks, alerting, and experiment analysis settings."""

    #: "warn" logs and alerts on a breach; "fail" also fails the monitor task.
    mode: str = "warn"
    #: Nightly SLA: a run not finished this many minutes after it was queued raises an ``sla``
    #: alert (Airflow 3 Deadline Alert). 0 = off, the default because Airflow 3.3's ``dag.test()``
    #: (``make run``) cannot load deadline alerts on its SQLite metadata DB.
    deadline_minutes: float = 0.0
    psi_warn: float = 0.1
    psi_breach: float = 0.25
    psi_bins: int = 10
    psi_epsilon: float = 1e-4
    volume_z_warn: float = 3.0
    volume_z_breach: float = 5.0
    volume_history_days: int = 7
    volume_min_history_days: int = 3
    #: Dotted path of the alert notifier class.
    notifier: str = "personalization.alerts.LoggingNotifier"
    report_window_days: int = 14
    alpha: float = 0.05
    power: float = 0.8
    srm_threshold: float = 0.001
    mde_relative: float = 0.05
    #: YAML file declaring experiments; empty means none.
    experiments_file: str = ""


@dataclass
class Config:
    """The whole engine's configuration."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    profiles: ProfileConfig = field(default_factory=ProfileConfig)
    segments: SegmentConfig = field(default_factory=SegmentConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    models: ModelOptions = field(default_factory=ModelOptions)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)

    # ----------------------------------------------------------------- paths
    @property
    def root(self) -> Path:
        return Path(self.paths.root).resolve()

    def resolve(self, value: str) -> str:
        """Absolute local path for a relative one; URIs (``s3://``) unchanged."""
        if "://" in value:
            return value
        path = Path(value)
        return str(path if path.is_absolute() else (self.root / path).resolve())

    @property
    def lake_root(self) -> str:
        return self.resolve(self.paths.lake_root)

    @property
    def var_dir(self) -> str:
        return self.resolve(self.paths.var_dir)

    @property
    def airflow_home(self) -> str:
        return self.resolve(self.paths.airflow_home)

    @property
    def results_dir(self) -> str:
        return self.resolve(self.paths.results_dir)

    def resolve_sqlite_url(self, url: str) -> str:
        """``url`` with a relative SQLite path (``sqlite:///var/x.db``) made absolute; other URLs as they are."""
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            return prefix + self.resolve(url[len(prefix):])
        return url

    @property
    def mlflow_tracking_uri(self) -> str:
        """Tracking URI with a relative SQLite path made absolute."""
        return self.resolve_sqlite_url(self.mlflow.tracking_uri)

    @property
    def mlflow_artifact_root(self) -> str:
        root = self.mlflow.artifact_root
        return root if "://" in root else Path(self.resolve(root)).as_uri()

    @property
    def serving_url(self) -> str:
        """Serving DB URL with a relative SQLite path made absolute."""
        return self.resolve_sqlite_url(self.serving.url)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------- loading
def _coerce(value: Any, annotation: Any) -> Any:
    """Convert a YAML/env value to the annotated field type, with a clear error."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, str):  # postponed annotations resolved below
        raise TypeError(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if annotation in (int, float, str):
        return annotation(value)
    if origin is list:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        (item_type,) = typing.get_args(annotation)
        return [_coerce(item, item_type) for item in value]
    if origin is dict:
        if isinstance(value, str):
            import json

            value = json.loads(value)
        return {str(key): str(item) for key, item in dict(value).items()}
    return value


def _apply(section: Any, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(section))
    names = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in names:
            raise ValueError(f"unknown configuration key {where}.{key}; known: {sorted(names)}")
        try:
            setattr(section, key, _coerce(value, hints[key]))
        except (TypeError, ValueError) as error:
            raise ValueError(f"bad value for {where}.{key}: {value!r} ({error})") from None


def apply_overrides(config: Config, overrides: dict[str, dict[str, Any]], where: str = "") -> Config:
    """Apply ``{"section": {"key": value}}`` onto ``config`` in place and return it."""
    sections = {f.name for f in dataclasses.fields(config)}
    for section_name, values in (overrides or {}).items():
        if section_name not in sections:
            raise ValueError(f"unknown configuration section {section_name!r}{where}; known: {sorted(sections)}")
        if not isinstance(values, dict):
            raise ValueError(f"configuration section {section_name!r}{where} must be a mapping")
        _apply(getattr(config, section_name), values, section_name)
    return config


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith("PE_") or "__" not in name:
            continue
        section, _, key = name[3:].partition("__")
        overrides.setdefault(section.lower(), {})[key.lower()] = value
    return overrides


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Build the configuration: defaults, then YAML file, then environment, then ``overrides``."""
    environ = dict(os.environ if environ is None else environ)
    config = Config()
    config.paths.root = environ.get("PE_ROOT", os.getcwd())
    path = path or environ.get("PE_CONFIG")
    if path:
        import yaml

        with open(path, encoding="utf-8") as handle:
            from_file = yaml.safe_load(handle) or {}
        apply_overrides(config, from_file, where=f" in {path}")
    apply_overrides(config, _env_overrides(environ), where=" in the environment")
    if overrides:
        apply_overrides(config, overrides)
    if config.generator.scale not in SCALES:
        raise ValueError(f"generator.scale must be one of {SCALES}, got {config.generator.scale!r}")
    if config.profiles.source not in PROFILE_SOURCES:
        raise ValueError(f"profiles.source must be one of {PROFILE_SOURCES}, got {config.profiles.source!r}")
    return config
