"""Pseudonymisation of user ids at ingestion (pure Spark transforms).

Inside the lake (silver, gold, features, training data, models) a user is known
only by ``p`` + the first 32 hex digits of HMAC-SHA256(key, app user id), the same
value as :func:`personalization.privacy.pseudonymise`. The HMAC runs in the JVM
with Spark's built-in ``sha2`` over the two precomputed pad blocks (RFC 2104), so
no Python worker sees the rows. ``silver/user_pseudonyms`` (:func:`user_pseudonyms`)
maps the pseudonyms back for the serving layer and the data-rights tools.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs import columns as C
from personalization.privacy import APP_USER_ID, hmac_pads


def pseudonym_column(user_id: Column, key: str) -> Column:
    """``p`` + 32 hex digits of HMAC-SHA256(key, UTF-8 ``user_id``); null stays null."""
    inner_pad, outer_pad = hmac_pads(key)
    inner = F.unhex(F.sha2(F.concat(F.lit(bytearray(inner_pad)), F.encode(user_id, "UTF-8")), 256))
    outer = F.sha2(F.concat(F.lit(bytearray(outer_pad)), inner), 256)
    return F.when(user_id.isNotNull(), F.concat(F.lit("p"), F.substring(outer, 1, 32)))


def pseudonymise_users(df: DataFrame, key: str, column: str = C.USER_ID) -> DataFrame:
    """``df`` with ``column`` replaced by its keyed pseudonym (same position, every other column unchanged)."""
    return df.withColumn(column, pseudonym_column(F.col(column), key))


def user_pseudonyms(users: DataFrame, key: str) -> DataFrame:
    """The mapping table: one row per distinct non-blank app user id.

    Returns ``user_id`` (the pseudonym, the lake's id) and ``app_user_id`` (the app's id).
    """
    ids = users.select(F.col(C.USER_ID).alias(APP_USER_ID)).where(
        F.col(APP_USER_ID).isNotNull() & (F.trim(F.col(APP_USER_ID)) != "")
    ).distinct()
    return ids.select(pseudonym_column(F.col(APP_USER_ID), key).alias(C.USER_ID), APP_USER_ID)
