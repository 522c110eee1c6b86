"""Validation of user-supplied identifiers before they touch paths or queries."""

from __future__ import annotations

import re

#: App-side user and app ids: letters, digits, ``_`` and ``-``, 1 to 64 characters.
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class InvalidIdentifierError(ValueError):
    """A user-supplied identifier was rejected; nothing was read, written or deleted."""


def validate_id(value: object, kind: str = "identifier") -> str:
    """Return ``value`` if it is a safe identifier, else raise :class:`InvalidIdentifierError`.

    Rejects non-strings, undecodable bytes, empty or over-long values, and any
    character outside ``[A-Za-z0-9_-]`` (so ``../`` path traversal and SQL
    metacharacters never reach a path or a query).
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidIdentifierError(f"{kind} is not valid UTF-8") from None
    if not isinstance(value, str):
        raise InvalidIdentifierError(f"{kind} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidIdentifierError(f"{kind} is empty")
    if len(value) > 64:
        raise InvalidIdentifierError(f"{kind} is {len(value)} characters long; at most 64 are allowed")
    if not _ID.match(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidIdentifierError(
            f"{kind} {shown!r} contains characters other than letters, digits, '_' and '-'"
        )
    return value


def validate_user_id(value: object) -> str:
    return validate_id(value, "user id")


def validate_app_id(value: object) -> str:
    return validate_id(value, "app id")
