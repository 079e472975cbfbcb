"""Events injected into the real 14 Aug blocks: each event minute is exactly one incident and one alert item.

The detectors run on the real blocks with the events added (copies of real rows, see
``btc_anomaly_testing.real_data``); the incidents, the backfill digest and the live per-incident
plan are built from their output exactly as the assets and the sensor build them.
"""

import re

import pytest

from btc_anomaly_assets.alerts.incident_messages import build_incident_digest
from btc_anomaly_assets.alerts.planning import MaterializationEvent, plan_alerts
from btc_anomaly_assets.detection.clusters import detect_coordinated_clusters
from btc_anomaly_assets.detection.ewma import detect_ewma_anomalies
from btc_anomaly_assets.incidents.findings import findings_from_rows
from btc_anomaly_assets.incidents.model import TX_COLUMNS, build_incidents, text_problems
from btc_anomaly_testing import real_data as rd

START, END = rd.DAY14_WINDOW
WHALE_BTC = 8_000


@pytest.fixture(scope="module")
def injected():
    raw = rd.raw_in(rd.real_raw(), START, END)
    minutes = rd.block_minutes(raw)
    raw, fee_spike = rd.inject_fee_spike(raw, 909926)
    raw, value_surge = rd.inject_value_surge(raw, 909928)
    raw, batch_storm = rd.inject_batch_storm(raw, 909931)
    whale = rd.copies_of(rd.typical_row(raw, 909929), 1, "whale-909929", output_total=WHALE_BTC * 100_000_000)
    raw = rd.append_rows(raw, whale)
    events = {"fee spike": minutes[909926], "value surge": minutes[909928], "whale": minutes[909929],
              "batch storm": minutes[909931]}
    aggregates = rd.minute_aggregates(raw, START, END)
    ewma = detect_ewma_anomalies(aggregates, START, END)
    clusters = detect_coordinated_clusters(raw, START, END)
    incidents = build_incidents(findings_from_rows(ewma.to_dict("records"), clusters.to_dict("records")), raw[TX_COLUMNS])
    return events, incidents, whale["hash"].iloc[0]


def _covering(incidents, minute):
    return incidents[(incidents["minute"] <= minute) & (incidents["end_minute"] >= minute)]


def test_each_event_minute_is_exactly_one_incident_at_medium_or_above(injected):
    events, incidents, whale_hash = injected
    for name, minute in events.items():
        found = _covering(incidents, minute)
        assert len(found) == 1, f"{name} at {minute:%H:%M}: {found['incident_id'].tolist()}"
        assert found["severity"].iloc[0] in ("medium", "high"), (name, found["headline"].iloc[0])
    whale = _covering(incidents, events["whale"]).iloc[0]
    assert whale["headline"].startswith(f"{WHALE_BTC:,} BTC moved in one transaction") and whale["top_tx_hash"] == whale_hash
    assert all(text_problems(row) == [] for row in incidents.to_dict("records"))


def test_each_event_minute_is_one_alert_item_in_a_digest_and_one_message_live(injected):
    events, incidents, _ = injected
    digest = build_incident_digest(incidents.to_dict("records"), {}, ui_base_url="http://localhost:3000")
    listed = re.findall(r"`(2025-08-14 \d\d:\d\d)(?:-\d\d:\d\d)? UTC`", " ".join(b["text"]["text"] for b in digest.blocks
                                                                             if b.get("type") == "section" and "text" in b))
    assert len(listed) == len(set(listed)), "no minute is listed twice"
    for name, minute in events.items():
        assert listed.count(f"{minute:%Y-%m-%d %H:%M}") == 1, name

    # Live: each minute is its own run; the sensor plans one message per incident of the minute.
    partition = {m: m.strftime("%Y-%m-%d-%H:%M") for m in events.values()}
    flagged = {("incidents", partition[m]): _covering(incidents, m)["incident_id"].tolist() for m in events.values()}
    runs = [MaterializationEvent(i, f"run-{i}", "incidents", partition[m]) for i, m in enumerate(events.values())]
    planned = plan_alerts(runs, flagged)
    assert sorted(len(p.item_ids) for p in planned) == [1] * len(events)
    assert len({p.run_key for p in planned}) == len(events)
