"""Small helpers the asset modules share (Dagster-facing, no business logic)."""

from __future__ import annotations

from datetime import datetime

import dagster as dg
import pandas as pd

from btc_anomaly_assets.lib.schema import Column

RAW_TRANSACTIONS = dg.AssetKey(["btc", "raw_transactions"])
MINUTE_AGGREGATES = dg.AssetKey(["btc", "minute_aggregates"])
EWMA_ANOMALIES = dg.AssetKey(["btc", "ewma_anomalies"])
COORDINATED_CLUSTERS = dg.AssetKey(["btc", "coordinated_clusters"])
ANOMALY_EXPLANATIONS = dg.AssetKey(["btc", "anomaly_explanations"])
TRANSACTION_FORECAST = dg.AssetKey(["btc", "transaction_forecast"])

OWNERS = ["team:btc-anomaly"]
DUCKDB_POOL = "duckdb"


def window_of(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> tuple[datetime, datetime]:
    """The run's partition window as naive UTC datetimes (works for one minute and for ranges)."""
    window = context.partition_time_window
    return window.start.replace(tzinfo=None), window.end.replace(tzinfo=None)


def column_schema(columns: list[Column]) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(c.name, c.dagster_type, description=c.description) for c in columns])


def markdown_preview(frame: pd.DataFrame, limit: int = 20) -> dg.MetadataValue:
    if frame.empty:
        return dg.MetadataValue.md("_no rows_")
    return dg.MetadataValue.md(frame.head(limit).to_markdown(index=False))
