"""A/B experiments in the synthetic world: served lists -> simulated reactions -> the experiment report.

A nightly DAG per simulated day is far too slow for a test, so this drives the same
pieces in-process (the faithful shortcut):

1. the generator's world (:func:`personalization.generator.generate.start_world`) runs
   ``warmup_days`` with the store's default merchandising;
2. the configured models are fitted on the warmup events (installs, opens and views as
   implicit feedback; the last warmup day is the validation split) with the project's own
   fit functions, and the champion is the one with the best validation NDCG@k, as the
   promotion gate picks it;
3. on each of ``days`` experiment days every user's arm comes from the experiment's hash
   (:func:`personalization.experiments.assign`, the assignment scoring uses); each arm's
   model scores its users on their history up to the day before, owned and invisible
   apps are masked, and the top ``top_n`` are shown on the ``for_you`` surface
   (:class:`RecommendationListPolicy`) tagged ``"<experiment>:<arm>"``; the simulator
   produces impressions, views, installs, purchases and usage, tagged where they come
   from a served slate;
4. the days' events go through the report's own code (:func:`exposure_from_days`,
   :func:`analyse_exposure`) and the page renderer.

Arm specs understood here: ``{"model_alias": "champion"}`` or ``{}`` (the champion),
``{"model": NAME}`` (a fitted model) and the holdout / ``{"personalized": false}``
(store-wide popularity, the same list for everyone).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from jobs import columns as C
from models.base import Recommender
from personalization.config import Config
from personalization.experiment_report import (
    ExperimentResult,
    analyse_exposure,
    exposure_from_days,
    render_html,
    report_settings,
    result_rows,
    results_summary,
)
from personalization.experiments import HOLDOUT, Experiment, Variant, assign, tag
from personalization.generator.generate import grow_world, simulate_day_chunk, start_world
from personalization.generator.policy import DefaultStorePolicy, RecommendationListPolicy
from personalization.generator.presets import ScalePreset
from personalization.generator.simulate import DayEvents
from personalization.generator.world import SimWorld, app_id, user_id

log = logging.getLogger(__name__)

#: Implicit-feedback weight of each event type in the models' training matrix.
FEEDBACK_WEIGHTS = {"install": 1.0, "app_open": 1.0, "app_view": 0.5}
#: A world big enough for a 7-day lift to be detectable in a few seconds (about 6,000 users, 320 apps).
EXPERIMENT_PRESET = ScalePreset(
    "experiment", n_users=6_000, n_apps=300, days=21, new_users_per_day=10, new_apps_per_day=1,
    activity_scale=1.3, chunk_users=200_000,
)


@dataclass
class Simulation:
    """Settings of one simulated experiment."""

    preset: ScalePreset = EXPERIMENT_PRESET
    warmup_days: int = 14
    days: int = 7
    seed: int = 42
    start_date: str = "2026-10-01"
    top_n: int = 10
    #: Models fitted on the warmup (names of ``models.train``'s fit functions).
    models: tuple[str, ...] = ("popularity", "ease")


@dataclass
class SimulationResult:
    """What a simulated experiment produced."""

    dates: list[str]
    results: list[ExperimentResult]
    unmatched: list[str]
    champion: str
    validation_ndcg: dict[str, float]
    users_per_arm: dict[str, int] = field(default_factory=dict)

    def summary(self, report_date: str | None = None) -> dict[str, Any]:
        """JSON-able: settings-independent outcome, the results table rows and the per-experiment summary."""
        start, end = self.dates[0], self.dates[-1]
        return {
            "start": start,
            "end": end,
            "champion": self.champion,
            "validation_ndcg": self.validation_ndcg,
            "served_users_per_arm": self.users_per_arm,
            "experiments": results_summary(self.results),
            "srm": {r.experiment.name: r.srm for r in self.results},
            "rows": result_rows(self.results, report_date or end, start, end),
            "unmatched_tags": self.unmatched,
        }


def events_frame(events: DayEvents) -> pd.DataFrame:
    """A simulated day's events in the silver events' column names (the columns the report reads)."""
    surfaces = np.array(list(C.SURFACES) + [None], dtype=object)
    variants = np.array(list(events.variants) + [None], dtype=object)
    return pd.DataFrame({
        C.USER_ID: [user_id(u) for u in events.user.tolist()],
        C.EVENT_TYPE: np.asarray(C.EVENT_TYPES, dtype=object)[events.etype],
        C.APP_ID: [app_id(a) if a >= 0 else None for a in events.app.tolist()],
        C.SURFACE: surfaces[events.surface],  # -1 indexes the trailing None
        C.POSITION: events.position,
        C.VARIANT: variants[events.variant],
        C.AMOUNT: events.amount,
        C.DURATION_S: events.duration,
    })


def day_feedback(frame: pd.DataFrame) -> pd.DataFrame:
    """``user_id, app_id, weight``: one day's implicit feedback (:data:`FEEDBACK_WEIGHTS`) per pair."""
    events = frame.loc[frame[C.EVENT_TYPE].isin(FEEDBACK_WEIGHTS), [C.USER_ID, C.APP_ID, C.EVENT_TYPE]]
    weights = events[C.EVENT_TYPE].map(FEEDBACK_WEIGHTS).astype(float)
    return events.assign(weight=weights).groupby([C.USER_ID, C.APP_ID], as_index=False)["weight"].sum()


def feedback(days: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """``user_id, app_id, weight`` summed over days of :func:`day_feedback`."""
    return pd.concat(days, ignore_index=True).groupby([C.USER_ID, C.APP_ID], as_index=False)["weight"].sum()


def fit_models(config: Config, warmup: Sequence[pd.DataFrame], names: Sequence[str], k: int
               ) -> tuple[dict[str, Recommender], dict[str, float]]:
    """Fit ``names`` on the warmup days' feedback (:func:`day_feedback`, the last day validates);
    returns the models and their validation NDCG@k."""
    from models.common import model_options
    from models.data import from_frames
    from models.evaluation import evaluate
    from models.train import fitter

    train = feedback(warmup[:-1]).assign(split="train")
    validation = feedback(warmup[-1:]).assign(split="validation")
    data = from_frames(pd.concat([train, validation], ignore_index=True).assign(label=1))
    fitted, ndcg = {}, {}
    for name in names:
        fitted[name] = fitter(name)(data, config, model_options(config)).recommender
        ndcg[name] = round(float(evaluate(fitted[name], data, k)[f"ndcg@{k}"]), 6)
    return fitted, ndcg


def serve(model: Recommender, world: SimWorld, users: np.ndarray, history: pd.DataFrame, day: int, top_n: int
          ) -> dict[str, list[str]]:
    """Top ``top_n`` apps of ``model`` per user: installed, unknown and invisible apps masked."""
    if len(users) == 0:
        return {}
    ids = np.array([user_id(u) for u in users.tolist()], dtype=object)
    columns = pd.Index(model.app_ids)
    rows = pd.Index(ids).get_indexer(history[C.USER_ID])
    cols = columns.get_indexer(history[C.APP_ID])
    keep = (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix((history["weight"].to_numpy(np.float32)[keep], (rows[keep], cols[keep])),
                           shape=(len(users), len(columns)), dtype=np.float32)
    scores = np.asarray(model.score(ids.tolist(), matrix), dtype=np.float32)
    apps = np.array([int(a[1:]) for a in model.app_ids], dtype=np.int64)
    visible = world.can_see(np.repeat(users, len(apps)), np.tile(apps, len(users)), day).reshape(scores.shape)
    installed = (world.installed[users][:, :, None] == apps[None, None, :]).any(axis=1)
    scores = np.where(visible & ~installed, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_n]
    names = np.array([app_id(int(a)) for a in apps], dtype=object)[order]
    shown = np.isfinite(np.take_along_axis(scores, order, axis=1))
    return {ids[row]: names[row][shown[row]].tolist() for row in range(len(users))}


def arm_model(experiment: Experiment, arm: str, models: Mapping[str, Recommender], champion: str) -> Recommender:
    """The fitted model an arm serves (see the module docstring for the specs understood)."""
    spec = {} if arm == HOLDOUT else dict(next(v for v in experiment.variants if v.name == arm).spec)
    if arm == HOLDOUT or spec.get("personalized") is False:
        return models["popularity"]
    if "model" in spec:
        return models[str(spec["model"])]
    if spec.get("model_alias", "champion") == "champion" and "model_version" not in spec:
        return models[champion]
    raise ValueError(f"arm {arm!r}: the simulation serves the champion or a fitted model by name, got {spec}")


def run_simulation(config: Config, experiment: Experiment, settings: Simulation | None = None,
                   served_experiment: Experiment | None = None) -> SimulationResult:
    """Simulate warmup + experiment days and analyse ``experiment`` on the experiment days.

    ``served_experiment`` (default ``experiment``) is the allocation actually served: a
    different one reproduces a broken allocation that the report's SRM check must catch.
    """
    settings = settings or Simulation()
    served_experiment = served_experiment or experiment
    preset = dataclasses.replace(settings.preset, days=settings.warmup_days + settings.days)
    start = dt.date.fromisoformat(settings.start_date)
    world = start_world(preset, start, settings.seed)[0]
    frames: list[pd.DataFrame] = []
    days: list[tuple[str, pd.DataFrame]] = []
    models: dict[str, Recommender] = {}
    ndcg: dict[str, float] = {}
    champion = ""
    served_counts: dict[str, int] = {}
    store = DefaultStorePolicy()
    for day in range(preset.days):
        grow_world(world, preset, day, settings.seed)
        policy: Any = store
        if day == settings.warmup_days:
            models, ndcg = fit_models(config, frames, settings.models, int(config.training.k))
            champion = max(ndcg, key=lambda name: (ndcg[name], name))
            log.info("simulated experiment: validation NDCG %s, champion %s", ndcg, champion)
        if day >= settings.warmup_days:
            users = np.arange(world.n_users, dtype=np.int64)
            arms = np.array(assign([user_id(u) for u in users.tolist()], served_experiment), dtype=object)
            history = feedback(frames)
            lists: dict[str, list[str]] = {}
            tags: dict[str, str] = {}
            for arm in sorted(set(arms.tolist())):
                members = users[arms == arm]
                served = serve(arm_model(served_experiment, arm, models, champion), world, members, history, day,
                               settings.top_n)
                lists.update(served)
                tags.update({user: tag(experiment.name, arm) for user in served})
                served_counts[arm] = served_counts.get(arm, 0) + len(served)
            policy = RecommendationListPolicy(lists, surfaces=("for_you",), fallback=store, variants=tags)
        frame = events_frame(simulate_day_chunk(world, preset, 0, world.n_users, day, policy, settings.seed, 0))
        frames.append(day_feedback(frame))
        if day >= settings.warmup_days:
            days.append((world.date_of(day), frame))
    options = report_settings(config)
    results, unmatched = analyse_exposure(exposure_from_days(days), [experiment], options)
    return SimulationResult(
        dates=[d for d, _ in days], results=results, unmatched=unmatched, champion=champion,
        validation_ndcg=ndcg, users_per_arm={arm: n // settings.days for arm, n in sorted(served_counts.items())},
    )


def write_report(result: SimulationResult, folder: str | Path) -> dict[str, str]:
    """``report.html`` (the experiment report page, no KPI history) and ``report.json`` under ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start, end = result.dates[0], result.dates[-1]
    page = render_html(end, start, end, result.results, pd.DataFrame(), result.unmatched)
    (folder / "report.html").write_text(page, encoding="utf-8")
    (folder / "report.json").write_text(json.dumps(result.summary(), indent=2, default=str), encoding="utf-8")
    return {"html": str(folder / "report.html"), "json": str(folder / "report.json")}


# ------------------------------------------------------------------ the acceptance scenarios
#: Champion against the popularity baseline (the lift must show).
CHAMPION_VS_POPULARITY = Experiment(
    "champion_vs_popularity", "sim-ab",
    (Variant("popularity", 50, {"model": "popularity"}), Variant("champion", 50, {"model_alias": "champion"})),
)
#: Both arms serve the champion (no difference may show).
A_A = Experiment(
    "a_a", "sim-aa", (Variant("a", 50, {"model_alias": "champion"}), Variant("b", 50, {"model_alias": "champion"}))
)
#: What a bug would serve instead of A_A's 50/50 (the SRM check must trip).
A_A_SERVED_60_40 = Experiment(
    "a_a", "sim-aa", (Variant("a", 60, {"model_alias": "champion"}), Variant("b", 40, {"model_alias": "champion"}))
)
#: name -> (experiment analysed, experiment served)
SCENARIOS: dict[str, tuple[Experiment, Experiment]] = {
    "champion_vs_popularity": (CHAMPION_VS_POPULARITY, CHAMPION_VS_POPULARITY),
    "a_a": (A_A, A_A),
    "broken_allocation": (A_A, A_A_SERVED_60_40),
}


def verdict(name: str, result: SimulationResult, alpha: float) -> dict[str, Any]:
    """Whether a scenario came out as it must (see :data:`SCENARIOS`), with the numbers behind it."""
    (experiment,) = result.results
    lifts = {c.metric: {"relative_ci": [round(x, 6) for x in c.relative_ci], "p_value": round(c.p_value, 6),
                        "significant": c.significant} for c in experiment.comparisons}
    srm_ok = bool(experiment.srm["ok"])
    if name == "champion_vs_popularity":
        passed = srm_ok and all(
            c.absolute_ci[0] > 0 for c in experiment.comparisons if c.metric in ("ctr", "install_rate"))
        expectation = "the champion's CTR and install-rate lifts have CIs above zero; SRM passes"
    elif name == "a_a":
        passed = srm_ok and all(c.p_value >= alpha and not c.significant for c in experiment.comparisons)
        expectation = f"no metric differs at alpha {alpha}; SRM passes"
    else:
        passed = not srm_ok
        expectation = "the SRM check fails"
    return {"passed": bool(passed), "expectation": expectation, "srm_p_value": experiment.srm["p_value"],
            "srm_ok": srm_ok, "lifts": lifts}


def run_scenarios(config: Config, out_dir: str | Path, settings: Simulation | None = None,
                  names: Sequence[str] = tuple(SCENARIOS)) -> dict[str, Any]:
    """Run the scenarios, write ``<out_dir>/<scenario>/report.{html,json}`` and ``<out_dir>/summary.json``."""
    settings = settings or Simulation()
    alpha = float(report_settings(config)["alpha"])
    summary: dict[str, Any] = {"settings": dataclasses.asdict(settings), "alpha": alpha, "scenarios": {}}
    for name in names:
        analysed, served = SCENARIOS[name]
        result = run_simulation(config, analysed, settings, served)
        paths = write_report(result, Path(out_dir) / name)
        summary["scenarios"][name] = {**verdict(name, result, alpha), "report": paths,
                                      "champion": result.champion, "validation_ndcg": result.validation_ndcg}
    Path(out_dir, "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return summary
