"""Per-user insights (models/insights.py): formulas on hand-computed values and one tiny silver lake."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import insights as ins

D = "2026-10-10"
EPOCH = dt.date(1970, 1, 1)


def epoch(day: str) -> int:
    return (dt.date.fromisoformat(day) - EPOCH).days


# ------------------------------------------------------------------ formulas
def test_midrank_percentile_handles_ties_and_single_values():
    assert ins.midrank_percentile(np.array([1, 2, 2, 4])).tolist() == [0.0, 0.5, 0.5, 1.0]
    assert ins.midrank_percentile(np.array([7.0])).tolist() == [0.5]


def test_engagement_formula_on_hand_computed_values():
    score = ins.engagement_score(
        recency_days=np.array([1, 5, 10, 90]),
        active_days=np.array([10, 5, 1, 0]),
        duration_s=np.array([600, 6000, 60, 0]),
    )
    # Active users 0-2: P(-recency) = [1, .5, 0], P(active days) = [1, .5, 0], P(duration) = [.5, 1, 0].
    # E0 = 100 (.4 + .35 + .25 * .5) = 87.5; E1 = 100 (.2 + .175 + .25) = 62.5; E2 = 0; inactive = 0.
    assert score.tolist() == pytest.approx([87.5, 62.5, 0.0, 0.0])


def test_poisson_fallback_churn():
    assert ins.poisson_churn(np.array([7, 0]), np.array([14, 14]), 14) == pytest.approx([np.exp(-7.0), 1.0])


def test_lifetime_value_formula():
    ltv = ins.lifetime_value(np.array([2.0, 2.0]), np.array([10.0, 10.0]), np.array([70.0, 70.0]),
                             np.array([0.0, 1.0]), population=(0.01, 5.0))
    # rate = (2 + 0.01 * 30) / (70 + 30) = 0.023/day; amount = (10 + 5) / 3 = 5; 365 alive days.
    assert ltv[0] == pytest.approx(0.023 * 5.0 * 365)
    assert ltv[1] == pytest.approx(0.0)  # certain churn: no alive days left
    half = ins.lifetime_value(np.array([0.0]), np.array([0.0]), np.array([30.0]), np.array([0.5]),
                              horizon_days=2, population=(0.1, 2.0))
    r = 0.5 ** (1 / 14)
    assert half[0] == pytest.approx((3.0 / 60.0) * 2.0 * (r + r * r))


def test_next_best_action_rules_in_order():
    common = dict(churn_risk=0.1, engagement=50.0, n_purchases=1.0, top_category="games")
    assert ins.next_best_action(is_new=True, **{**common, "churn_risk": 0.9}) == "onboard_new_user"
    assert ins.next_best_action(is_new=False, **{**common, "churn_risk": 0.5}) == "re_engage_notification"
    assert ins.next_best_action(is_new=False, **{**common, "engagement": 60.0, "n_purchases": 0.0}) == \
        "offer_premium"
    assert ins.next_best_action(is_new=False, **common) == "suggest_category:games"
    assert ins.next_best_action(is_new=False, **{**common, "top_category": None}) == "none"


def test_notification_hour_channel_and_cap():
    histogram = np.zeros((3, 24))
    histogram[0, [9, 20]] = 4  # tie: earliest hour wins
    histogram[1, 22] = 1
    assert ins.best_notification_hour(histogram).tolist() == [9, 22, ins.DEFAULT_NOTIFICATION_HOUR]
    channel = ins.notification_channel(np.array([80.0, 50.0, 50.0, 50.0]), np.array([10, 10, 2, 0]),
                                       np.array([0, 0, 0, 0]))
    assert channel.tolist() == ["in_app", "email", "push", "push"]
    assert ins.notification_cap(np.array([0.0, 29.9, 30.0, 69.9, 70.0, 100.0])).tolist() == [1, 1, 3, 3, 5, 5]


def test_primary_interests_json():
    out = ins.primary_interests(np.array([[3.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]]), ["a", "b", "c", "d"])
    assert json.loads(out[0]) == [{"category": "a", "weight": 0.75}, {"category": "b", "weight": 0.25}]
    assert out[1] == "[]"


def test_reliability_bins():
    table = ins.reliability_bins(np.array([0.05, 0.15, 0.95, 0.91]), np.array([0, 0, 1, 0]), bins=2)
    assert table == [
        {"bin_low": 0.0, "bin_high": 0.5, "count": 2, "mean_predicted": pytest.approx(0.1), "observed_rate": 0.0},
        {"bin_low": 0.5, "bin_high": 1.0, "count": 2, "mean_predicted": pytest.approx(0.93), "observed_rate": 0.5},
    ]


def test_churn_model_out_of_time_and_fallback():
    rng = np.random.default_rng(0)

    def sample(n):
        recency = rng.uniform(0, 60, n)
        features = np.column_stack([recency] + [rng.normal(size=n) for _ in range(len(ins.FEATURE_NAMES) - 1)])
        return features, (recency + rng.normal(0, 5, n) > 30).astype(np.int64)

    model = ins.fit_churn_model(sample(300), sample(200), sample(300), horizon_days=14, seed=1)
    assert model.holdout == "out_of_time"
    assert model.metrics["churn_auc"] > 0.9
    assert 0.0 <= model.metrics["churn_brier"] < 0.15
    assert sum(row["count"] for row in model.reliability) == 200
    probability = model.predict(sample(5)[0], np.full(5, 30.0))
    assert ((probability >= 0) & (probability <= 1)).all()
    one_class = (np.zeros((30, len(ins.FEATURE_NAMES))), np.zeros(30, dtype=np.int64))
    fallback = ins.fit_churn_model(None, None, one_class, horizon_days=14, seed=1)
    assert fallback.holdout == "poisson_fallback" and fallback.estimator is None


# ------------------------------------------------------------------ the silver scan
def write_silver_events(root: Path, rows: list[dict]) -> None:
    frame = pd.DataFrame(rows)
    for day, group in frame.groupby("event_date"):
        folder = root / "lake" / "silver" / "events" / f"event_date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        group.drop(columns="event_date").to_parquet(folder / "part-0.parquet", index=False)


def event(day, user, kind, hour, app=None, duration=None, amount=None, query=None, landing=None):
    return {"event_date": day, "user_id": user, "event_type": kind, "app_id": app, "duration_s": duration,
            "amount": amount, "local_hour": hour, "query": query, "landing_date": landing or day}


EVENTS = [
    event("2026-10-08", "u1", "app_open", 9, app="a0", duration=600.0),
    event("2026-10-08", "u1", "notification_sent", 8),
    event("2026-10-08", "u2", "search", 20, query="Chess "),
    event("2026-10-09", "u1", "purchase", 9, app="a1", amount=4.99),
    event("2026-10-09", "u1", "notification_open", 9),
    event("2026-10-09", "u2", "search", 21, query="chess"),
    event("2026-10-09", "u9", "app_open", 9, app="a0", duration=60.0),  # unknown user: ignored
    event("2026-10-10", "u1", "install", 10, app="a1"),
    event("2026-10-10", "u3", "app_open", 11, app="a0", landing="2026-10-11"),  # landed after D: ignored
]


def test_scan_activity_accumulates_exact_features(tmp_config):
    write_silver_events(Path(tmp_config.paths.root), EVENTS)
    run_day, before = dt.date(2026, 10, 10), dt.date(2026, 10, 9)
    scan = ins.scan_activity(tmp_config, D, ["u1", "u2", "u3"], [run_day, before], horizon_days=1,
                             app_category={"a0": 0, "a1": 1}, n_categories=2)
    now, then = scan.activities[run_day], scan.activities[before]
    assert now.n_events.tolist() == [4, 2, 0]  # notification_sent is not user activity
    assert now.active_days.tolist() == [3, 2, 0]
    assert now.last_active.tolist() == [epoch("2026-10-10"), epoch("2026-10-09"), -1]
    assert now.duration_s.tolist() == [600.0, 0.0, 0.0]
    assert now.n_purchases.tolist() == [1, 0, 0] and now.revenue.tolist() == pytest.approx([4.99, 0, 0])
    assert now.notifications_sent.tolist() == [1, 0, 0] and now.notifications_opened.tolist() == [1, 0, 0]
    assert then.active_days.tolist() == [2, 2, 0]
    assert then.active_next.tolist() == [True, False, False]  # the label window is (D-1, D]
    assert scan.hour_histogram[0, 9] == 3 and scan.hour_histogram[0, 10] == 1 and scan.hour_histogram[0].sum() == 4
    assert ins.best_notification_hour(scan.hour_histogram).tolist() == [9, 20, ins.DEFAULT_NOTIFICATION_HOUR]
    # Interests: app_open a0 two days old (1 x 0.5^(2/14)); purchase a1 (5 x 0.5^(1/14)) + install a1 (3).
    assert scan.category_weights[0] == pytest.approx([0.5 ** (2 / 14), 5 * 0.5 ** (1 / 14) + 3])
    assert scan.queries.to_dict("records") == [
        {"user_pos": 1, "query": "chess", "count": 2, "last_day": epoch("2026-10-09")}]
    assert scan.first_date == dt.date(2026, 10, 8)


def test_compute_insights_with_little_history_uses_the_fallback_and_stays_in_range(tmp_config):
    write_silver_events(Path(tmp_config.paths.root), EVENTS)
    users = pd.DataFrame({
        "user_id": ["u1", "u2", "u3", "u4"],
        "segment": ["s1", "s1", None, "s2"],
        "consent_behavioral": [True, True, True, False],
        "signup_date": [dt.date(2026, 1, 1), dt.date(2026, 1, 1), None, dt.date(2026, 1, 1)],
        "purchase_count": [np.nan, np.nan, np.nan, np.nan],
    })
    result = ins.compute_insights(tmp_config, D, users, ["games", "music"], {"a0": 0, "a1": 1}, "v1",
                                  log_to_mlflow=False)
    table = result.table.set_index("user_id")
    assert result.summary["churn_model"] == "poisson_fallback"
    assert result.summary["churn_label_days"] == 1 and result.summary["notes"]
    # Three days of data: exposure 3 days; churn = exp(-14 * active_days / 3).
    assert table.loc["u1", "churn_risk"] == pytest.approx(np.exp(-14.0), abs=1e-4)
    assert table.loc["u3", "churn_risk"] == 1.0
    assert table.loc["u1", "engagement_score"] == 100.0 and table.loc["u2", "engagement_score"] == 0.0
    assert table.loc["u1", "next_best_action"] == "suggest_category:music"
    assert table.loc["u2", "next_best_action"] == "none"
    assert table.loc["u3", "next_best_action"] == "re_engage_notification"
    assert table.loc["u1", "best_notification_hour"] == 9
    assert json.loads(table.loc["u1", "primary_interests"])[0]["category"] == "music"
    # No behavioural consent: population means of consenting users, neutral settings.
    assert table.loc["u4", "engagement_score"] == pytest.approx((100.0 + 0.0 + 0.0) / 3, abs=1e-3)
    assert table.loc["u4", "next_best_action"] == "none" and table.loc["u4", "primary_interests"] == "[]"
    assert ((table["engagement_score"] >= 0) & (table["engagement_score"] <= 100)).all()
    assert ((table["churn_risk"] >= 0) & (table["churn_risk"] <= 1)).all()
    assert (table["lifetime_value"] >= 0).all() and table.loc["u1", "lifetime_value"] > 0
    assert result.is_active.tolist() == [True, True, False, False]
    assert result.is_buyer.tolist() == [True, False, False, False]
