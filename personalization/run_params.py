"""Manual-trigger parameters of the nightly DAG: JSON schemas and their validation.

``airflow dags trigger personalization_nightly --conf '{"date": "2026-10-14", "models": ["ease"]}'``
is checked twice: Airflow validates the conf against :data:`PARAM_SCHEMAS` when
the run is created (a bad value is refused right away), and the DAG's first task
calls :func:`validate_run_params`, which also catches what a JSON schema cannot
(2026-02-31, a scale that does not match the generated world) and fails the run
before any Spark job starts. Light module: the DAG file imports it at parse time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any, Mapping

from personalization.config import SCALES, Config, TrainingConfig, apply_overrides

#: Every model the nightly training knows (models.train.FITTERS; a test keeps them equal).
KNOWN_MODELS: tuple[str, ...] = tuple(TrainingConfig().models)

#: JSON schema of each param (``airflow.sdk.Param(default, **schema)``).
PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "date": {
        "default": "",
        "type": "string",
        "pattern": r"^(\d{4}-\d{2}-\d{2})?$",
        "description": "Run date YYYY-MM-DD; empty uses the run's logical date",
    },
    "scale": {
        "default": "",
        "type": "string",
        "enum": ["", *SCALES],
        "description": "Synthetic world scale the lake must hold (generator.scale); empty: the configured one",
    },
    "models": {
        "default": [],
        "type": "array",
        "items": {"type": "string", "enum": list(KNOWN_MODELS)},
        "uniqueItems": True,
        "description": "Models to train (training.models); empty: the configured list",
    },
    "skip_training": {
        "default": False,
        "type": "boolean",
        "description": "Skip train_models and evaluate_and_promote; score with the current champion",
    },
    "dry_run": {
        "default": False,
        "type": "boolean",
        "description": "Run every stage up to scoring but do not publish to the serving database",
    },
}


class RunParamsError(ValueError):
    """A trigger parameter is invalid; the message says which and what is accepted."""


@dataclass(frozen=True)
class RunOptions:
    """The validated parameters of one run."""

    date: str
    scale: str = ""
    models: tuple[str, ...] = ()
    skip_training: bool = False
    dry_run: bool = False

    def overrides(self) -> dict[str, dict[str, Any]]:
        """Configuration overrides these options imply (``{"section": {"key": value}}``)."""
        overrides: dict[str, dict[str, Any]] = {}
        if self.scale:
            overrides["generator"] = {"scale": self.scale}
        if self.models:
            overrides["training"] = {"models": list(self.models)}
        return overrides

    def apply(self, config: Config) -> Config:
        """``config`` with :meth:`overrides` applied (in place; returned for chaining)."""
        return apply_overrides(config, self.overrides(), where=" in the trigger params")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "models": list(self.models)}


def _bool(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RunParamsError(f"param {name!r} must be true or false, got {value!r}")
    return value


def validate_run_params(params: Mapping[str, Any], fallback_date: str | None = None) -> RunOptions:
    """Check the trigger params; ``fallback_date`` (the logical date) is used when ``date`` is empty.

    Raises:
        RunParamsError: with the param's name, the bad value and what is accepted.
    """
    unknown = sorted(set(params) - set(PARAM_SCHEMAS))
    if unknown:
        raise RunParamsError(f"unknown params {unknown}; known: {sorted(PARAM_SCHEMAS)}")
    date = params.get("date") or fallback_date or ""
    if not date:
        raise RunParamsError("no run date: pass the 'date' param (YYYY-MM-DD) or trigger with a logical date")
    try:
        if not isinstance(date, str) or len(date) != 10:
            raise ValueError
        date = dt.date.fromisoformat(date).isoformat()
    except ValueError:
        raise RunParamsError(f"param 'date' must be a calendar date YYYY-MM-DD, got {date!r}") from None
    scale = params.get("scale") or ""
    if scale not in ("", *SCALES):
        raise RunParamsError(f"param 'scale' must be one of {list(SCALES)}, got {scale!r}")
    models = params.get("models") or []
    if isinstance(models, str):
        models = [name.strip() for name in models.split(",") if name.strip()]
    if not isinstance(models, (list, tuple)):
        raise RunParamsError(f"param 'models' must be a list of model names, got {models!r}")
    bad = [name for name in models if name not in KNOWN_MODELS]
    if bad:
        raise RunParamsError(f"param 'models' has unknown models {bad}; known: {list(KNOWN_MODELS)}")
    if len(set(models)) != len(models):
        raise RunParamsError(f"param 'models' lists a model twice: {list(models)}")
    skip_training = _bool(params, "skip_training")
    if skip_training and models:
        raise RunParamsError("params 'skip_training' and 'models' contradict each other: give one of them")
    return RunOptions(date, scale, tuple(models), skip_training, _bool(params, "dry_run"))


def check_world_scale(options: RunOptions, world_scale: str | None) -> None:
    """Fail when ``scale`` was asked for and the lake's generated world has another (or none)."""
    if options.scale and world_scale != options.scale:
        found = f"a {world_scale!r} world" if world_scale else "no generated world"
        raise RunParamsError(
            f"param 'scale' is {options.scale!r} but the lake holds {found}: "
            f"run `pe generate --scale {options.scale}` first, or trigger without 'scale'"
        )
