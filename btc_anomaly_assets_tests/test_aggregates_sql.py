"""Hand-checkable cases for the DuckDB-SQL minute aggregation (the reference for Spark)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from btc_anomaly_assets.aggregates.aggregates_sql import (
    FEE_OUTLIER_MULTIPLE,
    TRAILING_MINUTES,
    AggregationError,
    aggregate_minutes_duckdb,
)
from btc_anomaly_assets.common.schema import MINUTE_AGGREGATE_COLUMNS, RAW_TRANSACTION_COLUMNS, arrow_schema, column_names

T0 = datetime(2025, 8, 13, 12, 0)


def minute(offset: int) -> datetime:
    return T0 + timedelta(minutes=offset)


def tx(at: int, **fields) -> dict:
    """One raw row at minute offset ``at``; unspecified fields get plain non-coinbase values."""
    row = {
        "block_id": 900_000,
        "hash": f"{len(fields):02d}{at:04d}" + "0" * 58,
        "time": minute(at) + timedelta(seconds=30),
        "size": 250,
        "weight": 1000,
        "version": 2,
        "lock_time": 0,
        "is_coinbase": False,
        "has_witness": True,
        "input_count": 1,
        "output_count": 2,
        "input_total": 0,
        "input_total_usd": 0.0,
        "output_total": 100_000,
        "output_total_usd": 100.0,
        "fee": 1_000,
        "fee_usd": 1.0,
        "fee_per_kb": 4000.0,
        "fee_per_kb_usd": 4.0,
        "fee_per_kwu": 1000.0,
        "fee_per_kwu_usd": 1.0,
        "cdd_total": 0.0,
        "minute": minute(at),
        "time_basis": "block",
    }
    row.update(fields)
    row["input_total"] = row["output_total"] + row["fee"]
    return row


def raw_frame(rows: list[dict]) -> pd.DataFrame:
    table = pa.Table.from_pylist(rows, schema=arrow_schema(RAW_TRANSACTION_COLUMNS))
    return table.to_pandas()


def by_minute(frame: pd.DataFrame) -> dict[datetime, pd.Series]:
    return {row.minute.to_pydatetime(): row for _, row in frame.iterrows()}


def test_output_has_the_contract_columns_dtypes_and_one_row_per_minute():
    out = aggregate_minutes_duckdb(raw_frame([tx(1)]), minute(0), minute(3))

    assert list(out.columns) == column_names(MINUTE_AGGREGATE_COLUMNS)
    assert list(out["minute"]) == [pd.Timestamp(minute(i)) for i in range(3)]
    assert out["minute"].dtype == "datetime64[us]"
    for column in MINUTE_AGGREGATE_COLUMNS:
        if column.arrow_type == pa.int64():
            assert out[column.name].dtype == np.int64, column.name
        if column.arrow_type == pa.float64():
            assert out[column.name].dtype == np.float64, column.name


def test_empty_minutes_get_zero_counts_empty_blocks_and_null_statistics():
    out = by_minute(aggregate_minutes_duckdb(raw_frame([tx(1)]), minute(0), minute(3)))

    for empty in (minute(0), minute(2)):
        row = out[empty]
        assert row.tx_count == 0 and row.block_count == 0
        assert row.fan_in_10_count == 0 and row.fan_out_10_count == 0 and row.fee_outlier_tx_count == 0
        assert row.block_ids == []
        assert row.time_basis is None
        for name in ("avg_value_sat", "total_value_btc", "median_fee_rate_sat_vb", "total_value_usd", "mean_vsize_vb"):
            assert math.isnan(row[name]), name
    assert out[minute(1)].tx_count == 1
    # minute 2 is empty but its trailing window still holds minute 1's row
    assert out[minute(2)].tx_count_5min == 1
    assert out[minute(2)].avg_value_sat_5min == 100_000


def test_coinbase_counts_as_a_transaction_but_not_in_any_statistic():
    rows = [
        tx(0, is_coinbase=True, output_total=312_500_000, fee=0, fee_per_kwu=0.0, input_count=1, output_count=40,
           output_total_usd=375_000.0, fee_usd=0.0, size=400, weight=1600),
        tx(0, output_total=100_000, fee=500, fee_per_kwu=500.0, input_count=12, output_count=1, size=200, weight=800),
        tx(0, output_total=300_000, fee=1_500, fee_per_kwu=1500.0, input_count=2, output_count=11, size=300, weight=1200),
    ]
    row = aggregate_minutes_duckdb(raw_frame(rows), minute(0), minute(1)).iloc[0]

    assert row.tx_count == 3
    assert row.avg_value_sat == 200_000
    assert row.avg_fee_sat == 1_000
    assert row.total_value_btc == pytest.approx(0.004)
    assert row.max_value_btc == pytest.approx(0.003)
    assert row.median_value_btc == pytest.approx(0.002)
    assert row.total_fee_btc == pytest.approx(0.00002)
    assert row.avg_input_count == 7 and row.avg_output_count == 6
    assert row.avg_tx_size_bytes == 250
    assert row.mean_vsize_vb == 250 and row.total_vsize_vb == 500
    assert row.median_fee_rate_sat_vb == pytest.approx(4.0)  # fee_per_kwu 500, 1500 -> 2, 6 sat/vB
    assert row.fan_in_10_count == 1 and row.fan_out_10_count == 1  # the 40-output coinbase is not a fan-out
    assert row.total_value_usd == pytest.approx(200.0)
    assert row.tx_count_5min == 3
    assert row.avg_value_sat_5min == 200_000


def test_a_minute_with_only_a_coinbase_has_null_statistics():
    rows = [tx(0, is_coinbase=True, fee=0, output_total=312_500_000)]
    row = aggregate_minutes_duckdb(raw_frame(rows), minute(0), minute(1)).iloc[0]

    assert row.tx_count == 1 and row.block_count == 1
    assert math.isnan(row.avg_value_sat) and math.isnan(row.total_value_btc) and math.isnan(row.avg_value_sat_5min)


def test_percentiles_are_exact_and_linearly_interpolated():
    rates = [1.0, 2.0, 3.0, 4.0, 10.0]  # sat/vB
    values = [10, 20, 30, 40]
    rows = [tx(0, fee_per_kwu=r * 250, output_total=v) for r, v in zip(rates, values + [50])]
    rows += [tx(1, output_total=v) for v in values]
    out = by_minute(aggregate_minutes_duckdb(raw_frame(rows), minute(0), minute(2)))

    first = out[minute(0)]
    assert first.median_fee_rate_sat_vb == pytest.approx(3.0)
    assert first.p90_fee_rate_sat_vb == pytest.approx(4.0 + 0.6 * 6.0)  # rank 0.9 * 4 = 3.6
    assert first.p99_fee_rate_sat_vb == pytest.approx(4.0 + 0.96 * 6.0)
    assert out[minute(1)].median_value_btc == pytest.approx(25 / 1e8)  # even count: mean of the middle two


def test_fee_to_value_ratio_is_the_mean_of_row_ratios_over_rows_with_fee_and_value():
    rows = [
        tx(0, fee=100, output_total=1_000),  # 0.1
        tx(0, fee=300, output_total=1_000),  # 0.3
        tx(0, fee=0, output_total=1_000),  # no fee: excluded
        tx(0, fee=500, output_total=0),  # no value: excluded
        tx(0, is_coinbase=True, fee=0, output_total=5_000),
        tx(0, fee=1_000, output_total=9_000, is_coinbase=True),  # coinbase: excluded whatever its fields
    ]
    row = aggregate_minutes_duckdb(raw_frame(rows), minute(0), minute(1)).iloc[0]

    assert row.avg_fee_to_value_ratio == pytest.approx(0.2)  # ratio of sums would be 900/3000 = 0.3
    assert row.avg_fee_sat == pytest.approx(225.0)  # fee mean still uses every non-coinbase row


def test_trailing_five_minutes_use_lookback_rows_but_only_the_window_is_returned():
    counts = {-5: 7, -4: 1, -3: 2, 0: 3, 1: 4}
    rows = [tx(at, output_total=1_000 * (at + 10)) for at, n in counts.items() for _ in range(n)]
    out = aggregate_minutes_duckdb(raw_frame(rows), minute(0), minute(6))
    rows_by_minute = by_minute(out)

    assert out["minute"].min() == pd.Timestamp(minute(0))  # lookback minutes are not returned
    assert rows_by_minute[minute(0)].tx_count_5min == 1 + 2 + 3  # minute -5 is outside the 5 minutes
    assert rows_by_minute[minute(1)].tx_count_5min == 2 + 3 + 4  # minute -4 has dropped out
    assert rows_by_minute[minute(5)].tx_count_5min == 4
    assert rows_by_minute[minute(6 - 1)].tx_count == 0
    # row-weighted mean over the 5 minutes, not a mean of the minutes' means
    expected = (1 * 6_000 + 2 * 7_000 + 3 * 10_000) / 6
    assert rows_by_minute[minute(0)].avg_value_sat_5min == pytest.approx(expected)
    assert TRAILING_MINUTES == 4


def test_rows_outside_the_lookback_and_window_are_ignored():
    rows = [tx(-5), tx(2), tx(0)]
    out = by_minute(aggregate_minutes_duckdb(raw_frame(rows), minute(0), minute(2)))

    assert out[minute(0)].tx_count_5min == 1
    assert sum(r.tx_count for r in out.values()) == 1


def test_usd_sums_are_null_only_when_every_usd_value_is_null():
    rows = [
        tx(0, output_total_usd=None, fee_usd=None),
        tx(0, output_total_usd=None, fee_usd=None),
        tx(1, output_total_usd=None, fee_usd=2.5),
        tx(1, output_total_usd=40.0, fee_usd=None),
    ]
    out = by_minute(aggregate_minutes_duckdb(raw_frame(rows), minute(0), minute(2)))

    assert math.isnan(out[minute(0)].total_value_usd) and math.isnan(out[minute(0)].total_fee_usd)
    assert out[minute(0)].total_value_btc == pytest.approx(0.002)  # satoshi sums are unaffected
    assert out[minute(1)].total_value_usd == 40.0 and out[minute(1)].total_fee_usd == 2.5


def test_block_ids_are_sorted_distinct_and_ignore_mempool_rows():
    rows = [tx(0, block_id=b) for b in (900_002, 900_001, 900_002, -1)]
    rows += [tx(1, block_id=-1, time_basis="first_seen")]
    out = by_minute(aggregate_minutes_duckdb(raw_frame(rows), minute(0), minute(2)))

    assert out[minute(0)].block_ids == [900_001, 900_002] and out[minute(0)].block_count == 2
    assert out[minute(1)].block_ids == [] and out[minute(1)].block_count == 0
    assert out[minute(1)].time_basis == "first_seen"


def test_parquet_path_gives_the_same_result_as_the_frame(tmp_path):
    frame = raw_frame([tx(at, output_total=1_000 * at + 1) for at in range(-3, 4)])
    path = tmp_path / "raw.parquet"
    pq.write_table(pa.Table.from_pandas(frame, schema=arrow_schema(RAW_TRANSACTION_COLUMNS), preserve_index=False), path)

    from_frame = aggregate_minutes_duckdb(frame, minute(0), minute(4))
    from_parquet = aggregate_minutes_duckdb(str(path), minute(0), minute(4))

    pd.testing.assert_frame_equal(from_parquet, from_frame)
    assert from_frame.tx_count.sum() == 4


def test_tz_aware_bounds_are_converted_to_naive_utc():
    frame = raw_frame([tx(0), tx(1)])
    aware_start = minute(0).replace(tzinfo=timezone.utc).astimezone(timezone(timedelta(hours=2)))
    out = aggregate_minutes_duckdb(frame, aware_start, minute(2).replace(tzinfo=timezone.utc))

    assert list(out["minute"]) == [pd.Timestamp(minute(0)), pd.Timestamp(minute(1))]
    assert list(out["tx_count"]) == [1, 1]


def test_a_caller_connection_is_reused_and_left_clean():
    import duckdb

    con = duckdb.connect()
    out = aggregate_minutes_duckdb(raw_frame([tx(0)]), minute(0), minute(1), con=con)

    assert out.tx_count.tolist() == [1]
    assert con.execute("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchone()[0] == 0
    con.close()


@pytest.mark.parametrize(
    "start, end, message",
    [
        (minute(0) + timedelta(seconds=30), minute(2), "not a whole minute"),
        (minute(2), minute(2), "end must be after start"),
    ],
)
def test_bad_windows_are_refused(start, end, message):
    with pytest.raises(AggregationError, match=message):
        aggregate_minutes_duckdb(raw_frame([tx(0)]), start, end)


def test_missing_columns_are_named():
    frame = raw_frame([tx(0)]).drop(columns=["fee_per_kwu", "weight"])
    with pytest.raises(AggregationError, match=r"missing raw columns \['weight', 'fee_per_kwu'\]"):
        aggregate_minutes_duckdb(frame, minute(0), minute(1))


def test_a_minute_mixing_time_bases_is_refused():
    frame = raw_frame([tx(0), tx(0, time_basis="first_seen", block_id=-1)])
    with pytest.raises(AggregationError, match="mix time bases.*2025-08-13 12:00:00"):
        aggregate_minutes_duckdb(frame, minute(0), minute(1))


def test_fee_outliers_are_rows_paying_at_least_twenty_times_the_minute_median():
    # Minute 0: rates 1, 2, 3, 4 sat/vB and two payers; the median of the six is 3.5, so the
    # threshold is 70 sat/vB: 70 counts (>=), 69.9 does not. A coinbase is never an outlier.
    rates = [1.0, 2.0, 3.0, 4.0, 69.9, 70.0]
    rows = [tx(0, fee_per_kwu=r * 250) for r in rates]
    rows.append(tx(0, is_coinbase=True, fee=0, fee_per_kwu=1e9))
    # Minute 1: the median is 0 (three zero-fee rows), so "20x the median" is undefined: no outliers.
    rows += [tx(1, fee=0, fee_per_kwu=0.0) for _ in range(3)] + [tx(1, fee_per_kwu=250.0 * 50)]
    # Minute 2: only a coinbase. Minute 3: empty.
    rows.append(tx(2, is_coinbase=True, fee=0, fee_per_kwu=0.0))
    out = by_minute(aggregate_minutes_duckdb(raw_frame(rows), minute(0), minute(4)))

    assert out[minute(0)].median_fee_rate_sat_vb == pytest.approx(3.5)
    assert FEE_OUTLIER_MULTIPLE == 20.0
    assert out[minute(0)].fee_outlier_tx_count == 1
    assert out[minute(1)].fee_outlier_tx_count == 0
    assert out[minute(2)].fee_outlier_tx_count == 0 and out[minute(3)].fee_outlier_tx_count == 0


def test_fee_outlier_median_is_the_minute_median_not_the_window_median():
    # The same 40 sat/vB payer is an outlier next to 1 sat/vB rows and ordinary next to 10 sat/vB rows.
    rows = [tx(0, fee_per_kwu=250.0) for _ in range(5)] + [tx(0, fee_per_kwu=40 * 250.0)]
    rows += [tx(1, fee_per_kwu=2500.0) for _ in range(5)] + [tx(1, fee_per_kwu=40 * 250.0)]
    out = by_minute(aggregate_minutes_duckdb(raw_frame(rows), minute(0), minute(2)))

    assert out[minute(0)].fee_outlier_tx_count == 1
    assert out[minute(1)].fee_outlier_tx_count == 0
