"""btc/ewma_anomalies and btc/coordinated_clusters: detectors that compare like with like."""

from datetime import timedelta

import dagster as dg
import numpy as np
import pandas as pd

from btc_anomaly_assets.alerts.resources import AlertDestinationResource
from btc_anomaly_assets.alerts.sensors import deliver_in_run
from btc_anomaly_assets.common.dagster_helpers import (
    COORDINATED_CLUSTERS,
    DUCKDB_POOL,
    EWMA_ANOMALIES,
    MINUTE_AGGREGATES,
    OWNERS,
    RAW_TRANSACTIONS,
    add_minute_metadata,
    column_schema,
    count_by_minute,
    markdown_preview,
    preview_metadata,
    window_of,
)
from btc_anomaly_assets.common.lake import read_raw_window
from btc_anomaly_assets.common.partitions import minute_partitions
from btc_anomaly_assets.common.resources import LakeResource, WarehouseResource
from btc_anomaly_assets.common.schema import (
    COORDINATED_CLUSTER_COLUMNS,
    EWMA_ANOMALY_COLUMNS,
    MINUTE_AGGREGATE_COLUMNS,
    SEVERITIES,
)
from btc_anomaly_assets.detection.clusters import CLUSTER_INPUT_COLUMNS, CLUSTER_LOOKBACK_MINUTES, detect_coordinated_clusters
from btc_anomaly_assets.detection.ewma import EWMA_LOOKBACK_MINUTES, detect_ewma_anomalies
from btc_anomaly_assets.detection.resources import DetectionSettings

EVERY_MINUTE_SCORED = "every_minute_scored_once"
Z_SCORES_FINITE = "z_scores_finite"
MEMBERS_IN_RAW = "cluster_members_exist_in_raw"
FLAGGED = ("medium", "high")


def _priors_label(detection: DetectionSettings) -> str:
    """Which priors table scored this run (visible, so a v1 fallback is never silent)."""
    table = detection.ewma_config().priors
    return "none (detection v1)" if table is None else f"{detection.priors}: {table.version}"


def _sources(frame: pd.DataFrame) -> str:
    """How many rows had a baseline from the priors, from history, or both."""
    counts = frame["baseline_source"].value_counts()
    return ", ".join(f"{name} {int(counts.get(name, 0))}" for name in ("prior", "both", "history"))


@dg.asset(
    key=EWMA_ANOMALIES,
    group_name="detection",
    kinds={"pandas", "duckdb"},
    owners=OWNERS,
    partitions_def=minute_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[dg.AssetDep(MINUTE_AGGREGATES,
                      partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-EWMA_LOOKBACK_MINUTES))],
    pool=DUCKDB_POOL,
    # Ahead of the clusters step in a run: a live minute's alerts go out from this step.
    op_tags={"dagster/priority": "1"},
    check_specs=[
        dg.AssetCheckSpec(EVERY_MINUTE_SCORED, asset=EWMA_ANOMALIES, blocking=True,
                          description="Every minute of the window has exactly one row per metric"),
        dg.AssetCheckSpec(Z_SCORES_FINITE, asset=EWMA_ANOMALIES, blocking=True,
                          description="Every z-score that was computed is finite"),
    ],
    metadata={"dagster/column_schema": column_schema(EWMA_ANOMALY_COLUMNS), "partition_expr": "minute",
              "dagster/table_name": "btc.ewma_anomalies"},
)
def ewma_anomalies(context: dg.AssetExecutionContext, detection: DetectionSettings, warehouse: WarehouseResource,
                   alerts: AlertDestinationResource):
    """One row per minute and metric: causal, robust EWMA baseline, deviation, z-score, severity, rule.

    With block time only minutes holding a block are scored, each against earlier block-minutes
    (a block landing is not an anomaly, the empty minutes between blocks are not "zero traffic").
    History comes from the lookback partitions; the output is trimmed to the run's window.
    A live minute's flagged rows are alerted from this step once its checks pass (``BTC_ALERT_IN_RUN``).
    """
    start, end = window_of(context)
    wh = warehouse.get()
    history = wh.read_window("minute_aggregates", MINUTE_AGGREGATE_COLUMNS, start - timedelta(minutes=EWMA_LOOKBACK_MINUTES), end)
    scored = detect_ewma_anomalies(history, start, end, detection.ewma_config())
    wh.replace_window("ewma_anomalies", EWMA_ANOMALY_COLUMNS, scored, start, end)

    metrics = scored["metric"].nunique()
    expected = len(pd.date_range(start, end, freq="min", inclusive="left")) * metrics
    duplicated = int(scored.duplicated(["minute", "metric"]).sum())
    z = scored["z_score"].dropna().to_numpy(dtype=float)
    flagged = scored[scored["severity"].isin(FLAGGED)]
    scored_once, finite = len(scored) == expected and duplicated == 0, bool(np.isfinite(z).all())
    delivered = {}
    if scored_once and finite:
        minutes = int((end - start).total_seconds() // 60)
        delivered = deliver_in_run(wh, alerts, "ewma_anomalies", minutes, start, end, context.log)
    add_minute_metadata(context, start, end, pd.concat([
        scored.groupby("minute").size().rename("dagster/row_count"),
        flagged.groupby("minute").size().rename("anomaly_count"),
        count_by_minute(scored, "severity", SEVERITIES, "severity_"),
    ], axis=1).fillna(0).astype("int64"))
    return dg.MaterializeResult(
        metadata={
            "alerts_in_run": ", ".join(f"{n} {status}" for status, n in sorted(delivered.items())) or "none",
            "mode": detection.mode,
            "priors": _priors_label(detection),
            "baseline_sources": _sources(scored),
            "window_flagged_minutes": int(flagged["minute"].nunique()),
            **preview_metadata(context, markdown_preview(flagged[["minute", "metric", "value", "baseline", "z_score", "severity",
                                                                  "rule"]]), "flagged_preview"),
        },
        check_results=[
            dg.AssetCheckResult(check_name=EVERY_MINUTE_SCORED, passed=scored_once,
                                severity=dg.AssetCheckSeverity.ERROR,
                                metadata={"expected_rows": expected, "rows": len(scored), "duplicated": duplicated}),
            dg.AssetCheckResult(check_name=Z_SCORES_FINITE, passed=finite,
                                severity=dg.AssetCheckSeverity.ERROR,
                                metadata={"scored": len(z), "non_finite": int((~np.isfinite(z)).sum())}),
        ],
    )


@dg.asset(
    key=COORDINATED_CLUSTERS,
    group_name="detection",
    kinds={"pandas", "duckdb"},
    owners=OWNERS,
    partitions_def=minute_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[
        dg.AssetDep(RAW_TRANSACTIONS, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-CLUSTER_LOOKBACK_MINUTES)),
        MINUTE_AGGREGATES,
    ],
    pool=DUCKDB_POOL,
    check_specs=[dg.AssetCheckSpec(MEMBERS_IN_RAW, asset=COORDINATED_CLUSTERS, blocking=True,
                                   description="Every cluster member is a transaction of that minute in the raw layer")],
    metadata={"dagster/column_schema": column_schema(COORDINATED_CLUSTER_COLUMNS), "partition_expr": "minute",
              "dagster/table_name": "btc.coordinated_clusters"},
)
def coordinated_clusters(context: dg.AssetExecutionContext, detection: DetectionSettings, warehouse: WarehouseResource,
                         lake: LakeResource):
    """One row per typed structural pattern in a minute (CoinJoin, dust fan-out, consolidation,
    batch payout, burst of identical transactions), graded against that pattern's own baseline.

    A normal block's usual dozens of batch payouts are not a cluster; CoinJoin and dust labels are
    graded by the configured preset. Reads the raw lake with the lookback the baselines need.
    """
    start, end = window_of(context)
    raw = read_raw_window(lake.raw_transactions_path, start - timedelta(minutes=CLUSTER_LOOKBACK_MINUTES), end,
                          columns=list(CLUSTER_INPUT_COLUMNS))
    clusters = detect_coordinated_clusters(raw, start, end, detection.cluster_config())
    wh = warehouse.get()
    wh.replace_window("coordinated_clusters", COORDINATED_CLUSTER_COLUMNS, clusters, start, end)

    members = clusters[["minute", "member_hashes"]].explode("member_hashes").dropna().rename(columns={"member_hashes": "hash"})
    found = members.merge(raw[["minute", "hash"]].drop_duplicates(), on=["minute", "hash"], how="left", indicator=True)
    orphans = list(found.loc[found["_merge"] == "left_only", ["minute", "hash"]].itertuples(index=False, name=None))
    flagged = clusters[clusters["severity"].isin(FLAGGED)]
    add_minute_metadata(context, start, end, pd.concat([
        clusters.groupby("minute").size().rename("dagster/row_count"),
        flagged.groupby("minute").size().rename("flagged_clusters"),
        count_by_minute(clusters, "severity", SEVERITIES, "severity_"),
        count_by_minute(clusters, "pattern", sorted(clusters["pattern"].unique()), "pattern_"),
    ], axis=1).fillna(0).astype("int64"))
    return dg.MaterializeResult(
        metadata={
            "mode": detection.mode,
            "label_preset": detection.label_preset,
            "priors": _priors_label(detection),
            "baseline_sources": _sources(clusters),
            "window_clusters": len(clusters),
            **preview_metadata(context, markdown_preview(flagged[["minute", "pattern", "tx_count", "total_value_btc", "score",
                                                                  "severity", "sample_tx_hash"]]), "flagged_preview"),
        },
        check_results=[dg.AssetCheckResult(
            check_name=MEMBERS_IN_RAW, passed=not orphans, severity=dg.AssetCheckSeverity.ERROR,
            metadata={"members_checked": int(clusters["member_hashes"].map(len).sum()) if len(clusters) else 0,
                      "missing_members": len(orphans), "first_missing": str(orphans[:3])},
        )],
    )
