"""Monitoring (PSI, feature/score drift, volume anomalies) and alerts (table, notifier, Airflow callbacks)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from personalization import alerts
from personalization.alerts import Alert, load_notifier, read_alerts, send_alert
from personalization.config import Config
from personalization.monitoring import MonitoringBreach, check, psi, settings, volume_anomaly
from tests.test_kpis import ev, make_config, write_events, write_gold

D = "2026-10-10"
D_1 = "2026-10-09"
#: Event counts of D-7 .. D-1: mean 100, sample std sqrt(10/6) = 1.290994.
HISTORY = [100, 102, 98, 100, 101, 99, 100]


# ------------------------------------------------------------------ PSI
def test_psi_hand_computed() -> None:
    reference = list(range(1, 11))
    # 5 bins: reference quantiles 2.8, 4.6, 6.4, 8.2 -> {1,2} {3,4} {5,6} {7,8} {9,10}, 0.2 each.
    # current shares 0.3, 0.1, 0.2, 0.2, 0.2: PSI = 0.1 ln(1.5) + (-0.1) ln(0.5) = 0.1098612
    assert psi(reference, [1, 1, 1, 3, 5, 6, 7, 8, 9, 10], bins=5) == pytest.approx(0.1098612, abs=1e-7)
    # Empty bins are floored at 1e-4: 2 * 0.3 ln(2.5) + 3 * (0.2 - 1e-4) ln(0.2 / 1e-4) = 5.1080356
    assert psi(reference, [1, 1, 1, 1, 1, 9, 9, 9, 9, 9], bins=5) == pytest.approx(5.1080356, abs=1e-6)
    assert psi(reference, reference[::-1], bins=5) == 0.0
    # A constant reference gives two bins (<= 5, > 5); NaNs are ignored.
    assert psi([5, 5, 5, 5], [5, 5, float("nan")], bins=10) == 0.0


def test_volume_anomaly_z_score() -> None:
    limits = settings()
    assert volume_anomaly(103, HISTORY, limits)["z"] == pytest.approx(2.323790, abs=1e-6)  # 3 / 1.290994
    assert volume_anomaly(103, HISTORY, limits)["level"] == "ok"
    assert volume_anomaly(105, HISTORY, limits)["level"] == "warn"  # z = 3.872983 > 3
    assert volume_anomaly(110, HISTORY, limits)["level"] == "breach"  # z = 7.745967 > 5
    assert volume_anomaly(90, HISTORY, limits)["level"] == "breach"  # a drop counts too
    short = volume_anomaly(500, [100, 100], limits)
    assert short["level"] == "ok" and short["z"] is None  # 2 trailing days < 3: not judged


# ------------------------------------------------------------------ drift on crafted days
def _world(root: Path, shifted: bool, today_events: int = 101) -> Config:
    config = make_config(root)
    for offset, count in zip(range(7, 0, -1), HISTORY, strict=True):
        day = (dt.date.fromisoformat(D) - dt.timedelta(days=offset)).isoformat()
        write_events(config, day, [ev("app_open", f"u{i}") for i in range(count)])
    write_events(config, D, [ev("app_open", f"u{i}") for i in range(today_events)])
    users = [f"u{i}" for i in range(100)]
    monetary = [float(i) for i in range(100)]
    active = [i % 10 for i in range(100)]
    write_gold(
        config,
        "user_features",
        D_1,
        {"user_id": users, "monetary": monetary, "active_days_7": active, "region": ["x"] * 100},
    )
    today_monetary = [m + 1000.0 for m in monetary] if shifted else monetary[::-1]
    write_gold(
        config,
        "user_features",
        D,
        {"user_id": users, "monetary": today_monetary, "active_days_7": active[::-1], "region": ["y"] * 100},
    )
    scores = [float(s) for s in range(1, 11)]
    write_gold(config, "recommendations", D_1, {"surface": ["for_you"] * 10, "score": scores})
    write_gold(config, "recommendations", D, {"surface": ["for_you"] * 10, "score": scores[::-1]})
    return config


def test_normal_day_is_quiet(tmp_path: Path) -> None:
    config = _world(tmp_path, shifted=False)
    result = check(config, D, mode="fail")
    assert result["status"] == "ok"
    assert result["warnings"] == [] and result["breaches"] == []
    assert result["feature_drift"]["columns"] == {
        "monetary": {"psi": 0.0, "level": "ok"},
        "active_days_7": {"psi": 0.0, "level": "ok"},
    }
    assert result["score_drift"]["columns"] == {
        "all": {"psi": 0.0, "level": "ok"},
        "surface=for_you": {"psi": 0.0, "level": "ok"},
    }
    assert result["volume"]["z"] == pytest.approx(0.774597, abs=1e-6)  # (101 - 100) / 1.290994
    assert json.loads(Path(result["report_path"]).read_text())["status"] == "ok"
    assert read_alerts(config) == []  # nothing fired, nothing recorded


def test_shifted_day_breaches_and_fails_in_fail_mode(tmp_path: Path) -> None:
    config = _world(tmp_path, shifted=True, today_events=110)
    result = check(config, D, mode="warn")
    # All of today's monetary values lie above the reference's top decile edge:
    # 0.9 ln(10) + 9 (0.1 - 1e-4) ln(0.1 / 1e-4) = 8.283089
    assert result["feature_drift"]["columns"]["monetary"] == {"psi": 8.283089, "level": "breach"}
    assert result["feature_drift"]["columns"]["active_days_7"] == {"psi": 0.0, "level": "ok"}
    assert result["volume"]["level"] == "breach"  # z = 10 / 1.290994 = 7.75
    assert result["status"] == "breach"
    assert result["breaches"] == ["feature_drift monetary: PSI 8.283089", "volume: 110 events, z 7.745967"]
    with pytest.raises(MonitoringBreach, match="monetary"):
        check(config, D, mode="fail", alert_context={"dag_id": "dag", "task_id": "monitor", "run_id": "r9"})
    drift = read_alerts(config, date=D, kind="drift")
    assert len(drift) == 2  # one per check run
    assert (drift[1]["dag_id"], drift[1]["task_id"], drift[1]["run_id"]) == ("dag", "monitor", "r9")
    assert drift[1]["message"].startswith("monitoring breach on 2026-10-10: feature_drift monetary")


def test_score_drift_warns_with_configured_bins(tmp_path: Path) -> None:
    config = _world(tmp_path, shifted=False)
    write_gold(
        config,
        "recommendations",
        D,
        {"surface": ["for_you"] * 10, "score": [1.0, 1.0, 1.0, 3.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]},
    )
    result = check(
        config, D, mode="fail", thresholds={"psi_bins": 5}, send_alerts=False
    )  # a warning never raises
    assert result["score_drift"]["columns"]["all"] == {"psi": 0.109861, "level": "warn"}
    assert result["status"] == "warn"
    with pytest.raises(ValueError, match="unknown monitoring thresholds"):
        check(config, D, thresholds={"psi_warm": 0.2})


def test_missing_partitions_are_skipped_but_no_events_is_a_breach(tmp_path: Path) -> None:
    result = check(make_config(tmp_path), D, send_alerts=False)
    assert result["feature_drift"] == {"skipped": "user_features missing for D or D-1", "columns": {}}
    assert result["volume"]["level"] == "breach"
    assert result["status"] == "breach"


# ------------------------------------------------------------------ alerts
class RecordingNotifier:
    received: list[Alert] = []

    def notify(self, alert: Alert) -> None:
        RecordingNotifier.received.append(alert)


KINDS_SEEN: list[str] = []


def remember_kind(alert: Alert) -> None:
    """A plain function used as a notifier."""
    KINDS_SEEN.append(alert.kind)


def test_alert_is_written_and_the_notifier_called(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    RecordingNotifier.received = []
    notifier = load_notifier("tests.test_monitoring.RecordingNotifier")
    at = dt.datetime(2026, 10, 10, 3, 0, tzinfo=dt.timezone.utc)
    outcome = send_alert(
        config, Alert("nightly", "train", "run-1", "failure", "boom", at=at, date=D), notifier
    )
    assert outcome == {"id": 1, "recorded": True, "notified": True}
    assert [a.message for a in RecordingNotifier.received] == ["boom"]
    (row,) = read_alerts(config)
    assert (row["dag_id"], row["task_id"], row["run_id"], row["kind"], row["message"], row["date"]) == (
        "nightly",
        "train",
        "run-1",
        "failure",
        "boom",
        D,
    )
    assert row["at"].replace(tzinfo=dt.timezone.utc) == at
    with pytest.raises(ValueError, match="kind"):
        Alert("d", "t", "r", "page", "x")


def test_notifier_selection_by_dotted_path() -> None:
    assert isinstance(load_notifier(None), alerts.LoggingNotifier)
    assert isinstance(load_notifier("personalization.alerts:LoggingNotifier"), alerts.LoggingNotifier)
    KINDS_SEEN.clear()
    load_notifier("tests.test_monitoring:remember_kind").notify(Alert("d", "t", "r", "sla", "late"))
    assert KINDS_SEEN == ["sla"]
    with pytest.raises(ModuleNotFoundError):
        load_notifier("no_such_module.Notifier")


def test_a_failing_notifier_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def notify(self, alert: Alert) -> None:
            raise RuntimeError("pager down")

    outcome = send_alert(make_config(tmp_path), Alert("d", "t", "r", "drift", "x"), Broken())
    assert outcome == {"id": 1, "recorded": True, "notified": False}
    assert "notifier failed" in caplog.text


def test_airflow_callbacks_record_alerts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path)
    monkeypatch.setenv("PE_ROOT", str(tmp_path))
    monkeypatch.setenv("PE_SERVING__URL", config.serving.url)
    ti = SimpleNamespace(
        dag_id="personalization_nightly", task_id="score_users", run_id="scheduled__x", try_number=2
    )
    context = {
        "ti": ti,
        "exception": ValueError("no champion"),
        "params": {"date": ""},
        "logical_date": dt.datetime(2026, 10, 10, tzinfo=dt.timezone.utc),
    }
    with caplog.at_level(logging.ERROR, logger="personalization.alerts"):
        alerts.on_failure_callback(context)
    # Airflow 3 deadline (SLA) callbacks get a JSON dag_run.
    alerts.sla_callback(
        context={
            "dag_run": {
                "dag_id": "personalization_nightly",
                "run_id": "scheduled__x",
                "logical_date": "2026-10-10T00:00:00Z",
            },
            "deadline": {"deadline_time": "2026-10-10T06:00:00Z"},
        }
    )
    failure, sla = read_alerts(config)
    assert (failure["kind"], failure["task_id"], failure["run_id"], failure["date"]) == (
        "failure",
        "score_users",
        "scheduled__x",
        D,
    )
    assert failure["message"] == "task score_users failed (try 2): ValueError: no champion"
    assert (sla["kind"], sla["dag_id"], sla["run_id"], sla["date"]) == (
        "sla",
        "personalization_nightly",
        "scheduled__x",
        D,
    )
    assert sla["message"] == "deadline missed (deadline 2026-10-10T06:00:00Z)"
    assert "ALERT failure personalization_nightly.score_users" in caplog.text  # the default logging notifier
    # A callback with an unusable context logs instead of raising.
    alerts.on_failure_callback({})
    assert read_alerts(config)[-1]["dag_id"] == "unknown"


def test_a_monitoring_config_section_overrides_the_defaults(tmp_path: Path) -> None:
    """Once Config has a ``monitoring`` section its keys win over the module defaults (arguments win over both)."""
    config = make_config(tmp_path)
    config.monitoring = SimpleNamespace(  # type: ignore[attr-defined]
        psi_warn=0.2, psi_breach=0.5, mode="fail", notifier="tests.test_monitoring:remember_kind", other_key=1
    )
    limits = settings(config, {"psi_breach": 0.6})
    assert (limits["psi_warn"], limits["psi_breach"], limits["mode"], limits["volume_z_warn"]) == (
        0.2,
        0.6,
        "fail",
        3.0,
    )
    KINDS_SEEN.clear()
    alerts.configured_notifier(config).notify(Alert("d", "t", "r", "drift", "x"))
    assert KINDS_SEEN == ["drift"]
    with pytest.raises(ValueError, match="psi_warn <= psi_breach"):
        settings(config, {"psi_breach": 0.1})
