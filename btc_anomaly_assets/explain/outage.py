"""Degrade, don't wedge: when Claude is unavailable, every incident still gets an explanation.

Claude is *unavailable* when the start-up model check or a request runs out of retries (429, 5xx,
529 overloaded, timeouts, connection errors: ``ClaudeRetriesExhausted``), when a spend limit is
reached (``ClaudeSpendLimitReached``), or when the run's call cap or the day's token budget leaves
an incident unexplained. Then:

- the incident gets the labelled rule-based explanation (``source = rules``, "[rule-based]" in its
  summary), so its alert carries a verdict and the run succeeds;
- the Claude explanation is recorded as pending (``btc.claude_pending_explanations``: the exact
  evidence, why, attempts) and retried by later runs, inside their call cap and token budget;
  a Claude answer replaces the rule-based row (same key), and the alert's follow-up carries it;
- after an outage, runs wait ``OUTAGE_COOLOFF_MINUTES`` before asking Claude again, so a long
  outage does not add the retry time to every live minute.

A configuration error (unknown model, rejected key) is not an outage: it still fails the run
with its clear message, because waiting will not fix it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow as pa

from btc_anomaly_assets.common.schema import Column

PENDING_TABLE = "claude_pending_explanations"
OUTAGE_COOLOFF_MINUTES = 5
PENDING_COLUMNS = [
    Column("anomaly_id", pa.string(), "Incident whose Claude explanation is still owed (table key)"),
    Column("minute", pa.timestamp("us"), "The incident's first minute"),
    Column("reason", pa.string(), "Why Claude did not answer: outage (with the error), call cap, token budget"),
    Column("outage", pa.bool_(), "The reason was Claude being unavailable (not a budget)"),
    Column("attempts", pa.int64(), "Runs that tried (or wanted to try) Claude for it"),
    Column("first_pending_at", pa.timestamp("us"), "When it first became pending, naive UTC"),
    Column("last_attempt_at", pa.timestamp("us"), "When a run last tried, naive UTC"),
    Column("evidence_json", pa.string(), "The evidence to send when Claude is back"),
]


def outage_errors() -> tuple[type[Exception], ...]:
    from btc_anomaly_assets.explain.claude_errors import ClaudeRetriesExhausted, ClaudeSpendLimitReached

    return ClaudeRetriesExhausted, ClaudeSpendLimitReached


def cooling_off(pending: pd.DataFrame, now: datetime) -> datetime | None:
    """Until when runs should not ask Claude (None: ask now): ``OUTAGE_COOLOFF_MINUTES`` after the last outage."""
    if pending.empty:
        return None
    outages = pending.loc[pending["outage"].fillna(False).astype(bool), "last_attempt_at"].dropna()
    if outages.empty:
        return None
    until = pd.Timestamp(outages.max()).to_pydatetime() + timedelta(minutes=OUTAGE_COOLOFF_MINUTES)
    return until if until > now else None


def pending_evidences(pending: pd.DataFrame, current: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Evidence of pending incidents not in ``current`` (a pending incident of this window uses its fresh evidence)."""
    seen = {e["anomaly_id"] for e in current}
    return [json.loads(text) for anomaly_id, text in zip(pending["anomaly_id"], pending["evidence_json"])
            if anomaly_id not in seen]


def next_pending(previous: pd.DataFrame, owed: Mapping[str, tuple[dict, str, bool]], answered: set[str],
                 now: datetime) -> pd.DataFrame:
    """The pending table after a run: ``owed`` maps incident id -> (evidence, reason, outage) still
    without a Claude answer; ``answered`` are the incidents Claude explained this run (no longer owed)."""
    before = {r["anomaly_id"]: r for r in previous.to_dict("records")} if not previous.empty else {}
    rows = []
    for anomaly_id, (evidence, reason, outage) in owed.items():
        if anomaly_id in answered:
            continue
        old = before.get(anomaly_id, {})
        rows.append({
            "anomaly_id": anomaly_id,
            "minute": datetime.strptime(evidence["minute_utc"], "%Y-%m-%dT%H:%M:%SZ"),
            "reason": reason,
            "outage": bool(outage),
            "attempts": int(old.get("attempts") or 0) + 1,
            "first_pending_at": old.get("first_pending_at") if old.get("first_pending_at") is not None else now,
            "last_attempt_at": now,
            "evidence_json": json.dumps(evidence, sort_keys=True),
        })
    return pd.DataFrame(rows, columns=[c.name for c in PENDING_COLUMNS])
