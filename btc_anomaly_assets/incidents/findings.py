"""Findings: one detector row (EWMA metric, cluster, forecast excursion) in the words and units a
person reads, with the phenomenon it shows and the severity it may carry into an incident.

A *finding* is a plain JSON-able dict. Values are natural units: a metric the EWMA detector scored
on log10 (``log10_max_value_btc``) is turned back into BTC here, so nothing downstream can print
a log10 value as an amount. Every finding keeps its detector's id (``finding_id``), its metric or
pattern id (``subject``) beside a human name (``label``), its detector severity and the severity
it counts with after the caps of the severity rule (``severity`` and ``cap``; see ``model``).

Caps (documented in ``model`` and the README): a *routine automated burst* (``similar_burst``
whose members are small payments, fewer than ``ROUTINE_BURST_MAX_MEMBERS`` of them, mean value
below ``ROUTINE_BURST_MAX_MEAN_BTC``) counts at most ``low``: such bursts of 24-37 identical
small transactions sit in about 15 % of real blocks. Forecast excursions are capped in
``excursions``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Iterable, Mapping

import pandas as pd

from btc_anomaly_assets.common.schema import SATOSHI_PER_BTC, SEVERITIES, severity_rank

KIND_EWMA = "ewma"
KIND_CLUSTER = "cluster"
KIND_FORECAST = "forecast"

LOG10_PREFIX = "log10_"
ROUTINE_BURST_MAX_MEMBERS = 100
ROUTINE_BURST_MAX_MEAN_BTC = 0.001  # 100,000 sat: a burst of payments below this is a bot's routine
ROUTINE_BURST_CEILING = "low"

# Phenomena, most telling first: ties between findings of equal severity go to the earlier one.
PHENOMENA = (
    "large_transfer",
    "value_surge",
    "fee_spike",
    "fee_outliers",
    "dust_fanout",
    "coinjoin",
    "consolidation",
    "batch_payouts",
    "bot_burst",
    "activity_surge",
    "rate_excursion",
    "structure_shift",
    "other",
)

# EWMA metric (without log10_) -> (phenomenon, human name)
METRICS = {
    "max_value_btc": ("large_transfer", "largest single transaction"),
    "total_value_btc": ("value_surge", "value moved"),
    "median_value_btc": ("value_surge", "median transaction value"),
    "total_value_usd": ("value_surge", "value moved in USD"),
    "median_fee_rate_sat_vb": ("fee_spike", "median fee rate"),
    "p90_fee_rate_sat_vb": ("fee_spike", "90th-percentile fee rate"),
    "p99_fee_rate_sat_vb": ("fee_spike", "99th-percentile fee rate"),
    "total_fee_btc": ("fee_spike", "fees paid"),
    "fee_outlier_tx_count": ("fee_outliers", "transactions paying 20x the median fee rate or more"),
    "tx_count": ("activity_surge", "transactions"),
    "tx_count_5min": ("activity_surge", "transactions in 5 minutes"),
    "avg_value_sat": ("value_surge", "mean transaction value"),
    "avg_value_sat_5min": ("value_surge", "mean transaction value over 5 minutes"),
    "avg_fee_sat": ("fee_spike", "mean fee"),
    "avg_fee_sat_5min": ("fee_spike", "mean fee over 5 minutes"),
    "avg_fee_to_value_ratio": ("fee_spike", "mean fee-to-value ratio"),
    "avg_input_count": ("structure_shift", "mean inputs per transaction"),
    "avg_output_count": ("structure_shift", "mean outputs per transaction"),
    "avg_tx_size_bytes": ("structure_shift", "mean transaction size"),
    "fan_in_10_count": ("consolidation", "transactions with 10 or more inputs"),
    "fan_out_10_count": ("batch_payouts", "transactions with 10 or more outputs"),
}
PER_BLOCK_METRICS = frozenset({"tx_count", "total_value_btc", "fee_outlier_tx_count"})

# Cluster pattern -> (phenomenon, human name)
PATTERNS = {
    "coinjoin": ("coinjoin", "CoinJoin round"),
    "dust_fanout": ("dust_fanout", "dust fan-out"),
    "fan_in_consolidation": ("consolidation", "consolidations"),
    "fan_out_batch": ("batch_payouts", "batch payouts"),
    "similar_burst": ("bot_burst", "identical transactions"),
    "seed_fan_in_out": ("batch_payouts", "transactions with 10 or more inputs or outputs (tutorial rule)"),
}


class FindingError(ValueError):
    """A detector row cannot become a finding; the message names the row."""


def missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, bytes, list, tuple, dict)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def number(value: Any) -> float | None:
    """A finite float, or None."""
    if missing(value):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def minute_of(value: Any, where: str) -> datetime:
    if missing(value):
        raise FindingError(f"{where}: the row has no minute")
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.to_pydatetime().replace(second=0, microsecond=0)


def _ints(value: Any) -> list[int]:
    if value is None or isinstance(value, (str, bytes)):
        return []
    try:
        return sorted({int(v) for v in value if not missing(v)})
    except TypeError:
        return []


def _strs(value: Any) -> list[str]:
    if value is None or isinstance(value, (str, bytes)):
        return [] if value is None else [str(value)]
    try:
        return [str(v) for v in value if not missing(v)]
    except TypeError:
        return []


def _severity(row: Mapping[str, Any], where: str) -> str:
    severity = row.get("severity")
    if missing(severity) or str(severity) not in SEVERITIES:
        raise FindingError(f"{where}: severity {severity!r} is not one of {SEVERITIES}")
    return str(severity)


def cap_severity(severity: str, ceiling: str) -> str:
    return SEVERITIES[min(severity_rank(severity), severity_rank(ceiling))]


def _metric_unit(metric: str) -> tuple[str, float]:
    base = metric.removesuffix("_5min")
    if base.endswith("_btc"):
        return "BTC", 1.0
    if base.endswith("_sat_vb"):
        return "sat/vB", 1.0
    if base.endswith("_sat"):
        return "BTC", 1.0 / SATOSHI_PER_BTC
    if base.endswith("_usd"):
        return "USD", 1.0
    if base.endswith("_bytes"):
        return "bytes", 1.0
    if base.endswith("_ratio"):
        return "fee/value", 1.0
    if base.startswith("avg_input_count"):
        return "inputs", 1.0
    if base.startswith("avg_output_count"):
        return "outputs", 1.0
    return "tx", 1.0


def finding_from_ewma_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A finding for one ``btc.ewma_anomalies`` row (values back in natural units)."""
    finding_id = row.get("anomaly_id")
    if missing(finding_id):
        raise FindingError("ewma row without anomaly_id")
    where = f"ewma_anomalies row {finding_id}"
    metric = str(row.get("metric") or "")
    log_scored = metric.startswith(LOG10_PREFIX)
    base = metric[len(LOG10_PREFIX):] if log_scored else metric
    phenomenon, label = METRICS.get(base, ("other", base.replace("_", " ")))
    unit, factor = _metric_unit(base)
    raw_value, raw_baseline = number(row.get("value")), number(row.get("baseline"))
    if log_scored:
        value = None if raw_value is None else 10.0 ** raw_value * factor
        baseline = None if raw_baseline is None else 10.0 ** raw_baseline * factor
    else:
        value = None if raw_value is None else raw_value * factor
        baseline = None if raw_baseline is None else raw_baseline * factor
    blocks = _ints(row.get("block_ids"))
    time_basis = None if missing(row.get("time_basis")) else str(row.get("time_basis"))
    per_block = time_basis == "block" and base in PER_BLOCK_METRICS and len(blocks) > 1
    severity = _severity(row, where)
    return {
        "finding_id": str(finding_id),
        "kind": KIND_EWMA,
        "minute": minute_of(row.get("minute"), where),
        "phenomenon": phenomenon,
        "subject": base,
        "label": label + (" per block" if per_block else ""),
        "value": value,
        "baseline": baseline,
        "unit": unit,
        "ratio": value / baseline if value is not None and baseline else None,
        "z": number(row.get("z_score")),
        "scored_on_log_scale": log_scored,
        "detector_severity": severity,
        "severity": severity,
        "cap": None,
        "rule": str(row.get("rule") or ""),
        "time_basis": time_basis,
        "block_ids": blocks,
        "tx_count": None if missing(row.get("tx_count")) else int(row.get("tx_count")),
        "mode": str(row.get("mode") or "default"),
    }


def finding_from_cluster_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A finding for one ``btc.coordinated_clusters`` row, with the routine-burst cap applied."""
    finding_id = row.get("cluster_id")
    if missing(finding_id):
        raise FindingError("cluster row without cluster_id")
    where = f"coordinated_clusters row {finding_id}"
    pattern = str(row.get("pattern") or "")
    phenomenon, label = PATTERNS.get(pattern, ("other", pattern.replace("_", " ")))
    members = int(row.get("tx_count") or 0)
    total = number(row.get("total_value_btc")) or 0.0
    severity = _severity(row, where)
    counted, cap = severity, None
    mean_value = total / members if members else None
    if pattern == "similar_burst" and members < ROUTINE_BURST_MAX_MEMBERS and mean_value is not None \
            and mean_value < ROUTINE_BURST_MAX_MEAN_BTC:
        counted = cap_severity(severity, ROUTINE_BURST_CEILING)
        if counted != severity:
            cap = (f"routine automated burst ({members} small payments, {mean_value * SATOSHI_PER_BTC:,.0f} sat each "
                   f"on average): counts at most {ROUTINE_BURST_CEILING}")
    sample = None if missing(row.get("sample_tx_hash")) else str(row.get("sample_tx_hash"))
    hashes = _strs(row.get("member_hashes"))
    return {
        "finding_id": str(finding_id),
        "kind": KIND_CLUSTER,
        "minute": minute_of(row.get("minute"), where),
        "phenomenon": phenomenon,
        "subject": pattern,
        "label": label,
        "value": float(members),
        "baseline": number(row.get("baseline")),
        "unit": "tx",
        "ratio": number(row.get("score")),
        "z": None,
        "scored_on_log_scale": False,
        "detector_severity": severity,
        "severity": counted,
        "cap": cap,
        "rule": str(row.get("rule") or ""),
        "time_basis": None if missing(row.get("time_basis")) else str(row.get("time_basis")),
        "block_ids": _ints(row.get("block_ids")),
        "members": members,
        "avg_inputs": number(row.get("avg_input_count")),
        "avg_outputs": number(row.get("avg_output_count")),
        "total_value_btc": total,
        "mean_value_btc": mean_value,
        "sample_tx_hash": sample,
        "member_hashes": ([sample] if sample else []) + [h for h in hashes if h != sample][:9],
        "mode": str(row.get("mode") or "default"),
    }


def finding_from_excursion_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A finding for one ``btc.forecast_excursions`` row (before the block-arrival rule of ``excursions``)."""
    finding_id = row.get("anomaly_id")
    if missing(finding_id):
        raise FindingError("forecast excursion row without anomaly_id")
    where = f"forecast_excursions row {finding_id}"
    y, lower, upper = number(row.get("y")), number(row.get("yhat_lower")), number(row.get("yhat_upper"))
    severity = _severity(row, where)
    return {
        "finding_id": str(finding_id),
        "kind": KIND_FORECAST,
        "minute": minute_of(row.get("minute"), where),
        "phenomenon": "rate_excursion",
        "subject": str(row.get("series") or "transaction rate"),
        "label": "transaction rate",
        "value": y,
        "baseline": number(row.get("yhat")),
        "unit": "tx/min",
        "ratio": y / number(row.get("yhat")) if y is not None and number(row.get("yhat")) else None,
        "z": None,
        "scored_on_log_scale": False,
        "detector_severity": severity,
        "severity": severity,
        "cap": None,
        "rule": f"outside the forecast interval by {number(row.get('excess_half_widths')) or 0:.2f} half-widths",
        "time_basis": None if missing(row.get("time_basis")) else str(row.get("time_basis")),
        "block_ids": [],
        "direction": str(row.get("direction") or "above"),
        "interval": [lower, upper],
        "cutoff": minute_of(row.get("cutoff"), where),
        "excess_half_widths": number(row.get("excess_half_widths")),
    }


def findings_from_rows(ewma: Iterable[Mapping[str, Any]] = (),
                       clusters: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Findings for every EWMA and cluster row above ``info`` that was scored (``not_scored`` rows are no finding)."""
    found = []
    for row in ewma:
        if str(row.get("rule") or "").startswith("not_scored") or row.get("severity") == "info":
            continue
        found.append(finding_from_ewma_row(row))
    for row in clusters:
        if row.get("severity") == "info":
            continue
        found.append(finding_from_cluster_row(row))
    return found
