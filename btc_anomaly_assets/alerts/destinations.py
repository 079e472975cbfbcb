"""Where an alert goes, in one interface: ``deliver(message) -> DeliveryResult``, never raising for a
delivery problem. The local outbox (the default when no Slack destination is set) lives here; the
Slack webhook and bot destinations are in ``slack_delivery``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from filelock import FileLock

from btc_anomaly_assets.alerts.block_kit import SlackMessage
from btc_anomaly_assets.common.redaction import redact_secrets
from btc_anomaly_assets.common.utc import utc_now

logger = logging.getLogger("btc_anomaly_assets.alerts.slack_delivery")

STATUS_SENT = "sent"
STATUS_FAILED = "failed"


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one message. ``destination`` is a redacted label; ``sent_at`` naive UTC."""

    status: str
    destination: str
    attempts: int
    error: str | None = None
    sent_at: datetime | None = None
    slack_ts: str | None = None  # chat.postMessage's message timestamp (bot destination only)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_SENT


class AlertDestination(Protocol):
    name: str

    def deliver(self, message: SlackMessage | Mapping[str, Any]) -> DeliveryResult: ...


def message_payload(message: SlackMessage | Mapping[str, Any]) -> dict:
    """``{"text", "blocks"}`` of a ``SlackMessage`` or a payload dict; ValueError without text."""
    payload = message.payload() if isinstance(message, SlackMessage) else dict(message)
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a Slack message needs a non-empty fallback 'text'")
    blocks = payload.get("blocks") or []
    if not isinstance(blocks, list):
        raise ValueError(f"'blocks' must be a list, got {type(blocks).__name__}")
    body = {"text": text, "blocks": blocks}
    if payload.get("thread_ts"):
        body["thread_ts"] = str(payload["thread_ts"])
    return body


class OutboxDestination:
    """Append one JSON line per message to a local file (the default without a Slack destination).

    Each line is ``{"destination", "key", "payload", "written_at"}``; ``payload`` is exactly what
    a webhook would receive. Appends are serialised with a file lock so concurrent runs do not
    interleave lines.
    """

    def __init__(self, path: str | os.PathLike, *, now: Callable[[], datetime] = lambda: utc_now()):
        self.path = Path(path)
        self.name = f"outbox:{self.path}"
        self._now = now

    def deliver(self, message: SlackMessage | Mapping[str, Any]) -> DeliveryResult:
        written_at = self._now()
        try:
            payload = message_payload(message)
            line = json.dumps(
                {
                    "destination": self.name,
                    "key": getattr(message, "key", None),
                    "payload": payload,
                    "written_at": written_at.isoformat(),
                },
                ensure_ascii=False,
                default=str,
            )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{self.path}.lock"):
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
        except (OSError, ValueError, TypeError) as err:
            error = redact_secrets(f"could not write outbox {self.path}: {type(err).__name__}: {err}")
            logger.warning("Slack alert to %s failed: %s", self.name, error)
            return DeliveryResult(status=STATUS_FAILED, destination=self.name, attempts=1, error=error)
        logger.info("Slack alert written to %s", self.name)
        return DeliveryResult(status=STATUS_SENT, destination=self.name, attempts=1, sent_at=written_at)

    def __repr__(self) -> str:
        return f"OutboxDestination({self.name!r})"


def read_outbox(path: str | os.PathLike) -> list[dict]:
    """The outbox's records in order (for tests and for replaying pending alerts)."""
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
