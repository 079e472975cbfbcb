"""The Claude client's errors, and how to read the API's retry signals."""

from __future__ import annotations

from typing import Mapping

from btc_anomaly_assets.common.http_policy import is_retryable_status


class ClaudeExplainerError(RuntimeError):
    """Base class; messages never contain the API key."""


class ClaudeConfigError(ClaudeExplainerError):
    """Bad configuration found at start-up: missing key, rejected key, unknown or retired model."""


class ClaudeApiError(ClaudeExplainerError):
    """The API answered with an error that retrying will not fix (or retries ran out)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.error_code = error_code
        self.request_id = request_id


class ClaudeRetriesExhausted(ClaudeApiError):
    """Retryable errors (429/529/5xx/connection) outlasted the retry budget or its maximum wait."""


class ClaudeSpendLimitReached(ClaudeApiError):
    """The organisation hit a spend limit (429 enforced_spend_limit_reached); never retried."""


class _BadAnswer(Exception):
    def __init__(self, reason: str, *, retry_with_more_room: bool):
        super().__init__(reason)
        self.reason = reason
        self.retry_with_more_room = retry_with_more_room


# ---------------------------------------------------------------------------------------------
# Retry helpers
# ---------------------------------------------------------------------------------------------


def _is_retryable_status(status: int, headers: Mapping[str, str]) -> bool:
    """The API's own ``x-should-retry`` wins; otherwise the project's common rule (``http_policy``)."""
    should_retry = headers.get("x-should-retry")
    if should_retry in ("true", "false"):
        return should_retry == "true"
    return is_retryable_status(status)
