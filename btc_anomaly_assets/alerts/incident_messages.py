"""Block Kit messages about incidents: the first message, a backfill digest, and a follow-up.

Everything a person reads is in natural units (BTC, sat/vB, tx/min; the incident's own words),
each item names its minute in UTC and links its ``btc/incidents`` partition in the Dagster UI,
and every transaction is named by its full hash with a block-explorer link. A missing value
leaves its phrase out: these builders never print "n/a". All messages go through
``block_kit.message``, so they always fit Slack's limits.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

from btc_anomaly_assets.alerts import block_kit as bk
from btc_anomaly_assets.alerts import formatting as fmt
from btc_anomaly_assets.alerts.block_kit import MAX_SECTION_TEXT, SlackMessage
from btc_anomaly_assets.alerts.slack_messages import dagster_partition_url, partition_key
from btc_anomaly_assets.common.schema import SEVERITIES, severity_rank
from btc_anomaly_assets.explain.evidence import RULE_BASED_LABEL
from btc_anomaly_assets.incidents.wording import finding_line

INCIDENTS_ASSET = "btc/incidents"
DIGEST_TITLE = "Bitcoin incidents"
MAX_EVIDENCE_LINES = 8
SUMMARY_CHARS = 300


def _minute(incident: Mapping[str, Any]) -> datetime:
    minute = fmt.as_naive_utc(incident.get("minute"))
    if minute is None:
        raise ValueError(f"incident {incident.get('incident_id')} has no minute")
    return minute


def when(incident: Mapping[str, Any]) -> str:
    """'2025-08-13 00:18 UTC', or '2025-08-13 00:18-00:20 UTC' for a run of minutes."""
    first, last = _minute(incident), fmt.as_naive_utc(incident.get("end_minute")) or _minute(incident)
    return f"{first:%Y-%m-%d %H:%M}" + (f"-{last:%H:%M}" if last > first else "") + " UTC"


def transactions(incident: Mapping[str, Any]) -> list[dict]:
    return json.loads(incident.get("transactions_json") or "[]")


def findings(incident: Mapping[str, Any]) -> list[dict]:
    return json.loads(incident.get("findings_json") or "[]")


def tx_line(tx: Mapping[str, Any]) -> str:
    """'<url|full hash> 19,609.14 BTC · 3 in / 2 out · 10.0 sat/vB'."""
    parts = [f"{tx['value_btc']:,.8f}".rstrip("0").rstrip(".") + " BTC", f"{tx['inputs']} in / {tx['outputs']} out"]
    if tx.get("fee_rate_sat_vb") is not None:
        parts.append(f"{tx['fee_rate_sat_vb']:,.1f} sat/vB")
    return f"<{tx['url']}|{tx['hash']}> " + " · ".join(parts)


def explanation_text(explanation: Mapping[str, Any] | None) -> str:
    if not explanation or bk.missing(explanation.get("summary")):
        return ""
    source = "Claude" if explanation.get("source") == "claude" else "rule-based"
    summary = str(explanation["summary"]).strip().splitlines()[0]
    # The stored rule-based summary carries its own "[rule-based]" label; the line's label says it once.
    summary = summary.removeprefix(RULE_BASED_LABEL).strip() if source == "rule-based" else summary
    return f"*Explanation ({source}):* {fmt.escape(bk.truncate(summary, SUMMARY_CHARS))}"


def _ui_link(incident: Mapping[str, Any], ui_base_url: str | None, label: str | None = None) -> str:
    if not ui_base_url:
        return ""
    minute = _minute(incident)
    text = label or f"Open {INCIDENTS_ASSET} partition {partition_key(minute)} in Dagster"
    return f"<{dagster_partition_url(ui_base_url, INCIDENTS_ASSET, minute)}|{text}>"


def build_incident_message(incident: Mapping[str, Any], explanation: Mapping[str, Any] | None = None, *,
                           ui_base_url: str | None = None) -> SlackMessage:
    """The first (and usually only) message about one incident."""
    severity = str(incident["severity"])
    txs = transactions(incident)
    blocks = [
        bk.header(f"{severity.upper()}: {incident['headline']}"),
        bk.fields_section([
            bk.field("When", when(incident)),
            bk.field("Severity", severity),
            bk.field("Incident", f"`{incident['incident_id']}`"),
            bk.field("Time basis", fmt.escape(str(incident.get("time_basis") or "block"))),
        ]),
    ]
    if txs:
        blocks.append(bk.section("*Transactions:*\n" + "\n".join(f"• {tx_line(tx)}" for tx in txs)))
    evidence = [f"• {fmt.escape(finding_line(f))}" for f in findings(incident)[:MAX_EVIDENCE_LINES]]
    if evidence:
        blocks.append(bk.section(bk.truncate("*Evidence:*\n" + "\n".join(evidence), MAX_SECTION_TEXT)))
    if explanation_text(explanation):
        blocks.append(bk.section(explanation_text(explanation)))
    if ui_base_url:
        blocks.append(bk.section(_ui_link(incident, ui_base_url)))
    blocks.append(bk.context([f"Severity rule: {fmt.escape(str(incident.get('severity_reason') or severity))}"]))
    text = f"[{severity}] {incident['headline']} at {when(incident)}"
    if txs:
        text += f" (tx {txs[0]['hash']} {txs[0]['url']})"
    return bk.message(text, blocks, incident["incident_id"])


def build_incident_followup(incident: Mapping[str, Any], explanation: Mapping[str, Any] | None, changes: Sequence[str], *,
                            thread_ts: str | None = None, ui_base_url: str | None = None) -> SlackMessage:
    """What arrived later about an incident already alerted: its explanation, a severity upgrade.

    With ``thread_ts`` (a bot destination) it is posted in the first message's thread; otherwise
    it stands alone and names the incident, so it reads on its own.
    """
    severity = str(incident["severity"])
    what = []
    if any(c.startswith("severity") for c in changes):
        what.append(f"severity is now *{severity}*")
    if any(c.startswith("explanation") for c in changes) and explanation_text(explanation):
        what.append("explanation ready")
    title = f"Update on {incident['incident_id']} ({when(incident)}): " + (", ".join(what) or "new details")
    blocks = [bk.section(f"*{fmt.escape(title.replace('*', ''))}*\n{fmt.escape(str(incident['headline']))}")]
    if explanation_text(explanation):
        blocks.append(bk.section(explanation_text(explanation)))
    if any(c.startswith("severity") for c in changes):
        blocks.append(bk.context([f"Severity rule: {fmt.escape(str(incident.get('severity_reason') or severity))}"]))
    if ui_base_url:
        blocks.append(bk.context([_ui_link(incident, ui_base_url)]))
    text = title.replace("*", "") + f": {incident['headline']}"
    message = bk.message(text, blocks, f"followup:{incident['incident_id']}")
    return SlackMessage(text=message.text, blocks=message.blocks, key=message.key, thread_ts=thread_ts)


def digest_line(incident: Mapping[str, Any], explanation: Mapping[str, Any] | None, ui_base_url: str | None) -> str:
    line = f"• *{incident['severity']}* `{when(incident)}` {fmt.escape(str(incident['headline']))}"
    txs = transactions(incident)
    if txs:
        line += f"\n    tx {tx_line(txs[0])}"
    summary = explanation_text(explanation)
    if summary:
        line += f"\n    {summary}"
    if ui_base_url:
        line += f"  {_ui_link(incident, ui_base_url, 'open')}"
    return line


def build_incident_digest(incidents: Iterable[Mapping[str, Any]], explanations: Mapping[str, Mapping[str, Any]], *,
                          ui_base_url: str | None = None, min_severity: str = "medium",
                          title: str = DIGEST_TITLE) -> SlackMessage:
    """One message for a backfill run: every incident at or above ``min_severity``, most severe first."""
    floor = severity_rank(min_severity)
    chosen = [i for i in incidents if severity_rank(str(i["severity"])) >= floor]
    chosen.sort(key=lambda i: (-severity_rank(str(i["severity"])), _minute(i)))
    counts = {s: sum(1 for i in chosen if i["severity"] == s) for s in reversed(SEVERITIES) if severity_rank(s) >= floor}
    span = ""
    if chosen:
        first, last = min(_minute(i) for i in chosen), max(_minute(i) for i in chosen)
        span = f", {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC"
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"
    head = f"*{len(chosen)} incident(s) at {min_severity} or above* ({tally}){span}"
    blocks = [bk.header(title), bk.section(head), bk.divider()]
    lines = [digest_line(i, explanations.get(i["incident_id"]), ui_base_url) for i in chosen]
    blocks.extend(bk.section(chunk) for chunk in bk.pack_lines(lines, MAX_SECTION_TEXT))
    text = f"{title}: {len(chosen)} incident(s) ({tally}){span}"
    for incident in chosen[:3]:
        text += f"; [{incident['severity']}] {when(incident)} {incident['headline']}"
        txs = transactions(incident)
        if txs:
            text += f" tx {txs[0]['hash']}"
    return bk.message(text, blocks, f"digest:{len(chosen)}{span}")


def covers(incidents: Iterable[Mapping[str, Any]], explanations: Mapping[str, Mapping[str, Any]]) -> str:
    """What a message told about each incident (JSON): severity and the explanation's content hash."""
    return json.dumps({
        i["incident_id"]: {"severity": str(i["severity"]),
                           "explanation": (explanations.get(i["incident_id"]) or {}).get("content_hash")}
        for i in incidents
    }, sort_keys=True)
