"""A loopback fake of Slack's incoming webhooks and ``chat.postMessage`` (on ``LoopbackServer``).

Webhook: ``POST /services/<T>/<B>/<secret>`` answers like hooks.slack.com: 200 ``ok``; 400
``invalid_payload`` (body not JSON) / ``no_text`` / ``invalid_blocks``; 404 ``no_service`` for an
unknown hook; plus scripted faults. Web API: ``POST /api/chat.postMessage`` answers 200
``{"ok": true, "channel", "ts"}`` or 200 ``{"ok": false, "error"}`` (``invalid_auth``,
``channel_not_found``, ``not_in_channel``, ``invalid_blocks``), plus scripted faults.

Blocks are validated with slack_sdk's own Block Kit models (the same length/count validators
Slack enforces), so an over-limit message really is refused with ``invalid_blocks``.

Scripted behaviours, consumed one per request (``queue_webhook`` / ``queue_api``), then ``ok``:
``"ok"``, ``"rate_limited:<retry_after>"`` (429 + Retry-After), ``"server_error"`` (500),
``"invalid_blocks"``, ``"invalid_payload"``, ``"channel_not_found"``, ``"timeout:<seconds>"``
(answer 200 only after a delay, so a client with a shorter timeout gives up).

Point ``WebhookClient`` at ``fake.webhook_url`` and ``WebClient(base_url=fake.api_base_url)``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block

from btc_anomaly_testing.fakes.loopback import LoopbackServer, Reply, Request

MAX_BLOCKS = 50


@dataclass
class ReceivedMessage:
    """A message the fake accepted: which endpoint, the channel (API only), text and blocks."""

    endpoint: str  # "webhook" or "api"
    channel: str | None
    text: str | None
    blocks: list
    thread_ts: str | None = None  # chat.postMessage: the parent message's ts when posted as a reply


class FakeSlack:
    """Use as a context manager; ``received`` holds accepted messages, ``server.requests`` every request."""

    def __init__(
        self,
        *,
        team: str = "T0",
        hook: str = "B0",
        hook_secret: str = "fakeWebhookSecret123",
        token: str = "xoxb-fake-bot-token-456",
        channels: tuple[str, ...] = ("#alerts",),
        not_member_of: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.team, self.hook, self.hook_secret, self.token = team, hook, hook_secret, token
        self.channels = set(channels)
        self.not_member_of = set(not_member_of)
        self.clock = clock
        self.received: list[ReceivedMessage] = []
        self.request_times: list[float] = []
        self._webhook_script: deque[str] = deque()
        self._api_script: deque[str] = deque()
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        self.server = LoopbackServer(self.handle)

    def __enter__(self) -> "FakeSlack":
        self.server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)

    @property
    def webhook_url(self) -> str:
        return f"{self.server.url}/services/{self.team}/{self.hook}/{self.hook_secret}"

    @property
    def api_base_url(self) -> str:
        return f"{self.server.url}/api/"

    def reset(
        self,
        *,
        clock: Callable[[], float] | None = None,
        channels: tuple[str, ...] = ("#alerts",),
        not_member_of: tuple[str, ...] = (),
    ) -> None:
        """Forget scripts, requests and messages (share one server across tests: start-up and
        shutdown cost ~0.5 s each)."""
        with self._lock:
            self._webhook_script.clear()
            self._api_script.clear()
            self.received.clear()
            self.request_times.clear()
            self.server.requests.clear()
            self.channels = set(channels)
            self.not_member_of = set(not_member_of)
            if clock is not None:
                self.clock = clock

    def queue_webhook(self, *behaviours: str) -> None:
        self._webhook_script.extend(behaviours)

    def queue_api(self, *behaviours: str) -> None:
        self._api_script.extend(behaviours)

    # ----------------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        with self._lock:
            self.request_times.append(self.clock())
        if request.method != "POST":
            return Reply(405, "method_not_allowed")
        if request.path == "/api/chat.postMessage":
            return self._chat_post_message(request)
        if request.path.startswith("/services/"):
            return self._webhook(request)
        return Reply(404, "not_found")

    def _next(self, script: deque[str]) -> str:
        with self._lock:
            return script.popleft() if script else "ok"

    def _webhook(self, request: Request) -> Reply:
        if request.path != f"/services/{self.team}/{self.hook}/{self.hook_secret}":
            return Reply(404, "no_service")
        behaviour = self._next(self._webhook_script)
        fault = _fault_reply(behaviour, ok_body="ok")
        if fault is not None:
            return fault
        try:
            body = request.json()
        except (ValueError, UnicodeDecodeError):
            return Reply(400, "invalid_payload")
        if behaviour in ("invalid_blocks", "invalid_payload", "channel_not_found"):
            status = 404 if behaviour == "channel_not_found" else 400
            return Reply(status, behaviour)
        if not body.get("text") and not body.get("blocks"):
            return Reply(400, "no_text")
        if not _blocks_valid(body.get("blocks")):
            return Reply(400, "invalid_blocks")
        self._accept("webhook", None, body)
        return Reply(200, "ok")

    def _chat_post_message(self, request: Request) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Reply(200, {"ok": False, "error": "invalid_auth"})
        behaviour = self._next(self._api_script)
        fault = _fault_reply(behaviour, ok_body=None)
        if fault is not None:
            if fault.status == 429:
                fault.body = {"ok": False, "error": "ratelimited"}
            if fault.delay_seconds:
                fault.body = {"ok": True, "channel": "C0", "ts": self._next_ts()}
            return fault
        try:
            body = request.json()
        except (ValueError, UnicodeDecodeError):
            return Reply(200, {"ok": False, "error": "invalid_json"})
        if behaviour in ("invalid_blocks", "invalid_payload", "channel_not_found"):
            return Reply(200, {"ok": False, "error": behaviour})
        channel = body.get("channel")
        if channel not in self.channels:
            return Reply(200, {"ok": False, "error": "channel_not_found"})
        if channel in self.not_member_of:
            return Reply(200, {"ok": False, "error": "not_in_channel"})
        if not body.get("text") and not body.get("blocks"):
            return Reply(200, {"ok": False, "error": "no_text"})
        if not _blocks_valid(body.get("blocks")):
            return Reply(200, {"ok": False, "error": "invalid_blocks"})
        self._accept("api", channel, body)
        return Reply(200, {"ok": True, "channel": "C0", "ts": self._next_ts()})

    def _accept(self, endpoint: str, channel: str | None, body: dict) -> None:
        with self._lock:
            self.received.append(ReceivedMessage(endpoint, channel, body.get("text"), body.get("blocks") or [],
                                                 body.get("thread_ts")))

    def _next_ts(self) -> str:
        return f"1755044280.{next(self._ts):06d}"


def _fault_reply(behaviour: str, *, ok_body) -> Reply | None:
    """The reply for a scripted fault, or None when the request should be processed normally."""
    name, _, argument = behaviour.partition(":")
    if name == "rate_limited":
        return Reply(429, "rate_limited", headers={"Retry-After": argument or "1"})
    if name == "server_error":
        return Reply(500, "Internal Server Error")
    if name == "timeout":
        return Reply(200, ok_body if ok_body is not None else "", delay_seconds=float(argument or "1"))
    if name in ("ok", "invalid_blocks", "invalid_payload", "channel_not_found"):
        return None
    raise ValueError(f"unknown scripted Slack behaviour {behaviour!r}")


def _blocks_valid(blocks) -> bool:
    if blocks is None:
        return True
    if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
        return False
    try:
        for raw in blocks:
            block = Block.parse(raw)
            if block is None:
                return False
            block.validate_json()
    except (SlackObjectFormationError, KeyError, TypeError, ValueError):
        return False
    return True
