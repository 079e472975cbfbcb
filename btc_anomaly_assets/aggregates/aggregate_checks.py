"""Gates for btc.minute_aggregates: complete, consistent with the raw layer, never negative."""

from __future__ import annotations

import os
from datetime import datetime

import duckdb
import pandas as pd

from btc_anomaly_assets.common.lake import hour_file, hour_starts
from btc_anomaly_assets.ingest.raw_checks import CheckVerdict

COUNT_COLUMNS = ["tx_count", "block_count", "fan_in_10_count", "fan_out_10_count", "fee_outlier_tx_count", "tx_count_5min"]
AMOUNT_COLUMNS = ["total_value_btc", "max_value_btc", "median_value_btc", "total_fee_btc", "median_fee_rate_sat_vb",
                  "p90_fee_rate_sat_vb", "p99_fee_rate_sat_vb", "mean_vsize_vb", "avg_value_sat", "avg_fee_sat"]


def raw_row_count(raw_dataset_path: str, start: datetime, end: datetime) -> int:
    """Rows of [start, end) in the lake, counted by DuckDB straight from the hour files."""
    files = [hour_file(raw_dataset_path, h) for h in hour_starts(start, end)]
    files = [f for f in files if "://" in f or os.path.exists(f)]
    if not files:
        return 0
    con = duckdb.connect()
    try:
        return int(con.execute(
            "SELECT count(*) FROM read_parquet(?) WHERE minute >= ? AND minute < ?", [files, start, end]
        ).fetchone()[0])
    finally:
        con.close()


def evaluate_aggregate_checks(stored: pd.DataFrame, raw_dataset_path: str, start: datetime, end: datetime) -> list[CheckVerdict]:
    expected = pd.date_range(start, end, freq="min", inclusive="left")
    counts = stored["minute"].value_counts()
    missing = expected.difference(pd.DatetimeIndex(stored["minute"]))
    repeated = counts[counts > 1]
    every_minute = CheckVerdict(
        "every_minute_has_one_row", len(missing) == 0 and repeated.empty,
        "Every minute of the window has exactly one row",
        figures={"expected_minutes": len(expected), "rows": len(stored), "missing_minutes": len(missing),
                 "repeated_minutes": len(repeated),
                 "first_missing": str(missing[0]) if len(missing) else "", "first_repeated": str(repeated.index[0]) if len(repeated) else ""},
    )
    raw_rows = raw_row_count(raw_dataset_path, start, end)
    total = int(stored["tx_count"].sum())
    counts_match = CheckVerdict("tx_count_sum_matches_raw", total == raw_rows,
                                "sum(tx_count) equals the raw row count", figures={"sum_tx_count": total, "raw_rows": raw_rows})
    negative = stored[(stored[COUNT_COLUMNS] < 0).any(axis=1) | (stored[AMOUNT_COLUMNS] < 0).any(axis=1)]
    no_negative = CheckVerdict("no_negative_counts_or_amounts", negative.empty, "No negative count or amount",
                               figures={"offending_minutes": len(negative),
                                        "first_offending": str(negative["minute"].iloc[0]) if len(negative) else ""})
    return [every_minute, counts_match, no_negative]
