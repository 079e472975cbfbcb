"""Turn Blockchair-shaped transaction rows into the raw-lake frame (RAW_TRANSACTION_COLUMNS).

Both sources (daily dump TSVs and API JSON pages) deliver the same Blockchair fields, but with
different encodings: the dump gives every value as text and booleans as ``0``/``1``; the API gives
JSON numbers, ``true``/``false`` and extra columns (``id``, ``date``). ``to_raw_frame`` is the one
place that validates and types them, so every later layer can rely on the schema.

Error locations: every ``RawDataError`` names ``where`` (a file, or an endpoint without its key)
and the offending row. The row is named from the input frame's index: if the index has a name
(the dump reader uses ``"line"``) the message says ``line 57``; an unnamed index of strings is used
as-is (the API client labels rows ``"page q=time(...) offset=200 row 3"``); otherwise ``row <label>``.

De-duplication: a transaction hash can appear twice in a window (API page shifts, overlapping
dump files). Rows are de-duplicated by ``(minute, hash)``, keeping the first occurrence. The number
dropped is reported in ``frame.attrs[DUPLICATES_DROPPED_ATTR]`` (pandas ``attrs`` do not survive
most operations, so read it straight away; the dump and API results also carry it as a field).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from btc_anomaly_assets.common.schema import (
    BLOCKCHAIR_FIELDS,
    RAW_BOOL_FIELDS,
    RAW_FLOAT_FIELDS,
    RAW_INT_FIELDS,
    RAW_TRANSACTION_COLUMNS,
    TIME_BASES,
    TIME_BASIS_BLOCK,
    TIME_BASIS_FIRST_SEEN,
)

DUPLICATES_DROPPED_ATTR = "duplicates_dropped"

BLOCKCHAIR_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# Quantities that cannot be negative in a valid transaction; block_id (-1 = mempool), version
# (a signed field) and lock_time are checked separately or not at all.
NON_NEGATIVE_FIELDS = (
    "size",
    "weight",
    "input_count",
    "output_count",
    "input_total",
    "output_total",
    "fee",
    *RAW_FLOAT_FIELDS,
)
# USD conversions may be absent in a source without a price feed, and coin-days destroyed in a push
# source (mempool.space, Bitcoin Core) that does not report the age of the coins spent; every other
# field is required.
NULLABLE_FIELDS = frozenset(name for name in RAW_FLOAT_FIELDS if name.endswith("_usd") or name == "cdd_total")

_HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
_TRUE_TEXT = {"1", "true", "True", "TRUE"}
_FALSE_TEXT = {"0", "false", "False", "FALSE"}
# Largest integer a float64 holds exactly; a float-typed integer column beyond it lost precision.
_FLOAT_EXACT_INT_LIMIT = 2**53
_VALUE_PREVIEW_CHARS = 80


class RawDataError(ValueError):
    """A raw transaction row (or the frame's shape) is invalid.

    ``where`` is the source (file name or redacted endpoint), ``location`` the row (``line 57``),
    ``field`` the column at fault and ``value`` the offending value (``None`` for a missing column).
    """

    def __init__(self, message: str, *, where: str, field: str | None = None, location: str | None = None, value=None):
        super().__init__(message)
        self.where = where
        self.field = field
        self.location = location
        self.value = value


@dataclass(frozen=True)
class _Where:
    """The source description plus the input index, to name rows in error messages."""

    source: str
    index: pd.Index

    def row(self, position: int) -> str:
        label = self.index[position]
        if self.index.name:
            return f"{self.index.name} {label}"
        if isinstance(label, str):
            return label
        return f"row {label}"

    def error(self, position: int, field: str, problem: str, value) -> RawDataError:
        location = self.row(position)
        preview = repr(value)
        if len(preview) > _VALUE_PREVIEW_CHARS:
            preview = preview[:_VALUE_PREVIEW_CHARS] + "..."
        return RawDataError(
            f"{self.source}, {location}: field {field!r} {problem}: {preview}",
            where=self.source,
            field=field,
            location=location,
            value=value,
        )


def empty_raw_frame() -> pd.DataFrame:
    """A zero-row frame with exactly RAW_TRANSACTION_COLUMNS and their pandas dtypes."""
    frame = pd.DataFrame({column.name: pd.Series(dtype=_pandas_dtype(column.name)) for column in RAW_TRANSACTION_COLUMNS})
    frame.attrs[DUPLICATES_DROPPED_ATTR] = 0
    return frame


def to_raw_frame(rows: pd.DataFrame, *, time_basis: str, where: str) -> pd.DataFrame:
    """Validate and type Blockchair-shaped rows into the raw-lake frame.

    Returns exactly RAW_TRANSACTION_COLUMNS in order: int64 satoshi/counts, bool flags, float64
    USD/fee rates/cdd, naive-UTC ``datetime64[us]`` ``time``, ``minute`` = ``time`` floored to the
    minute, and ``time_basis`` filled. Columns not in the schema (API ``id``, ``date``) are dropped.
    Rows duplicated by ``(minute, hash)`` are dropped (first kept); the count is in
    ``result.attrs["duplicates_dropped"]``. A zero-row input gives ``empty_raw_frame()`` whatever
    its columns. Raises ``RawDataError`` naming ``where``, the row and the field for a missing
    column, an unparsable number/boolean/time/hash, a missing required value or a negative amount.
    """
    if time_basis not in TIME_BASES:
        raise ValueError(f"time_basis must be one of {TIME_BASES}, got {time_basis!r}")
    if len(rows) == 0:
        return empty_raw_frame()
    missing = [column.name for column in BLOCKCHAIR_FIELDS if column.name not in rows.columns]
    if missing:
        raise RawDataError(
            f"{where}: missing column(s) {missing}; got columns {list(rows.columns)}",
            where=where,
            field=missing[0],
        )
    locate = _Where(where, rows.index)
    typed: dict[str, pd.Series | np.ndarray] = {}
    for column in BLOCKCHAIR_FIELDS:
        values = rows[column.name]
        if column.name in RAW_INT_FIELDS:
            typed[column.name] = _parse_ints(values, column.name, locate)
        elif column.name in RAW_FLOAT_FIELDS:
            typed[column.name] = _parse_floats(values, column.name, locate)
        elif column.name in RAW_BOOL_FIELDS:
            typed[column.name] = _parse_bools(values, column.name, locate)
        elif column.name == "time":
            typed[column.name] = _parse_times(values, locate)
        elif column.name == "hash":
            typed[column.name] = _parse_hashes(values, locate)
        else:  # pragma: no cover - guards a future schema field nobody taught this module
            raise AssertionError(f"no parser for Blockchair field {column.name!r}")
    for name in NON_NEGATIVE_FIELDS:
        _reject_negative(typed[name], name, locate)
    _check_block_ids(typed["block_id"], time_basis, locate)

    frame = pd.DataFrame(typed)
    frame["minute"] = frame["time"].dt.floor("min")
    frame["time_basis"] = time_basis
    frame = frame[[column.name for column in RAW_TRANSACTION_COLUMNS]]
    return _drop_duplicate_hashes(frame)


def concat_raw_frames(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate raw frames (e.g. one per dump file) and de-duplicate across them.

    ``attrs["duplicates_dropped"]`` is the sum of the inputs' own counts plus the rows dropped here.
    """
    frames = list(frames)
    already_dropped = sum(int(frame.attrs.get(DUPLICATES_DROPPED_ATTR, 0)) for frame in frames)
    non_empty = [frame for frame in frames if len(frame)]
    if not non_empty:
        result = empty_raw_frame()
    else:
        result = _drop_duplicate_hashes(pd.concat(non_empty, ignore_index=True))
    result.attrs[DUPLICATES_DROPPED_ATTR] = already_dropped + int(result.attrs.get(DUPLICATES_DROPPED_ATTR, 0))
    return result


def _drop_duplicate_hashes(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without repeated (minute, hash) rows, on a fresh 0..n-1 index.

    ``frame`` is the caller's own new frame: it is re-indexed in place rather than through
    ``reset_index``, which copies every column (a day is ~80 MB a copy)."""
    duplicated = frame.duplicated(subset=["minute", "hash"], keep="first")
    dropped = int(duplicated.sum())
    result = frame.loc[~duplicated] if dropped else frame
    result.index = pd.RangeIndex(len(result))
    result.attrs[DUPLICATES_DROPPED_ATTR] = dropped
    return result


def _pandas_dtype(name: str) -> str:
    if name in RAW_INT_FIELDS:
        return "int64"
    if name in RAW_FLOAT_FIELDS:
        return "float64"
    if name in RAW_BOOL_FIELDS:
        return "bool"
    if name in ("time", "minute"):
        return "datetime64[us]"
    return "object"


def _is_blank_value(value) -> bool:
    """True for an absent value: None/NaN, or an empty string (an empty TSV field)."""
    if isinstance(value, str):
        return value.strip() == ""
    return value is None or (isinstance(value, float) and np.isnan(value))


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _arrow_text(values: pd.Series) -> pa.Array | pa.ChunkedArray | None:
    """The column as Arrow text when every value is a string (an Arrow string column, as the dump
    reader gives, or an object column of ``str``), else None."""
    if isinstance(values.dtype, pd.ArrowDtype):
        if not (pa.types.is_string(values.dtype.pyarrow_dtype) or pa.types.is_large_string(values.dtype.pyarrow_dtype)):
            return None
        text = pa.array(values)
    elif values.dtype == object:
        try:
            text = pa.array(values.to_numpy(), type=pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None
    else:
        return None
    return None if text.null_count else text


def _lenient(values: pd.Series) -> pd.Series:
    """The column in the form the per-value (error-naming) paths below read: Python objects."""
    return values.astype(object) if isinstance(values.dtype, pd.ArrowDtype) else values


def _strict_cast(values: pd.Series, arrow_type: pa.DataType) -> np.ndarray | None:
    """Text values parsed by Arrow's strict cast, or None if any value is not plain text of that type.

    The fast path for dump integers (about 2x faster than ``pd.to_numeric``, same values): Arrow
    accepts only plain decimal text (no blanks, no ``1.0``, no overflow). Anything it refuses goes
    through the lenient path, which also names the offending row.
    """
    text = _arrow_text(values)
    if text is None:
        return None
    try:
        return pc.cast(text, arrow_type).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None


def _fast_floats(values: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """``(numbers, blank)`` for a text column Arrow parses completely, blanks (empty or spaces) as NaN;
    None if any value is neither a number nor blank (the lenient path then names it).

    Arrow parses decimal text correctly rounded; ``pd.to_numeric`` drops digits past ~15
    significant ones (``cdd_total`` ``0.000046536260416667`` read as ``4.65362604166e-05``), so
    text goes through here and only numbers that are already numbers keep their values as they are.
    """
    text = _arrow_text(values)
    if text is None:
        return None
    blank = pc.equal(pc.utf8_trim_whitespace(text), "")
    try:
        parsed = pc.cast(pc.if_else(blank, pa.scalar(None, pa.string()), text), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    numbers = parsed.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    blank_mask = np.asarray(blank.to_numpy(zero_copy_only=False), dtype=bool)
    if (np.isnan(numbers) & ~blank_mask).any():  # the text "nan": not a number, not blank
        return None
    return numbers, blank_mask


def _parse_ints(values: pd.Series, name: str, locate: _Where) -> np.ndarray:
    if pd.api.types.is_bool_dtype(values.dtype):
        raise locate.error(0, name, "is a boolean, expected an integer", values.iloc[0])
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(dtype=np.int64)
    fast = _strict_cast(values, pa.int64())
    if fast is not None:
        return fast
    values = _lenient(values)
    numbers = pd.to_numeric(values, errors="coerce")
    failed = numbers.isna().to_numpy()
    if failed.any():
        position = _first(failed)
        value = values.iloc[position]
        problem = "is missing (integer required)" if _is_blank_value(value) else "is not a number"
        raise locate.error(position, name, problem, value)
    if pd.api.types.is_integer_dtype(numbers.dtype):
        return numbers.to_numpy(dtype=np.int64)
    as_float = numbers.to_numpy(dtype=np.float64)
    not_integral = (as_float != np.floor(as_float)) | (np.abs(as_float) >= _FLOAT_EXACT_INT_LIMIT)
    if not_integral.any():
        position = _first(not_integral)
        raise locate.error(position, name, "is not an exact integer", values.iloc[position])
    return as_float.astype(np.int64)


def _parse_floats(values: pd.Series, name: str, locate: _Where) -> np.ndarray:
    if pd.api.types.is_bool_dtype(values.dtype):
        raise locate.error(0, name, "is a boolean, expected a number", values.iloc[0])
    fast = None if pd.api.types.is_numeric_dtype(values.dtype) else _fast_floats(values)
    if pd.api.types.is_numeric_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.float64)
        blank = np.isnan(numbers)
    elif fast is not None:
        numbers, blank = fast
    else:
        values = _lenient(values)
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        # Only the (rare) NaN positions need the slower per-value look to tell blank from garbage.
        blank = np.zeros(len(numbers), dtype=bool)
        for position in np.flatnonzero(np.isnan(numbers)):
            value = values.iloc[position]
            if not _is_blank_value(value):
                raise locate.error(int(position), name, "is not a number", value)
            blank[position] = True
    if blank.any() and name not in NULLABLE_FIELDS:
        position = _first(blank)
        raise locate.error(position, name, "is missing (number required)", values.iloc[position])
    infinite = np.isinf(numbers)
    if infinite.any():
        position = _first(infinite)
        raise locate.error(position, name, "is not a finite number", values.iloc[position])
    return numbers


def _parse_bools(values: pd.Series, name: str, locate: _Where) -> np.ndarray:
    if pd.api.types.is_bool_dtype(values.dtype) and not values.isna().any():
        return values.to_numpy(dtype=bool)
    if pd.api.types.is_integer_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.int64)
        bad = (numbers != 0) & (numbers != 1)
        if bad.any():
            position = _first(bad)
            raise locate.error(position, name, "is not a boolean (0/1/true/false)", values.iloc[position])
        return numbers == 1
    text = _arrow_text(values)
    if text is not None:
        true = pc.is_in(text, pa.array(sorted(_TRUE_TEXT)))
        if pc.all(pc.or_(true, pc.is_in(text, pa.array(sorted(_FALSE_TEXT))))).as_py():
            return np.asarray(true.to_numpy(zero_copy_only=False), dtype=bool)
    values = _lenient(values)

    def to_bool(value):
        if value is True or value is False:
            return value
        if isinstance(value, (int, np.integer)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            if value in _TRUE_TEXT:
                return True
            if value in _FALSE_TEXT:
                return False
        return None

    parsed = values.map(to_bool)
    bad = parsed.isna().to_numpy()
    if bad.any():
        position = _first(bad)
        raise locate.error(position, name, "is not a boolean (0/1/true/false)", values.iloc[position])
    return parsed.to_numpy(dtype=bool)


def _parse_times(values: pd.Series, locate: _Where) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        times = values
        if getattr(times.dt, "tz", None) is not None:
            times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    else:
        times = _parse_time_text(values)
        failed = times.isna().to_numpy()
        if failed.any():
            position = _first(failed)
            value = values.iloc[position]
            if _is_blank_value(value):
                raise locate.error(position, "time", "is missing (timestamp required)", value)
            raise locate.error(position, "time", "is not a UTC timestamp 'YYYY-MM-DD HH:MM:SS'", value)
    missing = times.isna().to_numpy()
    if missing.any():
        position = _first(missing)
        raise locate.error(position, "time", "is missing (timestamp required)", values.iloc[position])
    return pd.Series(times.to_numpy().astype("datetime64[us]"))


def _parse_time_text(values: pd.Series) -> pd.Series:
    """Blockchair time text as datetimes, NaT where a value does not parse (one per input row)."""
    text = _arrow_text(values)
    if text is None:
        return pd.to_datetime(values, format=BLOCKCHAIR_TIME_FORMAT, errors="coerce")
    # A window has few distinct times (on block time, one per block): parse each once, as pandas does.
    encoded = pc.dictionary_encode(text)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.unify_dictionaries().combine_chunks()
    distinct = pd.to_datetime(pd.Series(encoded.dictionary.to_numpy(zero_copy_only=False), dtype=object),
                              format=BLOCKCHAIR_TIME_FORMAT, errors="coerce")
    return pd.Series(distinct.to_numpy()[encoded.indices.to_numpy()])


def _parse_hashes(values: pd.Series, locate: _Where) -> np.ndarray:
    text = _arrow_text(values)  # fast path: one vectorised RE2 match (its $ is the end of the text, as fullmatch)
    if text is not None and pc.all(pc.match_substring_regex(text, "^[0-9a-f]{64}$")).as_py():
        return values.to_numpy(dtype=object)
    values = _lenient(values)  # not all valid: the per-value check below names the first bad row
    valid = values.map(lambda v: isinstance(v, str) and _HASH_PATTERN.fullmatch(v) is not None).to_numpy(dtype=bool)
    if not valid.all():
        position = _first(~valid)
        raise locate.error(position, "hash", "is not a 64-character lowercase hex transaction id", values.iloc[position])
    return values.to_numpy(dtype=object)


def _reject_negative(numbers: np.ndarray, name: str, locate: _Where) -> None:
    with np.errstate(invalid="ignore"):
        negative = numbers < 0
    if negative.any():
        position = _first(negative)
        raise locate.error(position, name, "is negative", numbers[position].item())


def _check_block_ids(block_ids: np.ndarray, time_basis: str, locate: _Where) -> None:
    """Confirmed rows carry a height >= 0; mempool rows carry -1 (Blockchair's convention)."""
    if time_basis == TIME_BASIS_BLOCK:
        bad = block_ids < 0
        problem = "is negative for a confirmed (time_basis 'block') row"
    else:
        assert time_basis == TIME_BASIS_FIRST_SEEN
        bad = block_ids != -1
        problem = "is not -1 for a mempool (time_basis 'first_seen') row"
    if bad.any():
        position = _first(bad)
        raise locate.error(position, "block_id", problem, block_ids[position].item())
