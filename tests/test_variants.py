"""Experiment variants in batch scoring (models/variants.py) on the hand-made lake of test_scoring."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from models.base import Recommender
from models.variants import merge_specs, model_uri, plan_cells, score_with_experiments, served_variants
from personalization.experiments import Experiment, Variant, assign
from tests.test_scoring import APPS, FIXED, D, FixedScores, build_lake, for_you, make_config, read

#: The reverse of FIXED: a12 = 12 ... a01 = 1, so the two arms' lists differ visibly.
REVERSED = {app: 13.0 - score for app, score in FIXED.items()}
ACTIVE = ["u1", "u10", "u2", "u3", "u4", "u7", "u9"]
MODELS_VS = Experiment(
    "ranker",
    "salt-ranker",
    (Variant("control", 50, {"model_alias": "champion"}), Variant("treatment", 50, {"model_version": "4"})),
)


def loader(config: Any, spec: Mapping[str, Any], date: str) -> tuple[Recommender, str]:
    """Stands in for the registry: the champion (version 7) scores FIXED, version 4 scores REVERSED."""
    if spec.get("model_version") == "4":
        return FixedScores(REVERSED), "4"
    return FixedScores(FIXED), "7"


def test_specs_merge_and_conflicts_raise() -> None:
    assert merge_specs([{"model_alias": "champion"}, {"scoring": {"diversity": "none"}}]) == {
        "model_alias": "champion", "scoring": {"diversity": "none"}}
    assert merge_specs([{"personalized": False}, {"scoring": {"top_n": 5}}]) == {
        "personalized": False, "scoring": {"top_n": 5}}
    with pytest.raises(ValueError, match="model"):
        merge_specs([{"model": "popularity"}, {"model_version": "3"}])
    with pytest.raises(ValueError, match="diversity"):
        merge_specs([{"scoring": {"diversity": "mmr"}}, {"scoring": {"diversity": "none"}}])
    with pytest.raises(ValueError, match="spec keys"):
        Variant("a", 100, {"modle": "ease"})


def test_cells_cross_experiments_by_the_hash() -> None:
    users = [f"u{i:05d}" for i in range(400)]
    diversity = Experiment("diversity", "salt-div", (Variant("mmr", 50), Variant("none", 50, {"scoring": {
        "diversity": "none"}})), holdout_pct=0)
    cells = plan_cells(users, [MODELS_VS, diversity])
    assert sorted(c.variant for c in cells) == [
        "ranker:control;diversity:mmr", "ranker:control;diversity:none",
        "ranker:treatment;diversity:mmr", "ranker:treatment;diversity:none"]
    by_user = {u: c.variant for c in cells for u in c.user_ids}
    first, second = assign(users, MODELS_VS), assign(users, diversity)
    assert all(by_user[u] == f"ranker:{a};diversity:{b}" for u, a, b in zip(users, first, second, strict=True))
    spec = next(c.spec for c in cells if c.variant == "ranker:treatment;diversity:none")
    assert spec == {"model_version": "4", "scoring": {"diversity": "none"}}


def test_model_uris(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert model_uri(config, {}, D) == "models:/app-recommender@champion"
    assert model_uri(config, {"model_alias": "challenger"}, D) == "models:/app-recommender@challenger"
    assert model_uri(config, {"model_version": 3}, D) == "models:/app-recommender/3"
    with pytest.raises(LookupError, match="popularity"):
        model_uri(config, {"model": "popularity"}, D)
    record = Path(config.var_dir) / "runs" / D / "train_models.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"runs": {"popularity": "abc123"}, "model_uris": {}}))
    assert model_uri(config, {"model": "popularity"}, D) == "runs:/abc123/model"


@pytest.fixture(scope="module")
def experiment_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    build_lake(root / "lake")
    holdout = Experiment("ranker", "salt-ranker", MODELS_VS.variants[:1] + (Variant("treatment", 30, {
        "model_version": "4"}),), holdout_pct=20)
    result = score_with_experiments(make_config(root), D, [holdout], deleted_users=["u5"], loader=loader,
                                    log_to_mlflow=False)
    return root, holdout, result


def test_each_user_gets_the_assigned_arms_lists_and_tag(experiment_run) -> None:
    root, experiment, result = experiment_run
    users = ["u1", "u10", "u2", "u3", "u4", "u6", "u7", "u9"]  # every non-deleted profile (u6 inactive)
    arms = dict(zip(users, assign(users, experiment), strict=True))
    recs = read(root, "recommendations")
    tags = recs.groupby("user_id")["variant"].unique().map(list).to_dict()
    assert tags == {u: [f"ranker:{arms[u]}"] for u in ACTIVE}
    assert served_variants(make_config(root), D) == pd.Series(
        [f"ranker:{arms[u]}" for u in ACTIVE]).value_counts().to_dict()
    assert set(arms.values()) == {"control", "treatment", "holdout"}, arms  # the fixture covers all three
    for user in ACTIVE:
        rows = recs[(recs["user_id"] == user) & (recs["surface"] == "for_you")]
        if arms[user] == "holdout":
            # Non-personalised: popularity reasons only, no because_you_liked, model version of the cell.
            assert rows["reason"].str.startswith("Popular").all(), rows
            assert not (recs[recs["user_id"] == user]["surface"] == "because_you_liked").any()
        elif arms[user] == "treatment" and user in ("u1", "u7", "u9", "u10"):
            # Personalised users of the treatment see the reversed model's order: a12 (12) first
            # unless they own it (u10 does).
            assert set(rows["model_version"]) == {"4"}, rows
            assert user == "u10" or for_you(recs, user)[0] == "a12", rows
        elif user in ("u1", "u7", "u9", "u10"):
            assert set(rows["model_version"]) == {"7"}
    counts = recs[recs["surface"] == "for_you"].groupby("user_id").size().to_dict()
    assert counts == {u: 3 for u in ACTIVE}
    insights = read(root, "user_insights")
    assert sorted(insights["user_id"]) == sorted(users)  # one insights row per user, not per cell
    assert result["users_scored"] == 7 and result["rows"]["user_insights"] == len(users)
    assert sum(c["users_scored"] for c in result["cells"].values()) == 7
    assert result["rows"]["recommendations"] == len(recs)


def test_without_experiments_scoring_is_unchanged(tmp_path: Path) -> None:
    build_lake(tmp_path / "lake")
    config = make_config(tmp_path)
    result = score_with_experiments(config, D, [], deleted_users=["u5"], loader=loader, log_to_mlflow=False)
    assert "cells" not in result
    recs = read(tmp_path, "recommendations")
    assert set(recs["variant"]) <= {"champion", "cold_start", "non_personalized"}
    assert APPS[0] in set(recs["app_id"])
