"""Pseudonymised user ids: the Spark HMAC, the key's sources, serving's map back, data rights by either id.

Expected pseudonyms are computed here with :mod:`hmac` directly, not with the
code under test.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from personalization.config import Config
from personalization.privacy import (
    UnmappedPseudonymError,
    UserIdMap,
    lake_user_ids,
    resolve_hmac_key,
)

KEY = "unit-test-key"
DATE = "2026-10-14"


def _hmac_id(user_id: str, key: str = KEY) -> str:
    return "p" + hmac.new(key.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]


# ------------------------------------------------------------ pure transforms
@pytest.mark.parametrize("key", [KEY, "k" * 100, "schlüssel-ключ"], ids=["short", "over_64_bytes", "non_ascii"])
def test_pseudonymise_users_is_the_keyed_hmac(spark: Any, key: str) -> None:
    from jobs.pseudonyms import pseudonymise_users

    df = spark.createDataFrame([("u1", 1), ("u0000042", 2), (None, 3)], "user_id string, n int")
    got = [tuple(row) for row in pseudonymise_users(df, key).orderBy("n").collect()]
    assert got == [(_hmac_id("u1", key), 1), (_hmac_id("u0000042", key), 2), (None, 3)]


def test_user_pseudonyms_maps_every_distinct_known_id(spark: Any) -> None:
    from jobs.pseudonyms import user_pseudonyms

    users = spark.createDataFrame([("u1", "DE"), ("u2", "US"), ("u1", "FR"), ("", "US"), (None, "US")],
                                  "user_id string, country string")
    got = sorted(tuple(row) for row in user_pseudonyms(users, KEY).collect())
    assert got == sorted([(_hmac_id("u1"), "u1"), (_hmac_id("u2"), "u2")])


# ----------------------------------------------------------------- the key
def test_key_comes_from_configuration_then_airflow_then_a_generated_0600_file(
    tmp_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(tmp_config.resolve(tmp_config.privacy.hmac_key_file))
    assert resolve_hmac_key(tmp_config, create=False) is None and not path.exists()
    generated = resolve_hmac_key(tmp_config)
    assert len(generated) == 64 and int(generated, 16) >= 0  # 32 random bytes, hex
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert resolve_hmac_key(tmp_config) == generated  # generated once, then read
    assert lake_user_ids(tmp_config, ["u1"]) == [_hmac_id("u1", generated)]

    monkeypatch.setenv("AIRFLOW_CONN_PE_TEST_HMAC", json.dumps({"conn_type": "generic", "password": "from-airflow"}))
    tmp_config.privacy.hmac_conn_id = "pe_test_hmac"
    assert resolve_hmac_key(tmp_config) == "from-airflow"
    tmp_config.privacy.hmac_key = "from-env"  # PE_PRIVACY__HMAC_KEY
    assert resolve_hmac_key(tmp_config) == "from-env"
    tmp_config.privacy.pseudonymise_user_ids = False
    assert lake_user_ids(tmp_config, ["u1"]) == ["u1"]


def test_user_map_maps_back_and_refuses_unknown_pseudonyms() -> None:
    mapping = UserIdMap(pa.array([_hmac_id("u1"), _hmac_id("u2")]), pa.array(["u1", "u2"]))
    values = pa.array([_hmac_id("u2"), None, _hmac_id("u1")])
    assert mapping.map_array(values).to_pylist() == ["u2", None, "u1"]
    with pytest.raises(UnmappedPseudonymError, match="1 user id"):
        mapping.map_array(pa.array([_hmac_id("u1"), "pffff"]))
    assert mapping.map_array(pa.array(["u9", _hmac_id("u1")]), strict=False).to_pylist() == ["u9", "u1"]
    rows = [(_hmac_id("u1"), "a1"), ("u7", "a2"), (_hmac_id("u2"), "a3")]
    assert list(mapping.map_rows(iter(rows), batch=2)) == [("u1", "a1"), ("u7", "a2"), ("u2", "a3")]


# ------------------------------------------------ a pseudonymised mini world
def _write(folder: Path, rows: list[dict[str, Any]], name: str = "part-00000.parquet") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / name)
    return str(folder)


def _mini_world(config: Config) -> dict[str, str]:
    """Raw lines with the app's ids; silver, gold and the scored tables keyed by pseudonyms (as ingestion writes)."""
    config.privacy.hmac_key = KEY
    Path(config.var_dir).mkdir(parents=True, exist_ok=True)
    lake = Path(config.lake_root)
    users = ["u1", "u2", "u3"]
    raw_users = lake / "raw" / "users" / f"date={DATE}"
    raw_users.mkdir(parents=True)
    (raw_users / "users.jsonl").write_text("".join(json.dumps({"user_id": u, "country": "DE"}) + "\n" for u in users))
    raw_events = lake / "raw" / "events" / f"date={DATE}"
    raw_events.mkdir(parents=True)
    (raw_events / "part-00000.jsonl").write_text("".join(
        json.dumps({"event_id": f"e{i}", "event_type": "install", "user_id": u, "app_id": "a1",
                    "ts": f"{DATE}T10:00:00Z", "ip": "10.0.0.1"}) + "\n" for i, u in enumerate(users)))
    _write(lake / "silver" / "user_pseudonyms" / f"date={DATE}",
           [{"user_id": _hmac_id(u), "app_user_id": u} for u in users])
    _write(lake / "silver" / "events" / f"event_date={DATE}",
           [{"event_id": f"e{i}", "event_type": "install", "user_id": _hmac_id(u), "app_id": "a1"}
            for i, u in enumerate(users)])
    _write(lake / "gold" / "profiles" / f"date={DATE}",
           [{"user_id": _hmac_id(u), "purchase_count": i} for i, u in enumerate(users)])
    scored = {
        "recommendations": _write(lake / "gold" / "recommendations" / f"date={DATE}", [
            {"user_id": _hmac_id(u), "surface": "for_you", "rank": 1, "app_id": "a2", "score": 0.5,
             "reason": "Popular", "reason_app_id": None} for u in users]),
        "user_insights": _write(lake / "gold" / "user_insights" / f"date={DATE}", [
            {"user_id": _hmac_id(u), "segment": "casual", "engagement_score": 10.0, "churn_risk": 0.5,
             "lifetime_value": 1.0, "primary_interests": '{"games": 1.0}', "next_best_action": "none",
             "best_notification_hour": 20, "notification_channel": "push", "notification_cap_per_week": 3}
            for u in users]),
    }
    _write(lake / "gold" / "active_users" / f"date={DATE}", [{"user_id": _hmac_id(u)} for u in users])
    return scored


def _live_user_ids(config: Config) -> list[str]:
    engine = sa.create_engine(config.serving_url)
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.execute(sa.text(
                "SELECT user_id FROM recommendations UNION ALL SELECT user_id FROM user_insights ORDER BY 1"))]
    finally:
        engine.dispose()


def test_serving_shows_the_apps_ids_and_data_rights_find_either_id(tmp_config: Config) -> None:
    from models.scoring import load_deleted_users
    from personalization.data_rights import delete_users, export_user, verify_deleted
    from personalization.privacy import load_user_map
    from personalization.serving.publish import publish, validate_serving

    scored = _mini_world(tmp_config)
    lake = Path(tmp_config.lake_root)
    user_map = load_user_map(tmp_config, DATE)
    # The checks' sets are pseudonyms too (scoring writes them): every active user must be served.
    expected = {"denylist": [], "active_users": str(lake / "gold" / "active_users" / f"date={DATE}"), "top_n": 1}
    publish(tmp_config, DATE, scored, "1", expected=expected, user_map=user_map)
    assert _live_user_ids(tmp_config) == ["u1", "u1", "u2", "u2", "u3", "u3"]
    assert validate_serving(tmp_config, DATE, expected=expected, user_map=user_map)["checks"] == "passed"

    # A pseudonym without a mapping row never reaches serving: the publish fails, the live version stays.
    _write(lake / "gold" / "recommendations" / f"date={DATE}", [
        {"user_id": "p" + "0" * 32, "surface": "for_you", "rank": 1, "app_id": "a2", "score": 0.5,
         "reason": "Popular", "reason_app_id": None}], name="part-00001.parquet")
    with pytest.raises(UnmappedPseudonymError):
        publish(tmp_config, DATE, scored, "2", expected={"denylist": []}, user_map=user_map)
    assert _live_user_ids(tmp_config) == ["u1", "u1", "u2", "u2", "u3", "u3"]
    (lake / "gold" / "recommendations" / f"date={DATE}" / "part-00001.parquet").unlink()

    # Export: found through the pseudonym, shown with the app's id, nothing about others.
    document = export_user(tmp_config, "u2", "dpo")["document"]
    assert document["profile"] == {"user_id": "u2", "purchase_count": 1, "date": DATE}
    assert [(e["event_id"], e["user_id"]) for e in document["events"]] == [("e1", "u2")]
    assert [r["user_id"] for r in document["recommendations"]] == ["u2"]
    assert _hmac_id("u2") not in json.dumps(document)

    before = verify_deleted(tmp_config, ["u2"])
    # raw line + events, profile, recommendations/insights rows, mapping row: by app id or by pseudonym
    assert {k: v for k, v in before["hits"].items() if v} == {
        "raw": 2, "silver": 2, "gold": 4, "lake_other": 1, "serving_db": 2}  # lake_other: u2's export

    result = delete_users(tmp_config, ["u2"], "dpo")
    assert result["by_user"]["u2"] == {"raw": 2, "silver": 2, "quarantine": 0, "gold": 4, "lake_other": 1,
                                       "serving_db": 2, "redis": 0, "mlflow": 0, "run_records": 0}
    mapping = pq.read_table(lake / "silver" / "user_pseudonyms" / f"date={DATE}").to_pylist()
    assert mapping == [{"user_id": _hmac_id(u), "app_user_id": u} for u in ("u1", "u3")]
    assert _live_user_ids(tmp_config) == ["u1", "u1", "u3", "u3"]
    after = verify_deleted(tmp_config, ["u2"])
    assert after["clean"] is True and after["hits"] == {store: 0 for store in after["hits"]}
    assert after["retained"]["tombstone"] == 1  # one row: the app's id with its pseudonym
    # Scoring leaves the user out in either form.
    assert load_deleted_users(tmp_config) == {"u2", _hmac_id("u2")}
    # A request naming the pseudonym finds the app's id through the mapping table.
    by_pseudonym = verify_deleted(tmp_config, [_hmac_id("u1")])
    assert by_pseudonym["hits"]["raw"] == 2 and by_pseudonym["hits"]["serving_db"] == 2  # sign-up + event


def test_purging_a_blend_reaches_its_components_user_lists() -> None:
    """The nightly champion is often the blend: its EASE-like components keep the default drop_users."""
    import numpy as np

    from models.baselines import PopularityRecommender
    from models.cf import BPRRecommender
    from models.ensemble import BlendRecommender
    from personalization.data_rights.mlflow_store import _drop

    apps = np.array(["a1", "a2", "a3"], dtype=object)
    users = np.array([_hmac_id("u1"), _hmac_id("u2"), _hmac_id("u3")], dtype=object)
    popularity = PopularityRecommender(apps, users.copy(), np.array([0.5, 0.3, 0.1]))
    factors = np.arange(9, dtype=np.float32).reshape(3, 3)
    bpr = BPRRecommender(users.copy(), apps, factors, np.ones((3, 3)), np.zeros(3), np.zeros(3), {"dim": 3})
    blend = BlendRecommender([popularity, bpr], [0.5, 0.5])
    removed, held = _drop(blend, frozenset([_hmac_id("u2")]))
    assert held == {_hmac_id("u2")}
    for model in (blend, popularity, bpr):
        assert model.user_ids.tolist() == [_hmac_id("u1"), _hmac_id("u3")]
    np.testing.assert_array_equal(bpr.user_factors, factors[[0, 2]])
    assert removed >= 2  # the BPR row and the popularity list entry
