"""Great Expectations pre-switch checks (personalization/serving/checks.py) on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from personalization.serving import checks
from personalization.serving.checks import ServingValidationError, gx_validate, version_suite
from personalization.serving.publish import list_versions, publish
from tests.test_serving import (  # noqa: F401  (fixtures: serving_url and the PostgreSQL ones it uses)
    DATE,
    EXPECTED,
    INSIGHTS,
    make_config,
    postgres_server,
    postgres_url,
    serving_url,
    write_world,
)


def test_insights_are_validated_row_by_row_in_bounded_batches(serving_url: str, tmp_path: Path,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # One row per GX batch: the count and the examples must add up across batches.
    monkeypatch.setattr(checks, "INSIGHT_CHUNK_ROWS", 1)
    config = make_config(tmp_path, serving_url)
    publish(config, DATE, write_world(tmp_path, "good"), "m1", expected=EXPECTED)
    # u1 breaks two expectations (engagement 150, churn 1.5) and counts once; u2's hour 30 is out of range.
    bad = [INSIGHTS[0][:2] + (150.0, 1.5) + INSIGHTS[0][4:], INSIGHTS[1][:7] + (30,) + INSIGHTS[1][8:]]
    with pytest.raises(ServingValidationError) as raised:
        publish(config, DATE, write_world(tmp_path, "bad", user_insights=bad), "m2", expected=EXPECTED)
    assert raised.value.reasons == [
        'user_insights_null_or_out_of_range: 2 violation(s), e.g. [["u1", 150.0, 1.5, 19.99, 20, 3], '
        '["u2", 10.0, 0.875, 0.0, 30, 1]]']
    assert [(v["version"], v["live"]) for v in list_versions(config)] == [(1, True)]  # nothing switched


def test_version_suite_expects_zero_violations_and_minimum_rows() -> None:
    suite = version_suite(["denylisted_app", "deleted_user"], {"recommendations": 2})
    frame = pd.DataFrame([{"rows__recommendations": 1, "denylisted_app": 0, "deleted_user": 3}])
    result: Any = gx_validate(suite, frame)
    failed = sorted(r.expectation_config.kwargs.get("column") for r in result.results if not r.success)
    assert (result.success, failed) == (False, ["deleted_user", "rows__recommendations"])
    frame = pd.DataFrame([{"rows__recommendations": 2, "denylisted_app": 0, "deleted_user": 0}])
    assert gx_validate(suite, frame).success
