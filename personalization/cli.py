"""``pe``: the command line for what people do by hand.

Examples::

    pe generate --scale tiny            # write the synthetic world to the lake
    pe run                              # generate if missing, run the nightly DAG for the latest date
    pe run --date 2026-10-14 --direct   # same stages without Airflow
    pe stage build_profiles --date 2026-10-14
    pe summary                          # what the last run produced and how to look at it
    pe show-user u0000042               # a user's serving rows
    pe versions / pe rollback           # serving versions, instant rollback
    pe serving-roles                    # the apps' read-only role on PostgreSQL (setup)
    pe serve                            # the read API for apps on 127.0.0.1:8000 (keys: $PE_API_KEYS)
    pe config                           # the effective configuration
    pe airflow-env                      # exports for `airflow standalone` with this project
    pe airflow-setup                    # metadata DB and Spark pool, before `airflow standalone`
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from typing import Any, Sequence

from personalization.config import Config, load_config

#: Exit status when another process holds the lake's lock (EX_TEMPFAIL: try again later).
EXIT_LAKE_BUSY = 75


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, dict[str, Any]] = {}
    if getattr(args, "scale", None):
        overrides.setdefault("generator", {})["scale"] = args.scale
    if getattr(args, "seed", None) is not None:
        overrides.setdefault("generator", {})["seed"] = args.seed
    return load_config(args.config, overrides=overrides or None)


def _latest_date(config: Config) -> str:
    from personalization.generator import read_world_summary

    summary = read_world_summary(config)
    if summary is None:
        raise SystemExit(
            f"no generated world under {config.lake_root}: run `pe generate` first (or `pe run`, which generates it)"
        )
    return summary.last_date


def _ensure_world(config: Config) -> None:
    from personalization.generator import generate_world, read_world_summary

    existing = read_world_summary(config)
    wanted = (config.generator.scale, config.generator.seed)
    if existing is not None and (existing.scale, existing.seed) == wanted:
        return
    print(f"generating the {config.generator.scale!r} synthetic world under {config.lake_root} ...", flush=True)
    generate_world(config, progress=True)


# ------------------------------------------------------------------ commands
def cmd_generate(args: argparse.Namespace) -> int:
    from personalization.generator import generate_world

    config = _config(args)
    summary = generate_world(config, progress=not args.quiet)
    print(json.dumps(summary.to_dict() if hasattr(summary, "to_dict") else vars(summary), indent=2, default=str))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from personalization import pipeline

    config = _config(args)
    _ensure_world(config)
    date = args.date or _latest_date(config)
    if args.direct:
        pipeline.ingest_pending_landing_dates(config, date, progress=True)
        pipeline.run_all(config, date)
    else:
        # The DAG's validate task ingests the earlier landing dates itself (one Spark session,
        # in the DAG's process): ingesting them here first would start a second one.
        from personalization.airflow_runner import run_dag_in_process

        print(f"running DAG personalization_nightly for {date} (Airflow home {config.airflow_home}) ...", flush=True)
        try:
            run_dag_in_process(config, date)
        except Exception as error:  # noqa: BLE001 - report and point to the logs
            print(f"\nthe nightly run for {date} failed: {error}\n"
                  f"See the task logs above; rerun one stage with `pe stage <name> --date {date}`.",
                  file=sys.stderr)
            return 1
    from personalization.summary import print_summary

    # What the experiment-report DAG does after a publish (a scheduler would trigger it).
    pipeline.experiment_report(config, date)
    print_summary(config, date)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from personalization import pipeline

    config = _config(args)
    date = args.date or _latest_date(config)
    result = getattr(pipeline, args.name)(config, date)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from personalization.summary import print_summary

    config = _config(args)
    print_summary(config, args.date or _latest_date(config))
    return 0


def cmd_show_user(args: argparse.Namespace) -> int:
    from personalization.summary import user_rows

    config = _config(args)
    for line in user_rows(config, args.user_id):
        print(line)
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from personalization.serving.publish import list_versions

    print(json.dumps(list_versions(_config(args)), indent=2, default=str))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from personalization.serving.publish import rollback

    print(json.dumps(rollback(_config(args), args.version), indent=2, default=str))
    return 0


def cmd_serving_roles(args: argparse.Namespace) -> int:
    from personalization.serving.db import make_engine, publish_lock
    from personalization.serving.roles import ensure_reader_role

    config = _config(args)
    if not config.serving.reader_role:
        raise ValueError("serving.reader_role is empty: no reader role to set up")
    engine = make_engine(config.serving_url)
    try:
        with publish_lock(engine):  # its GRANT/REVOKE must not race a publish's DDL
            _print_json(ensure_reader_role(engine, role=config.serving.reader_role))
    finally:
        engine.dispose()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from personalization.api import create_app

    app = create_app(_config(args), allow_no_auth=args.insecure_no_auth, redis_prefix=args.redis_prefix)
    uvicorn.run(app, host=args.host, port=args.port, access_log=not args.no_access_log)
    return 0


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_delete_user(args: argparse.Namespace) -> int:
    from personalization.data_rights import delete_users, verify_deleted

    config = _config(args)
    result = delete_users(config, args.user_ids, args.requested_by, dry_run=args.dry_run,
                          allow_unknown=args.allow_unknown)
    if args.dry_run:  # nothing changed: what would go, per store and per user, and where
        _print_json({"dry_run": True, "would_delete": result["counts"], "by_user": result["by_user"],
                     "unknown": result["unknown"], "details": result["details"]})
        return 0
    check = verify_deleted(config, args.user_ids)
    _print_json({"deleted": result.get("counts"), "unknown": result["unknown"], "resumed": result["resumed"],
                 "verification": {k: check[k] for k in ("clean", "hits")}})
    return 0 if check["clean"] else 1


def cmd_verify_deleted(args: argparse.Namespace) -> int:
    from personalization.data_rights import verify_deleted

    check = verify_deleted(_config(args), args.user_ids)
    _print_json(check)
    return 0 if check["clean"] else 1


def cmd_export_user(args: argparse.Namespace) -> int:
    from personalization.data_rights import export_user

    result = export_user(_config(args), args.user_id, args.requested_by, allow_unknown=args.allow_unknown)
    print(result["path"])
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    import datetime as dt

    from personalization.data_rights import apply_retention

    today = args.today or dt.datetime.now(dt.timezone.utc).date().isoformat()
    _print_json(apply_retention(_config(args), today, requested_by=args.requested_by))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config = _config(args)
    print(json.dumps(config.to_dict(), indent=2))
    return 0


def cmd_airflow_env(args: argparse.Namespace) -> int:
    from personalization.airflow_runner import airflow_environment

    for key, value in airflow_environment(_config(args)).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_airflow_setup(args: argparse.Namespace) -> int:
    from personalization.airflow_runner import setup_airflow

    _print_json(setup_airflow(_config(args)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pe", description="Batch personalization engine for an app store.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__,
    )
    parser.add_argument("--config", help="YAML configuration file (default: $PE_CONFIG, else embedded defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    generate = add("generate", cmd_generate, "Generate the synthetic app-store world into the lake's landing zone.")
    generate.add_argument("--scale", choices=["tiny", "small", "medium", "large"], help="world size preset")
    generate.add_argument("--seed", type=int, help="random seed (same seed, same bytes)")
    generate.add_argument("--quiet", action="store_true", help="no progress bar")
    generate.set_defaults(writes_lake=True)

    run = add("run", cmd_run, "Run the nightly pipeline for a date (generates the world when missing).")
    run.add_argument("--date", help="run date YYYY-MM-DD (default: the latest generated date)")
    run.add_argument("--scale", choices=["tiny", "small", "medium", "large"], help="world size preset")
    run.add_argument("--seed", type=int, help="world seed")
    run.add_argument("--direct", action="store_true", help="run the stages in this process, without Airflow")
    run.set_defaults(writes_lake=True)

    from personalization.pipeline import STAGES

    stage = add("stage", cmd_stage, "Run one stage of the nightly pipeline for a date.")
    stage.add_argument("name", choices=STAGES, help="stage name")
    stage.add_argument("--date", help="run date YYYY-MM-DD (default: the latest generated date)")
    stage.set_defaults(writes_lake=True)

    summary = add("summary", cmd_summary, "Print what a run produced and how to inspect it.")
    summary.add_argument("--date", help="run date YYYY-MM-DD (default: the latest generated date)")

    show = add("show-user", cmd_show_user, "Print a user's insights and recommendations from the serving DB.")
    show.add_argument("user_id", help="the app's user id, e.g. u0000042")

    add("versions", cmd_versions, "List the serving versions kept for rollback.")
    rollback = add("rollback", cmd_rollback, "Switch the serving tables back to a kept version.")
    rollback.add_argument("--version", type=int, help="version to make live (default: the previous one)")
    add("serving-roles", cmd_serving_roles,
        "Create or update the apps' read-only PostgreSQL role (serving.reader_role; password from "
        "$PE_APP_READER_PASSWORD). Every publish does it too; run it once at setup.")
    serve = add("serve", cmd_serve, "Serve the read API for apps over HTTP (API keys from $PE_API_KEYS).")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--insecure-no-auth", action="store_true", help="serve without API keys (local development)")
    serve.add_argument("--redis-prefix", default="pe", help="key prefix the publishes wrote Redis with (default pe)")
    serve.add_argument("--no-access-log", action="store_true", help="do not log every request")

    delete = add("delete-user", cmd_delete_user,
                 "Delete users from every store (lake, serving DB, Redis, models), then verify zero traces.")
    delete.add_argument("user_ids", nargs="+", metavar="USER_ID", help="the app's user ids")
    delete.add_argument("--requested-by", required=True, help="who asked (recorded in the audit log)")
    delete.add_argument("--dry-run", action="store_true", help="list what would be removed, per store; change nothing")
    delete.add_argument("--allow-unknown", action="store_true",
                        help="proceed for ids that are not known users (no raw/users record, no pseudonym)")
    verify = add("verify-deleted", cmd_verify_deleted, "Search every store for users' identifiers.")
    verify.add_argument("user_ids", nargs="+", metavar="USER_ID", help="the app's user ids")
    export = add("export-user", cmd_export_user, "Export everything held about a user as JSON (right of access).")
    export.add_argument("user_id", help="the app's user id")
    export.add_argument("--requested-by", required=True, help="who asked (recorded in the audit log)")
    export.add_argument("--allow-unknown", action="store_true", help="export even if the id is not a known user")
    retention = add("retention", cmd_retention, "Delete data and model versions older than the retention limits.")
    retention.add_argument("--today", help="reference date YYYY-MM-DD (default: today, UTC)")
    retention.add_argument("--requested-by", default="retention", help="recorded in the audit log")

    add("config", cmd_config, "Print the effective configuration (defaults, file, environment).")
    add("airflow-env", cmd_airflow_env,
        "Print the exports that point Airflow at this project (PATH with this venv, AIRFLOW_HOME, parallelism).")
    add("airflow-setup", cmd_airflow_setup,
        "Create or upgrade the Airflow metadata DB and the Spark pool; run it before `airflow standalone`.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from personalization.locks import LakeBusyError, lake_lock

    try:
        if getattr(args, "writes_lake", False):  # one run per lake at a time (personalization.locks)
            with lake_lock(_config(args)):
                return int(args.handler(args) or 0)
        return int(args.handler(args) or 0)
    except LakeBusyError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_LAKE_BUSY
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
