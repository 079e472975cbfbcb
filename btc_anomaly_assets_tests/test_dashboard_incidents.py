"""The dashboard's Incidents tab reads the very rows the alerts are built from."""

from datetime import datetime, timedelta

import pandas as pd

from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_assets.dashboard import queries as q
from btc_anomaly_assets.dashboard.incidents_view import incidents_view
from btc_anomaly_assets.explain.incident_evidence import evidence_from_incident
from btc_anomaly_assets.explain.prompt import ANOMALY_EXPLANATION_COLUMNS
from btc_anomaly_assets.explain.rules import RuleExplainer
from btc_anomaly_assets.incidents.findings import findings_from_rows
from btc_anomaly_assets.incidents.model import INCIDENT_COLUMNS, TX_COLUMNS, build_incidents

T0 = datetime(2025, 8, 13, 0, 18)
WHALE = "2d9ab70a9d70a901c507161416245494913bc099b4ca5b99d0c694690c61fb31"


def _ewma(minute, severity):
    return {"anomaly_id": f"e-{minute:%H%M}", "minute": pd.Timestamp(minute), "metric": "log10_max_value_btc", "value": 4.2924,
            "baseline": 2.3729, "deviation": 1.92, "scale": 0.31, "z_score": 6.2, "severity": severity, "rule": "ratio",
            "mode": "default", "time_basis": "block", "tx_count": 4133, "block_ids": [909770]}


def test_the_incidents_tab_shows_the_stored_incidents_with_explorer_links_and_explanations(tmp_path):
    wh = Warehouse(str(tmp_path / "w.duckdb"))
    with q.reading(wh) as reader:
        assert incidents_view(reader, q.Window(), "low") == ([], "btc.incidents is not materialized yet.")
    rows = [_ewma(T0, "high"), _ewma(T0 + timedelta(minutes=40), "low")]
    raw = pd.DataFrame([{"hash": WHALE, "minute": pd.Timestamp(T0), "block_id": 909770, "output_total": 1_960_913_502_822,
                         "input_count": 3, "output_count": 2, "fee": 3730, "fee_per_kwu": 2506.7, "is_coinbase": False}],
                       columns=TX_COLUMNS)
    stored = build_incidents(findings_from_rows(rows), raw)
    wh.replace_window("incidents", INCIDENT_COLUMNS, stored, T0, T0 + timedelta(hours=1))
    with q.reading(wh) as reader:  # no explanations table yet: the incidents still show
        assert q.incidents(reader)["explanation"].tolist() == ["", ""]
    whale = stored.to_dict("records")[0]
    explanation = RuleExplainer().explain_one(evidence_from_incident(whale, rows[0]))
    wh.upsert("anomaly_explanations", ANOMALY_EXPLANATION_COLUMNS, pd.DataFrame([explanation]), key="anomaly_id")

    with q.reading(wh) as reader:
        shown, count = incidents_view(reader, q.Window(), "medium")
        every = q.incidents(reader, q.Window(), "low")
    assert count == "1 incident(s) at medium or above in the window"
    assert [r["incident_id"] for r in shown] == ["inc-20250813-0018"]
    assert shown[0]["headline"] == whale["headline"] == "19,609 BTC moved in one transaction, 83x the usual largest"
    assert shown[0]["transaction"] == f"[{WHALE[:16]}…](https://mempool.space/tx/{WHALE})"
    assert shown[0]["explanation"] == explanation["summary"] and shown[0]["minute"] == "2025-08-13 00:18"
    assert every["incident_id"].tolist() == ["inc-20250813-0058", "inc-20250813-0018"]  # newest first
