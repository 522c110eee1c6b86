"""Hostile identifiers are rejected with clear errors before touching paths or SQL."""

from __future__ import annotations

import pytest

from personalization.lake import check_date
from personalization.security import InvalidIdentifierError, validate_user_id


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("../../etc/passwd", "contains characters"),
        ("1; DROP TABLE recommendations", "contains characters"),
        ("", "is empty"),
        ("u" * 10_240, "at most 64"),
        (b"\xff\xfeuser", "not valid UTF-8"),
        (None, "must be a string"),
    ],
)
def test_hostile_user_ids_are_rejected(value: object, message: str) -> None:
    with pytest.raises(InvalidIdentifierError, match=message):
        validate_user_id(value)


def test_normal_ids_pass() -> None:
    assert validate_user_id("u0000042") == "u0000042"
    assert validate_user_id(b"u-1_x") == "u-1_x"


@pytest.mark.parametrize("value", ["2026-02-31", "../2026-01-01", "2026-1-1", "today"])
def test_bad_dates_never_reach_a_path(value: str) -> None:
    with pytest.raises(ValueError):
        check_date(value)
