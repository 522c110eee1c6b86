"""Request validation and exact-id matching shared by every store.

Two kinds of match, for two jobs:

- *Ownership* (what deletion removes and export shows): a record belongs to a user
  only through its ``user_id`` field (:meth:`IdMatcher.record_owners`): a JSON line
  whose top-level ``user_id`` string is the id, or, for a line that does not parse
  into such an object (truncated, invalid UTF-8, not an object), an occurrence of
  the id as the value of a ``"user_id": "<id>"`` key in its raw bytes. An id that
  merely occurs somewhere else (an app id, an event type, a suite, a page) owns
  nothing.
- *Search* (what verification reports): whole *tokens*, an occurrence whose
  neighbours on both sides are not id characters (``[A-Za-z0-9_-]``), so ``u1``
  never matches inside ``u10``. A search hit is a trace to look at, never a reason
  to rewrite a record.

The hostile-id rules of :mod:`personalization.security` make every id a plain
literal in regular expressions, SQL ``LIKE`` patterns and Redis ``SCAN`` globs.

A matcher may carry *aliases*: other tokens that identify the same person (the
keyed pseudonym the lake and the models use for an app user id). Every token is
searched, and every hit is reported under its owner, the id the request named.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
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
#: What replaces a deleted id in the ``user_id`` fields of JSON model artifacts (input examples).
REDACTED = "deleted-user"

_TOKEN = re.compile(rf"[{ID_CHARS}]+")
_TOKEN_BYTES = re.compile(rf"[{ID_CHARS}]+".encode())
#: ``"user_id": "<id>"`` in raw bytes: how an unparseable line names its user (JSON allows blanks around ':').
USER_FIELD_BYTES = re.compile(rb'"user_id"[ \t\r\n]*:[ \t\r\n]*"([' + ID_CHARS.encode() + rb']{1,64})"')


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
    """Finds whole-token occurrences of a fixed set of validated ids in text, bytes and Arrow columns.

    ``aliases`` maps further tokens to the id they stand for (pseudonym -> app user id).
    ``ids`` holds every token searched; the ``find_*`` methods return owners (the ids
    named by the request), so counts never depend on which form a store holds.
    """

    def __init__(self, user_ids: Iterable[str], aliases: Mapping[str, str] | None = None):
        self.owner_of: dict[str, str] = {value: value for value in user_ids}
        for token, owner in (aliases or {}).items():
            self.owner_of.setdefault(token, owner)
        self.ids = frozenset(self.owner_of)
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

    def owners(self, tokens: Iterable[str]) -> set[str]:
        """The owners of the searched ``tokens`` among ``tokens`` (others are ignored)."""
        return {self.owner_of[token] for token in tokens if token in self.owner_of}

    def fold(self, counts: Mapping[str, int]) -> Counter:
        """Counts keyed by token -> counts keyed by owner."""
        folded: Counter = Counter()
        for token, count in counts.items():
            folded[self.owner_of.get(token, token)] += int(count)
        return folded

    def tokens_in_text(self, text: str) -> set[str]:
        """Searched tokens (ids or aliases) occurring as whole tokens in ``text``."""
        if len(self.ids) > _ALTERNATION_LIMIT:
            return set(_TOKEN.findall(text)) & self.ids
        return set(self._text.findall(text))

    def find_text(self, text: str) -> set[str]:
        """Owners of the tokens occurring as whole tokens in ``text``."""
        return self.owners(self.tokens_in_text(text))

    def find_bytes(self, data: bytes) -> set[str]:
        """Owners of the tokens occurring as whole tokens in UTF-8/ASCII ``data``."""
        if len(self.ids) > _ALTERNATION_LIMIT:
            return self.owners(token.decode() for token in _TOKEN_BYTES.findall(data))
        return self.owners(match.decode() for match in self._bytes.findall(data))

    def find_binary(self, data: bytes) -> set[str]:
        """Owners of tokens in binary ``data`` as UTF-8 or UTF-32-LE (pickled Python strings, numpy arrays)."""
        found = self.find_bytes(data)
        found |= self.owners(match.decode("utf-32-le") for match in self._utf32.findall(data))
        return found

    def find_user_field(self, data: bytes) -> set[str]:
        """Owners of the ids that occur as the value of a ``"user_id": "<id>"`` key in ``data``."""
        return self.owners(match.decode() for match in USER_FIELD_BYTES.findall(data))

    def record_owners(self, line: bytes) -> set[str]:
        """The requested ids one raw JSON line belongs to, by its ``user_id`` field only.

        A line that parses into an object with a string ``user_id`` belongs to that id
        (nothing else in the line counts); any other line (malformed, truncated, invalid
        UTF-8, an array, an object without a string ``user_id``) belongs to the ids written
        as ``"user_id": "<id>"`` in its bytes. JSON escapes inside such a broken line are
        not decoded: ``"user_id":"\\u0075\\u0031"`` attributes it to nobody.
        """
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return self.find_user_field(line)
        if isinstance(record, dict) and isinstance(record.get("user_id"), str):
            return self.owners([record["user_id"]])
        return self.find_user_field(line)
