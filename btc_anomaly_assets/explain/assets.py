"""btc/anomaly_explanations: one structured forensic explanation per incident."""

import dagster as dg
import pandas as pd
import pyarrow as pa

from btc_anomaly_assets.common.dagster_helpers import (
    ANOMALY_EXPLANATIONS,
    DUCKDB_POOL,
    INCIDENTS,
    OWNERS,
    add_minute_metadata,
    column_schema,
    markdown_preview,
    preview_metadata,
    window_of,
)
from btc_anomaly_assets.common.partitions import minute_partitions
from btc_anomaly_assets.common.resources import WarehouseResource
from btc_anomaly_assets.common.schema import MINUTE_AGGREGATE_COLUMNS, SEVERITIES, Column, severity_rank
from btc_anomaly_assets.common.utc import utc_now
from btc_anomaly_assets.explain.claude_batches import PendingBatch
from btc_anomaly_assets.explain.outage import (
    PENDING_COLUMNS,
    PENDING_TABLE,
    cooling_off,
    next_pending,
    outage_errors,
    pending_evidences,
)
from btc_anomaly_assets.explain.prompt import ANOMALY_EXPLANATION_COLUMNS
from btc_anomaly_assets.explain.resources import ExplainerResource

TABLE = "anomaly_explanations"
PENDING_BATCHES_TABLE = "claude_pending_batches"
PENDING_BATCH_COLUMNS = [
    Column("batch_id", pa.string(), "Message Batches API batch id"),
    Column("payload_json", pa.string(), "What is needed to collect the batch's results"),
]
EVERY_FLAGGED_EXPLAINED = "every_flagged_incident_explained"
FLUSH_EVERY = 25


def _incidents_in(wh, start, end, minimum: str) -> pd.DataFrame:
    """Incidents at or above ``minimum`` whose minutes overlap ``[start, end)``."""
    keep = list(SEVERITIES[severity_rank(minimum):])
    return wh.query("SELECT * FROM btc.incidents WHERE minute < ? AND end_minute >= ? AND severity IN (SELECT unnest(?)) "
                    "ORDER BY minute", [end, start, keep])


def _primary_rows(wh, incidents: pd.DataFrame) -> dict[str, dict]:
    """The detector row of each incident's primary finding (EWMA or cluster), by finding id."""
    ids = incidents["primary_finding_id"].dropna().tolist()
    if not ids:
        return {}
    ewma = wh.query("SELECT * FROM btc.ewma_anomalies WHERE anomaly_id IN (SELECT unnest(?))", [ids])
    clusters = wh.query("SELECT * FROM btc.coordinated_clusters WHERE cluster_id IN (SELECT unnest(?))", [ids])
    rows = {r["anomaly_id"]: r for r in ewma.to_dict("records")}
    rows.update({r["cluster_id"]: r for r in clusters.to_dict("records")})
    return rows


@dg.asset(
    key=ANOMALY_EXPLANATIONS,
    group_name="explain",
    kinds={"anthropic", "duckdb"},
    owners=OWNERS,
    partitions_def=minute_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[INCIDENTS],
    pool=DUCKDB_POOL,
    check_specs=[dg.AssetCheckSpec(EVERY_FLAGGED_EXPLAINED, asset=ANOMALY_EXPLANATIONS,
                                   description="Every incident at or above the minimum severity has a valid explanation")],
    metadata={"dagster/column_schema": column_schema(ANOMALY_EXPLANATION_COLUMNS), "partition_expr": "minute",
              "dagster/table_name": "btc.anomaly_explanations"},
)
def anomaly_explanations(context: dg.AssetExecutionContext, explainer: ExplainerResource, warehouse: WarehouseResource):
    """One row per incident (severity >= ``BTC_EXPLAIN_MIN_SEVERITY``): the four forensic questions as
    structured fields, so one real event has one verdict.

    Keyed by the incident id and cached by the evidence's content hash, so re-materializing never
    duplicates or re-bills. Claude (official SDK, JSON-schema output) when ANTHROPIC_API_KEY is set;
    otherwise a deterministic rule-based explainer, labelled ``source = rules`` in every row. When
    Claude is unavailable (429/5xx/529, timeouts, a failing model check, a budget), the incident gets
    the labelled rule-based answer and its Claude explanation is recorded as pending and retried by
    later runs within their budget: the run succeeds and the alerts go out.
    """
    from btc_anomaly_assets.explain.incident_evidence import evidence_from_incident
    from btc_anomaly_assets.explain.rules import RuleExplainer

    columns = ANOMALY_EXPLANATION_COLUMNS
    start, end = window_of(context)
    wh = warehouse.get()
    found = _incidents_in(wh, start, end, explainer.min_severity)
    aggregates = wh.read_window("minute_aggregates", MINUTE_AGGREGATE_COLUMNS, start, end)
    wh.ensure_table(TABLE, columns)
    wh.ensure_table(PENDING_BATCHES_TABLE, PENDING_BATCH_COLUMNS)
    wh.ensure_table(PENDING_TABLE, PENDING_COLUMNS)

    usd_rate = {
        m: usd / btc for m, usd, btc in zip(aggregates["minute"], aggregates["total_value_usd"], aggregates["total_value_btc"])
        if pd.notna(usd) and btc
    }
    primaries = _primary_rows(wh, found)
    evidences = [evidence_from_incident(row, primaries.get(row["primary_finding_id"]),
                                        usd_per_btc=usd_rate.get(pd.Timestamp(row["minute"])))
                 for row in found.to_dict("records")]
    flagged = {e["anomaly_id"] for e in evidences}
    # Incidents no longer flagged in this window (detection re-run) lose their explanation: range-safe.
    with wh.connect() as con:
        con.execute(f"DELETE FROM btc.{TABLE} WHERE minute >= ? AND minute < ? AND NOT list_contains(?::VARCHAR[], anomaly_id)",
                    [start, end, sorted(flagged)])

    known = set(wh.query(f"SELECT content_hash FROM btc.{TABLE}")["content_hash"])
    now = utc_now().replace(microsecond=0)
    day_start = now.replace(hour=0, minute=0, second=0)
    used_today = int(wh.query(
        f"SELECT coalesce(sum(input_tokens + output_tokens), 0) AS t FROM btc.{TABLE} WHERE source = 'claude' AND written_at >= ?",
        [day_start])["t"].iloc[0])
    batches = [PendingBatch.from_json(p) for p in wh.query(f"SELECT payload_json FROM btc.{PENDING_BATCHES_TABLE}")["payload_json"]]
    owed_before = wh.query(f"SELECT * FROM btc.{PENDING_TABLE}")

    written: list[dict] = []
    buffer: list[dict] = []
    claude_wanted = bool(explainer.api_key)
    engine, outage = (RuleExplainer(), None) if not claude_wanted else explainer.build_degrading(cooling_off(owed_before, now))
    still_batches, stats = batches, {}
    claude_rows: set[str] = set()
    to_claude = evidences + (pending_evidences(owed_before, evidences) if claude_wanted else [])
    try:
        if outage is None:
            run = engine.start_run(already_explained=known, tokens_used_today=used_today, pending_batches=batches)
            try:
                for row in run.explain(to_claude):
                    buffer.append(row)
                    claude_rows.add(row["anomaly_id"])
                    if len(buffer) >= FLUSH_EVERY:
                        written += _flush(wh, columns, buffer)
            except outage_errors() as exc:
                outage = f"Claude unavailable: {exc}"
                context.log.warning(f"{outage}; the remaining incidents get the rule-based explanation, Claude's is pending")
            stats = run.stats.as_metadata()
            still_batches = run.pending_batches
        written += _flush(wh, columns, buffer)
        # Whatever Claude did not answer (outage, call cap, token budget) gets the labelled rule-based
        # answer now and stays owed; an incident already answered (by Claude, or by rules earlier) keeps its row.
        owed: dict[str, tuple[dict, str, bool]] = {}
        if claude_wanted:
            claude_hashes = sorted({engine.content_hash(e) for e in to_claude}) if engine.source == "claude" else []
            answered = set(wh.query(f"SELECT anomaly_id FROM btc.{TABLE} WHERE source = 'claude' AND status = 'ok' "
                                    "AND content_hash IN (SELECT unnest(?::VARCHAR[]))", [claude_hashes])["anomaly_id"])
            reason = outage or "the run's Claude call cap or the day's token budget was reached"
            owed = {e["anomaly_id"]: (e, reason, outage is not None) for e in to_claude
                    if e["anomaly_id"] not in answered and e["anomaly_id"] not in claude_rows}
            fallback = [e for e in evidences if e["anomaly_id"] in owed]
        else:
            answered, fallback = set(), evidences
        rules = RuleExplainer().start_run(already_explained=known)
        for row in rules.explain(fallback):
            buffer.append(row)
        written += _flush(wh, columns, buffer)
        wh.replace_all(PENDING_TABLE, PENDING_COLUMNS, next_pending(owed_before, owed, answered | claude_rows, now)
                       if claude_wanted else next_pending(owed_before, {}, set(), now))
    finally:
        written += _flush(wh, columns, buffer)
        getattr(engine, "close", lambda: None)()
    _replace_pending(wh, still_batches)
    if outage:
        context.log.warning(f"{outage}: {len(owed)} incident(s) explained by the rule-based explainer, Claude's answer pending")

    stored = wh.query(f"SELECT * FROM btc.{TABLE} WHERE anomaly_id IN (SELECT unnest(?)) ORDER BY minute", [sorted(flagged)])
    explained_ok = set(stored.loc[stored["status"] == "ok", "anomaly_id"])
    missing = sorted(flagged - explained_ok)
    sources = sorted(stored["source"].dropna().unique())
    if "rules" in sources and not claude_wanted:
        context.log.warning("ANTHROPIC_API_KEY is not set: explanations come from the rule-based explainer (source = rules)")
    in_window = stored[(stored["minute"] >= pd.Timestamp(start)) & (stored["minute"] < pd.Timestamp(end))]
    add_minute_metadata(context, start, end, pd.concat([
        in_window.groupby("minute").size().rename("dagster/row_count"),
        in_window[in_window["status"] == "ok"].groupby("minute").size().rename("explained"),
    ], axis=1).fillna(0).astype("int64"))
    return dg.MaterializeResult(
        metadata={
            "explained_this_run": len(written),
            "window_flagged_incidents": len(flagged),
            "sources": ", ".join(sources) or "none",
            "model": ", ".join(sorted(stored["model_id"].dropna().unique())) or "none",
            "pending_batches": len(still_batches),
            "claude_outage": outage or "none",
            "claude_pending_explanations": len(owed) if claude_wanted else 0,
            **{f"explainer_{k}": v for k, v in stats.items() if isinstance(v, (int, float, str))},
            **preview_metadata(context, markdown_preview(stored[["minute", "anomaly_id", "severity", "source", "confidence", "summary"]])),
        },
        check_results=[dg.AssetCheckResult(
            check_name=EVERY_FLAGGED_EXPLAINED,
            passed=not missing,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"flagged": len(flagged), "explained_ok": len(flagged & explained_ok), "missing": len(missing),
                      "first_missing": ", ".join(missing[:5]), "claude_pending": len(owed) if claude_wanted else 0},
        )],
    )


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
