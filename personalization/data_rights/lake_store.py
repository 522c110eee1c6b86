"""The data lake's side of data rights: raw JSON lines, Parquet tables, reports, the tombstone.

Deletion works file by file with plain pyarrow (no Spark), so it takes effect at
once instead of at the next nightly run:

- raw JSON lines (``raw/**.jsonl``): a line belongs to a user when its parsed
  ``user_id`` is theirs; a line that is not a JSON object with a ``user_id`` string
  (malformed, truncated, invalid UTF-8, ``user_id`` missing) belongs to every id
  that occurs in its raw text as a whole token.
- Parquet files anywhere in the lake (silver, gold, sim): rows whose ``user_id``
  is a deleted id, and rows whose ``raw_record`` (the quarantine's original line)
  contains one, are dropped. One file is rewritten per affected file, with the
  same schema, metadata, compression and timestamp encoding, so the layout Spark
  wrote stays as it was.
- ``reports/exports/<id>.json`` is deleted; other report files have the ids redacted.

``silver/deleted_users`` is the tombstone: the ids (the app's id in ``user_id``, the
lake's pseudonym in ``pseudonym``) and deletion times that the nightly scoring
(``models.scoring.load_deleted_users``) and the post-publish re-check read. It is
the one place the ids are kept on purpose.

Rows and lines are found by any token of the matcher (the app's id or its
pseudonym, see :mod:`personalization.data_rights.aliases`) and counted under the
requested id; ``silver/user_pseudonyms`` rows go with the users' other rows.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs import columns as C
from personalization import storage
from personalization.config import Config
from personalization.data_rights import files
from personalization.data_rights.ids import IdMatcher
from personalization.lake import Lake
from personalization.privacy import PSEUDONYM

#: Lines handed to the vectorised (RE2) pre-filter at a time.
LINE_BLOCK = 65_536
#: Lake-relative folder of the tombstone table.
TOMBSTONE = "silver/deleted_users"
#: Lake-relative folder of subject-access exports.
EXPORTS = "reports/exports"
#: Text files under reports/ that are searched and redacted (everything else is reported only).
TEXT_SUFFIXES = (".json", ".jsonl", ".html", ".htm", ".csv", ".txt", ".md", ".yaml", ".yml")
#: Largest text report redacted in memory (bytes); bigger ones are reported, not rewritten.
MAX_REDACT_BYTES = 256 << 20


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
    """The deleted ids a raw line belongs to (see the module docstring)."""
    if not candidate:
        return set()
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # malformed, truncated or not UTF-8: the raw text decides
        return matcher.find_bytes(line)
    if isinstance(record, dict):
        owner = record.get(C.USER_ID)
        if isinstance(owner, str) and owner:
            return matcher.owners([owner])
    return matcher.find_bytes(line)


def _candidates(lines: list[bytes], matcher: IdMatcher) -> list[bool]:
    """Lines that may belong to a deleted id: an id token, or a JSON escape that could spell one."""
    array = pa.array(lines, type=pa.binary())
    mask = pc.or_(pc.match_substring_regex(array, matcher.arrow_pattern),
                  pc.match_substring(array, "\\u"))
    return mask.to_pylist()


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
def purge_raw(config: Config, matcher: IdMatcher) -> Tally:
    """Remove the deleted users' lines from every raw JSON-lines file (atomic replace per file)."""
    lake = Lake(config)
    tally = Tally()
    for uri in files.list_files(f"{lake.root}/raw"):
        if not files.name_of(uri).endswith(".jsonl"):
            continue
        with files.local_copy(uri) as path:
            owned = dict(_owned_lines(path, matcher))
            if not owned:
                continue
            with files.replacement(uri) as tmp, open(path, "rb") as source, open(tmp, "wb") as target:
                for number, line in enumerate(source):
                    if number not in owned:
                        target.write(line)
        tally.add(Counter(owner for owners in owned.values() for owner in owners), files.relative(lake.root, uri))
    return tally


# -------------------------------------------------------------------- Parquet
def _string_like(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def _removal_mask(table: pa.Table, matcher: IdMatcher) -> tuple[pa.Array, Counter]:
    """Rows of one row group to drop (user_id is deleted, or raw_record mentions a deleted id)."""
    remove = pa.array([False] * table.num_rows, type=pa.bool_())
    owners: Counter = Counter()
    if C.USER_ID in table.column_names:
        user_ids = table.column(C.USER_ID)
        hit = pc.fill_null(pc.is_in(user_ids, value_set=pa.array(sorted(matcher.ids), type=user_ids.type)), False)
        if pc.any(hit).as_py():
            owners.update(matcher.owner_of[value] for value in user_ids.filter(hit).to_pylist())
            remove = pc.or_(remove, hit)
    if C.RAW_RECORD in table.column_names:
        records = table.column(C.RAW_RECORD)
        hit = pc.fill_null(pc.match_substring_regex(records, matcher.arrow_pattern), False)
        if pc.any(hit).as_py():
            exact = [bool(matcher.find_text(value)) if flagged and value is not None else False
                     for value, flagged in zip(records.to_pylist(), hit.to_pylist(), strict=True)]
            exact_mask = pa.array(exact, type=pa.bool_())
            newly = pc.and_(exact_mask, pc.invert(remove))
            for value in records.filter(newly).to_pylist():
                owners.update(matcher.find_text(value))
            remove = pc.or_(remove, exact_mask)
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


def _purge_parquet_file(uri: str, matcher: IdMatcher) -> Counter:
    """Rewrite one Parquet file without the deleted rows; returns rows removed per id."""
    with files.local_copy(uri) as path:
        source = pq.ParquetFile(path, coerce_int96_timestamp_unit="us")
        names = source.schema_arrow.names
        key_columns = [name for name in (C.USER_ID, C.RAW_RECORD)
                       if name in names and _string_like(source.schema_arrow.field(name).type)]
        if not key_columns:
            return Counter()
        masks = []
        owners: Counter = Counter()
        for group in range(source.num_row_groups):
            mask, group_owners = _removal_mask(source.read_row_group(group, columns=key_columns), matcher)
            masks.append(mask)
            owners.update(group_owners)
        if not owners:
            return owners
        with files.replacement(uri) as tmp:
            with pq.ParquetWriter(tmp, source.schema_arrow, **_writer_options(source)) as writer:
                for group, mask in enumerate(masks):
                    kept = source.read_row_group(group).filter(pc.invert(mask))
                    if kept.num_rows:
                        writer.write_table(kept)
    files.drop_checksum(uri)
    return owners


def purge_parquet(config: Config, matcher: IdMatcher) -> dict[str, Tally]:
    """Remove the deleted users' rows from every Parquet file of the lake, per zone."""
    lake = Lake(config)
    tallies: dict[str, Tally] = {}
    for uri in files.list_files(lake.root):
        if not _is_parquet(uri) or _is_tombstone(lake.root, uri):
            continue
        owners = _purge_parquet_file(uri, matcher)
        relative = files.relative(lake.root, uri)
        tallies.setdefault(_zone_of(relative), Tally()).add(owners, relative)
    return tallies


# -------------------------------------------------------------------- reports
def export_uri(config: Config, user_id: str) -> str:
    """Where :func:`personalization.data_rights.export_user` writes a user's export (id already validated)."""
    return f"{Lake(config).root}/{EXPORTS}/{user_id}.json"


def purge_reports(config: Config, matcher: IdMatcher) -> dict[str, Any]:
    """Delete the users' exports and redact their ids in other text reports."""
    lake = Lake(config)
    root = f"{lake.root}/reports"
    deleted: list[str] = []
    redacted: list[str] = []
    unredacted: list[str] = []
    for uri in files.list_files(root):
        relative = files.relative(lake.root, uri)
        name = files.name_of(uri)
        if relative.startswith(EXPORTS + "/") and name.endswith(".json") and name[:-5] in matcher.ids:
            files.delete_file(uri)
            deleted.append(relative)
            continue
        if not name.lower().endswith(TEXT_SUFFIXES):
            continue
        with files.local_copy(uri) as path:
            if os.path.getsize(path) > MAX_REDACT_BYTES:
                if scan_bytes(path, matcher):
                    unredacted.append(relative)
                continue
            with open(path, "rb") as handle:
                text = handle.read().decode("utf-8", errors="surrogateescape")
        new_text, found = matcher.redact_text(text)
        if found:
            with files.replacement(uri) as tmp:
                with open(tmp, "wb") as handle:
                    handle.write(new_text.encode("utf-8", errors="surrogateescape"))
            files.drop_checksum(uri)
            redacted.append(relative)
    return {"exports_deleted": deleted, "redacted": redacted, "too_large_to_redact": unredacted}


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


# ------------------------------------------------------------------- scanning
def _scan_parquet_file(path: str, matcher: IdMatcher) -> Counter:
    """Rows per id whose string (or list-of-string) columns contain a deleted id token."""
    source = pq.ParquetFile(path, coerce_int96_timestamp_unit="us")
    columns = [f.name for f in source.schema_arrow
               if _string_like(f.type) or ((pa.types.is_list(f.type) or pa.types.is_large_list(f.type))
                                           and _string_like(f.type.value_type))]
    found: Counter = Counter()
    if not columns:
        return found
    for group in range(source.num_row_groups):
        table = source.read_row_group(group, columns=columns)
        row_owners: dict[int, set[str]] = {}
        for column in table.columns:
            values = column.combine_chunks()
            if not _string_like(values.type):
                parents = pc.list_parent_indices(values)
                values = pc.list_flatten(values)
            else:
                parents = None
            hit = pc.fill_null(pc.match_substring_regex(values, matcher.arrow_pattern), False)
            if not pc.any(hit).as_py():
                continue
            indices = pc.indices_nonzero(hit).to_pylist()
            texts = values.take(pa.array(indices)).to_pylist()
            rows = indices if parents is None else parents.take(pa.array(indices)).to_pylist()
            for row, text in zip(rows, texts, strict=True):
                owners = matcher.find_text(text)
                if owners:
                    row_owners.setdefault(row, set()).update(owners)
        for owners in row_owners.values():
            found.update(owners)
    return found


def _scan_jsonl(path: str, matcher: IdMatcher) -> Counter:
    """Lines per id that mention a deleted id as a token or are owned by one."""
    found: Counter = Counter()
    with open(path, "rb") as handle:
        while True:
            block = list(itertools.islice(handle, LINE_BLOCK))
            if not block:
                return found
            for line, candidate in zip(block, _candidates(block, matcher), strict=True):
                if candidate:
                    found.update(matcher.find_bytes(line) | _line_owners(line, matcher, True))


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
    """Hits per store (raw, silver, quarantine, gold, lake_other) and the tombstone rows, per id."""
    lake = Lake(config)
    stores: dict[str, Tally] = {name: Tally() for name in ("raw", "silver", "quarantine", "gold", "lake_other")}
    retained = Tally()
    for uri in files.list_files(lake.root, include_hidden=True):
        name = files.name_of(uri)
        if name.endswith((".crc", ".tmp")) or name == "_SUCCESS":
            continue  # checksums of the data files, markers, our own in-flight temp files
        relative = files.relative(lake.root, uri)
        with files.local_copy(uri) as path:
            if _is_parquet(uri):
                found = _scan_parquet_file(path, matcher)
                (retained if _is_tombstone(lake.root, uri) else stores[_zone_of(relative)]).add(found, relative)
            elif name.endswith(".jsonl") and relative.startswith("raw/"):
                stores["raw"].add(_scan_jsonl(path, matcher), relative)
            else:
                stores["lake_other"].add(Counter(scan_bytes(path, matcher)), relative)
    return {
        "stores": {name: tally for name, tally in stores.items()},
        "tombstone": retained,
    }

