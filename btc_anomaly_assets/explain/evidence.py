"""Normalized evidence for one flagged anomaly: the facts an explainer (Claude or the rules) reads.

An *evidence* is a plain JSON-able dict built from one row of ``btc.ewma_anomalies`` or
``btc.coordinated_clusters`` (``schema.EWMA_ANOMALY_COLUMNS`` / ``COORDINATED_CLUSTER_COLUMNS``).
Why a separate step:

- **Units an analyst reads.** Amounts become BTC (and USD when a BTC/USD rate is known), fee rates
  stay sat/vB, satoshi never appears bare (the tutorial's Claude answers misread satoshi as USD).
- **A stable cache key.** ``evidence_hash`` is the sha256 of the canonical JSON of the facts, so the
  same anomaly re-materialized with the same facts is recognised and never explained (or billed)
  twice; ``explanation_content_hash`` adds the model and prompt version.
- **One filter.** ``select_evidence`` keeps rows at or above a minimum severity, skipping
  ``not_scored`` rows, most severe first.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping

from btc_anomaly_assets.common.schema import (
    MINUTE_AGGREGATE_COLUMNS,
    SATOSHI_PER_BTC,
    SEVERITIES,
    TIME_BASIS_BLOCK,
    TIME_BASIS_FIRST_SEEN,
    severity_rank,
)

# Bump when the evidence layout or normalization changes: it is part of every evidence hash,
# so a change re-explains everything instead of reusing answers given to different facts.
EVIDENCE_VERSION = "evidence-v1"

KIND_EWMA = "ewma_metric"
KIND_CLUSTER = "coordinated_cluster"
# How a rule-based summary begins, so no reader takes it for Claude's (alerts state the source once).
RULE_BASED_LABEL = "[rule-based]"

MAX_SAMPLE_TX_HASHES = 5
_SIGNIFICANT_DIGITS = 10  # floats are rounded so recomputation noise cannot change the hash

TIME_BASIS_MEANING = {
    TIME_BASIS_BLOCK: (
        "block time: every transaction carries the timestamp of the block that confirmed it, so all of a "
        "block's transactions (typically 2,000-4,000) land in the same minute and most minutes have none. "
        "Per-minute counts and totals therefore measure block arrival and block size, not the moment "
        "users sent the transactions."
    ),
    TIME_BASIS_FIRST_SEEN: (
        "first_seen: the time the transaction first reached our node's mempool (arrival time), before "
        "confirmation. Per-minute figures reflect when users broadcast transactions."
    ),
}
TIME_BASIS_UNKNOWN = "unknown: the minute had no rows, so no time basis was recorded."

# What each coordinated-cluster pattern means, in the words an analyst needs.
PATTERN_DESCRIPTIONS = {
    "coinjoin": "transactions matching published CoinJoin heuristics (many equal-value outputs from several inputs)",
    "dust_fanout": "transactions paying many dust-sized outputs (a possible dusting campaign)",
    "fan_in_consolidation": "transactions merging many inputs into few outputs (inputs/outputs >= 5)",
    "fan_out_batch": "transactions paying many outputs from few inputs (inputs/outputs <= 0.2, batch payouts)",
    "similar_burst": "a burst of structurally similar transactions in the same minute",
    "seed_fan_in_out": (
        "the original tutorial's rule: at least 2 transactions with >= 10 inputs or >= 10 outputs in the minute "
        "(fires on almost every block; weak evidence of coordination)"
    ),
}

_COUNT_UNITS = {
    "tx_count": "transactions",
    "fee_outlier_tx_count": "transactions",
    "tx_count_5min": "transactions",
    "block_count": "blocks",
    "fan_in_10_count": "transactions",
    "fan_out_10_count": "transactions",
    "avg_input_count": "inputs per transaction",
    "avg_output_count": "outputs per transaction",
    "avg_input_count_5min": "inputs per transaction",
    "avg_output_count_5min": "outputs per transaction",
}

_METRIC_DESCRIPTIONS = {c.name: c.description for c in MINUTE_AGGREGATE_COLUMNS}

# The EWMA detector names a metric scored on log10 ``log10_<column>`` (all numbers of that row are
# log10 units), and under block time divides these additive metrics by the minute's block count.
LOG10_PREFIX = "log10_"
PER_BLOCK_METRICS = frozenset({"tx_count", "total_value_btc", "fee_outlier_tx_count"})


class EvidenceError(ValueError):
    """A detector row cannot be turned into evidence (a missing id, minute or unknown severity)."""


# ---------------------------------------------------------------------------------------------
# Small value helpers (rows may be dicts or pandas Series holding numpy/pandas scalars)
# ---------------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    # pandas NaT / NA without importing pandas here
    return type(value).__name__ in {"NaTType", "NAType"}


def _field(row: Mapping[str, Any], name: str) -> Any:
    value = row.get(name) if hasattr(row, "get") else row[name]
    return None if _is_missing(value) else value


def _float(value: Any) -> float | None:
    """A finite float, or None for missing/NaN/inf (no rounding)."""
    if _is_missing(value):
        return None
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        return None
    return number


def _number(value: Any) -> float | None:
    """A finite float rounded to ``_SIGNIFICANT_DIGITS`` (for hashing), or None."""
    number = _float(value)
    return None if number is None else _round(number)


def _round(number: float) -> float:
    if number == 0:
        return 0.0
    digits = _SIGNIFICANT_DIGITS - int(math.floor(math.log10(abs(number)))) - 1
    return float(round(number, digits))


def _int_or_none(value: Any) -> int | None:
    return None if _is_missing(value) else int(value)


def _int_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        raise EvidenceError(f"expected a list of integers, got the string {value!r}")
    return sorted({int(v) for v in value if not _is_missing(v)})


def _str_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value if not _is_missing(v)]


def _minute_iso(value: Any, where: str) -> str:
    if _is_missing(value):
        raise EvidenceError(f"{where}: the row has no `minute`")
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise EvidenceError(f"{where}: `minute` must be a datetime, got {type(value).__name__}")
    if value.tzinfo is not None:
        raise EvidenceError(f"{where}: `minute` must be naive UTC (schema contract), got tz {value.tzinfo}")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _severity(row: Mapping[str, Any], where: str) -> str:
    severity = _field(row, "severity")
    if severity is None:
        raise EvidenceError(f"{where}: the row has no `severity`")
    severity_rank(str(severity))  # raises naming the bad value
    return str(severity)


# ---------------------------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------------------------


def metric_unit(metric: str) -> tuple[str, float]:
    """(display unit, factor from the stored unit) for a metric name; satoshi become BTC.

    Units follow the schema's naming convention: the unit is the column-name suffix.
    """
    base = metric[: -len("_5min")] if metric.endswith("_5min") else metric
    if base.endswith("_btc"):
        return "BTC", 1.0
    if base.endswith("_sat"):  # tutorial (seed-parity) averages are in satoshi
        return "BTC", 1.0 / SATOSHI_PER_BTC
    if base.endswith("_usd"):
        return "USD", 1.0
    if base.endswith("_sat_vb"):
        return "sat/vB", 1.0
    if base.endswith("_vb"):
        return "vB", 1.0
    if base.endswith("_bytes"):
        return "bytes", 1.0
    if base.endswith("_ratio"):
        return "ratio (fee / value)", 1.0
    if metric in _COUNT_UNITS:
        return _COUNT_UNITS[metric], 1.0
    if base.endswith("_count"):
        return "count", 1.0
    return "unitless", 1.0


def metric_description(metric: str) -> str:
    """The schema's own description of a minute-aggregate metric (or a neutral fallback)."""
    return _METRIC_DESCRIPTIONS.get(metric, f"detector metric `{metric}`")


def quantity(value: float | None, unit: str, usd_per_btc: float | None) -> dict[str, Any] | None:
    """A measured amount in its display unit, with its USD equivalent for BTC amounts."""
    if value is None:
        return None
    out: dict[str, Any] = {"value": _round(value), "unit": unit}
    if unit == "BTC" and usd_per_btc:
        out["usd"] = _round(value * usd_per_btc)
    return out


def _checked_price(usd_per_btc: float | None, where: str) -> float | None:
    if usd_per_btc is None or _is_missing(usd_per_btc):
        return None
    price = float(usd_per_btc)
    if not price > 0:
        raise EvidenceError(f"{where}: usd_per_btc must be positive, got {usd_per_btc!r}")
    return _round(price)


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------


def _common(row: Mapping[str, Any], id_column: str, kind: str, usd_per_btc: float | None) -> dict[str, Any]:
    anomaly_id = _field(row, id_column)
    if not anomaly_id:
        raise EvidenceError(f"{kind} row has no `{id_column}`")
    where = f"{kind} {anomaly_id}"
    time_basis = _field(row, "time_basis")
    return {
        "evidence_version": EVIDENCE_VERSION,
        "anomaly_id": str(anomaly_id),
        "anomaly_kind": kind,
        "minute_utc": _minute_iso(_field(row, "minute"), where),
        "severity": _severity(row, where),
        "rule": str(_field(row, "rule") or ""),
        "mode": str(_field(row, "mode") or "default"),
        "time_basis": time_basis,
        "time_basis_meaning": TIME_BASIS_MEANING.get(time_basis, TIME_BASIS_UNKNOWN),
        "block_ids": _int_list(_field(row, "block_ids")),
        "usd_per_btc": _checked_price(usd_per_btc, where),
    }


def evidence_from_ewma_row(
    row: Mapping[str, Any],
    *,
    usd_per_btc: float | None = None,
    sample_tx_hashes: Iterable[str] = (),
) -> dict[str, Any]:
    """Evidence for one ``btc.ewma_anomalies`` row.

    ``usd_per_btc`` (e.g. the minute's ``total_value_usd / total_value_btc``) adds USD figures;
    ``sample_tx_hashes`` (e.g. the minute's largest transactions) gives the explainer something
    concrete to cite, since the EWMA table itself carries no transaction ids.

    Metrics scored on log10 (``log10_<column>``: every number of the row is in log10 units) are
    converted back: value and baseline in natural units, the deviation as a ratio, the scale as a
    multiplicative factor, so nobody reads "3.1 BTC" where the row says log10 = 3.1.
    """
    evidence = _common(row, "anomaly_id", KIND_EWMA, usd_per_btc)
    metric = _field(row, "metric")
    if not metric:
        raise EvidenceError(f"ewma row {evidence['anomaly_id']} has no `metric`")
    metric = str(metric)
    log_scored = metric.startswith(LOG10_PREFIX)
    base = metric[len(LOG10_PREFIX):] if log_scored else metric
    unit, factor = metric_unit(base)
    price = evidence["usd_per_btc"]
    # Unrounded here: rounding a log10 value first would show up after exponentiation.
    raw = {name: _float(_field(row, name)) for name in ("value", "baseline", "deviation", "scale")}
    if log_scored:
        value, baseline = (_from_log10(raw[n], factor) for n in ("value", "baseline"))
        deviation = _round(value - baseline) if value is not None and baseline is not None else None
        ratio = _from_log10(raw["deviation"], 1.0)
        scale, scale_factor = None, _from_log10(raw["scale"], 1.0)
    else:
        value, baseline, scale = (None if raw[n] is None else _round(raw[n] * factor) for n in ("value", "baseline", "scale"))
        deviation = _round(raw["deviation"] * factor) if raw["deviation"] is not None else None
        if deviation is None and value is not None and baseline is not None:
            deviation = _round(value - baseline)
        ratio = _round(value / baseline) if value is not None and baseline else None
        scale_factor = None
    blocks = len(evidence["block_ids"])
    evidence.update(
        {
            "metric": metric,
            "base_metric": base,
            "metric_description": metric_description(base),
            "scored_on": "log10" if log_scored else "linear",
            "per_block": bool(evidence["time_basis"] == TIME_BASIS_BLOCK and base in PER_BLOCK_METRICS and blocks > 1),
            "unit": unit,
            "observed": quantity(value, unit, price),
            "baseline": quantity(baseline, unit, price),
            "deviation": quantity(deviation, unit, price),
            "scale": quantity(scale, unit, price),
            "scale_factor": _number(scale_factor),
            "z_score": _number(_field(row, "z_score")),
            "ratio_to_baseline": _number(ratio),
            "tx_count_in_minute": _int_or_none(_field(row, "tx_count")),
            "sample_tx_hashes": _str_list(list(sample_tx_hashes))[:MAX_SAMPLE_TX_HASHES],
        }
    )
    evidence["evidence_hash"] = evidence_hash(evidence)
    return evidence


def _from_log10(value: float | None, factor: float) -> float | None:
    return None if value is None else _round(10.0**value * factor)


def evidence_from_cluster_row(row: Mapping[str, Any], *, usd_per_btc: float | None = None) -> dict[str, Any]:
    """Evidence for one ``btc.coordinated_clusters`` row (members, structure, pattern score)."""
    evidence = _common(row, "cluster_id", KIND_CLUSTER, usd_per_btc)
    pattern = _field(row, "pattern")
    if not pattern:
        raise EvidenceError(f"cluster row {evidence['anomaly_id']} has no `pattern`")
    sample = _field(row, "sample_tx_hash")
    members = _str_list(_field(row, "member_hashes"))
    samples = ([str(sample)] if sample else []) + [h for h in members if h != sample]
    member_count = _int_or_none(_field(row, "tx_count"))
    evidence.update(
        {
            "pattern": str(pattern),
            "pattern_description": PATTERN_DESCRIPTIONS.get(str(pattern), f"detector pattern `{pattern}`"),
            "member_tx_count": member_count if member_count is not None else len(members),
            "avg_input_count": _number(_field(row, "avg_input_count")),
            "avg_output_count": _number(_field(row, "avg_output_count")),
            "total_value": quantity(_number(_field(row, "total_value_btc")), "BTC", evidence["usd_per_btc"]),
            "pattern_score": _number(_field(row, "score")),
            "pattern_baseline": _number(_field(row, "baseline")),
            "sample_tx_hashes": samples[:MAX_SAMPLE_TX_HASHES],
        }
    )
    evidence["evidence_hash"] = evidence_hash(evidence)
    return evidence


# ---------------------------------------------------------------------------------------------
# Hashing and selection
# ---------------------------------------------------------------------------------------------


def canonical_json(evidence: Mapping[str, Any]) -> str:
    """The evidence as canonical JSON (sorted keys, no whitespace), without its own hash."""
    facts = {k: v for k, v in evidence.items() if k != "evidence_hash"}
    return json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def evidence_hash(evidence: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(evidence).encode("utf-8")).hexdigest()


def explanation_content_hash(evidence: Mapping[str, Any], model_id: str, prompt_version: str) -> str:
    """The explanation cache key: the facts, plus who explains them and with which prompt.

    64 hex characters, which also makes it a valid Message Batches ``custom_id``.
    """
    key = f"{evidence['evidence_hash']}|{model_id}|{prompt_version}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def select_evidence(
    ewma_rows: Iterable[Mapping[str, Any]] = (),
    cluster_rows: Iterable[Mapping[str, Any]] = (),
    *,
    min_severity: str = "medium",
    usd_per_btc: Callable[[Any], float | None] | None = None,
    sample_tx_hashes: Callable[[Mapping[str, Any]], Iterable[str]] | None = None,
) -> list[dict[str, Any]]:
    """Evidence for every flagged row at or above ``min_severity``, most severe first.

    ``usd_per_btc(minute)`` and ``sample_tx_hashes(ewma_row)`` are optional lookups the caller
    supplies from the minute aggregates / raw lake. Rows whose rule is ``not_scored:*`` are skipped.
    """
    floor = severity_rank(min_severity)
    price_of = usd_per_btc or (lambda minute: None)
    selected: list[dict[str, Any]] = []
    for row in rows_of(ewma_rows):
        if _flagged(row, floor):
            hashes = sample_tx_hashes(row) if sample_tx_hashes else ()
            selected.append(
                evidence_from_ewma_row(row, usd_per_btc=price_of(_field(row, "minute")), sample_tx_hashes=hashes)
            )
    for row in rows_of(cluster_rows):
        if _flagged(row, floor):
            selected.append(evidence_from_cluster_row(row, usd_per_btc=price_of(_field(row, "minute"))))
    selected.sort(key=lambda e: (-SEVERITIES.index(e["severity"]), e["minute_utc"], e["anomaly_id"]))
    return selected


def _flagged(row: Mapping[str, Any], floor: int) -> bool:
    rule = str(_field(row, "rule") or "")
    if rule.startswith("not_scored"):
        return False
    severity = _field(row, "severity")
    return severity is not None and severity_rank(str(severity)) >= floor


def rows_of(frame_or_rows: Any) -> list[Mapping[str, Any]]:
    """Accept a pandas DataFrame or an iterable of mappings; return a list of row mappings."""
    if hasattr(frame_or_rows, "to_dict") and hasattr(frame_or_rows, "columns"):
        return frame_or_rows.to_dict(orient="records")
    return list(frame_or_rows)
