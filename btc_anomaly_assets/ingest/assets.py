"""btc/raw_transactions: one row per transaction observed in the minute, in the Parquet lake."""


from datetime import timezone

import dagster as dg
import pandas as pd

from btc_anomaly_assets.common.dagster_helpers import (
    OWNERS,
    RAW_TRANSACTIONS,
    add_minute_metadata,
    column_schema,
    markdown_preview,
    preview_metadata,
    window_of,
)
from btc_anomaly_assets.common.lake import read_raw_window, release_arrow_memory, write_raw_window
from btc_anomaly_assets.common.partitions import minute_partitions
from btc_anomaly_assets.common.resources import LakeResource
from btc_anomaly_assets.common.schema import RAW_TRANSACTION_COLUMNS, SATOSHI_PER_BTC
from btc_anomaly_assets.ingest.raw_checks import (
    FEED_COMPLETE,
    FEED_COMPLETE_DESCRIPTION,
    RAW_CHECK_DESCRIPTIONS,
    check_feed_complete,
    evaluate_raw_checks,
)
from btc_anomaly_assets.ingest.resources import TransactionSource

RAW_CHECK_SPECS = [
    dg.AssetCheckSpec(name, asset=RAW_TRANSACTIONS, blocking=True, description=description)
    for name, description in RAW_CHECK_DESCRIPTIONS.items()
] + [dg.AssetCheckSpec(FEED_COMPLETE, asset=RAW_TRANSACTIONS, blocking=False, description=FEED_COMPLETE_DESCRIPTION)]


@dg.asset(
    key=RAW_TRANSACTIONS,
    group_name="ingest",
    kinds={"python", "parquet"},
    owners=OWNERS,
    partitions_def=minute_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=RAW_CHECK_SPECS,
    metadata={"dagster/column_schema": column_schema(RAW_TRANSACTION_COLUMNS), "partition_expr": "minute"},
)
def raw_transactions(context: dg.AssetExecutionContext, source: TransactionSource, lake: LakeResource):
    """One row per transaction observed in the minute (Blockchair fields, satoshi integers).

    Written to the Parquet lake (hive folders by date and hour), replacing exactly the run's
    window. The checks re-read what was stored, so they judge the lake, not the fetch.
    """
    start, end = window_of(context)
    batch = source.fetch(start, end, context.log, lake_url=lake.url)
    write_raw_window(lake.raw_transactions_path, batch.frame, start, end)
    batch.frame = None  # the checks judge what the lake now holds; do not keep two copies of a day in memory
    release_arrow_memory()
    stored = read_raw_window(lake.raw_transactions_path, start, end)
    verdicts = evaluate_raw_checks(stored, start, end, batch.reported_rows)
    feed = check_feed_complete(batch.incomplete_minutes)
    if not feed.passed:
        context.log.warning(f"{feed.figures['incomplete_minutes']} minute(s) of [{start}, {end}) had a feed gap: "
                            + "; ".join(f"{m:%H:%M} {' / '.join(w)}" for m, w in list(batch.incomplete_minutes.items())[:5]))
    bases = sorted(stored["time_basis"].dropna().unique().tolist())
    context.log.info(f"{len(stored):,} transactions from {batch.source} ({batch.detail}) for [{start}, {end})")
    minute = stored.assign(value_btc=stored["output_total"] / SATOSHI_PER_BTC,
                           block=stored["block_id"].where(stored["block_id"] >= 0)).groupby("minute")
    per_minute = pd.DataFrame({
        "dagster/row_count": minute.size(),
        "value_moved_btc": minute["value_btc"].sum().round(2),
        "blocks": minute["block"].nunique(),
    })
    if batch.incomplete_minutes is not None:  # push sources: 1 on each minute the feed did not fully see
        per_minute = per_minute.reindex(pd.date_range(start, end, freq="min", inclusive="left"), fill_value=0)
        per_minute["feed_incomplete"] = per_minute.index.isin(pd.DatetimeIndex(list(batch.incomplete_minutes))).astype(int)
    add_minute_metadata(context, start, end, per_minute)
    return dg.MaterializeResult(
        metadata={
            "window_rows": len(stored),
            "source": batch.source,
            "source_detail": batch.detail,
            "time_basis": ", ".join(bases) or "none",
            "window_minutes_with_rows": int(stored["minute"].nunique()),
            "window_start": dg.MetadataValue.timestamp(start.replace(tzinfo=timezone.utc)),
            "window_end": dg.MetadataValue.timestamp(end.replace(tzinfo=timezone.utc)),
            **{f"source_{k}": v for k, v in batch.figures.items()},
            **preview_metadata(context, markdown_preview(stored[["time", "hash", "block_id", "input_count", "output_count", "output_total", "fee"]])),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=v.name,
                passed=v.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=v.description,
                metadata={**v.figures, **({"offending": markdown_preview(v.offending)} if not v.offending.empty else {})},
            )
            for v in verdicts
        ] + [dg.AssetCheckResult(
            check_name=feed.name, passed=feed.passed, severity=dg.AssetCheckSeverity.WARN, description=feed.description,
            metadata={**feed.figures, **({"incomplete": markdown_preview(feed.offending)} if not feed.offending.empty else {})},
        )],
    )
