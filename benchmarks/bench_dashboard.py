"""How long a dashboard refresh and a report take on a warehouse of N days (prints figures).

Builds a synthetic first-seen warehouse (every minute scored, 6 EWMA metrics, a few clusters and
explanations per hour, a forecast per hour) in a temporary folder, then times each dashboard view
(what one callback runs, queries + figure) and ``write_report`` for the last 24 hours and for all
data. Usage: ``python benchmarks/bench_dashboard.py [days]`` (default 7).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from btc_anomaly_assets.common.schema import (
    COORDINATED_CLUSTER_COLUMNS,
    EWMA_ANOMALY_COLUMNS,
    MINUTE_AGGREGATE_COLUMNS,
    TRANSACTION_FORECAST_COLUMNS,
    column_names,
)
from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_assets.dashboard import app as dash_app
from btc_anomaly_assets.dashboard import queries as q
from btc_anomaly_assets.dashboard.report import write_report
from btc_anomaly_assets.explain.prompt import ANOMALY_EXPLANATION_COLUMNS

METRICS = ("tx_count", "log10_total_value_btc", "log10_max_value_btc", "log10_median_fee_rate_sat_vb",
           "log10_p90_fee_rate_sat_vb", "log10_p99_fee_rate_sat_vb")


def build(path: str, days: int) -> dict[str, int]:
    rng = np.random.default_rng(7)
    start = pd.Timestamp("2025-08-01")
    minutes = pd.date_range(start, periods=days * 1440, freq="min").as_unit("us")
    n = len(minutes)
    counts = rng.poisson(300, n)
    agg = pd.DataFrame({c: np.nan for c in column_names(MINUTE_AGGREGATE_COLUMNS)}, index=range(n))
    agg["minute"], agg["time_basis"], agg["tx_count"] = minutes, "first_seen", counts
    agg["block_count"], agg["block_ids"] = 0, [[] for _ in range(n)]
    for c in ("fan_in_10_count", "fan_out_10_count"):
        agg[c] = 0
    agg["tx_count_5min"] = pd.Series(counts).rolling(5, min_periods=1).sum().astype(int)
    agg["avg_value_sat"] = rng.lognormal(17, 1, n)

    ewma = pd.DataFrame({
        "minute": np.repeat(minutes, len(METRICS)),
        "metric": np.tile(METRICS, n),
        "value": rng.normal(300, 20, n * len(METRICS)),
    })
    ewma["baseline"] = 300.0
    ewma["deviation"] = ewma["value"] - 300.0
    ewma["scale"] = 20.0
    ewma["z_score"] = ewma["deviation"] / 20.0
    ewma["severity"] = pd.cut(ewma["z_score"].abs(), [-1, 3, 3.5, 4, 99], labels=["info", "low", "medium", "high"]).astype(str)
    ewma["rule"] = "robust_z"
    ewma["mode"], ewma["time_basis"] = "default", "first_seen"
    ewma["tx_count"] = np.repeat(counts, len(METRICS))
    ewma["block_ids"] = [[] for _ in range(len(ewma))]
    ewma["anomaly_id"] = [f"a{i}" for i in range(len(ewma))]

    hours = minutes[::60]
    clusters = pd.DataFrame({
        "cluster_id": [f"c{i}" for i in range(len(hours))], "minute": hours, "pattern": "similar_burst",
        "tx_count": 25, "avg_input_count": 1.0, "avg_output_count": 2.0, "total_value_btc": 1.0,
        "sample_tx_hash": "0" * 64, "member_hashes": [[f"{i}-{j}" for j in range(25)] for i in range(len(hours))],
        "score": 5.0, "baseline": 1.0, "severity": "medium", "rule": "bench", "mode": "default",
        "time_basis": "first_seen", "block_ids": [[] for _ in range(len(hours))],
    })
    expl = pd.DataFrame({c: None for c in column_names(ANOMALY_EXPLANATION_COLUMNS)}, index=range(len(hours)))
    expl["anomaly_id"], expl["minute"], expl["anomaly_kind"], expl["subject"] = clusters["cluster_id"], hours, "coordinated_cluster", "similar_burst"
    expl["severity"], expl["status"], expl["source"], expl["summary"], expl["narrative"] = "medium", "ok", "rules", "bench summary", "bench narrative " * 20
    expl["suspected_patterns"] = [["other"]] * len(hours)
    expl["legitimate_causes"] = [["a bot"]] * len(hours)
    expl["api_calls"] = expl["input_tokens"] = expl["output_tokens"] = 0
    expl["written_at"] = hours
    last = minutes[-1]
    cutoff = last + pd.Timedelta(minutes=1)
    fc = pd.DataFrame({
        "minute": last, "cutoff": cutoff, "ds": pd.date_range(cutoff, periods=30, freq="min").as_unit("us"),
        "step": np.arange(1, 31), "yhat": 300.0, "yhat_lower": 250.0, "yhat_upper": 350.0,
        "series": "tx_count_per_minute", "time_basis": "first_seen", "model": "bench", "history_points": 1440,
    })
    wh = Warehouse(path)
    end = minutes[-1] + pd.Timedelta(minutes=1)
    for table, cols, frame in (("minute_aggregates", MINUTE_AGGREGATE_COLUMNS, agg), ("ewma_anomalies", EWMA_ANOMALY_COLUMNS, ewma),
                               ("coordinated_clusters", COORDINATED_CLUSTER_COLUMNS, clusters),
                               ("anomaly_explanations", ANOMALY_EXPLANATION_COLUMNS, expl),
                               ("transaction_forecast", TRANSACTION_FORECAST_COLUMNS, fc)):
        wh.replace_window(table, cols, frame[column_names(cols)], start, end)
    return {"minutes": n, "ewma_rows": len(ewma), "clusters": len(clusters), "explanations": len(expl)}


def in_one_connection(wh: Warehouse, view):
    """As the app runs a view: every query of one callback on one connection."""
    def run():
        with q.reading(wh) as session:
            return view(session)
    return run


def timed(label: str, fn, repeat: int = 3) -> None:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    print(f"  {label:<46} {best * 1000:8.1f} ms")


def main() -> None:
    days = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "warehouse.duckdb")
        began = time.perf_counter()
        sizes = build(path, days)
        print(f"built {days} days in {time.perf_counter() - began:.1f} s: {sizes}")
        wh = Warehouse(path)
        timed("one connection (lock + open + close)", lambda: wh.query("SELECT 1"), repeat=10)
        for hours in (24, "all"):
            print(f"window {hours}{' h' if hours != 'all' else ''} (best of 3):")
            timed("status line", in_one_connection(wh, lambda c: dash_app.status_view(c, hours, Path(path), 30)))
            timed("overview (3 charts + note)", in_one_connection(wh, lambda c: dash_app.overview_view(c, hours, "medium")))
            timed("z-score heatmap", in_one_connection(wh, lambda c: dash_app.heatmap_view(c, hours, "tx_count")))
            timed("clusters chart", in_one_connection(wh, lambda c: dash_app.clusters_view(c, hours, "low")))
            timed("forecast chart", in_one_connection(wh, lambda c: dash_app.forecast_view(c, hours)))
            timed("explanation table rows", in_one_connection(wh, lambda c: dash_app.explanation_rows_view(c, hours, "bench")))
        last = pd.Timestamp("2025-08-01") + pd.Timedelta(days=days)
        timed("write_report, last 24 h", lambda: write_report(path, Path(tmp) / "r24", start=last - pd.Timedelta(hours=24), end=last), repeat=1)
        timed("write_report, all data", lambda: write_report(path, Path(tmp) / "rall"), repeat=1)


if __name__ == "__main__":
    main()
