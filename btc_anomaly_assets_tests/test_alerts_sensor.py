"""Exactly-once alerting per incident: one message per incident for live runs, one digest per backfill,
across restarts.

Materializations come from real single-run range materializations of a stand-in asset with the
incidents asset's key and partitions, so the sensor reads genuine event-log records.
"""

import json
from datetime import datetime, timedelta

import dagster as dg
import pandas as pd
import pytest

from btc_anomaly_assets.alerts.destinations import read_outbox
from btc_anomaly_assets.alerts.resources import AlertDestinationResource
from btc_anomaly_assets.alerts.sensors import (
    ALERTS_TABLE,
    anomaly_alert_sensor,
    evaluate_alert_sensor,
    send_anomaly_alert,
)
from btc_anomaly_assets.common.dagster_helpers import INCIDENTS
from btc_anomaly_assets.common.partitions import minute_partitions
from btc_anomaly_assets.common.resources import WarehouseResource
from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_assets.incidents.model import INCIDENT_COLUMNS, incident_id_for
from btc_anomaly_testing.fakes.slack_server import FakeSlack

T0 = datetime(2025, 8, 13, 1, 0)


@dg.asset(key=INCIDENTS, partitions_def=minute_partitions, backfill_policy=dg.BackfillPolicy.single_run())
def stand_in_incidents() -> None:
    """Stands in for the real incidents asset: only its materialization events matter here."""


def _id(m: int) -> str:
    return incident_id_for(T0 + timedelta(minutes=m))


def _incident_rows(minutes: list[int], severity: str = "high") -> pd.DataFrame:
    rows = []
    for m in minutes:
        minute = pd.Timestamp(T0 + timedelta(minutes=m))
        tx = {"hash": f"{m:064x}", "value_btc": 19_609.135, "inputs": 3, "outputs": 2, "fee_rate_sat_vb": 10.0,
              "fee_btc": 0.0000373, "block_id": 909770, "url": f"https://mempool.space/tx/{m:064x}"}
        rows.append({"incident_id": _id(m), "minute": minute, "end_minute": minute, "minute_count": 1,
                     "phenomenon": "large_transfer", "severity": severity, "severity_reason": f"{severity}: ratio rule",
                     "headline": "19,609 BTC moved in one transaction, 83x the usual largest", "time_basis": "block",
                     "mode": "default", "block_ids": [909770], "finding_ids": [f"f-{m}"], "finding_count": 1,
                     "primary_finding_id": f"f-{m}", "top_tx_hash": tx["hash"], "top_tx_url": tx["url"],
                     "findings_json": "[]", "transactions_json": json.dumps([tx])})
    return pd.DataFrame(rows, columns=[c.name for c in INCIDENT_COLUMNS])


def _key(minute: datetime) -> str:
    return minute.strftime("%Y-%m-%d-%H:%M")


def _materialize(instance, first: int, last: int) -> None:
    tags = {"dagster/asset_partition_range_start": _key(T0 + timedelta(minutes=first)),
            "dagster/asset_partition_range_end": _key(T0 + timedelta(minutes=last))}
    assert dg.materialize([stand_in_incidents], instance=instance, tags=tags).success


@pytest.fixture
def setup(tmp_path):
    warehouse = WarehouseResource(path=str(tmp_path / "w.duckdb"))
    alerts = AlertDestinationResource(outbox_path=str(tmp_path / "outbox.jsonl"), min_severity="medium")
    wh = Warehouse(warehouse.path)
    wh.replace_window("incidents", INCIDENT_COLUMNS, _incident_rows(list(range(12))), T0, T0 + timedelta(hours=1))
    with dg.instance_for_test() as instance:
        yield instance, warehouse, alerts, wh


def _tick(instance, cursor, warehouse, alerts):
    requests, cursor = evaluate_alert_sensor(instance, cursor, warehouse, alerts)
    for request in requests:
        result = send_anomaly_alert.execute_in_process(
            instance=instance, run_config=request.run_config, tags=request.tags,
            resources={"warehouse": warehouse, "alerts": alerts})
        assert result.success
    return requests, cursor


def test_live_run_alerts_each_item_once_and_a_backfill_gets_one_digest(setup):
    instance, warehouse, alerts, wh = setup
    _materialize(instance, 0, 0)  # a live minute: one partition
    requests, cursor = _tick(instance, None, warehouse, alerts)
    assert [r.run_key for r in requests] == [f"alert:{_id(0)}"]

    _materialize(instance, 1, 10)  # a 10-partition single-run backfill
    requests, cursor = _tick(instance, cursor, warehouse, alerts)
    assert len(requests) == 1 and requests[0].run_key.startswith("digest:")
    assert requests[0].run_config["ops"]["deliver_alert"]["config"]["item_ids"] == [_id(m) for m in range(1, 11)]

    outbox = read_outbox(alerts.outbox_path)
    assert len(outbox) == 2
    assert "Bitcoin incidents: 10 incident(s)" in outbox[1]["payload"]["text"]


def test_restart_and_rematerialization_never_alert_twice(setup):
    instance, warehouse, alerts, wh = setup
    _materialize(instance, 0, 2)
    _, cursor = _tick(instance, None, warehouse, alerts)
    assert len(read_outbox(alerts.outbox_path)) == 3

    # The sensor restarts with no cursor: it sees the same events again, and delivery skips them.
    _tick(instance, None, warehouse, alerts)
    # The same minutes are re-materialized (a re-run): same ids, nothing new is sent.
    _materialize(instance, 0, 2)
    _tick(instance, cursor, warehouse, alerts)
    assert len(read_outbox(alerts.outbox_path)) == 3
    statuses = wh.query(f"SELECT status, count(*) AS n FROM btc.{ALERTS_TABLE} GROUP BY status")
    assert dict(zip(statuses["status"], statuses["n"])) == {"sent": 3}


def test_below_minimum_severity_is_not_alerted(setup):
    instance, warehouse, alerts, wh = setup
    wh.replace_window("incidents", INCIDENT_COLUMNS, _incident_rows([30], severity="low"),
                      T0 + timedelta(minutes=30), T0 + timedelta(minutes=31))
    _materialize(instance, 30, 30)
    requests, _ = _tick(instance, None, warehouse, alerts)
    assert requests == []


def test_failed_delivery_stays_pending_and_is_retried_on_a_later_tick(setup):
    instance, warehouse, _, wh = setup
    with FakeSlack() as slack:
        slack.queue_webhook(*["server_error"] * 3)  # every attempt of the first delivery fails
        webhook = AlertDestinationResource(webhook_url=slack.webhook_url, outbox_path="unused.jsonl", min_severity="medium")
        _materialize(instance, 5, 5)
        _, cursor = _tick(instance, None, warehouse, webhook)
        record = wh.query(f"SELECT status, attempts, destination, error FROM btc.{ALERTS_TABLE}")
        assert record["status"].tolist() == ["failed"]
        assert slack.hook_secret not in record["destination"].iloc[0] + record["error"].iloc[0]
        assert slack.received == []

        requests, _ = _tick(instance, cursor, warehouse, webhook)  # Slack is back: the pending alert goes out
        assert [r.run_key for r in requests] == [f"alert:{_id(5)}:retry:{record['attempts'].iloc[0]}"]
        assert wh.query(f"SELECT status FROM btc.{ALERTS_TABLE}")["status"].tolist() == ["sent"]
        assert len(slack.received) == 1

        requests, _ = _tick(instance, cursor, warehouse, webhook)  # nothing left to retry
        assert requests == [] and len(slack.received) == 1


def test_sensor_definition_runs_against_a_real_instance(setup):
    instance, warehouse, alerts, _ = setup
    _materialize(instance, 0, 0)
    context = dg.build_sensor_context(instance=instance, resources={"warehouse": warehouse, "alerts": alerts})
    result = anomaly_alert_sensor(context)
    assert [r.run_key for r in result.run_requests] == [f"alert:{_id(0)}"]
    assert '"incidents"' in result.cursor


def test_a_backfill_over_an_already_alerted_minute_leaves_it_out_of_the_digest(setup):
    instance, warehouse, alerts, wh = setup
    _materialize(instance, 0, 0)
    _, cursor = _tick(instance, None, warehouse, alerts)
    _materialize(instance, 0, 9)
    _tick(instance, cursor, warehouse, alerts)
    sent = wh.query(f"SELECT kind, item_ids FROM btc.{ALERTS_TABLE} WHERE status = 'sent' ORDER BY kind")
    assert sent["kind"].tolist() == ["digest", "single"]
    digest_items = list(sent["item_ids"].iloc[0])
    assert _id(0) not in digest_items and len(digest_items) == 9
    assert "9 incident(s)" in read_outbox(alerts.outbox_path)[1]["payload"]["text"]
