"""Spark minute aggregation against the DuckDB reference on the real 13-14 Aug lake, classic and Connect.

Fixtures (``classic_spark``, ``connect_spark``, ``real_lake``) come from ``conftest_spark.py``.
"""

from __future__ import annotations

import socket
import time
from datetime import datetime, timedelta

import pandas as pd
import pytest

from btc_anomaly_assets.aggregates.aggregates_sql import (
    FEE_OUTLIER_MULTIPLE,
    TRAILING_MINUTES,
    AggregationError,
    aggregate_minutes_duckdb,
)
from btc_anomaly_assets.aggregates.spark_aggregates import aggregate_minutes_spark, hour_folders
from btc_anomaly_assets.aggregates.spark_session import (
    ConnectServerError,
    SparkEndpointError,
    SparkSettings,
    build_spark_session,
    free_loopback_port,
    start_local_connect_server,
)
from btc_anomaly_assets.aggregates.spark_warmup import warm_up_aggregation
from btc_anomaly_assets.common.lake import raw_path, write_raw_window
from btc_anomaly_testing.real_data import block_minutes, copies_of, real_raw

pytest_plugins = ["btc_anomaly_assets_tests.conftest_spark"]
# Boot the Connect server in the background while the classic session starts.
pytestmark = pytest.mark.usefixtures("connect_server_launch")

REAL_ROWS = 82_640
BOTH_DAYS = (datetime(2025, 8, 13), datetime(2025, 8, 15))
# Starts 2 minutes into 14 Aug: the lookback reaches 13 Aug 23:58, an hour folder that does not exist.
AFTER_MIDNIGHT = (datetime(2025, 8, 14, 0, 2), datetime(2025, 8, 14, 0, 12))
NO_DATA = (datetime(2025, 8, 13, 12, 0), datetime(2025, 8, 13, 12, 30))


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return real_raw()


@pytest.fixture(scope="module")
def after_a_block(raw) -> tuple[datetime, datetime]:
    """Minutes 2..11 after the second 13 Aug block: the trailing columns depend on lookback rows."""
    minutes = sorted(m for m in block_minutes(raw).values() if m.date() == datetime(2025, 8, 13).date())
    start = minutes[1] + timedelta(minutes=2)
    return start, start + timedelta(minutes=10)


@pytest.fixture(scope="module")
def one_block_minute(raw) -> tuple[datetime, datetime]:
    """The single minute of the 13 Aug block with the most transactions (the live one-minute path)."""
    busiest = raw["minute"].value_counts().idxmax()
    start = pd.Timestamp(busiest).to_pydatetime()
    return start, start + timedelta(minutes=1)


@pytest.fixture(scope="module")
def classic_results(classic_spark, real_lake):
    """Classic-session results per window, computed once and shared by the comparisons."""
    cache: dict[tuple[datetime, datetime], pd.DataFrame] = {}

    def result(window: tuple[datetime, datetime]) -> pd.DataFrame:
        if window not in cache:
            cache[window] = aggregate_minutes_spark(classic_spark, real_lake, *window)
        return cache[window].copy()

    return result


def duckdb_reference(raw: pd.DataFrame, window: tuple[datetime, datetime]) -> pd.DataFrame:
    start, end = window
    covering = raw[(raw["minute"] >= start - timedelta(minutes=TRAILING_MINUTES)) & (raw["minute"] < end)]
    return aggregate_minutes_duckdb(covering, start, end)


def assert_matches_reference(spark_frame: pd.DataFrame, reference: pd.DataFrame) -> None:
    # Every column, every minute (empty ones included); floats to 1e-9 relative because the two
    # engines add doubles in different orders.
    pd.testing.assert_frame_equal(spark_frame, reference, check_exact=False, rtol=1e-9, atol=0.0)


def test_classic_matches_duckdb_over_both_real_days_in_one_call(classic_results, raw):
    spark_frame = classic_results(BOTH_DAYS)
    reference = duckdb_reference(raw, BOTH_DAYS)

    assert len(spark_frame) == 2 * 1440
    assert spark_frame["tx_count"].sum() == REAL_ROWS
    assert (spark_frame["tx_count"] == 0).sum() > 2000  # block-time data: most minutes are empty
    assert_matches_reference(spark_frame, reference)


def test_classic_matches_duckdb_where_the_trailing_window_needs_lookback_rows(classic_results, raw, after_a_block):
    spark_frame = classic_results(after_a_block)

    assert spark_frame["tx_count_5min"].iloc[0] > spark_frame["tx_count"].iloc[0]  # lookback rows counted
    assert_matches_reference(spark_frame, duckdb_reference(raw, after_a_block))


def test_classic_matches_duckdb_across_midnight_with_a_missing_hour_folder(classic_spark, real_lake, raw):
    assert "date=2025-08-13/hour=23" in hour_folders(AFTER_MIDNIGHT[0] - timedelta(minutes=TRAILING_MINUTES), AFTER_MIDNIGHT[1])
    spark_frame = aggregate_minutes_spark(classic_spark, real_lake, *AFTER_MIDNIGHT)

    assert spark_frame["tx_count"].sum() > 0
    assert_matches_reference(spark_frame, duckdb_reference(raw, AFTER_MIDNIGHT))


def test_classic_window_without_any_lake_folder_gives_empty_minutes(classic_results, raw):
    spark_frame = classic_results(NO_DATA)

    assert len(spark_frame) == 30 and spark_frame["tx_count"].sum() == 0
    assert_matches_reference(spark_frame, duckdb_reference(raw, NO_DATA))


def test_classic_rerun_gives_an_identical_frame(classic_spark, real_lake, classic_results, one_block_minute):
    first = classic_results(one_block_minute)
    second = aggregate_minutes_spark(classic_spark, real_lake, *one_block_minute)

    assert first["tx_count"].iloc[0] > 1000
    pd.testing.assert_frame_equal(first, second, check_exact=True)


# fee_per_kwu of the two middle rows and of the row at exactly 20x their median (see below).
EDGE_MIDDLE_KWU = (438.2667, 2542.9692)
EDGE_OUTLIER_KWU = 29812.358999999997


def crafted_fee_outlier_rows(raw: pd.DataFrame, at: datetime) -> pd.DataFrame:
    """Four minutes from ``at`` that test ``fee_outlier_tx_count`` at its edges (copies of a real row).

    Minute 0 has an even number of rates whose two middle values ``lo``, ``hi`` make the two
    interpolations differ in the last bit (``0.5 * lo + 0.5 * hi``, DuckDB's ``quantile_cont``, <
    ``lo + (hi - lo) * 0.5``, Spark's ``percentile``), and one rate lying exactly at 20x the first:
    it counts only if both engines use the same formula.
    Minute 1 holds only a coinbase, minute 2 has a zero median, minute 3 is empty.
    """
    template = raw[~raw["is_coinbase"]].iloc[0]
    coinbase = raw[raw["is_coinbase"]].iloc[0]
    minute_0 = [100.0, *EDGE_MIDDLE_KWU, EDGE_OUTLIER_KWU]
    parts = [
        copies_of(template, 1, f"edge-{i}", fee_per_kwu=rate, minute=at, time=at, block_id=1)
        for i, rate in enumerate(minute_0)
    ]
    parts.append(copies_of(coinbase, 1, "edge-coinbase", minute=at + timedelta(minutes=1), time=at + timedelta(minutes=1), block_id=2))
    parts += [
        copies_of(template, 1, f"edge-zero-{i}", fee=0 if i < 2 else template["fee"], fee_per_kwu=0.0 if i < 2 else 5000.0,
                  minute=at + timedelta(minutes=2), time=at + timedelta(minutes=2), block_id=3)
        for i in range(3)
    ]
    return pd.concat(parts, ignore_index=True).astype(raw.dtypes.to_dict())


def test_fee_outlier_count_is_identical_where_percentile_interpolations_differ(classic_spark, connect_spark, raw, tmp_path):
    lo, hi = (kwu / 250.0 for kwu in EDGE_MIDDLE_KWU)
    outlier = EDGE_OUTLIER_KWU / 250.0
    # The row sits exactly on the threshold of one formula and just below the other's.
    assert 20 * (0.5 * lo + 0.5 * hi) <= outlier < 20 * (lo + (hi - lo) * 0.5)
    at = datetime(2025, 8, 20, 12, 0)
    window = (at, at + timedelta(minutes=4))
    rows = crafted_fee_outlier_rows(raw, at)
    lake = raw_path(str(tmp_path / "lake"))
    write_raw_window(lake, rows, *window)

    reference = aggregate_minutes_duckdb(rows, *window)
    assert FEE_OUTLIER_MULTIPLE == 20.0
    assert reference["fee_outlier_tx_count"].tolist() == [1, 0, 0, 0]
    for session in (classic_spark, connect_spark):
        spark_frame = aggregate_minutes_spark(session, lake, *window)
        assert spark_frame["fee_outlier_tx_count"].tolist() == [1, 0, 0, 0]
        assert_matches_reference(spark_frame, reference)


def test_a_missing_lake_root_is_an_error_not_empty_minutes(classic_spark, tmp_path):
    missing = str(tmp_path / "no_lake" / "raw_transactions")
    with pytest.raises(AggregationError, match=f"raw lake path {missing} does not exist"):
        aggregate_minutes_spark(classic_spark, missing, *NO_DATA)


def test_the_warm_up_query_leaves_the_real_aggregates_identical(classic_spark, real_lake, classic_results, raw, after_a_block):
    before = classic_results(after_a_block)
    warm_up_aggregation(classic_spark)  # what a run does in the background before the step
    after = aggregate_minutes_spark(classic_spark, real_lake, *after_a_block)

    pd.testing.assert_frame_equal(after, before, check_exact=True)
    assert_matches_reference(after, duckdb_reference(raw, after_a_block))


def test_connect_gives_the_same_frames_as_classic(classic_results, connect_spark, real_lake, after_a_block, one_block_minute):
    assert type(connect_spark).__module__.startswith("pyspark.sql.connect")
    for window in (BOTH_DAYS, after_a_block, one_block_minute, NO_DATA):
        over_connect = aggregate_minutes_spark(connect_spark, real_lake, *window)
        pd.testing.assert_frame_equal(over_connect, classic_results(window), check_exact=True)


def test_connect_missing_lake_root_is_an_error(connect_spark, tmp_path):
    missing = str(tmp_path / "no_lake" / "raw_transactions")
    with pytest.raises(AggregationError, match="does not exist"):
        aggregate_minutes_spark(connect_spark, missing, *NO_DATA)


def test_unreachable_connect_endpoint_fails_fast_naming_it_without_the_token():
    port = free_loopback_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(SparkEndpointError) as caught:
        build_spark_session(SparkSettings(remote=f"sc://127.0.0.1:{port}/;token=s3cr3t-token;user_id=me"))

    assert time.monotonic() - started < 20  # guards against the client's 100 s retry loop, not a speed test
    message = str(caught.value)
    assert f"sc://127.0.0.1:{port}" in message and "not reachable" in message
    assert "s3cr3t-token" not in message and "s3cr3t-token" not in repr(caught.value)


def test_endpoint_that_accepts_tcp_but_never_answers_fails_fast():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes; nobody ever reads or writes
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(SparkEndpointError, match=f"sc://127.0.0.1:{port} does not answer"):
            build_spark_session(SparkSettings(remote=f"sc://127.0.0.1:{port}"))
        assert time.monotonic() - started < 20


def test_settings_repr_hides_the_token():
    settings = SparkSettings(remote="sc://spark.example:15002/;token=s3cr3t-token")
    assert "s3cr3t-token" not in repr(settings) and "sc://spark.example:15002" in repr(settings)


def test_local_connect_server_refuses_a_port_already_in_use():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConnectServerError, match=f"127.0.0.1:{port} is already in use"):
            start_local_connect_server(port)
