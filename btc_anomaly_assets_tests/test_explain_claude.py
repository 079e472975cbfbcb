"""ClaudeExplainer against a loopback fake of the Anthropic API, through the real ``anthropic`` SDK.

Sleeps are injected (``FakeTime``) so retry and batch-poll waits are recorded, not slept; the
recorded waits prove that ``retry-after`` was honoured and that batch polling is bounded.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

import pytest

from btc_anomaly_assets.common.redaction import REDACTED
from btc_anomaly_assets.common.schema import column_names
from btc_anomaly_assets.explain.claude_explainer import (
    ClaudeApiError,
    ClaudeConfigError,
    ClaudeExplainer,
    ClaudeRetriesExhausted,
    ClaudeSpendLimitReached,
    PendingBatch,
    TokenUsage,
    estimate_cost_usd,
    make_explainer,
)
from btc_anomaly_assets.explain.evidence import evidence_from_cluster_row, evidence_from_ewma_row
from btc_anomaly_assets.explain.prompt import ANOMALY_EXPLANATION_COLUMNS, EXPLANATION_SCHEMA, PROMPT_VERSION, SYSTEM_PROMPT
from btc_anomaly_assets.explain.rules import RuleExplainer
from btc_anomaly_testing.fakes.anthropic_server import (
    FAKE_API_KEY,
    FakeAnthropic,
    FakeModel,
    default_answer,
    raw_text_answer,
    scripted_error,
    truncated_answer,
    valid_answer,
)
from btc_anomaly_testing.fakes.loopback import Reply

MODEL = "claude-haiku-4-5"
RESOLVED = "claude-haiku-4-5-20251001"
MINUTE = datetime(2025, 8, 13, 14, 5)


class FakeTime:
    """Injected sleep/clock: sleeping advances the clock and is recorded."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def ewma_evidence(i: int = 0, **overrides):
    row = {
        "anomaly_id": f"{i:040x}",
        "minute": MINUTE + timedelta(minutes=i),
        "metric": "max_value_btc",
        "value": 1_250.0 + i,
        "baseline": 12.5,
        "deviation": 1_237.5 + i,
        "scale": 150.0,
        "z_score": 8.25,
        "severity": "high",
        "rule": "z>=6",
        "mode": "default",
        "time_basis": "block",
        "tx_count": 3_123,
        "block_ids": [908_123],
    }
    row.update(overrides)
    return evidence_from_ewma_row(row, usd_per_btc=118_000.0, sample_tx_hashes=["ab" * 32])


def cluster_evidence():
    return evidence_from_cluster_row(
        {
            "cluster_id": "c" * 40, "minute": MINUTE, "pattern": "coinjoin", "tx_count": 3,
            "avg_input_count": 20.0, "avg_output_count": 20.0, "total_value_btc": 2.0,
            "sample_tx_hash": "cd" * 32, "member_hashes": ["cd" * 32], "score": 9.0, "baseline": 1.0,
            "severity": "high", "rule": "equal-output", "mode": "default", "time_basis": "first_seen", "block_ids": [],
        }
    )


@pytest.fixture
def fake():
    return FakeAnthropic()


@pytest.fixture
def server(fake):
    with fake.serve() as srv:
        yield srv


@pytest.fixture
def clock():
    return FakeTime()


def make(server, clock, **kwargs) -> ClaudeExplainer:
    defaults = dict(base_url=server.url, sleep=clock.sleep, clock=clock.clock, initial_backoff_seconds=0.5)
    defaults.update(kwargs)
    return ClaudeExplainer(FAKE_API_KEY, MODEL, **defaults)


def message_posts(server) -> list:
    return [r for r in server.requests if r.method == "POST" and r.path == "/v1/messages"]


# ---------------------------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------------------------


def test_startup_resolves_the_alias_and_an_unknown_model_fails_clearly(server, clock):
    explainer = make(server, clock)
    assert explainer.model_id == RESOLVED
    with pytest.raises(ClaudeConfigError) as info:
        ClaudeExplainer(FAKE_API_KEY, "claude-3-opus-20240229", base_url=server.url, sleep=clock.sleep)
    message = str(info.value)
    assert "claude-3-opus-20240229" in message and "404" in message
    assert RESOLVED in message and "BTC_CLAUDE_MODEL" in message  # lists what is available
    assert message_posts(server) == []


def test_rejected_key_is_a_config_error_without_the_key(server, clock):
    wrong = "sk-ant-wrong-key-SECRET-999"
    with pytest.raises(ClaudeConfigError, match="rejected the API key") as info:
        ClaudeExplainer(wrong, MODEL, base_url=server.url, sleep=clock.sleep)
    assert wrong not in str(info.value)
    assert clock.sleeps == []  # 401 is not retried


def test_missing_key_is_refused_and_make_explainer_falls_back_to_rules(caplog):
    with pytest.raises(ClaudeConfigError, match="API key"):
        ClaudeExplainer("", MODEL)
    with caplog.at_level(logging.WARNING):
        explainer = make_explainer(None)
    assert isinstance(explainer, RuleExplainer)
    assert "rule-based" in caplog.text


# ---------------------------------------------------------------------------------------------
# Structured output
# ---------------------------------------------------------------------------------------------


def test_success_sends_schema_and_facts_and_stores_the_parsed_answer(fake, server, clock):
    explainer = make(server, clock)
    run = explainer.start_run()
    rows = list(run.explain([ewma_evidence(0), cluster_evidence()]))

    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert explainer.explain_one(ewma_evidence(5))["summary"] == f"fake-claude summary for {5:040x}"
    body = fake.message_bodies[0]
    assert body["model"] == RESOLVED
    assert body["output_config"]["format"] == {"type": "json_schema", "schema": EXPLANATION_SCHEMA}
    assert body["system"] == SYSTEM_PROMPT
    assert not {"temperature", "top_p", "top_k", "tools"} & set(body)
    user = body["messages"][0]["content"]
    assert "1,250 BTC (about $147,500,000)" in user and "z-score: +8.25" in user and "ab" * 32 in user
    assert "block time" in user

    row = rows[0]
    assert list(row) == column_names(ANOMALY_EXPLANATION_COLUMNS)
    assert row["summary"] == f"fake-claude summary for {0:040x}"
    assert row["suspected_patterns"] == ["large_transfer"] and row["flag_for_investigation"] is True
    assert (row["source"], row["model_id"], row["prompt_version"], row["api_calls"]) == ("claude", RESOLVED, PROMPT_VERSION, 1)
    assert row["content_hash"] == explainer.content_hash(ewma_evidence(0))
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    assert row["estimated_cost_usd"] == pytest.approx((row["input_tokens"] * 1.0 + row["output_tokens"] * 5.0) / 1e6)
    assert rows[1]["anomaly_kind"] == "coordinated_cluster" and rows[1]["subject"] == "coinjoin"
    meta = run.stats.as_metadata()
    assert meta["api_calls"] == 2 and meta["explained_ok"] == 2
    assert meta["input_tokens"] == sum(r["input_tokens"] for r in rows)
    assert meta["estimated_cost_usd"] == pytest.approx(sum(r["estimated_cost_usd"] for r in rows))


def test_model_without_structured_outputs_uses_a_strict_forced_tool(clock):
    fake = FakeAnthropic(models=(FakeModel(RESOLVED, aliases=(MODEL,), structured_outputs=False),))
    with fake.serve() as server:
        explainer = make(server, clock)
        rows = list(explainer.start_run().explain([ewma_evidence()]))
    body = fake.message_bodies[0]
    assert body["tools"][0]["strict"] is True and body["tools"][0]["input_schema"] == EXPLANATION_SCHEMA
    assert body["tool_choice"] == {"type": "tool", "name": body["tools"][0]["name"]}
    assert "format" not in body.get("output_config", {})
    assert rows[0]["status"] == "ok" and rows[0]["summary"].startswith("fake-claude summary")


def test_truncated_answer_is_retried_once_with_more_room(fake, server, clock):
    fake.truncate_below_max_tokens = 2_000
    explainer = make(server, clock, max_tokens=1_024)
    (row,) = explainer.start_run().explain([ewma_evidence()])
    assert row["status"] == "ok" and row["api_calls"] == 2
    assert [b["max_tokens"] for b in fake.message_bodies] == [1_024, 2_048]


def test_truncated_twice_is_recorded_as_failed_not_stored_as_text(fake, server, clock):
    fake.script_messages(truncated_answer, truncated_answer)
    explainer = make(server, clock)
    run = explainer.start_run()
    (row,) = run.explain([ewma_evidence()])
    assert row["status"] == "failed" and "truncated" in row["error"] and "2 attempts" in row["error"]
    assert row["summary"] is None and row["narrative"] is None and row["suspected_patterns"] is None
    assert row["api_calls"] == 2 and row["input_tokens"] > 0  # the failed attempts were billed
    assert len(message_posts(server)) == 2
    assert run.stats.failed == 1 and run.stats.explained_ok == 0


def test_malformed_json_is_retried_then_failed(fake, server, clock):
    fake.script_messages(raw_text_answer("Here is my analysis: the activity is unusual."), valid_answer)
    explainer = make(server, clock)
    (recovered,) = explainer.start_run().explain([ewma_evidence(1)])
    assert recovered["status"] == "ok" and recovered["api_calls"] == 2

    wrong_enum = json.dumps({**default_answer({"messages": [{"content": "Anomaly id: x"}]}), "confidence": "certain"})
    fake.script_messages(raw_text_answer("{not json"), raw_text_answer(wrong_enum))
    (failed,) = explainer.start_run().explain([ewma_evidence(2)])
    assert failed["status"] == "failed"
    assert failed["error"].startswith("malformed answer") and "confidence" in failed["error"]


def test_refusal_is_failed_without_a_retry(fake, server, clock):
    fake.script_messages(raw_text_answer("", stop_reason="refusal"))
    (row,) = make(server, clock).start_run().explain([ewma_evidence()])
    assert row["status"] == "failed" and "refusal" in row["error"] and row["api_calls"] == 1


# ---------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------


def test_429_honours_retry_after(fake, server, clock):
    fake.script_messages(scripted_error(429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit", retry_after="0.25"))
    run = make(server, clock).start_run()
    (row,) = run.explain([ewma_evidence()])
    assert row["status"] == "ok"
    assert clock.sleeps == [0.25]
    assert run.stats.http_retries == 1 and run.stats.api_calls == 1


def test_retry_after_ms_takes_precedence(fake, server, clock):
    fake.script_messages(scripted_error(429, "rate_limit_error", "slow down", retry_after="30", retry_after_ms="120"))
    list(make(server, clock).start_run().explain([ewma_evidence()]))
    assert clock.sleeps == [0.12]


def test_529_then_500_back_off_exponentially_then_succeed(fake, server, clock):
    fake.script_messages(scripted_error(529, "overloaded_error", "Overloaded"), scripted_error(500, "api_error", "Internal server error"))
    (row,) = make(server, clock, initial_backoff_seconds=0.5).start_run().explain([ewma_evidence()])
    assert row["status"] == "ok"
    assert clock.sleeps == [0.5, 1.0]
    assert len(message_posts(server)) == 3


def test_exhausted_retries_raise_a_clear_error_after_keeping_earlier_rows(fake, server, clock):
    explainer = make(server, clock, max_retries=2)
    run = explainer.start_run()
    rows = run.explain([ewma_evidence(0), ewma_evidence(1)])
    first = next(rows)  # explained before the outage: the caller has it
    assert first["status"] == "ok"
    fake.script_messages(*[scripted_error(529, "overloaded_error", "Overloaded")] * 3)
    with pytest.raises(ClaudeRetriesExhausted) as info:
        next(rows)
    message = str(info.value)
    assert "3 attempts" in message and "529" in message and "overloaded_error" in message and "request-id req_fake_" in message
    assert info.value.status == 529 and info.value.request_id.startswith("req_fake_")
    assert len(clock.sleeps) == 2


def test_retry_after_beyond_the_maximum_wait_gives_up_without_sleeping(fake, server, clock):
    fake.script_messages(scripted_error(429, "rate_limit_error", "rate limited", retry_after="3600"))
    with pytest.raises(ClaudeRetriesExhausted, match="3600 s"):
        list(make(server, clock, max_retry_wait_seconds=60).start_run().explain([ewma_evidence()]))
    assert clock.sleeps == []


def test_spend_limit_429_is_not_retried(fake, server, clock):
    fake.script_messages(scripted_error(429, "rate_limit_error", "monthly spend limit reached", error_code="enforced_spend_limit_reached"))
    with pytest.raises(ClaudeSpendLimitReached) as info:
        list(make(server, clock).start_run().explain([ewma_evidence()]))
    assert info.value.error_code == "enforced_spend_limit_reached"
    assert clock.sleeps == [] and len(message_posts(server)) == 1


def test_bad_request_is_not_retried(fake, server, clock):
    fake.script_messages(scripted_error(400, "invalid_request_error", "messages: too long"))
    with pytest.raises(ClaudeApiError, match="HTTP 400 invalid_request_error") as info:
        list(make(server, clock).start_run().explain([ewma_evidence()]))
    assert not isinstance(info.value, ClaudeRetriesExhausted)
    assert clock.sleeps == []


def test_timeouts_are_retried_then_reported(fake, server, clock):
    slow = lambda body, model_id: Reply(200, valid_answer(body, model_id), delay_seconds=1.0)  # noqa: E731
    fake.script_messages(slow, slow)
    explainer = make(server, clock, timeout=0.2, max_retries=1)
    with pytest.raises(ClaudeRetriesExhausted, match="request timed out"):
        list(explainer.start_run().explain([ewma_evidence()]))
    assert clock.sleeps == [0.5] and len(message_posts(server)) == 2


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------


def test_the_key_never_appears_in_logs_errors_reprs_metadata_or_rows(fake, server, clock, caplog):
    caplog.set_level(logging.DEBUG)
    explainer = make(server, clock, max_retries=1)
    # A hostile or buggy upstream that echoes the key back must not leak it through our errors.
    fake.script_messages(
        scripted_error(500, "api_error", f"boom for key {FAKE_API_KEY}"),
        valid_answer,
        scripted_error(400, "invalid_request_error", f"bad key {FAKE_API_KEY}"),
    )
    run = explainer.start_run()
    rows = []
    with pytest.raises(ClaudeApiError) as info:
        for row in run.explain([ewma_evidence(0), ewma_evidence(1)]):
            rows.append(row)
    texts = [
        caplog.text,
        str(info.value),
        repr(info.value),
        repr(explainer),
        str(explainer.__dict__),
        json.dumps(run.stats.as_metadata()),
        json.dumps(rows, default=str),
    ]
    assert REDACTED in str(info.value)
    assert "Retrying" in caplog.text or "retry 1 of 1" in caplog.text  # debug logging was captured
    for text in texts:
        assert FAKE_API_KEY not in text
    assert "SECRET" not in repr(explainer)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(explainer)


# ---------------------------------------------------------------------------------------------
# Cost control
# ---------------------------------------------------------------------------------------------


def test_cache_second_pass_makes_zero_calls(server, clock):
    explainer = make(server, clock)
    evidences = [ewma_evidence(i) for i in range(3)]
    rows = list(explainer.start_run().explain(evidences))
    posts = len(message_posts(server))
    stored = {r["content_hash"] for r in rows}
    second = explainer.start_run(already_explained=stored.__contains__)
    assert list(second.explain(evidences)) == []
    assert len(message_posts(server)) == posts == 3
    assert second.stats.cached == 3 and second.stats.api_calls == 0
    # Changed facts are a new cache key and are explained again.
    changed = list(explainer.start_run(already_explained=stored).explain([ewma_evidence(0, value=2_000.0)]))
    assert len(changed) == 1 and changed[0]["anomaly_id"] == rows[0]["anomaly_id"]


def test_call_cap_stops_calling_and_counts_the_rest(server, clock):
    run = make(server, clock, max_calls_per_run=2).start_run()
    rows = list(run.explain([ewma_evidence(i) for i in range(4)]))
    assert len(rows) == 2 and len(message_posts(server)) == 2
    assert run.stats.skipped_call_cap == 2
    assert "call cap" in run.stats.as_metadata()["notes"]


def test_daily_token_budget_counts_tokens_already_used_today(server, clock):
    explainer = make(server, clock, daily_token_budget=10_000)
    estimate = explainer.estimate_tokens(ewma_evidence(0), explainer.max_tokens)
    exhausted = explainer.start_run(tokens_used_today=10_000 - estimate + 1)
    assert list(exhausted.explain([ewma_evidence(0)])) == []
    assert exhausted.stats.skipped_token_budget == 1 and message_posts(server) == []
    partial = explainer.start_run(tokens_used_today=10_000 - 2 * estimate)
    rows = list(partial.explain([ewma_evidence(i) for i in range(4)]))
    assert 1 <= len(rows) < 4
    assert partial.stats.skipped_token_budget == 4 - len(rows)
    assert partial.tokens_used_today + partial.stats.input_tokens + partial.stats.output_tokens <= 10_000


def test_cost_estimate_uses_the_price_table_and_halves_batches():
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=100_000, cache_read_input_tokens=1_000_000)
    assert estimate_cost_usd("claude-haiku-4-5-20251001", usage) == pytest.approx(1.0 + 0.5 + 0.1)
    assert estimate_cost_usd("claude-sonnet-4-5", usage, batch=True) == pytest.approx((3.0 + 1.5 + 0.3) / 2)
    assert estimate_cost_usd("claude-unknown-9", usage) is None


# ---------------------------------------------------------------------------------------------
# Message Batches
# ---------------------------------------------------------------------------------------------


def test_backfill_goes_through_a_batch_that_is_polled_and_parsed(fake, server, clock):
    fake.polls_before_batch_ends = 3
    fake.truncate_below_max_tokens = None
    explainer = make(server, clock, batch_threshold=3, batch_poll_interval_seconds=10, batch_max_wait_seconds=100)
    run = explainer.start_run()
    evidences = [ewma_evidence(i) for i in range(3)]
    rows = list(run.explain(evidences))

    assert message_posts(server) == []
    (batch,) = fake.batches.values()
    assert [r["custom_id"] for r in batch.requests] == [explainer.content_hash(e) for e in evidences]
    assert batch.requests[0]["params"]["output_config"]["format"]["type"] == "json_schema"
    assert clock.sleeps == [10, 10]  # polled 3 times, slept between polls
    # Results come back in reverse order; rows are matched by custom_id.
    assert sorted(r["anomaly_id"] for r in rows) == sorted(e["anomaly_id"] for e in evidences)
    for row in rows:
        assert row["summary"] == f"fake-claude summary for {row['anomaly_id']}"
        assert row["batch_id"] == batch.id and row["status"] == "ok"
        full = estimate_cost_usd(RESOLVED, TokenUsage(row["input_tokens"], row["output_tokens"]))
        assert row["estimated_cost_usd"] == pytest.approx(full / 2)
    assert run.pending_batches == [] and run.stats.batches_created == 1 and run.stats.batches_collected == 1


def test_unfinished_batch_is_returned_pending_and_resumed_next_run(fake, server, clock):
    fake.polls_before_batch_ends = 100
    explainer = make(server, clock, batch_threshold=2, batch_poll_interval_seconds=5, batch_max_wait_seconds=5)
    evidences = [ewma_evidence(i) for i in range(2)]
    first = explainer.start_run()
    assert list(first.explain(evidences)) == []
    (pending,) = first.pending_batches
    assert first.stats.batch_items_unfinished == 2 and clock.sleeps == [5]
    saved = pending.to_json()

    # Next run: the same anomalies are still flagged; they must not be sent again while in flight.
    second = explainer.start_run(pending_batches=[PendingBatch.from_json(saved)])
    assert list(second.explain(evidences)) == []
    assert second.stats.in_flight_batch == 2 and len(second.pending_batches) == 1
    assert len(fake.batches) == 1 and message_posts(server) == []

    fake.polls_before_batch_ends = 0  # the batch has finished in the meantime
    third = explainer.start_run(pending_batches=second.pending_batches)
    rows = list(third.explain(evidences))
    assert sorted(r["anomaly_id"] for r in rows) == sorted(e["anomaly_id"] for e in evidences)
    assert third.pending_batches == [] and third.stats.cached == 2
    assert len(fake.batches) == 1 and message_posts(server) == []


def test_batch_item_errors_expiry_and_truncation(fake, server, clock):
    explainer = make(server, clock, batch_threshold=3, max_tokens=1_024)
    evidences = [ewma_evidence(i) for i in range(3)]
    hashes = [explainer.content_hash(e) for e in evidences]
    fake.batch_outcomes = {hashes[0]: ("errored", "invalid_request_error"), hashes[1]: "expired"}
    fake.truncate_below_max_tokens = 2_000  # the succeeded item is truncated in the batch ...
    run = explainer.start_run()
    rows = {r["content_hash"]: r for r in run.explain(evidences)}
    assert rows[hashes[0]]["status"] == "failed" and "invalid_request_error" in rows[hashes[0]]["error"]
    assert hashes[1] not in rows  # expired: not billed, retried next run
    retried = rows[hashes[2]]  # ... and retried once synchronously with more room
    assert retried["status"] == "ok" and retried["api_calls"] == 2
    assert [b["max_tokens"] for b in fake.message_bodies] == [2_048]
    assert run.stats.batch_items_unfinished == 1


def test_a_pending_batch_that_no_longer_exists_is_dropped_and_its_items_re_explained(server, clock):
    explainer = make(server, clock, batch_threshold=None)
    evidence = ewma_evidence(0)
    lost = PendingBatch("msgbatch_gone", RESOLVED, "forensic-v1", "2025-08-13T15:00:00Z", {explainer.content_hash(evidence): evidence})
    run = explainer.start_run(pending_batches=[lost])
    rows = list(run.explain([evidence]))
    assert run.pending_batches == []
    assert "msgbatch_gone no longer exists" in run.stats.as_metadata()["notes"]
    assert [r["status"] for r in rows] == ["ok"] and rows[0]["batch_id"] is None
