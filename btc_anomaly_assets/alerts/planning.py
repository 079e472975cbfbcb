"""Which alert messages to send for a batch of anomaly-asset materializations (pure logic).

The sensor turns materialization events into alert requests:
- a run that materialized at most ``digest_threshold`` partitions of an asset gets one message
  per flagged item (run key ``alert:<id>``: a re-materialization of the same minute produces the
  same id, so Dagster never launches it twice);
- a bigger run (a backfill) gets ONE digest message for all its flagged items (run key
  ``digest:<run id>:<asset>``), never hundreds.
The alert job itself skips items already recorded as sent in ``btc.alerts``, so even a digest
of a re-run backfill never repeats an alert: the delivery record is the final word.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_DIGEST_THRESHOLD = 5


def single_alert_id(item_id: str) -> str:
    """The alert id (and sensor run key) of one item's own alert."""
    return f"alert:{item_id}"


@dataclass(frozen=True)
class MaterializationEvent:
    storage_id: int
    run_id: str
    asset: str  # "ewma_anomalies" | "coordinated_clusters" | "transaction_forecast"
    partition: str | None


@dataclass
class AlertRequest:
    run_key: str
    kind: str  # "single" | "digest"
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
