"""Pipeline monitoring: feature drift, score drift and event-volume anomalies for one date.

Checks, each comparing date ``D`` with what came before:

- **feature drift**: the population stability index (PSI, :func:`psi`) of every numeric
  column of ``gold/user_features/date=D`` against ``date=D-1``, with quantile bins
  taken from the reference day (D-1);
- **score drift**: the PSI of ``gold/recommendations`` scores, per surface and overall;
- **volume**: the z-score of D's silver event count against the mean and sample standard
  deviation of the trailing days D-7..D-1 (days with no partition are left out).

A PSI at or above ``psi_warn`` (default 0.1) is a warning and at or above ``psi_breach``
(0.25) a breach; a volume ``|z|`` above ``volume_z_warn`` (3) warns and above
``volume_z_breach`` (5) breaches. Thresholds come from :data:`DEFAULT_THRESHOLDS`,
overridden by ``config.monitoring`` (when the configuration has that section) and then
by the ``thresholds`` argument. :func:`check` writes its result to
``reports/monitoring/date=D/monitoring.json``, sends a ``drift`` alert when anything
fired and, in ``fail`` mode, raises :class:`MonitoringBreach` on a breach.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from jobs import columns as C
from personalization.config import Config
from personalization.kpis import count_rows, events_path, read_table, shift, table_exists
from personalization.lake import Lake, check_date

log = logging.getLogger(__name__)

#: Defaults of every monitoring setting; ``config.monitoring`` (when present) and call arguments override them.
DEFAULT_THRESHOLDS: dict[str, Any] = {
    "psi_warn": 0.1,
    "psi_breach": 0.25,
    #: Quantile bins of the reference day (fewer when the reference has ties).
    "psi_bins": 10,
    #: Floor of a bin's share, so an empty bin gives a large but finite PSI term.
    "psi_epsilon": 1e-4,
    "volume_z_warn": 3.0,
    "volume_z_breach": 5.0,
    #: Trailing days compared with today's event count, and the fewest needed to judge.
    "volume_history_days": 7,
    "volume_min_history_days": 3,
    #: "warn" returns warnings; "fail" raises MonitoringBreach on a breach.
    "mode": "warn",
}
MODES = ("warn", "fail")
#: Identifier columns of user_features that are not features.
ID_COLUMNS = (C.USER_ID,)


class MonitoringBreach(RuntimeError):
    """A monitoring check breached its threshold in ``fail`` mode; ``result`` holds the whole check."""

    def __init__(self, result: Mapping[str, Any]):
        self.result = dict(result)
        super().__init__(
            f"monitoring breach on {result.get('date')}: " + "; ".join(result.get("breaches", []))
        )


def settings(config: Config | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The effective thresholds: defaults, then ``config.monitoring`` (if any), then ``overrides``."""
    result = dict(DEFAULT_THRESHOLDS)
    section = getattr(config, "monitoring", None) if config is not None else None
    if section is not None:
        values = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(vars(section))
        result.update({key: value for key, value in values.items() if key in DEFAULT_THRESHOLDS})
    unknown = set(overrides or {}) - set(DEFAULT_THRESHOLDS)
    if unknown:
        raise ValueError(
            f"unknown monitoring thresholds {sorted(unknown)}; known: {sorted(DEFAULT_THRESHOLDS)}"
        )
    result.update(overrides or {})
    if not 0 < result["psi_warn"] <= result["psi_breach"]:
        raise ValueError("need 0 < psi_warn <= psi_breach")
    if not 0 < result["volume_z_warn"] <= result["volume_z_breach"]:
        raise ValueError("need 0 < volume_z_warn <= volume_z_breach")
    return result


# ------------------------------------------------------------------ statistics
def psi(
    reference: Sequence[float] | np.ndarray,
    current: Sequence[float] | np.ndarray,
    bins: int = 10,
    epsilon: float = 1e-4,
) -> float:
    """Population stability index of ``current`` against ``reference`` (0 = same distribution).

    Bin edges are the reference's quantiles at 1/bins .. (bins-1)/bins (linear
    interpolation, duplicates merged); bins are right-closed: (-inf, q1], (q1, q2], ...,
    (q_last, inf). Shares below ``epsilon`` are raised to it. Non-finite values are
    ignored; NaN when either side has no finite value.
    PSI = sum over bins of (current share - reference share) * ln(current share / reference share).
    """
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if len(ref) == 0 or len(cur) == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    n_bins = len(edges) + 1
    ref_share = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=n_bins) / len(ref)
    cur_share = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=n_bins) / len(cur)
    ref_share, cur_share = np.maximum(ref_share, epsilon), np.maximum(cur_share, epsilon)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def psi_level(value: float, thresholds: Mapping[str, Any]) -> str:
    """``ok``, ``warn`` or ``breach`` for a PSI value (NaN: ``ok``, nothing to compare)."""
    if value != value:
        return "ok"
    if value >= thresholds["psi_breach"]:
        return "breach"
    return "warn" if value >= thresholds["psi_warn"] else "ok"


def frame_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    thresholds: Mapping[str, Any],
    exclude: Sequence[str] = ID_COLUMNS,
) -> dict[str, dict[str, Any]]:
    """PSI and level of every numeric column present in both frames (booleans and ``exclude`` skipped)."""
    result = {}
    for name in reference.columns:
        if name in exclude or name not in current.columns:
            continue
        if not (
            pd.api.types.is_numeric_dtype(reference[name]) and pd.api.types.is_numeric_dtype(current[name])
        ):
            continue
        if pd.api.types.is_bool_dtype(reference[name]):
            continue
        value = psi(
            reference[name].to_numpy(dtype=float, na_value=np.nan),
            current[name].to_numpy(dtype=float, na_value=np.nan),
            int(thresholds["psi_bins"]),
            float(thresholds["psi_epsilon"]),
        )
        result[name] = {
            "psi": None if value != value else round(value, 6),
            "level": psi_level(value, thresholds),
        }
    return result


def volume_anomaly(today: int, history: Sequence[int], thresholds: Mapping[str, Any]) -> dict[str, Any]:
    """Today's event count against the trailing counts: mean, sample std, z-score and level.

    With fewer than ``volume_min_history_days`` counts the level is ``ok`` (not judged).
    A zero std gives z = 0 when today equals the mean and +-inf otherwise.
    """
    counts = np.asarray(list(history), dtype=float)
    result: dict[str, Any] = {
        "today": int(today),
        "history": [int(c) for c in counts],
        "mean": None,
        "std": None,
        "z": None,
        "level": "ok",
    }
    if len(counts) < int(thresholds["volume_min_history_days"]):
        result["note"] = f"only {len(counts)} trailing days: not judged"
        return result
    mean, std = float(counts.mean()), float(counts.std(ddof=1))
    diff = today - mean
    z = (diff / std) if std > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    level = "ok"
    if abs(z) > thresholds["volume_z_breach"]:
        level = "breach"
    elif abs(z) > thresholds["volume_z_warn"]:
        level = "warn"
    result.update(mean=round(mean, 6), std=round(std, 6), z=z if math.isinf(z) else round(z, 6), level=level)
    return result


# ------------------------------------------------------------------ lake checks
def feature_drift(config: Config, date: str, thresholds: Mapping[str, Any]) -> dict[str, Any]:
    """PSI of every numeric ``gold/user_features`` column, D against D-1; ``skipped`` when a day is missing."""
    lake = Lake(config)
    current_path = lake.partition(lake.gold("user_features"), date)
    reference_path = lake.partition(lake.gold("user_features"), shift(date, -1))
    if not (table_exists(current_path) and table_exists(reference_path)):
        return {"skipped": "user_features missing for D or D-1", "columns": {}}
    import pyarrow as pa
    import pyarrow.dataset as ds

    from personalization.kpis import _arrow_location

    def load(path: str) -> pd.DataFrame:
        filesystem, inner = _arrow_location(path)
        dataset = ds.dataset(inner, format="parquet", filesystem=filesystem)
        # Only numeric columns are read: arrays (histograms, vectors) and strings are not features for PSI.
        numeric = [
            f.name
            for f in dataset.schema
            if f.name not in ID_COLUMNS and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
        ]
        return dataset.to_table(columns=numeric).to_pandas()

    return {"columns": frame_drift(load(reference_path), load(current_path), thresholds)}


def score_drift(config: Config, date: str, thresholds: Mapping[str, Any]) -> dict[str, Any]:
    """PSI of ``gold/recommendations`` scores, D against D-1, overall (``all``) and per surface."""
    lake = Lake(config)
    columns = [C.SURFACE, C.SCORE]
    current = read_table(lake.partition(lake.gold("recommendations"), date), columns)
    reference = read_table(lake.partition(lake.gold("recommendations"), shift(date, -1)), columns)
    if current.empty or reference.empty:
        return {"skipped": "recommendations missing for D or D-1", "columns": {}}
    bins, epsilon = int(thresholds["psi_bins"]), float(thresholds["psi_epsilon"])
    result = {}
    groups = [("all", reference, current)] + [
        (
            f"surface={surface}",
            reference[reference[C.SURFACE] == surface],
            current[current[C.SURFACE] == surface],
        )
        for surface in sorted(set(reference[C.SURFACE].dropna()) & set(current[C.SURFACE].dropna()))
    ]
    for name, ref, cur in groups:
        value = psi(ref[C.SCORE].to_numpy(dtype=float), cur[C.SCORE].to_numpy(dtype=float), bins, epsilon)
        result[name] = {
            "psi": None if value != value else round(value, 6),
            "level": psi_level(value, thresholds),
        }
    return {"columns": result}


def event_volume(config: Config, date: str, thresholds: Mapping[str, Any]) -> dict[str, Any]:
    """D's silver event count against the trailing ``volume_history_days`` days (missing days left out)."""
    today = count_rows(events_path(config, date))
    if today is None:
        return {"today": None, "level": "breach", "note": f"no silver events partition for {date}"}
    history = []
    for offset in range(int(thresholds["volume_history_days"]), 0, -1):
        count = count_rows(events_path(config, shift(date, -offset)))
        if count is not None:
            history.append(count)
    return volume_anomaly(today, history, thresholds)


def _findings(result: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    warnings, breaches = [], []
    for check in ("feature_drift", "score_drift"):
        for name, entry in result[check].get("columns", {}).items():
            text = f"{check} {name}: PSI {entry['psi']}"
            (breaches if entry["level"] == "breach" else warnings if entry["level"] == "warn" else []).append(
                text
            )
    volume = result["volume"]
    if volume["level"] != "ok":
        text = f"volume: {volume.get('today')} events, z {volume.get('z')}" + (
            f" ({volume['note']})" if volume.get("note") else ""
        )
        (breaches if volume["level"] == "breach" else warnings).append(text)
    return warnings, breaches


def check(
    config: Config,
    date: str,
    mode: str | None = None,
    thresholds: Mapping[str, Any] | None = None,
    alert_context: Mapping[str, str] | None = None,
    send_alerts: bool = True,
) -> dict[str, Any]:
    """Run every check for ``date``; write ``reports/monitoring/date=D/monitoring.json``.

    Returns ``{"date", "mode", "status" (ok|warn|breach), "warnings", "breaches",
    "feature_drift", "score_drift", "volume", "thresholds", "report_path"}``. When anything
    fired a ``drift`` alert is sent (``alert_context`` gives its dag_id/task_id/run_id).
    In ``fail`` mode a breach raises :class:`MonitoringBreach` after the report and alert.
    """
    date = check_date(date)
    limits = settings(config, thresholds)
    mode = mode or limits["mode"]
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    result: dict[str, Any] = {
        "date": date,
        "mode": mode,
        "feature_drift": feature_drift(config, date, limits),
        "score_drift": score_drift(config, date, limits),
        "volume": event_volume(config, date, limits),
        "thresholds": limits,
    }
    warnings, breaches = _findings(result)
    result.update(
        warnings=warnings, breaches=breaches, status="breach" if breaches else "warn" if warnings else "ok"
    )
    from personalization import storage

    report_path = f"{Lake(config).report('monitoring', date)}/monitoring.json"
    result["report_path"] = report_path
    storage.write_text(report_path, json.dumps(result, indent=2, sort_keys=True, default=str))
    if (warnings or breaches) and send_alerts:
        from personalization.alerts import Alert, send_alert

        context = dict(alert_context or {})
        message = f"monitoring {result['status']} on {date}: " + "; ".join(breaches + warnings)
        send_alert(
            config,
            Alert(
                context.get("dag_id", "personalization_monitoring"),
                context.get("task_id", "monitor"),
                context.get("run_id", "-"),
                "drift",
                message,
                date=date,
            ),
        )
    for line in breaches + warnings:
        log.warning("monitoring %s: %s", date, line)
    if breaches and mode == "fail":
        raise MonitoringBreach(result)
    return result
