"""btc/minute_aggregates: one row per minute, computed by Spark straight from the Parquet lake."""

import dagster as dg
import pandas as pd

from btc_anomaly_assets.aggregates.aggregate_checks import evaluate_aggregate_checks
from btc_anomaly_assets.aggregates.resources import SparkResource
from btc_anomaly_assets.aggregates.spark_session import connect_endpoint_label
from btc_anomaly_assets.common.dagster_helpers import (
    DUCKDB_POOL,
    MINUTE_AGGREGATES,
    OWNERS,
    RAW_TRANSACTIONS,
    add_minute_metadata,
    column_schema,
    markdown_preview,
    preview_metadata,
    window_of,
)
from btc_anomaly_assets.common.lake import lake_lock
from btc_anomaly_assets.common.partitions import minute_partitions
from btc_anomaly_assets.common.resources import LakeResource, WarehouseResource
from btc_anomaly_assets.common.schema import MINUTE_AGGREGATE_COLUMNS

TABLE = "minute_aggregates"
EVERY_MINUTE_ONCE = "every_minute_has_one_row"
COUNTS_MATCH_RAW = "tx_count_sum_matches_raw"
NO_NEGATIVES = "no_negative_counts_or_amounts"

CHECK_SPECS = [
    dg.AssetCheckSpec(EVERY_MINUTE_ONCE, asset=MINUTE_AGGREGATES, blocking=True,
                      description="Every minute of the window has exactly one row (empty minutes included)"),
    dg.AssetCheckSpec(COUNTS_MATCH_RAW, asset=MINUTE_AGGREGATES, blocking=True,
                      description="sum(tx_count) over the window equals the raw row count in the lake"),
    dg.AssetCheckSpec(NO_NEGATIVES, asset=MINUTE_AGGREGATES, blocking=True,
                      description="No negative count, amount or fee rate"),
]


@dg.asset(
    key=MINUTE_AGGREGATES,
    group_name="aggregates",
    kinds={"spark", "duckdb"},
    owners=OWNERS,
    partitions_def=minute_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[RAW_TRANSACTIONS],
    check_specs=CHECK_SPECS,
    pool=DUCKDB_POOL,
    metadata={"dagster/column_schema": column_schema(MINUTE_AGGREGATE_COLUMNS), "partition_expr": "minute",
              "dagster/table_name": "btc.minute_aggregates"},
)
def minute_aggregates(
    context: dg.AssetExecutionContext, pyspark: SparkResource, lake: LakeResource, warehouse: WarehouseResource
):
    """One row per UTC minute of the window, empty minutes included (tx_count = 0).

    The tutorial's 1-minute and trailing 5-minute averages plus what an analyst needs (value
    moved in BTC and USD, fee-rate percentiles in sat/vB, fan-in/fan-out counts, blocks present).
    Spark reads the raw Parquet lake itself (never through pandas); a range is one Spark job.
    """
    from btc_anomaly_assets.aggregates.spark_aggregates import aggregate_minutes_spark

    start, end = window_of(context)
    spark = pyspark.spark_session
    with lake_lock(lake.raw_transactions_path):  # no hour file may be replaced between Spark's listing and its scan
        frame = aggregate_minutes_spark(spark, lake.raw_transactions_path, start, end)
    spark_driver = pyspark.release(context.log)  # no later step of the run uses Spark
    wh = warehouse.get()
    wh.replace_window(TABLE, MINUTE_AGGREGATE_COLUMNS, frame, start, end)
    stored = wh.read_window(TABLE, MINUTE_AGGREGATE_COLUMNS, start, end)
    verdicts = evaluate_aggregate_checks(stored, lake.raw_transactions_path, start, end)
    busy = stored[stored["tx_count"] > 0]
    by_minute = stored.set_index("minute")
    add_minute_metadata(context, start, end, pd.DataFrame({
        "dagster/row_count": by_minute["tx_count"].notna().astype("int64"),
        "tx_count": by_minute["tx_count"].astype("int64"),
        "value_moved_btc": by_minute["total_value_btc"].fillna(0.0).astype(float),
        "fan_out_10_count": by_minute["fan_out_10_count"].astype("int64"),
    }))
    return dg.MaterializeResult(
        metadata={
            "window_tx_count": int(stored["tx_count"].sum()),
            "window_minutes_with_transactions": len(busy),
            "window_empty_minutes": int(len(stored) - len(busy)),
            "time_basis": ", ".join(sorted(busy["time_basis"].dropna().unique())) or "none",
            "spark": connect_endpoint_label(pyspark.engine) if pyspark.engine.startswith("sc://") else pyspark.engine,
            "spark_session_after_step": spark_driver,
            **preview_metadata(context, markdown_preview(busy[["minute", "tx_count", "block_count", "total_value_btc", "max_value_btc",
                                              "median_fee_rate_sat_vb", "fan_in_10_count", "fan_out_10_count"]])),
        },
        check_results=[
            dg.AssetCheckResult(check_name=v.name, passed=v.passed, severity=dg.AssetCheckSeverity.ERROR,
                                description=v.description, metadata=v.figures)
            for v in verdicts
        ],
    )
