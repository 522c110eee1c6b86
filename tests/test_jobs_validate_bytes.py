"""validate_raw_events on landing bytes that are not clean UTF-8 lines (issue 16, part 3).

One landing date, ten lines written as bytes: invalid UTF-8, a carriage return
inside a string, between tokens and before the "\\n" (CRLF), an escaped U+0000 and
a raw NUL byte. Every line is checked against its expected reason, the quarantine
is read back with pyarrow, and silver must hold exactly the three clean events.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import columns as C
from jobs import validate_raw_events as V
from personalization.config import load_config

D = "2026-10-01"
HEAD = b'"event_type":"app_view","user_id":"u1","app_id":"a1","ts":"2026-10-01T08:00:00Z"'


def _event(event_id: str, extra: bytes = b"") -> bytes:
    return b'{"event_id":"' + event_id.encode() + b'",' + HEAD + extra + b"}"


#: (line without its "\n", expected reason or None for clean)
LINES: list[tuple[bytes, str | None]] = [
    (_event("b1"), None),
    # ISO-8859-1 "é": strict UTF-8 decoding fails
    (_event("b2", b',"query":"caf\xe9"'), "invalid_utf8"),
    # an encoded UTF-16 surrogate is not valid UTF-8 either
    (_event("b3", b',"query":"\xed\xa0\x80"'), "invalid_utf8"),
    # garbage bytes in a line that is malformed too: invalid UTF-8 comes first
    (b'{"event_id":"b10","query":"\xff\xfe', "invalid_utf8"),
    # a raw CR inside a string: JSON forbids unescaped control characters
    (_event("b4", b',"query":"a\rb"'), "malformed_json"),
    # a CR between tokens is JSON whitespace: the record is clean
    (b'{"event_id":"b5",\r' + HEAD + b"}", None),
    # CRLF line ending: the CR stays in the line's bytes and parses as whitespace
    (_event("b6") + b"\r", None),
    (b'{"event_id":"b7","event_type":"nope","user_id":"u1","ts":"2026-10-01T08:00:00Z"}\r', "invalid_event_type"),
    # escaped U+0000 in a free-text field (would otherwise reach silver)
    (_event("b8", b',"query":"x\\u0000y"'), "nul_character"),
    # a raw NUL byte inside a string is an unescaped control character
    (_event("b9", b',"query":"x\x00y"'), "malformed_json"),
]


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("validate_bytes")
    raw = root / "lake" / "raw"
    for table, row in (
        ("users", {"user_id": "u1", "signup_date": D, "consent_behavioral": True}),
        ("apps", {"app_id": "a1", "name": "Alpha", "category": "games", "release_date": D}),
    ):
        (raw / table / f"date={D}").mkdir(parents=True)
        (raw / table / f"date={D}" / f"{table}.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    events = raw / "events" / f"date={D}"
    events.mkdir(parents=True)
    (events / "part-0000.jsonl").write_bytes(b"".join(line + b"\n" for line, _ in LINES))
    config = load_config(
        overrides={
            "paths": {"root": str(root), "lake_root": str(root / "lake")},
            "validation": {"max_bad_rate": 1.0},
            "privacy": {"pseudonymise_user_ids": False},
        },
        environ={},
    )
    result = V.main(config, D, spark, run_expectations_suites=False)
    return root, result


def _quarantine_path(root: Path) -> Path:
    return root / "lake" / "silver" / "quarantine" / f"landing_date={D}"


def test_every_line_is_one_record_with_its_reason(spark, lake):
    """Only "\\n" ends a record: ten lines in, ten records out, each with its reason."""
    root, result = lake
    quarantine = spark.read.parquet(str(_quarantine_path(root)))
    got = sorted((bytes(r[C.RAW_BYTES]), r[C.REASON]) for r in quarantine.collect())
    assert got == sorted((line, reason) for line, reason in LINES if reason is not None)
    assert (result["total"], result["clean"], result["quarantined"]) == (10, 3, 7)
    report = json.loads((root / "lake" / "reports" / "validation" / f"date={D}" / "report.json").read_text())
    assert {k: v for k, v in report["by_reason"].items() if v} == {
        "invalid_utf8": 3, "malformed_json": 2, "invalid_event_type": 1, "nul_character": 1}


def test_silver_holds_only_the_clean_lines(spark, lake):
    """Invalid UTF-8 and U+0000 never reach silver (no U+FFFD repair, no NUL)."""
    root, _ = lake
    events = spark.read.parquet(str(root / "lake" / "silver" / "events"))
    rows = sorted((r[C.EVENT_ID], r[C.QUERY]) for r in events.select(C.EVENT_ID, C.QUERY).collect())
    assert rows == [("b1", None), ("b5", None), ("b6", None)]


def _event_id(text: str) -> str | None:
    """The event id as sent; None when the line is not a JSON object (raw control characters included)."""
    try:
        return json.loads(text)["event_id"]
    except ValueError:
        return None


def test_quarantine_reads_back_with_pyarrow(lake):
    """raw_bytes is binary and exact; raw_record is valid text (U+FFFD for invalid bytes)."""
    root, _ = lake
    table = pq.read_table(_quarantine_path(root))
    assert table.schema.field(C.RAW_BYTES).type == pa.binary()
    assert table.schema.field(C.RAW_RECORD).type == pa.string()
    got = sorted((r[C.RAW_BYTES], r[C.RAW_RECORD], r[C.REASON], r[C.EVENT_ID]) for r in table.to_pylist())
    expected = sorted(
        (line, line.decode("utf-8", "replace"), reason, _event_id(line.decode("utf-8", "replace")))
        for line, reason in LINES if reason is not None
    )
    assert got == expected
    # the garbage-byte lines: ISO-8859-1 "é" becomes one U+FFFD, the surrogate three, 0xFF 0xFE two
    previews = {r[C.RAW_BYTES]: r[C.RAW_RECORD] for r in table.to_pylist()}
    tails = ['"query":"caf\ufffd"}', '"query":"\ufffd\ufffd\ufffd"}', '"query":"\ufffd\ufffd']
    garbage = [line for line, reason in LINES if reason == "invalid_utf8"]
    assert [previews[line].endswith(tail) for line, tail in zip(garbage, tails, strict=True)] == [True] * 3
    assert previews[LINES[7][0]].endswith("}\r")  # the CR of a CRLF line is kept as received


def test_reason_precedence_on_bytes(spark):
    """The transforms alone: invalid UTF-8 comes first; NUL comes before field checks."""
    lines = spark.createDataFrame(
        [
            (bytearray(b'{"event_id": "x\xff'), "f", 0, 0),  # invalid UTF-8 and malformed
            (bytearray(b'{"event_id":"y","event_type":"nope","user_id":"","ts":"bad","query":"\\u0000"}'), "f", 0, 1),
        ],
        [C.RAW_BYTES, "_file", "_block", "_pos"],
    )
    flagged = V.assign_reasons(
        V.parse_lines(lines), spark.createDataFrame([], f"{C.USER_ID} string"),
        spark.createDataFrame([], f"{C.APP_ID} string"), spark.createDataFrame([], f"{C.EVENT_ID} string"),
        D, 2048, 60,
    )
    assert sorted((r["_pos"], r[C.REASON]) for r in flagged.collect()) == [(0, "invalid_utf8"), (1, "nul_character")]
