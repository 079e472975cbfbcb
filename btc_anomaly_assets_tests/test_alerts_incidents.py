"""Alerts per incident: Block Kit limits, follow-ups in the first message's thread (loopback Slack), once each.

Materializations come from stand-in assets with the real keys and partitions, so the sensor reads
genuine event-log records; incidents and explanations are built by the project's own code.
"""

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg
import pandas as pd
import pytest
from slack_sdk import WebClient
from slack_sdk.models.blocks import Block

from btc_anomaly_assets.alerts.block_kit import MAX_BLOCKS, MAX_FALLBACK_TEXT, block_text_size
from btc_anomaly_assets.alerts.incident_messages import build_incident_digest, build_incident_followup, build_incident_message
from btc_anomaly_assets.alerts.sensors import ALERTS_TABLE, AlertRunConfig, deliver_alert_items, evaluate_alert_sensor
from btc_anomaly_assets.alerts.slack_delivery import BotChannelDestination, RetryPolicy, WebhookDestination
from btc_anomaly_assets.common.dagster_helpers import ANOMALY_EXPLANATIONS, INCIDENTS
from btc_anomaly_assets.common.partitions import minute_partitions
from btc_anomaly_assets.common.resources import WarehouseResource
from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_assets.explain.incident_evidence import evidence_from_incident
from btc_anomaly_assets.explain.prompt import ANOMALY_EXPLANATION_COLUMNS
from btc_anomaly_assets.explain.rules import RuleExplainer
from btc_anomaly_assets.incidents.findings import findings_from_rows
from btc_anomaly_assets.incidents.model import INCIDENT_COLUMNS, TX_COLUMNS, build_incidents
from btc_anomaly_testing.fakes.slack_server import FakeSlack

T0 = datetime(2025, 8, 13, 0, 18)
KEY = "2025-08-13-00:18"
WHALE = "2d9ab70a9d70a901c507161416245494913bc099b4ca5b99d0c694690c61fb31"


def _ewma(severity="medium", metric="log10_max_value_btc", n=0):
    return {"anomaly_id": f"e-{metric}-{n}", "minute": pd.Timestamp(T0), "metric": metric, "value": 4.29245844,
            "baseline": 2.37292159, "deviation": 1.92, "scale": 0.31, "z_score": 6.2, "severity": severity,
            "rule": "ratio_to_baseline>=30x(83.1x)", "mode": "default", "time_basis": "block", "tx_count": 4133,
            "block_ids": [909770]}


def _raw():
    return pd.DataFrame([{"hash": WHALE, "minute": pd.Timestamp(T0), "block_id": 909770, "output_total": 1_960_913_502_822,
                          "input_count": 3, "output_count": 2, "fee": 3730, "fee_per_kwu": 2506.7, "is_coinbase": False}],
                        columns=TX_COLUMNS)


def _incidents(severity="medium"):
    return build_incidents(findings_from_rows([_ewma(severity)]), _raw())


def _valid(message) -> None:
    payload = message.payload()
    assert 0 < len(payload["text"]) <= MAX_FALLBACK_TEXT and len(payload["blocks"]) <= MAX_BLOCKS
    assert sum(block_text_size(b) for b in payload["blocks"]) <= 11_000
    for raw in payload["blocks"]:
        Block.parse(raw).validate_json()  # slack_sdk's own Block Kit validators (lengths, counts)
    text = json.dumps(payload).lower()
    assert "log10" not in text and "n/a" not in text


def test_incident_messages_fit_block_kit_limits_even_when_huge():
    findings = findings_from_rows([_ewma(n=n) for n in range(60)])
    [incident] = build_incidents(findings, _raw()).to_dict("records")
    incident["headline"] = "19,609 BTC moved in one transaction " * 20
    explanation = {"summary": "[rule-based] FLAG " + "x" * 5_000, "source": "rules", "content_hash": "h" * 64}
    single = build_incident_message(incident, explanation, ui_base_url="http://localhost:3000")
    _valid(single)
    assert WHALE in single.text and f"https://mempool.space/tx/{WHALE}" in single.text
    many = [{**incident, "incident_id": f"inc-{i}", "minute": T0 + timedelta(minutes=i)} for i in range(300)]
    digest = build_incident_digest(many, {}, ui_base_url="http://localhost:3000")
    _valid(digest)
    assert digest.text.startswith("Bitcoin incidents: 300 incident(s) (300 medium)")
    followup = build_incident_followup(incident, explanation, ["explanation-abc"], thread_ts="1.2")
    _valid(followup)
    assert followup.payload()["thread_ts"] == "1.2"


@dg.asset(key=INCIDENTS, partitions_def=minute_partitions)
def stand_in_incidents() -> None:
    """Only the materialization event matters: the rows are written by the test."""


@dg.asset(key=ANOMALY_EXPLANATIONS, partitions_def=minute_partitions)
def stand_in_explanations() -> None:
    """Only the materialization event matters."""


@dataclass
class Alerts:
    """What the sensor and the alert op read from the alerts resource, with a destination the test chooses."""

    destination: object
    min_severity: str = "medium"
    digest_threshold: int = 5
    ui_base_url: str = "http://localhost:3000"
    deliver_in_run: bool = True

    def get_destination(self):
        return self.destination


def _explain(wh: Warehouse) -> None:
    incident = wh.query("SELECT * FROM btc.incidents").to_dict("records")[0]
    row = RuleExplainer().explain_one(evidence_from_incident(incident, _ewma(incident["severity"])))
    wh.upsert("anomaly_explanations", ANOMALY_EXPLANATION_COLUMNS, pd.DataFrame([row]), key="anomaly_id")


def _tick(instance, cursor, wh, warehouse, alerts):
    requests, cursor = evaluate_alert_sensor(instance, cursor, warehouse, alerts)
    log = __import__("logging").getLogger("test")
    statuses = [deliver_alert_items(wh, alerts, AlertRunConfig(**r.run_config["ops"]["deliver_alert"]["config"]), log)
                for r in requests]
    return [r.run_key for r in requests], statuses, cursor


@pytest.fixture
def slack():
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def stage(tmp_path):
    warehouse = WarehouseResource(path=str(tmp_path / "w.duckdb"))
    wh = Warehouse(warehouse.path)
    wh.replace_window("incidents", INCIDENT_COLUMNS, _incidents("medium"), T0, T0 + timedelta(minutes=1))
    with dg.instance_for_test() as instance:
        yield instance, warehouse, wh


def _materialize(instance, asset):
    assert dg.materialize([asset], instance=instance, partition_key=KEY).success


def test_with_a_bot_token_what_arrives_later_goes_into_the_first_messages_thread_once(stage, slack):
    instance, warehouse, wh = stage
    client = WebClient(token=slack.token, base_url=slack.api_base_url)
    alerts = Alerts(BotChannelDestination(client, "#alerts", sleep=lambda s: None, min_interval_seconds=0))

    _materialize(instance, stand_in_incidents)
    keys, statuses, cursor = _tick(instance, None, wh, warehouse, alerts)
    assert keys == ["alert:inc-20250813-0018"] and statuses == ["sent"]
    [first] = slack.received
    assert first.thread_ts is None and first.text.startswith("[medium] 19,609 BTC moved in one transaction")
    first_ts = wh.query(f"SELECT slack_ts FROM btc.{ALERTS_TABLE}")["slack_ts"].iloc[0]
    assert first_ts

    _explain(wh)  # the explanation lands after the first message: a reply in its thread
    _materialize(instance, stand_in_explanations)
    keys, statuses, cursor = _tick(instance, cursor, wh, warehouse, alerts)
    assert len(keys) == 1 and keys[0].startswith("followup:inc-20250813-0018:explanation-") and statuses == ["sent"]
    assert slack.received[1].thread_ts == first_ts and "rule-based" in json.dumps(slack.received[1].blocks)

    # The severity is raised by a re-run of the minute: one more reply in the same thread.
    wh.replace_window("incidents", INCIDENT_COLUMNS, _incidents("high"), T0, T0 + timedelta(minutes=1))
    _explain(wh)
    _materialize(instance, stand_in_incidents)
    keys, statuses, cursor = _tick(instance, cursor, wh, warehouse, alerts)
    assert len(keys) == 1 and "severity-high" in keys[0] and statuses == ["sent"]
    assert slack.received[2].thread_ts == first_ts and "severity is now" in slack.received[2].text
    assert not any(m.thread_ts is None for m in slack.received[1:])

    # A restarted sensor (no cursor) sees every event again and sends nothing more.
    keys, _, _ = _tick(instance, None, wh, warehouse, alerts)
    assert keys == [] and len(slack.received) == 3
    records = wh.query(f"SELECT kind, status, thread_ts FROM btc.{ALERTS_TABLE} ORDER BY created_at")
    assert records["kind"].tolist() == ["single", "followup", "followup"] and set(records["status"]) == {"sent"}
    assert records["thread_ts"].tolist()[1:] == [first_ts, first_ts]


def test_with_a_webhook_a_ready_explanation_is_folded_in_and_a_late_one_names_the_incident(stage, slack):
    instance, warehouse, wh = stage
    alerts = Alerts(WebhookDestination(slack.webhook_url, sleep=lambda s: None, min_interval_seconds=0,
                                       retry=RetryPolicy(max_attempts=1)))
    _explain(wh)  # ready before the first message: folded into it, no follow-up
    _materialize(instance, stand_in_incidents)
    _materialize(instance, stand_in_explanations)
    keys, _, cursor = _tick(instance, None, wh, warehouse, alerts)
    assert keys == ["alert:inc-20250813-0018"]
    sent = json.dumps(slack.received[0].blocks)
    assert "Explanation (rule-based)" in sent and "[rule-based]" not in sent  # the source said once, not twice

    wh.replace_window("incidents", INCIDENT_COLUMNS, _incidents("high"), T0, T0 + timedelta(minutes=1))
    _explain(wh)
    _materialize(instance, stand_in_incidents)
    keys, statuses, _ = _tick(instance, cursor, wh, warehouse, alerts)
    assert len(keys) == 1 and statuses == ["sent"]
    late = slack.received[1]
    assert late.thread_ts is None and late.text.startswith("Update on inc-20250813-0018 (2025-08-13 00:18 UTC)")


def test_a_follow_up_is_never_sent_twice_even_when_requested_again(stage, slack):
    instance, warehouse, wh = stage
    alerts = Alerts(WebhookDestination(slack.webhook_url, sleep=lambda s: None, min_interval_seconds=0))
    _materialize(instance, stand_in_incidents)
    _tick(instance, None, wh, warehouse, alerts)
    _explain(wh)
    _materialize(instance, stand_in_explanations)
    requests, _ = evaluate_alert_sensor(instance, None, warehouse, alerts)
    [followup] = [r for r in requests if r.run_key.startswith("followup:")]
    config = AlertRunConfig(**followup.run_config["ops"]["deliver_alert"]["config"])
    log = __import__("logging").getLogger("test")
    assert deliver_alert_items(wh, alerts, config, log) == "sent"
    assert deliver_alert_items(wh, alerts, config, log) == "already_sent"
    assert len(slack.received) == 2
