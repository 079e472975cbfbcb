"""The explanation contract: system prompt, JSON schema, user message, validation and the stored row.

Both explainers (Claude in ``claude_explainer``, the offline rules in ``explain_rules``) produce
the same structured answer to the tutorial's four forensic questions:

1. Is it statistically unusual?            -> ``statistically_unusual`` + ``unusual_reason``
2. Which suspicious patterns might it fit? -> ``suspected_patterns`` (closed enum)
3. Which legitimate causes could explain it? -> ``legitimate_causes``
4. Flag for investigation, and why?        -> ``flag_for_investigation`` + ``flag_rationale``

plus ``confidence``, ``insufficient_evidence`` (explicitly allowed, unlike the tutorial's prompt),
a one-line ``summary`` for alerts and a short ``narrative`` to paste into a case.

Bump ``PROMPT_VERSION`` whenever the system prompt, the schema or the user-message layout changes:
it is part of the cache key, so stored answers to an older prompt are not reused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Callable, Container, Mapping

import pyarrow as pa

from btc_anomaly_assets.common.schema import Column
from btc_anomaly_assets.common.utc import utc_now
from btc_anomaly_assets.explain.evidence import KIND_CLUSTER, KIND_EWMA, canonical_json

PROMPT_VERSION = "forensic-v2"  # v2: one explanation per incident (all its findings and transactions)

SUSPECTED_PATTERNS = (
    "mixing_coinjoin",
    "dusting",
    "peel_chain",
    "fund_dispersion",
    "consolidation",
    "exchange_batching",
    "fee_market_congestion",
    "large_transfer",
    "other",
    "none",
)
CONFIDENCE_LEVELS = ("low", "medium", "high")
SOURCE_CLAUDE = "claude"
SOURCE_RULES = "rules"
STATUS_OK = "ok"
STATUS_FAILED = "failed"

ANSWER_FIELDS = (
    "statistically_unusual",
    "unusual_reason",
    "suspected_patterns",
    "legitimate_causes",
    "flag_for_investigation",
    "flag_rationale",
    "confidence",
    "insufficient_evidence",
    "summary",
    "narrative",
)

# The subset of JSON Schema that the Messages API's structured outputs accept: objects with
# `additionalProperties: false` and every property required, enums, arrays; no length limits
# (those are stated in the descriptions and the system prompt instead).
EXPLANATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "statistically_unusual": {
            "type": "boolean",
            "description": "Q1: is the measured value unusual against the baseline it was compared with?",
        },
        "unusual_reason": {
            "type": "string",
            "description": "Q1: why, citing the z-score or pattern score and the baseline, in the units given.",
        },
        "suspected_patterns": {
            "type": "array",
            "items": {"type": "string", "enum": list(SUSPECTED_PATTERNS)},
            "description": "Q2: suspicious behaviour patterns the facts are consistent with; ['none'] if none.",
        },
        "legitimate_causes": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Q3: plausible legitimate explanations, most likely first (short phrases).",
        },
        "flag_for_investigation": {
            "type": "boolean",
            "description": "Q4: should an analyst open a case?",
        },
        "flag_rationale": {"type": "string", "description": "Q4: why or why not, in one or two sentences."},
        "confidence": {"type": "string", "enum": list(CONFIDENCE_LEVELS)},
        "insufficient_evidence": {
            "type": "boolean",
            "description": "true when the facts given cannot support a conclusion; say what is missing.",
        },
        "summary": {"type": "string", "description": "One line (at most 160 characters) for an alert."},
        "narrative": {
            "type": "string",
            "description": "At most 120 words, neutral, pasteable into a case file; cites the anomaly id and tx hashes given.",
        },
    },
    "required": list(ANSWER_FIELDS),
    "additionalProperties": False,
}

SYSTEM_PROMPT = """\
You are a careful Bitcoin on-chain forensic analyst supporting a compliance team. Automated \
detectors have flagged one anomaly; you receive the facts they computed and answer four questions \
in the JSON format requested:
1. Is this activity statistically unusual compared with the baseline it was measured against?
2. Which suspicious behaviour patterns might it match (mixing/CoinJoin, dusting, peel chain, fund \
dispersion, consolidation, exchange batching, fee-market congestion, large transfer)?
3. Which plausible legitimate causes could explain it?
4. Should it be flagged for further investigation, and why or why not?

Rules:
- Use only the facts given and general knowledge of how Bitcoin works. Never invent transaction \
hashes, addresses, amounts or counts; cite only the hashes provided.
- Do not attribute activity to any named entity (exchange, service, wallet provider, person, \
group or country). We have no address labels. Generic categories ("an exchange's batched \
withdrawals") are acceptable as hypotheses.
- If the facts cannot support a conclusion, set insufficient_evidence to true, keep confidence low \
and state what data would settle it (for example input/output addresses, parent transactions, \
mempool data). Saying the evidence is insufficient is correct and expected when it is.
- Amounts are given in BTC (with USD where a rate was available) and fee rates in sat/vB. Do not \
convert units yourself and never report satoshi as BTC or USD.
- Respect the time basis. Under block time every transaction of a block shares the block \
timestamp, so per-minute counts and totals jump when a block arrives and are zero in most minutes; \
a count spike in a block-time minute usually means a large block or several blocks, not a burst \
of user activity. Under first_seen time the figures reflect mempool arrivals.
- A CoinJoin is a privacy technique, not evidence of wrongdoing by itself; consolidations and \
batched payouts are routine wallet and exchange operations. Flag only when the facts show \
something an analyst should look at (for example an extreme value far above its baseline, a \
dusting campaign, or a sharp change in mixing volume).
- Calibrate confidence: high only when the statistics are strong (for example |z| of 6 or more on \
a meaningful time basis) and the pattern evidence is specific; low for weak or ambiguous signals.

Context for judging figures: blocks arrive about every 10 minutes and hold about 2,000-4,000 \
transactions; a typical transaction has about 2 inputs and 3 outputs; fee rates below 1 sat/vB \
are normal since Bitcoin Core 28.3 lowered the default relay floor to 0.1 sat/vB; dust outputs \
are a few hundred satoshi (below about 0.00001 BTC).

Write the summary as one line of at most 160 characters and the narrative in at most 120 words, \
neutral in tone, mentioning the anomaly id so it can be pasted into a case file."""


class ExplanationFormatError(ValueError):
    """An answer does not match ``EXPLANATION_SCHEMA`` (wrong type, missing field, unknown enum)."""


# ---------------------------------------------------------------------------------------------
# User message
# ---------------------------------------------------------------------------------------------


def format_quantity(q: Mapping[str, Any] | None) -> str:
    """'1,250 BTC (about $147,500,000)', '12.35 sat/vB', 'not available'."""
    if not q:
        return "not available"
    value, unit = q["value"], q["unit"]
    if unit == "BTC":
        text = f"{_btc(value)} BTC"
    elif unit == "USD":
        text = _usd(value)
    elif unit in ("sat/vB",):
        text = f"{value:,.2f} sat/vB"
    else:
        text = f"{_plain(value)} {unit}"
    if "usd" in q:
        text += f" (about {_usd(q['usd'])})"
    return text


def _btc(value: float) -> str:
    """Satoshi precision below 1 BTC, fewer decimals for large amounts (readability, not rounding of data)."""
    decimals = 8 if abs(value) < 1 else 4 if abs(value) < 1_000 else 2
    return _trim(f"{value:,.{decimals}f}")


def _trim(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text


def _usd(value: float) -> str:
    sign = "-" if value < 0 else ""
    value = abs(value)
    return f"{sign}${value:,.0f}" if value >= 100 else f"{sign}${value:,.2f}"


def _plain(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4g}" if abs(value) < 1 else f"{value:,.2f}"


def _z(z: float | None) -> str:
    return "not scored" if z is None else f"{z:+.2f}"


def render_user_message(evidence: Mapping[str, Any]) -> str:
    """The facts of one anomaly as an analyst would read them (units, baseline, time basis)."""
    lines = [
        f"Anomaly id: {evidence['anomaly_id']}",
        f"Detector: {_detector_name(evidence)}; severity {evidence['severity']} (rule: {evidence.get('rule') or 'n/a'})",
        f"Minute (UTC): {evidence['minute_utc']}",
        f"Time basis: {evidence.get('time_basis_meaning')}",
    ]
    if evidence.get("block_ids"):
        lines.append("Blocks in the minute: " + ", ".join(f"{b:,}" for b in evidence["block_ids"]))
    if evidence.get("mode") and evidence["mode"] != "default":
        lines.append(f"Detector mode: {evidence['mode']} (reproduces the original tutorial's rule; weaker statistics)")
    lines.append("")
    if evidence["anomaly_kind"] == KIND_EWMA:
        lines += _ewma_lines(evidence)
    elif evidence["anomaly_kind"] == KIND_CLUSTER:
        lines += _cluster_lines(evidence)
    elif evidence["anomaly_kind"] == "incident":
        from btc_anomaly_assets.explain.incident_evidence import incident_lines

        lines += incident_lines(evidence)
    else:
        raise ValueError(f"unknown anomaly_kind {evidence['anomaly_kind']!r} in evidence {evidence['anomaly_id']}")
    price = evidence.get("usd_per_btc")
    lines.append(
        f"USD conversion: at ${price:,.0f} per BTC (the day's rate)" if price else "USD conversion: no rate available"
    )
    hashes = evidence.get("sample_tx_hashes") or []
    lines.append("Sample transactions: " + (", ".join(hashes) if hashes else "none provided"))
    lines += [
        "",
        "Answer the four questions in the requested JSON format. If these facts cannot support a "
        "conclusion, set insufficient_evidence to true and say what is missing.",
    ]
    return "\n".join(lines)


def _detector_name(evidence: Mapping[str, Any]) -> str:
    return {KIND_EWMA: "EWMA baseline on a per-minute metric", KIND_CLUSTER: "coordinated-transaction pattern"}.get(
        evidence["anomaly_kind"], "incident (EWMA metrics, coordinated patterns and forecast excursions of the same minutes)")


def _ewma_lines(e: Mapping[str, Any]) -> list[str]:
    per_block = " per block" if e.get("per_block") else ""
    scored = ", scored on log10" if e.get("scored_on") == "log10" else ""
    lines = [f"Metric: {e.get('base_metric') or e['metric']} ({e['metric_description']}){scored}; unit: {e['unit']}"]
    if e.get("per_block"):
        lines.append(f"The minute held {len(e['block_ids'])} blocks; the detector compares values per block.")
    lines += [
        f"Observed this minute{per_block}: {format_quantity(e.get('observed'))}",
        f"Baseline (EWMA of the preceding {'block-minutes' if e.get('time_basis') == 'block' else 'minutes'}): "
        f"{format_quantity(e.get('baseline'))}",
        f"Difference from baseline: {format_quantity(e.get('deviation'))}",
    ]
    if e.get("scored_on") == "log10":
        lines.append(
            "Scored on log10 of the value (amounts and fee rates are heavy-tailed): the baseline is a "
            f"geometric average and one standard unit of spread is a factor of {_opt(e.get('scale_factor'))}x"
        )
    else:
        lines.append(f"Spread used to standardise (scale): {format_quantity(e.get('scale'))}")
    lines.append(f"z-score: {_z(e.get('z_score'))} (negative means below the baseline)")
    if e.get("ratio_to_baseline") is not None:
        lines.append(f"Observed / baseline: {e['ratio_to_baseline']:,.2f}x")
    if e.get("tx_count_in_minute") is not None:
        lines.append(f"Transactions in the minute: {e['tx_count_in_minute']:,}")
    return lines


def _cluster_lines(e: Mapping[str, Any]) -> list[str]:
    score, base = e.get("pattern_score"), e.get("pattern_baseline")
    return [
        f"Pattern: {e['pattern']} ({e['pattern_description']})",
        f"Member transactions: {e.get('member_tx_count')}",
        f"Mean inputs per member: {_opt(e.get('avg_input_count'))}; mean outputs per member: {_opt(e.get('avg_output_count'))}",
        f"Total value of the members: {format_quantity(e.get('total_value'))}",
        f"Pattern score: {_opt(score)} = members / expected members; expected {_opt(base)} from the "
        "pattern's usual share of transactions in past blocks or minutes (a score of 1 is usual)",
    ]


def _opt(value: float | None) -> str:
    return "not available" if value is None else _plain(value)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def parse_answer_text(text: str) -> dict[str, Any]:
    """Parse the model's JSON text and validate it; raises ExplanationFormatError."""
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExplanationFormatError(f"answer is not valid JSON ({exc.msg} at char {exc.pos})") from None
    return validate_answer(answer)


def validate_answer(answer: Any) -> dict[str, Any]:
    """Check an answer against ``EXPLANATION_SCHEMA`` and return a normalized copy.

    Normalization: duplicate patterns are dropped, and ``none`` is dropped when real patterns
    are also listed (the two cannot both hold); an empty list becomes ``['none']``.
    """
    if not isinstance(answer, dict):
        raise ExplanationFormatError(f"answer must be a JSON object, got {type(answer).__name__}")
    missing = [f for f in ANSWER_FIELDS if f not in answer]
    if missing:
        raise ExplanationFormatError(f"answer is missing field(s) {missing}")
    extra = sorted(set(answer) - set(ANSWER_FIELDS))
    if extra:
        raise ExplanationFormatError(f"answer has unexpected field(s) {extra}")
    for name in ("statistically_unusual", "flag_for_investigation", "insufficient_evidence"):
        _expect(answer, name, bool)
    for name in ("unusual_reason", "flag_rationale", "summary", "narrative"):
        _expect(answer, name, str)
    if not answer["summary"].strip():
        raise ExplanationFormatError("answer field 'summary' is empty")
    patterns = _string_list(answer, "suspected_patterns")
    unknown = [p for p in patterns if p not in SUSPECTED_PATTERNS]
    if unknown:
        raise ExplanationFormatError(f"answer field 'suspected_patterns' has unknown value(s) {unknown}")
    if answer["confidence"] not in CONFIDENCE_LEVELS:
        raise ExplanationFormatError(f"answer field 'confidence' must be one of {CONFIDENCE_LEVELS}, got {answer['confidence']!r}")
    normalized = dict(answer)
    normalized["suspected_patterns"] = _normalize_patterns(patterns)
    normalized["legitimate_causes"] = [c.strip() for c in _string_list(answer, "legitimate_causes") if c.strip()]
    return normalized


def _expect(answer: Mapping[str, Any], name: str, kind: type) -> None:
    if not isinstance(answer[name], kind):
        raise ExplanationFormatError(f"answer field {name!r} must be {kind.__name__}, got {type(answer[name]).__name__}")


def _string_list(answer: Mapping[str, Any], name: str) -> list[str]:
    value = answer[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ExplanationFormatError(f"answer field {name!r} must be a list of strings")
    return value


def _normalize_patterns(patterns: list[str]) -> list[str]:
    unique = list(dict.fromkeys(patterns))
    real = [p for p in unique if p != "none"]
    return real or ["none"]


# ---------------------------------------------------------------------------------------------
# Stored rows (btc.anomaly_explanations, keyed by anomaly_id)
# ---------------------------------------------------------------------------------------------

ANOMALY_EXPLANATION_COLUMNS: list[Column] = [
    Column("anomaly_id", pa.string(), "The explained row's id: ewma_anomalies.anomaly_id or coordinated_clusters.cluster_id (table key)"),
    Column("minute", pa.timestamp("us"), "Start of the UTC minute of the anomaly (partition column)"),
    Column("anomaly_kind", pa.string(), "`ewma_metric` or `coordinated_cluster`"),
    Column("subject", pa.string(), "The EWMA metric or the cluster pattern that was explained"),
    Column("severity", pa.string(), "Severity of the explained anomaly: low | medium | high"),
    Column("statistically_unusual", pa.bool_(), "Q1: unusual against its baseline (NULL when status = failed)"),
    Column("unusual_reason", pa.string(), "Q1: why"),
    Column("suspected_patterns", pa.list_(pa.string()), "Q2: patterns from a closed list (mixing_coinjoin, dusting, ...; `none`)"),
    Column("legitimate_causes", pa.list_(pa.string()), "Q3: plausible legitimate causes"),
    Column("flag_for_investigation", pa.bool_(), "Q4: open a case?"),
    Column("flag_rationale", pa.string(), "Q4: why or why not"),
    Column("confidence", pa.string(), "low | medium | high"),
    Column("insufficient_evidence", pa.bool_(), "The facts cannot support a conclusion"),
    Column("summary", pa.string(), "One line for alerts"),
    Column("narrative", pa.string(), "Short text to paste into a case"),
    Column("source", pa.string(), "`claude` or `rules` (offline rule-based explainer)"),
    Column("model_id", pa.string(), "Model that answered (e.g. claude-haiku-4-5-20251001) or `rules-v1`"),
    Column("prompt_version", pa.string(), "Version of the prompt + schema (rules: the rule-set version)"),
    Column("status", pa.string(), "`ok` or `failed` (answer truncated, malformed or refused; see `error`)"),
    Column("error", pa.string(), "Why the explanation failed (NULL when ok); never contains secrets"),
    Column("api_calls", pa.int64(), "Billed Messages API requests spent on this row (0 for rules)"),
    Column("batch_id", pa.string(), "Message Batch id when answered through the Batches API, else NULL"),
    Column("input_tokens", pa.int64(), "Input tokens billed, cache writes and reads included (0 for rules)"),
    Column("output_tokens", pa.int64(), "Output tokens billed (0 for rules)"),
    Column("estimated_cost_usd", pa.float64(), "Estimated cost from the built-in price table (batch = half price); NULL if the model has no price"),
    Column("content_hash", pa.string(), "Cache key: sha256 of the evidence + model + prompt version"),
    Column("evidence_json", pa.string(), "The exact facts the explainer was given (canonical JSON)"),
    Column("written_at", pa.timestamp("us"), "When the row was produced, naive UTC"),
]


def utc_now_naive() -> datetime:
    return utc_now().replace(microsecond=0)


def explanation_row(
    evidence: Mapping[str, Any],
    *,
    answer: Mapping[str, Any] | None,
    source: str,
    model_id: str,
    prompt_version: str,
    content_hash: str,
    status: str = STATUS_OK,
    error: str | None = None,
    api_calls: int = 0,
    batch_id: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    estimated_cost_usd: float | None = 0.0,
    written_at: datetime | None = None,
) -> dict[str, Any]:
    """One ``ANOMALY_EXPLANATION_COLUMNS`` row; answer fields are NULL for a failed explanation."""
    if status == STATUS_OK and answer is None:
        raise ValueError("an ok explanation row needs an answer")
    if status == STATUS_FAILED and not error:
        raise ValueError("a failed explanation row needs an error")
    minute = datetime.strptime(evidence["minute_utc"], "%Y-%m-%dT%H:%M:%SZ")
    row: dict[str, Any] = {
        "anomaly_id": evidence["anomaly_id"],
        "minute": minute,
        "anomaly_kind": evidence["anomaly_kind"],
        "subject": evidence.get("metric") or evidence.get("pattern") or evidence.get("phenomenon"),
        "severity": evidence["severity"],
    }
    for name in ANSWER_FIELDS:
        row[name] = answer[name] if answer is not None else None
    row.update(
        {
            "source": source,
            "model_id": model_id,
            "prompt_version": prompt_version,
            "status": status,
            "error": error,
            "api_calls": int(api_calls),
            "batch_id": batch_id,
            "input_tokens": int(input_tokens),
            "output_tokens": int(output_tokens),
            "estimated_cost_usd": estimated_cost_usd,
            "content_hash": content_hash,
            "evidence_json": canonical_json(evidence),
            "written_at": written_at or utc_now_naive(),
        }
    )
    return row


# ---------------------------------------------------------------------------------------------
# What a run reports (both explainers), for asset metadata
# ---------------------------------------------------------------------------------------------


@dataclass
class RunStats:
    """Counters for one explanation run; ``as_metadata()`` is flat and JSON-able (no secrets)."""

    source: str
    model_id: str
    prompt_version: str
    candidates: int = 0
    cached: int = 0
    explained_ok: int = 0
    failed: int = 0
    skipped_call_cap: int = 0
    skipped_token_budget: int = 0
    in_flight_batch: int = 0
    api_calls: int = 0
    http_retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    estimated_cost_usd: float = 0.0
    batches_created: int = 0
    batches_collected: int = 0
    batch_items_unfinished: int = 0
    notes: list[str] = field(default_factory=list)

    def add_row(self, row: Mapping[str, Any]) -> None:
        if row["status"] == STATUS_OK:
            self.explained_ok += 1
        else:
            self.failed += 1

    def add_usage(self, input_tokens: int, output_tokens: int, cost_usd: float | None) -> None:
        self.input_tokens += int(input_tokens)
        self.output_tokens += int(output_tokens)
        if cost_usd is not None:
            self.estimated_cost_usd = round(self.estimated_cost_usd + cost_usd, 6)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def as_metadata(self) -> dict[str, Any]:
        data = asdict(self)
        data["notes"] = "; ".join(self.notes)
        return data


def cache_lookup(already_explained: Callable[[str], bool] | Container[str] | None) -> Callable[[str], bool]:
    """Normalise the caller's cache (a set of content hashes, or a predicate) into a predicate."""
    if already_explained is None:
        return lambda content_hash: False
    if callable(already_explained):
        return already_explained
    return lambda content_hash: content_hash in already_explained
