"""Slack Block Kit primitives and limits: the message type, block builders, and fitting any blocks
into Slack's limits by truncating with an ellipsis instead of being rejected."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Iterable, Mapping, Sequence

# Slack limits (slack_sdk/models/blocks/blocks.py validators; api docs for field text).
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150
MAX_SECTION_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_CONTEXT_ELEMENTS = 10
MAX_CONTEXT_TEXT = 3000
# Slack answers msg_blocks_too_long at roughly 13k characters of block text (bolt-js #2509);
# stay below it with a margin.
MAX_TOTAL_BLOCK_TEXT = 11_000
MAX_FALLBACK_TEXT = 3000
ELLIPSIS = "…"


@dataclass(frozen=True)
class SlackMessage:
    """A ready-to-send message: fallback ``text``, Block Kit ``blocks`` and an optional stable ``key``.

    ``key`` identifies what the message is about (an anomaly_id, cluster_id, ...) so a caller can
    de-duplicate and keep it pending across retries; it is not sent to Slack.
    """

    text: str
    blocks: list[dict] = dataclass_field(default_factory=list)
    key: str | None = None
    thread_ts: str | None = None  # post as a reply in this thread (bot destination; webhooks cannot thread)

    def payload(self) -> dict:
        """The JSON body for a webhook or the ``text``/``blocks`` (and ``thread_ts``) arguments of chat.postMessage."""
        body = {"text": self.text, "blocks": self.blocks}
        if self.thread_ts:
            body["thread_ts"] = self.thread_ts
        return body


def enforce_block_limits(blocks: Sequence[Mapping[str, Any]]) -> list[dict]:
    """A copy of ``blocks`` that fits Slack's limits, truncating with an ellipsis instead of failing.

    Header text <= 150, section text <= 3,000, <= 10 fields of <= 2,000 chars, <= 10 context
    elements, <= 50 blocks and <= ``MAX_TOTAL_BLOCK_TEXT`` characters of text in all (later
    blocks are dropped for the last two, with a closing note saying how many).
    """
    fitted = [fit_block(dict(block)) for block in blocks]
    kept: list[dict] = []
    total = 0
    for position, block in enumerate(fitted):
        size = block_text_size(block)
        is_last = position == len(fitted) - 1
        # Keep one slot free for the omission note unless this is the final block.
        slots = MAX_BLOCKS if is_last else MAX_BLOCKS - 1
        if len(kept) < slots and total + size <= MAX_TOTAL_BLOCK_TEXT:
            kept.append(block)
            total += size
            continue
        omitted = len(fitted) - position
        kept.append(context([f"{ELLIPSIS} {omitted} more block(s) omitted to fit Slack's message limits."]))
        break
    return kept


# --------------------------------------------------------------------------------------------
# Block primitives


def message(text: str, blocks: list[dict], key: Any) -> SlackMessage:
    clean_text = truncate(text, MAX_FALLBACK_TEXT) or "Bitcoin anomaly alert"
    return SlackMessage(text=clean_text, blocks=enforce_block_limits(blocks), key=None if missing(key) else str(key))


def header(text: str) -> dict:
    return {"type": "header", "text": {"type": "plain_text", "text": text}}


def divider() -> dict:
    return {"type": "divider"}


def section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def fields_section(fields: list[dict]) -> dict:
    return {"type": "section", "fields": fields}


def field(label: str, value: str) -> dict:
    return {"type": "mrkdwn", "text": f"*{label}:*\n{value}"}


def context(texts: Iterable[str]) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": t} for t in texts if t]}


def fit_block(block: dict) -> dict:
    kind = block.get("type")
    if kind == "header":
        block["text"] = {**block["text"], "text": truncate(block["text"]["text"], MAX_HEADER_TEXT)}
    elif kind == "section":
        if "text" in block:
            block["text"] = {**block["text"], "text": truncate(block["text"]["text"], MAX_SECTION_TEXT)}
        if "fields" in block:
            fields = [{**f, "text": truncate(f["text"], MAX_FIELD_TEXT)} for f in block["fields"]]
            if len(fields) > MAX_SECTION_FIELDS:
                omitted = len(fields) - (MAX_SECTION_FIELDS - 1)
                fields = fields[: MAX_SECTION_FIELDS - 1] + [
                    {"type": "mrkdwn", "text": f"{ELLIPSIS} {omitted} more field(s)"}
                ]
            block["fields"] = fields
    elif kind == "context":
        elements = [
            {**e, "text": truncate(e["text"], MAX_CONTEXT_TEXT)} if "text" in e else e for e in block["elements"]
        ]
        if len(elements) > MAX_CONTEXT_ELEMENTS:
            elements = elements[: MAX_CONTEXT_ELEMENTS - 1] + [{"type": "mrkdwn", "text": ELLIPSIS}]
        block["elements"] = elements
    return block


def block_text_size(block: Mapping[str, Any]) -> int:
    size = 0
    if isinstance(block.get("text"), Mapping):
        size += len(block["text"].get("text", ""))
    for item in block.get("fields", ()):
        size += len(item.get("text", ""))
    for item in block.get("elements", ()):
        size += len(item.get("text", "")) if isinstance(item, Mapping) else 0
    return size


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def pack_lines(lines: list[str], limit: int) -> list[str]:
    """Join lines into chunks of at most ``limit`` characters (a single longer line is truncated)."""
    chunks: list[str] = []
    current = ""
    for line in (truncate(line, limit) for line in lines):
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) <= limit:
            current = candidate
        else:
            chunks.append(current)
            current = line
    if current:
        chunks.append(current)
    return chunks


def missing(value: Any) -> bool:
    """None, NaN, NaT and pd.NA count as missing (pd.NA refuses bool(), hence the TypeError)."""
    if value is None:
        return True
    if isinstance(value, (str, bytes, list, tuple, dict)):
        return False
    try:
        return bool(value != value)
    except (TypeError, ValueError):
        return True
