"""Privacy acceptance on the ``tiny`` world: deletion end to end, and rectification.

The slow test works on a copy of the session's tiny world (run by ``pe run`` for
its last date D), erases three users through the CLI (a buyer, one who withdrew
behavioural consent earlier, one who signed up on D), verifies every store,
re-scores D, lands a corrected user record with D's sign-ups and reruns the whole
nightly pipeline for D.

"Unchanged except where the deleted users influenced popularity" is checked exactly
on the re-scoring of D: same champion (with the deleted rows purged), same gold
inputs minus the deleted rows. Every other user's ``for_you`` list must be identical,
except a popularity-based list (a "Popular ..."/"Trending ..." reason) that holds,
before or after, an app one of the deleted users interacted with: those apps'
install, segment and co-occurrence counts changed. Model-based lists ("Because you
...") never change: the other users' model parameters are untouched by the purge.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.test_data_rights import _serving_rows
from tests.worlds import World, copy_world, run_cli

REDIS_URL = os.environ.get("PE_TEST_PRIVACY_REDIS_URL", "redis://127.0.0.1:6379/11")


# ------------------------------------------------------------- rectification
def test_a_later_user_record_corrects_the_profile_fields_but_not_signup(spark: Any) -> None:
    from jobs import columns as C
    from jobs.validate_raw_events import users_snapshot

    schema = C.spark_schemas()["raw_users"].add("date", "string")
    row = {name: None for name in schema.fieldNames()}
    raw = spark.createDataFrame([
        {**row, "user_id": "u1", "age_group": "25-34", "country": "DE", "region": "BE", "signup_date": "2026-10-01",
         "consent_behavioral": True, "consent_location": True, "consent_demographics": True,
         "consent_third_party": False, "date": "2026-10-01"},
        # The app sends u1's corrected record later; its consent fields must not override sign-up consent.
        {**row, "user_id": "u1", "age_group": "35-44", "country": "FR", "region": "IDF", "signup_date": "2026-10-05",
         "consent_behavioral": False, "consent_location": False, "consent_demographics": False,
         "consent_third_party": True, "date": "2026-10-05"},
        {**row, "user_id": "u2", "age_group": "18-24", "country": "US", "region": "NY", "signup_date": "2026-10-02",
         "consent_behavioral": True, "consent_location": False, "consent_demographics": True,
         "consent_third_party": False, "date": "2026-10-02"},
    ], schema)
    consent = spark.createDataFrame([], "user_id string, ts timestamp, event_id string, consent_type string, "
                                        "consent_value boolean")
    got = sorted(tuple(r) for r in users_snapshot(raw, consent).select(
        C.USER_ID, C.AGE_GROUP, C.COUNTRY, C.REGION, C.SIGNUP_DATE, C.CONSENT_BEHAVIORAL,
        C.CONSENT_LOCATION, C.SIGNUP_CONSENT_BEHAVIORAL).collect())
    assert got == [("u1", "35-44", "FR", "IDF", dt.date(2026, 10, 1), True, True, True),
                   ("u2", "18-24", "US", "NY", dt.date(2026, 10, 2), True, False, True)]


# ------------------------------------------------------------------ helpers
def _records(lake: Path, folder: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted((lake / "raw" / folder).rglob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append({**record, "_partition": path.parent.name.split("=", 1)[-1]})
    return out


def _pick(lake: Path, d0: str) -> dict[str, str]:
    """A buyer, a user who withdrew behavioural consent before d0, and one who signed up on d0."""
    events = [e for e in _records(lake, "events") if e["_partition"] <= d0 and isinstance(e.get("user_id"), str)]
    signups = {u["user_id"]: u["_partition"] for u in _records(lake, "users") if isinstance(u.get("user_id"), str)}
    new = sorted(user for user, day in signups.items() if day == d0)[0]
    opted = sorted({e["user_id"] for e in events if e.get("event_type") == "consent_change"
                    and e.get("consent_type") == "behavioral" and e.get("consent_value") is False
                    and str(e.get("ts", "")) < d0 and e["user_id"] in signups} - {new})[0]
    buyer = sorted({e["user_id"] for e in events if e.get("event_type") == "purchase" and e["user_id"] in signups}
                   - {new, opted})[0]
    return {"buyer": buyer, "opted_out": opted, "new": new}


def _for_you(db: Path) -> dict[str, list[tuple[str, str]]]:
    """``{user: [(app_id, reason), ...]}`` of the live for_you lists, by rank."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT user_id, app_id, reason FROM recommendations WHERE surface = 'for_you' "
                                  "ORDER BY user_id, rank").fetchall()
    lists: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for user, app, reason in rows:
        lists[user].append((app, reason))
    return dict(lists)


def _popularity_based(rows: list[tuple[str, str]]) -> bool:
    return any(reason.startswith(("Popular", "Trending")) for _, reason in rows)


def _redis() -> Any:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        client.close()
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} unreachable while CI is set")
        return None
    return client


# ------------------------------------------------------------- acceptance
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_delete_three_users_end_to_end_then_rectify(tiny_world: World, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from personalization.config import load_config
    from personalization.data_rights import STORES, verify_deleted
    from personalization.privacy import lake_user_ids

    world = copy_world(tiny_world, tmp_path / "world")
    root, lake, db = world.root, world.lake, world.serving_db
    date = world.last_date
    client = _redis()
    if client is not None:
        monkeypatch.setenv("PE_SERVING__REDIS_URL", REDIS_URL)  # run_cli passes os.environ to the CLI
        # The shared world was published without Redis: publish this copy's lists there too.
        for stage in ("publish_serving", "validate_serving"):
            run_cli(root, "stage", stage, "--date", date)
    config = load_config(environ={"PE_ROOT": str(root), "PE_GENERATOR__SCALE": "tiny",
                                  **({"PE_SERVING__REDIS_URL": REDIS_URL} if client is not None else {})})

    users = _pick(lake, date)
    deleted = sorted(users.values())
    touched = {e["app_id"] for e in _records(lake, "events") if e.get("user_id") in deleted and e.get("app_id")}
    before_lists = _for_you(db)
    before_rows = _serving_rows(config.serving_url)
    assert set(deleted) & set(before_lists), "a deleted user must have been served before the deletion"
    found = verify_deleted(config, deleted)
    assert all(found["hits"][store] > 0 for store in ("raw", "silver", "gold", "serving_db", "mlflow"))

    # ---- erase through the CLI (exit 0 only when its own verification is clean)
    out = json.loads(run_cli(root, "delete-user", *deleted, "--requested-by", "dpo@example.com").stdout)
    assert out["verification"] == {"clean": True, "hits": {store: 0 for store in STORES}}
    assert all(out["deleted"][store] > 0 for store in ("raw", "silver", "gold", "serving_db", "mlflow"))
    check = json.loads(run_cli(root, "verify-deleted", *deleted).stdout)
    assert check["clean"] is True and check["hits"] == {store: 0 for store in STORES}
    assert ("redis" in check["skipped"]) is (client is None)
    if client is not None:
        assert not [k for user in deleted for k in client.scan_iter(match=f"pe:v*:user:{user}")]
    # The lake's pseudonyms are gone too (verify searched them; here the mapping table itself).
    pseudonyms = set(lake_user_ids(config, deleted))
    mapped = pd.read_parquet(lake / "silver" / "user_pseudonyms")
    assert not (set(mapped["user_id"]) & pseudonyms) and not (set(mapped["app_user_id"]) & set(deleted))

    # ---- the deletion itself touched no other user's serving rows (every kept version)
    assert _serving_rows(config.serving_url) == {
        table: [row for row in rows if row[0] not in deleted] for table, rows in before_rows.items()}

    # ---- re-score D: others change only through the popularity the deleted users fed
    for stage in ("score_users", "publish_serving", "validate_serving"):
        run_cli(root, "stage", stage, "--date", date)
    after_lists = _for_you(db)
    assert not set(deleted) & set(after_lists)
    others = sorted(set(before_lists) - set(deleted))
    assert set(after_lists) == set(others)
    may_change = {u for u in others
                  if (_popularity_based(before_lists[u]) or _popularity_based(after_lists[u]))
                  and {app for app, _ in before_lists[u] + after_lists[u]} & touched}
    exact = [u for u in others if u not in may_change]
    assert len(exact) >= 10, "the comparison must cover real users"
    changed = [u for u in exact if before_lists[u] != after_lists[u]]
    assert changed == [], f"{len(changed)} of {len(exact)} lists changed, e.g. {changed[:3]}"

    # ---- rectification: a corrected record for another user lands with D's sign-ups
    active_on_date = {e["user_id"] for e in _records(lake, "events") if e["_partition"] == date}
    raw_users = {u["user_id"]: u for u in _records(lake, "users")}
    candidates = sorted(u for u in others
                        if u in active_on_date and raw_users[u].get("consent_demographics")
                        and raw_users[u].get("age_group") not in ("13-17", None))
    target = candidates[0]
    corrected = {k: v for k, v in raw_users[target].items() if k != "_partition"}
    corrected.update(age_group="13-17")
    with open(lake / "raw" / "users" / f"date={date}" / "users.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(corrected) + "\n")

    # ---- the whole nightly rerun of D succeeds; nothing of the deleted users comes back
    run_cli(root, "run", "--date", date, "--direct")
    assert json.loads(run_cli(root, "verify-deleted", *deleted).stdout)["clean"] is True
    assert not set(deleted) & set(_for_you(db))

    (lake_target,) = lake_user_ids(config, [target])
    profile = pd.read_parquet(lake / "gold" / "profiles" / f"date={date}")
    assert profile.loc[profile["user_id"] == lake_target, "age_group"].tolist() == ["13-17"]
    apps = pd.read_parquet(lake / "silver" / "apps" / f"date={date}")[["app_id", "age_rating"]]
    rating = dict(zip(apps["app_id"], apps["age_rating"], strict=True))
    with sqlite3.connect(db) as connection:
        served = [app for (app,) in connection.execute(
            "SELECT app_id FROM recommendations WHERE user_id = ?", (target,))]
    assert served, "the corrected user is active on D and gets lists"
    assert max(rating[app] for app in served) <= 13  # 13-17: no app rated 17+ any more
    if client is not None:
        client.close()
