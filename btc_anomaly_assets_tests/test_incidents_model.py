"""The incident model as pure functions: grouping, the severity rule, ids, wording, transactions, excursions."""

import json
from datetime import datetime, timedelta

import pandas as pd
import pytest

from btc_anomaly_assets.incidents.excursions import (
    SUSTAINED_MINUTES,
    block_arrival_band,
    counted_excursions,
    poisson_quantile,
)
from btc_anomaly_assets.incidents.findings import (
    finding_from_cluster_row,
    finding_from_ewma_row,
    findings_from_rows,
)
from btc_anomaly_assets.incidents.model import (
    TX_COLUMNS,
    build_incidents,
    explorer_tx_url,
    group_findings,
    incident_severity,
    text_problems,
)

T0 = datetime(2025, 8, 13, 0, 18)
WHALE = "2d9ab70a9d70a901c507161416245494913bc099b4ca5b99d0c694690c61fb31"


def ewma(minute=T0, metric="log10_max_value_btc", value=4.29245844, baseline=2.37292159, severity="high", **extra):
    return {"anomaly_id": f"e-{metric}-{minute:%H%M}", "minute": pd.Timestamp(minute), "metric": metric, "value": value,
            "baseline": baseline, "deviation": None if value is None else value - baseline,
            "scale": 0.31, "z_score": 6.2, "severity": severity,
            "rule": "ratio_to_baseline>=30x(83.1x)", "mode": "default", "time_basis": "block", "tx_count": 4133,
            "block_ids": [909770], **extra}


def cluster(minute=T0, pattern="similar_burst", members=37, total=0.0116, severity="medium", score=7.4):
    return {"cluster_id": f"c-{pattern}-{minute:%H%M}", "minute": pd.Timestamp(minute), "pattern": pattern,
            "tx_count": members, "avg_input_count": 1.0, "avg_output_count": 2.0, "total_value_btc": total,
            "sample_tx_hash": "ab" * 32, "member_hashes": ["ab" * 32, "cd" * 32], "score": score, "baseline": 5.0,
            "severity": severity, "rule": "identical structure", "mode": "default", "time_basis": "block",
            "block_ids": [909783]}


def raw_rows(minute=T0):
    return pd.DataFrame([
        {"hash": WHALE, "minute": pd.Timestamp(minute), "block_id": 909770, "output_total": 1_960_913_502_822, "input_count": 3,
         "output_count": 2, "fee": 3730, "fee_per_kwu": 2506.7, "is_coinbase": False},
        {"hash": "ef" * 32, "minute": pd.Timestamp(minute), "block_id": 909770, "output_total": 62_136_185_318, "input_count": 1,
         "output_count": 2, "fee": 232, "fee_per_kwu": 251.0, "is_coinbase": False},
        {"hash": "00" * 32, "minute": pd.Timestamp(minute), "block_id": 909770, "output_total": 312_500_000, "input_count": 1,
         "output_count": 3, "fee": 0, "fee_per_kwu": 0.0, "is_coinbase": True},
    ], columns=TX_COLUMNS)


def test_a_log10_metric_becomes_btc_and_the_headline_names_the_transfer():
    [incident] = build_incidents(findings_from_rows([ewma()]), raw_rows()).to_dict("records")
    assert incident["headline"] == "19,609 BTC moved in one transaction, 83x the usual largest"
    assert incident["incident_id"] == "inc-20250813-0018" and incident["severity"] == "high"
    assert incident["top_tx_hash"] == WHALE and incident["top_tx_url"] == f"https://mempool.space/tx/{WHALE}"
    [finding] = json.loads(incident["findings_json"])
    assert finding["unit"] == "BTC" and finding["value"] == pytest.approx(19_609.1, rel=1e-4)
    assert finding["baseline"] == pytest.approx(236.0, rel=1e-3) and finding["subject"] == "max_value_btc"
    txs = json.loads(incident["transactions_json"])
    assert [t["hash"] for t in txs] == [WHALE, "ef" * 32]  # the coinbase never carries an incident
    assert txs[0] == {"hash": WHALE, "value_btc": 19_609.13502822, "inputs": 3, "outputs": 2, "fee_btc": 0.0000373,
                      "fee_rate_sat_vb": pytest.approx(10.0268), "block_id": 909770, "url": f"https://mempool.space/tx/{WHALE}"}
    assert text_problems(incident) == []


def test_every_finding_of_a_minute_is_one_incident_named_by_the_strongest():
    rows = [ewma(), ewma(metric="log10_total_value_btc", value=4.339, baseline=2.7396), cluster(severity="low")]
    [incident] = build_incidents(findings_from_rows(rows[:2], rows[2:]), raw_rows()).to_dict("records")
    assert incident["finding_count"] == 3 and incident["phenomenon"] == "large_transfer"
    assert incident["primary_finding_id"] == "e-log10_max_value_btc-0018"
    assert "more finding(s) as evidence" in incident["severity_reason"]


def test_consecutive_minutes_of_one_phenomenon_merge_but_never_across_an_hour():
    minutes = [datetime(2025, 8, 13, 0, m) for m in (57, 58, 59)] + [datetime(2025, 8, 13, 1, 0), datetime(2025, 8, 13, 1, 5)]
    fee = [ewma(minute=m, metric="log10_median_fee_rate_sat_vb", value=1.6, baseline=0.8, severity="medium") for m in minutes]
    groups = group_findings(findings_from_rows(fee))
    assert [[f["minute"].strftime("%H:%M") for f in g] for g in groups] == [["00:57", "00:58", "00:59"], ["01:00"], ["01:05"]]
    incidents = build_incidents(findings_from_rows(fee))
    assert incidents["incident_id"].tolist() == ["inc-20250813-0057", "inc-20250813-0100", "inc-20250813-0105"]
    assert incidents["minute_count"].tolist() == [3, 1, 1]
    assert incidents["headline"].iloc[0] == \
        "Median fee rate 39.8 sat/vB, 6.3x the usual 6.3 sat/vB, over 3 minutes"
    # a different phenomenon in the next minute is its own incident
    mixed = findings_from_rows([ewma(minute=T0), ewma(minute=T0 + timedelta(minutes=1), metric="log10_p99_fee_rate_sat_vb",
                                                      value=2.0, baseline=1.0, severity="medium")])
    assert len(group_findings(mixed)) == 2


def test_severity_is_the_highest_counted_one_and_a_routine_bot_burst_counts_low():
    burst = finding_from_cluster_row(cluster())  # 37 identical payments of ~31,000 sat, graded medium by the detector
    assert burst["detector_severity"] == "medium" and burst["severity"] == "low" and "routine automated burst" in burst["cap"]
    big = finding_from_cluster_row(cluster(total=37 * 0.5))  # the same shape moving 0.5 BTC each is no routine
    assert big["severity"] == "medium" and big["cap"] is None
    whale = finding_from_ewma_row(ewma(severity="medium"))
    severity, reason = incident_severity([burst, whale])
    assert severity == "medium" and reason.startswith("medium: largest single transaction (max_value_btc)")
    assert "capped: identical transactions: routine automated burst" in reason
    assert incident_severity([burst])[0] == "low"
    assert build_incidents([burst], min_severity="medium").empty  # below the floor: no incident


def test_rebuilding_gives_the_same_incidents_byte_for_byte():
    rows = [ewma(), ewma(minute=T0 + timedelta(hours=2), severity="medium")]
    first = build_incidents(findings_from_rows(rows, [cluster()]), raw_rows())
    again = build_incidents(findings_from_rows(list(reversed(rows)), [cluster()]), raw_rows())
    pd.testing.assert_frame_equal(first, again)


def test_explorer_links_follow_the_configured_base_url():
    assert explorer_tx_url("https://blockstream.info/", WHALE) == f"https://blockstream.info/tx/{WHALE}"
    [incident] = build_incidents(findings_from_rows([ewma()]), raw_rows(), explorer_url="https://example.org/btc").to_dict("records")
    assert incident["top_tx_url"] == f"https://example.org/btc/tx/{WHALE}"


def test_not_scored_and_info_rows_are_no_finding():
    rows = [ewma(severity="info"), ewma(metric="tx_count", rule="not_scored:no_block_in_minute", severity="info", value=None)]
    assert findings_from_rows(rows, [cluster(severity="info")]) == []


def excursion(minute, cutoff, y, severity="high", basis="block", lower=90.0, upper=150.0):
    return {"anomaly_id": f"x-{minute:%H%M}-{cutoff:%H%M}", "minute": pd.Timestamp(minute), "cutoff": pd.Timestamp(cutoff),
            "step": 1, "y": y, "yhat": 120.0, "yhat_lower": lower, "yhat_upper": upper, "direction": "above",
            "excess_half_widths": 3.0, "severity": severity, "series": "rate", "time_basis": basis}


def aggregates(tx_per_block=3000):
    return pd.DataFrame({"minute": pd.date_range("2025-08-13", periods=6, freq="10min"), "tx_count": [tx_per_block] * 6,
                         "block_count": [1] * 6})


def test_poisson_band_of_block_arrival():
    assert poisson_quantile(6, 0.999) == 15 and poisson_quantile(6, 0.001) == 0
    assert block_arrival_band(3000) == (0.0, 750.0)  # 0..15 blocks of 3,000 transactions in 60 minutes


def test_block_time_excursions_inside_the_block_arrival_band_are_set_aside_one_per_minute():
    origin_a, origin_b = datetime(2025, 8, 13, 2, 30), datetime(2025, 8, 13, 2, 40)
    rows = [excursion(datetime(2025, 8, 13, 2, 58), origin_a, 322.6), excursion(datetime(2025, 8, 13, 2, 58), origin_b, 322.6)]
    counted, set_aside = counted_excursions(rows, aggregates())
    assert counted == [] and len(set_aside) == 1  # the newest origin only, and 322.6 tx/min is a bunch of blocks
    assert set_aside[0]["cutoff"] == origin_b and "block arrival" in set_aside[0]["cap"]


def test_beyond_the_band_an_excursion_counts_low_unless_sustained():
    origin = datetime(2025, 8, 13, 2, 0)
    alone, _ = counted_excursions([excursion(datetime(2025, 8, 13, 2, 10), origin, 900.0)], aggregates())
    assert [f["severity"] for f in alone] == ["low"] and "fewer than 3" in alone[0]["cap"]
    run = [excursion(datetime(2025, 8, 13, 2, 10 + i), origin, 900.0) for i in range(SUSTAINED_MINUTES)]
    sustained, _ = counted_excursions(run, aggregates())
    assert [f["severity"] for f in sustained] == ["high"] * SUSTAINED_MINUTES
    [incident] = build_incidents(sustained).to_dict("records")  # one incident for the run of minutes
    assert incident["minute_count"] == 3 and incident["headline"].startswith("Transaction rate 900 tx/min, above its forecast")


def test_first_seen_excursions_stay_a_signal():
    counted, set_aside = counted_excursions([excursion(datetime(2025, 8, 13, 2, 10), datetime(2025, 8, 13, 2, 0), 322.6,
                                                       basis="first_seen")], aggregates())
    assert len(counted) == 1 and set_aside == [] and counted[0]["severity"] == "low"


def test_text_problems_catch_what_a_person_must_not_read():
    bad = {"headline": "log10_max_value_btc 4.29 BTC", "severity": "high",
           "transactions_json": json.dumps([{"hash": "x", "value_btc": None}])}
    assert text_problems(bad) == ["headline contains 'log10'", "transaction x has no real BTC amount"]
    assert text_problems({"headline": "Value n/a", "severity": "high", "transactions_json": "[]"}) == ["headline contains 'n/a'"]
