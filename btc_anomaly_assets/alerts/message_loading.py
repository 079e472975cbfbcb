"""Glue between the warehouse and the Block Kit builders: load flagged items, attach explanations."""

from __future__ import annotations

import pandas as pd

from btc_anomaly_assets.alerts.block_kit import SlackMessage
from btc_anomaly_assets.alerts.slack_messages import (
    build_coordination_message,
    build_digest_message,
    build_ewma_anomaly_message,
    build_forecast_excursion_message,
)
from btc_anomaly_assets.common.warehouse import Warehouse

TABLES = {
    "ewma_anomalies": ("ewma_anomalies", "anomaly_id"),
    "coordinated_clusters": ("coordinated_clusters", "cluster_id"),
    "transaction_forecast": ("forecast_excursions", "anomaly_id"),
}
SINGLE_BUILDERS = {
    "ewma_anomalies": build_ewma_anomaly_message,
    "coordinated_clusters": build_coordination_message,
    "transaction_forecast": build_forecast_excursion_message,
}


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
    records = rows.astype(object).where(pd.notna(rows), None).to_dict("records")
    return records


def build_alert_message(wh: Warehouse, kind: str, asset: str, item_ids: list[str], *, ui_base_url: str,
                        min_severity: str) -> SlackMessage:
    items = load_items(wh, asset, item_ids)
    if kind == "single":
        return SINGLE_BUILDERS[asset](items[0], ui_base_url=ui_base_url)
    grouped = {"anomalies": [], "clusters": [], "excursions": []}
    grouped[{"ewma_anomalies": "anomalies", "coordinated_clusters": "clusters", "transaction_forecast": "excursions"}[asset]] = items
    return build_digest_message(**grouped, ui_base_url=ui_base_url, min_severity=min_severity)
