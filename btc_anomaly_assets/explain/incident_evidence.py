"""Evidence for one incident (``btc.incidents`` row): one explanation, one verdict per real event.

The incident's evidence holds its headline, every finding in natural units, the transactions
that carry it, and the full evidence of its *primary* finding (the EWMA metric or cluster that
names it, built by ``evidence``), so both explainers reason about the strongest signal and see the
rest as context. The rule-based answer is the primary's answer, re-worded around the incident
(``incident_answer``); Claude gets the whole incident (``incident_lines``).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from btc_anomaly_assets.explain.evidence import (
    RULE_BASED_LABEL,
    TIME_BASIS_MEANING,
    TIME_BASIS_UNKNOWN,
    evidence_from_cluster_row,
    evidence_from_ewma_row,
    evidence_hash,
)
from btc_anomaly_assets.incidents.wording import btc, finding_line

KIND_INCIDENT = "incident"
INCIDENT_EVIDENCE_VERSION = "incident-evidence-v1"
FINDING_FIELDS = ("finding_id", "kind", "minute", "phenomenon", "subject", "label", "value", "baseline", "unit", "ratio",
                  "z", "severity", "detector_severity", "cap", "rule", "members", "total_value_btc", "interval", "direction")


def _minute_iso(value: Any) -> str:
    text = str(value)
    return text if text.endswith("Z") else text.replace(" ", "T")[:19] + "Z"


def evidence_from_incident(incident: Mapping[str, Any], primary_row: Mapping[str, Any] | None, *,
                           usd_per_btc: float | None = None) -> dict[str, Any]:
    """Evidence for one incident; ``primary_row`` is the detector row of its primary finding (None for
    a forecast excursion, which has no per-metric evidence of its own)."""
    transactions = json.loads(incident.get("transactions_json") or "[]")
    findings = [{k: f.get(k) for k in FINDING_FIELDS if f.get(k) is not None}
                for f in json.loads(incident.get("findings_json") or "[]")]
    hashes = [tx["hash"] for tx in transactions]
    primary = None
    if primary_row is not None:
        if "cluster_id" in primary_row:
            primary = evidence_from_cluster_row(primary_row, usd_per_btc=usd_per_btc)
        else:
            primary = evidence_from_ewma_row(primary_row, usd_per_btc=usd_per_btc, sample_tx_hashes=hashes)
        primary.pop("evidence_hash", None)
        primary.update({"anomaly_id": str(incident["incident_id"]), "severity": str(incident["severity"])})
    basis = incident.get("time_basis")
    evidence = {
        "evidence_version": INCIDENT_EVIDENCE_VERSION,
        "anomaly_id": str(incident["incident_id"]),
        "anomaly_kind": KIND_INCIDENT,
        "minute_utc": _minute_iso(incident["minute"]),
        "end_minute_utc": _minute_iso(incident.get("end_minute") or incident["minute"]),
        "minute_count": int(incident.get("minute_count") or 1),
        "severity": str(incident["severity"]),
        "rule": str(incident.get("severity_reason") or ""),
        "mode": str(incident.get("mode") or "default"),
        "time_basis": basis,
        "time_basis_meaning": TIME_BASIS_MEANING.get(basis, TIME_BASIS_UNKNOWN),
        "block_ids": sorted(int(b) for b in (incident.get("block_ids") if incident.get("block_ids") is not None else [])),
        "usd_per_btc": usd_per_btc,
        "phenomenon": str(incident["phenomenon"]),
        "headline": str(incident["headline"]),
        "findings": findings,
        "transactions": transactions,
        "sample_tx_hashes": hashes,
        "primary": primary,
    }
    evidence["evidence_hash"] = evidence_hash(evidence)
    return evidence


def incident_lines(e: Mapping[str, Any]) -> list[str]:
    """The incident as Claude reads it (the prompt adds the time basis, USD rate and hashes)."""
    span = f"{e['minute_count']} minutes, to {e['end_minute_utc']}" if e.get("minute_count", 1) > 1 else "one minute"
    lines = [
        f"Incident: {e['headline']}",
        f"Phenomenon: {e['phenomenon']} ({span})",
        f"How its severity was set: {e.get('rule') or e['severity']}",
        "Findings grouped in this incident (natural units; 'usual' is the detector's baseline):",
    ]
    lines += [f"- {finding_line(f)}" for f in e.get("findings") or []]
    transactions = e.get("transactions") or []
    if transactions:
        lines.append("Transactions that carry it:")
        price = e.get("usd_per_btc")
        for tx in transactions:
            usd = f" (about ${tx['value_btc'] * price:,.0f})" if price else ""
            fee = f", {tx['fee_rate_sat_vb']:,.1f} sat/vB" if tx.get("fee_rate_sat_vb") is not None else ""
            lines.append(f"- {tx['hash']}: {btc(tx['value_btc'])}{usd}, {tx['inputs']} inputs, {tx['outputs']} outputs{fee}")
    return lines


def incident_answer(e: Mapping[str, Any]) -> dict[str, Any]:
    """The rule-based answer for an incident: its primary finding's answer, worded around the incident."""
    from btc_anomaly_assets.explain.prompt import validate_answer
    from btc_anomaly_assets.explain.rules import rule_based_answer

    primary = e.get("primary")
    if primary is not None:
        answer = dict(rule_based_answer(primary))
    else:
        answer = {
            "statistically_unusual": True,
            "unusual_reason": f"{e['headline']}; the rate stayed outside the forecast beyond what block arrival explains.",
            "suspected_patterns": ["fee_market_congestion", "other"],
            "legitimate_causes": ["a wave of demand (a mint, an exchange backlog)", "a backlog released after a slow block"],
            "flag_for_investigation": False,
            "flag_rationale": "a network-wide rate change is not a compliance concern by itself.",
            "confidence": "low",
            "insufficient_evidence": True,
            "summary": "",
            "narrative": "",
        }
    verdict = "FLAG" if answer["flag_for_investigation"] else "no flag"
    patterns = ", ".join(answer["suspected_patterns"])
    summary = f"{RULE_BASED_LABEL} {verdict} ({answer['confidence']} confidence), {patterns}: {answer['flag_rationale']}"
    answer["summary"] = summary if len(summary) <= 160 else summary[:157] + "..."
    others = len(e.get("findings") or []) - 1
    context = f" {others} more finding(s) in the same incident were weighed as context." if others > 0 else ""
    answer["narrative"] = (f"Rule-based assessment of incident {e['anomaly_id']} ({e['minute_utc']}): {e['headline']}.{context} "
                           + (answer.get("narrative") or answer["unusual_reason"] + " " + answer["flag_rationale"]))
    return validate_answer(answer)
