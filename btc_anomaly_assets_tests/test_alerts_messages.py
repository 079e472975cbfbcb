"""Slack Block Kit messages: the tutorial's exact formats, our additions, limits and the digest."""

from __future__ import annotations

import json
import math
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from slack_sdk.models.blocks import Block

from btc_anomaly_assets.alerts.block_kit import (
    MAX_BLOCKS,
    MAX_HEADER_TEXT,
    MAX_SECTION_FIELDS,
    MAX_SECTION_TEXT,
    MAX_TOTAL_BLOCK_TEXT,
    SlackMessage,
    enforce_block_limits,
)
from btc_anomaly_assets.alerts.slack_messages import (
    build_coordination_message,
    build_digest_message,
    build_ewma_anomaly_message,
    build_forecast_excursion_message,
    build_run_failure_message,
    dagster_partition_url,
    meets_min_severity,
    unit_for_metric,
)
from btc_anomaly_assets.common.redaction import redact_secrets
from btc_anomaly_assets.common.schema import COORDINATED_CLUSTER_COLUMNS, EWMA_ANOMALY_COLUMNS, column_names

UI = "http://dagster.example:3000"
HASH = "3a446c29a2ea9308695b09d343c8ee0eb91f38ea37ef516eb67c3e206a77bfe9"


def ewma_row(**overrides) -> dict:
    row = {
        "anomaly_id": "a1",
        "minute": pd.Timestamp("2025-08-13 00:18"),
        "metric": "tx_count",
        "value": 5002.0,
        "baseline": 410.5,
        "deviation": 4591.5,
        "scale": 350.0,
        "z_score": 13.1186,
        "severity": "high",
        "rule": "|z|>=6",
        "mode": "default",
        "time_basis": "block",
        "tx_count": 5002,
        "block_ids": np.array([909778]),
        "baseline_source": "history",  # detection v2
    }
    row.update(overrides)
    return row


def cluster_row(**overrides) -> dict:
    row = {
        "cluster_id": "c1",
        "minute": pd.Timestamp("2025-08-13 00:18"),
        "pattern": "fan_in_consolidation",
        "tx_count": 118,
        "avg_input_count": 38.20338983050848,
        "avg_output_count": 31.10169491525424,
        "total_value_btc": 12.5,
        "sample_tx_hash": HASH,
        "member_hashes": [HASH],
        "score": 4.25,
        "baseline": 1.5,
        "severity": "medium",
        "rule": "inputs>=10",
        "mode": "default",
        "time_basis": "block",
        "block_ids": [909778],
        "baseline_source": "history",  # detection v2
        "evidence": "members",
        "evidence_score": 2.0,
    }
    row.update(overrides)
    return row


def assert_slack_valid(message: SlackMessage) -> None:
    """Slack's own Block Kit validators accept every block, and the global limits hold."""
    assert message.text.strip()
    assert len(message.blocks) <= MAX_BLOCKS
    for raw in message.blocks:
        block = Block.parse(raw)
        assert block is not None, raw
        block.validate_json()
    json.dumps(message.payload())  # serialisable as sent


def block_texts(message: SlackMessage) -> list[str]:
    texts = []
    for block in message.blocks:
        if "text" in block:
            texts.append(block["text"]["text"])
        texts.extend(f["text"] for f in block.get("fields", ()))
        texts.extend(e["text"] for e in block.get("elements", ()))
    return texts


def test_input_fixtures_cover_the_schema_columns():
    assert set(column_names(EWMA_ANOMALY_COLUMNS)) <= set(ewma_row())
    assert set(column_names(COORDINATED_CLUSTER_COLUMNS)) <= set(cluster_row())


def test_ewma_seed_parity_payload_is_the_tutorials():
    row = ewma_row(minute=pd.Timestamp("2025-05-14 18:14"), tx_count=300, z_score=-2.0467)
    message = build_ewma_anomaly_message(row, seed_parity=True, ui_base_url=UI)
    assert message.payload() == {
        "text": "Anomaly Detected!",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": " Anomaly Detected in Bitcoin Transactions"}},
            {"type": "divider"},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*Time:*\n2025-05-14 18:14:00"},
                    {"type": "mrkdwn", "text": "*Tx Count:*\n300"},
                    {"type": "mrkdwn", "text": "*Z-Score:*\n-2.05"},
                ],
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": "Flagged due to deviation from smoothed EWMA baseline"}],
            },
        ],
    }
    assert message.key == "a1"
    assert_slack_valid(message)


def test_coordination_seed_parity_payload_is_the_tutorials():
    row = cluster_row(minute=datetime(2025, 5, 11, 2, 26))
    message = build_coordination_message(row, seed_parity=True)
    assert message.payload() == {
        "text": "Coordination Alert",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "Coordinated Attack Detected!"}},
            {"type": "divider"},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*Time:*\n2025-05-11 02:26:00"},
                    {"type": "mrkdwn", "text": "*Tx Count:*\n118"},
                    {"type": "mrkdwn", "text": "*Avg Inputs:*\n38.2"},
                    {"type": "mrkdwn", "text": "*Avg Outputs:*\n31.1"},
                    {"type": "mrkdwn", "text": "*Sample Tx:*\n3a446c29a2ea9308..."},
                ],
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": "High fan-in or fan-out pattern detected across multiple transactions."}
                ],
            },
        ],
    }
    assert_slack_valid(message)


def test_ewma_default_payload_exact():
    row = ewma_row(summary="A 5,002-tx block landed after a 43-minute gap.\nSecond line ignored.", explanation_source="rules")
    message = build_ewma_anomaly_message(row, ui_base_url=UI + "/")
    assert message.payload() == {
        "text": "[high] Bitcoin anomaly in tx_count: 5,002 tx vs baseline 410.50 tx (z 13.12) at 2025-08-13 00:18 UTC",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "Anomaly Detected in Bitcoin Transactions"}},
            {"type": "divider"},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*Time:*\n2025-08-13 00:18 UTC"},
                    {"type": "mrkdwn", "text": "*Tx Count:*\n5,002"},
                    {"type": "mrkdwn", "text": "*Z-Score:*\n13.12"},
                    {"type": "mrkdwn", "text": "*Severity:*\nhigh"},
                    {"type": "mrkdwn", "text": "*Metric:*\n`tx_count`"},
                    {"type": "mrkdwn", "text": "*Value vs baseline:*\n5,002 tx vs 410.50 tx (+4,591.50 tx)"},
                ],
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*Summary (rule-based):* A 5,002-tx block landed after a 43-minute gap.",
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"<{UI}/assets/btc/ewma_anomalies?partition=2025-08-13-00:18|"
                    "Open btc/ewma_anomalies partition 2025-08-13-00:18 in Dagster>",
                },
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": "Flagged due to deviation from smoothed EWMA baseline"},
                    {"type": "mrkdwn", "text": "rule: `|z|&gt;=6` · time basis: block · mode: default · blocks: 909778"},
                ],
            },
        ],
    }
    assert_slack_valid(message)


def test_coordination_default_payload_exact():
    row = cluster_row(summary="Exchange consolidation.", explanation_source="claude")
    message = build_coordination_message(row, ui_base_url=UI)
    assert message.payload() == {
        "text": "[medium] Coordinated activity (fan_in_consolidation): 118 transactions, score 4.25 vs baseline 1.50 "
        "at 2025-08-13 00:18 UTC",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "Coordinated Activity Detected"}},
            {"type": "divider"},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*Time:*\n2025-08-13 00:18 UTC"},
                    {"type": "mrkdwn", "text": "*Tx Count:*\n118"},
                    {"type": "mrkdwn", "text": "*Avg Inputs:*\n38.2"},
                    {"type": "mrkdwn", "text": "*Avg Outputs:*\n31.1"},
                    {"type": "mrkdwn", "text": "*Sample Tx:*\n3a446c29a2ea9308..."},
                    {"type": "mrkdwn", "text": "*Severity:*\nmedium"},
                    {"type": "mrkdwn", "text": "*Pattern:*\n`fan_in_consolidation`"},
                    {"type": "mrkdwn", "text": "*Score vs baseline:*\n4.25 vs 1.50"},
                    {"type": "mrkdwn", "text": "*Total value:*\n12.5 BTC"},
                ],
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": "*Summary (claude):* Exchange consolidation."}},
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"<{UI}/assets/btc/coordinated_clusters?partition=2025-08-13-00:18|"
                    "Open btc/coordinated_clusters partition 2025-08-13-00:18 in Dagster>",
                },
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": "High fan-in or fan-out pattern detected across multiple transactions."},
                    {"type": "mrkdwn", "text": "rule: `inputs&gt;=10` · time basis: block · mode: default · blocks: 909778"},
                ],
            },
        ],
    }
    assert message.key == "c1"
    assert_slack_valid(message)


def test_without_ui_url_or_summary_there_is_no_link_or_summary_block():
    message = build_ewma_anomaly_message(ewma_row(summary=float("nan"), explanation_source=None))
    texts = block_texts(message)
    assert not any("Summary" in t for t in texts)
    assert not any("/assets/" in t for t in texts)


def test_missing_values_render_as_na_and_tz_aware_minutes_become_utc():
    row = ewma_row(
        z_score=None,
        value=float("nan"),
        baseline=pd.NA,
        minute=pd.Timestamp("2025-08-13 02:18", tz="Europe/Berlin"),
        metric="median_fee_rate_sat_vb",
    )
    fields = [f["text"] for f in build_ewma_anomaly_message(row).blocks[2]["fields"]]
    assert "*Time:*\n2025-08-13 00:18 UTC" in fields
    assert "*Z-Score:*\nn/a" in fields
    assert "*Value vs baseline:*\nn/a vs n/a" in fields


@pytest.mark.parametrize(
    "metric, unit",
    [
        ("tx_count", "tx"),
        ("tx_count_5min", "tx"),
        ("total_value_btc", "BTC"),
        ("median_fee_rate_sat_vb", "sat/vB"),
        ("mean_vsize_vb", "vB"),
        ("total_fee_usd", "USD"),
        ("avg_tx_size_bytes", "bytes"),
        ("avg_input_count", ""),
    ],
)
def test_units_follow_the_metric_name(metric, unit):
    assert unit_for_metric(metric) == unit


def test_btc_values_keep_satoshi_precision():
    message = build_ewma_anomaly_message(ewma_row(metric="max_value_btc", value=12.34567891, baseline=0.5))
    fields = [f["text"] for f in message.blocks[2]["fields"]]
    assert "*Value vs baseline:*\n12.34567891 BTC vs 0.5 BTC (+11.84567891 BTC)" in fields


def test_huge_inputs_are_truncated_not_rejected():
    huge = "x" * 20_000
    row = ewma_row(summary=huge, rule=huge, metric="m" * 5_000)
    message = build_ewma_anomaly_message(row, ui_base_url=UI)
    assert_slack_valid(message)
    summary = next(t for t in block_texts(message) if t.startswith("*Summary"))
    assert summary.endswith("…")
    coordination = build_coordination_message(cluster_row(pattern=huge, sample_tx_hash=huge), ui_base_url=UI)
    assert_slack_valid(coordination)
    failure = build_run_failure_message(job_name="j" * 400, run_id="r" * 40, error=huge, failed_steps=["s"] * 500)
    assert_slack_valid(failure)
    assert failure.blocks[0]["text"]["text"].endswith("…")
    assert len(failure.blocks[0]["text"]["text"]) == MAX_HEADER_TEXT


def test_enforce_block_limits_caps_blocks_fields_and_total_text():
    blocks = [{"type": "header", "text": {"type": "plain_text", "text": "h" * 500}}]
    blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": f"f{i}"} for i in range(25)]})
    blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": f"item {i}"}} for i in range(200)]
    fitted = enforce_block_limits(blocks)
    assert len(fitted) == MAX_BLOCKS
    assert len(fitted[0]["text"]["text"]) == MAX_HEADER_TEXT
    assert len(fitted[1]["fields"]) == MAX_SECTION_FIELDS
    assert "16 more field(s)" in fitted[1]["fields"][-1]["text"]
    assert "153 more block(s) omitted" in fitted[-1]["elements"][0]["text"]
    assert blocks[0]["text"]["text"] == "h" * 500  # the input is not modified

    long_sections = [{"type": "section", "text": {"type": "mrkdwn", "text": "y" * 5_000}} for _ in range(10)]
    fitted = enforce_block_limits(long_sections)
    total = sum(len(b["text"]["text"]) if "text" in b else len(b["elements"][0]["text"]) for b in fitted)
    assert total <= MAX_TOTAL_BLOCK_TEXT + 100
    assert all(len(b["text"]["text"]) <= MAX_SECTION_TEXT for b in fitted if b["type"] == "section")
    assert "omitted" in fitted[-1]["elements"][0]["text"]


def test_blocks_within_limits_are_unchanged():
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "fine"}} for _ in range(MAX_BLOCKS)]
    assert enforce_block_limits(blocks) == blocks


def test_forecast_excursion_message():
    row = {
        "cutoff": pd.Timestamp("2025-08-13 02:30"),
        "ds": pd.Timestamp("2025-08-13 02:54"),
        "step": 25,
        "y": 261.6,
        "yhat": 117.0,
        "yhat_lower": 90.25,
        "yhat_upper": 148.75,
        "direction": "above",
        "excess_half_widths": 3.86,
        "severity": "high",
        "series": "tx_per_minute_trailing_60min",
        "time_basis": "block",
        "model": "prophet 1.5.0 linear log1p",
    }
    message = build_forecast_excursion_message(row, ui_base_url=UI)
    assert_slack_valid(message)
    fields = [f["text"] for f in message.blocks[2]["fields"]]
    assert "*Actual:*\n261.60 tx/min" in fields
    assert "*Interval:*\n[90.25, 148.75] tx/min" in fields
    assert "*Outside by:*\n3.86 half-widths above" in fields
    assert "*Forecast origin:*\n2025-08-13 02:30 UTC (step 25)" in fields
    assert any(f"{UI}/assets/btc/transaction_forecast?partition=2025-08-13-02:30" in t for t in block_texts(message))
    assert message.text.startswith("[high] tx_per_minute_trailing_60min 261.60 tx/min outside")


def test_digest_counts_by_severity_and_lists_the_top_items():
    severities = ["high"] * 3 + ["medium"] * 5 + ["low"] * 7 + ["info"] * 40
    anomalies = [
        ewma_row(anomaly_id=f"a{i}", minute=pd.Timestamp("2025-08-13 00:00") + pd.Timedelta(minutes=i), severity=s, z_score=float(i))
        for i, s in enumerate(severities)
    ]
    clusters = [cluster_row(cluster_id="c1", severity="high", score=99.0), cluster_row(cluster_id="c2", severity="low")]
    message = build_digest_message(
        anomalies=anomalies,
        clusters=clusters,
        window_start=datetime(2025, 8, 13, 0, 0),
        window_end=datetime(2025, 8, 13, 1, 0),
        top_n=5,
        ui_base_url=UI,
    )
    assert_slack_valid(message)
    counts = message.blocks[1]["text"]["text"]
    assert "*Window:* 2025-08-13 00:00 → 2025-08-13 01:00 UTC (end exclusive)" in counts
    assert "*EWMA anomalies:* 55 — 3 high · 5 medium · 7 low · 40 info" in counts
    assert "*Coordinated clusters:* 2 — 1 high · 0 medium · 1 low · 0 info" in counts
    assert "Top 5 of 17 alerts" in message.blocks[3]["text"]["text"]
    lines = message.blocks[4]["text"]["text"].splitlines()
    assert len(lines) == 5
    # High first, strongest first within a severity: the cluster (score 99) then z 2, 1, 0, then medium z 7.
    assert "fan_in_consolidation" in lines[0]
    assert [line.split("`")[1] for line in lines[1:]] == ["2025-08-13 00:02", "2025-08-13 00:01", "2025-08-13 00:00", "2025-08-13 00:07"]
    assert "12 more alert(s)" in message.blocks[5]["elements"][0]["text"]
    assert message.text.startswith("Bitcoin Anomaly Digest: 57 alert(s) (4 high · 5 medium · 8 low · 40 info)")


def test_digest_of_a_large_backfill_stays_within_limits():
    anomalies = [
        ewma_row(anomaly_id=f"a{i}", minute=pd.Timestamp("2025-08-13") + pd.Timedelta(minutes=i), summary="s" * 400)
        for i in range(2_000)
    ]
    message = build_digest_message(anomalies=anomalies, top_n=500, ui_base_url=UI)
    assert_slack_valid(message)
    assert sum(len(t) for t in block_texts(message)) <= MAX_TOTAL_BLOCK_TEXT + 100
    assert "omitted" in block_texts(message)[-1]
    assert "(rows' span)" in message.blocks[1]["text"]["text"]


def test_empty_digest_says_so():
    message = build_digest_message(window_start=datetime(2025, 8, 13), window_end=datetime(2025, 8, 13, 1))
    assert_slack_valid(message)
    assert "No alerts in this window." in message.blocks[1]["text"]["text"]


def test_run_failure_message_redacts_secrets_and_links_the_run():
    error = (
        "SlackApiError posting to https://hooks.slack.com/services/T0ABC/B0DEF/SuperSecretPart with token "
        "xoxb-1234-5678-abcdef and key sk-ant-api03-zzz"
    )
    message = build_run_failure_message(
        job_name="alerts_job",
        run_id="0123456789abcdef",
        error=error,
        failed_steps=["send_alerts"],
        partition="2025-08-13-00:18",
        ui_base_url=UI,
    )
    assert_slack_valid(message)
    dumped = json.dumps(message.payload())
    for secret in ("SuperSecretPart", "xoxb-1234-5678-abcdef", "sk-ant-api03-zzz"):
        assert secret not in dumped
    assert "/services/T0ABC/B0DEF/***" in dumped
    assert f"{UI}/runs/0123456789abcdef" in dumped
    assert message.text.startswith("Dagster run 01234567 of alerts_job failed: SlackApiError")


def test_partition_url_and_min_severity_helpers():
    assert (
        dagster_partition_url(UI + "/", "btc/ewma_anomalies", datetime(2025, 8, 13, 0, 18))
        == f"{UI}/assets/btc/ewma_anomalies?partition=2025-08-13-00:18"
    )
    assert meets_min_severity("high", "medium") and meets_min_severity("medium", "medium")
    assert not meets_min_severity("low", "medium")
    with pytest.raises(ValueError, match="unknown severity"):
        meets_min_severity("urgent", "low")
    assert redact_secrets("plain text") == "plain text"


def test_z_score_rounding_is_two_places_and_infinite_scores_render():
    fields = build_ewma_anomaly_message(ewma_row(z_score=math.inf)).blocks[2]["fields"]
    assert fields[2]["text"] == "*Z-Score:*\n∞"
