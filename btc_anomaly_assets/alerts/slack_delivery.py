"""Deliver ``SlackMessage``s to a webhook, a bot-token channel or a local outbox file.

Every destination has one method, ``deliver(message) -> DeliveryResult``, that never raises for a
delivery problem: a message that could not be delivered comes back with ``status='failed'`` and a
clear ``error``, and the caller keeps it pending for a later tick.

Behaviour under faults (``WebhookDestination`` and ``BotChannelDestination``):
- HTTP 429: slack_sdk's ``RateLimitErrorRetryHandler`` (subclassed so the wait is injectable)
  sleeps ``Retry-After`` (+ a little jitter) and resends, up to ``RetryPolicy.max_rate_limit_retries``
  times. A ``Retry-After`` above ``max_retry_after_seconds`` is not waited for: the delivery fails
  at once ("left pending") rather than blocking a run for minutes.
- HTTP 5xx, timeouts and connection errors: retried by this module with exponential backoff
  (``backoff_base_seconds * 2**(n-1)``, capped), ``max_attempts`` attempts in all.
- Anything else (400 ``invalid_blocks``/``invalid_payload``, 404 ``channel_not_found``,
  ``not_in_channel``, ``invalid_auth``, ...) fails immediately: resending cannot help.
- At most one message per ``min_interval_seconds`` (1 s) per destination instance: Slack allows
  about one message a second per webhook/channel. Clock and sleep are injectable.

The slack_sdk clients' own connection-error retry handler is replaced by the policy above so
that every wait goes through the injected ``sleep``.

Secrets: the webhook URL and the bot token never appear in ``DeliveryResult``, errors, log
records or reprs. Destinations are labelled ``webhook:…/T0/B0/***``, ``channel:#alerts`` and
``outbox:/path``. The webhook client logs through a dedicated logger held at WARNING (slack_sdk
formats the full URL into its DEBUG/INFO lines) with a filter that redacts webhook secrets and
tokens from anything that is emitted.
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from http.client import HTTPException
from typing import Any, Callable, Mapping
from urllib.error import URLError

from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry import RateLimitErrorRetryHandler
from slack_sdk.web import WebClient
from slack_sdk.webhook import WebhookClient

from btc_anomaly_assets.alerts.block_kit import SlackMessage
from btc_anomaly_assets.alerts.destinations import (
    STATUS_FAILED,
    STATUS_SENT,
    AlertDestination,
    DeliveryResult,
    OutboxDestination,
    message_payload,
)
from btc_anomaly_assets.common.http_policy import retry_after_seconds
from btc_anomaly_assets.common.redaction import RedactingFilter, redact_secrets
from btc_anomaly_assets.common.utc import utc_now

logger = logging.getLogger(__name__)

# Explanations for the errors an operator can fix; the codes come from Slack's docs
# (api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks, chat.postMessage).
ERROR_HINTS = {
    "invalid_blocks": "Slack rejected the Block Kit blocks (malformed or over a limit)",
    "invalid_blocks_format": "the blocks are not a JSON array of block objects",
    "invalid_payload": "the request body is not valid JSON for a Slack message",
    "no_text": "the message has neither text nor blocks",
    "msg_blocks_too_long": "the blocks hold too much text in total",
    "msg_too_long": "the message text is too long",
    "channel_not_found": "the channel does not exist or the app cannot see it",
    "not_in_channel": "the bot is not a member of the channel; invite it with /invite",
    "is_archived": "the channel is archived",
    "channel_is_archived": "the channel is archived",
    "action_prohibited": "a workspace admin restricted posting to this channel",
    "invalid_auth": "the bot token is invalid",
    "not_authed": "no bot token was sent",
    "token_revoked": "the bot token was revoked",
    "account_inactive": "the bot token belongs to a deactivated user or app",
    "missing_scope": "the bot token lacks the chat:write scope",
    "no_service": "the incoming webhook was disabled or removed",
    "user_not_found": "the webhook's user no longer exists",
}
# chat.postMessage answers these with HTTP 200 but they are transient on Slack's side.
RETRYABLE_API_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})

_WEBHOOK_IDS = re.compile(r"/services/([^/\s]+)/([^/\s]+)/[^/\s]+")
_TRANSIENT_EXCEPTIONS = (TimeoutError, socket.timeout, URLError, ConnectionError, HTTPException)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retrying one delivery (defaults keep a failing delivery under ~1 minute)."""

    max_attempts: int = 3
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 8.0
    max_rate_limit_retries: int = 2
    max_retry_after_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_rate_limit_retries < 0:
            raise ValueError(f"RetryPolicy.max_rate_limit_retries must be >= 0, got {self.max_rate_limit_retries}")

    def backoff_seconds(self, failed_attempt: int) -> float:
        """Wait after the ``failed_attempt``-th (1-based) transient failure."""
        return min(self.backoff_base_seconds * 2 ** (failed_attempt - 1), self.backoff_max_seconds)


class RateLimiter:
    """At most one call per ``min_interval_seconds``: ``wait()`` sleeps until the next slot is free."""

    def __init__(
        self,
        min_interval_seconds: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.min_interval_seconds = min_interval_seconds
        self._clock = clock
        self._sleep = sleep
        self._last: float | None = None
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Block until a message may be sent; returns the seconds slept."""
        with self._lock:
            slept = 0.0
            if self._last is not None:
                remaining = self._last + self.min_interval_seconds - self._clock()
                if remaining > 0:
                    self._sleep(remaining)
                    slept = remaining
            self._last = self._clock()
            return slept


# --------------------------------------------------------------------------------------------
# HTTP destinations


@dataclass
class _Outcome:
    """One HTTP exchange as the retry loop sees it."""

    ok: bool
    retryable: bool = False
    error: str | None = None
    slack_ts: str | None = None


class _InjectableRateLimitHandler(RateLimitErrorRetryHandler):
    """slack_sdk's 429 handler with an injectable sleep, a cap on Retry-After and a wait log."""

    def __init__(self, *, max_retry_count: int, max_wait_seconds: float, sleep: Callable[[float], None], jitter: Callable[[], float]):
        super().__init__(max_retry_count=max_retry_count)
        self._max_wait_seconds = max_wait_seconds
        self._sleep = sleep
        self._jitter = jitter
        self.waits: list[float] = []

    def _can_retry(self, *, state, request, response=None, error=None) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        retry_after = retry_after_seconds(response.headers)
        return retry_after is None or retry_after <= self._max_wait_seconds

    def prepare_for_next_attempt(self, *, state, request, response=None, error=None) -> None:
        state.next_attempt_requested = True
        retry_after = retry_after_seconds(response.headers) if response is not None else None
        wait = (1.0 if retry_after is None else retry_after) + self._jitter()
        self.waits.append(wait)
        self._sleep(wait)
        state.increment_current_attempt()


class _HttpDestination:
    """The retry loop shared by the webhook and bot destinations."""

    name: str

    def __init__(
        self,
        *,
        retry: RetryPolicy,
        min_interval_seconds: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        now: Callable[[], datetime],
        jitter: Callable[[], float],
    ):
        self._retry = retry
        self._sleep = sleep
        self._now = now
        self._limiter = RateLimiter(min_interval_seconds, clock=clock, sleep=sleep)
        self._rate_limit_handler = _InjectableRateLimitHandler(
            max_retry_count=retry.max_rate_limit_retries,
            max_wait_seconds=retry.max_retry_after_seconds,
            sleep=sleep,
            jitter=jitter,
        )
        self._lock = threading.Lock()

    def deliver(self, message: SlackMessage | Mapping[str, Any]) -> DeliveryResult:
        """Send ``message``; returns ``sent`` or ``failed`` (never raises for a delivery problem)."""
        try:
            payload = message_payload(message)
        except ValueError as err:
            return self._result(STATUS_FAILED, 0, str(err))
        with self._lock:
            attempts = 0
            outcome = _Outcome(ok=False, error="not attempted")
            for attempt in range(1, self._retry.max_attempts + 1):
                self._limiter.wait()
                self._rate_limit_handler.waits.clear()
                outcome = self._attempt_safely(payload)
                attempts += 1 + len(self._rate_limit_handler.waits)
                if outcome.ok or not outcome.retryable:
                    break
                if attempt < self._retry.max_attempts:
                    self._sleep(self._retry.backoff_seconds(attempt))
            if outcome.ok:
                result = self._result(STATUS_SENT, attempts, None, sent_at=self._now(), slack_ts=outcome.slack_ts)
                logger.info("Slack alert delivered to %s after %d attempt(s)", self.name, attempts)
                return result
            if outcome.retryable:
                error = f"{outcome.error}; gave up after {attempts} attempt(s), left pending"
            else:
                error = outcome.error
            result = self._result(STATUS_FAILED, attempts, error)
            logger.warning("Slack alert to %s failed: %s", self.name, result.error)
            return result

    def _attempt_safely(self, payload: dict) -> _Outcome:
        try:
            return self._attempt(payload)
        except _TRANSIENT_EXCEPTIONS as err:
            return _Outcome(ok=False, retryable=True, error=f"network error: {self._describe(err)}")
        except SlackRequestError as err:
            return _Outcome(ok=False, error=f"invalid Slack request: {self._describe(err)}")
        except Exception as err:  # noqa: BLE001 - a delivery must come back as a result, never lose the alert
            return _Outcome(ok=False, error=f"unexpected error: {self._describe(err)}")

    def _attempt(self, payload: dict) -> _Outcome:  # pragma: no cover - abstract
        raise NotImplementedError

    def _rate_limited(self, headers: Mapping[str, Any] | None) -> _Outcome:
        retry_after = retry_after_seconds(headers or {})
        waited = len(self._rate_limit_handler.waits)
        detail = f"Retry-After {retry_after:g} s" if retry_after is not None else "no Retry-After"
        if retry_after is not None and retry_after > self._retry.max_retry_after_seconds:
            reason = f"{detail} exceeds the {self._retry.max_retry_after_seconds:g} s wait cap"
        else:
            reason = f"still rate limited after {waited} wait(s), {detail}"
        return _Outcome(ok=False, error=f"HTTP 429 rate limited by Slack ({reason}); left pending")

    def _describe(self, err: BaseException) -> str:
        return self._redact(f"{type(err).__name__}: {err}")

    def _redact(self, text: str) -> str:
        return redact_secrets(text)

    def _result(self, status: str, attempts: int, error: str | None, **extra) -> DeliveryResult:
        return DeliveryResult(
            status=status,
            destination=self.name,
            attempts=attempts,
            error=None if error is None else self._redact(error),
            **extra,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class WebhookDestination(_HttpDestination):
    """An incoming webhook (``https://hooks.slack.com/services/T…/B…/…``): success is HTTP 200 + ``ok``."""

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        min_interval_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: utc_now(),
        jitter: Callable[[], float] = lambda: random.uniform(0.0, 0.5),
    ):
        if not url or not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must start with https:// (got {redact_webhook_url(url or '')!r})")
        super().__init__(
            retry=retry, min_interval_seconds=min_interval_seconds, clock=clock, sleep=sleep, now=now, jitter=jitter
        )
        self.name = f"webhook:{redact_webhook_url(url)}"
        self.__url = url
        self._client = WebhookClient(
            url,
            timeout=timeout_seconds,
            logger=_SDK_LOGGER,
            retry_handlers=[self._rate_limit_handler],
        )

    def _redact(self, text: str) -> str:
        return redact_secrets(text.replace(self.__url, self.name))

    def _attempt(self, payload: dict) -> _Outcome:
        # An incoming webhook cannot reply in a thread: a follow-up is sent as its own message that names the incident.
        response = self._client.send(text=payload["text"], blocks=payload.get("blocks") or None)
        body = (response.body or "").strip()
        if response.status_code == 200 and body == "ok":
            return _Outcome(ok=True)
        if response.status_code == 429:
            return self._rate_limited(response.headers)
        described = _describe_error_code(body[:200] or "(empty body)")
        if response.status_code >= 500:
            return _Outcome(ok=False, retryable=True, error=f"HTTP {response.status_code} from Slack: {described}")
        return _Outcome(ok=False, error=f"Slack webhook rejected the message: HTTP {response.status_code} {described}")


class BotChannelDestination(_HttpDestination):
    """``chat.postMessage`` to ``channel`` with a bot-token ``WebClient`` (e.g. ``SlackResource.get_client()``).

    The destination installs its own retry handlers on ``client`` (a 429 handler; 5xx and
    timeouts are retried here) and, if ``timeout_seconds`` is given, sets ``client.timeout``.
    """

    def __init__(
        self,
        client: WebClient,
        channel: str,
        *,
        timeout_seconds: float | None = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        min_interval_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: utc_now(),
        jitter: Callable[[], float] = lambda: random.uniform(0.0, 0.5),
    ):
        if not channel or not channel.strip():
            raise ValueError("a Slack channel (e.g. '#alerts' or a channel id) is required")
        super().__init__(
            retry=retry, min_interval_seconds=min_interval_seconds, clock=clock, sleep=sleep, now=now, jitter=jitter
        )
        self.name = f"channel:{channel}"
        self._channel = channel
        self._client = client
        client.retry_handlers = [self._rate_limit_handler]
        if timeout_seconds is not None:
            client.timeout = timeout_seconds

    def _redact(self, text: str) -> str:
        token = getattr(self._client, "token", None)
        if token:
            text = text.replace(token, "***")
        return redact_secrets(text)

    def _attempt(self, payload: dict) -> _Outcome:
        try:
            response = self._client.chat_postMessage(
                channel=self._channel, text=payload["text"], blocks=payload.get("blocks") or None,
                thread_ts=payload.get("thread_ts"),
            )
        except SlackApiError as err:
            return self._api_error(err)
        return _Outcome(ok=True, slack_ts=response.get("ts"))

    def _api_error(self, err: SlackApiError) -> _Outcome:
        status = getattr(err.response, "status_code", None) or 0
        data = getattr(err.response, "data", None)
        code = str(data.get("error", "unknown_error")) if isinstance(data, Mapping) else "unknown_error"
        if status == 429:
            return self._rate_limited(getattr(err.response, "headers", None))
        described = _describe_error_code(code[:200])
        if status >= 500 or code in RETRYABLE_API_ERRORS:
            return _Outcome(ok=False, retryable=True, error=f"HTTP {status} from Slack: {described}")
        return _Outcome(
            ok=False, error=f"Slack chat.postMessage to {self._channel} failed (HTTP {status}): {described}"
        )


# --------------------------------------------------------------------------------------------
# Selection and helpers


def select_destination(
    *,
    webhook_url: str | None = None,
    web_client: WebClient | None = None,
    channel: str | None = None,
    outbox_path: str | os.PathLike,
    **options: Any,
) -> AlertDestination:
    """The configured destination: a webhook if ``webhook_url``, else the bot if ``web_client`` and
    ``channel``, else the outbox (logged, so the fallback is visible). ``options`` go to the
    webhook/bot constructor (timeout_seconds, retry, min_interval_seconds, clock, sleep, ...).
    """
    if webhook_url:
        return WebhookDestination(webhook_url, **options)
    if web_client is not None and channel:
        return BotChannelDestination(web_client, channel, **options)
    if web_client is not None or channel:
        missing = "channel" if web_client is not None else "bot token client"
        logger.warning("Slack bot destination incomplete (no %s); alerts go to the outbox %s", missing, outbox_path)
    else:
        logger.info("No Slack destination configured; alerts go to the outbox %s", outbox_path)
    return OutboxDestination(outbox_path)


def redact_webhook_url(url: str) -> str:
    """``…/T0/B0/***`` for a Slack webhook URL (team and hook ids kept, secret dropped); else ``***``."""
    match = _WEBHOOK_IDS.search(url)
    return f"…/{match.group(1)}/{match.group(2)}/***" if match else "***"


def _describe_error_code(code: str) -> str:
    hint = ERROR_HINTS.get(code)
    return f"{code} ({hint})" if hint else code


def _sdk_logger() -> logging.Logger:
    # slack_sdk's WebhookClient formats the full URL into DEBUG lines whenever its logger's *own*
    # level is <= DEBUG (NOTSET counts), and into an INFO line on connection retries.
    sdk_logger = logging.getLogger(f"{__name__}.slack_sdk")
    sdk_logger.setLevel(logging.WARNING)
    if not any(isinstance(f, RedactingFilter) for f in sdk_logger.filters):
        sdk_logger.addFilter(RedactingFilter())
    return sdk_logger


_SDK_LOGGER = _sdk_logger()
logger.addFilter(RedactingFilter())
