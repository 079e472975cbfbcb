"""btc/incidents: one row per real event a person triages, grouping every finding of its minute(s)."""

from datetime import timedelta

import dagster as dg
import pandas as pd

from btc_anomaly_assets.alerts.resources import AlertDestinationResource
from btc_anomaly_assets.alerts.sensors import deliver_in_run
from btc_anomaly_assets.common.dagster_helpers import (
    COORDINATED_CLUSTERS,
    DUCKDB_POOL,
    EWMA_ANOMALIES,
    INCIDENTS,
    MINUTE_AGGREGATES,
    OWNERS,
    RAW_TRANSACTIONS,
    TRANSACTION_FORECAST,
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
    FORECAST_EXCURSION_COLUMNS,
    MINUTE_AGGREGATE_COLUMNS,
    SEVERITIES,
)
from btc_anomaly_assets.incidents.excursions import counted_excursions
from btc_anomaly_assets.incidents.findings import findings_from_rows
from btc_anomaly_assets.incidents.model import INCIDENT_COLUMNS, MIN_INCIDENT_SEVERITY, TX_COLUMNS, build_incidents, text_problems
from btc_anomaly_assets.incidents.resources import IncidentSettings

TABLE = "incidents"
EVERY_FINDING_ONCE = "every_finding_in_exactly_one_incident"
NATURAL_UNITS = "incident_text_in_natural_units"
BLOCK_HISTORY_MINUTES = 360  # to know the usual transactions per block (the block-arrival band)


def hour_start(moment):
    """Runs of minutes never cross the top of an hour, so a window is regrouped from its first hour's start."""
    return moment.replace(minute=0, second=0, microsecond=0)


@dg.asset(
    key=INCIDENTS,
    group_name="detection",
    kinds={"pandas", "duckdb"},
    owners=OWNERS,
    partitions_def=minute_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[
        dg.AssetDep(EWMA_ANOMALIES, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-59)),
        dg.AssetDep(COORDINATED_CLUSTERS, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-59)),
        dg.AssetDep(TRANSACTION_FORECAST, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-59)),
        dg.AssetDep(MINUTE_AGGREGATES, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-BLOCK_HISTORY_MINUTES)),
        RAW_TRANSACTIONS,
    ],
    pool=DUCKDB_POOL,
    op_tags={"dagster/priority": "1"},
    check_specs=[
        dg.AssetCheckSpec(EVERY_FINDING_ONCE, asset=INCIDENTS, blocking=True,
                          description="Every finding at low or above (EWMA metric, cluster, counted forecast excursion) "
                                      "of the window is in exactly one incident"),
        dg.AssetCheckSpec(NATURAL_UNITS, asset=INCIDENTS, blocking=True,
                          description="No headline shows a log10 value or 'n/a'; every transaction carries a real BTC amount"),
    ],
    metadata={"dagster/column_schema": column_schema(INCIDENT_COLUMNS), "partition_expr": "minute",
              "dagster/table_name": "btc.incidents"},
)
def incidents(context: dg.AssetExecutionContext, warehouse: WarehouseResource, lake: LakeResource,
              incident_settings: IncidentSettings, alerts: AlertDestinationResource):
    """One row per incident: a minute (or a run of consecutive minutes of one phenomenon) with all its
    findings as evidence, a severity derived from them, a plain-words headline in BTC / sat/vB / tx/min
    and the transactions that carry it, each linked to a public block explorer.

    Forecast excursions that block arrival explains are set aside, not alerted. The incident id is
    the first minute's (``inc-YYYYMMDD-HHMM``): re-materializing gives the same id. A live minute's
    incidents are alerted from this step once its checks pass (``BTC_ALERT_IN_RUN``).
    """
    start, end = window_of(context)
    regroup_from = hour_start(start)
    wh = warehouse.get()
    ewma = wh.read_window("ewma_anomalies", EWMA_ANOMALY_COLUMNS, regroup_from, end)
    clusters = wh.read_window("coordinated_clusters", COORDINATED_CLUSTER_COLUMNS, regroup_from, end)
    excursions = wh.read_window("forecast_excursions", FORECAST_EXCURSION_COLUMNS, regroup_from, end)
    aggregates = wh.read_window("minute_aggregates", MINUTE_AGGREGATE_COLUMNS,
                                start - timedelta(minutes=BLOCK_HISTORY_MINUTES), end)
    raw = read_raw_window(lake.raw_transactions_path, regroup_from, end, columns=TX_COLUMNS)

    findings = findings_from_rows(ewma.to_dict("records"), clusters.to_dict("records"))
    counted, set_aside = counted_excursions(excursions.to_dict("records"), aggregates)
    if set_aside:
        context.log.info(f"{len(set_aside)} forecast excursion(s) set aside as block-arrival artefacts "
                         f"(first: {set_aside[0]['minute']:%H:%M}, {set_aside[0]['cap']})")
    findings += counted
    frame = build_incidents(findings, raw, explorer_url=incident_settings.base_url())
    wh.replace_window(TABLE, INCIDENT_COLUMNS, frame, regroup_from, end)

    in_window = frame[(frame["end_minute"] >= pd.Timestamp(start)) & (frame["minute"] < pd.Timestamp(end))]
    expected = [f["finding_id"] for f in findings
                if SEVERITIES.index(f["severity"]) >= SEVERITIES.index(MIN_INCIDENT_SEVERITY)
                and start <= f["minute"] < end]
    grouped = [i for ids in frame["finding_ids"] for i in ids]
    counts = pd.Series(grouped, dtype=object).value_counts()
    missing = [i for i in expected if i not in counts.index]
    repeated = sorted(counts[counts > 1].index)
    problems = {row["incident_id"]: text_problems(row) for row in in_window.to_dict("records")}
    problems = {k: v for k, v in problems.items() if v}
    checks_pass = not missing and not repeated and not problems
    delivered = {}
    if checks_pass:
        minutes = int((end - start).total_seconds() // 60)
        delivered = deliver_in_run(wh, alerts, TABLE, minutes, start, end, context.log)

    window_rows = frame[(frame["minute"] >= pd.Timestamp(start)) & (frame["minute"] < pd.Timestamp(end))]
    add_minute_metadata(context, start, end, pd.concat([
        window_rows.groupby("minute").size().rename("dagster/row_count"),
        count_by_minute(window_rows, "severity", SEVERITIES[1:], "severity_"),
    ], axis=1).fillna(0).astype("int64"))
    by_severity = in_window["severity"].value_counts()
    return dg.MaterializeResult(
        metadata={
            "alerts_in_run": ", ".join(f"{n} {status}" for status, n in sorted(delivered.items())) or "none",
            "window_incidents": len(in_window),
            **{f"window_{s}": int(by_severity.get(s, 0)) for s in SEVERITIES[1:]},
            "excursions_counted": len(counted),
            "excursions_set_aside_as_block_arrival": len(set_aside),
            "explorer_url": incident_settings.base_url(),
            **preview_metadata(context, markdown_preview(in_window.sort_values("minute")[["incident_id", "severity", "headline", "top_tx_url"]])),
        },
        check_results=[
            dg.AssetCheckResult(check_name=EVERY_FINDING_ONCE, passed=not missing and not repeated,
                                severity=dg.AssetCheckSeverity.ERROR,
                                metadata={"findings": len(expected), "missing": len(missing), "repeated": len(repeated),
                                          "first_missing": ", ".join(missing[:3]), "first_repeated": ", ".join(repeated[:3])}),
            dg.AssetCheckResult(check_name=NATURAL_UNITS, passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
                                metadata={"incidents": len(in_window), "with_problems": len(problems),
                                          "first_problem": str(next(iter(problems.items()), ""))}),
        ],
    )
