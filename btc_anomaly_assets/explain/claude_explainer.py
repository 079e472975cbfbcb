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

Where the parts live: this module holds the client (model check, requests, retries); a run's
cache, budgets and sync path are in ``claude_run``, the Message Batches path in ``claude_batches``,
prices and token usage in ``claude_costs``, errors and retry signals in ``claude_errors``. Answer
parsing and validation are in ``prompt``. Everything public is re-exported here.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, Callable, Container, Iterable, Mapping

from btc_anomaly_assets.common.http_policy import retry_after_seconds
from btc_anomaly_assets.common.redaction import Redactor
from btc_anomaly_assets.explain.claude_batches import PendingBatch
from btc_anomaly_assets.explain.claude_costs import MODEL_PRICES, ModelPrice, TokenUsage, estimate_cost_usd, price_for
from btc_anomaly_assets.explain.claude_errors import (
    ClaudeApiError,
    ClaudeConfigError,
    ClaudeExplainerError,
    ClaudeRetriesExhausted,
    ClaudeSpendLimitReached,
    _BadAnswer,
    _is_retryable_status,
)
from btc_anomaly_assets.explain.claude_run import ClaudeRun
from btc_anomaly_assets.explain.evidence import explanation_content_hash
from btc_anomaly_assets.explain.prompt import (
    ANOMALY_EXPLANATION_COLUMNS,
    EXPLANATION_SCHEMA,
    PROMPT_VERSION,
    SOURCE_CLAUDE,
    SYSTEM_PROMPT,
    ExplanationFormatError,
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
    "price_for",
    "retry_after_seconds",
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

# ---------------------------------------------------------------------------------------------
# The explainer
# ---------------------------------------------------------------------------------------------


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
        self._redact = Redactor(api_key)  # the key lives only in the redactor and in the SDK client
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


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------


def make_explainer(api_key: str | None, **claude_kwargs: Any) -> ClaudeExplainer | RuleExplainer:
    """ClaudeExplainer when a key is configured, else the rule-based explainer (logged, not silent)."""
    if api_key and api_key.strip():
        return ClaudeExplainer(api_key, **claude_kwargs)
    log.warning("ANTHROPIC_API_KEY is not set: explanations come from the rule-based explainer (source='rules')")
    return RuleExplainer()
