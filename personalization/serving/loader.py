"""Bulk-load a Parquet dataset into one versioned serving table in bounded memory.

The dataset (a directory written by pandas/pyarrow or Spark, or a single file)
is read as record batches of :data:`BATCH_ROWS` rows with only the contract's
columns; each batch is converted to the table's logical types and written:
PostgreSQL through one ``COPY ... FROM STDIN (FORMAT csv)`` fed by a streaming
reader, SQLite with ``executemany`` inside the caller's transaction. Memory is
bounded by one batch, whatever the table size.

With a :class:`personalization.privacy.UserIdMap`, ``user_id`` columns are mapped
from the lake's pseudonyms back to the app's ids on the way in (an unknown
pseudonym fails the load: serving never shows a pseudonym).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
from sqlalchemy.engine import Connection

from personalization.serving.db import dialect_of
from personalization.serving.schema import TableSpec, physical_name

if TYPE_CHECKING:
    from personalization.privacy import UserIdMap

#: Rows per record batch (about 10 MB for the widest table).
BATCH_ROWS = 50_000
#: Columns a dataset may omit; they are loaded as NULL.
OPTIONAL_COLUMNS = {"reason_app_id"}


class ServingLoadError(ValueError):
    """A dataset does not match the serving contract (missing column, uncastable type)."""


@dataclass
class LoadStats:
    rows: int = 0
    #: Values of JSON columns that were not valid JSON (reported by the checks).
    invalid_json: int = 0
    invalid_json_examples: list[str] = field(default_factory=list)


def _as_text(array: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array if array.type == pa.string() else pc.cast(array, pa.string())


def _as_date_text(array: pa.Array) -> pa.Array:
    """``YYYY-MM-DD`` strings from date, timestamp or string columns."""
    if pa.types.is_timestamp(array.type):
        array = pc.cast(array, pa.date32())
    return _as_text(array)


def _as_json_text(array: pa.Array, stats: LoadStats) -> pa.Array:
    """Nested values are serialised; strings are kept and validated (bad ones counted)."""
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type) or pa.types.is_dictionary(array.type):
        array = _as_text(array)
        for value in array.to_pylist():
            if value is None:
                continue
            try:
                json.loads(value)
            except ValueError:
                stats.invalid_json += 1
                if len(stats.invalid_json_examples) < 5:
                    stats.invalid_json_examples.append(value[:80])
        return array
    return pa.array([None if v is None else json.dumps(v, sort_keys=True) for v in array.to_pylist()], pa.string())


def convert_batch(
    batch: pa.RecordBatch, table: TableSpec, fill: dict[str, Any], stats: LoadStats, source: str,
    user_map: UserIdMap | None = None,
) -> pa.RecordBatch:
    """One batch in the table's column order and logical types.

    ``fill`` gives constant values for columns the dataset lacks (model_version,
    variant, generated_for) and for ``published_at``, which is always the publish
    time. NaN floats become NULL so the null checks catch them on both databases.
    """
    arrays = []
    for column in table.columns:
        if column.name in fill and (column.name == "published_at" or column.name not in batch.schema.names):
            value = fill[column.name]
            arrays.append(pa.array([value] * batch.num_rows, pa.string() if isinstance(value, str) else None))
            continue
        if column.name not in batch.schema.names:
            arrays.append(pa.nulls(batch.num_rows, pa.string()))  # OPTIONAL_COLUMNS only (checked by caller)
            continue
        array = batch.column(batch.schema.get_field_index(column.name))
        try:
            if column.kind == "text":
                array = _as_text(array)
                if user_map is not None and column.name == "user_id":
                    array = user_map.map_array(array)
            elif column.kind == "int":
                array = pc.cast(array, pa.int64())
            elif column.kind == "real":
                array = pc.cast(array, pa.float64())
                array = pc.if_else(pc.is_nan(array), pa.scalar(None, pa.float64()), array)
            elif column.kind in ("date", "timestamp"):
                array = _as_date_text(array) if column.kind == "date" else _as_text(array)
            elif column.kind == "json":
                array = _as_json_text(array, stats)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise ServingLoadError(f"{source}: column {column.name} ({array.type}) is not {column.kind}: {error}") from None
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=list(table.column_names))


def iter_batches(path: str | None, table: TableSpec, fill: dict[str, Any], stats: LoadStats,
                 user_map: UserIdMap | None = None) -> Iterator[pa.RecordBatch]:
    """Converted record batches of a dataset; nothing for ``path=None`` (an empty table).

    The dataset and its columns are checked here, eagerly, so a contract error is
    raised before any row is written (not from inside a COPY).
    """
    if path is None:
        return iter(())
    try:
        dataset = ds.dataset(path, format="parquet")
    except (FileNotFoundError, pa.ArrowInvalid) as error:
        raise ServingLoadError(f"cannot read {table.name} from {path}: {error}") from None
    present = set(dataset.schema.names)
    missing = [c for c in table.column_names if c not in present and c not in fill and c not in OPTIONAL_COLUMNS]
    if missing:
        raise ServingLoadError(f"{path}: {table.name} lacks column(s) {missing}; has {sorted(present)}")
    columns = [c for c in table.column_names if c in present]

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in dataset.to_batches(columns=columns, batch_size=BATCH_ROWS):
            if batch.num_rows:
                stats.rows += batch.num_rows
                yield convert_batch(batch, table, fill, stats, path, user_map)

    return batches()


class _CsvStream(io.RawIOBase):
    """A read-only file over CSV bytes produced batch by batch (what ``copy_expert`` reads)."""

    def __init__(self, batches: Iterator[pa.RecordBatch]):
        self._batches = batches
        self._buffer = b""
        self._position = 0
        self._options = pa_csv.WriteOptions(include_header=False)
        #: An error raised while producing rows (psycopg2 would only report "error in .read() call").
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the current batch's CSV; ``b""`` only at the end."""
        while self._position >= len(self._buffer):
            try:
                batch = next(self._batches, None)
            except BaseException as error:
                self.error = error
                raise
            if batch is None:
                return b""
            sink = io.BytesIO()
            pa_csv.write_csv(batch, sink, self._options)
            self._buffer, self._position = sink.getvalue(), 0
        end = len(self._buffer) if size is None or size < 0 else self._position + size
        chunk = self._buffer[self._position:end]
        self._position += len(chunk)
        return chunk


def load_table(
    connection: Connection, table: TableSpec, version: int, path: str | None, fill: dict[str, Any],
    user_map: UserIdMap | None = None,
) -> LoadStats:
    """Load ``path`` into ``<table>__v<version>`` (already created) inside the caller's transaction.

    ``user_map``: maps the lake's pseudonyms in ``user_id`` to the app's ids (None: ids as stored).
    """
    stats = LoadStats()
    target = physical_name(table.name, version)
    columns = ", ".join(table.column_names)
    batches = iter_batches(path, table, fill, stats, user_map)
    if dialect_of(connection) == "postgresql":
        stream = _CsvStream(batches)
        cursor = connection.connection.dbapi_connection.cursor()
        try:
            cursor.copy_expert(f"COPY {target} ({columns}) FROM STDIN WITH (FORMAT csv)", stream, size=1 << 20)
        except Exception:
            if stream.error is not None:
                raise stream.error from None
            raise
        finally:
            cursor.close()
    else:
        insert = f"INSERT INTO {target} ({columns}) VALUES ({', '.join('?' for _ in table.columns)})"
        for batch in batches:
            rows = list(zip(*(column.to_pylist() for column in batch.columns), strict=True))
            connection.exec_driver_sql(insert, rows)
    return stats
