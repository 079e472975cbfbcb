"""Per-minute aggregates of the raw Parquet lake in Spark (classic or Spark Connect).

Same contract and definitions as ``aggregates_sql.aggregate_minutes_duckdb`` (the reference):
one row per minute of ``[start, end)`` with ``MINUTE_AGGREGATE_COLUMNS``. Spark reads the lake
itself (``spark.read.parquet``), never a pandas frame, because shipping rows from the client is
the slow path and over Connect it runs out of server memory.

Only DataFrame APIs that Spark Connect supports are used, and the function module is chosen
from the session (``spark_api``), so the same code runs on a classic and a Connect session, even
both in one process.
One call is one Spark job graph ending in a single ``toPandas``; backfill a day in one call.

Time handling: ``minute`` is read as ``TIMESTAMP_NTZ`` (the lake stores naive UTC) and window
bounds are NTZ literals built from strings, so neither the session nor the Python process time
zone can shift a minute.
"""

from __future__ import annotations

import logging
import warnings
from datetime import datetime, timedelta

import pandas as pd

from btc_anomaly_assets.aggregates.aggregates_sql import (
    FAN_THRESHOLD,
    FEE_OUTLIER_MULTIPLE,
    TRAILING_MINUTES,
    AggregationError,
    check_single_time_basis,
    conform_minute_aggregates,
    validate_window,
)
from btc_anomaly_assets.common.schema import FEE_PER_KWU_PER_SAT_VB, MINUTE_AGGREGATE_COLUMNS, SATOSHI_PER_BTC, column_names

logger = logging.getLogger(__name__)

# The raw columns read, with their Spark SQL types (a subset of RAW_TRANSACTION_COLUMNS).
_READ_SCHEMA_DDL = ", ".join(
    [
        "minute TIMESTAMP_NTZ",
        "time_basis STRING",
        "block_id BIGINT",
        "is_coinbase BOOLEAN",
        "size BIGINT",
        "weight BIGINT",
        "input_count BIGINT",
        "output_count BIGINT",
        "output_total BIGINT",
        "output_total_usd DOUBLE",
        "fee BIGINT",
        "fee_usd DOUBLE",
        "fee_per_kwu DOUBLE",
    ]
)
_FEE_RATE_PERCENTILES = [0.5, 0.9, 0.99]


def aggregate_minutes_spark(spark, raw_path: str, start: datetime, end: datetime) -> pd.DataFrame:
    """One row per minute of ``[start, end)`` from the lake at ``raw_path`` (``.../raw_transactions``).

    Reads only the hour folders overlapping ``[start - TRAILING_MINUTES min, end)``. Raises
    ``AggregationError`` for a bad window, a missing lake, or a minute that mixes time bases.
    """
    F, Window = spark_api(spark)
    start, end = validate_window(start, end)
    lookback_start = start - timedelta(minutes=TRAILING_MINUTES)
    n_minutes = int((end - lookback_start) / timedelta(minutes=1))

    raw = _read_window(spark, raw_path, lookback_start, end).where(
        (F.col("minute") >= _ntz(F, lookback_start)) & (F.col("minute") < _ntz(F, end))
    )
    per_minute = _per_minute_partials(F, raw)
    grid = spark.range(n_minutes).select(F.timestamp_add("MINUTE", F.col("id"), _ntz(F, lookback_start)).alias("minute"))
    zero_filled = ["tx_count", "n", "ratio_n", "fan_in_10_count", "fan_out_10_count", "fee_outlier_tx_count"]
    filled = grid.join(per_minute, on="minute", how="left").fillna(0, subset=zero_filled)

    # The grid has every minute, so 4 preceding rows are exactly the 4 preceding minutes.
    # No partitionBy: the grid is small (1,444 rows for a day) and a single ordered partition is fine.
    trailing = Window.orderBy("minute").rowsBetween(-TRAILING_MINUTES, 0)
    trailing_sums = {
        name: F.sum(name).over(trailing)
        for name in ["tx_count", "n", "value_sum", "fee_sum", "ratio_sum", "ratio_n", "input_count_sum", "output_count_sum", "size_sum"]
    }
    windowed = filled.select("*", *[expr.alias(f"{name}_5") for name, expr in trailing_sums.items()])

    result = windowed.where(F.col("minute") >= _ntz(F, start)).select(*_output_columns(F)).orderBy("minute")
    with warnings.catch_warnings():
        # The Connect client warns each time it serialises the unpartitioned window; intended here.
        warnings.filterwarnings("ignore", message=".*No Partition Defined for Window operation.*")
        frame = result.toPandas()
    # Connect attaches query metrics as frame.attrs, which pandas deep-copies on every column access.
    frame.attrs.clear()
    check_single_time_basis(frame)
    return conform_minute_aggregates(frame.drop(columns=["time_basis_max"]))


def spark_api(spark):
    """``(functions, Window)`` that build expressions for ``spark``'s kind of session.

    ``pyspark.sql.functions`` picks classic or Connect from a process-wide flag, not from the
    session, so a process holding both kinds (tests, benchmark) must choose explicitly.
    """
    if is_connect_session(spark):
        from pyspark.sql.connect import functions
        from pyspark.sql.connect.window import Window

        return functions, Window
    from pyspark.sql import Window, functions
    from pyspark.sql.utils import is_remote

    if is_remote():
        raise AggregationError(
            "a classic SparkSession was passed, but this process is in Spark Connect mode "
            "(SPARK_CONNECT_MODE_ENABLED is set): pass the Connect session instead"
        )
    return functions, Window


def is_connect_session(spark) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")


def _ntz(F, ts: datetime):
    return F.lit(ts.strftime("%Y-%m-%d %H:%M:%S")).cast("timestamp_ntz")


def hour_folders(lookback_start: datetime, end: datetime) -> list[str]:
    """Relative ``date=YYYY-MM-DD/hour=HH`` folders of the lake that overlap ``[lookback_start, end)``."""
    hour = lookback_start.replace(minute=0, second=0, microsecond=0)
    folders = []
    while hour < end:
        folders.append(f"date={hour:%Y-%m-%d}/hour={hour:%H}")
        hour += timedelta(hours=1)
    return folders


def _read_window(spark, raw_path: str, lookback_start: datetime, end: datetime):
    """The lake's rows in the overlapping hour folders, as one glob so only those folders are listed.

    A window whose folders do not exist yet (no transactions written there) reads as no rows;
    a missing lake root is an error.
    """
    from pyspark.errors import AnalysisException

    root = raw_path.rstrip("/")
    # Hadoop globs expand {a/b,c/d} alternatives that contain slashes, so one path covers every hour.
    pattern = f"{root}/{{{','.join(hour_folders(lookback_start, end))}}}"
    reader = spark.read.schema(_READ_SCHEMA_DDL).option("basePath", root)
    try:
        frame = reader.parquet(pattern)
        frame.columns  # a Connect session resolves the paths lazily: force it here, not in toPandas
    except AnalysisException as exc:
        if _condition(exc) != "PATH_NOT_FOUND":
            raise
        _require_local_root(root)
        logger.warning(
            "no raw lake folders under %s for [%s, %s): every minute of the window is empty", root, lookback_start, end
        )
        return spark.createDataFrame([], _READ_SCHEMA_DDL)
    return frame.select(*[field.split(" ")[0] for field in _READ_SCHEMA_DDL.split(", ")])


def _condition(exc) -> str | None:
    get = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)
    return get() if get else None


def _require_local_root(root: str) -> None:
    """Raise when a local lake root does not exist, so a wrong path is not read as "no data".

    Assumes a scheme-less path is on a filesystem this process sees (classic or local Connect
    server). URLs (``s3a://``, ``hdfs://``) are not checked: object stores have no folders.
    """
    from pathlib import Path

    if root.startswith("file:"):
        root = root[len("file:"):]
    if "://" not in root and not Path(root).is_dir():
        raise AggregationError(f"raw lake path {root} does not exist")


def _per_minute_partials(F, raw):
    """Per-minute counts and sums that both the minute and the trailing statistics are built from."""
    non_coinbase = F.col("is_coinbase") == F.lit(False)
    has_ratio = non_coinbase & (F.col("fee") > 0) & (F.col("output_total") > 0)

    def nc(column):
        return F.when(non_coinbase, column)

    fee_rate = F.col("fee_per_kwu") / F.lit(FEE_PER_KWU_PER_SAT_VB)
    partials = raw.groupBy("minute").agg(
        F.min("time_basis").alias("time_basis"),
        F.max("time_basis").alias("time_basis_max"),
        F.count(F.lit(1)).alias("tx_count"),
        F.array_sort(F.collect_set(F.when(F.col("block_id") >= 0, F.col("block_id")))).alias("block_ids"),
        F.count(nc(F.lit(1))).alias("n"),
        F.sum(nc(F.col("output_total"))).alias("value_sum"),
        F.sum(nc(F.col("fee"))).alias("fee_sum"),
        F.sum(F.when(has_ratio, F.col("fee") / F.col("output_total"))).alias("ratio_sum"),
        F.count(F.when(has_ratio, F.lit(1))).alias("ratio_n"),
        F.sum(nc(F.col("input_count"))).alias("input_count_sum"),
        F.sum(nc(F.col("output_count"))).alias("output_count_sum"),
        F.sum(nc(F.col("size"))).alias("size_sum"),
        F.sum(nc(F.col("weight"))).alias("weight_sum"),
        F.max(nc(F.col("output_total"))).alias("value_max"),
        F.percentile(nc(F.col("output_total")), 0.5).alias("value_median"),
        F.percentile(nc(fee_rate), _FEE_RATE_PERCENTILES).alias("fee_rates"),
        F.array_sort(F.collect_list(nc(fee_rate))).alias("sorted_fee_rates"),
        F.count(F.when(non_coinbase & (F.col("input_count") >= FAN_THRESHOLD), F.lit(1))).alias("fan_in_10_count"),
        F.count(F.when(non_coinbase & (F.col("output_count") >= FAN_THRESHOLD), F.lit(1))).alias("fan_out_10_count"),
        F.sum(nc(F.col("output_total_usd"))).alias("total_value_usd"),
        F.sum(nc(F.col("fee_usd"))).alias("total_fee_usd"),
    )
    outliers = _fee_outlier_count(F, F.col("sorted_fee_rates"))
    return partials.withColumn("fee_outlier_tx_count", outliers).drop("sorted_fee_rates")


def _fee_outlier_count(F, sorted_rates):
    """Rates in ``sorted_rates`` (ascending, non-coinbase) that are >= FEE_OUTLIER_MULTIPLE x their median.

    The median is ``0.5 * lo + 0.5 * hi`` of the two middle values, written out exactly as in the
    DuckDB reference rather than taken from ``percentile`` (which computes ``lo + (hi - lo) * 0.5``
    and can differ in the last bit), so the count is identical (see ``aggregates_sql``).
    0 when there is no rate or the median is not > 0.
    """
    n = F.size(sorted_rates)
    # 1-based positions of the middle values; max(.., 1) keeps an empty array at a valid index.
    lo = F.try_element_at(sorted_rates, F.greatest(F.floor((n + F.lit(1)) / F.lit(2)), F.lit(1)).cast("int"))
    hi = F.try_element_at(sorted_rates, F.greatest(F.floor(n / F.lit(2)) + F.lit(1), F.lit(1)).cast("int"))
    median = F.lit(0.5) * lo + F.lit(0.5) * hi
    threshold = F.lit(FEE_OUTLIER_MULTIPLE) * median
    above = F.size(F.filter(sorted_rates, lambda rate: rate >= threshold))
    return F.when(median > F.lit(0.0), above).otherwise(F.lit(0)).cast("bigint")


def _output_columns(F):
    """The result columns in ``MINUTE_AGGREGATE_COLUMNS`` order (plus ``time_basis_max`` for the check)."""
    def mean(total: str, count: str):
        return F.try_divide(F.col(total), F.col(count))

    btc = F.lit(float(SATOSHI_PER_BTC))
    columns = {
        "minute": F.col("minute"),
        "time_basis": F.col("time_basis"),
        "tx_count": F.col("tx_count"),
        "block_count": F.coalesce(F.size("block_ids"), F.lit(0)).cast("bigint"),
        "block_ids": F.coalesce(F.col("block_ids"), F.array().cast("array<bigint>")),
        "avg_value_sat": mean("value_sum", "n"),
        "avg_fee_sat": mean("fee_sum", "n"),
        "avg_fee_to_value_ratio": mean("ratio_sum", "ratio_n"),
        "avg_input_count": mean("input_count_sum", "n"),
        "avg_output_count": mean("output_count_sum", "n"),
        "avg_tx_size_bytes": mean("size_sum", "n"),
        "total_value_btc": F.col("value_sum").cast("double") / btc,
        "max_value_btc": F.col("value_max").cast("double") / btc,
        "median_value_btc": F.col("value_median") / btc,
        "total_fee_btc": F.col("fee_sum").cast("double") / btc,
        "median_fee_rate_sat_vb": F.col("fee_rates").getItem(0),
        "p90_fee_rate_sat_vb": F.col("fee_rates").getItem(1),
        "p99_fee_rate_sat_vb": F.col("fee_rates").getItem(2),
        "fee_outlier_tx_count": F.col("fee_outlier_tx_count"),
        "mean_vsize_vb": F.try_divide(F.col("weight_sum") / F.lit(4.0), F.col("n")),
        "total_vsize_vb": F.col("weight_sum") / F.lit(4.0),
        "fan_in_10_count": F.col("fan_in_10_count"),
        "fan_out_10_count": F.col("fan_out_10_count"),
        "total_value_usd": F.col("total_value_usd"),
        "total_fee_usd": F.col("total_fee_usd"),
        "tx_count_5min": F.col("tx_count_5"),
        "avg_value_sat_5min": mean("value_sum_5", "n_5"),
        "avg_fee_sat_5min": mean("fee_sum_5", "n_5"),
        "avg_fee_to_value_ratio_5min": mean("ratio_sum_5", "ratio_n_5"),
        "avg_input_count_5min": mean("input_count_sum_5", "n_5"),
        "avg_output_count_5min": mean("output_count_sum_5", "n_5"),
        "avg_tx_size_bytes_5min": mean("size_sum_5", "n_5"),
    }
    expected = column_names(MINUTE_AGGREGATE_COLUMNS)
    if list(columns) != expected:  # guards the contract when schema.py changes
        raise AggregationError(f"Spark output columns {list(columns)} differ from MINUTE_AGGREGATE_COLUMNS {expected}")
    return [expr.alias(name) for name, expr in columns.items()] + [F.col("time_basis_max")]
