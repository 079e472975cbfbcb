"""The one HTTP policy and the one redaction every client uses."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from btc_anomaly_assets.common.http_policy import backoff_seconds, is_retryable_status, retry_after_seconds
from btc_anomaly_assets.common.redaction import REDACTED, RedactingFilter, Redactor, install_redaction, redact_secrets

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=timezone.utc).timestamp()


def clock() -> float:
    return NOW


@pytest.mark.parametrize("headers, expected", [
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after": "2.5"}, 2.5),
    ({"RETRY-AFTER": ["3", "9"]}, 3.0),  # repeated header kept as a list: the first counts
    ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # Anthropic's millisecond header wins
    ({"Retry-After": "-4"}, 0.0),
    ({"Retry-After": "soon"}, None),
    ({"Content-Type": "text/plain"}, None),
    ({}, None),
    (None, None),
])
def test_retry_after_numbers_and_absence(headers, expected):
    assert retry_after_seconds(headers, now=clock) == expected


def test_retry_after_as_http_date_in_the_future_and_the_past():
    in_90_s = format_datetime(datetime.fromtimestamp(NOW + 90, timezone.utc), usegmt=True)
    assert retry_after_seconds({"Retry-After": in_90_s}, now=clock) == pytest.approx(90.0)
    assert retry_after_seconds(in_90_s, now=clock) == pytest.approx(90.0)  # a bare value works too
    long_ago = format_datetime(datetime(2020, 1, 1, tzinfo=timezone.utc), usegmt=True)
    assert retry_after_seconds({"retry-after": long_ago}, now=clock) == 0.0


def test_backoff_doubles_caps_and_jitters_downwards_only():
    assert [backoff_seconds(n, initial=1, maximum=10) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    assert backoff_seconds(2, initial=1, maximum=10, jitter=0.25, rng=lambda: 1.0) == 3.0
    assert backoff_seconds(2, initial=1, maximum=10, jitter=0.25, rng=lambda: 0.0) == 4.0
    with pytest.raises(ValueError):
        backoff_seconds(-1, initial=1, maximum=2)


@pytest.mark.parametrize("status, retry", [(408, True), (409, True), (425, True), (429, True), (500, True), (503, True),
                                           (529, True), (400, False), (401, False), (404, False), (430, False)])
def test_retryable_statuses(status, retry):
    assert is_retryable_status(status) is retry


def test_patterns_cover_every_secret_we_hold():
    text = ("POST https://hooks.slack.com/services/T0/B0/abcDEF123 with xoxb-1-2-abc and sk-ant-api03-XYZ_1; "
            "GET https://api.blockchair.com/x?q=1&key=S3CRET&limit=100; rpc http://alice:hunter22@127.0.0.1:8332/ "
            "pg postgresql://dagster:pw0rd@db:5432/dagster")
    redacted = redact_secrets(text)
    for secret in ("abcDEF123", "xoxb-1-2-abc", "sk-ant-api03-XYZ_1", "S3CRET", "hunter22", "pw0rd"):
        assert secret not in redacted
    assert "/services/T0/B0/***" in redacted and "alice:" in redacted and "&limit=100" in redacted


def test_a_redactor_blanks_its_own_secrets_raw_and_url_encoded():
    redact = Redactor("my key/with+chars", None, "ab")  # too-short "secrets" are ignored
    assert redact("x my key/with+chars y my%20key%2Fwith%2Bchars z ab") == f"x {REDACTED} y {REDACTED} z ab"
    assert "my key" not in repr(redact)


def test_the_log_filter_folds_args_in_before_redacting(caplog):
    install_redaction(["btc_anomaly_tests.redaction"], Redactor("tok-123456"))
    install_redaction(["btc_anomaly_tests.redaction"], Redactor("tok-123456"))  # idempotent
    logger = logging.getLogger("btc_anomaly_tests.redaction")
    assert sum(isinstance(f, RedactingFilter) for f in logger.filters) == 1
    with caplog.at_level(logging.INFO, logger="btc_anomaly_tests.redaction"):
        logger.info("calling %s?key=%s", "https://api.example", "tok-123456")
    assert "tok-123456" not in caplog.text and REDACTED in caplog.text
