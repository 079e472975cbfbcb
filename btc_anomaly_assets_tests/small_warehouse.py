"""A small DuckDB warehouse with a few known rows per table, for the report and dashboard tests.

Two hours of block-time minutes (2025-08-13 00:00-02:00 UTC) with a block every ten minutes,
EWMA rows for two metrics with one low, one medium and one high minute, three clusters (one of
them ``info``, two sharing members), two forecasts (cutoffs 01:30 and 02:00), one excursion and
two explanations (one ``ok``, one ``failed``). Everything is written with
``Warehouse.replace_window``, as the assets do. ``build_small_warehouse`` returns the frames it
wrote so tests can compute expectations independently of the code under test.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from btc_anomaly_assets.common.schema import (
    COORDINATED_CLUSTER_COLUMNS,
    EWMA_ANOMALY_COLUMNS,
    FORECAST_EXCURSION_COLUMNS,
    MINUTE_AGGREGATE_COLUMNS,
    TRANSACTION_FORECAST_COLUMNS,
    column_names,
)
from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_assets.explain.prompt import ANOMALY_EXPLANATION_COLUMNS

START = datetime(2025, 8, 13, 0, 0)
END = datetime(2025, 8, 13, 2, 0)
MINUTES = pd.date_range(START, END, freq="min", inclusive="left").as_unit("us")
BLOCK_EVERY = 10  # a block lands in minutes 00:03, 00:13, ...
FLAGGED = {  # (minute, metric) -> severity of the scored rows that are not info
    (pd.Timestamp("2025-08-13 00:33"), "log10_max_value_btc"): "high",
    (pd.Timestamp("2025-08-13 01:13"), "tx_count"): "medium",
    (pd.Timestamp("2025-08-13 01:23"), "tx_count"): "low",
}
METRICS = ("tx_count", "log10_max_value_btc")
LIVE_SUMMARY_MARKER = "live-refresh-check"


def _aggregates() -> pd.DataFrame:
    rows = []
    for i, minute in enumerate(MINUTES):
        has_block = i % BLOCK_EVERY == 3
        count = 1000 + 37 * i if has_block else 0
        rows.append({
            "minute": minute,
            "time_basis": "block" if has_block else None,
            "tx_count": count,
            "block_count": 1 if has_block else 0,
            "block_ids": [909766 + i // BLOCK_EVERY] if has_block else [],
            "avg_value_sat": 50_000_000.0 + i if has_block else np.nan,
            "avg_fee_sat": 700.0 + i if has_block else np.nan,
            "avg_fee_to_value_ratio": 0.01 + i / 1e4 if has_block else np.nan,
            "avg_input_count": 2.0 + i / 100 if has_block else np.nan,
            "avg_output_count": 3.0 + i / 100 if has_block else np.nan,
            "avg_tx_size_bytes": 400.0 + i if has_block else np.nan,
        })
    frame = pd.DataFrame(rows)
    # The trailing 5-minute twins: block minutes are 10 apart, so a 5-minute window holds at most one.
    counts = frame["tx_count"]
    frame["tx_count_5min"] = counts.rolling(5, min_periods=1).sum().astype("int64")
    for name in ("avg_value_sat", "avg_fee_sat", "avg_fee_to_value_ratio", "avg_input_count", "avg_output_count",
                 "avg_tx_size_bytes"):
        frame[f"{name}_5min"] = frame[name].rolling(5, min_periods=1).mean()
    for column in column_names(MINUTE_AGGREGATE_COLUMNS):
        if column not in frame:
            frame[column] = np.nan
    return frame


def _ewma(aggregates: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, agg in aggregates.iterrows():
        minute, count = agg["minute"], int(agg["tx_count"])
        for metric in METRICS:
            scored = count > 0
            value = float(count) if metric == "tx_count" else (3.0 if scored else np.nan)
            baseline = value * 0.9 if scored else np.nan
            severity = FLAGGED.get((minute, metric), "info") if scored else "info"
            z = {"info": 0.5, "low": 3.5, "medium": 5.5, "high": 9.0}[severity] if scored else np.nan
            rows.append({
                "anomaly_id": f"ewma-{metric}-{minute:%H%M}",
                "minute": minute,
                "metric": metric,
                "value": value,
                "baseline": baseline,
                "deviation": value - baseline if scored else np.nan,
                "scale": 10.0 if scored else np.nan,
                "z_score": z,
                "severity": severity,
                "rule": f"robust_z>={z}" if scored else "not_scored:no_block_in_minute",
                "mode": "default",
                "time_basis": agg["time_basis"],
                "tx_count": count,
                "block_ids": agg["block_ids"],
                "baseline_source": "history" if scored else None,  # detection v2
            })
    return pd.DataFrame(rows)


def _cluster(minute: str, pattern: str, severity: str, members: list[str], inputs: float, outputs: float) -> dict:
    return {
        "cluster_id": f"cluster-{pattern}-{minute}",
        "minute": pd.Timestamp(f"2025-08-13 {minute}"),
        "pattern": pattern,
        "tx_count": len(members),
        "avg_input_count": inputs,
        "avg_output_count": outputs,
        "total_value_btc": 1.5 * len(members),
        "sample_tx_hash": members[0],
        "member_hashes": members,
        "score": 5.0,
        "baseline": 1.0,
        "severity": severity,
        "rule": f"test rule for {pattern}",
        "mode": "default",
        "time_basis": "block",
        "block_ids": [909769],
        "baseline_source": "history",  # detection v2
        "evidence": "members",
        "evidence_score": 5.0,
    }


def _clusters() -> pd.DataFrame:
    batch = [f"b{i:02d}" + "0" * 61 for i in range(25)]
    burst = [f"s{i:02d}" + "0" * 61 for i in range(8)] + batch[:2]  # shares two members with the batch
    return pd.DataFrame([
        _cluster("00:33", "fan_out_batch", "info", batch, 1.0, 40.0),
        _cluster("00:33", "similar_burst", "medium", burst, 2.0, 2.0),
        _cluster("01:13", "coinjoin", "low", ["c00" + "0" * 61], 60.0, 60.0),
    ])


def _forecast(cutoff: datetime, level: float) -> pd.DataFrame:
    ds = pd.date_range(cutoff, periods=30, freq="min").as_unit("us")
    yhat = level + np.arange(30, dtype=float)
    return pd.DataFrame({
        "minute": pd.Timestamp(cutoff - timedelta(minutes=1)),
        "cutoff": pd.Timestamp(cutoff),
        "ds": ds,
        "step": np.arange(1, 31, dtype=np.int64),
        "yhat": yhat,
        "yhat_lower": yhat - 20,
        "yhat_upper": yhat + 20,
        "series": "tx_per_minute_trailing_60min",
        "time_basis": "block",
        "model": "prophet test",
        "history_points": np.int64(60),
    })


def _excursions() -> pd.DataFrame:
    return pd.DataFrame([{
        "anomaly_id": "exc-1", "minute": pd.Timestamp("2025-08-13 01:40"), "cutoff": pd.Timestamp("2025-08-13 01:30"),
        "step": 11, "y": 400.0, "yhat": 110.0, "yhat_lower": 90.0, "yhat_upper": 130.0, "direction": "above",
        "excess_half_widths": 13.5, "severity": "high", "series": "tx_per_minute_trailing_60min", "time_basis": "block",
    }])


def explanation_record(anomaly_id: str, minute: str, **fields) -> dict:
    """One ANOMALY_EXPLANATION_COLUMNS row: the given fields, NULL for the rest."""
    row = {c: None for c in column_names(ANOMALY_EXPLANATION_COLUMNS)}
    row.update({"anomaly_id": anomaly_id, "minute": pd.Timestamp(f"2025-08-13 {minute}"), "written_at": pd.Timestamp("2025-08-13 03:00")})
    for key, value in fields.items():
        if key not in row:
            raise KeyError(f"{key} is not an explanation column")
        row[key] = value
    return row


def _explanations() -> pd.DataFrame:
    ok = explanation_record(
        "ewma-log10_max_value_btc-0033", "00:33",
        anomaly_kind="ewma_metric", subject="log10_max_value_btc", severity="high",
        statistically_unusual=True, unusual_reason="83x the usual largest transaction",
        suspected_patterns=["large_transfer"], legitimate_causes=["exchange cold-wallet rebalancing", "OTC settlement"],
        flag_for_investigation=True, flag_rationale="above the 1,000 BTC review threshold",
        confidence="high", insufficient_evidence=False,
        summary="max_value_btc 19,609 BTC vs baseline 236 BTC - large_transfer; FLAG",
        narrative="A single 19,609 BTC transfer landed in block 909769.",
        source="claude", model_id="claude-haiku-4-5-20251001", prompt_version="forensic-v1", status="ok",
        api_calls=1, input_tokens=1200, output_tokens=300, estimated_cost_usd=0.0027,
    )
    failed = explanation_record(
        "cluster-similar_burst-00:33", "00:33",
        anomaly_kind="coordinated_cluster", subject="similar_burst", severity="medium",
        source="claude", model_id="claude-haiku-4-5-20251001", prompt_version="forensic-v1", status="failed",
        error="answer truncated at max_tokens", api_calls=1, input_tokens=1100, output_tokens=1024,
    )
    return pd.DataFrame([ok, failed])


def build_small_warehouse(path: str) -> dict[str, pd.DataFrame]:
    """Write the small warehouse at ``path``; returns the frame written to each table."""
    wh = Warehouse(path)
    frames = {}
    frames["minute_aggregates"] = _aggregates()
    frames["ewma_anomalies"] = _ewma(frames["minute_aggregates"])
    frames["coordinated_clusters"] = _clusters()
    frames["transaction_forecast"] = pd.concat(
        [_forecast(datetime(2025, 8, 13, 1, 30), 100.0), _forecast(datetime(2025, 8, 13, 2, 0), 200.0)], ignore_index=True
    )
    frames["forecast_excursions"] = _excursions()
    frames["anomaly_explanations"] = _explanations()
    contracts = {
        "minute_aggregates": MINUTE_AGGREGATE_COLUMNS,
        "ewma_anomalies": EWMA_ANOMALY_COLUMNS,
        "coordinated_clusters": COORDINATED_CLUSTER_COLUMNS,
        "transaction_forecast": TRANSACTION_FORECAST_COLUMNS,
        "forecast_excursions": FORECAST_EXCURSION_COLUMNS,
        "anomaly_explanations": ANOMALY_EXPLANATION_COLUMNS,
    }
    for table, frame in frames.items():
        wh.replace_window(table, contracts[table], frame[column_names(contracts[table])], START, END)
    return frames


def add_live_explanation(path: str, minute: str = "01:13") -> str:
    """Write one more explanation (as a run would while the dashboard is open); returns its summary."""
    summary = f"{LIVE_SUMMARY_MARKER} at {minute}"
    row = explanation_record(
        f"live-{minute}", minute, anomaly_kind="ewma_metric", subject="tx_count", severity="medium",
        statistically_unusual=True, unusual_reason="z 5.5", suspected_patterns=["none"], legitimate_causes=["a big block"],
        flag_for_investigation=False, flag_rationale="ordinary", confidence="medium", insufficient_evidence=False,
        summary=summary, narrative="Written while the dashboard was open.", source="rules", model_id="rules-v1",
        prompt_version="rules-v1", status="ok", api_calls=0, input_tokens=0, output_tokens=0,
    )
    Warehouse(path).upsert("anomaly_explanations", ANOMALY_EXPLANATION_COLUMNS, pd.DataFrame([row]), key="anomaly_id")
    return summary
