"""The typed configuration: defaults, YAML file, environment, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from personalization.config import load_config


def test_defaults_live_under_var(tmp_path: Path) -> None:
    config = load_config(environ={"PE_ROOT": str(tmp_path)})
    assert config.lake_root == str(tmp_path / "var" / "lake")
    assert config.airflow_home == str(tmp_path / "var" / "airflow")
    assert config.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'var' / 'mlflow.db'}"
    assert config.mlflow_artifact_root == (tmp_path / "var" / "mlartifacts").as_uri()
    assert config.serving_url == f"sqlite:///{tmp_path / 'var' / 'serving.db'}"
    assert config.spark.master == "local[*]"
    assert config.generator.scale == "small"


def test_yaml_then_environment_override(tmp_path: Path) -> None:
    path = tmp_path / "prod.yaml"
    path.write_text(
        "paths:\n  lake_root: s3://lake-bucket/pe\n"
        "serving:\n  url: postgresql://reader@db:5432/serving\n  keep_versions: 5\n"
        "spark:\n  master: spark://spark-master:7077\n"
        "training:\n  models: [ease, two_tower]\n"
    )
    config = load_config(path, environ={"PE_ROOT": str(tmp_path), "PE_SERVING__KEEP_VERSIONS": "7",
                                        "PE_SCORING__PAID_ONLY_FOR_BUYERS": "false"})
    assert config.lake_root == "s3://lake-bucket/pe"
    assert config.serving_url == "postgresql://reader@db:5432/serving"
    assert config.serving.keep_versions == 7
    assert config.spark.master == "spark://spark-master:7077"
    assert config.training.models == ["ease", "two_tower"]
    assert config.scoring.paid_only_for_buyers is False


def test_unknown_keys_and_bad_values_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown configuration key serving.uri"):
        load_config(environ={"PE_SERVING__URI": "x"})
    with pytest.raises(ValueError, match="bad value for scoring.top_n"):
        load_config(environ={"PE_SCORING__TOP_N": "ten"})
    with pytest.raises(ValueError, match="generator.scale must be one of"):
        load_config(overrides={"generator": {"scale": "huge"}}, environ={})


def test_model_options_are_a_config_section(tmp_path: Path) -> None:
    from models.common import model_options

    path = tmp_path / "models.yaml"
    path.write_text("models:\n  ease_lambda_grid: [100, 500]\n  blend_models: [ease, cf_bpr]\n")
    config = load_config(path, environ={"PE_ROOT": str(tmp_path), "PE_MODELS__TT_HIDDEN_DIM": "256",
                                        "PE_MODELS__FAST_DEV_RUN": "yes", "PE_MODELS__TT_DROPOUT": "0.3"})
    options = model_options(config)
    assert options.tt_hidden_dim == 256 and options.fast_dev_run is True and options.tt_dropout == 0.3
    assert options.ease_lambda_grid == [100.0, 500.0] and options.blend_models == ["ease", "cf_bpr"]
    options.blend_models.append("two_tower")  # a fit's copy never changes the configuration
    assert config.models.blend_models == ["ease", "cf_bpr"]
    with pytest.raises(ValueError, match="unknown configuration key models.tt_width"):
        load_config(environ={"PE_MODELS__TT_WIDTH": "3"})
