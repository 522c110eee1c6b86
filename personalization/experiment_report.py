"""A/B experiment analysis: per-variant metrics, lifts with CIs, SRM and sample-size notes.

Exposure and arms
    A user is exposed to an experiment by an impression whose ``variant`` is set. The
    variant tag is ``"<experiment>:<variant>"`` or a bare ``"<variant>"``; a bare tag
    belongs to the first configured experiment that declares that variant (or to the
    experiment ``default`` when none are configured). Users tagged with two variants of
    one experiment are excluded (counted as ``mixed_users``). Outcomes count from the
    user's first exposure day on (day granularity), over the report window
    ``[D - window_days + 1, D]``.

Per-user metrics (each compared with :func:`personalization.experiments.compare_means`,
every non-control variant against the experiment's first variant)
    ``ctr``: app views on the experiment's surfaces / the user's tagged impressions (0..1);
    ``install_rate``: installs on those surfaces / tagged impressions (0..1);
    ``conversion``: 1 when the user purchased, else 0;
    ``revenue_per_user``: purchase amounts, USD;
    ``engagement_minutes``: app usage (``app_open`` durations), minutes.

Each report also runs the sample-ratio-mismatch test against the expected allocation
(the holdout included when it has one), and an MDE / sample-size note per metric. The
results go to the serving DB table ``experiment_results`` (replaced per report date and
experiment), to MLflow (experiment ``<config.mlflow.experiment>-ab``, one run per report
date) and to a self-contained HTML page ``reports/experiments/date=D/report.html``
(plots as base64 PNG: lift with CI bars per metric, daily CTR per variant, KPI trends
from the ``kpis`` table).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from jobs import columns as C
from personalization.config import Config
from personalization.experiments import (
    HOLDOUT,
    TAG_SEPARATOR,
    Comparison,
    Experiment,
    Variant,
    compare_means,
    load_experiments,
    minimum_detectable_effect,
    required_sample_size,
    sample_ratio_mismatch,
)
from personalization.kpis import events_path, read_kpis, read_table, shift
from personalization.lake import Lake, check_date

log = logging.getLogger(__name__)

RESULTS_TABLE = "experiment_results"
DEFAULT_EXPERIMENT = "default"
#: Per-user metrics, in report order, with their units for the page.
METRICS: dict[str, str] = {
    "ctr": "views / impression",
    "install_rate": "installs / impression",
    "conversion": "share of users who purchased",
    "revenue_per_user": "USD per user",
    "engagement_minutes": "usage minutes per user",
}
#: Report settings; ``config.monitoring`` keys of the same name override them when present.
DEFAULT_SETTINGS: dict[str, Any] = {
    "report_window_days": 14,
    "alpha": 0.05,
    "power": 0.8,
    #: SRM p-value below which the allocation is declared broken.
    "srm_threshold": 0.001,
    #: Relative effect (of the control mean) the sample-size note is written for.
    "mde_relative": 0.05,
    #: JSON or YAML list of experiments (``Experiment.from_dict`` shape); empty infers them from the tags.
    "experiments_file": "",
}
_EVENT_TYPES = ("impression", "app_view", "install", "purchase", "app_open")
#: KPI columns plotted on the page's trend figure.
KPI_TREND_COLUMNS = ("daily_active_users", "ctr", "conversion_rate", "revenue_per_active_user")


def report_settings(config: Config, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, then ``config.monitoring`` keys of the same names (when present), then ``overrides``."""
    result = dict(DEFAULT_SETTINGS)
    section = getattr(config, "monitoring", None)
    for key in DEFAULT_SETTINGS:
        if section is not None and getattr(section, key, None) not in (None, ""):
            result[key] = getattr(section, key)
    result.update(overrides or {})
    return result


def parse_tag(tag: str) -> tuple[str | None, str]:
    """``"exp:variant"`` -> ``("exp", "variant")``; a bare ``"variant"`` -> ``(None, "variant")``."""
    experiment, sep, variant = str(tag).partition(":")
    return (experiment, variant) if sep else (None, str(tag))


# ------------------------------------------------------------------ events -> per-user outcomes
@dataclass
class Exposure:
    """What the event scan gathered over the window (all small: exposed users only)."""

    #: user_id, tag, surface, day, impressions (tagged impressions per user/tag/surface/day)
    impressions: pd.DataFrame
    #: user_id, surface, day, views, installs (exposed users, every surface; each experiment keeps its own)
    actions: pd.DataFrame
    #: user_id, day, purchases, revenue, usage_s (exposed users)
    outcomes: pd.DataFrame


def day_exposure(
    events: pd.DataFrame, day: str, exposed_before: set[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One day's tagged impressions, surface actions and outcomes of the users exposed so far (incl. today)."""
    tagged = events[(events[C.EVENT_TYPE] == "impression") & events[C.VARIANT].notna()]
    # A user in several experiments has one tag per experiment ("a:x;b:y"): the impression counts in each.
    tagged = tagged.assign(**{C.VARIANT: tagged[C.VARIANT].astype(str).str.split(TAG_SEPARATOR)}).explode(C.VARIANT)
    impressions = (
        tagged.groupby([C.USER_ID, C.VARIANT, C.SURFACE], dropna=False)
        .size()
        .rename("impressions")
        .reset_index()
        .rename(columns={C.VARIANT: "tag"})
    )
    impressions["day"] = day
    exposed = exposed_before | set(impressions[C.USER_ID])
    mine = events[events[C.USER_ID].isin(exposed)]
    acted = mine[mine[C.EVENT_TYPE].isin(("app_view", "install")) & mine[C.SURFACE].notna()]
    actions = (
        acted.groupby([C.USER_ID, C.SURFACE, C.EVENT_TYPE])
        .size()
        .unstack(C.EVENT_TYPE, fill_value=0)
        .reindex(columns=["app_view", "install"], fill_value=0)
        .rename(columns={"app_view": "views", "install": "installs"})
        .reset_index()
    )
    actions.columns.name = None
    actions["day"] = day
    purchases = mine[mine[C.EVENT_TYPE] == "purchase"]
    opens = mine[mine[C.EVENT_TYPE] == "app_open"]
    outcomes = (
        pd.DataFrame(
            {
                "purchases": purchases.groupby(C.USER_ID).size(),
                "revenue": purchases.groupby(C.USER_ID)[C.AMOUNT].sum(min_count=1),
                "usage_s": opens.groupby(C.USER_ID)[C.DURATION_S].sum(min_count=1),
            }
        )
        .fillna(0.0)
        .rename_axis(C.USER_ID)
        .reset_index()
    )
    outcomes["day"] = day
    return impressions, actions, outcomes


def scan_events(config: Config, start: str, end: str) -> Exposure:
    """Read the silver events of ``start..end`` day by day (needed columns and event types only)."""
    columns = [C.USER_ID, C.EVENT_TYPE, C.SURFACE, C.VARIANT, C.AMOUNT, C.DURATION_S]

    def days() -> Iterator[tuple[str, pd.DataFrame]]:
        day = check_date(start)
        while day <= check_date(end):
            yield day, read_table(events_path(config, day), columns, {C.EVENT_TYPE: _EVENT_TYPES})
            day = shift(day, 1)

    return exposure_from_days(days())


def exposure_from_days(days: Iterable[tuple[str, pd.DataFrame]]) -> Exposure:
    """The :class:`Exposure` of consecutive days of events (``user_id, event_type, surface, variant,
    amount, duration_s``), oldest first; the simulator's events go through the same code as the lake's."""
    parts: tuple[list[pd.DataFrame], list[pd.DataFrame], list[pd.DataFrame]] = ([], [], [])
    exposed: set[str] = set()
    for day, events in days:
        if len(events):
            frames = day_exposure(events, day, exposed)
            exposed |= set(frames[0][C.USER_ID])
            for bucket, frame in zip(parts, frames, strict=True):
                bucket.append(frame)
    empty = (
        [C.USER_ID, "tag", C.SURFACE, "day", "impressions"],
        [C.USER_ID, C.SURFACE, "day", "views", "installs"],
        [C.USER_ID, "day", "purchases", "revenue", "usage_s"],
    )
    frames = [
        pd.concat(bucket, ignore_index=True) if bucket else pd.DataFrame(columns=names)
        for bucket, names in zip(parts, empty, strict=True)
    ]
    return Exposure(*frames)


def resolve_experiments(
    tags: Sequence[str], experiments: Sequence[Experiment] | None
) -> tuple[list[Experiment], dict[str, tuple[str, str]], list[str]]:
    """Experiments to report, the (experiment, variant) of each tag, and unmatched tags.

    Without configured experiments each tag prefix becomes an experiment (bare tags:
    ``default``) with equal allocations and ``control`` (else the alphabetically first
    variant) as control.
    """
    mapping: dict[str, tuple[str, str]] = {}
    unmatched: list[str] = []
    if experiments:
        by_name = {e.name: e for e in experiments}

        def arms(experiment: Experiment) -> set[str]:
            return {v.name for v in experiment.variants} | ({HOLDOUT} if experiment.holdout_pct else set())

        for tag in sorted(set(tags)):
            name, variant = parse_tag(tag)
            if name is None:
                owner = next((e for e in experiments if variant in arms(e)), None)
            else:
                owner = by_name.get(name) if name in by_name and variant in arms(by_name[name]) else None
            if owner is None:
                unmatched.append(tag)
            else:
                mapping[tag] = (owner.name, variant)
        return list(experiments), mapping, unmatched
    observed: dict[str, set[str]] = {}
    for tag in sorted(set(tags)):
        name, variant = parse_tag(tag)
        name = name or DEFAULT_EXPERIMENT
        observed.setdefault(name, set()).add(variant)
        mapping[tag] = (name, variant)
    inferred = []
    for name, variants in sorted(observed.items()):
        arms = sorted(variants - {HOLDOUT}, key=lambda v: (v != "control", v))
        if not arms:
            continue
        share = 100.0 / len(arms)
        inferred.append(Experiment(name, name, tuple(Variant(arm, share) for arm in arms)))
    return inferred, mapping, unmatched


def experiment_impressions(
    exposure: Exposure, experiment: str, mapping: Mapping[str, tuple[str, str]]
) -> tuple[pd.DataFrame, int]:
    """The tagged impressions of ``experiment`` with an ``arm`` column, users in one arm only; and mixed users."""
    impressions = exposure.impressions.copy()
    impressions["experiment"] = [mapping.get(tag, (None, None))[0] for tag in impressions["tag"]]
    impressions["arm"] = [mapping.get(tag, (None, None))[1] for tag in impressions["tag"]]
    impressions = impressions[impressions["experiment"] == experiment]
    arms_per_user = impressions.groupby(C.USER_ID)["arm"].nunique()
    single = arms_per_user.index[arms_per_user == 1]
    return impressions[impressions[C.USER_ID].isin(single)], int((arms_per_user > 1).sum())


def user_metrics(
    exposure: Exposure, experiment: str, mapping: Mapping[str, tuple[str, str]]
) -> tuple[pd.DataFrame, int]:
    """One row per user of ``experiment``: ``arm``, ``first_day`` and the per-user metrics; and mixed users."""
    impressions, mixed = experiment_impressions(exposure, experiment, mapping)
    users = impressions.groupby(C.USER_ID).agg(
        arm=("arm", "first"), first_day=("day", "min"), impressions=("impressions", "sum")
    )
    if users.empty:
        return pd.DataFrame(columns=["arm", "first_day", "impressions", *METRICS]), mixed
    surfaces = set(impressions[C.SURFACE].dropna())

    def after_exposure(frame: pd.DataFrame) -> pd.DataFrame:
        joined = frame.merge(users[["first_day"]].reset_index(), on=C.USER_ID)
        return joined[joined["day"] >= joined["first_day"]]

    actions = after_exposure(exposure.actions)
    actions = actions[actions[C.SURFACE].isin(surfaces)].groupby(C.USER_ID)[["views", "installs"]].sum()
    outcomes = after_exposure(exposure.outcomes).groupby(C.USER_ID)[["purchases", "revenue", "usage_s"]].sum()
    table = (
        users.join(actions, how="left")
        .join(outcomes, how="left")
        .fillna({"views": 0, "installs": 0, "purchases": 0, "revenue": 0.0, "usage_s": 0.0})
    )
    table["ctr"] = table["views"] / table["impressions"]
    table["install_rate"] = table["installs"] / table["impressions"]
    table["conversion"] = (table["purchases"] > 0).astype(float)
    table["revenue_per_user"] = table["revenue"].astype(float)
    table["engagement_minutes"] = table["usage_s"].astype(float) / 60.0
    return table, mixed


def daily_ctr(exposure: Exposure, experiment: str, mapping: Mapping[str, tuple[str, str]]) -> pd.DataFrame:
    """CTR per day and arm: views on the experiment's surfaces by users tagged that day / tagged impressions."""
    impressions, _ = experiment_impressions(exposure, experiment, mapping)
    if impressions.empty:
        return pd.DataFrame(columns=["day", "arm", "impressions", "views", "ctr"])
    surfaces = set(impressions[C.SURFACE].dropna())
    per_user_day = impressions.groupby(["day", C.USER_ID, "arm"], as_index=False)["impressions"].sum()
    actions = exposure.actions[exposure.actions[C.SURFACE].isin(surfaces)]
    views = actions.groupby(["day", C.USER_ID], as_index=False)["views"].sum()
    merged = per_user_day.merge(views, on=["day", C.USER_ID], how="left").fillna({"views": 0})
    trend = merged.groupby(["day", "arm"], as_index=False)[["impressions", "views"]].sum()
    trend["ctr"] = trend["views"] / trend["impressions"]
    return trend.sort_values(["day", "arm"]).reset_index(drop=True)


# ------------------------------------------------------------------ statistics per experiment
@dataclass
class ExperimentResult:
    experiment: Experiment
    users: pd.DataFrame
    mixed_users: int
    srm: dict[str, Any]
    comparisons: list[Comparison]
    #: variant name of each comparison (parallel to ``comparisons``)
    variants: list[str]
    notes: dict[str, str]
    mde: dict[tuple[str, str], dict[str, float | int | None]]
    trend: pd.DataFrame
    alpha: float = 0.05
    skipped: list[str] = field(default_factory=list)


def analyse(
    experiment: Experiment, users: pd.DataFrame, mixed: int, trend: pd.DataFrame, settings: Mapping[str, Any]
) -> ExperimentResult:
    """SRM, per-metric comparisons of each variant with control, and the MDE / sample-size notes."""
    alpha, power = float(settings["alpha"]), float(settings["power"])
    control = experiment.variants[0].name
    observed = users["arm"].value_counts().to_dict() if len(users) else {}
    srm = (
        sample_ratio_mismatch(observed, experiment.expected_shares(), float(settings["srm_threshold"]))
        if sum(observed.values())
        else {"ok": None, "p_value": None, "note": "no users"}
    )
    comparisons, variants, skipped = [], [], []
    mde: dict[tuple[str, str], dict[str, float | int | None]] = {}
    notes: dict[str, str] = {}
    base = users[users["arm"] == control]
    for variant in experiment.variants[1:]:
        arm = users[users["arm"] == variant.name]
        for metric in METRICS:
            try:
                comparisons.append(
                    compare_means(metric, base[metric].to_numpy(float), arm[metric].to_numpy(float), alpha)
                )
                variants.append(variant.name)
            except ValueError as error:  # fewer than two users in an arm
                skipped.append(f"{variant.name}/{metric}: {error}")
                continue
            std = float(np.std(base[metric].to_numpy(float), ddof=1))
            n = min(len(base), len(arm))
            absolute = minimum_detectable_effect(std, n, alpha, power) if std > 0 else 0.0
            control_mean = float(base[metric].mean())
            target = float(settings["mde_relative"]) * abs(control_mean)
            needed = required_sample_size(std, target, alpha, power) if std > 0 and target > 0 else None
            mde[(variant.name, metric)] = {
                "mde_absolute": absolute,
                "mde_relative": absolute / abs(control_mean) if control_mean else None,
                "required_n_per_arm": needed,
            }
            notes[f"{variant.name}/{metric}"] = (
                f"with {n} users per arm the smallest detectable change ({int(power * 100)}% power, "
                f"alpha {alpha}) is {absolute:.4g}"
                + (f" ({100 * absolute / abs(control_mean):.1f}% of control)" if control_mean else "")
                + (
                    f"; a {100 * float(settings['mde_relative']):.0f}% relative change needs {needed} users per arm"
                    if needed
                    else ""
                )
            )
    return ExperimentResult(
        experiment, users, mixed, srm, comparisons, variants, notes, mde, trend, alpha, skipped
    )


# ------------------------------------------------------------------ outputs
def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def result_rows(
    results: Sequence[ExperimentResult], report_date: str, start: str, end: str
) -> list[dict[str, Any]]:
    """The ``experiment_results`` rows: one per experiment, non-control variant and metric."""
    rows = []
    for result in results:
        control = result.experiment.variants[0].name
        for variant, comparison in zip(result.variants, result.comparisons, strict=True):
            extra = result.mde.get((variant, comparison.metric), {})
            rows.append(
                {
                    "report_date": report_date,
                    "experiment": result.experiment.name,
                    "variant": variant,
                    "metric": comparison.metric,
                    "control_variant": control,
                    "start_date": start,
                    "end_date": end,
                    "n_control": comparison.n_control,
                    "n_treatment": comparison.n_treatment,
                    "control_mean": _finite(comparison.control_mean),
                    "treatment_mean": _finite(comparison.treatment_mean),
                    "absolute_lift": _finite(comparison.absolute_lift),
                    "absolute_ci_low": _finite(comparison.absolute_ci[0]),
                    "absolute_ci_high": _finite(comparison.absolute_ci[1]),
                    "relative_lift": _finite(comparison.relative_lift),
                    "relative_ci_low": _finite(comparison.relative_ci[0]),
                    "relative_ci_high": _finite(comparison.relative_ci[1]),
                    "p_value": _finite(comparison.p_value),
                    "significant": bool(comparison.significant),
                    "srm_p_value": _finite(result.srm.get("p_value")),
                    "srm_ok": result.srm.get("ok"),
                    "mde_absolute": _finite(extra.get("mde_absolute")),
                    "required_n_per_arm": extra.get("required_n_per_arm"),
                }
            )
    return rows


def results_table(metadata: Any) -> Any:
    """The ``experiment_results`` table, keyed on (report_date, experiment, variant, metric)."""
    import sqlalchemy as sa

    text = lambda name, n=250, **kw: sa.Column(name, sa.String(n), **kw)  # noqa: E731
    number = lambda name: sa.Column(name, sa.Float, nullable=True)  # noqa: E731
    return sa.Table(
        RESULTS_TABLE,
        metadata,
        text("report_date", 10, primary_key=True),
        text("experiment", primary_key=True),
        text("variant", primary_key=True),
        text("metric", 64, primary_key=True),
        text("control_variant", nullable=False),
        text("start_date", 10, nullable=False),
        text("end_date", 10, nullable=False),
        sa.Column("n_control", sa.Integer, nullable=False),
        sa.Column("n_treatment", sa.Integer, nullable=False),
        number("control_mean"),
        number("treatment_mean"),
        number("absolute_lift"),
        number("absolute_ci_low"),
        number("absolute_ci_high"),
        number("relative_lift"),
        number("relative_ci_low"),
        number("relative_ci_high"),
        number("p_value"),
        sa.Column("significant", sa.Boolean, nullable=False),
        number("srm_p_value"),
        sa.Column("srm_ok", sa.Boolean, nullable=True),
        number("mde_absolute"),
        sa.Column("required_n_per_arm", sa.Integer, nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
    )


def write_results(
    config: Config, report_date: str, experiments: Sequence[str], rows: Sequence[dict[str, Any]]
) -> int:
    """Replace the rows of ``report_date`` for ``experiments`` in one transaction; returns rows written."""
    import sqlalchemy as sa

    from personalization.alerts import serving_engine
    from personalization.serving.db import utc_now, write_transaction

    engine = serving_engine(config, write=True)
    try:
        metadata = sa.MetaData()
        table = results_table(metadata)
        with write_transaction(engine) as connection:
            metadata.create_all(connection, checkfirst=True)
            connection.execute(
                sa.delete(table).where(
                    table.c.report_date == report_date, table.c.experiment.in_(list(experiments) or [""])
                )
            )
            if rows:
                now = utc_now()
                connection.execute(sa.insert(table), [{**row, "computed_at": now} for row in rows])
    finally:
        engine.dispose()
    return len(rows)


def read_results(config: Config, report_date: str | None = None) -> list[dict[str, Any]]:
    """Rows of ``experiment_results`` (of one report date when given); [] when the table is missing."""
    import sqlalchemy as sa

    from personalization.alerts import serving_engine

    engine = serving_engine(config, write=False)
    if engine is None:
        return []
    try:
        if not sa.inspect(engine).has_table(RESULTS_TABLE):
            return []
        table = results_table(sa.MetaData())
        query = sa.select(table).order_by(table.c.experiment, table.c.variant, table.c.metric)
        if report_date:
            query = query.where(table.c.report_date == report_date)
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]
    finally:
        engine.dispose()


def _metric_key(*parts: str) -> str:
    """An MLflow-safe metric name (letters, digits, ``_ - . /`` and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", ".".join(parts))


def log_to_mlflow(
    config: Config,
    report_date: str,
    start: str,
    end: str,
    results: Sequence[ExperimentResult],
    rows: Sequence[dict[str, Any]],
    html_text: str,
) -> str:
    """One MLflow run per report date in ``<experiment>-ab`` (a rerun replaces the date's run); returns its id."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=config.mlflow_tracking_uri)
    name = f"{config.mlflow.experiment}-ab"
    found = client.get_experiment_by_name(name)
    experiment_id = (
        found.experiment_id
        if found
        else client.create_experiment(
            name, artifact_location=f"{config.mlflow_artifact_root.rstrip('/')}/{name}"
        )
    )
    for old in client.search_runs([experiment_id], f"tags.report_date = '{report_date}'"):
        client.delete_run(old.info.run_id)  # keep exactly one live run per report date
    run = client.create_run(
        experiment_id,
        tags={"report_date": report_date, "stage": "experiment_report"},
        run_name=f"ab-{report_date}",
    )
    run_id = run.info.run_id
    now = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    metrics = []
    for row in rows:
        prefix = (row["experiment"], row["variant"], row["metric"])
        for field_name in (
            "absolute_lift",
            "absolute_ci_low",
            "absolute_ci_high",
            "relative_lift",
            "p_value",
            "control_mean",
            "treatment_mean",
        ):
            if row[field_name] is not None:
                metrics.append(Metric(_metric_key(*prefix, field_name), float(row[field_name]), now, 0))
    for result in results:
        if result.srm.get("p_value") is not None:
            metrics.append(
                Metric(
                    _metric_key(result.experiment.name, "srm_p_value"), float(result.srm["p_value"]), now, 0
                )
            )
        for arm, count in result.users["arm"].value_counts().items():
            metrics.append(
                Metric(_metric_key(result.experiment.name, str(arm), "users"), float(count), now, 0)
            )
    params = [Param("report_date", report_date), Param("start_date", start), Param("end_date", end)]
    tags = [
        RunTag(f"experiment.{_metric_key(r.experiment.name)}.srm_ok", str(r.srm.get("ok"))) for r in results
    ]
    client.log_batch(run_id, params=params, tags=tags)
    for offset in range(0, len(metrics), 1000):  # the tracking API takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[offset : offset + 1000])
    client.log_text(run_id, html_text, "report.html")
    client.log_text(run_id, pd.DataFrame(list(rows)).to_csv(index=False), "experiment_results.csv")
    client.set_terminated(run_id)
    return run_id


# ------------------------------------------------------------------ HTML
def _png(figure: Any) -> str:
    """A matplotlib figure as base64 PNG (the page embeds it: no external files)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    return plt


def lift_figure(result: ExperimentResult) -> str:
    """Relative lift (%) with its CI per metric and variant, one panel per metric."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(METRICS), figsize=(3.0 * len(METRICS), 3.2), squeeze=False)
    for axis, metric in zip(axes[0], METRICS, strict=True):
        pairs = [
            (v, c) for v, c in zip(result.variants, result.comparisons, strict=True) if c.metric == metric
        ]
        names = [v for v, _ in pairs]
        lifts = [100 * c.relative_lift if _finite(c.relative_lift) is not None else 0.0 for _, c in pairs]
        low = [
            100 * (c.relative_lift - c.relative_ci[0]) if _finite(c.relative_ci[0]) is not None else 0.0
            for _, c in pairs
        ]
        high = [
            100 * (c.relative_ci[1] - c.relative_lift) if _finite(c.relative_ci[1]) is not None else 0.0
            for _, c in pairs
        ]
        colours = [
            "tab:green" if c.absolute_ci[0] > 0 else "tab:red" if c.absolute_ci[1] < 0 else "tab:gray"
            for _, c in pairs
        ]
        axis.bar(range(len(names)), lifts, yerr=[low, high], capsize=6, color=colours)
        axis.axhline(0.0, color="black", linewidth=0.8)
        axis.set_xticks(range(len(names)), names)
        axis.set_title(metric)
    axes[0][0].set_ylabel("lift vs control, %")
    figure.suptitle(
        f"{result.experiment.name}: relative lift with {100 * (1 - result.alpha):.0f}% CI "
        "(green/red: significant)"
    )
    figure.tight_layout()
    return _png(figure)


def trend_figure(result: ExperimentResult) -> str:
    """Daily CTR per arm."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 3))
    for arm, frame in result.trend.groupby("arm"):
        axis.plot(frame["day"], frame["ctr"], marker="o", label=str(arm))
    axis.set_ylabel("CTR")
    axis.set_title(f"{result.experiment.name}: daily CTR per variant")
    axis.legend()
    figure.autofmt_xdate()
    return _png(figure)


def kpi_figure(kpis: pd.DataFrame) -> str:
    """The KPI trends from the ``kpis`` table (DAU, CTR, conversion, revenue per active user)."""
    plt = _pyplot()
    figure, axes = plt.subplots(
        1, len(KPI_TREND_COLUMNS), figsize=(3.4 * len(KPI_TREND_COLUMNS), 2.8), squeeze=False
    )
    for axis, column in zip(axes[0], KPI_TREND_COLUMNS, strict=True):
        axis.plot(kpis["date"], pd.to_numeric(kpis[column], errors="coerce"), marker="o")
        axis.set_title(column)
        axis.tick_params(axis="x", labelrotation=45)
    figure.tight_layout()
    return _png(figure)


def _fmt(value: Any, digits: int = 4) -> str:
    """A number to ``digits`` significant digits, "–" when missing or not finite; other values as text.

    The template escapes the result (autoescape), so this returns plain text.
    """
    value = (
        _finite(value)
        if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
        else value
    )
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _percent(fraction: float) -> float | None:
    """A fraction as percent; None when undefined (relative lift over a zero control mean)."""
    value = _finite(fraction)
    return None if value is None else 100.0 * value


#: The report page's template (``personalization/templates``), rendered with autoescape.
REPORT_TEMPLATE = "experiment_report.html.j2"


def _template_environment() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("personalization", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the render instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["fmt"] = _fmt
    return environment


def _experiment_view(result: ExperimentResult) -> dict[str, Any]:
    """What the template shows of one experiment: arms, the SRM check, comparisons, plots, notes."""
    experiment, srm = result.experiment, result.srm
    counts = result.users["arm"].value_counts().to_dict() if len(result.users) else {}
    total = sum(counts.values()) or 1
    comparisons = []
    for variant, c in zip(result.variants, result.comparisons, strict=True):
        relative = [_percent(value) for value in (c.relative_lift, *c.relative_ci)]
        comparisons.append({
            "variant": variant, "metric": c.metric, "significant": bool(c.significant),
            "control": c.control_mean, "treatment": c.treatment_mean,
            "absolute": c.absolute_lift, "absolute_low": c.absolute_ci[0], "absolute_high": c.absolute_ci[1],
            "relative": relative[0], "relative_low": relative[1], "relative_high": relative[2],
            "p_value": c.p_value,
        })
    plots = []
    if result.comparisons:
        plots.append({"alt": f"{experiment.name}: relative lift per metric", "png": lift_figure(result)})
    if len(result.trend):
        plots.append({"alt": f"{experiment.name}: daily CTR per variant", "png": trend_figure(result)})
    return {
        "name": experiment.name,
        "arms": [{"name": arm, "users": counts.get(arm, 0), "expected": share,
                  "observed": counts.get(arm, 0) / total}
                 for arm, share in experiment.expected_shares().items()],
        "srm_ok": bool(srm.get("ok")), "srm_chi2": srm.get("chi2"), "srm_p": srm.get("p_value"),
        "mixed_users": result.mixed_users,
        "comparisons": comparisons,
        "plots": plots,
        "notes": list(result.notes.items()),
        "skipped": list(result.skipped),
    }


def render_html(
    report_date: str,
    start: str,
    end: str,
    results: Sequence[ExperimentResult],
    kpis: pd.DataFrame,
    unmatched: Sequence[str],
) -> str:
    """The self-contained report page (Jinja2 template ``REPORT_TEMPLATE``, every value escaped)."""
    template = _template_environment().get_template(REPORT_TEMPLATE)
    return template.render(
        report_date=report_date, start=start, end=end,
        experiments=[_experiment_view(result) for result in results],
        unmatched=list(unmatched),
        kpi_plot={"alt": "KPI trends", "png": kpi_figure(kpis)} if len(kpis) else None,
    )


# ------------------------------------------------------------------ entry point
def build_report(
    config: Config,
    date: str,
    start: str | None = None,
    experiments: Sequence[Experiment] | None = None,
    settings: Mapping[str, Any] | None = None,
    mlflow: bool = True,
) -> dict[str, Any]:
    """Analyse every experiment seen in ``start..date`` and write the table, the MLflow run and the page.

    ``start`` defaults to ``date - report_window_days + 1``; ``experiments`` to the
    ``experiments_file`` setting, else inferred from the tags. Returns ``{"date",
    "start", "end", "report_path", "mlflow_run_id", "experiments": {name: {"users",
    "srm_ok", "significant": [variant/metric, ...]}}, "rows", "unmatched_tags"}``.
    """
    date = check_date(date)
    options = report_settings(config, settings)
    start = check_date(start or shift(date, -(int(options["report_window_days"]) - 1)))
    if experiments is None and options["experiments_file"]:
        experiments = load_experiments(config.resolve(str(options["experiments_file"])))
    exposure = scan_events(config, start, date)
    results, unmatched = analyse_exposure(exposure, experiments, options)
    rows = result_rows(results, date, start, date)
    write_results(config, date, [r.experiment.name for r in results], rows)
    kpis = read_kpis(config, shift(date, -29), date)
    page = render_html(date, start, date, results, kpis, unmatched)
    from personalization import storage

    report_path = f"{Lake(config).report('experiments', date)}/report.html"
    storage.write_text(report_path, page)
    run_id = log_to_mlflow(config, date, start, date, results, rows, page) if mlflow else None
    return {
        "date": date,
        "start": start,
        "end": date,
        "report_path": report_path,
        "mlflow_run_id": run_id,
        "rows": len(rows),
        "unmatched_tags": list(unmatched),
        "experiments": results_summary(results),
    }


def analyse_exposure(
    exposure: Exposure, experiments: Sequence[Experiment] | None, settings: Mapping[str, Any]
) -> tuple[list[ExperimentResult], list[str]]:
    """Every experiment's :class:`ExperimentResult` (experiments without users left out) and unmatched tags."""
    chosen, mapping, unmatched = resolve_experiments(
        exposure.impressions["tag"].dropna().tolist(), experiments
    )
    results = []
    for experiment in chosen:
        users, mixed = user_metrics(exposure, experiment.name, mapping)
        if users.empty:
            continue
        results.append(
            analyse(experiment, users, mixed, daily_ctr(exposure, experiment.name, mapping), settings)
        )
    return results, list(unmatched)


def results_summary(results: Sequence[ExperimentResult]) -> dict[str, dict[str, Any]]:
    """Per experiment: users per arm, the SRM verdict and the significant variant/metric pairs."""
    return {
        r.experiment.name: {
            "users": {str(k): int(v) for k, v in r.users["arm"].value_counts().sort_index().items()},
            "srm_ok": r.srm.get("ok"),
            "significant": [
                f"{v}/{c.metric}" for v, c in zip(r.variants, r.comparisons, strict=True) if c.significant
            ],
        }
        for r in results
    }
