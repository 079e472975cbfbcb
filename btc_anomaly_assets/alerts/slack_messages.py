"""Slack Block Kit messages for anomaly alerts, digests and run failures (pure: dicts in, dicts out).

Every builder returns a ``SlackMessage``: fallback ``text`` (always set: it is what notifications
and screen readers show) plus ``blocks``, already passed through ``enforce_block_limits``, so a
huge input is truncated with an ellipsis instead of being rejected by Slack.

Formats:
- EWMA anomaly and coordination alerts keep the tutorial's layout (header, divider, a section
  of fields, a context line; SEED_ANALYSIS.md "send_alert.py"). ``seed_parity=True`` reproduces
  the tutorial's payload exactly (its header wording, leading space included, and its fallback
  texts) and nothing more. The default adds severity, metric/pattern, value vs baseline with
  units, the explanation's one-line summary (labelled "rule-based" when it came from rules)
  and a link to the asset partition in the Dagster UI.
- Forecast excursion (an actual outside the forecast interval), a digest (many anomalies in one
  message, for backfills) and a Dagster run failure.

Field values are rendered as ``*Label:*\\n<value>``. The tutorial's code is not preserved, only
its labels and rounding (Z-Score 2 dp, averages 1 dp, sample hash 16 chars + "..."), so this
line layout is our reading of it.

Inputs are plain dicts with the ``EWMA_ANOMALY_COLUMNS`` / ``COORDINATED_CLUSTER_COLUMNS``
fields (a ``DataFrame`` row via ``row.to_dict()`` works), plus optional ``summary`` and
``explanation_source``. Missing values (None, NaN, NaT, pd.NA) render as "n/a".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from btc_anomaly_assets.common.schema import SEVERITIES, severity_rank

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

PARTITION_KEY_FORMAT = "%Y-%m-%d-%H:%M"
DEFAULT_EWMA_ASSET = "btc/ewma_anomalies"
DEFAULT_CLUSTER_ASSET = "btc/coordinated_clusters"
DEFAULT_FORECAST_ASSET = "btc/transaction_forecast"

EWMA_HEADER = "Anomaly Detected in Bitcoin Transactions"
EWMA_CONTEXT = "Flagged due to deviation from smoothed EWMA baseline"
COORDINATION_HEADER = "Coordinated Activity Detected"
COORDINATION_CONTEXT = "High fan-in or fan-out pattern detected across multiple transactions."
# The tutorial's exact wording (send_alert.py), used only with seed_parity=True.
SEED_EWMA_HEADER = " Anomaly Detected in Bitcoin Transactions"
SEED_EWMA_TEXT = "Anomaly Detected!"
SEED_COORDINATION_HEADER = "Coordinated Attack Detected!"
SEED_COORDINATION_TEXT = "Coordination Alert"

FORECAST_HEADER = "Transaction Rate Outside Forecast Interval"
DIGEST_HEADER = "Bitcoin Anomaly Digest"
EXPLANATION_SOURCE_RULES = "rules"
SUMMARY_MAX_CHARS = 500
DEFAULT_DIGEST_TOP_N = 10

_UNIT_SUFFIXES = (
    ("_sat_vb", "sat/vB"),
    ("_btc", "BTC"),
    ("_usd", "USD"),
    ("_vb", "vB"),
    ("_bytes", "bytes"),
    ("_sat", "sat"),
)

# Secrets that could end up inside an error text (run-failure messages, delivery errors).
_WEBHOOK_SECRET = re.compile(r"(/services/[^/\s]+/[^/\s]+/)[^\s/?#'\"<>|)]+")
_SLACK_TOKEN = re.compile(r"\bxox[a-zA-Z]-[A-Za-z0-9-]+")
_ANTHROPIC_KEY = re.compile(r"\bsk-ant-[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class SlackMessage:
    """A ready-to-send message: fallback ``text``, Block Kit ``blocks`` and an optional stable ``key``.

    ``key`` identifies what the message is about (an anomaly_id, cluster_id, ...) so a caller can
    de-duplicate and keep it pending across retries; it is not sent to Slack.
    """

    text: str
    blocks: list[dict] = field(default_factory=list)
    key: str | None = None

    def payload(self) -> dict:
        """The JSON body for a webhook or the ``text``/``blocks`` arguments of chat.postMessage."""
        return {"text": self.text, "blocks": self.blocks}


# --------------------------------------------------------------------------------------------
# Alerts


def build_ewma_anomaly_message(
    row: Mapping[str, Any],
    *,
    ui_base_url: str | None = None,
    seed_parity: bool = False,
    asset_path: str = DEFAULT_EWMA_ASSET,
) -> SlackMessage:
    """One EWMA anomaly (an ``EWMA_ANOMALY_COLUMNS`` row, plus optional ``summary``/``explanation_source``)."""
    minute = _as_naive_utc(row.get("minute"))
    if seed_parity:
        blocks = [
            _header(SEED_EWMA_HEADER),
            _divider(),
            _fields_section(
                [
                    _field("Time", _seed_time(row.get("minute"))),
                    _field("Tx Count", _seed_value(row.get("tx_count"))),
                    _field("Z-Score", _fixed(row.get("z_score"), 2)),
                ]
            ),
            _context([EWMA_CONTEXT]),
        ]
        return _message(SEED_EWMA_TEXT, blocks, row.get("anomaly_id"))

    metric = _text(row.get("metric"))
    unit = unit_for_metric(metric)
    severity = _text(row.get("severity"))
    blocks = [
        _header(EWMA_HEADER),
        _divider(),
        _fields_section(
            [
                _field("Time", _minute_label(minute)),
                _field("Tx Count", _count(row.get("tx_count"))),
                _field("Z-Score", _fixed(row.get("z_score"), 2)),
                _field("Severity", severity),
                _field("Metric", f"`{_escape(metric)}`"),
                _field("Value vs baseline", _value_vs_baseline(row.get("value"), row.get("baseline"), unit)),
            ]
        ),
        *_summary_blocks(row),
        *_link_blocks(ui_base_url, asset_path, minute),
        _context([EWMA_CONTEXT, _provenance(row)]),
    ]
    text = (
        f"[{severity}] Bitcoin anomaly in {metric}: {_quantity(row.get('value'), unit)} vs baseline "
        f"{_quantity(row.get('baseline'), unit)} (z {_fixed(row.get('z_score'), 2)}) at {_minute_label(minute)}"
    )
    return _message(text, blocks, row.get("anomaly_id"))


def build_coordination_message(
    row: Mapping[str, Any],
    *,
    ui_base_url: str | None = None,
    seed_parity: bool = False,
    asset_path: str = DEFAULT_CLUSTER_ASSET,
) -> SlackMessage:
    """One coordinated-activity cluster (a ``COORDINATED_CLUSTER_COLUMNS`` row, plus optional summary)."""
    minute = _as_naive_utc(row.get("minute"))
    common_fields = [
        _field("Tx Count", _seed_value(row.get("tx_count")) if seed_parity else _count(row.get("tx_count"))),
        _field("Avg Inputs", _fixed(row.get("avg_input_count"), 1)),
        _field("Avg Outputs", _fixed(row.get("avg_output_count"), 1)),
        _field("Sample Tx", _short_hash(row.get("sample_tx_hash"))),
    ]
    if seed_parity:
        blocks = [
            _header(SEED_COORDINATION_HEADER),
            _divider(),
            _fields_section([_field("Time", _seed_time(row.get("minute"))), *common_fields]),
            _context([COORDINATION_CONTEXT]),
        ]
        return _message(SEED_COORDINATION_TEXT, blocks, row.get("cluster_id"))

    pattern = _text(row.get("pattern"))
    severity = _text(row.get("severity"))
    blocks = [
        _header(COORDINATION_HEADER),
        _divider(),
        _fields_section(
            [
                _field("Time", _minute_label(minute)),
                *common_fields,
                _field("Severity", severity),
                _field("Pattern", f"`{_escape(pattern)}`"),
                _field("Score vs baseline", f"{_fixed(row.get('score'), 2)} vs {_fixed(row.get('baseline'), 2)}"),
                _field("Total value", _quantity(row.get("total_value_btc"), "BTC")),
            ]
        ),
        *_summary_blocks(row),
        *_link_blocks(ui_base_url, asset_path, minute),
        _context([COORDINATION_CONTEXT, _provenance(row)]),
    ]
    text = (
        f"[{severity}] Coordinated activity ({pattern}): {_count(row.get('tx_count'))} transactions, "
        f"score {_fixed(row.get('score'), 2)} vs baseline {_fixed(row.get('baseline'), 2)} at {_minute_label(minute)}"
    )
    return _message(text, blocks, row.get("cluster_id"))


def build_forecast_excursion_message(
    row: Mapping[str, Any],
    *,
    ui_base_url: str | None = None,
    asset_path: str = DEFAULT_FORECAST_ASSET,
) -> SlackMessage:
    """An actual outside the forecast interval (a row of ``forecast.interval_excursions``)."""
    minute = _as_naive_utc(row.get("ds"))
    cutoff = _as_naive_utc(row.get("cutoff"))
    series = _text(row.get("series"))
    severity = _text(row.get("severity"))
    unit = "tx/min"
    interval = f"[{_quantity(row.get('yhat_lower'), '')}, {_quantity(row.get('yhat_upper'), '')}] {unit}"
    blocks = [
        _header(FORECAST_HEADER),
        _divider(),
        _fields_section(
            [
                _field("Time", _minute_label(minute)),
                _field("Actual", _quantity(row.get("y"), unit)),
                _field("Forecast", _quantity(row.get("yhat"), unit)),
                _field("Interval", interval),
                _field("Severity", severity),
                _field(
                    "Outside by",
                    f"{_fixed(row.get('excess_half_widths'), 2)} half-widths {_text(row.get('direction'))}",
                ),
                _field("Series", f"`{_escape(series)}`"),
                _field("Forecast origin", f"{_minute_label(cutoff)} (step {_seed_value(row.get('step'))})"),
            ]
        ),
        *_link_blocks(ui_base_url, asset_path, cutoff),
        _context(
            [
                "The actual value fell outside the forecast's prediction interval: an independent "
                "signal from the EWMA detector.",
                f"model: {_escape(_text(row.get('model')))} · time basis: {_escape(_text(row.get('time_basis')))}",
            ]
        ),
    ]
    text = (
        f"[{severity}] {series} {_quantity(row.get('y'), unit)} outside forecast interval {interval} "
        f"at {_minute_label(minute)}"
    )
    key = f"forecast:{series}:{_minute_label(cutoff)}:{_minute_label(minute)}"
    return _message(text, blocks, key)


def build_digest_message(
    *,
    anomalies: Iterable[Mapping[str, Any]] = (),
    clusters: Iterable[Mapping[str, Any]] = (),
    excursions: Iterable[Mapping[str, Any]] = (),
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    top_n: int = DEFAULT_DIGEST_TOP_N,
    min_severity: str = "low",
    ui_base_url: str | None = None,
    title: str = DIGEST_HEADER,
) -> SlackMessage:
    """One message summarising many alerts (a backfill): counts by severity and the top ``top_n``.

    Counts include every row given (``info`` too); the top list holds rows at or above
    ``min_severity``, ordered by severity, then magnitude (|z|, cluster score, excursion
    distance), then time. ``window_end`` is exclusive; without a window the rows' span is shown.
    """
    severity_rank(min_severity)  # validates
    kinds = {
        "EWMA anomalies": [_digest_item("ewma", r) for r in anomalies],
        "Coordinated clusters": [_digest_item("cluster", r) for r in clusters],
        "Forecast excursions": [_digest_item("forecast", r) for r in excursions],
    }
    every_item = [item for items in kinds.values() for item in items]
    eligible = [i for i in every_item if i.rank >= severity_rank(min_severity)]
    eligible.sort(key=lambda i: (-i.rank, -i.magnitude, i.minute or datetime.max))
    shown = eligible[: max(top_n, 0)]

    window = _window_label(window_start, window_end, [i.minute for i in every_item])
    count_lines = [f"*Window:* {window}"]
    for label, items in kinds.items():
        if items:
            count_lines.append(f"*{label}:* {len(items)} — {_severity_counts(items)}")
    if len(count_lines) == 1:
        count_lines.append("No alerts in this window.")

    blocks = [_header(title), _section("\n".join(count_lines)), _divider()]
    if shown:
        blocks.append(_section(f"*Top {len(shown)} of {len(eligible)} alerts (severity ≥ {min_severity}):*"))
        lines = [_digest_line(item, ui_base_url) for item in shown]
        blocks.extend(_section(chunk) for chunk in _pack_lines(lines, MAX_SECTION_TEXT))
    if len(eligible) > len(shown):
        blocks.append(_context([f"{len(eligible) - len(shown)} more alert(s) at or above {min_severity} not listed."]))
    links = [
        f"<{_asset_url(ui_base_url, asset)}|{asset}>"
        for asset, items in (
            (DEFAULT_EWMA_ASSET, kinds["EWMA anomalies"]),
            (DEFAULT_CLUSTER_ASSET, kinds["Coordinated clusters"]),
            (DEFAULT_FORECAST_ASSET, kinds["Forecast excursions"]),
        )
        if items and ui_base_url
    ]
    if links:
        blocks.append(_context(["Open in Dagster: " + " · ".join(links)]))

    totals = _severity_counts(every_item) if every_item else "none"
    text = f"{title}: {len(every_item)} alert(s) ({totals}), {window}"
    return _message(text, blocks, f"digest:{window}")


def build_run_failure_message(
    *,
    job_name: str,
    run_id: str,
    error: str | None = None,
    failed_steps: Sequence[str] = (),
    partition: str | None = None,
    ui_base_url: str | None = None,
) -> SlackMessage:
    """A Dagster run failed. ``error`` is redacted of webhook URLs and tokens before use."""
    error_text = redact_secrets(error or "").strip()
    fields = [
        _field("Job", f"`{_escape(job_name)}`"),
        _field("Run ID", f"`{_escape(run_id)}`"),
        _field("Partition", _escape(partition) if partition else "n/a"),
        _field("Failed steps", ", ".join(f"`{_escape(s)}`" for s in failed_steps) or "n/a"),
    ]
    blocks = [_header(f"Dagster run failed: {job_name}"), _divider(), _fields_section(fields)]
    if error_text:
        budget = MAX_SECTION_TEXT - len("*Error:*\n``````")
        blocks.append(_section(f"*Error:*\n```{_truncate(_escape(error_text), budget)}```"))
    if ui_base_url:
        url = f"{ui_base_url.rstrip('/')}/runs/{quote(run_id, safe='')}"
        blocks.append(_section(f"<{url}|Open run {_escape(run_id[:8])} in Dagster>"))
    first_line = error_text.splitlines()[0] if error_text else "no error message"
    text = f"Dagster run {run_id[:8]} of {job_name} failed: {first_line}"
    return _message(text, blocks, f"run_failure:{run_id}")


# --------------------------------------------------------------------------------------------
# Public helpers


def meets_min_severity(severity: str, min_severity: str) -> bool:
    """True if ``severity`` is at or above ``min_severity`` (both in ``schema.SEVERITIES``)."""
    return severity_rank(severity) >= severity_rank(min_severity)


def unit_for_metric(metric: str) -> str:
    """The display unit a metric name carries (``tx_count`` -> tx, ``*_btc`` -> BTC, ...); '' if none."""
    if metric.startswith("tx_count"):
        return "tx"
    for suffix, unit in _UNIT_SUFFIXES:
        if metric.endswith(suffix):
            return unit
    return ""


def partition_key(minute: datetime) -> str:
    """The Dagster minute partition key of ``minute`` (``2025-08-13-00:18``)."""
    return _as_naive_utc(minute).strftime(PARTITION_KEY_FORMAT)


def dagster_partition_url(ui_base_url: str, asset_path: str, minute: datetime) -> str:
    """``{base}/assets/{asset_path}?partition={key}``: the asset partition's page in the Dagster UI."""
    return f"{_asset_url(ui_base_url, asset_path)}?partition={quote(partition_key(minute), safe='-:')}"


def redact_secrets(text: str) -> str:
    """``text`` with Slack webhook secrets, Slack tokens and Anthropic keys replaced by ``***``."""
    text = _WEBHOOK_SECRET.sub(r"\1***", text)
    text = _SLACK_TOKEN.sub("xox*-***", text)
    return _ANTHROPIC_KEY.sub("sk-ant-***", text)


def enforce_block_limits(blocks: Sequence[Mapping[str, Any]]) -> list[dict]:
    """A copy of ``blocks`` that fits Slack's limits, truncating with an ellipsis instead of failing.

    Header text <= 150, section text <= 3,000, <= 10 fields of <= 2,000 chars, <= 10 context
    elements, <= 50 blocks and <= ``MAX_TOTAL_BLOCK_TEXT`` characters of text in all (later
    blocks are dropped for the last two, with a closing note saying how many).
    """
    fitted = [_fit_block(dict(block)) for block in blocks]
    kept: list[dict] = []
    total = 0
    for position, block in enumerate(fitted):
        size = _block_text_size(block)
        is_last = position == len(fitted) - 1
        # Keep one slot free for the omission note unless this is the final block.
        slots = MAX_BLOCKS if is_last else MAX_BLOCKS - 1
        if len(kept) < slots and total + size <= MAX_TOTAL_BLOCK_TEXT:
            kept.append(block)
            total += size
            continue
        omitted = len(fitted) - position
        kept.append(_context([f"{ELLIPSIS} {omitted} more block(s) omitted to fit Slack's message limits."]))
        break
    return kept


# --------------------------------------------------------------------------------------------
# Block primitives


def _message(text: str, blocks: list[dict], key: Any) -> SlackMessage:
    clean_text = _truncate(text, MAX_FALLBACK_TEXT) or "Bitcoin anomaly alert"
    return SlackMessage(text=clean_text, blocks=enforce_block_limits(blocks), key=None if _missing(key) else str(key))


def _header(text: str) -> dict:
    return {"type": "header", "text": {"type": "plain_text", "text": text}}


def _divider() -> dict:
    return {"type": "divider"}


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _fields_section(fields: list[dict]) -> dict:
    return {"type": "section", "fields": fields}


def _field(label: str, value: str) -> dict:
    return {"type": "mrkdwn", "text": f"*{label}:*\n{value}"}


def _context(texts: Iterable[str]) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": t} for t in texts if t]}


def _fit_block(block: dict) -> dict:
    kind = block.get("type")
    if kind == "header":
        block["text"] = {**block["text"], "text": _truncate(block["text"]["text"], MAX_HEADER_TEXT)}
    elif kind == "section":
        if "text" in block:
            block["text"] = {**block["text"], "text": _truncate(block["text"]["text"], MAX_SECTION_TEXT)}
        if "fields" in block:
            fields = [{**f, "text": _truncate(f["text"], MAX_FIELD_TEXT)} for f in block["fields"]]
            if len(fields) > MAX_SECTION_FIELDS:
                omitted = len(fields) - (MAX_SECTION_FIELDS - 1)
                fields = fields[: MAX_SECTION_FIELDS - 1] + [
                    {"type": "mrkdwn", "text": f"{ELLIPSIS} {omitted} more field(s)"}
                ]
            block["fields"] = fields
    elif kind == "context":
        elements = [
            {**e, "text": _truncate(e["text"], MAX_CONTEXT_TEXT)} if "text" in e else e for e in block["elements"]
        ]
        if len(elements) > MAX_CONTEXT_ELEMENTS:
            elements = elements[: MAX_CONTEXT_ELEMENTS - 1] + [{"type": "mrkdwn", "text": ELLIPSIS}]
        block["elements"] = elements
    return block


def _block_text_size(block: Mapping[str, Any]) -> int:
    size = 0
    if isinstance(block.get("text"), Mapping):
        size += len(block["text"].get("text", ""))
    for item in block.get("fields", ()):
        size += len(item.get("text", ""))
    for item in block.get("elements", ()):
        size += len(item.get("text", "")) if isinstance(item, Mapping) else 0
    return size


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def _pack_lines(lines: list[str], limit: int) -> list[str]:
    """Join lines into chunks of at most ``limit`` characters (a single longer line is truncated)."""
    chunks: list[str] = []
    current = ""
    for line in (_truncate(line, limit) for line in lines):
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) <= limit:
            current = candidate
        else:
            chunks.append(current)
            current = line
    if current:
        chunks.append(current)
    return chunks


# --------------------------------------------------------------------------------------------
# Content helpers


def _summary_blocks(row: Mapping[str, Any]) -> list[dict]:
    summary = row.get("summary")
    if _missing(summary) or not str(summary).strip():
        return []
    first_line = str(summary).strip().splitlines()[0].strip()
    source = row.get("explanation_source")
    if not _missing(source) and str(source) == EXPLANATION_SOURCE_RULES:
        label = "Summary (rule-based)"
    elif not _missing(source) and str(source).strip():
        label = f"Summary ({_escape(str(source))})"
    else:
        label = "Summary"
    return [_section(f"*{label}:* {_escape(_truncate(first_line, SUMMARY_MAX_CHARS))}")]


def _link_blocks(ui_base_url: str | None, asset_path: str, minute: datetime | None) -> list[dict]:
    if not ui_base_url or minute is None:
        return []
    url = dagster_partition_url(ui_base_url, asset_path, minute)
    return [_section(f"<{url}|Open {asset_path} partition {partition_key(minute)} in Dagster>")]


def _asset_url(ui_base_url: str, asset_path: str) -> str:
    return f"{ui_base_url.rstrip('/')}/assets/{asset_path.strip('/')}"


def _provenance(row: Mapping[str, Any]) -> str:
    parts = [f"rule: `{_escape(_text(row.get('rule')))}`", f"time basis: {_escape(_text(row.get('time_basis')))}"]
    mode = row.get("mode")
    if not _missing(mode):
        parts.append(f"mode: {_escape(str(mode))}")
    blocks = _block_list(row.get("block_ids"))
    if blocks:
        parts.append("blocks: " + ", ".join(blocks[:5]) + (f" (+{len(blocks) - 5})" if len(blocks) > 5 else ""))
    return " · ".join(parts)


def _value_vs_baseline(value: Any, baseline: Any, unit: str) -> str:
    text = f"{_quantity(value, unit)} vs {_quantity(baseline, unit)}"
    if not (_missing(value) or _missing(baseline)):
        deviation = float(value) - float(baseline)
        sign = "+" if deviation >= 0 else "-"
        text += f" ({sign}{_quantity(abs(deviation), unit)})"
    return text


@dataclass(frozen=True)
class _DigestItem:
    kind: str
    row: Mapping[str, Any]
    rank: int
    magnitude: float
    minute: datetime | None


def _digest_item(kind: str, row: Mapping[str, Any]) -> _DigestItem:
    severity = _text(row.get("severity"))
    rank = severity_rank(severity) if severity in SEVERITIES else -1
    magnitude_field = {"ewma": "z_score", "cluster": "score", "forecast": "excess_half_widths"}[kind]
    magnitude = row.get(magnitude_field)
    magnitude = 0.0 if _missing(magnitude) else abs(float(magnitude))
    minute = _as_naive_utc(row.get("ds" if kind == "forecast" else "minute"))
    return _DigestItem(kind, row, rank, magnitude, minute)


def _digest_line(item: _DigestItem, ui_base_url: str | None) -> str:
    row = item.row
    when = _minute_label(item.minute, with_zone=False)
    severity = _text(row.get("severity"))
    if item.kind == "ewma":
        metric = _text(row.get("metric"))
        unit = unit_for_metric(metric)
        body = (
            f"`{_escape(metric)}` {_quantity(row.get('value'), unit)} vs {_quantity(row.get('baseline'), unit)} "
            f"(z {_fixed(row.get('z_score'), 2)})"
        )
        asset, link_minute = DEFAULT_EWMA_ASSET, item.minute
    elif item.kind == "cluster":
        body = (
            f"`{_escape(_text(row.get('pattern')))}` {_count(row.get('tx_count'))} tx, score "
            f"{_fixed(row.get('score'), 2)} vs {_fixed(row.get('baseline'), 2)}"
        )
        asset, link_minute = DEFAULT_CLUSTER_ASSET, item.minute
    else:
        body = (
            f"actual {_quantity(row.get('y'), 'tx/min')} outside [{_quantity(row.get('yhat_lower'), '')}, "
            f"{_quantity(row.get('yhat_upper'), '')}] ({_fixed(row.get('excess_half_widths'), 2)} half-widths)"
        )
        asset, link_minute = DEFAULT_FORECAST_ASSET, _as_naive_utc(row.get("cutoff"))
    line = f"• `{when}` *{_escape(severity)}* {body}"
    summary = row.get("summary")
    if not _missing(summary) and str(summary).strip():
        line += f" — {_escape(_truncate(str(summary).strip().splitlines()[0], 200))}"
    if ui_base_url and link_minute is not None:
        line += f" <{dagster_partition_url(ui_base_url, asset, link_minute)}|open>"
    return line


def _severity_counts(items: Sequence[_DigestItem]) -> str:
    counts = {s: 0 for s in reversed(SEVERITIES)}
    other = 0
    for item in items:
        severity = _text(item.row.get("severity"))
        if severity in counts:
            counts[severity] += 1
        else:
            other += 1
    text = " · ".join(f"{n} {s}" for s, n in counts.items())
    return text + (f" · {other} unknown" if other else "")


def _window_label(start: datetime | None, end: datetime | None, minutes: Sequence[datetime | None]) -> str:
    if start is not None and end is not None:
        return f"{_minute_label(_as_naive_utc(start), with_zone=False)} → {_minute_label(_as_naive_utc(end))} (end exclusive)"
    known = [m for m in minutes if m is not None]
    if not known:
        return "n/a"
    return f"{_minute_label(min(known), with_zone=False)} → {_minute_label(max(known))} (rows' span)"


def _as_naive_utc(value: Any) -> datetime | None:
    """``value`` (datetime, pandas Timestamp or ISO string) as a naive UTC datetime; None if missing."""
    if _missing(value):
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp, got {type(value).__name__} {value!r}")
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def _minute_label(minute: datetime | None, *, with_zone: bool = True) -> str:
    if minute is None:
        return "n/a"
    return minute.strftime("%Y-%m-%d %H:%M") + (" UTC" if with_zone else "")


def _seed_time(value: Any) -> str:
    """The tutorial showed the CSV's ``window_start`` text (``2025-05-14 18:14:00``)."""
    minute = _as_naive_utc(value)
    return "n/a" if minute is None else minute.strftime("%Y-%m-%d %H:%M:%S")


def _seed_value(value: Any) -> str:
    if _missing(value):
        return "n/a"
    number = float(value)
    return str(int(number)) if number.is_integer() else str(value)


def _count(value: Any) -> str:
    if _missing(value):
        return "n/a"
    number = float(value)
    return f"{int(number):,}" if number.is_integer() else f"{number:,.1f}"


def _fixed(value: Any, places: int) -> str:
    if _missing(value):
        return "n/a"
    number = float(value)
    if math.isinf(number):
        return "∞" if number > 0 else "-∞"
    return f"{number:.{places}f}"


def _quantity(value: Any, unit: str) -> str:
    if _missing(value):
        return "n/a"
    number = float(value)
    if unit == "BTC":
        text = f"{number:,.8f}".rstrip("0").rstrip(".")
    elif number.is_integer():
        text = f"{int(number):,}"
    else:
        text = f"{number:,.2f}"
    return f"{text} {unit}" if unit else text


def _short_hash(value: Any) -> str:
    return "n/a" if _missing(value) else f"{str(value)[:16]}..."


def _block_list(value: Any) -> list[str]:
    if value is None or isinstance(value, (str, bytes)):
        return []
    try:
        return [str(int(v)) for v in value]
    except TypeError:
        return []


def _text(value: Any) -> str:
    return "n/a" if _missing(value) else str(value)


def _escape(text: str) -> str:
    """Escape Slack mrkdwn control characters in data-derived text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _missing(value: Any) -> bool:
    """None, NaN, NaT and pd.NA count as missing (pd.NA refuses bool(), hence the TypeError)."""
    if value is None:
        return True
    if isinstance(value, (str, bytes, list, tuple, dict)):
        return False
    try:
        return bool(value != value)
    except (TypeError, ValueError):
        return True
