"""The data lake's side of data rights: raw JSON lines, Parquet tables, reports, run records, the tombstone.

Deletion works file by file with plain pyarrow (no Spark), so it takes effect at
once instead of at the next nightly run. It removes only records that *belong* to a
requested user, by the user-id field (see :mod:`personalization.data_rights.ids`):

- raw JSON lines (``raw/**.jsonl``): a line belongs to a user when its parsed
  top-level ``user_id`` is theirs; a line that is not a JSON object with a
  ``user_id`` string (malformed, truncated, invalid UTF-8) belongs to the id written
  as ``"user_id": "<id>"`` in its bytes, never to an id that merely occurs in it.
  Catalogue records (``raw/apps``) have no ``user_id`` and are never touched.
- Parquet files anywhere in the lake (silver, gold, sim): rows whose ``user_id``
  column is a requested id (or its pseudonym), and quarantine rows whose original
  line (``raw_record``, a string or binary column, and ``raw_bytes``; bytes that are
  not UTF-8 are read as bytes, never decoded) belongs to one by the rule above, are
  dropped. One file is rewritten per affected file, with the same schema, metadata,
  compression and timestamp encoding, so the layout Spark wrote stays as it was.
- ``reports/exports/<id>.json`` is deleted. Nothing else under ``reports/`` (the GX
  project and its suites, Data Docs, validation and experiment reports) is rewritten:
  they hold no per-user records, and verification reports any id found there.

``silver/deleted_users`` is the tombstone: the ids (the app's id in ``user_id``, the
lake's pseudonym in ``pseudonym``) and deletion times that the nightly scoring
(``models.scoring.load_deleted_users``) and the post-publish re-check read. Its
``_pending/<request>.json`` files are the journal of deletions in progress (written
before any store is touched, removed when every store is done), so an interrupted
deletion is finished by the next ``delete_users`` of the same ids. Both are kept on
purpose and reported as retained, not as hits.

Verification searches more widely than deletion removes: any whole-token mention
of an id (or its pseudonym) in any lake file, and in the run records and logs under
``var/`` (``var/runs/**``, the Airflow task logs), counts as a hit.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs import columns as C
from personalization import storage
from personalization.config import Config
from personalization.data_rights import files
from personalization.data_rights.ids import IdMatcher, validate_request_ids
from personalization.lake import Lake
from personalization.privacy import PSEUDONYM

#: Lines handed to the vectorised (RE2) pre-filter at a time.
LINE_BLOCK = 65_536
#: Lake-relative folder of the tombstone table.
TOMBSTONE = "silver/deleted_users"
#: Lake-relative folder of subject-access exports.
EXPORTS = "reports/exports"
#: Quarantine columns holding the original line: its text (``raw_record``, a string column in older
#: partitions, possibly holding bytes that are not UTF-8) and its exact bytes (``raw_bytes``, binary).
RAW_LINE_COLUMNS = (C.RAW_RECORD, "raw_bytes")
#: Lake-relative folder of the journal of deletions in progress (ignored by Spark and pyarrow datasets).
PENDING = f"{TOMBSTONE}/_pending"
#: Folders under ``var/`` where the product writes run records and logs (searched by verification).
RUN_RECORD_DIRS = ("runs",)
#: The DAG that carries privacy requests: its task logs name the requested ids on purpose.
PRIVACY_DAG = "privacy_requests"


@dataclass
class Tally:
    """Per-store counts of one pass: ``items`` removed or found per id, and where."""

    by_user: Counter = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)

    def add(self, owners: Counter | dict[str, int], where: str) -> None:
        if owners:
            self.by_user.update(owners)
            self.files.append(where)

    def as_dict(self) -> dict[str, Any]:
        return {"records": int(sum(self.by_user.values())), "by_user": dict(sorted(self.by_user.items())),
                "files": len(self.files)}


# --------------------------------------------------------------------- helpers
def _zone_of(relative_path: str) -> str:
    """Store name of a lake file for reports: raw, silver, quarantine, gold, or other."""
    first = relative_path.split("/", 1)[0]
    if relative_path.startswith("silver/quarantine/"):
        return "quarantine"
    return first if first in ("raw", "silver", "gold") else "lake_other"


def _is_parquet(uri: str) -> bool:
    return files.name_of(uri).endswith(".parquet")


def _is_tombstone(root: str, uri: str) -> bool:
    return files.relative(root, uri).startswith(TOMBSTONE + "/")


def _line_owners(line: bytes, matcher: IdMatcher, candidate: bool) -> set[str]:
    """The requested ids a raw line belongs to, by its user-id field (see the module docstring)."""
    return matcher.record_owners(line) if candidate else set()


def _candidates(lines: list[bytes], matcher: IdMatcher) -> list[bool]:
    """Lines that may belong to a requested id: an id token, or a JSON escape that could spell one."""
    array = pa.array(lines, type=pa.binary())
    mask = pc.or_(pc.match_substring_regex(array, matcher.arrow_pattern),
                  pc.match_substring(array, "\\u"))
    return pc.fill_null(mask, False).to_pylist()


def _owned_lines(path: str, matcher: IdMatcher) -> Iterator[tuple[int, set[str]]]:
    """``(line number, owners)`` of the lines of a local JSON-lines file that belong to deleted ids."""
    with open(path, "rb") as handle:
        number = 0
        while True:
            block = list(itertools.islice(handle, LINE_BLOCK))
            if not block:
                return
            for offset, (line, candidate) in enumerate(zip(block, _candidates(block, matcher), strict=True)):
                owners = _line_owners(line, matcher, candidate)
                if owners:
                    yield number + offset, owners
            number += len(block)


# ------------------------------------------------------------------ raw lines
def purge_raw(config: Config, matcher: IdMatcher, *, dry_run: bool = False) -> Tally:
    """Remove the users' lines from every raw JSON-lines file (atomic replace per file).

    With ``dry_run`` the lines are only counted: nothing is written.
    """
    lake = Lake(config)
    tally = Tally()
    for uri, path, owned in _owned_files(f"{lake.root}/raw", matcher):
        if not dry_run:
            with files.replacement(uri) as tmp, open(path, "rb") as source, open(tmp, "wb") as target:
                for number, line in enumerate(source):
                    if number not in owned:
                        target.write(line)
        tally.add(Counter(owner for owners in owned.values() for owner in owners), files.relative(lake.root, uri))
    return tally


def _owned_files(prefix: str, matcher: IdMatcher) -> Iterator[tuple[str, str, dict[int, set[str]]]]:
    """``(uri, local path, {line number: owners})`` of the JSON-lines files under ``prefix`` with owned lines."""
    for uri in files.list_files(prefix):
        if not files.name_of(uri).endswith(".jsonl"):
            continue
        with files.local_copy(uri) as path:
            owned = dict(_owned_lines(path, matcher))
            if owned:
                yield uri, path, owned


def owned_raw_lines(config: Config, prefix: str, matcher: IdMatcher) -> list[dict[str, Any]]:
    """The raw lines under ``prefix`` that belong to the ids (for exports), in file and line order.

    Each: ``file`` (lake-relative), ``line_number`` (from 1) and ``record`` (the parsed
    object) or, for a line that does not parse, ``line`` (its text, bytes that are not
    UTF-8 shown as U+FFFD) and ``line_base64`` when it is not valid UTF-8.
    """
    lake = Lake(config)
    found: list[dict[str, Any]] = []
    for uri, path, owned in _owned_files(prefix, matcher):
        with open(path, "rb") as handle:
            for number, line in enumerate(handle):
                if number not in owned:
                    continue
                entry: dict[str, Any] = {"file": files.relative(lake.root, uri), "line_number": number + 1}
                body = line.rstrip(b"\r\n")
                try:
                    record = json.loads(body)
                except (ValueError, RecursionError):
                    record = None
                if isinstance(record, dict):
                    entry["record"] = record
                else:
                    entry.update(_line_text(body))
                found.append(entry)
    return found


def _line_text(data: bytes) -> dict[str, str]:
    """``{"line": text}`` (bytes that are not UTF-8 as U+FFFD), plus ``line_base64`` when it is not UTF-8."""
    shown = {"line": data.decode("utf-8", errors="replace")}
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        shown["line_base64"] = base64.b64encode(data).decode("ascii")
    return shown


def known_users(config: Config, matcher: IdMatcher) -> set[str]:
    """The requested ids that own an account record (``raw/users`` line), by the user-id field."""
    known: set[str] = set()
    for _, _, owned in _owned_files(Lake(config).raw_users(), matcher):
        for owners in owned.values():
            known |= owners
    return known


# -------------------------------------------------------------------- Parquet
def _string_like(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def _binary_like(data_type: pa.DataType) -> bool:
    return pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type)


def _as_bytes(values: Any) -> Any:
    """A string column viewed as bytes (no UTF-8 check: a stored line may not be UTF-8); others unchanged."""
    if pa.types.is_large_string(values.type):
        return values.cast(pa.large_binary())
    if pa.types.is_string(values.type):
        return values.cast(pa.binary())
    return values


def _removal_mask(table: pa.Table, matcher: IdMatcher) -> tuple[pa.Array, Counter]:
    """Rows of one row group to drop: ``user_id`` is requested, or ``raw_record`` belongs to a requested id."""
    remove = pa.array([False] * table.num_rows, type=pa.bool_())
    owners: Counter = Counter()
    if C.USER_ID in table.column_names:
        user_ids = table.column(C.USER_ID)
        hit = pc.fill_null(pc.is_in(user_ids, value_set=pa.array(sorted(matcher.ids), type=user_ids.type)), False)
        if pc.any(hit).as_py():
            owners.update(matcher.owner_of[value] for value in user_ids.filter(hit).to_pylist())
            remove = pc.or_(remove, hit)
    for name in RAW_LINE_COLUMNS:
        if name not in table.column_names:
            continue
        records = _as_bytes(table.column(name))
        flagged = pc.fill_null(pc.or_(pc.match_substring_regex(records, matcher.arrow_pattern),
                                      pc.match_substring(records, "\\u")), False)
        if not pc.any(flagged).as_py():
            continue
        exact = []
        for value, flag, already in zip(records.to_pylist(), flagged.to_pylist(), remove.to_pylist(), strict=True):
            found = matcher.record_owners(value) if flag and value is not None else set()
            if found and not already:  # a row attributed by both columns counts once
                owners.update(found)
            exact.append(bool(found))
        remove = pc.or_(remove, pa.array(exact, type=pa.bool_()))
    return remove, owners


def _writer_options(parquet_file: pq.ParquetFile) -> dict[str, Any]:
    """Write options that reproduce how the original file was encoded (Spark compatibility)."""
    schema = parquet_file.schema
    int96 = any(schema.column(i).physical_type == "INT96" for i in range(len(schema)))
    compression = "snappy"
    if parquet_file.metadata.num_row_groups and parquet_file.metadata.num_columns:
        compression = parquet_file.metadata.row_group(0).column(0).compression.lower()
    return {
        "compression": "none" if compression == "uncompressed" else compression,
        # Spark reads nanosecond timestamps only as longs: keep INT96 where Spark wrote INT96.
        "use_deprecated_int96_timestamps": int96,
    }


def _purge_parquet_file(uri: str, matcher: IdMatcher, dry_run: bool = False) -> Counter:
    """Rewrite one Parquet file without the users' rows; returns rows removed (or, dry, to remove) per id."""
    with files.local_copy(uri) as path:
        source = pq.ParquetFile(path, coerce_int96_timestamp_unit="us")
        schema = source.schema_arrow
        key_columns = [name for name in (C.USER_ID, *RAW_LINE_COLUMNS) if name in schema.names
                       and (_string_like(schema.field(name).type)
                            or (name in RAW_LINE_COLUMNS and _binary_like(schema.field(name).type)))]
        if not key_columns:
            return Counter()
        masks = []
        owners: Counter = Counter()
        for group in range(source.num_row_groups):
            mask, group_owners = _removal_mask(source.read_row_group(group, columns=key_columns), matcher)
            masks.append(mask)
            owners.update(group_owners)
        if not owners or dry_run:
            return owners
        with files.replacement(uri) as tmp:
            with pq.ParquetWriter(tmp, schema, **_writer_options(source)) as writer:
                for group, mask in enumerate(masks):
                    kept = source.read_row_group(group).filter(pc.invert(mask))
                    if kept.num_rows:
                        writer.write_table(kept)
    files.drop_checksum(uri)
    return owners


def purge_parquet(config: Config, matcher: IdMatcher, *, dry_run: bool = False) -> dict[str, Tally]:
    """Remove the users' rows from every Parquet file of the lake, per zone (``dry_run``: count only)."""
    lake = Lake(config)
    tallies: dict[str, Tally] = {}
    for uri in files.list_files(lake.root):
        if not _is_parquet(uri) or _is_tombstone(lake.root, uri):
            continue
        owners = _purge_parquet_file(uri, matcher, dry_run)
        relative = files.relative(lake.root, uri)
        tallies.setdefault(_zone_of(relative), Tally()).add(owners, relative)
    return tallies


def owned_quarantine_rows(config: Config, matcher: IdMatcher) -> list[dict[str, Any]]:
    """The quarantined lines that belong to the ids (for exports), oldest landing date first.

    Each row: ``landing_date``, ``reason``, ``event_id``, ``line`` (the text; bytes that
    are not UTF-8 shown as U+FFFD) and, when the stored bytes are not valid UTF-8,
    ``line_base64`` (the exact bytes). Nothing is decoded strictly, so no stored byte
    can make an export fail.
    """
    lake = Lake(config)
    rows: list[dict[str, Any]] = []
    for uri in files.list_files(lake.silver("quarantine")):
        if not _is_parquet(uri):
            continue
        partition = dict(part.split("=", 1) for part in files.relative(lake.root, uri).split("/")[:-1] if "=" in part)
        with files.local_copy(uri) as path:
            source = pq.ParquetFile(path, coerce_int96_timestamp_unit="us")
            names = source.schema_arrow.names
            key_columns = [name for name in (C.USER_ID, *RAW_LINE_COLUMNS) if name in names]
            if not key_columns:
                continue
            for group in range(source.num_row_groups):
                mask, owners = _removal_mask(source.read_row_group(group, columns=key_columns), matcher)
                if not owners:
                    continue
                table = source.read_row_group(group).filter(mask)
                for name in RAW_LINE_COLUMNS:
                    if name in table.column_names:
                        table = table.set_column(table.column_names.index(name), name, _as_bytes(table.column(name)))
                for row in table.to_pylist():
                    exact = row.get("raw_bytes") if row.get("raw_bytes") is not None else row.get(C.RAW_RECORD)
                    rows.append({"landing_date": partition.get(C.LANDING_DATE), C.REASON: row.get(C.REASON),
                                 C.EVENT_ID: row.get(C.EVENT_ID), **_line_text(exact or b"")})
    return sorted(rows, key=lambda row: (str(row["landing_date"]), str(row["event_id"]), str(row["line"])))


# -------------------------------------------------------------------- reports
def export_uri(config: Config, user_id: str) -> str:
    """Where :func:`personalization.data_rights.export_user` writes a user's export (id already validated)."""
    return f"{Lake(config).root}/{EXPORTS}/{user_id}.json"


def purge_reports(config: Config, matcher: IdMatcher, *, dry_run: bool = False) -> dict[str, Any]:
    """Delete the users' own exports; no other report is rewritten (see the module docstring)."""
    lake = Lake(config)
    deleted: list[str] = []
    for uri in files.list_files(f"{lake.root}/{EXPORTS}"):
        name = files.name_of(uri)
        if name.endswith(".json") and name[:-5] in matcher.ids:
            if not dry_run:
                files.delete_file(uri)
            deleted.append(files.relative(lake.root, uri))
    return {"exports_deleted": deleted}


# ------------------------------------------------------------------ tombstone
def write_tombstone(config: Config, user_ids: list[str], request_id: str, deleted_at: dt.datetime,
                    aliases: dict[str, str] | None = None) -> str:
    """Append one Parquet file of ``(user_id, pseudonym, deleted_at, request_id)`` to the tombstone table.

    One row per (user, alias) from ``aliases`` (``{pseudonym: user_id}``), one row with a
    null pseudonym for a user without one, so scoring can leave out either form.
    """
    rows = [(owner, token) for token, owner in sorted((aliases or {}).items()) if owner in set(user_ids)]
    rows += [(user_id, None) for user_id in user_ids if user_id not in {owner for owner, _ in rows}]
    table = pa.table({
        C.USER_ID: pa.array([owner for owner, _ in rows], type=pa.string()),
        PSEUDONYM: pa.array([token for _, token in rows], type=pa.string()),
        "deleted_at": pa.array([deleted_at] * len(rows), type=pa.timestamp("us", tz="UTC")),
        "request_id": pa.array([request_id] * len(rows), type=pa.string()),
    })
    stamp = deleted_at.strftime("%Y%m%dT%H%M%S%fZ")
    uri = f"{Lake(config).root}/{TOMBSTONE}/part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(uri, sink.getvalue().to_pybytes())
    return uri


def read_tombstone(config: Config) -> list[tuple[str, dt.datetime]]:
    """``(user_id, latest deleted_at)`` of every deleted user, oldest deletion first."""
    latest: dict[str, dt.datetime] = {}
    for uri in files.list_files(f"{Lake(config).root}/{TOMBSTONE}"):
        if not _is_parquet(uri):
            continue
        with files.local_copy(uri) as path:
            table = pq.read_table(path, columns=[C.USER_ID, "deleted_at"])
        for user_id, when in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True):
            if user_id and (user_id not in latest or when > latest[user_id]):
                latest[user_id] = when
    return sorted(latest.items(), key=lambda item: (item[1], item[0]))


# -------------------------------------------------------------------- journal
def write_pending(config: Config, request_id: str, user_ids: list[str], requested_by: str,
                  started_at: dt.datetime) -> str:
    """Record a deletion in progress (before any store is touched); returns its URI."""
    uri = f"{Lake(config).root}/{PENDING}/{request_id}.json"
    storage.write_text(uri, json.dumps({"request_id": request_id, "user_ids": user_ids,
                                        "requested_by": requested_by, "started_at": started_at.isoformat()}))
    return uri


def read_pending(config: Config) -> list[dict[str, Any]]:
    """The deletions in progress (interrupted ones included), oldest first, each with its ``uri``.

    A journal file that cannot be read or names invalid ids is reported with
    ``user_ids`` empty and an ``error``, never trusted.
    """
    found = []
    for uri in files.list_files(f"{Lake(config).root}/{PENDING}", include_hidden=True):
        if not uri.endswith(".json"):
            continue
        try:
            entry = json.loads(storage.read_bytes(uri))
            entry["user_ids"] = validate_request_ids(entry["user_ids"])
        except (ValueError, KeyError, TypeError) as error:
            entry = {"user_ids": [], "error": f"{type(error).__name__}: {error}"}
        entry["uri"] = uri
        found.append(entry)
    return sorted(found, key=lambda item: (str(item.get("started_at")), item["uri"]))


def finish_pending(config: Config, entries: list[dict[str, Any]], done: set[str]) -> list[str]:
    """Close the journal entries whose users are all in ``done``; narrow the others. Returns closed requests."""
    closed = []
    for entry in entries:
        if entry.get("error"):
            continue
        left = [user for user in entry["user_ids"] if user not in done]
        if left == entry["user_ids"]:
            continue
        if left:
            storage.write_text(entry["uri"], json.dumps({**{k: v for k, v in entry.items() if k != "uri"},
                                                         "user_ids": left}))
        else:
            files.delete_file(entry["uri"])
            closed.append(str(entry.get("request_id")))
    return closed


# ------------------------------------------------------------------- scanning
def _scan_parquet_file(path: str, matcher: IdMatcher) -> tuple[Counter, Counter]:
    """``(hits, mentions)``: rows per id found in string, binary or list-of-string columns (bytes never decoded).

    A row is a hit for an id when a column holds it as a token, except the original-line
    columns of the quarantine (``raw_record``, ``raw_bytes``): there a row is a hit only
    when the line belongs to the id (its user-id field), and a mere mention of the id in
    another user's line is counted under ``mentions``.
    """
    source = pq.ParquetFile(path, coerce_int96_timestamp_unit="us")

    def searchable(data_type: pa.DataType) -> bool:
        return _string_like(data_type) or _binary_like(data_type)

    columns = [f.name for f in source.schema_arrow
               if searchable(f.type) or ((pa.types.is_list(f.type) or pa.types.is_large_list(f.type))
                                         and searchable(f.type.value_type))]
    hits: Counter = Counter()
    mentions: Counter = Counter()
    if not columns:
        return hits, mentions
    for group in range(source.num_row_groups):
        table = source.read_row_group(group, columns=columns)
        row_owners: dict[int, set[str]] = {}
        row_mentions: dict[int, set[str]] = {}
        for name, column in zip(table.column_names, table.columns, strict=True):
            values = column.combine_chunks()
            if not searchable(values.type):
                parents = pc.list_parent_indices(values)
                values = pc.list_flatten(values)
            else:
                parents = None
            values = _as_bytes(values)
            hit = pc.fill_null(pc.or_(pc.match_substring_regex(values, matcher.arrow_pattern),
                                      pc.match_substring(values, "\\u")), False)
            if not pc.any(hit).as_py():
                continue
            indices = pc.indices_nonzero(hit).to_pylist()
            texts = values.take(pa.array(indices)).to_pylist()
            rows = indices if parents is None else parents.take(pa.array(indices)).to_pylist()
            for row, text in zip(rows, texts, strict=True):
                tokens = matcher.find_bytes(text)
                owners = matcher.record_owners(text) if name in RAW_LINE_COLUMNS else tokens
                if owners:
                    row_owners.setdefault(row, set()).update(owners)
                if tokens - owners:
                    row_mentions.setdefault(row, set()).update(tokens - owners)
        for owners in row_owners.values():
            hits.update(owners)
        for row, tokens in row_mentions.items():
            mentions.update(tokens - row_owners.get(row, set()))
    return hits, mentions


def _scan_jsonl(path: str, matcher: IdMatcher) -> tuple[Counter, Counter]:
    """``(hits, mentions)``: lines per id that belong to it, and lines of others (or of nobody) naming it."""
    hits: Counter = Counter()
    mentions: Counter = Counter()
    with open(path, "rb") as handle:
        while True:
            block = list(itertools.islice(handle, LINE_BLOCK))
            if not block:
                return hits, mentions
            for line, candidate in zip(block, _candidates(block, matcher), strict=True):
                if candidate:
                    owners = _line_owners(line, matcher, True)
                    hits.update(owners)
                    mentions.update(matcher.find_bytes(line) - owners)


def scan_bytes(path: str, matcher: IdMatcher, chunk_bytes: int = 8 << 20) -> set[str]:
    """Ids found anywhere in a local file's bytes (UTF-8 or UTF-32), in chunks that overlap by one id."""
    found: set[str] = set()
    tail = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            window = tail + chunk
            found |= matcher.find_binary(window)
            tail = window[-matcher.overlap:]
    return found


def scan_lake(config: Config, matcher: IdMatcher) -> dict[str, Any]:
    """Hits and mentions per store (raw, silver, quarantine, gold, lake_other) and the retained tombstone/journal.

    ``mentions`` are raw and quarantined lines that name an id without belonging to it
    (another user's line, a line of nobody): reported, never removed, not hits.
    """
    lake = Lake(config)
    zones = ("raw", "silver", "quarantine", "gold", "lake_other")
    stores: dict[str, Tally] = {name: Tally() for name in zones}
    mentions: dict[str, Tally] = {name: Tally() for name in zones}
    retained = Tally()
    for uri in files.list_files(lake.root, include_hidden=True):
        name = files.name_of(uri)
        if name.endswith((".crc", ".tmp")) or name == "_SUCCESS":
            continue  # checksums of the data files, markers, our own in-flight temp files
        relative = files.relative(lake.root, uri)
        with files.local_copy(uri) as path:
            if _is_tombstone(lake.root, uri):  # the tombstone and the journal: kept on purpose
                found = _scan_parquet_file(path, matcher)[0] if _is_parquet(uri) else Counter(scan_bytes(path, matcher))
                retained.add(found, relative)
            elif _is_parquet(uri):
                hits, named = _scan_parquet_file(path, matcher)
                stores[_zone_of(relative)].add(hits, relative)
                mentions[_zone_of(relative)].add(named, relative)
            elif name.endswith(".jsonl") and relative.startswith("raw/"):
                hits, named = _scan_jsonl(path, matcher)
                stores["raw"].add(hits, relative)
                mentions["raw"].add(named, relative)
            else:
                stores["lake_other"].add(Counter(scan_bytes(path, matcher)), relative)
    return {"stores": stores, "mentions": mentions, "tombstone": retained}


def run_record_roots(config: Config) -> list[Path]:
    """Local folders where the product writes run records and logs (``var/runs``, the Airflow task logs)."""
    roots = [Path(config.var_dir) / name for name in RUN_RECORD_DIRS]
    roots.append(Path(config.airflow_home) / "logs")
    return roots


def scan_run_records(config: Config, matcher: IdMatcher) -> tuple[Tally, Tally]:
    """``(hits, retained)``: files per id under the run-record and log folders that mention an id.

    Run records and the nightly logs must hold no personal id, so a mention is a hit.
    The task logs of the ``privacy_requests`` DAG are the request itself (which ids, who
    asked), like the audit log: kept on purpose and counted as retained.
    """
    hits, retained = Tally(), Tally()
    var = Path(config.var_dir)
    for root in run_record_roots(config):
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            where = f"var/{path.relative_to(var)}" if path.is_relative_to(var) else str(path)
            request_log = f"dag_id={PRIVACY_DAG}" in path.parts
            (retained if request_log else hits).add(Counter(scan_bytes(str(path), matcher)), where)
    return hits, retained
