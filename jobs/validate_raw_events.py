"""Ingestion: raw event lines of one landing date -> typed silver events + quarantine.

Pure transforms (no paths): :func:`parse_lines`, :func:`assign_reasons`,
:func:`normalise_events`, :func:`quarantine_records`, :func:`users_snapshot`,
:func:`apps_snapshot`. :func:`main` reads ``raw/events/date=D`` as bytes split on
``\\n`` only (:func:`read_raw_lines`), writes

- ``silver/quarantine/landing_date=D`` (every defective line: ``raw_bytes`` exactly
  as received, ``raw_record`` its text for readers, see :func:`quarantine_records`),
- ``silver/events/event_date=E`` for every event date E of the clean batch
  (late arrivals are merged into their own partition: rows of other landing
  dates are kept, rows of landing date D are replaced, so a rerun is idempotent),
- ``silver/users/date=D`` and ``silver/apps/date=D`` snapshots,
- ``silver/user_pseudonyms/date=D`` (pseudonym -> app user id of every user known
  on D) when ``privacy.pseudonymise_user_ids`` is on: then every ``user_id`` written
  to silver is the keyed pseudonym (:mod:`jobs.pseudonyms`), while the quarantine
  keeps the defective lines as received, like the raw zone,
- ``reports/validation/date=D/report.json`` and Data Docs under ``reports/data_docs``,

and raises :class:`DataQualityError` when the bad rate exceeds
``config.validation.max_bad_rate`` (after writing the quarantine and the report;
silver is then left untouched so a rejected batch never reaches downstream).

Bytes: a record is the bytes up to a ``\\n``; a ``\\r`` never ends one. A line whose
bytes are not valid UTF-8 is ``invalid_utf8`` (never repaired into silver). A ``\\r``
is JSON whitespace, so CRLF files and a ``\\r`` between tokens parse, while a raw
``\\r`` (like any raw control character, NUL included) inside a string is
``malformed_json``. A string value holding U+0000 (sent escaped as ``\\u0000``) is
rejected as ``nul_character`` rather than stripped: PostgreSQL text columns cannot
store NUL, and stripping would change ids and values silently.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import uuid
import zoneinfo
from functools import reduce
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs import columns as C
from jobs import io
from jobs.inputs import read_consent_changes
from jobs.pseudonyms import pseudonymise_users, user_pseudonyms
from jobs.spark import get_spark
from personalization.config import Config
from personalization.lake import Lake, check_date
from personalization.privacy import PSEUDONYM_TABLE, lake_key

log = logging.getLogger(__name__)

# Internal columns (dropped before anything is written to silver).
_FILE, _BLOCK, _POS = "_file", "_block", "_pos"  # line order: file, split, position
_FIELDS = "_fields"  # the record as map<string,string>; null when not a JSON object
_VALID_UTF8 = "_valid_utf8"  # the line's bytes decode as strict UTF-8
_TYPE_MISMATCH = "_type_mismatch"  # a non-string field whose value has the wrong JSON type
_TS = "_ts"  # ts parsed to a timestamp
_ORIGINAL_EVENT_ID = "_original_event_id"

#: ISO-8601 instant with a zone designator, e.g. 2026-10-01T13:22:11Z or ...+02:00.
ISO_INSTANT = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})$"

class DataQualityError(RuntimeError):
    """The landing batch has more bad records than ``validation.max_bad_rate`` allows."""

    def __init__(self, landing_date: str, bad_rate: float, max_bad_rate: float, by_reason: dict[str, int]):
        self.landing_date = landing_date
        self.bad_rate = bad_rate
        self.max_bad_rate = max_bad_rate
        self.by_reason = dict(by_reason)
        top = sorted(((n, r) for r, n in by_reason.items() if n > 0), key=lambda item: (-item[0], item[1]))
        reasons = ", ".join(f"{reason}={count}" for count, reason in top[:5])
        super().__init__(
            f"landing date {landing_date}: bad rate {bad_rate:.4f} exceeds {max_bad_rate:.4f}; "
            f"top reasons: {reasons}"
        )


# --------------------------------------------------------------------- parsing
def read_raw_lines(spark: SparkSession, path: str) -> DataFrame:
    """Raw lines as bytes (never decoded, never schema-inferred) with their file order.

    Returns ``raw_bytes`` (the line without its ``\\n``), ``_file``, ``_block`` and
    ``_pos``: within a split Spark reads lines in order, so (file, split start,
    increasing id) sorts lines by file and line number.
    """
    # lineSep: by default the text source also ends lines at "\r", splitting one
    # record in two. Its strings hold the file's bytes unchecked, so the cast to
    # binary returns them exactly, invalid UTF-8 included.
    return spark.read.option("lineSep", "\n").text(path).select(
        F.col("value").cast("binary").alias(C.RAW_BYTES),
        F.col("_metadata.file_path").alias(_FILE),
        F.col("_metadata.file_block_start").alias(_BLOCK),
        F.monotonically_increasing_id().alias(_POS),
    )


def parse_lines(lines: DataFrame) -> DataFrame:
    """Decode ``raw_bytes`` and parse the text with the explicit raw event schema.

    Adds ``raw_record`` (the text; invalid UTF-8 sequences become U+FFFD),
    ``_valid_utf8``, every raw field (typed), ``_fields`` (the record as a string
    map, null when the line is not a JSON object), ``_type_mismatch`` and ``_ts``.
    A missing event id is replaced by a hash of the line's bytes (so the same line
    twice is still a duplicate); the original id is kept for the quarantine table.
    ``lines`` without ``raw_bytes`` take them from a ``raw_record`` text column.
    """
    if C.RAW_BYTES not in lines.columns:
        lines = lines.withColumn(C.RAW_BYTES, F.col(C.RAW_RECORD).cast("binary")).drop(C.RAW_RECORD)
    # A string cast from binary keeps the bytes unchecked: test them, then repair a copy.
    text = F.col(C.RAW_BYTES).cast("string")
    lines = lines.withColumn(C.RAW_RECORD, F.make_valid_utf8(text)).withColumn(_VALID_UTF8, F.is_valid_utf8(text))
    schema: T.StructType = C.spark_schemas()["raw_events"]
    as_map = F.from_json(C.RAW_RECORD, T.MapType(T.StringType(), T.StringType()))
    typed = F.from_json(C.RAW_RECORD, schema)
    parsed = lines.withColumn(_FIELDS, as_map).withColumn("_typed", typed)
    # A field present in the object but null after typed parsing had the wrong JSON type
    # (e.g. "position": "abc"); string fields accept any scalar, so only these can fail.
    non_string = [field.name for field in schema.fields if not isinstance(field.dataType, T.StringType)]
    mismatch = reduce(
        lambda acc, name: acc | (F.col(_FIELDS)[name].isNotNull() & F.col(f"_typed.{name}").isNull()),
        non_string,
        F.lit(False),
    )
    parsed = parsed.select(
        *lines.columns,
        _FIELDS,
        *[F.col(f"_typed.{field.name}").alias(field.name) for field in schema.fields],
        F.coalesce(mismatch, F.lit(False)).alias(_TYPE_MISMATCH),
    )
    ts_text = F.trim(F.col(C.TS))
    parsed = parsed.withColumn(
        _TS,
        F.when(ts_text.rlike(ISO_INSTANT), F.expr(f"try_cast(trim({C.TS}) as timestamp)")),
    )
    event_id = F.nullif(F.trim(F.col(C.EVENT_ID)), F.lit(""))
    return parsed.withColumn(_ORIGINAL_EVENT_ID, F.col(C.EVENT_ID)).withColumn(
        C.EVENT_ID, F.coalesce(event_id, F.concat(F.lit("gen-"), F.substring(F.sha2(C.RAW_BYTES, 256), 1, 32)))
    )


def _blank(column: str) -> Column:
    return F.col(column).isNull() | (F.trim(F.col(column)) == "")


def assign_reasons(
    parsed: DataFrame,
    known_users: DataFrame,
    catalogue: DataFrame,
    prior_event_ids: DataFrame,
    landing_date: str,
    max_field_bytes: int,
    future_tolerance_minutes: int,
) -> DataFrame:
    """Add ``reason``: the first defect in ``QUARANTINE_REASONS`` order, null when clean.

    Args:
        parsed: output of :func:`parse_lines`.
        known_users: ``user_id`` of users known on the landing date.
        catalogue: ``app_id`` of apps in the catalogue as of the landing date.
        prior_event_ids: ``event_id`` of clean events of earlier landing dates.
        landing_date: ``YYYY-MM-DD``.
        max_field_bytes: longest allowed field value, in UTF-8 bytes.
        future_tolerance_minutes: events later than the landing day's end plus
            this many minutes are ``future_timestamp``.
    """
    landing = check_date(landing_date)
    day_end = dt.datetime.fromisoformat(landing) + dt.timedelta(days=1)
    future_limit = day_end + dt.timedelta(minutes=future_tolerance_minutes)
    users = known_users.select(C.USER_ID).distinct().withColumn("_user_known", F.lit(True))
    apps = catalogue.select(C.APP_ID).distinct().withColumn("_app_known", F.lit(True))
    flagged = parsed.join(users, C.USER_ID, "left").join(F.broadcast(apps), C.APP_ID, "left")

    checks: list[tuple[str, Column]] = [
        ("invalid_utf8", ~F.col(_VALID_UTF8)),
        ("malformed_json", F.col(_FIELDS).isNull() | F.col(_TYPE_MISMATCH)),
        (
            # char(0): U+0000 built in SQL rather than sent through py4j as a literal.
            "nul_character",
            F.exists(F.map_values(F.col(_FIELDS)), lambda value: F.instr(value, F.expr("char(0)")) > 0),
        ),
        (
            "oversized_field",
            F.exists(F.map_values(F.col(_FIELDS)), lambda value: F.octet_length(value) > max_field_bytes),
        ),
        ("missing_user_id", _blank(C.USER_ID)),
        ("invalid_event_type", F.col(C.EVENT_TYPE).isNull() | ~F.col(C.EVENT_TYPE).isin(*C.EVENT_TYPES)),
        ("bad_timestamp", F.col(_TS).isNull()),
        ("future_timestamp", F.col(_TS) > F.lit(future_limit.strftime("%Y-%m-%d %H:%M:%S")).cast("timestamp")),
        ("missing_app_id", F.col(C.EVENT_TYPE).isin(*C.APP_EVENT_TYPES) & _blank(C.APP_ID)),
        ("unknown_user_id", F.col("_user_known").isNull()),
        ("unknown_app_id", ~_blank(C.APP_ID) & F.col("_app_known").isNull()),
        ("negative_duration", F.col(C.DURATION_S) < 0),
        (
            "out_of_range",
            ~F.col(C.RATING_VALUE).between(1, 5) | (F.col(C.AMOUNT) < 0) | (F.col(C.POSITION) < 1),
        ),
    ]
    assert [name for name, _ in checks] == list(C.QUARANTINE_REASONS[:-1])
    reason: Column = F.lit(None).cast("string")
    for name, failed in reversed(checks):  # build the when-chain so the first defect wins
        reason = F.when(F.coalesce(failed, F.lit(False)), F.lit(name)).otherwise(reason)
    flagged = flagged.withColumn(C.REASON, reason).drop("_user_known", "_app_known")

    # Duplicates among otherwise clean records: the first line in file order is kept,
    # and ids already accepted on an earlier landing date are rejected.
    first_line = Window.partitionBy(C.EVENT_ID, F.col(C.REASON).isNull()).orderBy(_FILE, _BLOCK, _POS)
    prior = prior_event_ids.select(C.EVENT_ID).distinct().withColumn("_seen_before", F.lit(True))
    flagged = flagged.withColumn("_copy", F.row_number().over(first_line)).join(prior, C.EVENT_ID, "left")
    duplicate = F.col(C.REASON).isNull() & ((F.col("_copy") > 1) | F.col("_seen_before").isNotNull())
    return flagged.withColumn(
        C.REASON, F.when(duplicate, F.lit("duplicate_event_id")).otherwise(F.col(C.REASON))
    ).drop("_copy", "_seen_before")


# ------------------------------------------------------------------ normalising
@functools.lru_cache(maxsize=1)
def _known_zones_sql(jvm_zone_ids: str) -> str:
    """SQL array literal of IANA zones known to both the JVM and Python."""
    zones = sorted(set(jvm_zone_ids.split(",")) & zoneinfo.available_timezones())
    return "array(" + ",".join("'" + zone.replace("'", "") + "'" for zone in zones) + ")"


def _known_zones(spark: SparkSession) -> Column:
    """Array column of zones from_utc_timestamp accepts (it fails on unknown ones).

    Built as one SQL literal: thousands of py4j round trips for lit() per zone
    would cost more than the whole job on tiny data.
    """
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    joined = jvm.java.lang.String.join(",", jvm.java.time.ZoneId.getAvailableZoneIds())
    return F.expr(_known_zones_sql(str(joined)))


def normalise_events(clean: DataFrame, landing_date: str) -> DataFrame:
    """Typed silver rows from clean flagged rows.

    ``ts`` becomes a UTC timestamp; local context comes from ``tz`` (unknown zones
    count as UTC); ``session_id`` is filled deterministically from user and UTC hour
    when missing; ``ip`` is dropped. Output: ``columns.SILVER_EVENT_COLUMNS`` + ``event_date``.
    """
    landing = check_date(landing_date)
    zone = F.when(
        F.array_contains(_known_zones(clean.sparkSession), F.col(C.TIMEZONE)), F.col(C.TIMEZONE)
    ).otherwise(F.lit("UTC"))
    local = F.from_utc_timestamp(F.col(_TS), zone)
    hour = F.hour(local)
    device = F.lower(F.coalesce(F.col(C.DEVICE), F.lit("")))
    session_key = F.concat_ws("|", F.col(C.USER_ID), F.date_format(F.col(_TS), "yyyy-MM-dd'T'HH"))
    out = (
        clean.withColumn(C.TS, F.col(_TS))
        .withColumn(C.EVENT_DATE, F.to_date(F.col(_TS)))
        .withColumn(C.LANDING_DATE, F.lit(landing).cast("date"))
        .withColumn(C.LOCAL_HOUR, hour)
        # dayofweek is 1=Sunday..7=Saturday; the contract is ISO 1=Monday..7=Sunday.
        .withColumn(C.LOCAL_WEEKDAY, ((F.dayofweek(local) + 5) % 7) + 1)
        .withColumn(
            C.DAYTIME,
            F.when(hour < 6, "night").when(hour < 12, "morning").when(hour < 18, "afternoon").otherwise("evening"),
        )
        .withColumn(
            C.DEVICE_CLASS,
            F.when(device.contains("tablet"), "tablet").when(device.contains("phone"), "phone").otherwise("desktop"),
        )
        .withColumn(C.IS_LATE, F.col(C.EVENT_DATE) < F.col(C.LANDING_DATE))
        .withColumn(
            C.SESSION_ID,
            F.coalesce(
                F.nullif(F.trim(F.col(C.SESSION_ID)), F.lit("")),
                F.concat(F.lit("s-"), F.substring(F.sha2(session_key, 256), 1, 16)),
            ),
        )
    )
    return out.select(*C.SILVER_EVENT_COLUMNS, C.EVENT_DATE)


def quarantine_records(flagged: DataFrame) -> DataFrame:
    """Defective lines: ``raw_record``, ``reason``, ``event_id`` (as sent, nullable), ``raw_bytes``.

    ``raw_bytes`` (binary) is the line exactly as received without its ``\\n``;
    ``raw_record`` (string) is the same line as text, identical to it for valid
    UTF-8 and with U+FFFD for invalid sequences, so every Parquet reader can read it.
    """
    return flagged.where(F.col(C.REASON).isNotNull()).select(
        C.RAW_RECORD, C.REASON, F.col(_ORIGINAL_EVENT_ID).alias(C.EVENT_ID), C.RAW_BYTES
    )


# --------------------------------------------------------------- reference data
def users_snapshot(raw_users: DataFrame, consent_events: DataFrame) -> DataFrame:
    """Users as of a date, consent flags updated by consent changes in ts order.

    Args:
        raw_users: raw user rows (``raw_users`` schema) plus ``date`` (the raw
            partition). A user listed again in a later partition is a correction
            (rectification): the latest row's profile fields (demographics, location,
            language, zone, device) win, while ``signup_date`` and the consent given at
            sign-up stay from the earliest row (consent changes arrive as events).
        consent_events: ``user_id``, ``ts``, ``event_id``, ``consent_type``,
            ``consent_value`` of clean consent_change events up to the date.

    Returns the raw user columns with ``signup_date`` as a date, the four consent
    flags as of the date, ``signup_consent_behavioral`` and ``consent_updated_at``.
    """
    first = Window.partitionBy(C.USER_ID).orderBy(F.col("date").asc(), F.col(C.SIGNUP_DATE).asc_nulls_last())
    last = Window.partitionBy(C.USER_ID).orderBy(F.col("date").desc(), F.col(C.SIGNUP_DATE).asc_nulls_last())
    listed = raw_users.where(~_blank(C.USER_ID))
    signup_fields = [C.SIGNUP_DATE, C.CONSENT_BEHAVIORAL, C.CONSENT_LOCATION, C.CONSENT_DEMOGRAPHICS,
                     C.CONSENT_THIRD_PARTY]
    at_signup = listed.withColumn("_n", F.row_number().over(first)).where("_n = 1").select(C.USER_ID, *signup_fields)
    current = listed.withColumn("_n", F.row_number().over(last)).where("_n = 1").drop("_n", "date", *signup_fields)
    columns = [name for name in raw_users.columns if name != "date"]
    users = current.join(at_signup, C.USER_ID).select(*columns)
    latest = Window.partitionBy(C.USER_ID, C.CONSENT_TYPE).orderBy(F.col(C.TS).desc(), F.col(C.EVENT_ID).desc())
    changes = (
        consent_events.where(F.col(C.CONSENT_TYPE).isin(*C.CONSENT_TYPES) & F.col(C.CONSENT_VALUE).isNotNull())
        .withColumn("_n", F.row_number().over(latest))
        .where("_n = 1")
        .groupBy(C.USER_ID)
        .agg(
            *[
                F.max(F.when(F.col(C.CONSENT_TYPE) == kind, F.col(C.CONSENT_VALUE).cast("int"))).alias(f"_new_{kind}")
                for kind in C.CONSENT_TYPES
            ],
            F.max(C.TS).alias(C.CONSENT_UPDATED_AT),
        )
    )
    flags = {
        "behavioral": C.CONSENT_BEHAVIORAL,
        "location": C.CONSENT_LOCATION,
        "demographics": C.CONSENT_DEMOGRAPHICS,
        "third_party": C.CONSENT_THIRD_PARTY,
    }
    out = users.withColumn(C.SIGNUP_CONSENT_BEHAVIORAL, F.coalesce(F.col(C.CONSENT_BEHAVIORAL), F.lit(False)))
    out = out.join(changes, C.USER_ID, "left")
    for kind, column in flags.items():
        out = out.withColumn(
            column, F.coalesce(F.col(f"_new_{kind}").cast("boolean"), F.col(column), F.lit(False))
        ).drop(f"_new_{kind}")
    return out.withColumn(C.SIGNUP_DATE, F.expr(f"try_cast({C.SIGNUP_DATE} as date)"))


def apps_snapshot(raw_apps: DataFrame) -> DataFrame:
    """The catalogue as of a date: latest raw row per app, ``release_date`` as a date.

    ``raw_apps`` has the raw app columns plus ``date`` (the raw partition).
    """
    latest = Window.partitionBy(C.APP_ID).orderBy(F.col("date").desc())
    return (
        raw_apps.where(~_blank(C.APP_ID))
        .withColumn("_n", F.row_number().over(latest))
        .where("_n = 1")
        .drop("_n", "date")
        .withColumn(C.RELEASE_DATE, F.expr(f"try_cast({C.RELEASE_DATE} as date)"))
    )


def read_raw_reference(spark: SparkSession, table_path: str, schema: T.StructType, as_of: str) -> DataFrame:
    """JSON-lines partitions ``date <= as_of`` of a raw reference table, with ``date``."""
    dates = [d for d in io.list_partitions(spark, table_path, "date") if d <= as_of]
    frames = [
        spark.read.schema(schema).json(io.partition_path(table_path, "date", d)).withColumn("date", F.lit(d))
        for d in dates
    ]
    if not frames:
        return spark.createDataFrame([], T.StructType([*schema.fields, T.StructField("date", T.StringType())]))
    return reduce(DataFrame.unionByName, frames)


# ------------------------------------------------------------------ expectations
def batch_aggregates(clean: DataFrame, known_users: DataFrame, catalogue: DataFrame) -> dict[str, int]:
    """Whole-batch aggregate checks computed in Spark in one pass (see jobs.expectations.AGGREGATE_COLUMNS)."""
    users = known_users.select(C.USER_ID).distinct().withColumn("_known_user", F.lit(True))
    apps = catalogue.select(C.APP_ID).distinct().withColumn("_known_app", F.lit(True))
    has_app = F.col(C.APP_ID).isNotNull() & (F.trim(F.col(C.APP_ID)) != "")
    row = (
        clean.join(users, C.USER_ID, "left")
        .join(F.broadcast(apps), C.APP_ID, "left")
        .agg(
            F.count(F.lit(1)).alias("n_rows"),
            (F.count(F.lit(1)) - F.countDistinct(C.EVENT_ID)).alias("n_duplicate_event_ids"),
            F.sum(
                (F.col(C.EVENT_ID).isNull() | F.col(C.USER_ID).isNull() | F.col(C.EVENT_TYPE).isNull()).cast("int")
            ).alias("n_null_required"),
            F.sum(F.col(C.TS).isNull().cast("int")).alias("n_bad_ts"),
            F.sum(F.col("_known_user").isNull().cast("int")).alias("n_unknown_user_ids"),
            F.sum((has_app & F.col("_known_app").isNull()).cast("int")).alias("n_unknown_app_ids"),
        )
        .first()
    )
    return {key: int(row[key] or 0) for key in C.BATCH_AGGREGATE_KEYS}


def run_expectations(
    clean: DataFrame, aggregates: dict[str, int], reports_root: str, run_name: str, sample_rows: int | None = None
) -> dict[str, Any]:
    """Validate a bounded sample and the aggregates with GX; build Data Docs.

    The GX project lives in ``<reports_root>/gx`` and Data Docs HTML in
    ``<reports_root>/data_docs``. Returns a JSON-able summary per suite.
    """
    import os

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import pandas as pd
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from jobs.expectations import SAMPLE_ROWS, aggregate_suite, sample_suite

    # GX logs every store save at INFO; the summary goes to the report instead.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    limit = SAMPLE_ROWS if sample_rows is None else sample_rows
    # Deterministic bounded sample: the rows with the smallest id hashes.
    sample = clean.orderBy(F.xxhash64(C.EVENT_ID), C.EVENT_ID).limit(limit).toPandas()
    aggregate_frame = pd.DataFrame([aggregates])

    if "://" in reports_root and not reports_root.startswith("file://"):
        context = gx.get_context(mode="ephemeral")  # object stores: results only, no local Data Docs
        docs_sites: list[str] = []
    else:
        # GX puts its project under <project_root_dir>/gx, i.e. <reports_root>/gx.
        context = gx.get_context(mode="file", project_root_dir=reports_root)
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.variables.data_docs_sites = {
            "lake_reports": {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": os.path.join(reports_root, "data_docs"),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        }
        context.variables.save()
        docs_sites = ["lake_reports"]

    source = context.data_sources.add_or_update_pandas("silver_events")
    definitions = []
    for asset_name, suite in (("sample", sample_suite()), ("aggregates", aggregate_suite())):
        asset = next((a for a in source.assets if a.name == asset_name), None) or source.add_dataframe_asset(asset_name)
        batch = next((b for b in asset.batch_definitions if b.name == "whole"), None)
        batch = batch or asset.add_batch_definition_whole_dataframe("whole")
        suite = context.suites.add_or_update(suite)
        definitions.append(
            context.validation_definitions.add_or_update(gx.ValidationDefinition(name=suite.name, data=batch, suite=suite))
        )

    summary: dict[str, Any] = {"success": True, "suites": {}, "sample_rows": int(len(sample))}
    for definition, frame in zip(definitions, (sample, aggregate_frame), strict=True):
        result = definition.run(
            batch_parameters={"dataframe": frame},
            result_format="SUMMARY",
            run_id=RunIdentifier(run_name=run_name),
        )
        failed = sorted(
            {
                f"{r.expectation_config.type}({r.expectation_config.kwargs.get('column', '')})"
                for r in result.results
                if not r.success
            }
        )
        stats = result.statistics
        summary["suites"][definition.name] = {
            "success": bool(result.success),
            "evaluated": int(stats["evaluated_expectations"]),
            "successful": int(stats["successful_expectations"]),
            "failed": failed,
        }
        summary["success"] = summary["success"] and bool(result.success)
    if docs_sites:
        from jobs.expectations.docs import build_run_docs

        # Only tonight's pages: a full rebuild re-rendered every stored result, more each night.
        build_run_docs(context, docs_sites, os.path.join(reports_root, "data_docs"), run_name,
                       [definition.suite.name for definition in definitions])
        summary["data_docs"] = os.path.join(reports_root, "data_docs", "index.html")
    return summary


# ------------------------------------------------------------------------ main
#: A staging folder untouched this long was left by a crashed run (a validation takes minutes);
#: removed by the next validation of any date, as it holds raw records (personal data).
STALE_STAGING_HOURS = 12.0


def _remove_stale_staging(spark: SparkSession, root: str, max_age_hours: float) -> list[str]:
    """Delete the ``landing_date=*/run=*`` folders under ``root`` older than ``max_age_hours``; returns them."""
    fs, pattern = io._fs_path(spark, f"{root}/landing_date=*/run=*")
    cutoff_ms = (dt.datetime.now(dt.timezone.utc).timestamp() - max_age_hours * 3600) * 1000
    removed = []
    for status in fs.globStatus(pattern) or []:
        if status.getModificationTime() < cutoff_ms:
            fs.delete(status.getPath(), True)
            removed.append(str(status.getPath()))
    if removed:
        log.info("removed staging folders of crashed runs: %s", removed)
    return removed


def main(config: Config, date: str, spark: SparkSession | None = None, run_expectations_suites: bool = True) -> dict:
    """Validate landing date ``date``; return paths, counts and the bad rate (JSON-able).

    Raises:
        FileNotFoundError: no raw events landed for ``date``.
        DataQualityError: bad rate above ``config.validation.max_bad_rate``.
    """
    landing = check_date(date)
    spark = spark or get_spark(config, "validate_raw_events")
    lake = Lake(config)
    raw_path = lake.raw_events(landing)
    if not io.path_exists(spark, raw_path):
        raise FileNotFoundError(f"no raw events for landing date {landing}: {raw_path}")
    schemas = C.spark_schemas()
    events_table = lake.silver("events")
    # Unique per run: another run's scratch (concurrent, or left by a crash) is never this one's.
    staging = lake.silver(f"_staging/validate/landing_date={landing}/run={uuid.uuid4().hex}")
    _remove_stale_staging(spark, lake.silver("_staging/validate"), STALE_STAGING_HOURS)

    key = lake_key(config)  # None: pseudonymisation is off, the lake keeps the app's ids
    raw_users = read_raw_reference(spark, lake.raw_users(), schemas["raw_users"], landing)
    raw_apps = read_raw_reference(spark, lake.raw_apps(), schemas["raw_apps"], landing)
    known_users = raw_users.select(C.USER_ID).where(~_blank(C.USER_ID)).distinct()
    catalogue = raw_apps.select(C.APP_ID).where(~_blank(C.APP_ID)).distinct()

    # Ids accepted on earlier landing dates, within the profile window (late arrivals
    # live in their event-date partition, which the window covers).
    day = dt.date.fromisoformat(landing)
    window_start = (day - dt.timedelta(days=config.profiles.window_days)).isoformat()
    window_end = (day + dt.timedelta(days=1)).isoformat()
    earlier = io.read_partitions_between(spark, events_table, C.EVENT_DATE, window_start, window_end)
    if earlier is None:
        prior_ids = spark.createDataFrame([], T.StructType([T.StructField(C.EVENT_ID, T.StringType())]))
    else:
        prior_ids = earlier.where(F.col(C.LANDING_DATE) < F.lit(landing).cast("date")).select(C.EVENT_ID)

    flagged = assign_reasons(
        parse_lines(read_raw_lines(spark, raw_path)),
        known_users,
        catalogue,
        prior_ids,
        landing,
        config.validation.max_field_bytes,
        config.validation.future_tolerance_minutes,
    )
    # Materialise once: silver partitions read above are rewritten below.
    flagged.drop(_FIELDS).write.mode("overwrite").parquet(f"{staging}/flagged")
    flagged = spark.read.parquet(f"{staging}/flagged")

    # One small aggregate: lines per reason, and clean lines per event date.
    counts: dict[str | None, int] = {}
    clean_rows_by_date: dict[str, int] = {}
    grouped = flagged.groupBy(C.REASON, F.to_date(_TS).alias(C.EVENT_DATE)).count().collect()
    for row in grouped:
        counts[row[C.REASON]] = counts.get(row[C.REASON], 0) + int(row["count"])
        if row[C.REASON] is None:
            clean_rows_by_date[str(row[C.EVENT_DATE])] = int(row["count"])
    total = sum(counts.values())
    clean_count = counts.pop(None, 0)
    by_reason = {reason: counts.get(reason, 0) for reason in C.QUARANTINE_REASONS}
    quarantined = total - clean_count
    bad_rate = quarantined / total if total else 0.0

    quarantine_path = io.write_partition(
        quarantine_records(flagged), lake.silver("quarantine"), C.LANDING_DATE, landing
    )
    clean_stage = f"{staging}/clean"
    clean_rows = flagged.where(F.col(C.REASON).isNull())
    if key:
        # Before normalising, so the generated session ids derive from the pseudonym too.
        clean_rows = pseudonymise_users(clean_rows, key)
    normalise_events(clean_rows, landing).write.mode("overwrite").partitionBy(C.EVENT_DATE).parquet(clean_stage)
    event_dates = io.list_partitions(spark, clean_stage, C.EVENT_DATE)
    clean = io.read_partitions(spark, clean_stage, C.EVENT_DATE, event_dates)
    passed = bad_rate <= config.validation.max_bad_rate

    written: list[str] = []
    users_path = apps_path = None
    if passed:
        for event_date in event_dates:
            batch_rows = io.read_partition(spark, clean_stage, C.EVENT_DATE, event_date)
            existing = io.read_partition(spark, events_table, C.EVENT_DATE, event_date)
            merged = batch_rows
            if existing is not None:
                # Keep rows of other landing dates; replace this landing date's rows.
                others = existing.where(F.col(C.LANDING_DATE) != F.lit(landing).cast("date"))
                merged = others.unionByName(batch_rows)
            written.append(
                io.replace_partition(
                    spark, merged, events_table, C.EVENT_DATE, event_date, f"{staging}/replace"
                )
            )
        # Consent changes landed up to D (any event date), now including this batch.
        consent_events = read_consent_changes(spark, lake, landing)
        lake_users = pseudonymise_users(raw_users, key) if key else raw_users
        users_path = io.write_partition(
            users_snapshot(lake_users, consent_events), lake.silver("users"), "date", landing
        )
        if key:
            io.write_partition(user_pseudonyms(raw_users, key), lake.silver(PSEUDONYM_TABLE), "date", landing)
        apps_path = io.write_partition(apps_snapshot(raw_apps), lake.silver("apps"), "date", landing)

    report: dict[str, Any] = {
        "landing_date": landing,
        "total": total,
        "clean": clean_count,
        "quarantined": quarantined,
        "bad_rate": round(bad_rate, 6),
        "max_bad_rate": config.validation.max_bad_rate,
        "status": "passed" if passed else "failed",
        "by_reason": by_reason,
        "late_event_dates": sorted(d for d in event_dates if d < landing),
        "clean_by_event_date": dict(sorted(clean_rows_by_date.items())),
    }
    if run_expectations_suites and clean is not None:
        lake_known_users = pseudonymise_users(known_users, key) if key else known_users
        aggregates = batch_aggregates(clean, lake_known_users, catalogue)
        reports_root = lake.root + "/reports"
        report["expectations"] = run_expectations(clean, aggregates, reports_root, run_name=landing)
    report_path = io.write_json(spark, f"{lake.report('validation', landing)}/report.json", report)
    io.delete_path(spark, staging)

    if not passed:
        raise DataQualityError(landing, bad_rate, config.validation.max_bad_rate, by_reason)
    log.info("validated %s: %d lines, %d quarantined (%.4f)", landing, total, quarantined, bad_rate)
    return {
        "landing_date": landing,
        "total": total,
        "clean": clean_count,
        "quarantined": quarantined,
        "bad_rate": round(bad_rate, 6),
        "events_partitions": written,
        "quarantine_path": quarantine_path,
        "users_path": users_path,
        "apps_path": apps_path,
        "report_path": report_path,
        "gx_success": report.get("expectations", {}).get("success"),
        "late_event_dates": report["late_event_dates"],
    }


if __name__ == "__main__":
    from jobs import submit

    raise SystemExit(submit.run("validate_raw_events", main))
