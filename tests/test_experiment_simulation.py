"""7-day simulated experiments (acceptance 1 and 2): served lists -> simulated reactions -> the report.

The world is the simulation's default (about 6,000 users, 300 apps: at half that size the
champion's edge over popularity is within the noise of 7 days); each scenario simulates 14
warmup days and 7 experiment days in ~8 s, so the three are marked slow (~35 s together).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jobs import columns as C
from personalization.config import load_config
from personalization.experiment_simulation import (
    SCENARIOS,
    Simulation,
    day_feedback,
    events_frame,
    feedback,
    run_scenarios,
)
from personalization.generator.simulate import DayEvents

SETTINGS = Simulation()


def test_events_frame_names_and_tags() -> None:
    n = 3
    events = DayEvents(
        etype=np.array([C.EVENT_TYPES.index("impression"), C.EVENT_TYPES.index("install"),
                        C.EVENT_TYPES.index("app_open")], dtype=np.int8),
        user=np.array([5, 5, 7]), app=np.array([12, 12, 3]), ts=np.zeros(n, np.int64), session=np.ones(n, np.int64),
        surface=np.array([C.SURFACES.index("for_you"), C.SURFACES.index("for_you"), -1]),
        position=np.array([2, 2, 0]), query=np.full(n, -1), amount=np.full(n, np.nan),
        duration=np.array([np.nan, np.nan, 60.0]), rating=np.zeros(n, np.int64), consent_type=np.full(n, -1),
        consent_value=np.full(n, -1, np.int8), variant=np.array([0, 0, -1]), queries=[], variants=["exp:b"],
    )
    frame = events_frame(events)
    assert frame[C.USER_ID].tolist() == ["u0000005", "u0000005", "u0000007"]
    assert frame[C.EVENT_TYPE].tolist() == ["impression", "install", "app_open"]
    assert frame[C.SURFACE].tolist() == ["for_you", "for_you", None]
    assert frame[C.VARIANT].tolist() == ["exp:b", "exp:b", None]
    # Feedback: install 1.0, app_open 1.0 (impressions carry no weight); summed over days.
    day = day_feedback(frame)
    assert day.to_dict("records") == [{C.USER_ID: "u0000005", C.APP_ID: "a000012", "weight": 1.0},
                                      {C.USER_ID: "u0000007", C.APP_ID: "a000003", "weight": 1.0}]
    assert feedback([day, day])["weight"].tolist() == [2.0, 2.0]


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("simulation")
    config = load_config(overrides={"paths": {"root": str(root)}}, environ={})
    return root / "out", run_scenarios(config, root / "out", SETTINGS)


@pytest.mark.slow
def test_champion_lift_over_seven_days_has_a_ci_above_zero(scenarios: tuple[Path, dict]) -> None:
    out, summary = scenarios
    outcome = summary["scenarios"]["champion_vs_popularity"]
    assert outcome["passed"] and outcome["srm_ok"], outcome
    assert outcome["champion"] == "ease"  # best validation NDCG of the fitted models
    for metric in ("ctr", "install_rate"):
        low, high = outcome["lifts"][metric]["relative_ci"]
        assert 0 < low < high and outcome["lifts"][metric]["p_value"] < summary["alpha"], (metric, outcome)
    report = json.loads((out / "champion_vs_popularity" / "report.json").read_text())
    assert (report["start"], report["end"]) == ("2026-10-15", "2026-10-21")  # the 7 experiment days
    rows = pd.DataFrame(report["rows"])
    assert set(rows["variant"]) == {"champion"} and set(rows["control_variant"]) == {"popularity"}
    assert rows.set_index("metric").loc["install_rate", "absolute_ci_low"] > 0
    assert "<img" in (out / "champion_vs_popularity" / "report.html").read_text()


@pytest.mark.slow
def test_a_a_shows_no_difference_and_passes_srm(scenarios: tuple[Path, dict]) -> None:
    _, summary = scenarios
    outcome = summary["scenarios"]["a_a"]
    assert outcome["passed"] and outcome["srm_ok"] and outcome["srm_p_value"] >= 0.001, outcome
    assert all(not lift["significant"] and lift["p_value"] >= summary["alpha"] for lift in outcome["lifts"].values())


@pytest.mark.slow
def test_a_broken_allocation_trips_srm(scenarios: tuple[Path, dict]) -> None:
    _, summary = scenarios
    analysed, served = SCENARIOS["broken_allocation"]
    assert analysed.expected_shares() == {"a": 0.5, "b": 0.5} and served.expected_shares() == {"a": 0.6, "b": 0.4}
    outcome = summary["scenarios"]["broken_allocation"]
    assert outcome["passed"] and not outcome["srm_ok"] and outcome["srm_p_value"] < 0.001, outcome
