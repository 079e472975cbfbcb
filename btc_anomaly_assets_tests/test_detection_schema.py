"""Detection v2's new columns are added to existing DuckDB tables in place: a warehouse written
before them still loads, its old rows read NULL there, and new rows carry them."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pandas as pd

from btc_anomaly_assets.common.schema import COORDINATED_CLUSTER_COLUMNS, EWMA_ANOMALY_COLUMNS, column_names
from btc_anomaly_assets.common.warehouse import Warehouse, create_table_sql

NEW_EWMA = ["baseline_source"]
NEW_CLUSTERS = ["baseline_source", "evidence", "evidence_score"]


def _old(columns, new):
    return [c for c in columns if c.name not in new]


def test_an_old_warehouse_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.duckdb"
    t0 = datetime(2025, 8, 13, 0, 18)
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA btc")
    con.execute(create_table_sql("ewma_anomalies", _old(EWMA_ANOMALY_COLUMNS, NEW_EWMA)))
    con.execute(create_table_sql("coordinated_clusters", _old(COORDINATED_CLUSTER_COLUMNS, NEW_CLUSTERS)))
    con.execute("INSERT INTO btc.ewma_anomalies (anomaly_id, minute, metric, severity) VALUES ('old', ?, 'tx_count', 'info')", [t0])
    con.close()

    wh = Warehouse(str(path))
    old_rows = wh.read_window("ewma_anomalies", EWMA_ANOMALY_COLUMNS, t0, t0 + timedelta(minutes=1))
    assert list(old_rows.columns) == column_names(EWMA_ANOMALY_COLUMNS) and old_rows["baseline_source"].isna().all()
    row = {c: None for c in column_names(EWMA_ANOMALY_COLUMNS)}
    row.update(anomaly_id="new", minute=t0 + timedelta(minutes=1), metric="tx_count", severity="info", tx_count=1,
               block_ids=[1], baseline_source="prior")
    wh.replace_window("ewma_anomalies", EWMA_ANOMALY_COLUMNS, pd.DataFrame([row]), t0 + timedelta(minutes=1),
                      t0 + timedelta(minutes=2))
    both = wh.read_window("ewma_anomalies", EWMA_ANOMALY_COLUMNS, t0, t0 + timedelta(minutes=2))
    assert both["baseline_source"].tolist()[0] is None or pd.isna(both["baseline_source"].tolist()[0])
    assert both["baseline_source"].tolist()[1] == "prior"
    clusters = wh.read_window("coordinated_clusters", COORDINATED_CLUSTER_COLUMNS, t0, t0 + timedelta(minutes=2))
    assert clusters.empty and set(NEW_CLUSTERS) <= set(clusters.columns)
