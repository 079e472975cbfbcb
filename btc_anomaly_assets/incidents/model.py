"""Incidents: what a person triages. Pure functions from findings to incident rows.

**Grouping.** Every finding at ``low`` or above (EWMA metric, cluster, forecast excursion that
counts, see ``excursions``) belongs to the incident of its minute: one minute is one incident, so
no minute is ever alerted twice. A minute's *primary* finding is its strongest (highest counted
severity, then the more telling phenomenon of ``findings.PHENOMENA``, then the larger ratio); it
names the incident's phenomenon and headline, the other findings are its evidence. Consecutive
minutes whose primary phenomenon is the same merge into one incident (a sustained fee spike on
first-seen data), but a run never crosses the top of a clock hour, so the grouping of a minute
never depends on how far back a run reads.

**Severity rule.** An incident's severity is the highest *counted* severity among its findings.
Counted severity is the detector's, lowered by two caps: a routine automated burst counts at most
``low`` (``findings``), and a forecast excursion counts only beyond what block arrival explains
and at most ``low`` unless sustained for 3 minutes (``excursions``). ``severity_reason`` says
which finding set it and what was capped.

**Identity.** ``incident_id`` is ``inc-YYYYMMDD-HHMM`` of the incident's first minute: the same
minute re-materialized gives the same id, and no two incidents share a first minute.

**Transactions.** The transactions that carry it, from the raw lake: the largest by value for a
transfer or value surge, the highest fee rates for a fee spike, the members for a cluster; each
with hash, BTC amount, inputs/outputs, fee rate in sat/vB and a block-explorer link
(``explorer_tx_url``, base URL configurable, default https://mempool.space).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow as pa

from btc_anomaly_assets.common.schema import FEE_PER_KWU_PER_SAT_VB, SATOSHI_PER_BTC, SEVERITIES, Column, severity_rank
from btc_anomaly_assets.incidents.findings import KIND_CLUSTER, PHENOMENA
from btc_anomaly_assets.incidents.wording import headline_for, quantity

DEFAULT_EXPLORER_URL = "https://mempool.space"
MIN_INCIDENT_SEVERITY = "low"
TRANSACTIONS_PER_INCIDENT = 3
TX_COLUMNS = ["hash", "minute", "block_id", "output_total", "input_count", "output_count", "fee", "fee_per_kwu", "is_coinbase"]

INCIDENT_COLUMNS: list[Column] = [
    Column("incident_id", pa.string(), "Stable id `inc-YYYYMMDD-HHMM` of the first minute (table key)"),
    Column("minute", pa.timestamp("us"), "First minute of the incident, naive UTC (partition column)"),
    Column("end_minute", pa.timestamp("us"), "Last minute of the incident (= minute for a one-minute incident)"),
    Column("minute_count", pa.int64(), "Minutes the incident spans"),
    Column("phenomenon", pa.string(), "What it is: large_transfer, value_surge, fee_spike, bot_burst, coinjoin, ..."),
    Column("severity", pa.string(), "low | medium | high: the highest counted severity of its findings"),
    Column("severity_reason", pa.string(), "Which finding set the severity, and what was capped"),
    Column("headline", pa.string(), "The phenomenon in plain words and natural units"),
    Column("time_basis", pa.string(), "`block` or `first_seen`"),
    Column("mode", pa.string(), "Detection mode of the findings"),
    Column("block_ids", pa.list_(pa.int64()), "Blocks in the incident's minutes"),
    Column("finding_ids", pa.list_(pa.string()), "ids of its findings (anomaly_id / cluster_id / excursion id)"),
    Column("finding_count", pa.int64(), "Findings grouped in it"),
    Column("primary_finding_id", pa.string(), "The finding that names it"),
    Column("top_tx_hash", pa.string(), "The transaction that carries it best (NULL when none does, e.g. a rate)"),
    Column("top_tx_url", pa.string(), "Block-explorer link of top_tx_hash"),
    Column("findings_json", pa.string(), "Its findings in natural units (JSON list)"),
    Column("transactions_json", pa.string(), "Its transactions: hash, value_btc, inputs, outputs, fee_rate_sat_vb, url"),
]


def explorer_tx_url(base_url: str, tx_hash: str) -> str:
    """``{base}/tx/{hash}`` (mempool.space, blockstream.info and most explorers use this path)."""
    return f"{(base_url or DEFAULT_EXPLORER_URL).rstrip('/')}/tx/{tx_hash}"


def incident_id_for(first_minute: datetime) -> str:
    return f"inc-{first_minute:%Y%m%d-%H%M}"


def _phenomenon_rank(phenomenon: str) -> int:
    return PHENOMENA.index(phenomenon) if phenomenon in PHENOMENA else len(PHENOMENA)


def primary_finding(findings: list[dict]) -> dict:
    """The strongest finding: highest counted severity, then the more telling phenomenon, then the larger ratio."""
    return min(findings, key=lambda f: (-severity_rank(f["severity"]), _phenomenon_rank(f["phenomenon"]),
                                        -(f.get("ratio") or 0.0), f["finding_id"]))


def group_findings(findings: Iterable[dict], *, min_severity: str = MIN_INCIDENT_SEVERITY) -> list[list[dict]]:
    """Findings at or above ``min_severity`` grouped into incidents (lists of findings), in time order."""
    floor = severity_rank(min_severity)
    by_minute: dict[datetime, list[dict]] = {}
    for finding in findings:
        if severity_rank(finding["severity"]) >= floor:
            by_minute.setdefault(finding["minute"], []).append(finding)
    groups: list[list[dict]] = []
    last_minute: datetime | None = None
    for minute in sorted(by_minute):
        members = by_minute[minute]
        continues = (groups and last_minute is not None and minute - last_minute == timedelta(minutes=1)
                     and minute.hour == last_minute.hour and minute.date() == last_minute.date()
                     and primary_finding(members)["phenomenon"] == primary_finding(groups[-1])["phenomenon"])
        if continues:
            groups[-1].extend(members)
        else:
            groups.append(list(members))
        last_minute = minute
    return groups


def incident_severity(findings: list[dict]) -> tuple[str, str]:
    """(severity, reason) by the documented rule: the highest counted severity; caps named."""
    primary = primary_finding(findings)
    severity = primary["severity"]
    reason = f"{severity}: {primary['label']} ({primary['subject']}) graded {primary['detector_severity']} by " \
             f"{primary['rule'] or 'its detector'}"
    capped = [f for f in findings if f.get("cap")]
    if capped:
        reason += "; capped: " + "; ".join(f"{f['label']}: {f['cap']}" for f in capped[:3])
    others = len(findings) - 1
    if others:
        reason += f"; {others} more finding(s) as evidence"
    return severity, reason


def rows_by_minute(raw: pd.DataFrame | None) -> dict[pd.Timestamp, pd.DataFrame]:
    """The non-coinbase raw rows (``TX_COLUMNS``) of each minute, split once for all incidents."""
    if raw is None or raw.empty:
        return {}
    rows = raw[~raw["is_coinbase"].astype(bool)]
    return {pd.Timestamp(minute): part for minute, part in rows.groupby("minute", sort=False)}


def select_transactions(findings: list[dict], raw: pd.DataFrame | dict | None, explorer_url: str,
                        limit: int = TRANSACTIONS_PER_INCIDENT) -> list[dict]:
    """The transactions that carry an incident, from the raw rows of its minutes (``TX_COLUMNS``;
    a frame, or ``rows_by_minute`` of one)."""
    primary = primary_finding(findings)
    by_minute = raw if isinstance(raw, dict) else rows_by_minute(raw)
    parts = [by_minute[pd.Timestamp(m)] for m in sorted({f["minute"] for f in findings}) if pd.Timestamp(m) in by_minute]
    if not parts:
        return []
    rows = pd.concat(parts) if len(parts) > 1 else parts[0]
    phenomenon = primary["phenomenon"]
    if primary["kind"] == KIND_CLUSTER:
        wanted = primary.get("member_hashes") or []
        chosen = rows[rows["hash"].isin(wanted)].sort_values(["output_total", "hash"], ascending=[False, True])
    elif phenomenon in ("large_transfer", "value_surge"):
        chosen = rows.sort_values(["output_total", "hash"], ascending=[False, True])
    elif phenomenon in ("fee_spike", "fee_outliers"):
        chosen = rows.sort_values(["fee_per_kwu", "hash"], ascending=[False, True])
    else:
        return []  # a rate or an activity level is carried by no single transaction
    return [transaction_record(row, explorer_url) for row in chosen.head(limit).to_dict("records")]


def transaction_record(row: Mapping[str, Any], explorer_url: str) -> dict:
    fee_rate = row.get("fee_per_kwu")
    return {
        "hash": str(row["hash"]),
        "value_btc": int(row["output_total"]) / SATOSHI_PER_BTC,
        "inputs": int(row["input_count"]),
        "outputs": int(row["output_count"]),
        "fee_btc": int(row["fee"]) / SATOSHI_PER_BTC if pd.notna(row.get("fee")) else None,
        "fee_rate_sat_vb": float(fee_rate) / FEE_PER_KWU_PER_SAT_VB if pd.notna(fee_rate) else None,
        "block_id": int(row["block_id"]) if pd.notna(row.get("block_id")) and int(row["block_id"]) >= 0 else None,
        "url": explorer_tx_url(explorer_url, str(row["hash"])),
    }


def _jsonable(finding: Mapping[str, Any]) -> dict:
    out = {}
    for key, value in finding.items():
        if isinstance(value, datetime):
            out[key] = value.strftime("%Y-%m-%dT%H:%M:00Z")
        elif isinstance(value, float):
            out[key] = float(f"{value:.10g}")
        else:
            out[key] = value
    return out


def build_incident(findings: list[dict], raw: pd.DataFrame | dict | None, explorer_url: str = DEFAULT_EXPLORER_URL) -> dict:
    """One ``INCIDENT_COLUMNS`` row from the findings of one group."""
    findings = sorted(findings, key=lambda f: (f["minute"], -severity_rank(f["severity"]), _phenomenon_rank(f["phenomenon"]),
                                               f["finding_id"]))
    primary = primary_finding(findings)
    first, last = min(f["minute"] for f in findings), max(f["minute"] for f in findings)
    severity, reason = incident_severity(findings)
    transactions = select_transactions(findings, raw, explorer_url)
    minute_count = int((last - first).total_seconds() // 60) + 1
    bases = sorted({f["time_basis"] for f in findings if f.get("time_basis")})
    top = transactions[0] if transactions else None
    return {
        "incident_id": incident_id_for(first),
        "minute": first,
        "end_minute": last,
        "minute_count": minute_count,
        "phenomenon": primary["phenomenon"],
        "severity": severity,
        "severity_reason": reason,
        "headline": headline_for(primary, findings, top, first, last),
        "time_basis": bases[0] if bases else None,
        "mode": next((f["mode"] for f in findings if f.get("mode")), "default"),
        "block_ids": sorted({b for f in findings for b in f.get("block_ids") or []}),
        "finding_ids": [f["finding_id"] for f in findings],
        "finding_count": len(findings),
        "primary_finding_id": primary["finding_id"],
        "top_tx_hash": top["hash"] if top else None,
        "top_tx_url": top["url"] if top else None,
        "findings_json": json.dumps([_jsonable(f) for f in findings], sort_keys=True, allow_nan=False),
        "transactions_json": json.dumps(transactions, sort_keys=True, allow_nan=False),
    }


def build_incidents(findings: Iterable[dict], raw: pd.DataFrame | None = None, *,
                    explorer_url: str = DEFAULT_EXPLORER_URL, min_severity: str = MIN_INCIDENT_SEVERITY) -> pd.DataFrame:
    """Every incident of ``findings`` as an ``INCIDENT_COLUMNS`` frame, in time order."""
    by_minute = rows_by_minute(raw)
    rows = [build_incident(group, by_minute, explorer_url) for group in group_findings(findings, min_severity=min_severity)]
    return pd.DataFrame(rows, columns=[c.name for c in INCIDENT_COLUMNS])


def text_problems(incident: Mapping[str, Any]) -> list[str]:
    """What a person should never read in an incident: log10 values, "n/a", amounts that are not amounts."""
    problems = []
    headline = str(incident.get("headline") or "")
    for bad in ("log10", "n/a", "nan", "inf"):
        if bad in headline.lower().split() or (bad == "log10" and bad in headline.lower()):
            problems.append(f"headline contains {bad!r}")
    for tx in json.loads(incident.get("transactions_json") or "[]"):
        if not (tx.get("value_btc") is not None and 0 <= tx["value_btc"] <= 21_000_000):
            problems.append(f"transaction {tx.get('hash')} has no real BTC amount")
    if str(incident.get("severity")) not in SEVERITIES:
        problems.append(f"severity {incident.get('severity')!r}")
    return problems


__all__ = ["INCIDENT_COLUMNS", "build_incidents", "explorer_tx_url", "incident_id_for", "quantity", "text_problems"]
