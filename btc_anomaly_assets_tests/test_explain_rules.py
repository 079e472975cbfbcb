"""Evidence normalization, the explanation contract, and the offline rule-based explainer.

Rows are built by hand following ``schema.EWMA_ANOMALY_COLUMNS`` / ``COORDINATED_CLUSTER_COLUMNS``.
The rule tests check the reasoning (which pattern, flag and confidence a situation earns), not
fixed strings, so each fails if a rule stops distinguishing the cases it is meant to.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from btc_anomaly_assets.common.schema import (
    COORDINATED_CLUSTER_COLUMNS,
    EWMA_ANOMALY_COLUMNS,
    arrow_schema,
    column_names,
)
from btc_anomaly_assets.explain.evidence import (
    EvidenceError,
    evidence_from_cluster_row,
    evidence_from_ewma_row,
    explanation_content_hash,
    select_evidence,
)
from btc_anomaly_assets.explain.prompt import (
    ANOMALY_EXPLANATION_COLUMNS,
    ANSWER_FIELDS,
    EXPLANATION_SCHEMA,
    ExplanationFormatError,
    render_user_message,
    validate_answer,
)
from btc_anomaly_assets.explain.rules import RULES_MODEL_ID, RuleExplainer, rule_based_answer

MINUTE = datetime(2025, 8, 13, 14, 5)
TX_A = "a1" * 32
TX_B = "b2" * 32


def ewma_row(**overrides) -> dict:
    row = {
        "anomaly_id": "e" * 40,
        "minute": MINUTE,
        "metric": "max_value_btc",
        "value": 1_250.0,
        "baseline": 12.5,
        "deviation": 1_237.5,
        "scale": 150.0,
        "z_score": 8.25,
        "severity": "high",
        "rule": "z>=6 on causal EWMA",
        "mode": "default",
        "time_basis": "first_seen",
        "tx_count": 412,
        "block_ids": [],
        "baseline_source": "history",  # detection v2
    }
    row.update(overrides)
    assert set(row) == set(column_names(EWMA_ANOMALY_COLUMNS))
    return row


def cluster_row(**overrides) -> dict:
    row = {
        "cluster_id": "c" * 40,
        "minute": MINUTE,
        "pattern": "coinjoin",
        "tx_count": 3,
        "avg_input_count": 20.0,
        "avg_output_count": 20.0,
        "total_value_btc": 2.0,
        "sample_tx_hash": TX_A,
        "member_hashes": [TX_B, TX_A],
        "score": 2.0,
        "baseline": 1.0,
        "severity": "medium",
        "rule": "equal-output coinjoin",
        "mode": "default",
        "time_basis": "block",
        "block_ids": [908_123],
        "baseline_source": "history",  # detection v2
        "evidence": "members",
        "evidence_score": 2.0,
    }
    row.update(overrides)
    assert set(row) == set(column_names(COORDINATED_CLUSTER_COLUMNS))
    return row


def answer_for(row: dict) -> dict:
    if "cluster_id" in row:
        return rule_based_answer(evidence_from_cluster_row(row, usd_per_btc=118_000.0))
    return rule_based_answer(evidence_from_ewma_row(row, usd_per_btc=118_000.0))


# ---------------------------------------------------------------------------------------------
# Evidence
# ---------------------------------------------------------------------------------------------


def test_evidence_converts_units_and_never_shows_bare_satoshi():
    # Seed-parity averages are stored in satoshi; the explainer must see BTC and USD.
    row = ewma_row(metric="avg_value_sat", value=183_766_700.0, baseline=20_000_000.0, deviation=163_766_700.0, scale=50_000_000.0, z_score=3.3)
    evidence = evidence_from_ewma_row(row, usd_per_btc=100_000.0)
    assert evidence["unit"] == "BTC"
    assert evidence["observed"] == {"value": pytest.approx(1.837667), "unit": "BTC", "usd": pytest.approx(183_766.7)}
    assert evidence["baseline"]["value"] == pytest.approx(0.2)
    message = render_user_message(evidence)
    assert "1.8377 BTC (about $183,767)" in message
    assert "183,766,700" not in message and "183766700" not in message


def test_log10_scored_metric_is_converted_back_to_natural_units():
    # The EWMA detector scores amounts on log10; every number of such a row is a log10 value.
    value = math.log10(19_600.0)
    row = ewma_row(metric="log10_max_value_btc", value=value, baseline=2.0, deviation=value - 2.0, scale=0.25, z_score=9.17)
    evidence = evidence_from_ewma_row(row, usd_per_btc=100_000.0)
    assert evidence["base_metric"] == "max_value_btc" and evidence["scored_on"] == "log10"
    assert evidence["observed"]["value"] == pytest.approx(19_600.0, rel=1e-6)
    assert evidence["observed"]["usd"] == pytest.approx(1.96e9, rel=1e-6)
    assert evidence["baseline"]["value"] == pytest.approx(100.0)
    assert evidence["ratio_to_baseline"] == pytest.approx(196.0, rel=1e-6)
    assert evidence["scale_factor"] == pytest.approx(10**0.25)
    message = render_user_message(evidence)
    assert "max_value_btc (Largest single output_total, BTC), scored on log10" in message
    assert "19,600 BTC" in message and "geometric average" in message and "1.78x" in message
    assert "4.29" not in message  # the log10 value itself never reaches the reader
    answer = rule_based_answer(evidence)
    assert answer["suspected_patterns"] == ["large_transfer"] and answer["flag_for_investigation"] is True


def test_per_block_metric_is_marked_when_the_minute_held_several_blocks():
    two_blocks = evidence_from_ewma_row(ewma_row(metric="tx_count", value=3_000.0, baseline=2_900.0, time_basis="block", block_ids=[908_123, 908_124]))
    one_block = evidence_from_ewma_row(ewma_row(metric="tx_count", value=3_000.0, baseline=2_900.0, time_basis="block", block_ids=[908_123]))
    assert two_blocks["per_block"] is True and one_block["per_block"] is False
    assert "held 2 blocks" in render_user_message(two_blocks)
    assert "Observed this minute per block: 3,000 transactions" in render_user_message(two_blocks)


def test_fee_rate_metric_keeps_sat_per_vbyte_and_no_usd():
    evidence = evidence_from_ewma_row(
        ewma_row(metric="p99_fee_rate_sat_vb", value=412.5, baseline=25.0, deviation=387.5, scale=40.0, z_score=9.7),
        usd_per_btc=118_000.0,
    )
    assert evidence["observed"] == {"value": 412.5, "unit": "sat/vB"}
    assert "412.50 sat/vB" in render_user_message(evidence)


def test_user_message_states_time_basis_baseline_and_samples():
    block = evidence_from_ewma_row(ewma_row(time_basis="block", block_ids=[908_124, 908_123]), sample_tx_hashes=[TX_A])
    message = render_user_message(block)
    assert "all of a block's transactions" in message
    assert "Baseline (EWMA of the preceding block-minutes): 12.5 BTC" in message
    assert "z-score: +8.25" in message
    assert TX_A in message
    assert "908,123, 908,124" in message
    assert "USD conversion: no rate available" in message
    mempool = render_user_message(evidence_from_ewma_row(ewma_row(time_basis="first_seen")))
    assert "first reached our node's mempool" in mempool


def test_content_hash_is_stable_and_tracks_facts_model_and_prompt():
    base = evidence_from_ewma_row(ewma_row())
    # The same facts from a pandas row (numpy scalars, Timestamp, ndarray) give the same hash.
    frame_row = pd.DataFrame([ewma_row()]).iloc[0]
    assert evidence_from_ewma_row(frame_row)["evidence_hash"] == base["evidence_hash"]
    # Float noise below 10 significant digits does not change it; a real change does.
    assert evidence_from_ewma_row(ewma_row(value=1_250.0 + 1e-9))["evidence_hash"] == base["evidence_hash"]
    assert evidence_from_ewma_row(ewma_row(value=1_251.0))["evidence_hash"] != base["evidence_hash"]
    first = explanation_content_hash(base, "claude-haiku-4-5-20251001", "forensic-v1")
    assert len(first) == 64
    assert first != explanation_content_hash(base, "claude-sonnet-4-5-20250929", "forensic-v1")
    assert first != explanation_content_hash(base, "claude-haiku-4-5-20251001", "forensic-v2")


def test_cluster_evidence_puts_the_sample_first_and_caps_hashes():
    members = [f"{i:064x}" for i in range(10)]
    evidence = evidence_from_cluster_row(cluster_row(sample_tx_hash=members[7], member_hashes=members, tx_count=10))
    assert evidence["sample_tx_hashes"][0] == members[7]
    assert len(evidence["sample_tx_hashes"]) == 5
    assert len(set(evidence["sample_tx_hashes"])) == 5


@pytest.mark.parametrize(
    "row, message",
    [
        (ewma_row(anomaly_id=None), "no `anomaly_id`"),
        (ewma_row(minute=datetime(2025, 8, 13, 14, 5, tzinfo=timezone.utc)), "naive UTC"),
        (ewma_row(severity="critical"), "unknown severity 'critical'"),
        (ewma_row(minute=None), "no `minute`"),
    ],
)
def test_bad_rows_raise_naming_the_problem(row, message):
    with pytest.raises((EvidenceError, ValueError), match=message):
        evidence_from_ewma_row(row)


def test_select_evidence_filters_by_severity_and_orders_most_severe_first():
    ewma = pd.DataFrame(
        [
            ewma_row(anomaly_id="1" * 40, severity="low"),
            ewma_row(anomaly_id="2" * 40, severity="medium", minute=datetime(2025, 8, 13, 14, 1)),
            ewma_row(anomaly_id="3" * 40, severity="info", rule="not_scored:no_data", z_score=None),
            ewma_row(anomaly_id="4" * 40, severity="high", minute=datetime(2025, 8, 13, 14, 9)),
        ]
    )
    clusters = [cluster_row(cluster_id="5" * 40, severity="high"), cluster_row(cluster_id="6" * 40, severity="low")]
    prices = {pd.Timestamp(MINUTE): 118_000.0}
    selected = select_evidence(ewma, clusters, min_severity="medium", usd_per_btc=lambda m: prices.get(pd.Timestamp(m)))
    assert [e["anomaly_id"][0] for e in selected] == ["5", "4", "2"]
    assert selected[0]["usd_per_btc"] == 118_000.0  # cluster at MINUTE got the price
    assert selected[1]["usd_per_btc"] is None
    assert [e["anomaly_id"][0] for e in select_evidence(ewma, [], min_severity="low")] == ["4", "2", "1"]


# ---------------------------------------------------------------------------------------------
# Answer validation
# ---------------------------------------------------------------------------------------------


def _valid_answer() -> dict:
    return answer_for(ewma_row())


def test_schema_lists_every_answer_field_as_required():
    assert EXPLANATION_SCHEMA["required"] == list(ANSWER_FIELDS)
    assert set(EXPLANATION_SCHEMA["properties"]) == set(ANSWER_FIELDS)
    assert EXPLANATION_SCHEMA["additionalProperties"] is False


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("narrative"), "missing field"),
        (lambda a: a.update(flag_for_investigation="yes"), "must be bool"),
        (lambda a: a.update(suspected_patterns=["money_laundering"]), "unknown value"),
        (lambda a: a.update(confidence="certain"), "confidence"),
        (lambda a: a.update(extra="x"), "unexpected field"),
        (lambda a: a.update(summary="  "), "empty"),
        (lambda a: a.update(legitimate_causes="exchange"), "list of strings"),
    ],
)
def test_validate_answer_rejects_schema_violations(change, message):
    answer = _valid_answer()
    change(answer)
    with pytest.raises(ExplanationFormatError, match=message):
        validate_answer(answer)


def test_validate_answer_drops_none_when_real_patterns_are_listed():
    answer = _valid_answer()
    answer["suspected_patterns"] = ["none", "dusting", "dusting"]
    assert validate_answer(answer)["suspected_patterns"] == ["dusting"]
    answer["suspected_patterns"] = []
    assert validate_answer(answer)["suspected_patterns"] == ["none"]


# ---------------------------------------------------------------------------------------------
# Rule-based reasoning
# ---------------------------------------------------------------------------------------------


def test_very_large_single_transfer_is_flagged_with_high_confidence():
    answer = answer_for(ewma_row())
    assert answer["suspected_patterns"] == ["large_transfer"]
    assert answer["statistically_unusual"] is True
    assert answer["flag_for_investigation"] is True
    assert answer["confidence"] == "high"
    assert "1,000 BTC" in answer["flag_rationale"]
    assert answer["summary"].startswith("[rule-based]") and len(answer["summary"]) <= 160
    assert answer["narrative"].startswith("Rule-based assessment")
    assert "e" * 40 in answer["narrative"]


def test_moderate_large_value_is_not_flagged_and_block_totals_are_capped():
    moderate = answer_for(ewma_row(value=80.0, deviation=67.5, z_score=7.0, time_basis="block"))
    assert moderate["suspected_patterns"] == ["large_transfer"]
    assert moderate["flag_for_investigation"] is False
    # Under block time a minute's *total* value tracks block arrival: confidence capped at medium.
    total = answer_for(ewma_row(metric="total_value_btc", value=9_000.0, baseline=900.0, deviation=8_100.0, z_score=7.0, time_basis="block"))
    assert total["confidence"] == "medium"
    assert any("large block" in cause for cause in total["legitimate_causes"])


def test_count_spike_under_block_time_is_block_arrival_not_suspicion():
    answer = answer_for(ewma_row(metric="tx_count", value=3_400.0, baseline=300.0, deviation=3_100.0, scale=500.0, z_score=6.2, time_basis="block"))
    assert answer["suspected_patterns"] == ["none"]
    assert answer["flag_for_investigation"] is False
    assert answer["confidence"] == "medium"
    assert "block" in answer["legitimate_causes"][0]


def test_value_below_baseline_is_never_flagged():
    answer = answer_for(ewma_row(metric="tx_count", value=300.0, baseline=2_000.0, deviation=-1_700.0, scale=800.0, z_score=-2.1, severity="medium"))
    assert answer["suspected_patterns"] == ["none"]
    assert answer["flag_for_investigation"] is False
    assert "below" in answer["unusual_reason"]


def test_fee_spike_means_congestion_and_is_not_a_compliance_flag():
    answer = answer_for(ewma_row(metric="p99_fee_rate_sat_vb", value=412.5, baseline=25.0, deviation=387.5, scale=40.0, z_score=9.7))
    assert answer["suspected_patterns"] == ["fee_market_congestion", "other"]
    assert answer["flag_for_investigation"] is False
    median = answer_for(ewma_row(metric="median_fee_rate_sat_vb", value=60.0, baseline=8.0, deviation=52.0, scale=10.0, z_score=5.2))
    assert median["suspected_patterns"] == ["fee_market_congestion"]
    assert median["confidence"] == "medium"


def test_fan_out_metric_escalates_to_fund_dispersion_only_when_extreme():
    mild = answer_for(ewma_row(metric="fan_out_10_count", value=40.0, baseline=20.0, deviation=20.0, scale=5.0, z_score=4.0, severity="medium"))
    extreme = answer_for(ewma_row(metric="fan_out_10_count", value=200.0, baseline=20.0, deviation=180.0, scale=5.0, z_score=36.0))
    assert mild["suspected_patterns"] == ["exchange_batching"] and not mild["flag_for_investigation"]
    assert extreme["suspected_patterns"] == ["exchange_batching", "fund_dispersion"] and extreme["flag_for_investigation"]


def test_unscored_or_unknown_metric_admits_insufficient_evidence():
    unscored = answer_for(ewma_row(z_score=None))
    assert unscored["insufficient_evidence"] is True and unscored["confidence"] == "low"
    unknown = answer_for(ewma_row(metric="mystery_metric", z_score=5.0))
    assert unknown["suspected_patterns"] == ["other"] and unknown["insufficient_evidence"] is True


def test_seed_parity_mode_is_always_low_confidence():
    answer = answer_for(ewma_row(mode="seed_parity"))
    assert answer["confidence"] == "low"
    assert "Seed-parity" in answer["unusual_reason"]


def test_coinjoin_is_flagged_only_when_its_volume_spikes():
    # A compliance configuration may label every CoinJoin medium; the flag follows the surge score.
    routine = answer_for(cluster_row(severity="medium", score=1.1))
    spike = answer_for(cluster_row(severity="high", score=9.0))
    assert routine["suspected_patterns"] == spike["suspected_patterns"] == ["mixing_coinjoin"]
    assert routine["flag_for_investigation"] is False
    assert "privacy" in routine["flag_rationale"]
    assert spike["flag_for_investigation"] is True


def test_dust_fanout_is_dusting_and_flagged():
    answer = answer_for(cluster_row(pattern="dust_fanout", tx_count=14, severity="high", avg_input_count=1.0, avg_output_count=120.0, total_value_btc=0.0123))
    assert answer["suspected_patterns"] == ["dusting"]
    assert answer["flag_for_investigation"] is True
    assert answer["confidence"] == "high"


def test_fan_out_batch_cluster_separates_batching_from_dispersion():
    routine = answer_for(cluster_row(pattern="fan_out_batch", severity="medium", score=4.5, baseline=30.0))
    burst = answer_for(cluster_row(pattern="fan_out_batch", severity="high", score=12.0, baseline=30.0))
    assert routine["suspected_patterns"] == ["exchange_batching"] and not routine["flag_for_investigation"]
    assert burst["suspected_patterns"] == ["exchange_batching", "fund_dispersion"] and burst["flag_for_investigation"]


def test_consolidation_flag_depends_on_value():
    small = answer_for(cluster_row(pattern="fan_in_consolidation", severity="high", score=9.0, total_value_btc=3.0))
    huge = answer_for(cluster_row(pattern="fan_in_consolidation", severity="high", score=9.0, total_value_btc=5_000.0))
    routine_huge = answer_for(cluster_row(pattern="fan_in_consolidation", severity="low", score=1.2, total_value_btc=5_000.0))
    assert routine_huge["flag_for_investigation"] is False
    assert small["suspected_patterns"] == ["consolidation"] and not small["flag_for_investigation"]
    assert huge["flag_for_investigation"] is True


def test_weak_patterns_admit_insufficient_evidence():
    seed = answer_for(cluster_row(pattern="seed_fan_in_out", mode="seed_parity"))
    assert seed["insufficient_evidence"] is True and seed["confidence"] == "low" and not seed["flag_for_investigation"]
    burst = answer_for(cluster_row(pattern="similar_burst", severity="medium"))
    assert burst["insufficient_evidence"] is True
    assert "parent and child" in burst["unusual_reason"]


# ---------------------------------------------------------------------------------------------
# Rows, columns and runs
# ---------------------------------------------------------------------------------------------


def test_rule_rows_match_the_column_contract_and_load_into_duckdb():
    explainer = RuleExplainer()
    rows = [explainer.explain_one(evidence_from_ewma_row(ewma_row())), explainer.explain_one(evidence_from_cluster_row(cluster_row()))]
    names = column_names(ANOMALY_EXPLANATION_COLUMNS)
    assert all(list(row) == names for row in rows)
    assert {(r["source"], r["model_id"], r["status"], r["api_calls"], r["input_tokens"]) for r in rows} == {("rules", RULES_MODEL_ID, "ok", 0, 0)}
    assert rows[0]["minute"] == MINUTE and rows[0]["anomaly_id"] == "e" * 40
    assert json.loads(rows[1]["evidence_json"])["pattern"] == "coinjoin"
    table = pa.Table.from_pylist(rows, schema=arrow_schema(ANOMALY_EXPLANATION_COLUMNS))
    con = duckdb.connect()
    ddl = ", ".join(f"{c.name} {c.duckdb_type}" for c in ANOMALY_EXPLANATION_COLUMNS)
    con.execute(f"CREATE TABLE anomaly_explanations ({ddl}, PRIMARY KEY (anomaly_id))")
    con.register("incoming", table)
    con.execute("INSERT INTO anomaly_explanations SELECT * FROM incoming")
    stored = con.execute("SELECT anomaly_id, suspected_patterns, flag_for_investigation FROM anomaly_explanations ORDER BY anomaly_id").fetchall()
    assert stored == [("c" * 40, ["mixing_coinjoin"], False), ("e" * 40, ["large_transfer"], True)]


def test_rule_run_skips_what_is_already_explained():
    explainer = RuleExplainer()
    evidences = [evidence_from_ewma_row(ewma_row()), evidence_from_cluster_row(cluster_row())]
    first = explainer.start_run()
    rows = list(first.explain(evidences))
    assert len(rows) == 2 and first.stats.explained_ok == 2
    second = explainer.start_run(already_explained={r["content_hash"] for r in rows})
    assert list(second.explain(evidences)) == []
    assert second.stats.cached == 2 and second.pending_batches == []
    assert "RuleExplainer" in repr(explainer)


def test_dust_valued_burst_capped_low_by_the_detector_is_not_flagged():
    # 71 identical 1-in/1-out transactions of 330 sat: inscription postage, which the detector caps at low.
    capped = answer_for(cluster_row(pattern="similar_burst", severity="low", score=14.2, baseline=5.0, tx_count=71, total_value_btc=71 * 330 / 1e8))
    assert capped["suspected_patterns"] == ["other"] and capped["flag_for_investigation"] is False
    assert "postage" in capped["legitimate_causes"][0]
    valuable = answer_for(cluster_row(pattern="similar_burst", severity="high", score=14.2, baseline=5.0, tx_count=71, total_value_btc=35.5))
    assert valuable["suspected_patterns"] == ["fund_dispersion", "other"] and valuable["flag_for_investigation"] is True


def test_ratio_rule_raises_confidence_even_with_a_modest_z():
    # The detector's ratio rule: ~20,000 BTC in a minute of arrivals against an ~11 BTC baseline, z only 2.45.
    value, baseline = math.log10(19_993.9), math.log10(11.18)
    fields = dict(metric="log10_total_value_btc", value=value, baseline=baseline, deviation=value - baseline,
                  scale=math.log10(21.3), z_score=2.45, rule="ratio_to_baseline>=30x(40.0x)")
    arrival = answer_for(ewma_row(**fields))
    assert arrival["statistically_unusual"] is True and arrival["confidence"] == "high"
    assert arrival["flag_for_investigation"] is True
    block = answer_for(ewma_row(time_basis="block", block_ids=[909_770], **fields))
    assert block["confidence"] == "medium" and block["flag_for_investigation"] is False
