"""The other identifiers of a data subject: the keyed pseudonyms the lake and models use.

A request names the app's user ids. Inside the lake, features and models the same
people are known by ``pseudonymise(id, key)`` (see :mod:`personalization.privacy`),
so every store is searched for both. Pseudonyms come from the current key (never
created here: a fresh key would only yield pseudonyms no store holds) and from
every partition of ``silver/user_pseudonyms``, which also covers pseudonyms made
under an earlier key and requests that name a pseudonym instead of an app id, and
from the tombstone (``silver/deleted_users``), so verification after a deletion still
searches the pseudonyms whose mapping rows it removed.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs import columns as C
from personalization.config import Config
from personalization.data_rights import files, lake_store
from personalization.data_rights.ids import IdMatcher
from personalization.lake import Lake
from personalization.privacy import APP_USER_ID, PSEUDONYM, PSEUDONYM_TABLE, pseudonymise, resolve_hmac_key


def mapping_aliases(config: Config, user_ids: list[str]) -> dict[str, str]:
    """``{other token: requested id}`` from the ``silver/user_pseudonyms`` rows alone (every key, every date)."""
    wanted = set(user_ids)
    aliases: dict[str, str] = {}
    value_set = pa.array(sorted(wanted), type=pa.string())
    for uri in files.list_files(Lake(config).silver(PSEUDONYM_TABLE)):
        if not uri.endswith(".parquet"):
            continue
        with files.local_copy(uri) as path:
            table = pq.read_table(path, columns=[C.USER_ID, APP_USER_ID])
        pseudonyms, app_ids = table.column(C.USER_ID), table.column(APP_USER_ID)
        hit = pc.fill_null(pc.or_(pc.is_in(pseudonyms, value_set=value_set), pc.is_in(app_ids, value_set=value_set)),
                           False)
        for pseudonym, app_id in zip(pseudonyms.filter(hit).to_pylist(), app_ids.filter(hit).to_pylist(),
                                     strict=True):
            if app_id in wanted:
                aliases.setdefault(pseudonym, app_id)
            else:  # the request named the pseudonym: the app's id is its alias
                aliases.setdefault(app_id, pseudonym)
    return {token: owner for token, owner in aliases.items() if token and token not in wanted}


def resolve_aliases(config: Config, user_ids: list[str]) -> dict[str, str]:
    """``{other token: requested id}`` for validated ``user_ids`` (the ids themselves are not included)."""
    wanted = set(user_ids)
    aliases: dict[str, str] = {}
    key = resolve_hmac_key(config, create=False)
    if key:
        aliases.update({pseudonymise(user_id, key): user_id for user_id in user_ids})
    for token, owner in mapping_aliases(config, user_ids).items():
        aliases.setdefault(token, owner)
    # After a deletion the mapping rows are gone: the tombstone still names the pseudonyms to search.
    for uri in files.list_files(f"{Lake(config).root}/{lake_store.TOMBSTONE}"):
        if uri.endswith(".parquet"):
            with files.local_copy(uri) as path:
                table = pq.read_table(path, columns=[C.USER_ID, PSEUDONYM])
            for owner, token in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True):
                if owner in wanted and token:
                    aliases.setdefault(token, owner)
    return {token: owner for token, owner in aliases.items() if token and token not in wanted}


class UnknownUserError(ValueError):
    """A request names ids that are not known users (see :func:`unknown_users`)."""


def unknown_users(config: Config, user_ids: list[str], matcher: IdMatcher) -> list[str]:
    """The requested ids that are not known users, in request order.

    Known: an account record in ``raw/users`` (by its ``user_id`` field), a
    ``silver/user_pseudonyms`` mapping row, a tombstone row or a pending deletion
    (so an interrupted or repeated deletion can always be finished).
    """
    known = lake_store.known_users(config, matcher)
    known |= set(mapping_aliases(config, user_ids).values())
    left = set(user_ids) - known
    if left:
        known |= {user for user, _ in lake_store.read_tombstone(config)} & left
        known |= {user for entry in lake_store.read_pending(config) for user in entry["user_ids"]} & left
    return [user for user in user_ids if user not in known]


def refuse_unknown(config: Config, user_ids: list[str], matcher: IdMatcher, verb: str) -> None:
    """Raise :class:`UnknownUserError` naming the unknown ids (validated, safe to print) before ``verb`` acts."""
    unknown = unknown_users(config, user_ids, matcher)
    if unknown:
        shown = ", ".join(unknown[:20]) + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
        raise UnknownUserError(
            f"{len(unknown)} of {len(user_ids)} ids are not known users (no raw/users record, no pseudonym "
            f"mapping, no earlier deletion): {shown}. Nothing was read further or changed. Check the ids; "
            f"to {verb} them anyway, pass --allow-unknown (allow_unknown=True)."
        )
