"""btc/anomaly_explanations: one structured forensic explanation per flagged anomaly or cluster."""

from datetime import datetime, timezone

import dagster as dg
import pandas as pd
import pyarrow as pa

from btc_anomaly_assets.common.dagster_helpers import (
    ANOMALY_EXPLANATIONS,
    COORDINATED_CLUSTERS,
    DUCKDB_POOL,
    EWMA_ANOMALIES,
    OWNERS,
    add_minute_metadata,
    column_schema,
    markdown_preview,
    window_of,
)
from btc_anomaly_assets.common.lake import largest_transactions
from btc_anomaly_assets.common.partitions import minute_partitions
from btc_anomaly_assets.common.resources import LakeResource, WarehouseResource
from btc_anomaly_assets.common.schema import (
    COORDINATED_CLUSTER_COLUMNS,
    EWMA_ANOMALY_COLUMNS,
    MINUTE_AGGREGATE_COLUMNS,
    SEVERITIES,
    Column,
    severity_rank,
)
from btc_anomaly_assets.explain.prompt import ANOMALY_EXPLANATION_COLUMNS
from btc_anomaly_assets.explain.resources import ExplainerResource

TABLE = "anomaly_explanations"
PENDING_BATCHES_TABLE = "claude_pending_batches"
PENDING_BATCH_COLUMNS = [
    Column("batch_id", pa.string(), "Message Batches API batch id"),
    Column("payload_json", pa.string(), "What is needed to collect the batch's results"),
]
EVERY_FLAGGED_EXPLAINED = "every_flagged_item_explained"
SAMPLE_HASHES_PER_MINUTE = 3
FLUSH_EVERY = 25


def _flagged_ids(ewma: pd.DataFrame, clusters: pd.DataFrame, minimum: str) -> set[str]:
    keep = set(SEVERITIES[severity_rank(minimum):])
    return set(ewma.loc[ewma["severity"].isin(keep), "anomaly_id"]) | set(clusters.loc[clusters["severity"].isin(keep), "cluster_id"])


@dg.asset(
    key=ANOMALY_EXPLANATIONS,
    group_name="explain",
    kinds={"anthropic", "duckdb"},
    owners=OWNERS,
    partitions_def=minute_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[EWMA_ANOMALIES, COORDINATED_CLUSTERS],
    pool=DUCKDB_POOL,
    check_specs=[dg.AssetCheckSpec(EVERY_FLAGGED_EXPLAINED, asset=ANOMALY_EXPLANATIONS,
                                   description="Every anomaly and cluster at or above the minimum severity has a valid explanation")],
    metadata={"dagster/column_schema": column_schema(ANOMALY_EXPLANATION_COLUMNS), "partition_expr": "minute",
              "dagster/table_name": "btc.anomaly_explanations"},
)
def anomaly_explanations(context: dg.AssetExecutionContext, explainer: ExplainerResource, warehouse: WarehouseResource,
                         lake: LakeResource):
    """One row per flagged anomaly or cluster: the four forensic questions as structured fields.

    Keyed by the detector's stable id and cached by the evidence's content hash, so
    re-materializing never duplicates or re-bills. Claude (official SDK, JSON-schema output) when
    ANTHROPIC_API_KEY is set; otherwise a deterministic rule-based explainer, labelled
    ``source = rules`` in every row.
    """
    from btc_anomaly_assets.explain.claude_explainer import ClaudeRetriesExhausted, ClaudeSpendLimitReached, PendingBatch
    from btc_anomaly_assets.explain.evidence import select_evidence

    columns = ANOMALY_EXPLANATION_COLUMNS
    start, end = window_of(context)
    wh = warehouse.get()
    ewma = wh.read_window("ewma_anomalies", EWMA_ANOMALY_COLUMNS, start, end)
    clusters = wh.read_window("coordinated_clusters", COORDINATED_CLUSTER_COLUMNS, start, end)
    aggregates = wh.read_window("minute_aggregates", MINUTE_AGGREGATE_COLUMNS, start, end)
    wh.ensure_table(TABLE, columns)
    wh.ensure_table(PENDING_BATCHES_TABLE, PENDING_BATCH_COLUMNS)

    usd_rate = {
        m: usd / btc for m, usd, btc in zip(aggregates["minute"], aggregates["total_value_usd"], aggregates["total_value_btc"])
        if pd.notna(usd) and btc
    }
    evidences = select_evidence(
        ewma.to_dict("records"), clusters.to_dict("records"), min_severity=explainer.min_severity,
        usd_per_btc=lambda minute: usd_rate.get(pd.Timestamp(minute)),
        sample_tx_hashes=_sample_hashes(lake, ewma, explainer.min_severity),
    )
    flagged = _flagged_ids(ewma, clusters, explainer.min_severity)
    # Items no longer flagged in this window (detection re-run) lose their explanation: range-safe.
    with wh.connect() as con:
        con.execute(f"DELETE FROM btc.{TABLE} WHERE minute >= ? AND minute < ? AND NOT list_contains(?::VARCHAR[], anomaly_id)",
                    [start, end, sorted(flagged)])

    known = wh.query(f"SELECT content_hash FROM btc.{TABLE}")["content_hash"]
    day_start = datetime.now(timezone.utc).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
    used_today = int(wh.query(
        f"SELECT coalesce(sum(input_tokens + output_tokens), 0) AS t FROM btc.{TABLE} WHERE source = 'claude' AND written_at >= ?",
        [day_start])["t"].iloc[0])
    pending = [PendingBatch.from_json(p) for p in wh.query(f"SELECT payload_json FROM btc.{PENDING_BATCHES_TABLE}")["payload_json"]]

    engine = explainer.build()
    written: list[dict] = []
    buffer: list[dict] = []
    failure: Exception | None = None
    try:
        run = engine.start_run(already_explained=set(known), tokens_used_today=used_today, pending_batches=pending)
        for row in run.explain(evidences):
            buffer.append(row)
            if len(buffer) >= FLUSH_EVERY:
                written += _flush(wh, columns, buffer)
        stats = run.stats.as_metadata()
        still_pending = run.pending_batches
    except (ClaudeRetriesExhausted, ClaudeSpendLimitReached) as exc:
        failure, stats, still_pending = exc, {}, pending
    finally:
        written += _flush(wh, columns, buffer)
        getattr(engine, "close", lambda: None)()
    _replace_pending(wh, still_pending)
    if failure is not None:
        raise dg.Failure(f"explanations stopped after {len(written)} row(s) were stored: {failure}") from failure

    stored = wh.query(f"SELECT * FROM btc.{TABLE} WHERE minute >= ? AND minute < ? ORDER BY minute", [start, end])
    explained_ok = set(stored.loc[stored["status"] == "ok", "anomaly_id"])
    missing = sorted(flagged - explained_ok)
    sources = sorted(stored["source"].dropna().unique())
    if "rules" in sources:
        context.log.warning("ANTHROPIC_API_KEY is not set: explanations come from the rule-based explainer (source = rules)")
    add_minute_metadata(context, start, end, pd.concat([
        stored.groupby("minute").size().rename("dagster/row_count"),
        stored[stored["status"] == "ok"].groupby("minute").size().rename("explained"),
    ], axis=1).fillna(0).astype("int64"))
    return dg.MaterializeResult(
        metadata={
            "explained_this_run": len(written),
            "window_flagged_items": len(flagged),
            "sources": ", ".join(sources) or "none",
            "model": ", ".join(sorted(stored["model_id"].dropna().unique())) or "none",
            "pending_batches": len(still_pending),
            **{f"explainer_{k}": v for k, v in stats.items() if isinstance(v, (int, float, str))},
            "preview": markdown_preview(stored[["minute", "anomaly_kind", "severity", "source", "confidence", "summary"]]),
        },
        check_results=[dg.AssetCheckResult(
            check_name=EVERY_FLAGGED_EXPLAINED,
            passed=not missing,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"flagged": len(flagged), "explained_ok": len(flagged & explained_ok), "missing": len(missing),
                      "first_missing": ", ".join(missing[:5])},
        )],
    )


def _sample_hashes(lake: LakeResource, ewma: pd.DataFrame, minimum: str):
    """The largest transactions of each flagged minute, so the prompt can cite real hashes."""
    keep = set(SEVERITIES[severity_rank(minimum):])
    minutes = [m.to_pydatetime() for m in ewma.loc[ewma["severity"].isin(keep), "minute"]]
    by_minute = largest_transactions(lake.raw_transactions_path, minutes, SAMPLE_HASHES_PER_MINUTE)
    return lambda row: by_minute.get(pd.Timestamp(row["minute"]).to_pydatetime(), [])


def _flush(wh, columns, buffer: list[dict]) -> list[dict]:
    if not buffer:
        return []
    rows = list(buffer)
    wh.upsert(TABLE, columns, pd.DataFrame(rows), key="anomaly_id")
    buffer.clear()
    return rows


def _replace_pending(wh, pending) -> None:
    frame = pd.DataFrame([{"batch_id": p.batch_id, "payload_json": p.to_json()} for p in pending],
                         columns=["batch_id", "payload_json"])
    wh.replace_all(PENDING_BATCHES_TABLE, PENDING_BATCH_COLUMNS, frame)
