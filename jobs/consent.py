"""Point-in-time behavioural consent.

A user's behavioural consent at time t is the value of their last
``consent_change`` (type ``behavioral``) at or before t, else their consent at
signup. Events at or after a withdrawal (and before any later re-grant) are not
used by any gold table.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from jobs import columns as C

_KIND = "_consent_kind"  # 0: consent change, 1: event (changes sort first at equal ts)
_STATE = "_consent_state"


def with_behavioral_consent(events: DataFrame, users: DataFrame, consent_changes: DataFrame) -> DataFrame:
    """Add ``behavior_allowed`` to every event: behavioural consent in force at its ``ts``.

    Args:
        events: rows with at least ``user_id`` and ``ts``.
        users: ``user_id`` and ``signup_consent_behavioral`` (silver users snapshot).
        consent_changes: ``user_id``, ``ts``, ``event_id``, ``consent_type``, ``consent_value``.

    A change and an event with the same ``ts``: the change applies (so an event at
    the very instant of withdrawal is excluded). Users absent from ``users`` count
    as not consenting.
    """
    changes = (
        consent_changes.where((F.col(C.CONSENT_TYPE) == "behavioral") & F.col(C.CONSENT_VALUE).isNotNull())
        .select(C.USER_ID, C.TS, F.col(C.CONSENT_VALUE).alias(_STATE), F.col(C.EVENT_ID).alias("_order"))
        .withColumn(_KIND, F.lit(0))
    )
    tagged = events.withColumn(_KIND, F.lit(1)).withColumn("_order", F.lit(None).cast("string"))
    tagged = tagged.withColumn(_STATE, F.lit(None).cast("boolean"))
    timeline = Window.partitionBy(C.USER_ID).orderBy(C.TS, _KIND, "_order").rowsBetween(
        Window.unboundedPreceding, Window.currentRow
    )
    merged = tagged.unionByName(changes, allowMissingColumns=True).withColumn(
        "_last_change", F.last(_STATE, ignorenulls=True).over(timeline)
    )
    signup = users.select(C.USER_ID, F.col(C.SIGNUP_CONSENT_BEHAVIORAL).alias("_signup"))
    return (
        merged.where(F.col(_KIND) == 1)
        .join(signup, C.USER_ID, "left")
        .withColumn(C.BEHAVIOR_ALLOWED, F.coalesce(F.col("_last_change"), F.col("_signup"), F.lit(False)))
        .drop(_KIND, _STATE, "_order", "_last_change", "_signup")
    )


def consented_events(events: DataFrame, users: DataFrame, consent_changes: DataFrame) -> DataFrame:
    """Only the events made while behavioural consent was in force (consent changes removed)."""
    behavioural = events.where(F.col(C.EVENT_TYPE) != "consent_change")
    return (
        with_behavioral_consent(behavioural, users, consent_changes)
        .where(F.col(C.BEHAVIOR_ALLOWED))
        .drop(C.BEHAVIOR_ALLOWED)
    )
