"""The live path: a minute's incidents are alerted from inside its run, once, and only when the checks pass.

The real ``btc/ewma_anomalies`` and ``btc/incidents`` assets run on minute aggregates of the real
13 Aug blocks (DuckDB reference aggregation) and their raw lake; 00:18 holds the 19,600 BTC
transfer, one ``high`` incident.
"""

import dagster as dg
import numpy as np
import pytest

from btc_anomaly_assets.alerts.destinations import read_outbox
from btc_anomaly_assets.alerts.resources import AlertDestinationResource
from btc_anomaly_assets.alerts.sensors import ALERTS_TABLE, evaluate_alert_sensor
from btc_anomaly_assets.common.lake import write_raw_window
from btc_anomaly_assets.common.resources import LakeResource, WarehouseResource
from btc_anomaly_assets.common.schema import MINUTE_AGGREGATE_COLUMNS
from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_assets.detection import assets as detectors
from btc_anomaly_assets.detection.assets import ewma_anomalies
from btc_anomaly_assets.detection.resources import DetectionSettings
from btc_anomaly_assets.incidents.assets import incidents
from btc_anomaly_assets.incidents.resources import IncidentSettings
from btc_anomaly_testing.real_data import DAY13_WINDOW, minute_aggregates, raw_in, real_raw

WHALE_MINUTE = "2025-08-13-00:18"


@pytest.fixture
def live(tmp_path):
    warehouse = WarehouseResource(path=str(tmp_path / "w.duckdb"))
    start, end = DAY13_WINDOW
    Warehouse(warehouse.path).replace_window("minute_aggregates", MINUTE_AGGREGATE_COLUMNS,
                                             minute_aggregates(real_raw(), start, end), start, end)
    lake = LakeResource(url=str(tmp_path / "lake"))
    write_raw_window(lake.raw_transactions_path, raw_in(real_raw(), start, end), start, end)
    with dg.instance_for_test() as instance:
        yield instance, warehouse, tmp_path


def _alerts(tmp_path, **overrides) -> AlertDestinationResource:
    return AlertDestinationResource(outbox_path=str(tmp_path / "outbox.jsonl"), **overrides)


def _materialize(instance, warehouse, alerts, **selection):
    lake = LakeResource(url=str(alerts.outbox_path).rsplit("/", 1)[0] + "/lake")
    return dg.materialize([ewma_anomalies, incidents], instance=instance, raise_on_error=False,
                          resources={"warehouse": warehouse, "alerts": alerts, "detection": DetectionSettings(), "lake": lake,
                                     "incident_settings": IncidentSettings()}, **selection)


def _metadata(result) -> dict:
    materialization = result.asset_materializations_for_node(incidents.op.name)[0]  # one per partition, same metadata
    return {k: v.value for k, v in materialization.metadata.items()}


def test_a_live_minute_alerts_from_inside_its_run_and_the_sensor_sends_nothing_more(live):
    instance, warehouse, tmp_path = live
    alerts = _alerts(tmp_path)
    result = _materialize(instance, warehouse, alerts, partition_key=WHALE_MINUTE)
    assert result.success

    wh = Warehouse(warehouse.path)
    flagged = wh.query("SELECT incident_id, severity FROM btc.incidents WHERE severity IN ('medium', 'high') ORDER BY incident_id")
    assert flagged["incident_id"].tolist() == ["inc-20250813-0018"] and flagged["severity"].tolist() == ["high"]
    assert len(wh.query("SELECT * FROM btc.ewma_anomalies WHERE severity IN ('medium', 'high')")) == 2  # two metrics, one event
    outbox = read_outbox(alerts.outbox_path)
    assert len(outbox) == 1 and outbox[0]["payload"]["text"].startswith("[high] 19,609 BTC moved in one transaction")
    assert "https://mempool.space/tx/2d9ab70a" in outbox[0]["payload"]["text"]
    sent = wh.query(f"SELECT alert_id, kind, status, item_ids FROM btc.{ALERTS_TABLE} ORDER BY alert_id")
    assert set(sent["status"]) == {"sent"} and set(sent["kind"]) == {"single"}
    assert sent["alert_id"].tolist() == [f"alert:{i}" for i in flagged["incident_id"]]
    assert [list(items) for items in sent["item_ids"]] == [[i] for i in flagged["incident_id"]]
    assert _metadata(result)["alerts_in_run"] == "1 sent"

    requests, _ = evaluate_alert_sensor(instance, None, warehouse, alerts)
    assert requests == []  # already delivered: no alert run is launched at all

    again = _materialize(instance, warehouse, alerts, partition_key=WHALE_MINUTE)
    assert _metadata(again)["alerts_in_run"] == "1 already_sent"
    assert len(read_outbox(alerts.outbox_path)) == len(flagged)


def test_switched_off_the_sensor_alerts_the_same_item(live):
    instance, warehouse, tmp_path = live
    alerts = _alerts(tmp_path, deliver_in_run=False)
    result = _materialize(instance, warehouse, alerts, partition_key=WHALE_MINUTE)
    assert result.success and _metadata(result)["alerts_in_run"] == "none"
    assert not (tmp_path / "outbox.jsonl").exists()
    requests, _ = evaluate_alert_sensor(instance, None, warehouse, alerts)
    assert len(requests) >= 1 and all(r.run_key.startswith("alert:") for r in requests)


def test_a_backfill_is_left_to_the_sensor_digest(live):
    instance, warehouse, tmp_path = live
    alerts = _alerts(tmp_path)
    result = _materialize(instance, warehouse, alerts, tags={"dagster/asset_partition_range_start": "2025-08-13-00:10",
                                                             "dagster/asset_partition_range_end": "2025-08-13-00:29"})
    assert result.success and _metadata(result)["alerts_in_run"] == "none"
    assert not (tmp_path / "outbox.jsonl").exists()
    requests, _ = evaluate_alert_sensor(instance, None, warehouse, alerts)
    assert [r.run_key.split(":")[0] for r in requests] == ["digest"]


def test_a_minute_failing_a_blocking_check_alerts_nothing(live, monkeypatch):
    instance, warehouse, tmp_path = live
    real_detector = detectors.detect_ewma_anomalies

    def detector_with_a_broken_z_score(*args, **kwargs):
        scored = real_detector(*args, **kwargs)
        scored.loc[scored["severity"] == "high", "z_score"] = np.inf
        return scored

    monkeypatch.setattr(detectors, "detect_ewma_anomalies", detector_with_a_broken_z_score)
    alerts = _alerts(tmp_path)
    result = _materialize(instance, warehouse, alerts, partition_key=WHALE_MINUTE)
    assert not result.success  # the blocking check stops the run here
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"every_minute_scored_once": True, "z_scores_finite": False}
    assert not (tmp_path / "outbox.jsonl").exists()
    assert not Warehouse(warehouse.path).table_exists(ALERTS_TABLE)
    assert not result.asset_materializations_for_node(incidents.op.name)  # the incidents step never ran


def test_on_off_settings_are_validated(monkeypatch):
    from btc_anomaly_assets.common import settings

    monkeypatch.setenv("BTC_ALERT_IN_RUN", "off")
    assert settings.is_on("BTC_ALERT_IN_RUN") is False
    monkeypatch.setenv("BTC_ALERT_IN_RUN", "sometimes")
    with pytest.raises(ValueError, match="BTC_ALERT_IN_RUN='sometimes' is not on/off"):
        settings.is_on("BTC_ALERT_IN_RUN")
