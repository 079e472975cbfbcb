"""Small helpers the asset modules share (Dagster-facing, no business logic)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import dagster as dg
import pandas as pd

from btc_anomaly_assets.common.schema import Column
from btc_anomaly_assets.common.settings import DATE_FMT as PARTITION_FMT

RAW_TRANSACTIONS = dg.AssetKey(["btc", "raw_transactions"])
MINUTE_AGGREGATES = dg.AssetKey(["btc", "minute_aggregates"])
EWMA_ANOMALIES = dg.AssetKey(["btc", "ewma_anomalies"])
COORDINATED_CLUSTERS = dg.AssetKey(["btc", "coordinated_clusters"])
ANOMALY_EXPLANATIONS = dg.AssetKey(["btc", "anomaly_explanations"])
TRANSACTION_FORECAST = dg.AssetKey(["btc", "transaction_forecast"])
INCIDENTS = dg.AssetKey(["btc", "incidents"])

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


def add_minute_metadata(context: dg.AssetExecutionContext, start: datetime, end: datetime, per_minute: pd.DataFrame) -> None:
    """Attach each minute's own figures to that minute's partition.

    In a range run Dagster copies the run's metadata onto every partition's materialization, so a
    backfilled day would plot the day's total at every minute. Numeric figures therefore go on each
    partition; ``per_minute`` is indexed by minute (naive UTC) and minutes it lacks get zeros.

    Dagster checks every ``partition_key=`` call against the run's whole range (~6 ms for a day's
    1,440 keys), so a call per minute would cost ~9 s per asset and day. Most minutes of a range
    share the same figures (on block time: the empty minutes between blocks), so that most common
    set is attached once to the run's materializations (Dagster copies it onto every partition of
    ``[start, end)``, which is the whole run) and only the minutes that differ get a call of their
    own, which overrides it for that partition.
    """
    minutes = pd.date_range(start, end, freq="min", inclusive="left")
    per_minute = per_minute.set_axis(pd.DatetimeIndex(per_minute.index).as_unit("ns"))
    table = per_minute.reindex(minutes, fill_value=0)
    integer = {c for c in table.columns if pd.api.types.is_integer_dtype(table[c]) or pd.api.types.is_bool_dtype(table[c])}
    by_minute = {
        minute.strftime(PARTITION_FMT): {name: int(v) if name in integer else float(v) for name, v in values.items()}
        for minute, values in zip(minutes, table.to_dict("records"))
    }
    if not by_minute:
        return
    shared = dict(Counter(tuple(sorted(m.items())) for m in by_minute.values()).most_common(1)[0][0])
    context.add_asset_metadata(shared)
    add_partition_metadata(context, {key: figures for key, figures in by_minute.items() if figures != shared})


def preview_metadata(context: dg.AssetExecutionContext, preview, name: str = "preview") -> dict:
    """``{name: preview}`` for the run's ``MaterializeResult``; in a run over a range of
    partitions the preview goes on the range's last partition only, and this returns ``{}``.

    Dagster copies a range run's metadata onto every partition's materialization: a 4-6 KB preview
    table on each of a day's 1,440 partitions doubled every asset's events (7 assets: ~40 MB of
    event log and ~2 s of serializing per day). The last partition's materialization is the
    asset's latest, the one its page shows; every partition keeps its own figures.
    """
    if context.has_partition_key_range and context.partition_key_range.start != context.partition_key_range.end:
        context.add_asset_metadata({name: preview}, partition_key=context.partition_key_range.end)
        return {}
    return {name: preview}


def add_partition_metadata(context: dg.AssetExecutionContext, by_partition: dict[str, dict]) -> None:
    """``context.add_asset_metadata(metadata, partition_key=k)`` for every partition k given.

    The UI's per-partition plots read each partition's latest materialization, so the numbers go on
    that materialization (an ``AssetObservation`` would be listed, not plotted by partition).
    """
    for partition_key, metadata in by_partition.items():
        context.add_asset_metadata(metadata, partition_key=partition_key)


def count_by_minute(frame: pd.DataFrame, column: str, values, prefix: str) -> pd.DataFrame:
    """Rows per minute for each of ``values`` of ``column`` (e.g. severity_high), zeros included."""
    counts = pd.crosstab(frame["minute"], frame[column]) if len(frame) else pd.DataFrame(index=pd.DatetimeIndex([]))
    return counts.reindex(columns=list(values), fill_value=0).add_prefix(prefix).astype("int64")
