"""The short human summary ``btc-anomaly demo`` prints: what was loaded, the incidents found, and what was alerted."""

from __future__ import annotations

from datetime import datetime

from btc_anomaly_assets.common import settings
from btc_anomaly_assets.common.lake import raw_path, read_raw_window
from btc_anomaly_assets.common.schema import SEVERITIES
from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_assets.incidents.excursions import counted_excursions


def _table_rows(warehouse: Warehouse, sql: str, params: list) -> list[tuple]:
    try:
        return [tuple(r) for r in warehouse.query(sql, params).itertuples(index=False)]
    except Exception as exc:  # a stage that has not run yet has no table: say so instead of failing
        if "does not exist" in str(exc):
            return []
        raise


def print_summary(start: datetime, end: datetime, since: datetime | None = None) -> None:
    """What the range holds now; ``since`` (naive UTC) limits the alerts line to what this command sent."""
    raw = read_raw_window(raw_path(settings.lake_url()), start, end)
    warehouse = Warehouse(settings.duckdb_path())
    window = [start, end]
    print(f"\n== What was found in [{start:%Y-%m-%d %H:%M}, {end:%H:%M}) UTC ==")
    print(f"raw transactions : {len(raw):,} rows in {raw['minute'].nunique()} minutes, "
          f"{raw.loc[raw['block_id'] >= 0, 'block_id'].nunique()} blocks, time basis "
          f"{', '.join(sorted(raw['time_basis'].unique())) or 'none'}  (lake: {raw_path(settings.lake_url())})")

    agg = _table_rows(warehouse, "SELECT count(*), sum(tx_count), count(*) FILTER (WHERE tx_count > 0) "
                      "FROM btc.minute_aggregates WHERE minute >= ? AND minute < ?", window)
    if agg and agg[0][0]:
        print(f"minute aggregates: {agg[0][0]} minutes ({agg[0][2]} with transactions), {int(agg[0][1] or 0):,} transactions")

    _print_findings(warehouse, window)
    _print_incidents(warehouse, window)

    explained = _table_rows(warehouse, "SELECT source, status, count(*) FROM btc.anomaly_explanations "
                            "WHERE minute >= ? AND minute < ? GROUP BY source, status ORDER BY source, status", window)
    if explained:
        print("explanations     : " + ", ".join(f"{n} {status} ({source})" for source, status, n in explained)
              + " - one per incident at medium or above")
    pending = _table_rows(warehouse, "SELECT count(*), any_value(reason) FROM btc.claude_pending_explanations", [])
    if pending and pending[0][0]:
        print(f"                   {pending[0][0]} Claude explanation(s) pending (rule-based until then): {pending[0][1]}")

    forecast = _table_rows(warehouse, "SELECT cutoff, min(yhat), max(yhat), min(yhat_lower), max(yhat_upper), count(*), any_value(series) "
                           "FROM btc.transaction_forecast WHERE cutoff > ? AND cutoff <= ? GROUP BY cutoff ORDER BY cutoff DESC LIMIT 1",
                           window)
    if forecast:
        cutoff, lo, hi, lower, upper, steps, series = forecast[0]
        print(f"forecast         : {steps} one-minute steps from {cutoff:%H:%M} of {series}: "
              f"yhat {lo:,.1f}..{hi:,.1f}, interval [{lower:,.1f}, {upper:,.1f}]")

    _print_alerts(warehouse, window, since)


def _print_findings(warehouse: Warehouse, window: list) -> None:
    parts = []
    for label, table in (("EWMA metrics", "ewma_anomalies"), ("clusters", "coordinated_clusters")):
        counts = _table_rows(warehouse, f"SELECT severity, count(*) FROM btc.{table} WHERE minute >= ? AND minute < ? "
                             "AND severity <> 'info' GROUP BY severity ORDER BY severity", window)
        if counts:
            parts.append(f"{label} " + ", ".join(f"{sev} {n}" for sev, n in _by_rank(counts)))
    excursions = _table_rows(warehouse, "SELECT * FROM btc.forecast_excursions WHERE minute >= ? AND minute < ?", window)
    if excursions:
        frame = warehouse.query("SELECT * FROM btc.forecast_excursions WHERE minute >= ? AND minute < ?", window)
        history = warehouse.query("SELECT * FROM btc.minute_aggregates WHERE minute < ? ORDER BY minute", window[1:])
        counted, set_aside = counted_excursions(frame.to_dict("records"), history)
        parts.append(f"forecast excursions {len(frame)} ({len(counted)} counted, {len(set_aside)} set aside: "
                     "newest origin per minute, block arrival explains the rest)")
    if parts:
        print("findings         : " + "; ".join(parts))


def _by_rank(counts: list[tuple]) -> list[tuple]:
    return sorted(counts, key=lambda c: -SEVERITIES.index(c[0]) if c[0] in SEVERITIES else 0)


def _print_incidents(warehouse: Warehouse, window: list) -> None:
    rows = _table_rows(warehouse, "SELECT minute, end_minute, severity, headline, top_tx_hash, top_tx_url FROM btc.incidents "
                       "WHERE minute >= ? AND minute < ? ORDER BY minute", window)
    if not rows:
        return
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[2]] = counts.get(row[2], 0) + 1
    shown = [r for r in rows if r[2] in ("medium", "high")]
    print(f"incidents        : {len(rows)} (" + ", ".join(f"{s} {counts[s]}" for s in reversed(SEVERITIES) if s in counts)
          + f"); {len(shown)} at medium or above:")
    for minute, end_minute, severity, headline, tx_hash, tx_url in shown:
        span = f"{minute:%H:%M}" + (f"-{end_minute:%H:%M}" if end_minute > minute else "")
        tx = f"  tx {tx_url}" if tx_hash else ""
        print(f"  {span} {severity:<6} {headline}{tx}")
    if len(rows) > len(shown):
        print(f"  ({len(rows) - len(shown)} low incident(s) are stored and shown in the dashboard, not alerted)")


def _print_alerts(warehouse: Warehouse, window: list, since: datetime | None) -> None:
    """What this command alerted for the window (messages created since ``since``), and what earlier runs had."""
    incidents = {r[0]: (r[1], r[2]) for r in _table_rows(
        warehouse, "SELECT incident_id, minute, severity FROM btc.incidents WHERE minute >= ? AND minute < ?", window)}
    rows = [(status, kind, destination, [] if items is None else list(items), created)
            for status, kind, destination, items, created in _table_rows(
                warehouse, "SELECT status, kind, destination, item_ids, created_at FROM btc.alerts WHERE asset = 'incidents'", [])]
    rows = [r for r in rows if set(r[3]) & set(incidents)]
    mine = [r for r in rows if since is None or (r[4] is not None and r[4] >= since)]
    if not mine:
        earlier = {i for r in rows if r[0] == "sent" for i in r[3] if i in incidents}
        print("alerted          : nothing new" + (f" ({len(earlier)} incident(s) of this window were alerted by earlier "
                                                  "runs; each alert goes out once)" if earlier else
                                                  " (no incident at the alert severity)"))
        return
    counts: dict[tuple, list] = {}
    for status, kind, destination, items, _ in mine:
        entry = counts.setdefault((status, kind, destination), [0, set()])
        entry[0] += 1
        entry[1].update(i for i in items if i in incidents)
    print("alerted          : " + ", ".join(f"{n} {kind} message(s) {status} covering {len(ids)} incident(s) ({dest})"
                                            for (status, kind, dest), (n, ids) in sorted(counts.items())))
    sent = sorted({i for (status, kind, _), (_, ids) in counts.items() if status == "sent" and kind in ("single", "digest")
                   for i in ids}, key=lambda i: incidents[i][0])
    if sent:
        print("                   " + ", ".join(f"{incidents[i][0]:%H:%M} {incidents[i][1]}" for i in sent))
