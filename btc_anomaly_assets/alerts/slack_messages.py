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

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from btc_anomaly_assets.alerts import block_kit as bk
from btc_anomaly_assets.alerts import formatting as fmt
from btc_anomaly_assets.alerts.block_kit import MAX_SECTION_TEXT, SlackMessage
from btc_anomaly_assets.common.redaction import redact_secrets
from btc_anomaly_assets.common.schema import SEVERITIES, severity_rank

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
    minute = fmt.as_naive_utc(row.get("minute"))
    if seed_parity:
        blocks = [
            bk.header(SEED_EWMA_HEADER),
            bk.divider(),
            bk.fields_section(
                [
                    bk.field("Time", fmt.seed_time(row.get("minute"))),
                    bk.field("Tx Count", fmt.seed_value(row.get("tx_count"))),
                    bk.field("Z-Score", fmt.fixed(row.get("z_score"), 2)),
                ]
            ),
            bk.context([EWMA_CONTEXT]),
        ]
        return bk.message(SEED_EWMA_TEXT, blocks, row.get("anomaly_id"))

    metric = fmt.text(row.get("metric"))
    unit = unit_for_metric(metric)
    severity = fmt.text(row.get("severity"))
    blocks = [
        bk.header(EWMA_HEADER),
        bk.divider(),
        bk.fields_section(
            [
                bk.field("Time", fmt.minute_label(minute)),
                bk.field("Tx Count", fmt.count(row.get("tx_count"))),
                bk.field("Z-Score", fmt.fixed(row.get("z_score"), 2)),
                bk.field("Severity", severity),
                bk.field("Metric", f"`{fmt.escape(metric)}`"),
                bk.field("Value vs baseline", _value_vs_baseline(row.get("value"), row.get("baseline"), unit)),
            ]
        ),
        *_summary_blocks(row),
        *_link_blocks(ui_base_url, asset_path, minute),
        bk.context([EWMA_CONTEXT, _provenance(row)]),
    ]
    text = (
        f"[{severity}] Bitcoin anomaly in {metric}: {fmt.quantity(row.get('value'), unit)} vs baseline "
        f"{fmt.quantity(row.get('baseline'), unit)} (z {fmt.fixed(row.get('z_score'), 2)}) at {fmt.minute_label(minute)}"
    )
    return bk.message(text, blocks, row.get("anomaly_id"))


def build_coordination_message(
    row: Mapping[str, Any],
    *,
    ui_base_url: str | None = None,
    seed_parity: bool = False,
    asset_path: str = DEFAULT_CLUSTER_ASSET,
) -> SlackMessage:
    """One coordinated-activity cluster (a ``COORDINATED_CLUSTER_COLUMNS`` row, plus optional summary)."""
    minute = fmt.as_naive_utc(row.get("minute"))
    common_fields = [
        bk.field("Tx Count", fmt.seed_value(row.get("tx_count")) if seed_parity else fmt.count(row.get("tx_count"))),
        bk.field("Avg Inputs", fmt.fixed(row.get("avg_input_count"), 1)),
        bk.field("Avg Outputs", fmt.fixed(row.get("avg_output_count"), 1)),
        bk.field("Sample Tx", fmt.short_hash(row.get("sample_tx_hash"))),
    ]
    if seed_parity:
        blocks = [
            bk.header(SEED_COORDINATION_HEADER),
            bk.divider(),
            bk.fields_section([bk.field("Time", fmt.seed_time(row.get("minute"))), *common_fields]),
            bk.context([COORDINATION_CONTEXT]),
        ]
        return bk.message(SEED_COORDINATION_TEXT, blocks, row.get("cluster_id"))

    pattern = fmt.text(row.get("pattern"))
    severity = fmt.text(row.get("severity"))
    blocks = [
        bk.header(COORDINATION_HEADER),
        bk.divider(),
        bk.fields_section(
            [
                bk.field("Time", fmt.minute_label(minute)),
                *common_fields,
                bk.field("Severity", severity),
                bk.field("Pattern", f"`{fmt.escape(pattern)}`"),
                bk.field("Score vs baseline", f"{fmt.fixed(row.get('score'), 2)} vs {fmt.fixed(row.get('baseline'), 2)}"),
                bk.field("Total value", fmt.quantity(row.get("total_value_btc"), "BTC")),
            ]
        ),
        *_summary_blocks(row),
        *_link_blocks(ui_base_url, asset_path, minute),
        bk.context([COORDINATION_CONTEXT, _provenance(row)]),
    ]
    text = (
        f"[{severity}] Coordinated activity ({pattern}): {fmt.count(row.get('tx_count'))} transactions, "
        f"score {fmt.fixed(row.get('score'), 2)} vs baseline {fmt.fixed(row.get('baseline'), 2)} at {fmt.minute_label(minute)}"
    )
    return bk.message(text, blocks, row.get("cluster_id"))


def build_forecast_excursion_message(
    row: Mapping[str, Any],
    *,
    ui_base_url: str | None = None,
    asset_path: str = DEFAULT_FORECAST_ASSET,
) -> SlackMessage:
    """An actual outside the forecast interval (a row of ``forecast.interval_excursions``)."""
    minute = fmt.as_naive_utc(row.get("ds"))
    cutoff = fmt.as_naive_utc(row.get("cutoff"))
    series = fmt.text(row.get("series"))
    severity = fmt.text(row.get("severity"))
    unit = "tx/min"
    interval = f"[{fmt.quantity(row.get('yhat_lower'), '')}, {fmt.quantity(row.get('yhat_upper'), '')}] {unit}"
    blocks = [
        bk.header(FORECAST_HEADER),
        bk.divider(),
        bk.fields_section(
            [
                bk.field("Time", fmt.minute_label(minute)),
                bk.field("Actual", fmt.quantity(row.get("y"), unit)),
                bk.field("Forecast", fmt.quantity(row.get("yhat"), unit)),
                bk.field("Interval", interval),
                bk.field("Severity", severity),
                bk.field(
                    "Outside by",
                    f"{fmt.fixed(row.get('excess_half_widths'), 2)} half-widths {fmt.text(row.get('direction'))}",
                ),
                bk.field("Series", f"`{fmt.escape(series)}`"),
                bk.field("Forecast origin", f"{fmt.minute_label(cutoff)} (step {fmt.seed_value(row.get('step'))})"),
            ]
        ),
        *_link_blocks(ui_base_url, asset_path, cutoff),
        bk.context(
            [
                "The actual value fell outside the forecast's prediction interval: an independent "
                "signal from the EWMA detector.",
                f"model: {fmt.escape(fmt.text(row.get('model')))} · time basis: {fmt.escape(fmt.text(row.get('time_basis')))}",
            ]
        ),
    ]
    text = (
        f"[{severity}] {series} {fmt.quantity(row.get('y'), unit)} outside forecast interval {interval} "
        f"at {fmt.minute_label(minute)}"
    )
    key = f"forecast:{series}:{fmt.minute_label(cutoff)}:{fmt.minute_label(minute)}"
    return bk.message(text, blocks, key)


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

    blocks = [bk.header(title), bk.section("\n".join(count_lines)), bk.divider()]
    if shown:
        blocks.append(bk.section(f"*Top {len(shown)} of {len(eligible)} alerts (severity ≥ {min_severity}):*"))
        lines = [_digest_line(item, ui_base_url) for item in shown]
        blocks.extend(bk.section(chunk) for chunk in bk.pack_lines(lines, MAX_SECTION_TEXT))
    if len(eligible) > len(shown):
        blocks.append(bk.context([f"{len(eligible) - len(shown)} more alert(s) at or above {min_severity} not listed."]))
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
        blocks.append(bk.context(["Open in Dagster: " + " · ".join(links)]))

    totals = _severity_counts(every_item) if every_item else "none"
    text = f"{title}: {len(every_item)} alert(s) ({totals}), {window}"
    return bk.message(text, blocks, f"digest:{window}")


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
        bk.field("Job", f"`{fmt.escape(job_name)}`"),
        bk.field("Run ID", f"`{fmt.escape(run_id)}`"),
        bk.field("Partition", fmt.escape(partition) if partition else "n/a"),
        bk.field("Failed steps", ", ".join(f"`{fmt.escape(s)}`" for s in failed_steps) or "n/a"),
    ]
    blocks = [bk.header(f"Dagster run failed: {job_name}"), bk.divider(), bk.fields_section(fields)]
    if error_text:
        budget = MAX_SECTION_TEXT - len("*Error:*\n``````")
        blocks.append(bk.section(f"*Error:*\n```{bk.truncate(fmt.escape(error_text), budget)}```"))
    if ui_base_url:
        url = f"{ui_base_url.rstrip('/')}/runs/{quote(run_id, safe='')}"
        blocks.append(bk.section(f"<{url}|Open run {fmt.escape(run_id[:8])} in Dagster>"))
    first_line = error_text.splitlines()[0] if error_text else "no error message"
    text = f"Dagster run {run_id[:8]} of {job_name} failed: {first_line}"
    return bk.message(text, blocks, f"run_failure:{run_id}")


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
    return fmt.as_naive_utc(minute).strftime(PARTITION_KEY_FORMAT)


def dagster_partition_url(ui_base_url: str, asset_path: str, minute: datetime) -> str:
    """``{base}/assets/{asset_path}?partition={key}``: the asset partition's page in the Dagster UI."""
    return f"{_asset_url(ui_base_url, asset_path)}?partition={quote(partition_key(minute), safe='-:')}"


# --------------------------------------------------------------------------------------------
# Content helpers


def _summary_blocks(row: Mapping[str, Any]) -> list[dict]:
    summary = row.get("summary")
    if bk.missing(summary) or not str(summary).strip():
        return []
    first_line = str(summary).strip().splitlines()[0].strip()
    source = row.get("explanation_source")
    if not bk.missing(source) and str(source) == EXPLANATION_SOURCE_RULES:
        label = "Summary (rule-based)"
    elif not bk.missing(source) and str(source).strip():
        label = f"Summary ({fmt.escape(str(source))})"
    else:
        label = "Summary"
    return [bk.section(f"*{label}:* {fmt.escape(bk.truncate(first_line, SUMMARY_MAX_CHARS))}")]


def _link_blocks(ui_base_url: str | None, asset_path: str, minute: datetime | None) -> list[dict]:
    if not ui_base_url or minute is None:
        return []
    url = dagster_partition_url(ui_base_url, asset_path, minute)
    return [bk.section(f"<{url}|Open {asset_path} partition {partition_key(minute)} in Dagster>")]


def _asset_url(ui_base_url: str, asset_path: str) -> str:
    return f"{ui_base_url.rstrip('/')}/assets/{asset_path.strip('/')}"


def _provenance(row: Mapping[str, Any]) -> str:
    parts = [f"rule: `{fmt.escape(fmt.text(row.get('rule')))}`", f"time basis: {fmt.escape(fmt.text(row.get('time_basis')))}"]
    mode = row.get("mode")
    if not bk.missing(mode):
        parts.append(f"mode: {fmt.escape(str(mode))}")
    blocks = fmt.block_list(row.get("block_ids"))
    if blocks:
        parts.append("blocks: " + ", ".join(blocks[:5]) + (f" (+{len(blocks) - 5})" if len(blocks) > 5 else ""))
    return " · ".join(parts)


def _value_vs_baseline(value: Any, baseline: Any, unit: str) -> str:
    text = f"{fmt.quantity(value, unit)} vs {fmt.quantity(baseline, unit)}"
    if not (bk.missing(value) or bk.missing(baseline)):
        deviation = float(value) - float(baseline)
        sign = "+" if deviation >= 0 else "-"
        text += f" ({sign}{fmt.quantity(abs(deviation), unit)})"
    return text


@dataclass(frozen=True)
class _DigestItem:
    kind: str
    row: Mapping[str, Any]
    rank: int
    magnitude: float
    minute: datetime | None


def _digest_item(kind: str, row: Mapping[str, Any]) -> _DigestItem:
    severity = fmt.text(row.get("severity"))
    rank = severity_rank(severity) if severity in SEVERITIES else -1
    magnitude_field = {"ewma": "z_score", "cluster": "score", "forecast": "excess_half_widths"}[kind]
    magnitude = row.get(magnitude_field)
    magnitude = 0.0 if bk.missing(magnitude) else abs(float(magnitude))
    minute = fmt.as_naive_utc(row.get("ds" if kind == "forecast" else "minute"))
    return _DigestItem(kind, row, rank, magnitude, minute)


def _digest_line(item: _DigestItem, ui_base_url: str | None) -> str:
    row = item.row
    when = fmt.minute_label(item.minute, with_zone=False)
    severity = fmt.text(row.get("severity"))
    if item.kind == "ewma":
        metric = fmt.text(row.get("metric"))
        unit = unit_for_metric(metric)
        body = (
            f"`{fmt.escape(metric)}` {fmt.quantity(row.get('value'), unit)} vs {fmt.quantity(row.get('baseline'), unit)} "
            f"(z {fmt.fixed(row.get('z_score'), 2)})"
        )
        asset, link_minute = DEFAULT_EWMA_ASSET, item.minute
    elif item.kind == "cluster":
        body = (
            f"`{fmt.escape(fmt.text(row.get('pattern')))}` {fmt.count(row.get('tx_count'))} tx, score "
            f"{fmt.fixed(row.get('score'), 2)} vs {fmt.fixed(row.get('baseline'), 2)}"
        )
        asset, link_minute = DEFAULT_CLUSTER_ASSET, item.minute
    else:
        body = (
            f"actual {fmt.quantity(row.get('y'), 'tx/min')} outside [{fmt.quantity(row.get('yhat_lower'), '')}, "
            f"{fmt.quantity(row.get('yhat_upper'), '')}] ({fmt.fixed(row.get('excess_half_widths'), 2)} half-widths)"
        )
        asset, link_minute = DEFAULT_FORECAST_ASSET, fmt.as_naive_utc(row.get("cutoff"))
    line = f"• `{when}` *{fmt.escape(severity)}* {body}"
    summary = row.get("summary")
    if not bk.missing(summary) and str(summary).strip():
        line += f" — {fmt.escape(bk.truncate(str(summary).strip().splitlines()[0], 200))}"
    if ui_base_url and link_minute is not None:
        line += f" <{dagster_partition_url(ui_base_url, asset, link_minute)}|open>"
    return line


def _severity_counts(items: Sequence[_DigestItem]) -> str:
    counts = {s: 0 for s in reversed(SEVERITIES)}
    other = 0
    for item in items:
        severity = fmt.text(item.row.get("severity"))
        if severity in counts:
            counts[severity] += 1
        else:
            other += 1
    text = " · ".join(f"{n} {s}" for s, n in counts.items())
    return text + (f" · {other} unknown" if other else "")


def _window_label(start: datetime | None, end: datetime | None, minutes: Sequence[datetime | None]) -> str:
    if start is not None and end is not None:
        return f"{fmt.minute_label(fmt.as_naive_utc(start), with_zone=False)} → {fmt.minute_label(fmt.as_naive_utc(end))} (end exclusive)"
    known = [m for m in minutes if m is not None]
    if not known:
        return "n/a"
    return f"{fmt.minute_label(min(known), with_zone=False)} → {fmt.minute_label(max(known))} (rows' span)"
