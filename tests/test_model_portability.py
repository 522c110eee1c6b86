"""A registered champion loads and predicts outside this repository; training logs its gold tables as inputs.

The champion is trained by ``train()`` from gold tables written to a temporary lake (the user's
route), promoted, then loaded with ``mlflow.pyfunc.load_model`` by a separate interpreter: a fresh
virtual environment that sees the project venv's third-party packages but not this repository
(no editable-install finder, a working directory outside the checkout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from models.data import from_frames, toy_frames
from models.registry import evaluate_and_promote
from models.tracking import MODEL_REQUIREMENTS, model_code_modules
from models.train import train
from personalization.config import Config
from personalization.lake import Lake
from tests.test_models_train import _config as train_config

REPO = Path(__file__).resolve().parents[1]
DATE = "2026-10-04"
MODEL = "rec-portable"


def _config(root: Path) -> Config:
    """The training tests' fast configuration, for the two-tower alone."""
    return train_config(root, MODEL, models=["two_tower"])


def _write_gold(config: Config, frames: dict[str, pd.DataFrame]) -> dict[str, int]:
    """The toy tables as gold partitions of DATE; returns each table's row count."""
    lake = Lake(config)
    rows = {}
    for table, frame in frames.items():
        folder = Path(lake.partition(lake.gold(table), DATE))
        folder.mkdir(parents=True)
        frame.to_parquet(folder / "part-00000.parquet", index=False)
        rows[table] = len(frame)
    return rows


def _fresh_python(tmp_path: Path) -> Path:
    """A venv whose interpreter imports the project venv's packages but not this repository."""
    venv = tmp_path / "fresh-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # Plain path lines: the project site-packages' own .pth files (the editable finder) are not run.
    project_site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (Path(site) / "project_packages.pth").write_text("\n".join(project_site) + "\n")
    return python


LOADER = textwrap.dedent(
    """
    import importlib.util, json, sys
    import pandas as pd
    # The repository is not importable here, before MLflow loads the model.
    absent = [name for name in ("models", "jobs", "personalization") if importlib.util.find_spec(name) is not None]
    import mlflow
    model = mlflow.pyfunc.load_model(sys.argv[1])
    history = pd.read_json(sys.argv[2], orient="records", dtype={"user_id": str, "app_id": str, "weight": float})
    predicted = model.predict(history, params={"k": 5})
    print(json.dumps({
        "importable_before_load": absent,
        "models_from": sys.modules["models"].__file__,
        "predicted": predicted.to_dict(orient="records"),
    }))
    """
)


@pytest.mark.slow
def test_champion_loads_and_scores_in_a_fresh_venv_without_the_repo(tmp_path: Path) -> None:
    config = _config(tmp_path / "store")
    frames = {name: frame for name, frame in toy_frames().items() if frame is not None}
    rows = _write_gold(config, frames)
    result = train(config, DATE, dag_run_id="manual__portable")
    decision = evaluate_and_promote(config, result, data=from_frames(**frames, date=DATE))
    assert decision["promoted"] is True and decision["champion_version"] == "1"
    uri = f"models:/{MODEL}@champion"

    # One user, by their training history (a user with history the model never saw scores too).
    history = frames["interactions"].query("user_id == 'u00' and split == 'train'")[["user_id", "app_id", "weight"]]
    history = pd.concat([history, history.assign(user_id="newcomer")], ignore_index=True)
    expected = mlflow.pyfunc.load_model(uri).predict(history, params={"k": 5})
    assert len(expected) == 10 and set(expected["user_id"]) == {"u00", "newcomer"}

    python = _fresh_python(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "history.json").write_text(history.to_json(orient="records"))
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env["MLFLOW_TRACKING_URI"] = config.mlflow_tracking_uri
    done = subprocess.run(
        [str(python), "-c", LOADER, uri, "history.json"],
        cwd=outside, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["importable_before_load"] == []
    # The classes came from the copy of the code inside the model, not from this checkout.
    assert "/code/models/" in report["models_from"] and not report["models_from"].startswith(str(REPO))
    loaded = pd.DataFrame(report["predicted"])
    assert loaded[["user_id", "rank", "app_id"]].to_dict("records") == (
        expected[["user_id", "rank", "app_id"]].to_dict("records")
    )
    assert loaded["score"].tolist() == pytest.approx(expected["score"].tolist(), rel=1e-6)

    # The model: pinned requirements, a signature and an input example, the code it needs and no more.
    client = MlflowClient(config.mlflow_tracking_uri)
    version = client.get_model_version_by_alias(MODEL, "champion")
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "download")))
    requirements = (local / "requirements.txt").read_text().split()
    assert sorted(line.split("==")[0] for line in requirements) == sorted(MODEL_REQUIREMENTS)
    assert all("==" in line for line in requirements)
    model_file = (local / "MLmodel").read_text()
    assert "signature:" in model_file and (local / "input_example.json").exists()
    code = sorted(str(path.relative_to(local / "code")) for path in (local / "code").rglob("*.py"))
    assert "models/two_tower.py" in code and "jobs/columns.py" in code and "personalization/config.py" in code
    assert "models/scoring.py" not in code and "personalization/cli.py" not in code
    assert len(code) == len(model_code_modules(["models.two_tower", "models.tracking"]))

    # The gold tables are the runs' training inputs: a reference to each partition, not a copy.
    for run_id in (result["parent_run_id"], version.run_id):
        inputs = client.get_run(run_id).inputs.dataset_inputs
        by_name = {item.dataset.name: item for item in inputs}
        assert sorted(by_name) == sorted(f"gold/{table}" for table in frames)
        for table, count in rows.items():
            item = by_name[f"gold/{table}"]
            assert {tag.key: tag.value for tag in item.tags}["mlflow.data.context"] == "training"
            assert json.loads(item.dataset.source)["uri"] == Lake(config).partition(Lake(config).gold(table), DATE)
            assert json.loads(item.dataset.profile) == {"num_rows": count}
            assert len(item.dataset.digest) == 12
        columns = [column["name"] for column in json.loads(by_name["gold/interactions"].dataset.schema)["mlflow_colspec"]]
        assert columns == list(frames["interactions"].columns)
