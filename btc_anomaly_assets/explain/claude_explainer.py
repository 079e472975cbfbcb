"""Forensic explanations from Claude through the official ``anthropic`` SDK (2.x).

What this module adds around ``client.messages.create``:

- **Start-up model check.** ``models.retrieve(model)`` resolves the id (an alias such as
  ``claude-haiku-4-5`` becomes its dated snapshot) and fails fast, listing what the key can use,
  when the model is unknown or retired. The model's advertised capabilities choose between
  JSON-schema output (``output_config.format``) and a strict forced tool, and whether batches are used.
- **Structured answers only.** The answer must validate against ``explain_prompt.EXPLANATION_SCHEMA``.
  A truncated (``stop_reason == "max_tokens"``) or malformed answer is retried once with more room,
  then stored as ``status='failed'`` with the reason, never as free text.
- **Retries we control.** The SDK's own retries are off (``max_retries=0``) because it would retry
  a 429 ``enforced_spend_limit_reached`` and sleep whatever ``retry-after`` says. Here 408/409/429/5xx
  (529 included) and connection errors are retried with ``retry-after``/``retry-after-ms`` honoured
  up to ``max_retry_wait_seconds``; spend-limit errors are not retried; an exhausted budget raises
  ``ClaudeRetriesExhausted``. Rows already yielded are complete, so the caller keeps them.
- **Cost control.** Explanations are keyed by ``content_hash`` (evidence + model + prompt version);
  the caller passes what it already stored and those are never sent. A run stops calling at
  ``max_calls_per_run`` or when the daily token budget would be exceeded (skipped items are counted,
  not failed, and are picked up next run). Token usage and an *estimated* cost (built-in list prices,
  see ``MODEL_PRICES``) are returned for metadata.
- **Backfills through Message Batches** (half price): at ``batch_threshold`` items or more, one batch
  is created and polled for at most ``batch_max_wait_seconds``; if unfinished, the run returns a
  ``PendingBatch`` the caller persists and passes to the next run, which collects it.

The API key is held privately and redacted from every message this module produces; no repr,
log line, metadata or exception text carries it.

API-version note: SDK 2.x sends ``anthropic-version: 2026-10-21`` and has no sampling parameters;
that API version rejects ``temperature``/``top_p``/``top_k`` with HTTP 400, so determinism comes
from the fixed system prompt and the JSON schema, not from a low temperature.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Container, Iterable, Iterator, Mapping

from btc_anomaly_assets.explain.evidence import explanation_content_hash
from btc_anomaly_assets.explain.prompt import (
    ANOMALY_EXPLANATION_COLUMNS,
    EXPLANATION_SCHEMA,
    PROMPT_VERSION,
    SOURCE_CLAUDE,
    STATUS_FAILED,
    SYSTEM_PROMPT,
    ExplanationFormatError,
    RunStats,
    cache_lookup,
    explanation_row,
    parse_answer_text,
    render_user_message,
    validate_answer,
)
from btc_anomaly_assets.explain.rules import RuleExplainer

log = logging.getLogger(__name__)

__all__ = [
    "ANOMALY_EXPLANATION_COLUMNS",
    "DEFAULT_MODEL",
    "MODEL_PRICES",
    "ClaudeApiError",
    "ClaudeConfigError",
    "ClaudeExplainer",
    "ClaudeExplainerError",
    "ClaudeRetriesExhausted",
    "ClaudeRun",
    "ClaudeSpendLimitReached",
    "ModelPrice",
    "PendingBatch",
    "TokenUsage",
    "estimate_cost_usd",
    "make_explainer",
]

# Listed in the installed SDK's ModelParam; cheap and fast for high-volume explanations, and
# supports structured outputs. Override with BTC_CLAUDE_MODEL.
DEFAULT_MODEL = "claude-haiku-4-5"
DEFAULT_MAX_TOKENS = 1024
TOOL_NAME = "record_forensic_explanation"
# Conservative characters-per-token used to estimate a request before sending it (English text
# runs at about 4; assuming 3 over-estimates, so the daily budget is not overshot).
CHARS_PER_TOKEN_ESTIMATE = 3.0
# Messages whose stop_reason says no further room would help.
_NON_RETRYABLE_STOPS = {"refusal", "model_context_window_exceeded"}
# Spend caps: waiting does not lift them, so retrying only burns time.
NON_RETRYABLE_ERROR_CODES = {
    "enforced_spend_limit_reached",
    "contract_spend_limit_reached",
    "linked_organization_spend_limit_reached",
}
_BATCH_ERRORS_STORED_AS_FAILED = {"invalid_request_error"}
_DATED_SUFFIX = re.compile(r"-\d{8}$")


# ---------------------------------------------------------------------------------------------
# Prices and usage
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPrice:
    """List price in USD per million tokens (base input, output)."""

    input_usd_per_mtok: float
    output_usd_per_mtok: float


# An ESTIMATE from Anthropic's published list prices (standard tier, USD per million tokens).
# Prices change and discounts are not known here; the figures feed metadata, not billing.
MODEL_PRICES: dict[str, ModelPrice] = {
    "claude-haiku-4-5": ModelPrice(1.0, 5.0),
    "claude-sonnet-4-5": ModelPrice(3.0, 15.0),
    "claude-sonnet-4-6": ModelPrice(3.0, 15.0),
    "claude-opus-4-5": ModelPrice(5.0, 25.0),
    "claude-opus-4-6": ModelPrice(5.0, 25.0),
    "claude-sonnet-5": ModelPrice(2.0, 10.0),
}
BATCH_DISCOUNT = 0.5  # Message Batches bill at half price
CACHE_WRITE_MULTIPLIER = 1.25  # 5-minute prompt-cache writes
CACHE_READ_MULTIPLIER = 0.1


def price_for(model_id: str, prices: Mapping[str, ModelPrice] | None = None) -> ModelPrice | None:
    """The price of a model id, dated snapshots (``-20251001``) matching their alias."""
    table = prices if prices is not None else MODEL_PRICES
    return table.get(model_id) or table.get(_DATED_SUFFIX.sub("", model_id))


@dataclass
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @classmethod
    def from_sdk(cls, usage: Any) -> "TokenUsage":
        return cls(
            input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
            cache_creation_input_tokens=int(getattr(usage, "cache_creation_input_tokens", 0) or 0),
            cache_read_input_tokens=int(getattr(usage, "cache_read_input_tokens", 0) or 0),
        )

    @property
    def total_input(self) -> int:
        """All input tokens billed: uncached + cache writes + cache reads."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    @property
    def total(self) -> int:
        return self.total_input + self.output_tokens

    def __add__(self, other: "TokenUsage") -> "TokenUsage":
        return TokenUsage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
        )


def estimate_cost_usd(
    model_id: str,
    usage: TokenUsage,
    *,
    batch: bool = False,
    prices: Mapping[str, ModelPrice] | None = None,
) -> float | None:
    """Estimated USD cost of ``usage`` on ``model_id``; None when the model has no listed price."""
    price = price_for(model_id, prices)
    if price is None:
        return None
    input_units = (
        usage.input_tokens
        + usage.cache_creation_input_tokens * CACHE_WRITE_MULTIPLIER
        + usage.cache_read_input_tokens * CACHE_READ_MULTIPLIER
    )
    cost = (input_units * price.input_usd_per_mtok + usage.output_tokens * price.output_usd_per_mtok) / 1_000_000
    return round(cost * (BATCH_DISCOUNT if batch else 1.0), 8)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


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


def retry_after_seconds(headers: Mapping[str, str] | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, then ``retry-after`` (seconds or HTTP date)."""
    if not headers:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        return max(0.0, email.utils.mktime_tz(parsed) - now())


def _is_retryable_status(status: int, headers: Mapping[str, str]) -> bool:
    should_retry = headers.get("x-should-retry")
    if should_retry in ("true", "false"):
        return should_retry == "true"
    return status in (408, 409, 429) or status >= 500


# ---------------------------------------------------------------------------------------------
# Pending batches
# ---------------------------------------------------------------------------------------------


@dataclass
class PendingBatch:
    """A Message Batch created but not yet collected; persist ``to_json()`` and resume next run.

    ``evidences`` maps each request's ``custom_id`` (the explanation content hash) to the exact
    evidence sent, so collecting needs nothing else from the caller.
    """

    batch_id: str
    model_id: str
    prompt_version: str
    created_at: str
    evidences: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def content_hashes(self) -> set[str]:
        return set(self.evidences)

    def to_json(self) -> str:
        return json.dumps(
            {
                "batch_id": self.batch_id,
                "model_id": self.model_id,
                "prompt_version": self.prompt_version,
                "created_at": self.created_at,
                "evidences": self.evidences,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> "PendingBatch":
        data = json.loads(text)
        missing = {"batch_id", "model_id", "prompt_version", "created_at", "evidences"} - set(data)
        if missing:
            raise ValueError(f"pending batch JSON is missing {sorted(missing)}")
        return cls(**data)


# ---------------------------------------------------------------------------------------------
# The explainer
# ---------------------------------------------------------------------------------------------


def _redactor(secret: str) -> Callable[[str], str]:
    """A function that blanks ``secret`` out of text, holding the secret only in its closure."""

    def redact(text: str) -> str:
        return text.replace(secret, "[redacted]")

    return redact


def _supports(capabilities: Any, name: str) -> bool:
    """Whether the model supports a capability; unknown (older API, absent key) counts as supported."""
    support = getattr(capabilities, name, None) if capabilities is not None else None
    return getattr(support, "supported", True) is not False


def _sdk():
    """Import the SDK lazily: it is heavy and only needed when a key is configured."""
    import anthropic

    return anthropic


class ClaudeExplainer:
    """Explain anomalies with Claude. Construct once per run (e.g. in a Dagster resource).

    Args:
        api_key: Anthropic API key (required; use ``make_explainer`` to fall back to rules without one).
        model: model id or alias; checked at start-up (``validate_model``) unless ``validate=False``.
        base_url: API base URL (tests point it at a loopback fake); None = the SDK default.
        max_tokens: output room for the first attempt; ``retry_max_tokens`` (default 2x) for the one retry.
        timeout: per-request timeout in seconds.
        max_retries: retries of a retryable error per request (so max_retries + 1 attempts).
        max_retry_wait_seconds: longest single wait honoured; a longer ``retry-after`` gives up at once.
        initial_backoff_seconds, max_backoff_seconds: exponential backoff when no ``retry-after`` is sent.
        max_calls_per_run: billed requests allowed per run (batch requests count one each).
        daily_token_budget: input + output tokens allowed per UTC day; the caller passes the day's
            usage so far to ``start_run``. None disables the check.
        batch_threshold: use the Message Batches API when a run has at least this many items to
            explain (None disables batches).
        batch_poll_interval_seconds, batch_max_wait_seconds: how a run waits for its batch.
        effort: optional ``output_config.effort`` (low/medium/high) for models that support it.
        prices: override of ``MODEL_PRICES``.
        sleep, clock: injectable for tests (``time.sleep`` / ``time.monotonic``).
    """

    source = SOURCE_CLAUDE
    prompt_version = PROMPT_VERSION

    def __init__(
        self,
        api_key: str,
        model: str = DEFAULT_MODEL,
        *,
        base_url: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        retry_max_tokens: int | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        max_retry_wait_seconds: float = 60.0,
        initial_backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 30.0,
        max_calls_per_run: int = 200,
        daily_token_budget: int | None = 2_000_000,
        batch_threshold: int | None = 50,
        batch_poll_interval_seconds: float = 30.0,
        batch_max_wait_seconds: float = 120.0,
        effort: str | None = None,
        prices: Mapping[str, ModelPrice] | None = None,
        validate: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not isinstance(api_key, str) or not api_key.strip():
            raise ClaudeConfigError(
                "ClaudeExplainer needs a non-empty Anthropic API key (ANTHROPIC_API_KEY); "
                "without one use make_explainer(None), which falls back to the rule-based explainer"
            )
        if max_tokens < 16:
            raise ClaudeConfigError(f"max_tokens={max_tokens} is too small for a structured explanation (need >= 16)")
        if max_retries < 0 or max_calls_per_run < 0:
            raise ClaudeConfigError("max_retries and max_calls_per_run must be >= 0")
        if effort is not None and effort not in ("low", "medium", "high", "xhigh", "max"):
            raise ClaudeConfigError(f"effort={effort!r} is not one of low/medium/high/xhigh/max")
        self._redact = _redactor(api_key)  # the key lives only in this closure and in the SDK client
        self.requested_model = model
        self.model_id = model
        self.base_url = base_url
        self.max_tokens = int(max_tokens)
        self.retry_max_tokens = int(retry_max_tokens or 2 * max_tokens)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_retry_wait_seconds = float(max_retry_wait_seconds)
        self.initial_backoff_seconds = float(initial_backoff_seconds)
        self.max_backoff_seconds = float(max_backoff_seconds)
        self.max_calls_per_run = int(max_calls_per_run)
        self.daily_token_budget = daily_token_budget
        self.batch_threshold = batch_threshold
        self.batch_poll_interval_seconds = float(batch_poll_interval_seconds)
        self.batch_max_wait_seconds = float(batch_max_wait_seconds)
        self.effort = effort
        self.prices = prices
        self.structured_mode = "json_schema"  # or "strict_tool" when the model lacks structured outputs
        self.batches_supported = True
        self.model_lifecycle: str | None = None
        self.notes: list[str] = []
        self._sleep = sleep
        self._clock = clock
        self.http_retries = 0
        anthropic = _sdk()
        # max_retries=0: retries are ours (see the module docstring).
        self._client = anthropic.Anthropic(api_key=api_key, base_url=base_url, timeout=self.timeout, max_retries=0)
        if validate:
            try:
                self.validate_model()
            except BaseException:
                self._client.close()
                raise
        elif price_for(self.model_id, prices) is None:
            self._note(f"no price listed for {self.model_id}; estimated_cost_usd will be NULL")

    # -- hygiene -------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"ClaudeExplainer(model_id={self.model_id!r}, base_url={self.base_url!r}, max_tokens={self.max_tokens}, "
            f"max_calls_per_run={self.max_calls_per_run}, daily_token_budget={self.daily_token_budget})"
        )

    def __getstate__(self):
        raise TypeError("ClaudeExplainer holds a live client and a secret; it cannot be pickled")

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            log.warning("%s", self._redact(text))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "ClaudeExplainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- start-up ------------------------------------------------------------------------------

    def validate_model(self) -> str:
        """Resolve and check the configured model; returns the resolved id.

        Raises ClaudeConfigError for an unknown or retired model or a rejected key.
        """
        try:
            info = self._call(lambda: self._client.models.retrieve(self.requested_model), "GET /v1/models/{model}")
        except ClaudeApiError as exc:
            if exc.status == 404:
                raise ClaudeConfigError(
                    f"Claude model {self.requested_model!r} is not available to this API key "
                    f"(GET /v1/models/{self.requested_model} returned 404). Available: {self._available_models()}. "
                    "Set BTC_CLAUDE_MODEL to one of them."
                ) from None
            if exc.status in (401, 403):
                raise ClaudeConfigError(
                    f"the Anthropic API rejected the API key while checking model {self.requested_model!r} "
                    f"({exc.status} {exc.error_type}); check ANTHROPIC_API_KEY"
                ) from None
            raise
        self.model_id = info.id
        self.model_lifecycle = getattr(info, "lifecycle", None)
        if self.model_lifecycle == "retired":
            raise ClaudeConfigError(f"Claude model {info.id!r} is retired; set BTC_CLAUDE_MODEL to an active model")
        if self.model_lifecycle == "deprecated":
            self._note(f"Claude model {info.id} is deprecated (retires at {getattr(info, 'retires_at', None)}); plan a switch")
        caps = getattr(info, "capabilities", None)
        if not _supports(caps, "structured_outputs"):
            self.structured_mode = "strict_tool"
            self._note(f"{info.id} lacks JSON-schema output; using a strict forced tool instead")
        if not _supports(caps, "batch"):
            self.batches_supported = False
            self._note(f"{info.id} does not support Message Batches; backfills run one request at a time")
        model_max = getattr(info, "max_tokens", None)
        if model_max and self.retry_max_tokens > model_max:
            self.retry_max_tokens = int(model_max)
            self.max_tokens = min(self.max_tokens, self.retry_max_tokens)
        if price_for(self.model_id, self.prices) is None:
            self._note(f"no price listed for {self.model_id}; estimated_cost_usd will be NULL")
        return self.model_id

    def _available_models(self) -> str:
        try:
            page = self._call(lambda: self._client.models.list(limit=100), "GET /v1/models")
            ids = [m.id for m in page.data]
        except ClaudeExplainerError as exc:
            return f"(could not list models: {exc})"
        return ", ".join(ids) if ids else "(none)"

    # -- requests ------------------------------------------------------------------------------

    def content_hash(self, evidence: Mapping[str, Any]) -> str:
        return explanation_content_hash(evidence, self.model_id, self.prompt_version)

    def request_params(self, evidence: Mapping[str, Any], max_tokens: int) -> dict[str, Any]:
        """The Messages API body for one evidence (also used inside batch requests)."""
        params: dict[str, Any] = {
            "model": self.model_id,
            "max_tokens": int(max_tokens),
            "system": SYSTEM_PROMPT,
            "messages": [{"role": "user", "content": render_user_message(evidence)}],
        }
        output_config: dict[str, Any] = {}
        if self.structured_mode == "json_schema":
            output_config["format"] = {"type": "json_schema", "schema": EXPLANATION_SCHEMA}
        else:
            params["tools"] = [
                {
                    "name": TOOL_NAME,
                    "description": "Record the structured forensic explanation of the anomaly.",
                    "input_schema": EXPLANATION_SCHEMA,
                    "strict": True,
                }
            ]
            params["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
        if self.effort:
            output_config["effort"] = self.effort
        if output_config:
            params["output_config"] = output_config
        return params

    def estimate_tokens(self, evidence: Mapping[str, Any], max_tokens: int) -> int:
        """Upper-bound guess of a request's tokens (input by characters + the full output room)."""
        chars = len(SYSTEM_PROMPT) + len(json.dumps(EXPLANATION_SCHEMA)) + len(render_user_message(evidence))
        return int(math.ceil(chars / CHARS_PER_TOKEN_ESTIMATE)) + int(max_tokens)

    def _backoff(self, attempt: int) -> float:
        return min(self.initial_backoff_seconds * (2**attempt), self.max_backoff_seconds)

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        """Run one API call with our retry policy; raises ClaudeApiError subclasses with clean messages."""
        anthropic = _sdk()
        last, last_exc = "no attempt made", None
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except anthropic.APIStatusError as exc:
                headers = exc.response.headers
                detail = self._describe(exc)
                if self._error_fields(exc)["error_code"] in NON_RETRYABLE_ERROR_CODES:
                    message = f"{what}: {detail}. Spend limits are not retried; raise the limit or wait for the next period"
                    raise self._api_error(ClaudeSpendLimitReached, message, exc) from None
                if not _is_retryable_status(exc.status_code, headers):
                    raise self._api_error(ClaudeApiError, f"{what}: {detail}", exc) from None
                wait = retry_after_seconds(headers)
                wait = self._backoff(attempt) if wait is None else wait
                last, last_exc = detail, exc
            except anthropic.APIConnectionError as exc:
                wait = self._backoff(attempt)
                last = "request timed out" if isinstance(exc, anthropic.APITimeoutError) else "connection error"
                last_exc = None
            if attempt == self.max_retries:
                break
            if wait > self.max_retry_wait_seconds:
                raise self._exhausted(
                    f"{what}: {last}; the server asked to wait {wait:.0f} s, more than "
                    f"max_retry_wait_seconds={self.max_retry_wait_seconds:.0f}. Rows already produced are kept; re-run later",
                    last_exc,
                )
            log.warning("%s: %s; retry %d of %d in %.2f s", what, last, attempt + 1, self.max_retries, wait)
            self.http_retries += 1
            self._sleep(wait)
        raise self._exhausted(
            f"{what}: still failing after {self.max_retries + 1} attempts (last: {last}). "
            "Rows already produced are kept; re-run to continue",
            last_exc,
        )

    def _exhausted(self, message: str, exc: Any) -> ClaudeRetriesExhausted:
        if exc is None:
            return ClaudeRetriesExhausted(message)
        return self._api_error(ClaudeRetriesExhausted, message, exc)

    def _describe(self, exc: Any) -> str:
        fields = self._error_fields(exc)
        parts = [f"HTTP {fields['status']}"]
        if fields["error_type"]:
            parts.append(str(fields["error_type"]))
        if fields["error_code"]:
            parts.append(f"error_code={fields['error_code']}")
        if fields["message"]:
            parts.append(repr(str(fields["message"])[:300]))
        if fields["request_id"]:
            parts.append(f"request-id {fields['request_id']}")
        return self._redact(" ".join(parts))

    @staticmethod
    def _error_fields(exc: Any) -> dict[str, Any]:
        """Status, type, code, message and request id of an APIStatusError.

        SDK 2.x exposes them as attributes; older releases (the project allows >= 0.77) only
        carry the parsed body, so fall back to ``{"error": {"type", "message", "details"}}``.
        """
        body = exc.body if isinstance(getattr(exc, "body", None), dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        details = error.get("details") if isinstance(error.get("details"), dict) else {}
        return {
            "status": exc.status_code,
            "error_type": getattr(exc, "type", None) or error.get("type"),
            "error_code": getattr(exc, "error_code", None) or details.get("error_code"),
            "message": getattr(exc, "api_message", None) or error.get("message"),
            "request_id": getattr(exc, "request_id", None) or body.get("request_id"),
        }

    def _api_error(self, cls: type[ClaudeApiError], message: str, exc: Any) -> ClaudeApiError:
        fields = self._error_fields(exc)
        return cls(
            message,
            status=fields["status"],
            error_type=fields["error_type"],
            error_code=fields["error_code"],
            request_id=fields["request_id"],
        )

    def _create_message(self, evidence: Mapping[str, Any], max_tokens: int) -> Any:
        params = self.request_params(evidence, max_tokens)
        return self._call(lambda: self._client.messages.create(**params), f"explaining {evidence['anomaly_id']}")

    def answer_from_message(self, message: Any, max_tokens: int) -> dict[str, Any]:
        """The validated answer in a Message, or ``_BadAnswer`` saying why there is none."""
        stop = getattr(message, "stop_reason", None)
        if stop == "max_tokens":
            raise _BadAnswer(f"answer truncated at max_tokens={max_tokens}", retry_with_more_room=True)
        if stop in _NON_RETRYABLE_STOPS:
            raise _BadAnswer(f"no answer: stop_reason={stop}", retry_with_more_room=False)
        try:
            if self.structured_mode == "strict_tool":
                blocks = [b for b in message.content if getattr(b, "type", None) == "tool_use" and b.name == TOOL_NAME]
                if not blocks:
                    raise ExplanationFormatError(f"no {TOOL_NAME} tool call in the answer")
                return validate_answer(blocks[0].input)
            text = "".join(b.text for b in message.content if getattr(b, "type", None) == "text")
            if not text.strip():
                raise ExplanationFormatError("the answer has no text block")
            return parse_answer_text(text)
        except ExplanationFormatError as exc:
            raise _BadAnswer(f"malformed answer: {exc}", retry_with_more_room=True) from None

    # -- runs ----------------------------------------------------------------------------------

    def start_run(
        self,
        *,
        already_explained: Callable[[str], bool] | Container[str] | None = None,
        tokens_used_today: int = 0,
        pending_batches: Iterable[PendingBatch] = (),
    ) -> "ClaudeRun":
        """A run: iterate ``run.explain(evidences)`` and persist each row as it arrives."""
        return ClaudeRun(
            self,
            already_explained=already_explained,
            tokens_used_today=tokens_used_today,
            pending_batches=list(pending_batches),
        )

    def explain_one(self, evidence: Mapping[str, Any]) -> dict[str, Any]:
        """Explain one evidence now, outside any run budget (ad-hoc use, e.g. from a notebook).

        Returns the row (``status`` ok or failed); raises ClaudeApiError subclasses on API errors.
        """
        run = self.start_run()
        run.max_calls = None
        run.daily_token_budget = None
        row = run.explain_sync(evidence, self.content_hash(evidence))
        assert row is not None  # only a budget refusal yields None, and there is no budget here
        return row


class ClaudeRun:
    """One explanation run: cache, call cap, daily token budget, batches. Not thread-safe.

    Iterate ``explain(evidences)``; afterwards ``stats`` holds the counters for metadata and
    ``pending_batches`` the batches to persist for the next run (kept accurate while iterating,
    so a caller may persist it in a ``finally`` block even when the run raises).
    """

    def __init__(
        self,
        explainer: ClaudeExplainer,
        *,
        already_explained: Callable[[str], bool] | Container[str] | None,
        tokens_used_today: int,
        pending_batches: list[PendingBatch],
    ):
        if tokens_used_today < 0:
            raise ValueError(f"tokens_used_today must be >= 0, got {tokens_used_today}")
        self.explainer = explainer
        self.is_cached = cache_lookup(already_explained)
        self.tokens_used_today = int(tokens_used_today)
        self.pending_batches: list[PendingBatch] = list(pending_batches)
        self.max_calls: int | None = explainer.max_calls_per_run
        self.daily_token_budget: int | None = explainer.daily_token_budget
        self.stats = RunStats(source=explainer.source, model_id=explainer.model_id, prompt_version=explainer.prompt_version)
        for note in explainer.notes:
            self.stats.note(note)
        self._done: set[str] = set()
        self._retries_at_start = explainer.http_retries
        self._budget_logged: set[str] = set()

    # -- budgets -------------------------------------------------------------------------------

    def _tokens_spent(self) -> int:
        return self.tokens_used_today + self.stats.input_tokens + self.stats.output_tokens

    def _refusal_reason(self, extra_calls: int, extra_tokens: int) -> str | None:
        """'call_cap' / 'token_budget' when one more request must not be sent, else None."""
        if self.max_calls is not None and self.stats.api_calls + extra_calls > self.max_calls:
            return "call_cap"
        budget = self.daily_token_budget
        if budget is not None and self._tokens_spent() + extra_tokens > budget:
            return "token_budget"
        return None

    def _skip(self, reason: str) -> None:
        if reason == "call_cap":
            self.stats.skipped_call_cap += 1
            message = f"call cap reached ({self.max_calls} requests per run); remaining anomalies wait for the next run"
        else:
            self.stats.skipped_token_budget += 1
            message = (
                f"daily token budget reached ({self._tokens_spent():,} of {self.daily_token_budget:,} tokens); "
                "remaining anomalies wait for the next run"
            )
        if reason not in self._budget_logged:
            self._budget_logged.add(reason)
            log.warning("%s", message)
            self.stats.note(message)

    def _charge(self, usage: TokenUsage, cost: float | None, calls: int) -> None:
        self.stats.api_calls += calls
        self.stats.add_usage(usage.total_input, usage.output_tokens, cost)

    # -- main loop -----------------------------------------------------------------------------

    def explain(self, evidences: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
        """Yield explanation rows: first from pending batches, then for the new evidences."""
        try:
            for pending in list(self.pending_batches):
                yield from self._collect(pending)
            in_flight = {h for p in self.pending_batches for h in p.content_hashes}
            todo: dict[str, Mapping[str, Any]] = {}  # keyed by content hash: repeats collapse
            for evidence in evidences:
                self.stats.candidates += 1
                content_hash = self.explainer.content_hash(evidence)
                if content_hash in self._done or content_hash in todo or self.is_cached(content_hash):
                    self.stats.cached += 1
                elif content_hash in in_flight:
                    self.stats.in_flight_batch += 1
                else:
                    todo[content_hash] = evidence
            threshold = self.explainer.batch_threshold
            if threshold is not None and self.explainer.batches_supported and len(todo) >= threshold:
                yield from self._explain_by_batch(list(todo.items()))
            else:
                for content_hash, evidence in todo.items():
                    reason = self._refusal_reason(1, self.explainer.estimate_tokens(evidence, self.explainer.max_tokens))
                    if reason:
                        self._skip(reason)
                        continue
                    row = self.explain_sync(evidence, content_hash)
                    if row is not None:
                        self._done.add(content_hash)
                        yield row
        finally:
            self.stats.http_retries = self.explainer.http_retries - self._retries_at_start

    def explain_sync(self, evidence: Mapping[str, Any], content_hash: str) -> dict[str, Any] | None:
        """One evidence through the Messages API: first attempt, then one retry with more room."""
        return self._answer_with_retry(evidence, content_hash, first=None)

    def _answer_with_retry(
        self,
        evidence: Mapping[str, Any],
        content_hash: str,
        *,
        first: tuple[Any, TokenUsage, float | None] | None,
        batch_id: str | None = None,
        model_id: str | None = None,
    ) -> dict[str, Any] | None:
        """Shared by sync and batch paths; ``first`` is an answer already paid for (message, usage, cost)."""
        total_usage, total_cost, calls = TokenUsage(), 0.0, 0
        cost_known = True
        problems: list[str] = []
        attempts = [self.explainer.max_tokens, self.explainer.retry_max_tokens]
        for index, max_tokens in enumerate(attempts):
            if index == 0 and first is not None:
                message, usage, cost = first
            else:
                if index > 0:
                    reason = self._refusal_reason(1, self.explainer.estimate_tokens(evidence, max_tokens))
                    if reason:
                        # The first answer was billed but the retry cannot be paid for now: leave
                        # the item unexplained (no row) so the next run tries again.
                        self._skip(reason)
                        return None
                message = self.explainer._create_message(evidence, max_tokens)
                usage = TokenUsage.from_sdk(message.usage)
                cost = estimate_cost_usd(self.explainer.model_id, usage, prices=self.explainer.prices)
                self._charge(usage, cost, 1)
            calls += 1
            total_usage = total_usage + usage
            if cost is None:
                cost_known = False
            else:
                total_cost += cost
            try:
                answer = self.explainer.answer_from_message(message, max_tokens)
            except _BadAnswer as bad:
                problems.append(bad.reason)
                log.warning("explanation of %s: %s", evidence["anomaly_id"], bad.reason)
                if not bad.retry_with_more_room:
                    break
                continue
            return self._row(
                evidence, content_hash, answer, None, calls, total_usage, total_cost if cost_known else None,
                batch_id, getattr(message, "model", None) or model_id,
            )
        error = "; then ".join(problems) + f" ({calls} attempt{'s' if calls > 1 else ''})"
        return self._row(
            evidence, content_hash, None, error, calls, total_usage, total_cost if cost_known else None,
            batch_id, model_id,
        )

    def _row(
        self,
        evidence: Mapping[str, Any],
        content_hash: str,
        answer: Mapping[str, Any] | None,
        error: str | None,
        calls: int,
        usage: TokenUsage,
        cost: float | None,
        batch_id: str | None,
        model_id: str | None,
    ) -> dict[str, Any]:
        row = explanation_row(
            evidence,
            answer=answer,
            source=self.explainer.source,
            model_id=model_id or self.explainer.model_id,
            prompt_version=self.explainer.prompt_version,
            content_hash=content_hash,
            status="ok" if answer is not None else STATUS_FAILED,
            error=error,
            api_calls=calls,
            batch_id=batch_id,
            input_tokens=usage.total_input,
            output_tokens=usage.output_tokens,
            estimated_cost_usd=cost,
        )
        self.stats.add_row(row)
        return row

    # -- batches -------------------------------------------------------------------------------

    def _explain_by_batch(self, todo: list[tuple[str, Mapping[str, Any]]]) -> Iterator[dict[str, Any]]:
        selected: dict[str, dict[str, Any]] = {}
        projected = 0
        for content_hash, evidence in todo:
            estimate = self.explainer.estimate_tokens(evidence, self.explainer.max_tokens)
            reason = self._refusal_reason(len(selected) + 1, projected + estimate)
            if reason:
                self._skip(reason)
                continue
            selected[content_hash] = dict(evidence)
            projected += estimate
        if not selected:
            return
        requests = [
            {"custom_id": content_hash, "params": self.explainer.request_params(evidence, self.explainer.max_tokens)}
            for content_hash, evidence in selected.items()
        ]
        batch = self.explainer._call(
            lambda: self.explainer._client.messages.batches.create(requests=requests), f"creating a batch of {len(requests)}"
        )
        self.stats.batches_created += 1
        self.stats.api_calls += len(requests)
        pending = PendingBatch(
            batch_id=batch.id,
            model_id=self.explainer.model_id,
            prompt_version=self.explainer.prompt_version,
            created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            evidences=selected,
        )
        self.pending_batches.append(pending)
        log.info("created Message Batch %s with %d requests", batch.id, len(requests))
        yield from self._collect(pending)

    def _collect(self, pending: PendingBatch) -> Iterator[dict[str, Any]]:
        """Poll a batch for at most ``batch_max_wait_seconds``; when ended, yield its rows."""
        x = self.explainer
        deadline = x._clock() + x.batch_max_wait_seconds
        while True:
            try:
                batch = x._call(lambda: x._client.messages.batches.retrieve(pending.batch_id), f"polling batch {pending.batch_id}")
            except ClaudeApiError as exc:
                if exc.status != 404:
                    raise
                self._drop(pending, "no longer exists (404)")
                return
            if batch.processing_status == "ended" and not batch.results_url:
                self._drop(pending, "ended without downloadable results (archived or expired)")
                return
            if batch.processing_status == "ended":
                break
            remaining = deadline - x._clock()
            if remaining <= 0:
                self.stats.batch_items_unfinished += len(pending.evidences)
                self.stats.note(f"batch {pending.batch_id} still {batch.processing_status}; resume it next run")
                log.info("batch %s still %s after %.0f s; left pending", pending.batch_id, batch.processing_status, x.batch_max_wait_seconds)
                return
            x._sleep(min(x.batch_poll_interval_seconds, remaining))
        results = x._call(lambda: list(x._client.messages.batches.results(pending.batch_id)), f"reading results of batch {pending.batch_id}")
        by_id = {r.custom_id: r for r in results}
        for content_hash, evidence in pending.evidences.items():
            if content_hash in self._done or self.is_cached(content_hash):
                continue
            entry = by_id.get(content_hash)
            row = self._row_from_batch_entry(pending, content_hash, evidence, entry)
            self._done.add(content_hash)
            if row is not None:
                yield row
        self.stats.batches_collected += 1
        self.pending_batches.remove(pending)

    def _drop(self, pending: PendingBatch, why: str) -> None:
        """Forget a batch whose results cannot be had; its items are not cached, so they are re-sent."""
        message = f"batch {pending.batch_id} {why}; its {len(pending.evidences)} items will be explained again"
        log.warning("%s", message)
        self.stats.note(message)
        self.stats.batch_items_unfinished += len(pending.evidences)
        self.pending_batches.remove(pending)

    def _row_from_batch_entry(
        self, pending: PendingBatch, content_hash: str, evidence: Mapping[str, Any], entry: Any
    ) -> dict[str, Any] | None:
        if entry is None:
            self.stats.batch_items_unfinished += 1
            self.stats.note(f"batch {pending.batch_id} returned no result for some requests; they are retried next run")
            return None
        kind = entry.result.type
        if kind == "succeeded":
            message = entry.result.message
            usage = TokenUsage.from_sdk(message.usage)
            cost = estimate_cost_usd(pending.model_id, usage, batch=True, prices=self.explainer.prices)
            self.stats.add_usage(usage.total_input, usage.output_tokens, cost)
            return self._answer_with_retry(
                evidence,
                content_hash,
                first=(message, usage, cost),
                batch_id=pending.batch_id,
                model_id=getattr(message, "model", None) or pending.model_id,
            )
        if kind == "errored":
            error = entry.result.error.error
            error_type, error_message = getattr(error, "type", "error"), getattr(error, "message", "")
            if error_type in _BATCH_ERRORS_STORED_AS_FAILED:
                return self._row(
                    evidence, content_hash, None,
                    self.explainer._redact(f"batch request errored: {error_type}: {error_message}"[:500]),
                    1, TokenUsage(), 0.0, pending.batch_id, pending.model_id,
                )
            self.stats.batch_items_unfinished += 1
            self.stats.note(f"batch {pending.batch_id}: {error_type} on some requests; they are retried next run")
            return None
        # expired or canceled: not billed, not answered; the next run sends them again.
        self.stats.batch_items_unfinished += 1
        self.stats.note(f"batch {pending.batch_id}: some requests {kind}; they are retried next run")
        return None


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------


def make_explainer(api_key: str | None, **claude_kwargs: Any) -> ClaudeExplainer | RuleExplainer:
    """ClaudeExplainer when a key is configured, else the rule-based explainer (logged, not silent)."""
    if api_key and api_key.strip():
        return ClaudeExplainer(api_key, **claude_kwargs)
    log.warning("ANTHROPIC_API_KEY is not set: explanations come from the rule-based explainer (source='rules')")
    return RuleExplainer()
