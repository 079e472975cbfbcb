"""A loopback fake of the Anthropic API: /v1/models, /v1/messages and /v1/messages/batches.

It answers the way the real API does where our code depends on it:

- auth by ``x-api-key`` or ``Authorization: Bearer`` (SDK 2.x sends the latter); a wrong key is a
  401 ``authentication_error``; a missing ``anthropic-version`` header is a 400;
- error bodies ``{"type": "error", "error": {"type": ..., "message": ..., "details": {"error_code": ...}},
  "request_id": ...}`` with a ``request-id`` header (and ``retry-after`` when scripted);
- an unknown model is a 404 ``not_found_error`` ("model: <id>"); aliases resolve to dated ids;
- ``temperature``/``top_p``/``top_k`` are rejected with 400, as API version 2026-10-21 does;
- ``output_config.format`` (json_schema) answers with JSON text; a forced strict tool answers
  with a ``tool_use`` block; usage is reported in tokens;
- batches go ``in_progress`` -> ``ended`` after a configurable number of polls, and their results
  are JSONL keyed by ``custom_id`` (returned in reverse order, as order is not guaranteed).

``outage_status=529`` answers every request (model check included) with that error, as an outage
does. Tests script failures with ``fake.script_messages(...)`` (consumed one per /v1/messages call,
before the default answer) using the helpers ``error_reply``, ``truncated_answer``,
``raw_text_answer`` and ``valid_answer``.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from btc_anomaly_testing.fakes.loopback import LoopbackServer, Reply, Request

FAKE_API_KEY = "sk-ant-fake-0123456789abcdefSECRET"
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_SAMPLING_PARAMS = ("temperature", "top_p", "top_k")
_ids = itertools.count(1)

MessageScript = Callable[[dict], Reply]


@dataclass
class FakeModel:
    id: str
    aliases: tuple[str, ...] = ()
    display_name: str = ""
    lifecycle: str = "active"
    structured_outputs: bool = True
    batch: bool = True
    max_tokens: int = 64_000

    def info(self) -> dict:
        return {
            "type": "model",
            "id": self.id,
            "display_name": self.display_name or self.id,
            "created_at": "2025-10-01T00:00:00Z",
            "lifecycle": self.lifecycle,
            "deprecated_at": None,
            "retires_at": None,
            "max_tokens": self.max_tokens,
            "max_input_tokens": 200_000,
            "capabilities": {
                "batch": {"supported": self.batch},
                "structured_outputs": {"supported": self.structured_outputs},
                "citations": {"supported": True},
                "image_input": {"supported": True},
                "pdf_input": {"supported": True},
            },
        }


DEFAULT_MODELS = (
    FakeModel("claude-haiku-4-5-20251001", aliases=("claude-haiku-4-5",), display_name="Claude Haiku 4.5"),
    FakeModel("claude-sonnet-4-5-20250929", aliases=("claude-sonnet-4-5",), display_name="Claude Sonnet 4.5"),
)


def _request_id() -> str:
    return f"req_fake_{next(_ids):06d}"


def error_reply(
    status: int,
    error_type: str,
    message: str,
    *,
    retry_after: str | None = None,
    retry_after_ms: str | None = None,
    error_code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """An API error exactly as the real API shapes it."""
    request_id = _request_id()
    error: dict[str, Any] = {"type": error_type, "message": message}
    if error_code:
        error["details"] = {"error_code": error_code}
    reply_headers = {"request-id": request_id, **(headers or {})}
    if retry_after is not None:
        reply_headers["retry-after"] = retry_after
    if retry_after_ms is not None:
        reply_headers["retry-after-ms"] = retry_after_ms
    return Reply(status, {"type": "error", "error": error, "request_id": request_id}, reply_headers)


def anomaly_id_of(body: dict) -> str:
    """The anomaly id the user message names (our prompt starts with 'Anomaly id: ...')."""
    text = body["messages"][0]["content"]
    if isinstance(text, list):
        text = " ".join(block.get("text", "") for block in text)
    match = re.search(r"Anomaly id: (\S+)", text)
    return match.group(1) if match else "unknown"


def default_answer(body: dict) -> dict:
    """A schema-valid answer that names the anomaly, so tests can see it came from the fake."""
    anomaly_id = anomaly_id_of(body)
    return {
        "statistically_unusual": True,
        "unusual_reason": f"fake-claude: the value is far above its baseline ({anomaly_id})",
        "suspected_patterns": ["large_transfer"],
        "legitimate_causes": ["exchange wallet rebalancing"],
        "flag_for_investigation": True,
        "flag_rationale": "fake-claude: very large transfer",
        "confidence": "medium",
        "insufficient_evidence": False,
        "summary": f"fake-claude summary for {anomaly_id}",
        "narrative": f"fake-claude narrative for {anomaly_id}",
    }


def _usage(body: dict, output_text: str) -> dict:
    prompt = json.dumps(body.get("system", "")) + json.dumps(body.get("messages", []))
    return {
        "input_tokens": max(1, len(prompt) // 4),
        "output_tokens": max(1, len(output_text) // 4),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def message_json(body: dict, model_id: str, *, text: str | None = None, tool_input: dict | None = None, stop_reason: str = "end_turn") -> dict:
    if tool_input is not None:
        content = [{"type": "tool_use", "id": f"toolu_{next(_ids)}", "name": body["tools"][0]["name"], "input": tool_input}]
        output_text = json.dumps(tool_input)
    else:
        content = [{"type": "text", "text": text or ""}]
        output_text = text or ""
    return {
        "id": f"msg_fake_{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": model_id,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _usage(body, output_text),
    }


# Scripted replies for /v1/messages: each takes the request body (already validated) and the
# resolved model id, and returns the message JSON (or a Reply for errors).


def valid_answer(body: dict, model_id: str) -> dict:
    answer = default_answer(body)
    if body.get("tools"):
        return message_json(body, model_id, tool_input=answer, stop_reason="tool_use")
    return message_json(body, model_id, text=json.dumps(answer))


def truncated_answer(body: dict, model_id: str) -> dict:
    text = json.dumps(default_answer(body))
    return message_json(body, model_id, text=text[: len(text) // 2], stop_reason="max_tokens")


def raw_text_answer(text: str, stop_reason: str = "end_turn") -> Callable[[dict, str], dict]:
    return lambda body, model_id: message_json(body, model_id, text=text, stop_reason=stop_reason)


def scripted_error(*args, **kwargs) -> Callable[[dict, str], Reply]:
    reply = error_reply(*args, **kwargs)
    return lambda body, model_id: reply


@dataclass
class FakeBatch:
    id: str
    requests: list[dict]
    created_at: str = "2025-08-13T15:00:00Z"
    polls: int = 0
    ended: bool = False


@dataclass
class FakeAnthropic:
    """The request handler; use ``serve()`` to run it on a LoopbackServer."""

    api_key: str = FAKE_API_KEY
    models: tuple[FakeModel, ...] = DEFAULT_MODELS
    polls_before_batch_ends: int = 1
    # When set, a /v1/messages (or batch) request with max_tokens below this is answered truncated.
    truncate_below_max_tokens: int | None = None
    # custom_id -> "errored" | "expired" | "canceled" | ("errored", error_type) for batch results.
    batch_outcomes: dict[str, Any] = field(default_factory=dict)
    message_bodies: list[dict] = field(default_factory=list)
    # When set (e.g. 529), every request is answered with that error, as during an API outage.
    outage_status: int | None = None
    outage_retry_after: str | None = None
    batches: dict[str, FakeBatch] = field(default_factory=dict)
    _script: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def script_messages(self, *replies: Callable[[dict, str], Any]) -> None:
        self._script.extend(replies)

    def serve(self) -> LoopbackServer:
        return LoopbackServer(self)

    # -- dispatch ------------------------------------------------------------------------------

    def __call__(self, request: Request) -> Reply:
        with self._lock:
            if self.outage_status is not None:
                kind = {529: "overloaded_error", 429: "rate_limit_error"}.get(self.outage_status, "api_error")
                return error_reply(self.outage_status, kind, "Overloaded" if self.outage_status == 529 else "outage",
                                   retry_after=self.outage_retry_after)
            problem = self._check_headers(request)
            if problem:
                return problem
            path, method = request.path, request.method
            if method == "GET" and path == "/v1/models":
                return self._list_models()
            if method == "GET" and path.startswith("/v1/models/"):
                return self._get_model(path.rsplit("/", 1)[1])
            if method == "POST" and path == "/v1/messages":
                return self._messages(request.json())
            if method == "POST" and path == "/v1/messages/batches":
                return self._create_batch(request.json())
            match = re.fullmatch(r"/v1/messages/batches/([^/]+)(/results)?", path)
            if method == "GET" and match:
                batch = self.batches.get(match.group(1))
                if batch is None:
                    return error_reply(404, "not_found_error", f"batch {match.group(1)} not found")
                if match.group(2):
                    return self._batch_results(batch)
                return self._poll_batch(batch, request)
            return error_reply(404, "not_found_error", f"no route {method} {path}")

    def _check_headers(self, request: Request) -> Reply | None:
        key = request.headers.get("x-api-key")
        bearer = request.headers.get("authorization", "")
        if key != self.api_key and bearer != f"Bearer {self.api_key}":
            return error_reply(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return error_reply(400, "invalid_request_error", "anthropic-version: header is required")
        return None

    # -- models --------------------------------------------------------------------------------

    def resolve(self, model: str) -> FakeModel | None:
        return next((m for m in self.models if model == m.id or model in m.aliases), None)

    def _list_models(self) -> Reply:
        data = [m.info() for m in self.models]
        return Reply(200, {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                           "last_id": data[-1]["id"] if data else None}, {"request-id": _request_id()})

    def _get_model(self, model: str) -> Reply:
        found = self.resolve(model)
        if found is None:
            return error_reply(404, "not_found_error", f"model: {model}")
        return Reply(200, found.info(), {"request-id": _request_id()})

    # -- messages ------------------------------------------------------------------------------

    def _validate_params(self, body: dict) -> tuple[Reply | None, FakeModel | None]:
        for name in _SAMPLING_PARAMS:
            if name in body:
                return error_reply(400, "invalid_request_error", f"{name}: Extra inputs are not permitted"), None
        model = self.resolve(str(body.get("model")))
        if model is None:
            return error_reply(404, "not_found_error", f"model: {body.get('model')}"), None
        if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
            return error_reply(400, "invalid_request_error", "max_tokens: Field required"), None
        if not body.get("messages"):
            return error_reply(400, "invalid_request_error", "messages: Field required"), None
        fmt = (body.get("output_config") or {}).get("format")
        if fmt is not None:
            schema = fmt.get("schema")
            if fmt.get("type") != "json_schema" or not isinstance(schema, dict):
                return error_reply(400, "invalid_request_error", "output_config.format: invalid"), None
            if schema.get("additionalProperties") is not False:
                return error_reply(400, "invalid_request_error", "output_config.format.schema: additionalProperties must be false"), None
        if body.get("tools"):
            choice = body.get("tool_choice") or {}
            if choice.get("type") != "tool" or choice.get("name") != body["tools"][0]["name"]:
                return error_reply(400, "invalid_request_error", "tool_choice must name the tool"), None
        return None, model

    def _answer(self, body: dict, model: FakeModel, script: Callable | None) -> Any:
        if script is not None:
            return script(body, model.id)
        if self.truncate_below_max_tokens is not None and body["max_tokens"] < self.truncate_below_max_tokens:
            return truncated_answer(body, model.id)
        return valid_answer(body, model.id)

    def _messages(self, body: dict) -> Reply:
        script = self._script.popleft() if self._script else None
        if isinstance(script, Reply):
            return script
        problem, model = self._validate_params(body)
        if problem:
            return problem
        result = self._answer(body, model, script)
        if isinstance(result, Reply):
            return result
        self.message_bodies.append(body)
        return Reply(200, result, {"request-id": _request_id()})

    # -- batches -------------------------------------------------------------------------------

    def _create_batch(self, body: dict) -> Reply:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return error_reply(400, "invalid_request_error", "requests: Field required")
        seen: set[str] = set()
        for item in requests:
            custom_id = item.get("custom_id", "")
            if not _CUSTOM_ID.match(custom_id):
                return error_reply(400, "invalid_request_error", f"custom_id {custom_id!r}: must match ^[a-zA-Z0-9_-]{{1,64}}$")
            if custom_id in seen:
                return error_reply(400, "invalid_request_error", f"custom_id {custom_id!r} is not unique")
            seen.add(custom_id)
            if "params" not in item:
                return error_reply(400, "invalid_request_error", "params: Field required")
        batch = FakeBatch(id=f"msgbatch_fake_{next(_ids)}", requests=requests)
        self.batches[batch.id] = batch
        return Reply(200, self._batch_json(batch, None), {"request-id": _request_id()})

    def _poll_batch(self, batch: FakeBatch, request: Request) -> Reply:
        batch.polls += 1
        if batch.polls >= self.polls_before_batch_ends:
            batch.ended = True
        base = f"http://{request.headers.get('host')}"
        return Reply(200, self._batch_json(batch, base), {"request-id": _request_id()})

    def _outcome(self, item: dict) -> dict:
        outcome = self.batch_outcomes.get(item["custom_id"])
        if outcome in ("expired", "canceled"):
            return {"type": outcome}
        if outcome is not None:
            error_type = outcome[1] if isinstance(outcome, tuple) else "api_error"
            return {"type": "errored", "error": {"type": "error", "error": {"type": error_type, "message": "fake batch item error"}, "request_id": _request_id()}}
        body = item["params"]
        problem, model = self._validate_params(body)
        if problem:
            return {"type": "errored", "error": problem.body}
        return {"type": "succeeded", "message": self._answer(body, model, None)}

    def _batch_results(self, batch: FakeBatch) -> Reply:
        if not batch.ended:
            return error_reply(400, "invalid_request_error", "batch has not ended")
        lines = [json.dumps({"custom_id": item["custom_id"], "result": self._outcome(item)}) for item in reversed(batch.requests)]
        return Reply(200, ("\n".join(lines) + "\n").encode("utf-8"), {"Content-Type": "application/binary", "request-id": _request_id()})

    def _batch_json(self, batch: FakeBatch, base_url: str | None) -> dict:
        n = len(batch.requests)
        counts = {"processing": 0 if batch.ended else n, "succeeded": n if batch.ended else 0, "errored": 0, "canceled": 0, "expired": 0}
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if batch.ended else "in_progress",
            "request_counts": counts,
            "created_at": batch.created_at,
            "expires_at": "2025-08-14T15:00:00Z",
            "ended_at": "2025-08-13T15:05:00Z" if batch.ended else None,
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{base_url}/v1/messages/batches/{batch.id}/results" if batch.ended and base_url else None,
        }
