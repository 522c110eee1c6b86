"""Request validation and exact-id matching shared by every store.

Ids are matched as whole *tokens*: an occurrence counts only when the characters
on both sides are not id characters (``[A-Za-z0-9_-]``), so deleting ``u1`` never
touches ``u10`` and the hostile-id rules of :mod:`personalization.security` make
every id a plain literal in regular expressions, SQL ``LIKE`` patterns and Redis
``SCAN`` globs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from personalization.security import InvalidIdentifierError, validate_user_id

#: Largest request accepted at once (bounds the match automata and the IN lists).
MAX_IDS_PER_REQUEST = 10_000
#: Characters an id is made of (see personalization.security); used for token boundaries.
ID_CHARS = "A-Za-z0-9_-"
#: Above this many ids the Python matcher tokenises instead of using one alternation.
_ALTERNATION_LIMIT = 64
#: Longest accepted ``requested_by`` value (characters).
MAX_ACTOR_CHARS = 128
#: What redaction writes in place of a deleted id inside text artifacts and reports.
REDACTED = "deleted-user"

_TOKEN = re.compile(rf"[{ID_CHARS}]+")
_TOKEN_BYTES = re.compile(rf"[{ID_CHARS}]+".encode())


def validate_request_ids(user_ids: Any) -> list[str]:
    """Validate a whole request before anything is read or written; returns the unique ids in order.

    Raises :class:`InvalidIdentifierError` naming every rejected entry (by position)
    when any id is hostile (path traversal, SQL, empty, over 64 characters,
    undecodable bytes, non-string) or when ``user_ids`` is not a list of ids.
    """
    if isinstance(user_ids, (str, bytes)):
        raise InvalidIdentifierError("user_ids must be a list of ids, not a single string")
    try:
        items = list(user_ids)
    except TypeError:
        raise InvalidIdentifierError(f"user_ids must be a list of ids, got {type(user_ids).__name__}") from None
    if not items:
        raise InvalidIdentifierError("no user ids given")
    if len(items) > MAX_IDS_PER_REQUEST:
        raise InvalidIdentifierError(f"{len(items)} user ids given; at most {MAX_IDS_PER_REQUEST} per request")
    valid: list[str] = []
    errors: list[str] = []
    for position, item in enumerate(items):
        try:
            valid.append(validate_user_id(item))
        except InvalidIdentifierError as error:
            errors.append(f"#{position}: {error}")
    if errors:
        raise InvalidIdentifierError(
            f"{len(errors)} of {len(items)} user ids rejected; nothing was read or changed: " + "; ".join(errors)
        )
    return list(dict.fromkeys(valid))


def validate_actor(requested_by: Any) -> str:
    """The requester recorded in the audit log: a non-empty printable string of at most 128 characters."""
    if not isinstance(requested_by, str) or not requested_by.strip():
        raise InvalidIdentifierError("requested_by must name who asked for this (a non-empty string)")
    if len(requested_by) > MAX_ACTOR_CHARS or not requested_by.isprintable():
        raise InvalidIdentifierError(
            f"requested_by must be printable and at most {MAX_ACTOR_CHARS} characters long"
        )
    return requested_by.strip()


class IdMatcher:
    """Finds whole-token occurrences of a fixed set of validated ids in text, bytes and Arrow columns."""

    def __init__(self, user_ids: Iterable[str]):
        self.ids = frozenset(user_ids)
        if not self.ids:
            raise ValueError("IdMatcher needs at least one id")
        ordered = sorted(self.ids, key=lambda value: (-len(value), value))
        alternation = "|".join(re.escape(value) for value in ordered)
        self._text = re.compile(rf"(?<![{ID_CHARS}])(?:{alternation})(?![{ID_CHARS}])")
        self._bytes = re.compile(self._text.pattern.encode())
        # numpy "<U" arrays pickle their text as UTF-32-LE: every id character is 4 bytes.
        unit = rf"[{ID_CHARS}]\x00\x00\x00".encode()
        wide = b"|".join(re.escape(value.encode("utf-32-le")) for value in ordered)
        self._utf32 = re.compile(b"(?<!" + unit + b")(?:" + wide + b")(?!" + unit + b")")
        #: RE2 pattern (no look-around) for pyarrow.compute.match_substring_regex.
        self.arrow_pattern = rf"(?:^|[^{ID_CHARS}])(?:{alternation})(?:[^{ID_CHARS}]|$)"
        #: Longest id in bytes as UTF-32 plus a boundary unit: the overlap of chunked scans.
        self.overlap = 4 * (max(len(value) for value in self.ids) + 2)

    def find_text(self, text: str) -> set[str]:
        """Ids occurring as whole tokens in ``text``."""
        if len(self.ids) > _ALTERNATION_LIMIT:
            return set(_TOKEN.findall(text)) & self.ids
        return set(self._text.findall(text))

    def find_bytes(self, data: bytes) -> set[str]:
        """Ids occurring as whole tokens in UTF-8/ASCII ``data``."""
        if len(self.ids) > _ALTERNATION_LIMIT:
            return {token.decode() for token in _TOKEN_BYTES.findall(data)} & self.ids
        return {match.decode() for match in self._bytes.findall(data)}

    def find_binary(self, data: bytes) -> set[str]:
        """Ids in binary ``data`` as UTF-8 or UTF-32-LE tokens (pickled Python strings and numpy arrays)."""
        found = self.find_bytes(data)
        found |= {match.decode("utf-32-le") for match in self._utf32.findall(data)}
        return found

    def redact_text(self, text: str, replacement: str = REDACTED) -> tuple[str, set[str]]:
        """``text`` with every id token replaced, and the ids that were replaced."""
        found = self.find_text(text)
        if not found:
            return text, found
        if len(self.ids) > _ALTERNATION_LIMIT:
            return _TOKEN.sub(lambda m: replacement if m.group(0) in found else m.group(0), text), found
        return self._text.sub(replacement, text), found
