"""Slack delivery against a loopback fake of Slack: success, 429/5xx/timeouts, rate limiting, secrets, outbox."""

from __future__ import annotations

import json
import logging
from datetime import datetime

import pytest
from slack_sdk import WebClient

from btc_anomaly_assets.alerts.block_kit import SlackMessage
from btc_anomaly_assets.alerts.destinations import STATUS_FAILED, STATUS_SENT, OutboxDestination, read_outbox
from btc_anomaly_assets.alerts.slack_delivery import (
    BotChannelDestination,
    RateLimiter,
    RetryPolicy,
    WebhookDestination,
    select_destination,
)
from btc_anomaly_assets.alerts.slack_messages import build_ewma_anomaly_message
from btc_anomaly_testing.fakes.slack_server import FakeSlack

SENT_AT = datetime(2025, 8, 13, 0, 19, 5)
MESSAGE = SlackMessage(
    text="[high] test alert",
    blocks=[
        {"type": "header", "text": {"type": "plain_text", "text": "Anomaly Detected in Bitcoin Transactions"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "*Tx Count:* 5,002"}},
    ],
    key="a1",
)


class FakeClock:
    """A monotonic clock that only moves when someone sleeps; records every sleep."""

    def __init__(self, start: float = 1_000.0):
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """slack_sdk picks up HTTP(S)_PROXY; loopback traffic must go straight to the fake."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def shared_slack():
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def slack(shared_slack, clock):
    shared_slack.reset(clock=clock)
    return shared_slack


def webhook(slack: FakeSlack, clock: FakeClock, **options) -> WebhookDestination:
    options.setdefault("timeout_seconds", 2.0)
    return WebhookDestination(
        slack.webhook_url, clock=clock, sleep=clock.sleep, now=lambda: SENT_AT, jitter=lambda: 0.0, **options
    )


def bot(slack: FakeSlack, clock: FakeClock, channel: str = "#alerts", token: str | None = None, **options):
    options.setdefault("timeout_seconds", 2.0)
    client = WebClient(token=token or slack.token, base_url=slack.api_base_url)
    return BotChannelDestination(
        client, channel, clock=clock, sleep=clock.sleep, now=lambda: SENT_AT, jitter=lambda: 0.0, **options
    )


# ---------------------------------------------------------------------------------------------
# Webhook


def test_webhook_success_posts_text_and_blocks(slack, clock):
    result = webhook(slack, clock).deliver(MESSAGE)
    assert (result.status, result.attempts, result.error, result.sent_at) == (STATUS_SENT, 1, None, SENT_AT)
    assert result.destination == "webhook:…/T0/B0/***"
    assert len(slack.received) == 1
    assert (slack.received[0].text, slack.received[0].blocks) == (MESSAGE.text, MESSAGE.blocks)


def test_webhook_429_waits_for_retry_after_then_succeeds(slack, clock):
    slack.queue_webhook("rate_limited:7")
    result = webhook(slack, clock).deliver(MESSAGE)
    assert result.ok and result.attempts == 2
    assert clock.sleeps == [7.0]
    assert slack.request_times[1] - slack.request_times[0] >= 7.0
    assert len(slack.received) == 1


def test_webhook_429_with_an_http_date_retry_after_waits_until_that_date(slack, clock):
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    slack.queue_webhook("rate_limited:" + format_datetime(datetime.now(timezone.utc) + timedelta(seconds=20), usegmt=True))
    result = webhook(slack, clock).deliver(MESSAGE)
    assert result.ok and result.attempts == 2
    assert len(clock.sleeps) == 1 and 17.0 <= clock.sleeps[0] <= 20.0  # not the 1 s backoff a date used to fall back to


def test_webhook_500_is_retried_with_backoff(slack, clock):
    slack.queue_webhook("server_error", "server_error")
    result = webhook(slack, clock).deliver(MESSAGE)
    assert result.ok and result.attempts == 3
    assert clock.sleeps == [1.0, 2.0]
    assert len(slack.received) == 1


def test_webhook_persistent_500_fails_bounded_and_left_pending(slack, clock):
    slack.queue_webhook(*["server_error"] * 10)
    policy = RetryPolicy(max_attempts=4, backoff_base_seconds=1.0, backoff_max_seconds=3.0)
    result = webhook(slack, clock, retry=policy).deliver(MESSAGE)
    assert result.status == STATUS_FAILED and result.attempts == 4
    assert clock.sleeps == [1.0, 2.0, 3.0]
    assert "HTTP 500" in result.error and "left pending" in result.error
    assert result.sent_at is None
    assert len(slack.server.requests) == 4 and not slack.received


def test_webhook_invalid_blocks_is_not_retried(slack, clock):
    slack.queue_webhook("invalid_blocks")
    result = webhook(slack, clock).deliver(MESSAGE)
    assert result.status == STATUS_FAILED and result.attempts == 1
    assert "HTTP 400 invalid_blocks" in result.error and "Block Kit" in result.error
    assert len(slack.server.requests) == 1 and clock.sleeps == []


def test_over_limit_blocks_are_refused_by_the_fake_as_slack_would(slack, clock):
    raw = {"text": "x", "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}]}
    result = webhook(slack, clock).deliver(raw)
    assert result.status == STATUS_FAILED and "invalid_blocks" in result.error
    built = build_ewma_anomaly_message({"minute": datetime(2025, 8, 13), "metric": "tx_count", "summary": "s" * 9_000})
    assert webhook(slack, clock).deliver(built).ok


def test_webhook_channel_not_found_and_unknown_hook(slack, clock):
    slack.queue_webhook("channel_not_found")
    result = webhook(slack, clock).deliver(MESSAGE)
    assert result.status == STATUS_FAILED and "HTTP 404 channel_not_found" in result.error
    wrong = WebhookDestination(
        slack.webhook_url.replace(slack.hook_secret, "wrongSecret"), clock=clock, sleep=clock.sleep
    ).deliver(MESSAGE)
    assert wrong.status == STATUS_FAILED and "no_service" in wrong.error and wrong.attempts == 1


def test_webhook_retry_after_beyond_the_cap_fails_at_once(slack, clock):
    slack.queue_webhook("rate_limited:120")
    result = webhook(slack, clock).deliver(MESSAGE)
    assert result.status == STATUS_FAILED and result.attempts == 1
    assert "HTTP 429" in result.error and "Retry-After 120 s exceeds the 30 s wait cap" in result.error
    assert clock.sleeps == []


def test_webhook_repeated_429_gives_up_after_the_bounded_waits(slack, clock):
    slack.queue_webhook(*["rate_limited:2"] * 5)
    result = webhook(slack, clock, retry=RetryPolicy(max_rate_limit_retries=2)).deliver(MESSAGE)
    assert result.status == STATUS_FAILED and result.attempts == 3
    assert clock.sleeps == [2.0, 2.0]
    assert "still rate limited after 2 wait(s)" in result.error


def test_webhook_timeout_is_retried(slack, clock):
    slack.queue_webhook("timeout:1.5")
    result = webhook(slack, clock, timeout_seconds=0.3).deliver(MESSAGE)
    assert result.ok and result.attempts == 2
    assert clock.sleeps == [1.0]


def test_webhook_persistent_timeouts_fail(slack, clock):
    slack.queue_webhook("timeout:1.5", "timeout:1.5")
    result = webhook(slack, clock, timeout_seconds=0.3, retry=RetryPolicy(max_attempts=2)).deliver(MESSAGE)
    assert result.status == STATUS_FAILED and result.attempts == 2
    assert "network error" in result.error and "timed out" in result.error


def test_connection_refused_is_a_failed_result_not_an_exception(clock):
    url = "http://127.0.0.1:9/services/T0/B0/closedPortSecret"  # port 9 (discard): nothing listens
    result = WebhookDestination(
        url, clock=clock, sleep=clock.sleep, retry=RetryPolicy(max_attempts=2), timeout_seconds=1.0
    ).deliver(MESSAGE)
    assert result.status == STATUS_FAILED and result.attempts == 2 and "network error" in result.error


def test_rate_limiter_spaces_messages_one_second_apart(slack, clock):
    destination = webhook(slack, clock)
    for _ in range(3):
        assert destination.deliver(MESSAGE).ok
    gaps = [b - a for a, b in zip(slack.request_times, slack.request_times[1:])]
    assert gaps == [1.0, 1.0]
    assert clock.sleeps == [1.0, 1.0]


def test_rate_limiter_does_not_wait_when_time_has_passed():
    clock = FakeClock()
    limiter = RateLimiter(1.0, clock=clock, sleep=clock.sleep)
    assert limiter.wait() == 0.0
    clock.now += 0.25
    assert limiter.wait() == pytest.approx(0.75)
    clock.now += 5.0
    assert limiter.wait() == 0.0


def test_message_without_text_fails_without_a_request(slack, clock):
    result = webhook(slack, clock).deliver({"text": " ", "blocks": []})
    assert result.status == STATUS_FAILED and "fallback 'text'" in result.error
    assert not slack.server.requests


# ---------------------------------------------------------------------------------------------
# Bot token + channel


def test_bot_success_returns_the_message_ts(slack, clock):
    result = bot(slack, clock).deliver(MESSAGE)
    assert result.ok and result.attempts == 1 and result.slack_ts
    assert result.destination == "channel:#alerts"
    assert slack.received[0].channel == "#alerts" and slack.received[0].blocks == MESSAGE.blocks


def test_bot_429_then_success_honours_retry_after(slack, clock):
    slack.queue_api("rate_limited:3")
    result = bot(slack, clock).deliver(MESSAGE)
    assert result.ok and result.attempts == 2 and clock.sleeps == [3.0]


def test_bot_500_then_success(slack, clock):
    slack.queue_api("server_error")
    result = bot(slack, clock).deliver(MESSAGE)
    assert result.ok and result.attempts == 2 and clock.sleeps == [1.0]


def test_bot_persistent_500_fails(slack, clock):
    slack.queue_api(*["server_error"] * 5)
    result = bot(slack, clock).deliver(MESSAGE)
    assert result.status == STATUS_FAILED and result.attempts == 3 and "left pending" in result.error


def test_bot_invalid_blocks_is_not_retried(slack, clock):
    slack.queue_api("invalid_blocks")
    result = bot(slack, clock).deliver(MESSAGE)
    assert result.status == STATUS_FAILED and result.attempts == 1
    assert "invalid_blocks" in result.error and "Block Kit" in result.error
    assert len(slack.server.requests) == 1


@pytest.mark.parametrize(
    "channel, error, hint",
    [("#nowhere", "channel_not_found", "does not exist"), ("#private", "not_in_channel", "/invite")],
)
def test_bot_channel_errors_are_clear_and_final(slack, clock, channel, error, hint):
    slack.reset(clock=clock, channels=("#alerts", "#private"), not_member_of=("#private",))
    result = bot(slack, clock, channel=channel).deliver(MESSAGE)
    assert result.status == STATUS_FAILED and result.attempts == 1
    assert error in result.error and hint in result.error and channel in result.error
    assert len(slack.server.requests) == 1


def test_bot_timeout_then_success(slack, clock):
    slack.queue_api("timeout:1.5")
    result = bot(slack, clock, timeout_seconds=0.3).deliver(MESSAGE)
    assert result.ok and result.attempts == 2


def test_bot_bad_token_is_a_final_failure(slack, clock):
    result = bot(slack, clock, token="xoxb-wrong-token-000").deliver(MESSAGE)
    assert result.status == STATUS_FAILED and "invalid_auth" in result.error and result.attempts == 1


# ---------------------------------------------------------------------------------------------
# Secrets


def test_secrets_never_appear_in_results_reprs_errors_or_logs(slack, clock, caplog):
    caplog.set_level(logging.DEBUG)
    hook = webhook(slack, clock, timeout_seconds=0.3, retry=RetryPolicy(max_attempts=2))
    channel = bot(slack, clock, timeout_seconds=0.3, retry=RetryPolicy(max_attempts=2))
    slack.queue_webhook("rate_limited:1", "server_error", "timeout:1.0", "timeout:1.0", "invalid_blocks")
    slack.queue_api("rate_limited:1", "server_error", "timeout:1.0", "timeout:1.0", "invalid_blocks")
    results = [hook.deliver(MESSAGE) for _ in range(3)] + [channel.deliver(MESSAGE) for _ in range(3)]
    assert {r.status for r in results} == {STATUS_SENT, STATUS_FAILED}
    refused = WebhookDestination(
        f"http://127.0.0.1:9/services/T0/B0/{slack.hook_secret}", clock=clock, sleep=clock.sleep, retry=RetryPolicy(max_attempts=1)
    )
    results.append(refused.deliver(MESSAGE))
    exposed = caplog.text + "".join(repr(r) + str(r.error) for r in results) + repr(hook) + repr(channel) + repr(refused)
    for secret in (slack.hook_secret, slack.token, slack.webhook_url):
        assert secret not in exposed
    assert "webhook:…/T0/B0/***" in repr(hook) and "channel:#alerts" in repr(channel)


def test_invalid_webhook_url_error_does_not_echo_it():
    with pytest.raises(ValueError) as raised:
        WebhookDestination("ftp://hooks.example/services/T1/B1/topSecretValue")
    assert "topSecretValue" not in str(raised.value)


# ---------------------------------------------------------------------------------------------
# Outbox and selection


def test_outbox_appends_one_json_line_per_message(tmp_path):
    path = tmp_path / "alerts" / "outbox.jsonl"
    stamps = iter([datetime(2025, 8, 13, 0, 19), datetime(2025, 8, 13, 0, 20)])
    outbox = OutboxDestination(path, now=lambda: next(stamps))
    first = outbox.deliver(MESSAGE)
    second = outbox.deliver({"text": "plain", "blocks": []})
    assert first.ok and second.ok and first.destination == f"outbox:{path}"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert records == read_outbox(path)
    assert records[0] == {
        "destination": f"outbox:{path}",
        "key": "a1",
        "payload": MESSAGE.payload(),
        "written_at": "2025-08-13T00:19:00",
    }
    assert records[1]["payload"] == {"text": "plain", "blocks": []} and records[1]["key"] is None


def test_outbox_write_failure_is_a_failed_result(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    result = OutboxDestination(blocker / "outbox.jsonl").deliver(MESSAGE)
    assert result.status == STATUS_FAILED and "could not write outbox" in result.error


def test_select_destination_prefers_webhook_then_bot_then_outbox(slack, tmp_path, caplog):
    outbox = tmp_path / "outbox.jsonl"
    assert isinstance(select_destination(webhook_url=slack.webhook_url, outbox_path=outbox), WebhookDestination)
    client = WebClient(token=slack.token, base_url=slack.api_base_url)
    assert isinstance(select_destination(web_client=client, channel="#alerts", outbox_path=outbox), BotChannelDestination)
    caplog.set_level(logging.INFO)
    fallback = select_destination(web_client=client, outbox_path=outbox)
    assert isinstance(fallback, OutboxDestination)
    assert "no channel" in caplog.text and str(outbox) in caplog.text
    assert isinstance(select_destination(outbox_path=outbox), OutboxDestination)
