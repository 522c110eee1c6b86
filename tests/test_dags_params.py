"""Trigger params of the nightly DAG: JSON schemas (checked when a run is created) and the check task's validation."""

from __future__ import annotations

import pytest

from personalization.config import load_config
from personalization.run_params import (
    KNOWN_MODELS,
    PARAM_SCHEMAS,
    RunOptions,
    RunParamsError,
    check_world_scale,
    validate_run_params,
)


def _param(name: str):
    from airflow.sdk import Param

    schema = PARAM_SCHEMAS[name]
    return Param(schema["default"], **{k: v for k, v in schema.items() if k != "default"})


def test_known_models_are_the_trainable_ones() -> None:
    from models.train import FITTERS

    assert sorted(KNOWN_MODELS) == sorted(FITTERS)


@pytest.mark.parametrize(("name", "good", "bad"), [
    ("date", "2026-10-14", "14/10/2026"),
    ("scale", "tiny", "huge"),
    ("models", ["ease", "popularity"], ["ease", "gpt"]),
    ("skip_training", True, "yes"),
    ("dry_run", False, 1),
])
def test_schemas_accept_good_values_and_refuse_bad_ones(name: str, good, bad) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    assert _param(name).resolve(good) == good
    with pytest.raises(ParamValidationError):
        _param(name).resolve(bad)


def test_defaults_mean_a_scheduled_run_on_the_logical_date() -> None:
    defaults = {name: schema["default"] for name, schema in PARAM_SCHEMAS.items()}
    options = validate_run_params(defaults, fallback_date="2026-10-14")
    assert options == RunOptions(date="2026-10-14")
    assert options.overrides() == {}


def test_params_become_configuration_overrides(tmp_path) -> None:
    options = validate_run_params({"date": "2026-10-13", "scale": "tiny", "models": ["popularity", "ease"],
                                   "dry_run": True}, fallback_date="2026-10-14")
    assert options == RunOptions("2026-10-13", "tiny", ("popularity", "ease"), False, True)
    config = options.apply(load_config(environ={"PE_ROOT": str(tmp_path)}))
    assert config.generator.scale == "tiny"
    assert config.training.models == ["popularity", "ease"]
    assert options.to_dict() == {"date": "2026-10-13", "scale": "tiny", "models": ["popularity", "ease"],
                                 "skip_training": False, "dry_run": True}


@pytest.mark.parametrize(("params", "message"), [
    ({"date": "2026-02-31"}, "param 'date' must be a calendar date YYYY-MM-DD, got '2026-02-31'"),
    ({"date": ""}, "no run date"),
    ({"date": "2026-10-14", "scale": "huge"}, "param 'scale' must be one of ['tiny', 'small', 'medium', 'large']"),
    ({"date": "2026-10-14", "models": ["ease", "gpt"]}, "param 'models' has unknown models ['gpt']"),
    ({"date": "2026-10-14", "models": ["ease", "ease"]}, "lists a model twice"),
    ({"date": "2026-10-14", "models": "ease"}, None),
    ({"date": "2026-10-14", "skip_training": "yes"}, "param 'skip_training' must be true or false, got 'yes'"),
    ({"date": "2026-10-14", "skip_training": True, "models": ["ease"]}, "contradict each other"),
    ({"date": "2026-10-14", "dryrun": True}, "unknown params ['dryrun']"),
])
def test_bad_values_fail_with_a_message_naming_the_param(params: dict, message: str | None) -> None:
    if message is None:  # a comma-separated string is accepted for convenience (--conf from a shell)
        assert validate_run_params(params).models == ("ease",)
        return
    with pytest.raises(RunParamsError) as error:
        validate_run_params(params)
    assert message in str(error.value)


def test_scale_must_match_the_generated_world() -> None:
    check_world_scale(RunOptions("2026-10-14"), None)  # no scale asked: nothing to check
    check_world_scale(RunOptions("2026-10-14", scale="tiny"), "tiny")
    with pytest.raises(RunParamsError, match=r"lake holds a 'small' world: run `pe generate --scale tiny` first"):
        check_world_scale(RunOptions("2026-10-14", scale="tiny"), "small")
    with pytest.raises(RunParamsError, match="lake holds no generated world"):
        check_world_scale(RunOptions("2026-10-14", scale="tiny"), None)
