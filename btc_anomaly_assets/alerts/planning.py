"""Which alert messages to send for a batch of ``btc/incidents`` materializations (pure logic).

The sensor turns materialization events into alert requests; an item is an incident:
- a run that materialized at most ``digest_threshold`` partitions gets one message per incident
  (run key ``alert:<incident id>``: a re-materialization of the same minute produces the same
  id, so Dagster never launches it twice);
- a bigger run (a backfill) gets ONE digest message for all its incidents (run key
  ``digest:<run id>:incidents``), never hundreds;
- what arrives later about an incident already alerted (an explanation, a higher severity) is a
  follow-up (``plan_followups``), once per change.
The alert job itself skips items already recorded as sent in ``btc.alerts``, so even a digest
of a re-run backfill never repeats an alert: the delivery record is the final word.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from btc_anomaly_assets.common.schema import severity_rank

DEFAULT_DIGEST_THRESHOLD = 5


def single_alert_id(item_id: str) -> str:
    """The alert id (and sensor run key) of one item's own alert."""
    return f"alert:{item_id}"


@dataclass(frozen=True)
class MaterializationEvent:
    storage_id: int
    run_id: str
    asset: str  # "incidents" (alerted) or "anomaly_explanations" (follow-ups only)
    partition: str | None


@dataclass
class AlertRequest:
    run_key: str
    kind: str  # "single" | "digest" | "followup"
    asset: str
    item_ids: list[str] = field(default_factory=list)
    source_run_id: str = ""


def plan_alerts(
    events: list[MaterializationEvent],
    flagged_items_by_partition: dict[tuple[str, str], list[str]],
    *,
    digest_threshold: int = DEFAULT_DIGEST_THRESHOLD,
) -> list[AlertRequest]:
    """Group events by (run, asset); small groups alert per item, big ones as one digest.

    ``flagged_items_by_partition`` maps (asset, partition) to the ids of items at or above the
    minimum severity in that partition (the caller queries the warehouse for exactly those).
    """
    groups: dict[tuple[str, str], list[MaterializationEvent]] = {}
    for event in sorted(events, key=lambda e: e.storage_id):
        groups.setdefault((event.run_id, event.asset), []).append(event)

    requests: list[AlertRequest] = []
    for (run_id, asset), group in groups.items():
        partitions = list(dict.fromkeys(e.partition for e in group if e.partition))
        items = [i for p in partitions for i in flagged_items_by_partition.get((asset, p), [])]
        items = list(dict.fromkeys(items))
        if not items:
            continue
        if len(partitions) > digest_threshold:
            requests.append(AlertRequest(f"digest:{run_id}:{asset}", "digest", asset, items, run_id))
        else:
            requests.extend(AlertRequest(single_alert_id(item), "single", asset, [item], run_id) for item in items)
    return requests


def undelivered(requests: list[AlertRequest], already_sent: set[str]) -> list[AlertRequest]:
    """Requests that still have an item not yet sent (items alerted from inside a live run, say)."""
    return [r for r in requests if any(i not in already_sent for i in r.item_ids)]


# ---------------------------------------------------------------------------------------------
# Follow-ups: what arrives later about an incident already alerted


FIRST_MESSAGE_KINDS = ("single", "digest")


@dataclass
class Told:
    """What the sent messages told about one incident so far, and the first message's Slack ts."""

    first_alert_id: str
    severity: str
    explanation: str | None
    slack_ts: str | None


def told_state(sent_records: list[dict]) -> dict[str, Told]:
    """Per incident, merged over its sent messages in the order they were created.

    ``sent_records`` are ``btc.alerts`` rows with status ``sent`` (``alert_id``, ``kind``,
    ``created_at``, ``slack_ts``, ``covers_json``); the first message of an incident (single or
    digest) opens its entry, later ones (follow-ups) update it.
    """
    told: dict[str, Told] = {}
    for record in sorted(sent_records, key=lambda r: (str(r.get("created_at")), str(r["alert_id"]))):
        covers = json.loads(record.get("covers_json") or "{}")
        for incident_id, said in covers.items():
            if incident_id not in told:
                if record["kind"] not in FIRST_MESSAGE_KINDS:
                    continue
                told[incident_id] = Told(record["alert_id"], said.get("severity") or "info", said.get("explanation"),
                                         record.get("slack_ts") or None)
                continue
            entry = told[incident_id]
            if said.get("severity") and severity_rank(said["severity"]) > severity_rank(entry.severity):
                entry.severity = said["severity"]
            if said.get("explanation"):
                entry.explanation = said["explanation"]
    return told


def followup_changes(severity: str, explanation_hash: str | None, told: Told) -> list[str]:
    """What is new since the incident was last told: a higher severity, an explanation not yet sent."""
    changes = []
    if severity_rank(severity) > severity_rank(told.severity):
        changes.append(f"severity-{severity}")
    if explanation_hash and explanation_hash != told.explanation:
        changes.append(f"explanation-{explanation_hash[:12]}")
    return changes


def plan_followups(incidents: list[dict], told: dict[str, Told], *, min_severity: str) -> list[AlertRequest]:
    """One follow-up per incident (at or above ``min_severity``) with something new to say.

    ``incidents`` hold ``incident_id``, ``severity`` and ``explanation_hash`` (the content hash of
    its current ok explanation, or None). The run key names the change, so each change is sent
    once; an incident whose first message is not yet sent gets none (its first message, when
    retried, is built with everything known by then).
    """
    floor = severity_rank(min_severity)
    requests = []
    for incident in incidents:
        entry = told.get(incident["incident_id"])
        if entry is None or severity_rank(incident["severity"]) < floor:
            continue
        changes = followup_changes(incident["severity"], incident.get("explanation_hash"), entry)
        if changes:
            requests.append(AlertRequest(f"followup:{incident['incident_id']}:{'+'.join(changes)}", "followup", "incidents",
                                         [incident["incident_id"]]))
    return requests
