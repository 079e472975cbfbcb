"""The short human summary ``btc-anomaly demo`` prints: what was loaded and what was flagged."""

from __future__ import annotations

from datetime import datetime

from btc_anomaly_assets.common import settings
from btc_anomaly_assets.common.lake import raw_path, read_raw_window
from btc_anomaly_assets.common.warehouse import Warehouse

MEDIUM_OR_ABOVE = "('medium', 'high')"


def _table_rows(warehouse: Warehouse, sql: str, params: list) -> list[tuple]:
    try:
        return [tuple(r) for r in warehouse.query(sql, params).itertuples(index=False)]
    except Exception as exc:  # a stage that has not run yet has no table: say so instead of failing
        if "does not exist" in str(exc):
            return []
        raise


def print_summary(start: datetime, end: datetime) -> None:
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

    flagged = _table_rows(warehouse, "SELECT minute, metric, value, baseline, z_score, severity, rule FROM btc.ewma_anomalies "
                          f"WHERE minute >= ? AND minute < ? AND severity IN {MEDIUM_OR_ABOVE} ORDER BY minute, metric", window)
    counts = _table_rows(warehouse, "SELECT severity, count(*) FROM btc.ewma_anomalies WHERE minute >= ? AND minute < ? "
                         "GROUP BY severity ORDER BY severity", window)
    if counts:
        print("EWMA anomalies   : " + ", ".join(f"{sev} {n}" for sev, n in counts))
        for minute, metric, value, baseline, z, severity, rule in flagged:
            z_text = f"z={z:.1f}" if z is not None and z == z else "z=n/a"
            if metric.startswith("log10_"):  # amounts are scored on a log scale: show them in their units
                metric, value, baseline = metric[len("log10_"):], 10 ** value, 10 ** baseline
            print(f"  {minute:%H:%M} {severity:<6} {metric:<24} {value:,.6g} vs baseline {baseline:,.6g} ({z_text}) [{rule}]")

    clusters = _table_rows(warehouse, "SELECT minute, pattern, tx_count, total_value_btc, severity, sample_tx_hash "
                           "FROM btc.coordinated_clusters WHERE minute >= ? AND minute < ? "
                           f"AND severity IN {MEDIUM_OR_ABOVE} ORDER BY minute", window)
    total = _table_rows(warehouse, "SELECT count(*) FROM btc.coordinated_clusters WHERE minute >= ? AND minute < ?", window)
    if total:
        print(f"clusters         : {total[0][0]} in all, {len(clusters)} at medium or above")
        for minute, pattern, n, value, severity, sample in clusters:
            print(f"  {minute:%H:%M} {severity:<6} {pattern:<22} {n} tx, {value:,.4f} BTC, e.g. {sample[:16]}…")

    explained = _table_rows(warehouse, "SELECT source, status, count(*) FROM btc.anomaly_explanations "
                            "WHERE minute >= ? AND minute < ? GROUP BY source, status ORDER BY source, status", window)
    if explained:
        print("explanations     : " + ", ".join(f"{n} {status} ({source})" for source, status, n in explained))
        for minute, summary in _table_rows(warehouse, "SELECT minute, summary FROM btc.anomaly_explanations "
                                           "WHERE minute >= ? AND minute < ? AND status = 'ok' ORDER BY minute LIMIT 5", window):
            print(f"  {minute:%H:%M} {summary}")

    forecast = _table_rows(warehouse, "SELECT cutoff, min(yhat), max(yhat), min(yhat_lower), max(yhat_upper), count(*), any_value(series) "
                           "FROM btc.transaction_forecast WHERE cutoff > ? AND cutoff <= ? GROUP BY cutoff ORDER BY cutoff DESC LIMIT 1",
                           window)
    if forecast:
        cutoff, lo, hi, lower, upper, steps, series = forecast[0]
        print(f"forecast         : {steps} one-minute steps from {cutoff:%H:%M} of {series}: "
              f"yhat {lo:,.1f}..{hi:,.1f}, interval [{lower:,.1f}, {upper:,.1f}]")

    alerts = _table_rows(warehouse, "SELECT status, kind, destination, count(*) FROM btc.alerts GROUP BY ALL ORDER BY ALL", [])
    if alerts:
        print("alerts           : " + ", ".join(f"{n} {kind} {status} ({dest})" for status, kind, dest, n in alerts))
