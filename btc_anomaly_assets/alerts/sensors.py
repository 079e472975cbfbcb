"""Slack alerts per incident: a cursor sensor over materializations and a small run-keyed alert job.

An ``@asset_sensor`` sees only the newest materialization per tick (a 10-partition backfill
gave 1 alert instead of 10), so this sensor pages the event log by storage id with a cursor and
asks for one alert run per incident (run key ``alert:<incident id>``) or one digest per backfill
run covering every incident of the run (EWMA metrics, clusters and forecast excursions are the
incidents' evidence, not messages of their own). What arrives later about an incident already
alerted (its explanation, a higher severity) is a follow-up (run key names the change): in the
first message's thread with a bot token, a message naming the incident otherwise. The alert job
checks the delivery record ``btc.alerts`` before sending, so each message is delivered exactly
once across sensor restarts, backfills and re-materializations; a failed delivery stays
``failed`` and is retried on a later tick.
"""

import json
from datetime import datetime

import dagster as dg
import pandas as pd

from btc_anomaly_assets.alerts.planning import (
    FIRST_MESSAGE_KINDS,
    MaterializationEvent,
    plan_alerts,
    plan_followups,
    single_alert_id,
    told_state,
    undelivered,
)
from btc_anomaly_assets.alerts.resources import AlertDestinationResource
from btc_anomaly_assets.common.dagster_helpers import ANOMALY_EXPLANATIONS, DUCKDB_POOL, INCIDENTS
from btc_anomaly_assets.common.resources import WarehouseResource
from btc_anomaly_assets.common.schema import ALERT_COLUMNS, SEVERITIES, severity_rank
from btc_anomaly_assets.common.utc import utc_now

ALERTS_TABLE = "alerts"
MAX_DELIVERY_ATTEMPTS = 10
EVENTS_PER_PAGE = 200

# asset -> (asset key, table holding its flagged items, id column)
ALERTED_ASSETS = {
    "incidents": (INCIDENTS, "incidents", "incident_id"),
}
# Materializations that can bring something new about incidents already alerted (follow-ups only).
FOLLOWUP_SOURCES = {
    "anomaly_explanations": ANOMALY_EXPLANATIONS,
}


class AlertRunConfig(dg.Config):
    alert_id: str
    kind: str
    asset: str
    item_ids: list[str]


def _severities_at_or_above(minimum: str) -> list[str]:
    return list(SEVERITIES[severity_rank(minimum):])


def _incidents_touching(wh, minutes: list[datetime], minimum: str) -> pd.DataFrame:
    """Incidents at or above ``minimum`` whose minutes include one of ``minutes`` (one row per pair)."""
    if not minutes or not wh.table_exists("incidents"):
        return pd.DataFrame(columns=["item", "severity", "partition"])
    return wh.query(
        "SELECT i.incident_id AS item, i.severity, strftime(m.minute, '%Y-%m-%d-%H:%M') AS partition "
        "FROM btc.incidents i JOIN (SELECT unnest(?::TIMESTAMP[]) AS minute) m "
        "ON m.minute >= i.minute AND m.minute <= i.end_minute WHERE i.severity IN (SELECT unnest(?)) "
        "ORDER BY i.minute, item", [sorted(set(minutes)), _severities_at_or_above(minimum)])


def _flagged_items(warehouse, asset: str, partitions: list[str], minimum: str) -> dict[tuple[str, str], list[str]]:
    if not partitions:
        return {}
    rows = _incidents_touching(warehouse.get(), [datetime.strptime(p, "%Y-%m-%d-%H:%M") for p in partitions], minimum)
    flagged: dict[tuple[str, str], list[str]] = {}
    for item, _, partition in rows.itertuples(index=False):
        flagged.setdefault((asset, partition), []).append(item)
    return flagged


def _followup_requests(wh, incident_ids: list[str], minimum: str) -> list[dg.RunRequest]:
    """Follow-ups for incidents already alerted that have news (explanation, higher severity)."""
    if not incident_ids or not wh.table_exists(ALERTS_TABLE):
        return []
    from btc_anomaly_assets.alerts.message_loading import load_explanations

    current = wh.query("SELECT incident_id, severity FROM btc.incidents WHERE incident_id IN (SELECT unnest(?))",
                       [sorted(set(incident_ids))])
    explanations = load_explanations(wh, current["incident_id"].tolist())
    incidents = [{"incident_id": r.incident_id, "severity": r.severity,
                  "explanation_hash": (explanations.get(r.incident_id) or {}).get("content_hash")}
                 for r in current.itertuples(index=False)]
    planned = plan_followups(incidents, told_state(_sent_records(wh)), min_severity=minimum)
    return [dg.RunRequest(run_key=p.run_key, run_config=_run_config(p.run_key, p.kind, p.asset, p.item_ids),
                          tags={"btc/alert_id": p.run_key}) for p in planned if not _is_sent(wh, p.run_key)]


def _sent_records(wh) -> list[dict]:
    if not wh.table_exists(ALERTS_TABLE):
        return []
    frame = wh.query(f"SELECT alert_id, kind, created_at, slack_ts, covers_json FROM btc.{ALERTS_TABLE} "
                     "WHERE status = 'sent' AND asset = 'incidents'")
    return frame.astype(object).where(pd.notna(frame), None).to_dict("records")


def _is_sent(wh, alert_id: str) -> bool:
    return bool(len(wh.query(f"SELECT 1 FROM btc.{ALERTS_TABLE} WHERE alert_id = ? AND status = 'sent'", [alert_id])))


def _retry_requests(warehouse) -> list[dg.RunRequest]:
    wh = warehouse.get()
    if not wh.table_exists(ALERTS_TABLE):
        return []
    failed = wh.query(
        f"SELECT alert_id, kind, asset, item_ids, attempts FROM btc.{ALERTS_TABLE} WHERE status = 'failed' AND attempts < ?",
        [MAX_DELIVERY_ATTEMPTS],
    )
    return [
        dg.RunRequest(
            run_key=f"{row.alert_id}:retry:{row.attempts}",
            run_config=_run_config(row.alert_id, row.kind, row.asset, list(row.item_ids)),
            tags={"btc/alert_id": row.alert_id, "btc/alert_retry": str(row.attempts)},
        )
        for row in failed.itertuples(index=False)
    ]


def _run_config(alert_id: str, kind: str, asset: str, item_ids: list[str]) -> dict:
    return {"ops": {"deliver_alert": {"config": {"alert_id": alert_id, "kind": kind, "asset": asset, "item_ids": item_ids}}}}


def evaluate_alert_sensor(instance: dg.DagsterInstance, cursor: str | None, warehouse: WarehouseResource,
                          alerts: AlertDestinationResource) -> tuple[list[dg.RunRequest], str]:
    """One tick: new materialization events since the cursor -> alert run requests, and the new cursor."""
    state = json.loads(cursor) if cursor else {}
    events: list[MaterializationEvent] = []
    sources = {**{asset: spec[0] for asset, spec in ALERTED_ASSETS.items()}, **FOLLOWUP_SOURCES}
    for asset, key in sources.items():
        after = state.get(asset)
        while True:
            page = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, after_storage_id=after), limit=EVENTS_PER_PAGE, ascending=True
            )
            for record in page.records:
                events.append(MaterializationEvent(record.storage_id, record.run_id, asset, record.partition_key))
                after = record.storage_id
            if not page.has_more:
                break
        if after is not None:
            state[asset] = after
    flagged: dict[tuple[str, str], list[str]] = {}
    for asset in ALERTED_ASSETS:
        partitions = sorted({e.partition for e in events if e.asset == asset and e.partition})
        flagged.update(_flagged_items(warehouse, asset, partitions, alerts.min_severity))
    planned = plan_alerts([e for e in events if e.asset in ALERTED_ASSETS], flagged, digest_threshold=alerts.digest_threshold)
    wh = warehouse.get()
    planned = undelivered(planned, _already_sent(wh, [i for p in planned for i in p.item_ids]))
    requests = [
        dg.RunRequest(run_key=p.run_key, run_config=_run_config(p.run_key, p.kind, p.asset, p.item_ids),
                      tags={"btc/alert_id": p.run_key, "btc/source_run": p.source_run_id})
        for p in planned
    ]
    touched = sorted({datetime.strptime(e.partition, "%Y-%m-%d-%H:%M") for e in events if e.partition})
    first_now = {i for p in planned for i in p.item_ids}
    news = [i for i in _incidents_touching(wh, touched, alerts.min_severity)["item"].unique() if i not in first_now]
    return requests + _followup_requests(wh, news, alerts.min_severity) + _retry_requests(warehouse), \
        json.dumps(state, sort_keys=True)


@dg.op(pool=DUCKDB_POOL)
def deliver_alert(context: dg.OpExecutionContext, config: AlertRunConfig, warehouse: WarehouseResource,
                  alerts: AlertDestinationResource) -> None:
    """Build the message for the requested items, skip what was already delivered, send, record."""
    deliver_alert_items(warehouse.get(), alerts, config, context.log)


def deliver_alert_items(wh, alerts: AlertDestinationResource, config: AlertRunConfig, log) -> str:
    """Deliver one alert unless it (or, for a first message, its incidents) was already sent; record the
    outcome in ``btc.alerts``.

    The caller must hold the ``duckdb`` pool (the alert op) or run inside a step that does (the
    incidents step of a live run): check-then-send is only exactly-once because such steps never overlap.
    Returns the recorded status (``sent``, ``failed``, ``skipped``) or ``already_sent``.
    """
    from btc_anomaly_assets.alerts.message_loading import build_alert_message, build_incident_alert

    record = wh.query(f"SELECT * FROM btc.{ALERTS_TABLE} WHERE alert_id = ?", [config.alert_id]) \
        if wh.table_exists(ALERTS_TABLE) else pd.DataFrame()
    if not record.empty and record["status"].iloc[0] == "sent":
        log.info(f"alert {config.alert_id} was already delivered; nothing to do")
        return "already_sent"
    followup = config.kind == "followup"
    pending = list(config.item_ids) if followup else _not_yet_delivered(wh, config.item_ids)
    attempts_before = int(record["attempts"].iloc[0]) if not record.empty else 0
    created_at = record["created_at"].iloc[0] if not record.empty else utc_now()
    if not pending:
        _record(wh, config, [], "skipped", "-", attempts_before, "every item was already delivered in another alert", "", "{}",
                created_at, None)
        log.info(f"alert {config.alert_id}: every item was already delivered; skipped")
        return "skipped"
    covered, thread_ts = "{}", None
    if config.asset == "incidents":
        changes = config.alert_id.split(":", 2)[2].split("+") if followup else None
        if followup:
            told = told_state(_sent_records(wh)).get(pending[0])
            thread_ts = told.slack_ts if told else None
        message, covered = build_incident_alert(wh, config.kind, pending, ui_base_url=alerts.ui_base_url,
                                                min_severity=alerts.min_severity, changes=changes, thread_ts=thread_ts)
    else:
        message = build_alert_message(wh, config.kind, config.asset, pending, ui_base_url=alerts.ui_base_url,
                                      min_severity=alerts.min_severity)
    result = alerts.get_destination().deliver(message)
    _record(wh, config, pending, result.status, result.destination, attempts_before + result.attempts, result.error or "",
            message.text, json.dumps(message.payload()), created_at, result.sent_at,
            slack_ts=result.slack_ts, thread_ts=thread_ts, covers_json=covered)
    if result.ok:
        log.info(f"alert {config.alert_id} ({config.kind}, {len(pending)} item(s)) delivered to {result.destination}")
    else:
        log.error(f"alert {config.alert_id} not delivered to {result.destination}: {result.error}; "
                  "it stays pending and the sensor retries it on a later tick")
    return result.status


def deliver_in_run(wh, alerts: AlertDestinationResource, asset: str, partitions: int, start, end, log) -> dict[str, int]:
    """Deliver a small run's incidents now, from inside the step that stored them (the live path).

    Same alert ids and messages as the sensor would request (``alert:<incident id>``, follow-ups
    for an incident a previous minute already alerted), so the sensor later finds them sent and
    launches nothing; a failed delivery stays ``failed`` and the sensor retries it. Runs over more
    than ``digest_threshold`` partitions are left to the sensor's digest. Assets that are no longer
    alerted on their own (EWMA anomalies, clusters: evidence of incidents now) deliver nothing here.
    """
    if asset not in ALERTED_ASSETS or not alerts.deliver_in_run or partitions > alerts.digest_threshold:
        return {}
    minutes = list(pd.date_range(start, end, freq="min", inclusive="left").to_pydatetime())
    items = list(dict.fromkeys(_incidents_touching(wh, minutes, alerts.min_severity)["item"]))
    outcomes: dict[str, int] = {}
    for item in items:
        config = AlertRunConfig(alert_id=single_alert_id(item), kind="single", asset=asset, item_ids=[item])
        status = deliver_alert_items(wh, alerts, config, log)
        outcomes[status] = outcomes.get(status, 0) + 1
    for request in _followup_requests(wh, items, alerts.min_severity):
        ops = request.run_config["ops"]["deliver_alert"]["config"]
        status = deliver_alert_items(wh, alerts, AlertRunConfig(**ops), log)
        outcomes[f"follow-up {status}"] = outcomes.get(f"follow-up {status}", 0) + 1
    return outcomes


def _already_sent(wh, item_ids: list[str]) -> set[str]:
    """Which of these items a first message (single or digest) already delivered."""
    if not item_ids or not wh.table_exists(ALERTS_TABLE):
        return set()
    sent = wh.query(
        f"SELECT DISTINCT item FROM (SELECT unnest(item_ids) AS item FROM btc.{ALERTS_TABLE} "
        "WHERE status = 'sent' AND kind IN (SELECT unnest(?))) WHERE item IN (SELECT unnest(?))",
        [list(FIRST_MESSAGE_KINDS), list(item_ids)],
    )
    return set(sent["item"])


def _not_yet_delivered(wh, item_ids: list[str]) -> list[str]:
    done = _already_sent(wh, item_ids)
    return [i for i in item_ids if i not in done]


def _record(wh, config: AlertRunConfig, item_ids: list[str], status, destination, attempts, error, text, payload, created_at,
            sent_at, *, slack_ts=None, thread_ts=None, covers_json="{}") -> None:
    """The delivery record of this alert; ``item_ids`` are the items this message covers (not those
    already delivered by another alert), so "each item sent once" can be read off the table."""
    row = pd.DataFrame([{
        "alert_id": config.alert_id, "kind": config.kind, "asset": config.asset, "item_ids": list(item_ids),
        "status": status, "destination": destination, "attempts": attempts, "error": error, "text": text,
        "payload_json": payload, "created_at": pd.Timestamp(created_at), "sent_at": pd.Timestamp(sent_at) if sent_at else pd.NaT,
        "slack_ts": slack_ts, "thread_ts": thread_ts, "covers_json": covers_json,
    }])
    wh.upsert(ALERTS_TABLE, ALERT_COLUMNS, row, key="alert_id")


@dg.job(description="Deliver one alert (or one digest) and record it in btc.alerts", executor_def=dg.in_process_executor)
def send_anomaly_alert():
    deliver_alert()


# The sensor daemon wakes every ~5 s; 1 s means "on every wake-up" (15 s added ~7-14 s to alert latency).
@dg.sensor(job=send_anomaly_alert, minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.RUNNING)
def anomaly_alert_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource, alerts: AlertDestinationResource):
    """Alerts every incident exactly once (one digest per backfill run), and its follow-ups once each."""
    requests, cursor = evaluate_alert_sensor(context.instance, context.cursor, warehouse, alerts)
    if not requests:
        return dg.SensorResult(skip_reason="no new flagged items", cursor=cursor)
    return dg.SensorResult(run_requests=requests, cursor=cursor)


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING, monitor_all_code_locations=False)
def pipeline_failure_alert(context: dg.RunFailureSensorContext, alerts: AlertDestinationResource):
    """Posts a failed pipeline run (with its error) to the same destination as the anomaly alerts."""
    from btc_anomaly_assets.alerts.slack_messages import build_run_failure_message

    run = context.dagster_run
    step_failures = [r.dagster_event for r in context.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
    first_error = step_failures[0].step_failure_data.error if step_failures else None
    message = build_run_failure_message(
        job_name=run.job_name, run_id=run.run_id,
        error=first_error.to_string() if first_error else context.failure_event.message,
        failed_steps=[e.step_key for e in step_failures],
        partition=run.tags.get("dagster/partition") or run.tags.get("dagster/asset_partition_range_start"),
        ui_base_url=alerts.ui_base_url,
    )
    result = alerts.get_destination().deliver(message)
    if not result.ok:
        context.log.error(f"run-failure alert for {run.run_id} not delivered to {result.destination}: {result.error}")
