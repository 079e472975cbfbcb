"""Per-minute aggregates of raw transactions in DuckDB SQL: the reference for the Spark version.

``aggregate_minutes_duckdb`` produces one row per minute of ``[start, end)`` with the columns of
``MINUTE_AGGREGATE_COLUMNS`` (same order, canonical pandas dtypes, naive-UTC ``minute``). An
empty minute is a row with ``tx_count`` 0, zero counts, an empty ``block_ids`` list and NULL
(NaN) statistics.

Definitions shared with ``spark_aggregates`` (both engines must agree to ~1e-9 relative):
- ``tx_count`` / ``tx_count_5min`` count every row, coinbase included; every other statistic
  (values, fees, sizes, input/output counts, fan-in/out counts) uses non-coinbase rows only.
- Means are ``sum / count`` of the per-minute partial sums, so the trailing 5-minute means are
  means over the rows of those 5 minutes (not a mean of per-minute means).
- Medians and percentiles are exact, linearly interpolated (DuckDB ``quantile_cont`` = Spark
  ``percentile``).
- Fee rate in sat/vB is ``fee_per_kwu / 250``; vsize is ``weight / 4``.
- ``avg_fee_to_value_ratio`` is the mean of ``fee / output_total`` over rows with ``fee > 0``
  and ``output_total > 0`` (the tutorial's filter; the per-row value is not rounded).
- ``block_ids`` / ``block_count`` ignore ``block_id < 0`` (mempool rows).
- ``fee_outlier_tx_count`` counts non-coinbase rows whose fee rate is ``>= FEE_OUTLIER_MULTIPLE``
  (20) times the minute's median fee rate, and only when that median is > 0 (with a zero median
  every paying row would count). A count must be *identical* in both engines, not close, so this
  median is not taken from ``quantile_cont`` / ``percentile``: between the two middle values
  ``lo`` and ``hi``, DuckDB 2.0.1 returns ``0.5 * lo + 0.5 * hi`` and Spark 4.3
  ``lo + (hi - lo) * 0.5`` (measured), which differ in the last bit for ~14% of pairs and would
  move a row sitting exactly at 20x across the threshold. Both engines compute it explicitly as
  ``0.5 * lo + 0.5 * hi`` of the sorted rates (``lo == hi`` for an odd count): the value of
  ``median_fee_rate_sat_vb`` up to that last bit.
- USD sums are NULL when every USD value is NULL (plain SQL ``sum``).

The trailing 5-minute columns need ``TRAILING_MINUTES`` minutes of raw rows before ``start``;
the caller passes raw rows covering ``[start - TRAILING_MINUTES, end)`` and only ``[start, end)``
is returned.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from btc_anomaly_assets.common.schema import (
    FEE_PER_KWU_PER_SAT_VB,
    MINUTE_AGGREGATE_COLUMNS,
    SATOSHI_PER_BTC,
    column_names,
)
from btc_anomaly_assets.common.windows import minute_window

# Minutes before ``start`` whose raw rows the trailing 5-minute statistics need.
TRAILING_MINUTES = 4
FAN_THRESHOLD = 10
# A fee rate this many times the minute's median makes a transaction a fee outlier. On the real
# 13-14 Aug 2025 blocks 1-102 transactions per block (median 15) pay 20x their block's median;
# the larger counts come from blocks whose median sits at the ~0.3 sat/vB floor. 20 rather than
# 25+: 200 transactions paying 50x the median still count after they lift a 260-transaction
# block's median 2.2-fold (at 25x they would not).
FEE_OUTLIER_MULTIPLE = 20.0

# Raw columns the aggregation reads.
AGGREGATION_INPUT_COLUMNS = [
    "minute",
    "time_basis",
    "block_id",
    "is_coinbase",
    "size",
    "weight",
    "input_count",
    "output_count",
    "output_total",
    "output_total_usd",
    "fee",
    "fee_usd",
    "fee_per_kwu",
]

MINUTE_AGGREGATE_NAMES = column_names(MINUTE_AGGREGATE_COLUMNS)


class AggregationError(ValueError):
    """Input that cannot be aggregated; the message names the window, column or minute."""


def validate_window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """Normalised ``(start, end)``; raises ``AggregationError`` for an empty or reversed window."""
    start_ts, end_ts = minute_window(start, end, AggregationError)
    return start_ts.to_pydatetime(), end_ts.to_pydatetime()


# The aggregation, written once as SQL with {source} standing for the raw rows. $1 = first minute
# of the lookback, $2 = start, $3 = end.
_SQL = f"""
WITH src AS (
    SELECT {", ".join(AGGREGATION_INPUT_COLUMNS)},
           is_coinbase = FALSE AS non_coinbase
    FROM {{source}}
    WHERE minute >= $1 AND minute < $3
),
sorted_fee_rates AS (
    SELECT minute, list(fee_per_kwu / {FEE_PER_KWU_PER_SAT_VB} ORDER BY fee_per_kwu / {FEE_PER_KWU_PER_SAT_VB}) AS rates
    FROM src
    WHERE non_coinbase AND fee_per_kwu IS NOT NULL
    GROUP BY minute
),
fee_medians AS (
    -- The explicit median of the outlier rule (see the module docstring); lists are 1-based.
    SELECT minute,
           0.5::DOUBLE * rates[(len(rates) + 1) // 2] + 0.5::DOUBLE * rates[len(rates) // 2 + 1] AS fee_rate_median
    FROM sorted_fee_rates
),
per_minute AS (
    SELECT
        minute,
        min(time_basis) AS time_basis,
        max(time_basis) AS time_basis_max,
        count(*) AS tx_count,
        list(DISTINCT block_id ORDER BY block_id) FILTER (WHERE block_id >= 0) AS block_ids,
        count(*) FILTER (WHERE non_coinbase) AS n,
        sum(output_total) FILTER (WHERE non_coinbase) AS value_sum,
        sum(fee) FILTER (WHERE non_coinbase) AS fee_sum,
        sum(fee::DOUBLE / output_total) FILTER (WHERE non_coinbase AND fee > 0 AND output_total > 0) AS ratio_sum,
        count(*) FILTER (WHERE non_coinbase AND fee > 0 AND output_total > 0) AS ratio_n,
        sum(input_count) FILTER (WHERE non_coinbase) AS input_count_sum,
        sum(output_count) FILTER (WHERE non_coinbase) AS output_count_sum,
        sum(size) FILTER (WHERE non_coinbase) AS size_sum,
        sum(weight) FILTER (WHERE non_coinbase) AS weight_sum,
        max(output_total) FILTER (WHERE non_coinbase) AS value_max,
        quantile_cont(output_total, 0.5) FILTER (WHERE non_coinbase) AS value_median,
        quantile_cont(fee_per_kwu / {FEE_PER_KWU_PER_SAT_VB}, 0.5) FILTER (WHERE non_coinbase) AS fee_rate_p50,
        quantile_cont(fee_per_kwu / {FEE_PER_KWU_PER_SAT_VB}, 0.9) FILTER (WHERE non_coinbase) AS fee_rate_p90,
        quantile_cont(fee_per_kwu / {FEE_PER_KWU_PER_SAT_VB}, 0.99) FILTER (WHERE non_coinbase) AS fee_rate_p99,
        count(*) FILTER (
            WHERE non_coinbase AND fee_rate_median > 0
              AND fee_per_kwu / {FEE_PER_KWU_PER_SAT_VB} >= {FEE_OUTLIER_MULTIPLE}::DOUBLE * fee_rate_median
        ) AS fee_outlier_tx_count,
        count(*) FILTER (WHERE non_coinbase AND input_count >= {FAN_THRESHOLD}) AS fan_in_10_count,
        count(*) FILTER (WHERE non_coinbase AND output_count >= {FAN_THRESHOLD}) AS fan_out_10_count,
        sum(output_total_usd) FILTER (WHERE non_coinbase) AS total_value_usd,
        sum(fee_usd) FILTER (WHERE non_coinbase) AS total_fee_usd
    FROM src LEFT JOIN fee_medians USING (minute)
    GROUP BY minute
),
grid AS (
    SELECT range AS minute FROM range($1::TIMESTAMP, $3::TIMESTAMP, INTERVAL 1 MINUTE)
),
filled AS (
    SELECT g.minute, p.* EXCLUDE (minute, tx_count, n, ratio_n, fan_in_10_count, fan_out_10_count, fee_outlier_tx_count),
           coalesce(p.tx_count, 0) AS tx_count,
           coalesce(p.n, 0) AS n,
           coalesce(p.ratio_n, 0) AS ratio_n,
           coalesce(p.fan_in_10_count, 0) AS fan_in_10_count,
           coalesce(p.fan_out_10_count, 0) AS fan_out_10_count,
           coalesce(p.fee_outlier_tx_count, 0) AS fee_outlier_tx_count
    FROM grid g LEFT JOIN per_minute p ON p.minute = g.minute
),
windowed AS (
    -- The grid has every minute, so 4 preceding rows are exactly the 4 preceding minutes.
    SELECT *,
        sum(tx_count) OVER w AS tx_count_5min,
        sum(n) OVER w AS n_5,
        sum(value_sum) OVER w AS value_sum_5,
        sum(fee_sum) OVER w AS fee_sum_5,
        sum(ratio_sum) OVER w AS ratio_sum_5,
        sum(ratio_n) OVER w AS ratio_n_5,
        sum(input_count_sum) OVER w AS input_count_sum_5,
        sum(output_count_sum) OVER w AS output_count_sum_5,
        sum(size_sum) OVER w AS size_sum_5
    FROM filled
    WINDOW w AS (ORDER BY minute ROWS BETWEEN {TRAILING_MINUTES} PRECEDING AND CURRENT ROW)
)
SELECT
    minute,
    time_basis,
    time_basis_max,
    tx_count,
    coalesce(len(block_ids), 0) AS block_count,
    coalesce(block_ids, []::BIGINT[]) AS block_ids,
    value_sum / nullif(n, 0) AS avg_value_sat,
    fee_sum / nullif(n, 0) AS avg_fee_sat,
    ratio_sum / nullif(ratio_n, 0) AS avg_fee_to_value_ratio,
    input_count_sum / nullif(n, 0) AS avg_input_count,
    output_count_sum / nullif(n, 0) AS avg_output_count,
    size_sum / nullif(n, 0) AS avg_tx_size_bytes,
    value_sum::DOUBLE / {SATOSHI_PER_BTC} AS total_value_btc,
    value_max::DOUBLE / {SATOSHI_PER_BTC} AS max_value_btc,
    value_median / {SATOSHI_PER_BTC} AS median_value_btc,
    fee_sum::DOUBLE / {SATOSHI_PER_BTC} AS total_fee_btc,
    fee_rate_p50 AS median_fee_rate_sat_vb,
    fee_rate_p90 AS p90_fee_rate_sat_vb,
    fee_rate_p99 AS p99_fee_rate_sat_vb,
    fee_outlier_tx_count,
    weight_sum / 4.0 / nullif(n, 0) AS mean_vsize_vb,
    weight_sum / 4.0 AS total_vsize_vb,
    fan_in_10_count,
    fan_out_10_count,
    total_value_usd,
    total_fee_usd,
    tx_count_5min,
    value_sum_5 / nullif(n_5, 0) AS avg_value_sat_5min,
    fee_sum_5 / nullif(n_5, 0) AS avg_fee_sat_5min,
    ratio_sum_5 / nullif(ratio_n_5, 0) AS avg_fee_to_value_ratio_5min,
    input_count_sum_5 / nullif(n_5, 0) AS avg_input_count_5min,
    output_count_sum_5 / nullif(n_5, 0) AS avg_output_count_5min,
    size_sum_5 / nullif(n_5, 0) AS avg_tx_size_bytes_5min
FROM windowed
WHERE minute >= $2
ORDER BY minute
"""


def aggregate_minutes_duckdb(
    raw: pd.DataFrame | str,
    start: datetime,
    end: datetime,
    *,
    con: duckdb.DuckDBPyConnection | None = None,
) -> pd.DataFrame:
    """One row per minute of ``[start, end)`` with ``MINUTE_AGGREGATE_COLUMNS``.

    ``raw`` is a frame with the raw transaction columns or a Parquet path/glob; it should cover
    ``[start - TRAILING_MINUTES min, end)`` (rows outside are ignored). ``con`` lets the caller
    reuse a connection; a private in-memory one is used otherwise. Raises ``AggregationError``
    for a bad window, missing columns, or a minute that mixes time bases.
    """
    start, end = validate_window(start, end)
    lookback_start = start - timedelta(minutes=TRAILING_MINUTES)
    own_connection = con is None
    con = duckdb.connect() if own_connection else con
    view = f"raw_for_minute_aggregates_{uuid.uuid4().hex}"
    try:
        _register_source(con, view, raw)
        try:
            _check_columns(con, view, raw)
            result = con.execute(_SQL.format(source=view), [lookback_start, start, end]).df()
        finally:
            con.execute(f"DROP VIEW IF EXISTS {view}")
    finally:
        if own_connection:
            con.close()
    check_single_time_basis(result)
    return conform_minute_aggregates(result.drop(columns=["time_basis_max"]))


def _register_source(con: duckdb.DuckDBPyConnection, view: str, raw: pd.DataFrame | str) -> None:
    if isinstance(raw, str):
        escaped = raw.replace("'", "''")
        con.execute(f"CREATE TEMP VIEW {view} AS SELECT * FROM read_parquet('{escaped}', hive_partitioning = false)")
        return
    if not isinstance(raw, pd.DataFrame):
        raise AggregationError(f"raw must be a pandas DataFrame or a Parquet path, got {type(raw).__name__}")
    frame = raw
    if "minute" in frame.columns and isinstance(frame["minute"].dtype, pd.DatetimeTZDtype):
        # A tz-aware minute would become TIMESTAMPTZ and compare in DuckDB's session zone.
        frame = frame.assign(minute=frame["minute"].dt.tz_convert("UTC").dt.tz_localize(None))
    relation = con.from_df(frame)
    relation.create_view(view, replace=True)


def _check_columns(con: duckdb.DuckDBPyConnection, view: str, raw: pd.DataFrame | str) -> None:
    present = {row[0] for row in con.execute(f"DESCRIBE {view}").fetchall()}
    missing = [c for c in AGGREGATION_INPUT_COLUMNS if c not in present]
    if missing:
        where = f"Parquet {raw!r}" if isinstance(raw, str) else "raw frame"
        raise AggregationError(f"{where} is missing raw columns {missing}")


def check_single_time_basis(frame: pd.DataFrame) -> None:
    """Raise if a minute mixes ``block`` and ``first_seen`` rows (their statistics are not comparable).

    ``frame`` carries ``time_basis`` (the minimum) and ``time_basis_max`` per minute.
    """
    mixed = frame[frame["time_basis"].notna() & (frame["time_basis"] != frame["time_basis_max"])]
    if len(mixed):
        minutes = ", ".join(str(m) for m in mixed["minute"].head(5))
        raise AggregationError(f"minutes mix time bases (block and first_seen rows): {minutes}")


def conform_minute_aggregates(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` in the canonical pandas form of ``MINUTE_AGGREGATE_COLUMNS``.

    Column order as declared; ``minute`` datetime64[us] naive UTC; counts int64; statistics
    float64 (NaN for NULL); ``time_basis`` object (str or None); ``block_ids`` object holding
    sorted Python lists of ints. Both engines pass their result through here, so their frames
    compare equal with ``pandas.testing.assert_frame_equal``.
    """
    missing = [c for c in MINUTE_AGGREGATE_NAMES if c not in frame.columns]
    if missing:
        raise AggregationError(f"aggregate frame is missing columns {missing}")
    out = {}
    for column in MINUTE_AGGREGATE_COLUMNS:
        values = frame[column.name]
        if column.arrow_type == pa.timestamp("us"):
            series = pd.to_datetime(values)
            if series.dt.tz is not None:
                series = series.dt.tz_convert("UTC").dt.tz_localize(None)
            out[column.name] = series.astype("datetime64[us]")
        elif column.arrow_type == pa.int64():
            if values.isna().any():
                raise AggregationError(f"count column {column.name} has NULLs")
            out[column.name] = values.astype(np.int64)
        elif column.arrow_type == pa.float64():
            out[column.name] = pd.to_numeric(values, errors="raise").astype(np.float64)
        elif column.arrow_type == pa.string():
            out[column.name] = values.astype(object).where(values.notna(), None)
        elif column.arrow_type == pa.list_(pa.int64()):
            out[column.name] = values.map(_sorted_int_list).astype(object)
        else:
            raise AggregationError(f"no pandas form for {column.name} ({column.arrow_type})")
    return pd.DataFrame(out).reset_index(drop=True)


def _sorted_int_list(value) -> list[int]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return sorted(int(v) for v in value)

