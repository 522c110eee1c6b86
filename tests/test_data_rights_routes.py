"""Data rights through the routes a person takes (``pe delete-user``, ``pe export-user``, ``pe verify-deleted``).

Each test builds a tiny hand-made lake (a few raw lines, two quarantine partitions,
silver/gold tables, report pages, MLflow artifacts) so the expected counts can be
read off the fixture:

- the user ``u0000001`` (pseudonym ``P1``) owns 2 account lines, 4 raw event lines
  (two well-formed, one truncated, one with invalid UTF-8), 3 quarantined lines
  (one truncated, one with invalid UTF-8 in an old string column, one in the new
  binary ``raw_bytes`` form), 2 silver event rows, 1 pseudonym mapping row, 1 profile,
  an earlier export, and a place in 3 MLflow artifacts (the pickled model's user
  list and the two input examples);
- other users' lines that merely *mention* ``u0000001`` (as a search query, an app id,
  an event type), a line of nobody holding it as a bare word, the catalogue record
  of app ``a000001``, the GX suite and Data Docs page (which hold ``impression`` and
  ``a000001``) and a model report must all be left byte for byte.

The CLI runs as a separate process on the lake (``PE_ROOT``), like an operator's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from personalization.config import Config, load_config
from personalization.data_rights import STORES, delete_users, lake_store, verify_deleted

ROOT = Path(__file__).resolve().parent.parent
D = "u0000001"
P1, P2, P3 = "p" + "1" * 32, "p" + "2" * 32, "p" + "3" * 32
DAY = "2026-10-14"
ZERO = {store: 0 for store in STORES}
#: What deleting D removes, per store (see the module docstring).
REMOVED = {**ZERO, "raw": 6, "silver": 3, "quarantine": 3, "gold": 1, "lake_other": 1, "mlflow": 3}

USERS_13 = (b'{"user_id":"u0000001","signup_date":"2026-10-13","country":"DE","consent_behavioral":true}\n'
            b'{"user_id":"u0000002","signup_date":"2026-10-13","country":"FR","consent_behavioral":true}\n')
USERS_14 = b'{"user_id":"u0000001","signup_date":"2026-10-13","country":"AT","consent_behavioral":true}\n'
APPS = (b'{"app_id":"a000001","name":"Chess","description":"impression of u0000001 at play"}\n'
        b'{"app_id":"a000002","name":"Maps"}\n')
EVENTS = [
    b'{"event_id":"e1","event_type":"impression","user_id":"u0000001","app_id":"a000001",'
    b'"ts":"2026-10-14T10:00:00Z","ip":"203.0.113.7"}\n',  # D
    b'{"event_id":"e2","event_type":"search","user_id":"u0000002","query":"u0000001",'
    b'"ts":"2026-10-14T10:01:00Z","ip":"198.51.100.2"}\n',  # another user's line naming D: kept
    b'{"event_id":"e3","event_type":"consent_change","user_id":"u0000001","consent_type":"behavioral",'
    b'"consent_value":false,"ts":"2026-10-14T10:02:00Z","ip":"203.0.113.7"}\n',  # D
    b'{"event_id":"e4","user_id":"u0000001","ts":\n',  # D, truncated
    b'\xff\xfe{"event_id":"e5","user_id": "u0000001"}\n',  # D, invalid UTF-8
    b'\xff garbage u0000001\n',  # nobody's: a bare word is no user-id field
    b'{"event_id":"e7","user_id":"u00000011","event_type":"app_open"}\n',  # a neighbouring id: kept
    b'{"event_id":"e8","event_type":"impression","user_id":"u0000003","app_id":"a000001"}\n',
]
OWNED_EVENTS = [0, 2, 3, 4]
QUARANTINE_OLD = [  # landing_date=2026-10-14, raw_record a *string* column holding invalid UTF-8
    (b'{"event_id":"q1","user_id":"u0000001","ts":', "malformed_json", "q1"),  # D
    (b'{"event_id":"q2","user_id":"u0000001","note":"\xc3"}', "malformed_json", "q2"),  # D, not UTF-8
    (b'{"event_id":"q3","user_id":"u0000002","app_id":"u0000001"}', "unknown_app", "q3"),  # kept
    (b'{"event_id":"q4","user_id":"u0000002","note":"\xc3\x28"}', "malformed_json", "q4"),  # kept
]
QUARANTINE_NEW = [  # landing_date=2026-10-13: raw_bytes (binary, exact) and raw_record (text)
    (b'{"event_id":"q5","user_id":"u0000001","ts":"\xff"}', "invalid_utf8", "q5"),  # D
    (b'{"event_id":"q6","user_id":"u0000003","event_type":"u0000001"}', "invalid_event_type", "q6"),  # kept
]
SUITE = b'{"expectation_suite_name":"silver_events_sample","value_set":["impression","app_open"]}\n'
DOCS = b"<html><body>impression a000001 app_open</body></html>\n"
MODEL_REPORT = b'{"top_apps":["a000001","a000002"],"event_types":["impression"]}\n'


# ------------------------------------------------------------------ fixture
def _parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _build(root: Path) -> dict[str, Path]:
    """The tiny lake and artifact store described in the module docstring."""
    lake = root / "var" / "lake"
    raw = lake / "raw"
    lines = (("users/date=2026-10-13/users.jsonl", USERS_13), (f"users/date={DAY}/users.jsonl", USERS_14),
             (f"apps/date={DAY}/apps.jsonl", APPS), (f"events/date={DAY}/part-00000.jsonl", b"".join(EVENTS)))
    for relative, data in lines:
        (raw / relative).parent.mkdir(parents=True, exist_ok=True)
        (raw / relative).write_bytes(data)
    old = pa.array([line for line, _, _ in QUARANTINE_OLD], pa.binary()).view(pa.string())
    _parquet(lake / "silver" / "quarantine" / f"landing_date={DAY}" / "part-00000.parquet", pa.table({
        "raw_record": old, "reason": [r for _, r, _ in QUARANTINE_OLD], "event_id": [e for _, _, e in QUARANTINE_OLD]}))
    _parquet(lake / "silver" / "quarantine" / "landing_date=2026-10-13" / "part-00000.parquet", pa.table({
        "raw_record": [line.decode("utf-8", errors="replace") for line, _, _ in QUARANTINE_NEW],
        "raw_bytes": pa.array([line for line, _, _ in QUARANTINE_NEW], pa.binary()),
        "reason": [r for _, r, _ in QUARANTINE_NEW], "event_id": [e for _, _, e in QUARANTINE_NEW]}))
    _parquet(lake / "silver" / "events" / f"event_date={DAY}" / "part-00000.parquet", pa.table({
        "event_id": ["e1", "e3", "e2", "e8"], "user_id": [P1, P1, P2, P3],
        "event_type": ["impression", "consent_change", "search", "impression"],
        "app_id": ["a000001", None, None, "a000001"]}))
    _parquet(lake / "silver" / "user_pseudonyms" / f"date={DAY}" / "part-00000.parquet", pa.table({
        "user_id": [P1, P2, P3], "app_user_id": [D, "u0000002", "u0000003"]}))
    _parquet(lake / "gold" / "profiles" / f"date={DAY}" / "part-00000.parquet", pa.table({
        "user_id": [P1, P2, P3], "purchase_count": [1, 0, 2]}))
    _parquet(lake / "gold" / "app_features" / f"date={DAY}" / "part-00000.parquet", pa.table({
        "app_id": ["a000001", "a000002"], "category": ["games", "maps"]}))
    for relative, data in (("reports/gx/expectations/silver_events_sample.json", SUITE),
                           ("reports/data_docs/index.html", DOCS),
                           (f"reports/exports/{D}.json", b'{"user_id":"u0000001"}\n')):
        (lake / relative).parent.mkdir(parents=True, exist_ok=True)
        (lake / relative).write_bytes(data)

    from models.baselines import PopularityRecommender

    artifacts = root / "var" / "mlartifacts" / "1" / ("f" * 32) / "artifacts"
    (artifacts / "model" / "artifacts").mkdir(parents=True)
    model = PopularityRecommender(np.array(["a000001", "a000002"], dtype=object),
                                  np.array([P1, P2, P3], dtype=object), np.array([0.5, 0.3]))
    (artifacts / "model" / "artifacts" / "recommender.pkl").write_bytes(pickle.dumps(model, protocol=5))
    example = {"columns": ["user_id", "app_id", "weight"], "data": [[D, "a000001", 1.0], [D, "a000002", 1.0]]}
    (artifacts / "model" / "input_example.json").write_text(json.dumps(example))
    (artifacts / "model" / "serving_input_example.json").write_text(
        json.dumps({"dataframe_split": example, "params": {"k": 3}}))
    (artifacts / "model_report.json").write_bytes(MODEL_REPORT)
    return {"lake": lake, "artifacts": artifacts}


def _config(root: Path) -> Config:
    return load_config(environ={"PE_ROOT": str(root)})


def _pe(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PE_")}
    env["PE_ROOT"] = str(root)
    return subprocess.run([sys.executable, "-m", "personalization.cli", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path: Path, column: str) -> list[Any]:
    return pq.read_table(path).column(column).to_pylist()


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    return {"root": tmp_path, **_build(tmp_path)}


# -------------------------------------------------------------------- tests
def test_unknown_ids_are_refused_and_nothing_changes(world: dict[str, Path]) -> None:
    root = world["root"]
    before = _digest(root)
    refused = _pe(root, "delete-user", "impression", "a000001", "--requested-by", "qa")
    assert refused.returncode == 2, refused.stderr
    assert "2 of 2 ids are not known users" in refused.stderr and "impression, a000001" in refused.stderr
    assert "--allow-unknown" in refused.stderr
    export = _pe(root, "export-user", "a000001", "--requested-by", "qa")
    assert export.returncode == 2 and "not known users" in export.stderr
    mixed = _pe(root, "delete-user", D, "impression", "--requested-by", "qa")
    assert mixed.returncode == 2 and "1 of 2 ids" in mixed.stderr
    assert _digest(root) == before  # no tombstone, no audit database, no export


def test_allow_unknown_deletes_nothing_that_merely_shares_the_token(world: dict[str, Path]) -> None:
    root, lake = world["root"], world["lake"]
    before = _digest(root)
    run = _pe(root, "delete-user", "impression", "a000001", "--allow-unknown", "--requested-by", "qa")
    out = json.loads(run.stdout)
    assert out["deleted"] == ZERO and out["unknown"] == ["impression", "a000001"]
    # The search still finds the tokens in the catalogue columns of silver/gold: reported, exit 1.
    assert run.returncode == 1 and out["verification"]["clean"] is False
    after = _digest(root)
    changed = {path for path in set(before) | set(after) if before.get(path) != after.get(path)}
    assert {path.split("/part-")[0] for path in changed} == {"var/lake/silver/deleted_users", "var/serving.db"}
    tombstone = pq.read_table(lake / "silver" / "deleted_users").column("user_id").to_pylist()
    assert sorted(tombstone) == ["a000001", "impression"]


def test_dry_run_lists_per_store_and_changes_nothing(world: dict[str, Path]) -> None:
    root = world["root"]
    before = _digest(root)
    run = _pe(root, "delete-user", D, "--dry-run", "--requested-by", "qa")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["dry_run"] is True and out["would_delete"] == REMOVED and out["by_user"] == {D: REMOVED}
    assert out["details"]["files_rewritten"]["quarantine"] == [
        "silver/quarantine/landing_date=2026-10-13/part-00000.parquet",
        f"silver/quarantine/landing_date={DAY}/part-00000.parquet"]
    assert out["details"]["reports"] == {"exports_deleted": [f"reports/exports/{D}.json"]}
    assert _digest(root) == before


def test_delete_user_removes_only_the_named_users_records(world: dict[str, Path]) -> None:
    root, lake, artifacts = world["root"], world["lake"], world["artifacts"]
    run = _pe(root, "delete-user", D, "--requested-by", "dpo")
    assert run.returncode == 0, (run.stdout, run.stderr)
    out = json.loads(run.stdout)
    assert out["deleted"] == REMOVED and out["unknown"] == []
    assert out["verification"] == {"clean": True, "hits": ZERO}

    # raw: exactly the owned lines are gone; the catalogue and other users' lines keep every byte
    events = lake / "raw" / "events" / f"date={DAY}" / "part-00000.jsonl"
    assert events.read_bytes() == b"".join(line for i, line in enumerate(EVENTS) if i not in OWNED_EVENTS)
    assert (lake / "raw" / "apps" / f"date={DAY}" / "apps.jsonl").read_bytes() == APPS
    assert (lake / "raw" / "users" / "date=2026-10-13" / "users.jsonl").read_bytes() == USERS_13.splitlines(True)[1]
    assert (lake / "raw" / "users" / f"date={DAY}" / "users.jsonl").read_bytes() == b""
    # quarantine: both layouts, invalid UTF-8 included; other users' rows kept with their bytes
    old = pq.read_table(lake / "silver" / "quarantine" / f"landing_date={DAY}" / "part-00000.parquet")
    assert old.schema.field("raw_record").type == pa.string()
    assert old.column("raw_record").cast(pa.binary()).to_pylist() == [QUARANTINE_OLD[2][0], QUARANTINE_OLD[3][0]]
    assert _rows(lake / "silver" / "quarantine" / "landing_date=2026-10-13" / "part-00000.parquet",
                 "raw_bytes") == [QUARANTINE_NEW[1][0]]
    assert _rows(lake / "silver" / "events" / f"event_date={DAY}" / "part-00000.parquet", "event_id") == ["e2", "e8"]
    assert _rows(lake / "silver" / "user_pseudonyms" / f"date={DAY}" / "part-00000.parquet", "user_id") == [P2, P3]
    assert _rows(lake / "gold" / "profiles" / f"date={DAY}" / "part-00000.parquet", "user_id") == [P2, P3]
    assert not (lake / "reports" / "exports" / f"{D}.json").exists()
    # suites, Data Docs and model reports are never rewritten
    assert (lake / "reports" / "gx" / "expectations" / "silver_events_sample.json").read_bytes() == SUITE
    assert (lake / "reports" / "data_docs" / "index.html").read_bytes() == DOCS
    assert (artifacts / "model_report.json").read_bytes() == MODEL_REPORT
    # MLflow: the user-id list and the user_id fields only; app ids stay
    model = pickle.loads((artifacts / "model" / "artifacts" / "recommender.pkl").read_bytes())
    assert model.user_ids.tolist() == [P2, P3]
    example = json.loads((artifacts / "model" / "input_example.json").read_text())
    assert example["data"] == [["deleted-user", "a000001", 1.0], ["deleted-user", "a000002", 1.0]]
    serving = json.loads((artifacts / "model" / "serving_input_example.json").read_text())
    assert serving == {"dataframe_split": example, "params": {"k": 3}}

    check = json.loads(_pe(root, "verify-deleted", D).stdout)
    assert check["clean"] is True and check["hits"] == ZERO
    # Lines that name D without belonging to D (e2, the bare word, the app's description; q3, q6)
    # are listed for review, never counted as D's data.
    assert check["mentions"] == {"raw": 3, "quarantine": 2}
    assert check["retained"] == {"audit_log": 1, "tombstone": 1, "request_logs": 0} and check["pending"] == []
    again = _pe(root, "delete-user", D, "--requested-by", "dpo")  # known through the tombstone: idempotent
    assert again.returncode == 0 and json.loads(again.stdout)["deleted"] == ZERO


def test_interrupted_deletion_is_finished_by_running_it_again(world: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    root, lake = world["root"], world["lake"]
    config = _config(root)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(lake_store, "purge_parquet", broken)
        with pytest.raises(OSError, match="disk full"):
            delete_users(config, [D], "dpo")
    # Half done: raw lines gone, Parquet untouched, the journal says so.
    pending = lake_store.read_pending(config)
    assert [entry["user_ids"] for entry in pending] == [[D]]
    halfway = verify_deleted(config, [D])
    assert halfway["hits"] == {**ZERO, "silver": 3, "quarantine": 3, "gold": 1, "lake_other": 1, "mlflow": 3}
    assert halfway["pending"] == [pending[0]["request_id"]]

    run = _pe(root, "delete-user", D, "--requested-by", "dpo")  # raw/users no longer names D: still known
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["deleted"] == {**REMOVED, "raw": 0} and out["resumed"] == [pending[0]["request_id"]]
    assert out["verification"] == {"clean": True, "hits": ZERO}
    assert lake_store.read_pending(config) == []
    assert not list((lake / "silver" / "deleted_users" / "_pending").iterdir())


def test_export_holds_raw_lines_with_ip_and_quarantined_lines(world: dict[str, Path]) -> None:
    root, lake = world["root"], world["lake"]
    run = _pe(root, "export-user", D, "--requested-by", "support")
    assert run.returncode == 0, run.stderr
    document = json.loads((lake / "reports" / "exports" / f"{D}.json").read_text())
    assert "never stored" not in json.dumps(document["sections"])
    assert "ip" in document["sections"]["raw_events"] and "raw_retention_days" in document["sections"]["raw_events"]
    events_file = f"raw/events/date={DAY}/part-00000.jsonl"
    assert document["raw_events"] == [
        {"file": events_file, "line_number": 1, "record": json.loads(EVENTS[0])},
        {"file": events_file, "line_number": 3, "record": json.loads(EVENTS[2])},
        {"file": events_file, "line_number": 4, "line": EVENTS[3].decode().rstrip("\n")},
        {"file": events_file, "line_number": 5, "line": EVENTS[4].rstrip(b"\n").decode("utf-8", errors="replace"),
         "line_base64": base64.b64encode(EVENTS[4].rstrip(b"\n")).decode()},
    ]
    assert [e["record"]["ip"] for e in document["raw_events"] if "record" in e] == ["203.0.113.7"] * 2
    assert [(r["landing_date"], r["event_id"], r["reason"], "line_base64" in r) for r in document["quarantine"]] == [
        ("2026-10-13", "q5", "invalid_utf8", True), (DAY, "q1", "malformed_json", False),
        (DAY, "q2", "malformed_json", True)]
    assert base64.b64decode(document["quarantine"][0]["line_base64"]) == QUARANTINE_NEW[0][0]
    assert [r["record"]["country"] for r in document["account_records"]] == ["DE", "AT"]
    assert document["account"]["country"] == "DE"
    assert document["consent"]["changes"] == [{"event_id": "e3", "ts": "2026-10-14T10:02:00Z",
                                               "consent_type": "behavioral", "consent_value": False}]
    text = json.dumps(document)
    assert "u0000002" not in text and "u0000003" not in text and "198.51.100.2" not in text


def test_run_records_are_searched_and_the_publish_reads_the_tombstone(world: dict[str, Path]) -> None:
    from personalization.pipeline import publish_expectations

    root = world["root"]
    config = _config(root)
    delete_users(config, [D], "dpo")
    assert verify_deleted(config, [D])["clean"] is True
    # A run record written by an older release held the deleted ids: verification finds it.
    record = root / "var" / "runs" / DAY / "score_users.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"expected": {"deleted_users": [D, P1]}, "rows": 3}))
    # Task logs: the nightly DAG's must hold no id; the privacy_requests DAG's are the request itself.
    logs = root / "var" / "airflow" / "logs"
    for dag, text in (("personalization_nightly", f"Done. Returned value was: {{'users': ['{P1}']}}"),
                      ("privacy_requests", f"Done. Returned value was: {{'user_ids': ['{D}']}}")):
        log = logs / f"dag_id={dag}" / "run_id=manual" / "task_id=t" / "attempt=1.log"
        log.parent.mkdir(parents=True)
        log.write_text(text + "\n")
    check = verify_deleted(config, [D])
    assert check["clean"] is False and check["hits"] == {**ZERO, "run_records": 2}
    assert check["locations"] == [
        f"run_records:var/runs/{DAY}/score_users.json",
        "run_records:var/airflow/logs/dag_id=personalization_nightly/run_id=manual/task_id=t/attempt=1.log"]
    assert check["retained"]["request_logs"] == 1
    # The nightly record holds none: the publish checks read the deleted users from the tombstone.
    assert publish_expectations(config, {"expected": {"top_n": 3, "deleted_users": []}}) == {
        "top_n": 3, "deleted_users": sorted([D, P1])}
