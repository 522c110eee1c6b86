"""
### Privacy requests (data subject rights)

Processes one request, or re-checks earlier deletions after each serving publish.

**Manual trigger** with params:

- `action`: `delete` (erase the users from the lake, serving DB, Redis and MLflow models at once),
  `export` (write `reports/exports/<user_id>.json` for each user) or `verify` (search every store);
- `user_ids`: the users (letters, digits, `_`, `-`; at most 64 characters each);
- `requested_by`: who asked (recorded in the serving DB's `audit_log`).

**After every publish** (scheduled on the `personalization.serving.recommendations` asset) the run
has no `user_ids`: it re-verifies the users deleted in the last 30 days and erases again any that a
nightly run wrote back (a run that read its inputs before the deletion).

Tasks: `validate_request` (fast checks of the params; hostile ids fail the run before anything is
read) -> `process` -> `verify` (fails the run when a deleted user is still found anywhere).
Only paths, counts and ids pass through XCom, never exported data.
See `personalization/data_rights/__init__.py` for what each store does.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from personalization.assets import SERVING_RECOMMENDATIONS

ACTIONS = ("delete", "export", "verify")
#: Requester recorded for the post-publish re-checks.
SCHEDULED_REQUESTER = "privacy_requests:after_publish"

DEFAULT_ARGS = {
    "owner": "personalization",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": True,
}


@dag(
    dag_id="privacy_requests",
    description="Delete, export or verify users' data in every store; re-check deletions after each publish",
    schedule=[SERVING_RECOMMENDATIONS],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,  # two requests never rewrite the same files at the same time
    default_args=DEFAULT_ARGS,
    tags=["personalization", "privacy", "gdpr"],
    doc_md=__doc__,
    params={
        "action": Param("verify", type="string", enum=list(ACTIONS),
                        description="delete | export | verify (verify with no user_ids: re-check recent deletions)"),
        "user_ids": Param([], type="array", items={"type": "string"}, maxItems=10_000,
                          description="User ids the request is about"),
        "requested_by": Param("", type="string", maxLength=128,
                              description="Who asked for this (recorded in the audit log)"),
    },
)
def privacy_requests():
    # The requests name users: keep their ids out of the task logs (XCom still passes them on).
    @task(show_return_value_in_logs=False)
    def validate_request(**context) -> dict:
        """Check the params before any store is touched; returns the normalised request."""
        from airflow.sdk.exceptions import AirflowFailException

        from personalization.data_rights.ids import validate_actor, validate_request_ids
        from personalization.security import InvalidIdentifierError

        params = context.get("params") or {}
        action = params.get("action") or "verify"
        user_ids = params.get("user_ids") or []
        requested_by = params.get("requested_by") or ""
        try:
            if action not in ACTIONS:
                raise InvalidIdentifierError(f"action must be one of {ACTIONS}, got {action!r}")
            if not user_ids:
                if action != "verify":
                    raise InvalidIdentifierError(f"action {action!r} needs user_ids")
                # Asset-triggered runs (and manual runs without ids) re-check recent deletions.
                return {"action": "recheck", "user_ids": [],
                        "requested_by": validate_actor(requested_by or SCHEDULED_REQUESTER)}
            return {"action": action, "user_ids": validate_request_ids(user_ids),
                    "requested_by": validate_actor(requested_by)}
        except InvalidIdentifierError as error:
            # A bad request stays bad: fail without retries.
            raise AirflowFailException(str(error)) from None

    @task(show_return_value_in_logs=False)
    def process(request: dict) -> dict:
        """Run the request; returns counts and paths only (no exported data)."""
        from personalization import data_rights
        from personalization.config import load_config

        config = load_config()
        action, user_ids, who = request["action"], request["user_ids"], request["requested_by"]
        if action == "delete":
            result = data_rights.delete_users(config, user_ids, who)
            return {**request, "counts": result["counts"], "request_id": result["request_id"]}
        if action == "export":
            paths = {user_id: data_rights.export_user(config, user_id, who)["path"] for user_id in user_ids}
            return {**request, "paths": paths}
        if action == "recheck":
            result = data_rights.recheck_deleted(config, who)
            return {**request, "user_ids": result["reappeared"], "checked": result["checked"],
                    "counts": result["delete"]["counts"] if result["delete"] else {}}
        return {**request}

    @task(show_return_value_in_logs=False)
    def verify(outcome: dict) -> dict:
        """Deleted users must be found nowhere; exports must exist. Fails the run otherwise."""
        from airflow.sdk.exceptions import AirflowFailException

        from personalization import data_rights, storage
        from personalization.config import load_config

        config = load_config()
        if outcome["action"] == "export":
            missing = [path for path in outcome["paths"].values() if not storage.exists(path)]
            if missing:
                raise AirflowFailException(f"exports missing after writing: {missing}")
            return {"action": "export", "exports": len(outcome["paths"])}
        if not outcome["user_ids"]:
            return {"action": outcome["action"], "clean": True, "checked": outcome.get("checked", 0)}
        result = data_rights.verify_deleted(config, outcome["user_ids"])
        summary = {"action": outcome["action"], "clean": result["clean"], "hits": result["hits"],
                   "retained": result["retained"]}
        if not result["clean"]:
            raise AirflowFailException(f"users still found after {outcome['action']}: {result['hits']} "
                                       f"at {result['locations'][:10]}")
        return summary

    verify(process(validate_request()))


privacy_requests()
