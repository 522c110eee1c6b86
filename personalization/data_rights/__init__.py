"""Data subject rights across every store: deletion, verification, export, retention, audit.

Stores covered (see each module for the details):

==============  ==========================================================
``raw``         raw JSON lines (``raw/**.jsonl``), rewritten per file
``silver``      Parquet under ``silver/`` (without the quarantine)
``quarantine``  ``silver/quarantine`` rows whose ``raw_record`` names the user
``gold``        Parquet under ``gold/``
``lake_other``  any other lake file (``sim/``, ``reports/``, exports)
``serving_db``  every kept version of the per-user serving tables
``redis``       ``<prefix>:v*:user:<id>`` keys (when ``serving.redis_url`` is set)
``mlflow``      pickled Recommenders, JSON input examples and checkpoints
``run_records`` run records and logs under ``var/`` (searched only: they must
                hold no personal id)
==============  ==========================================================

A record is removed only when it *belongs* to a requested user through its
user-id field (see :mod:`personalization.data_rights.ids`); catalogue records,
suites, reports and other users' rows are never rewritten. Verification searches
wider (any whole-token mention) and reports what it finds.

Ids that are not known users (no ``raw/users`` record, no pseudonym mapping row, no
tombstone or pending deletion) are refused with
:class:`personalization.data_rights.deletion.UnknownUserError` unless the caller
passes ``allow_unknown=True``.

Every store is searched for the requested (app) ids and for their pseudonyms
(:mod:`personalization.data_rights.aliases`: the current key and every
``silver/user_pseudonyms`` row); hits are reported under the requested id.

Kept on purpose, and reported by :func:`verify_deleted` under ``retained``:
the ``audit_log`` rows (who asked for what, when) and the tombstone
``silver/deleted_users`` that keeps deleted users out of later runs.

Every public function validates all ids first (hostile ids raise
:class:`personalization.security.InvalidIdentifierError` before anything is read
or written) and writes an ``audit_log`` entry through
:func:`personalization.serving.publish.record_audit`.
"""

from __future__ import annotations

from personalization.data_rights.common import STORES
from personalization.data_rights.deletion import (
    RECHECK_DAYS,
    UnknownUserError,
    delete_users,
    recheck_deleted,
    verify_deleted,
)
from personalization.data_rights.export import EXPORT_FORMAT_VERSION, EXPORT_SECTIONS, export_user
from personalization.data_rights.retention import apply_retention

__all__ = [
    "EXPORT_FORMAT_VERSION", "EXPORT_SECTIONS", "RECHECK_DAYS", "STORES", "UnknownUserError", "apply_retention", "delete_users",
    "export_user", "recheck_deleted", "verify_deleted",
]
