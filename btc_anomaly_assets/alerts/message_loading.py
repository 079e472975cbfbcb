"""Glue between the warehouse and the Block Kit builders: load incidents (or raw flagged items) and
their explanations, build the message, and say what it told (``covers_json``)."""

from __future__ import annotations

import pandas as pd

from btc_anomaly_assets.alerts.block_kit import SlackMessage
from btc_anomaly_assets.alerts.incident_messages import (
    build_incident_digest,
    build_incident_followup,
    build_incident_message,
    covers,
)
from btc_anomaly_assets.alerts.slack_messages import (
    build_coordination_message,
    build_digest_message,
    build_ewma_anomaly_message,
    build_forecast_excursion_message,
)
from btc_anomaly_assets.common.warehouse import Warehouse

TABLES = {
    "incidents": ("incidents", "incident_id"),
    "ewma_anomalies": ("ewma_anomalies", "anomaly_id"),
    "coordinated_clusters": ("coordinated_clusters", "cluster_id"),
    "transaction_forecast": ("forecast_excursions", "anomaly_id"),
}
SINGLE_BUILDERS = {
    "ewma_anomalies": build_ewma_anomaly_message,
    "coordinated_clusters": build_coordination_message,
    "transaction_forecast": build_forecast_excursion_message,
}


def _records(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(pd.notna(frame), None).to_dict("records")


def load_items(wh: Warehouse, asset: str, item_ids: list[str]) -> list[dict]:
    """The flagged rows with the explanation's one-line summary when one exists."""
    table, id_column = TABLES[asset]
    rows = wh.query(f"SELECT * FROM btc.{table} WHERE {id_column} IN (SELECT unnest(?)) ORDER BY minute", [item_ids])
    if rows.empty:
        raise LookupError(f"none of {len(item_ids)} alerted item(s) is in btc.{table} any more (re-materialized?)")
    if wh.table_exists("anomaly_explanations"):
        explained = wh.query(
            "SELECT anomaly_id, summary, source AS explanation_source FROM btc.anomaly_explanations "
            "WHERE status = 'ok' AND anomaly_id IN (SELECT unnest(?))", [item_ids])
        rows = rows.merge(explained, how="left", left_on=id_column, right_on="anomaly_id", suffixes=("", "_explained"))
    return _records(rows)


def load_explanations(wh: Warehouse, incident_ids: list[str]) -> dict[str, dict]:
    """The current ok explanation of each incident: summary, source, content hash."""
    if not incident_ids or not wh.table_exists("anomaly_explanations"):
        return {}
    rows = wh.query("SELECT anomaly_id, summary, source, content_hash, flag_for_investigation, confidence "
                    "FROM btc.anomaly_explanations WHERE status = 'ok' AND anomaly_id IN (SELECT unnest(?))", [incident_ids])
    return {r["anomaly_id"]: r for r in _records(rows)}


def build_incident_alert(wh: Warehouse, kind: str, incident_ids: list[str], *, ui_base_url: str, min_severity: str,
                         changes: list[str] | None = None, thread_ts: str | None = None) -> tuple[SlackMessage, str]:
    """(message, covers_json) for a first message (single / digest) or a follow-up about incidents."""
    incidents = load_items(wh, "incidents", incident_ids)
    explanations = load_explanations(wh, [i["incident_id"] for i in incidents])
    if kind == "single":
        message = build_incident_message(incidents[0], explanations.get(incidents[0]["incident_id"]), ui_base_url=ui_base_url)
    elif kind == "digest":
        message = build_incident_digest(incidents, explanations, ui_base_url=ui_base_url, min_severity=min_severity)
    elif kind == "followup":
        incident = incidents[0]
        message = build_incident_followup(incident, explanations.get(incident["incident_id"]), changes or [],
                                          thread_ts=thread_ts, ui_base_url=ui_base_url)
    else:
        raise ValueError(f"unknown alert kind {kind!r}")
    return message, covers(incidents, explanations)


def build_alert_message(wh: Warehouse, kind: str, asset: str, item_ids: list[str], *, ui_base_url: str,
                        min_severity: str) -> SlackMessage:
    """Messages about raw detector rows (kept for the tutorial's formats; alerts now go per incident)."""
    if asset == "incidents":
        return build_incident_alert(wh, kind, item_ids, ui_base_url=ui_base_url, min_severity=min_severity)[0]
    items = load_items(wh, asset, item_ids)
    if kind == "single":
        return SINGLE_BUILDERS[asset](items[0], ui_base_url=ui_base_url)
    grouped = {"anomalies": [], "clusters": [], "excursions": []}
    grouped[{"ewma_anomalies": "anomalies", "coordinated_clusters": "clusters", "transaction_forecast": "excursions"}[asset]] = items
    return build_digest_message(**grouped, ui_base_url=ui_base_url, min_severity=min_severity)
