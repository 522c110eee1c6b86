"""Expectation suites for ``silver/events`` (see the package docstring)."""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe

from jobs import columns as C

#: Rows of the clean batch validated row by row (a deterministic hash sample).
SAMPLE_ROWS = 10_000

#: Columns every silver event row carries, the partition column event_date included.
SILVER_EVENT_COLUMNS = (*C.SILVER_EVENT_COLUMNS, C.EVENT_DATE)

#: Whole-batch aggregates computed in Spark (validate_raw_events.batch_aggregates), one-row table.
AGGREGATE_COLUMNS = C.BATCH_AGGREGATE_KEYS

# pandas dtypes that Arrow produces for the Spark types (nullable ints may become floats).
_STRING = ["object", "str", "string", "StringDtype", "string[python]", "string[pyarrow]"]
_NUMBER = ["int64", "int32", "Int64", "Int32", "float64", "float32", "Float64"]
_TIMESTAMP = [
    "datetime64[ns]", "datetime64[us]", "datetime64[ns, UTC]", "datetime64[us, UTC]",
    "datetime64[ns, Etc/UTC]", "datetime64[us, Etc/UTC]",
]
_BOOL = ["bool", "boolean", "object"]


def sample_suite(name: str = "silver_events_sample") -> gx.ExpectationSuite:
    """Row-level expectations on a sample of clean silver events."""
    expectations: list = [gxe.ExpectColumnToExist(column=column) for column in SILVER_EVENT_COLUMNS]
    for column in (C.EVENT_ID, C.USER_ID, C.EVENT_TYPE, C.TS, C.EVENT_DATE, C.SESSION_ID, C.DEVICE_CLASS):
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
    expectations += [
        gxe.ExpectColumnValuesToBeUnique(column=C.EVENT_ID),
        gxe.ExpectColumnValuesToBeInTypeList(column=C.EVENT_ID, type_list=_STRING),
        gxe.ExpectColumnValuesToBeInTypeList(column=C.USER_ID, type_list=_STRING),
        gxe.ExpectColumnValuesToBeInTypeList(column=C.TS, type_list=_TIMESTAMP),
        gxe.ExpectColumnValuesToBeInTypeList(column=C.LOCAL_HOUR, type_list=_NUMBER),
        gxe.ExpectColumnValuesToBeInTypeList(column=C.AMOUNT, type_list=_NUMBER),
        gxe.ExpectColumnValuesToBeInTypeList(column=C.DURATION_S, type_list=_NUMBER),
        gxe.ExpectColumnValuesToBeInTypeList(column=C.IS_LATE, type_list=_BOOL),
        gxe.ExpectColumnValuesToBeInSet(column=C.EVENT_TYPE, value_set=list(C.EVENT_TYPES)),
        # Surfaces and devices are not quarantine reasons: unknown values are reported here.
        gxe.ExpectColumnValuesToBeInSet(column=C.SURFACE, value_set=list(C.SURFACES)),
        gxe.ExpectColumnValuesToBeInSet(column=C.DEVICE, value_set=list(C.DEVICES)),
        gxe.ExpectColumnValuesToBeInSet(column=C.DEVICE_CLASS, value_set=["phone", "tablet", "desktop"]),
        gxe.ExpectColumnValuesToBeInSet(column=C.DAYTIME, value_set=["night", "morning", "afternoon", "evening"]),
        gxe.ExpectColumnValuesToBeInSet(column=C.CONSENT_TYPE, value_set=list(C.CONSENT_TYPES)),
        gxe.ExpectColumnValuesToBeBetween(column=C.LOCAL_HOUR, min_value=0, max_value=23),
        gxe.ExpectColumnValuesToBeBetween(column=C.LOCAL_WEEKDAY, min_value=1, max_value=7),
        gxe.ExpectColumnValuesToBeBetween(column=C.RATING_VALUE, min_value=1, max_value=5),
        gxe.ExpectColumnValuesToBeBetween(column=C.AMOUNT, min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column=C.DURATION_S, min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column=C.POSITION, min_value=1),
    ]
    return gx.ExpectationSuite(name=name, expectations=expectations)


def aggregate_suite(name: str = "silver_events_aggregates") -> gx.ExpectationSuite:
    """Whole-batch expectations on the one-row aggregate table (AGGREGATE_COLUMNS)."""
    zero_columns = [column for column in AGGREGATE_COLUMNS if column != "n_rows"]
    expectations: list = [gxe.ExpectTableRowCountToEqual(value=1)]
    expectations += [gxe.ExpectColumnToExist(column=column) for column in AGGREGATE_COLUMNS]
    expectations.append(gxe.ExpectColumnValuesToBeBetween(column="n_rows", min_value=0))
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0, max_value=0) for column in zero_columns
    ]
    return gx.ExpectationSuite(name=name, expectations=expectations)
