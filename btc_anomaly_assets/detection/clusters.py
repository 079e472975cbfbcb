"""Typed structural patterns of transactions per minute (``btc.coordinated_clusters``).

``detect_coordinated_clusters(raw, start, end, config)`` takes raw transactions
(RAW_TRANSACTION_COLUMNS) for ``[start - CLUSTER_LOOKBACK_MINUTES, end)`` and returns one row per
cluster (COORDINATED_CLUSTER_COLUMNS) for the minutes of ``[start, end)``. The rows before ``start``
only inform the baselines; a minute's clusters do not depend on where the window starts.

Default mode
------------
Every non-coinbase transaction gets at most one *shape* (from counts and totals, the only per-output
information the raw layer has; see ``btc_anomaly_assets.detection.coinjoin``), first match wins:

1. ``coinjoin``: Whirlpool exactly (n = n in 5..8, output_total = n x pool) or the many-party shape
   (>= 50 inputs and outputs, outputs/inputs in [0.5, 2], mean output >= 5,000 sat: Wasabi 2 rounds).
2. ``dust_fanout``: >= 5 outputs with a mean below 1,000 sat (e.g. 500 outputs x 330 sat).
3. ``fan_in_consolidation``: inputs / outputs >= 5 (mempool.space).
4. ``fan_out_batch``: inputs / outputs <= 0.2 (mempool.space).

Independently, ``similar_burst`` groups transactions that are structurally identical: the same input
count, output count and output total (exact satoshi), i.e. one sender's bot or script.

A cluster is the transactions of one minute with one shape (or one similar-burst signature). Its
``score`` compares it with the pattern's *own* baseline over the past units of the lookback (a block
for time basis ``block``, a minute for ``first_seen``): the pooled share of transactions with that
shape (all past members over all past transactions; for a signature, which is absent from most
blocks, the mean per-unit share) times the minute's transactions (at least 1) is the expected
number, and ``score = members / expected``. Burst severity: 2.5 / 4 / 8 for low / medium / high
once 4 past units exist; an ordinary block's dozens of batch payouts and consolidations score
0.1-3.5 and stay below medium. A shape group is also at least medium when it holds
``burst_count_ratio`` (8) times the usual number of members per unit (median count) and its
score is at least low: blocks are full, so per-block counts matter as much as shares (see
``ClusterConfig`` for the measurements behind both rules).

The final severity is the larger of that burst severity and the pattern's label severity
(``LabelSeverities``: who reads the output decides whether a CoinJoin is alerted; see there).
Consolidation and batch clusters need ``burst_min_members`` (20) members to be reported at all,
similar bursts likewise; a CoinJoin or a dust fan-out is reported from one member.

Detection v2 (``ClusterConfig.v1()`` turns it off): the members rule starts from the shipped
priors instead of a warm-up, every shape group is also scored on its mass (``detection.mass``),
similar bursts are scored against the largest identical group per unit (``detection.similar``),
and each row records ``baseline_source``, ``evidence`` and ``evidence_score``.

Seed-parity mode
----------------
The tutorial's ``detect_coordinated_attacks.py``: per minute, the rows with >= 10 inputs or >= 10
outputs (coinbase included, as the tutorial did not filter it), kept when there are >= 2. On real
blocks this flags every minute that holds a block.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from btc_anomaly_assets.common.schema import (
    COORDINATED_CLUSTER_COLUMNS,
    SATOSHI_PER_BTC,
    column_names,
    single_time_basis,
)
from btc_anomaly_assets.common.windows import minute_window
from btc_anomaly_assets.detection.coinjoin import (
    dust_fanout_from_totals,
    large_coinjoin_from_counts,
    whirlpool_from_totals,
)
from btc_anomaly_assets.detection.config import (
    MODE_SEED_PARITY,
    PATTERN_COINJOIN,
    PATTERN_DUST_FANOUT,
    PATTERN_FAN_IN,
    PATTERN_FAN_OUT,
    PATTERN_SEED,
    PATTERN_SIMILAR_BURST,
    ClusterConfig,
    max_severity,
)
from btc_anomaly_assets.detection.mass import (
    EVIDENCE_LABEL,
    EVIDENCE_MEMBERS,
    PATTERN_MASS_EVIDENCE,
    Evidence,
    History,
    MemberPrior,
    UnitMass,
    Verdict,
    member_burst,
    minute_mass,
    reference_high,
    score_against,
    strongest,
    unit_mass,
)
from btc_anomaly_assets.detection.priors import combine_sources
from btc_anomaly_assets.detection.similar import SIGNATURE_COLUMNS, Signatures, similar_verdicts
from btc_anomaly_assets.detection.units import Units, build_units, past_units

DEFAULT_CLUSTER_CONFIG = ClusterConfig()
# Minutes of raw transactions before a window's start that the default mode reads.
CLUSTER_LOOKBACK_MINUTES = DEFAULT_CLUSTER_CONFIG.lookback_minutes
CLUSTER_OUTPUT_NAMES = column_names(COORDINATED_CLUSTER_COLUMNS)
SHAPE_PATTERNS = (PATTERN_COINJOIN, PATTERN_DUST_FANOUT, PATTERN_FAN_IN, PATTERN_FAN_OUT)
__all__ = ["SIGNATURE_COLUMNS", "classify_shapes", "cluster_id", "detect_coordinated_clusters"]

CLUSTER_INPUT_COLUMNS = (
    "hash",
    "minute",
    "time_basis",
    "block_id",
    "is_coinbase",
    "input_count",
    "output_count",
    "output_total",
    "weight",
)


class ClusterInputError(ValueError):
    """The raw transactions or the window cannot be clustered; the message says what and where."""


def cluster_id(mode: str, pattern: str, minute: datetime, member_hashes) -> str:
    """Stable id: sha1 of ``mode|pattern|YYYY-MM-DDTHH:MM|`` + the sorted member hashes joined by ``,``."""
    stamp = pd.Timestamp(minute).strftime("%Y-%m-%dT%H:%M")
    members = ",".join(sorted(member_hashes))
    return hashlib.sha1(f"{mode}|{pattern}|{stamp}|{members}".encode()).hexdigest()


def classify_shapes(raw: pd.DataFrame, config: ClusterConfig | None = None) -> pd.Series:
    """The shape pattern of every row (``None`` for coinbase rows and rows with no shape), first match
    wins in the order coinjoin, dust_fanout, fan_in_consolidation, fan_out_batch."""
    config = config or DEFAULT_CLUSTER_CONFIG
    inputs = raw["input_count"].to_numpy(dtype=np.int64)
    outputs = raw["output_count"].to_numpy(dtype=np.int64)
    totals = raw["output_total"].to_numpy(dtype=np.int64)
    coinbase = raw["is_coinbase"].to_numpy(dtype=bool)
    coinjoin = np.fromiter(
        (
            whirlpool_from_totals(i, o, t)
            or large_coinjoin_from_counts(
                i,
                o,
                t,
                min_inputs=config.coinjoin_min_inputs,
                min_outputs=config.coinjoin_min_outputs,
                output_input_ratio=config.coinjoin_output_input_ratio,
                min_mean_output_sat=config.coinjoin_min_mean_output_sat,
            )
            for i, o, t in zip(inputs, outputs, totals)
        ),
        dtype=bool,
        count=len(raw),
    )
    dust = np.fromiter(
        (
            dust_fanout_from_totals(o, t, dust_sat=config.dust_output_sat, min_outputs=config.dust_min_outputs)
            for o, t in zip(outputs, totals)
        ),
        dtype=bool,
        count=len(raw),
    )
    safe_outputs = np.where(outputs > 0, outputs, 1)
    ratio = inputs / safe_outputs
    shapes = np.select(
        [coinbase, coinjoin, dust, (outputs > 0) & (ratio >= config.consolidation_ratio), (outputs > 0) & (ratio <= config.batch_ratio)],
        [None, PATTERN_COINJOIN, PATTERN_DUST_FANOUT, PATTERN_FAN_IN, PATTERN_FAN_OUT],
        default=None,
    )
    return pd.Series(shapes, index=raw.index, dtype=object)


def detect_coordinated_clusters(
    raw: pd.DataFrame,
    start: datetime,
    end: datetime,
    config: ClusterConfig | None = None,
) -> pd.DataFrame:
    """Clusters of the minutes in ``[start, end)`` (COORDINATED_CLUSTER_COLUMNS), possibly zero rows.

    ``raw`` holds RAW_TRANSACTION_COLUMNS rows for ``[start - lookback, end)``
    (``CLUSTER_LOOKBACK_MINUTES``); rows at or after ``end`` are ignored. Raises ``ClusterInputError``
    for a bad window, missing columns or rows that mix time bases.
    """
    config = config or DEFAULT_CLUSTER_CONFIG
    start, end = minute_window(start, end, ClusterInputError)
    frame = _prepare(raw, end)
    if config.mode == MODE_SEED_PARITY:
        rows = _seed_rows(frame, start, end, config)
    else:
        rows = _default_rows(frame, start, config)
    return _to_output_frame(rows)


# --- input handling -------------------------------------------------------------------------


def _prepare(raw: pd.DataFrame, end: pd.Timestamp) -> pd.DataFrame:
    if not isinstance(raw, pd.DataFrame):
        raise ClusterInputError(f"raw must be a pandas DataFrame, got {type(raw).__name__}")
    missing = [c for c in CLUSTER_INPUT_COLUMNS if c not in raw.columns]
    if missing:
        raise ClusterInputError(f"raw transactions are missing columns {missing}")
    minute = pd.to_datetime(raw["minute"])
    if minute.dt.tz is not None:
        minute = minute.dt.tz_convert("UTC").dt.tz_localize(None)
    frame = raw.assign(minute=minute.astype("datetime64[us]"))
    frame = frame[frame["minute"] < end].reset_index(drop=True)
    frame.attrs["time_basis"] = single_time_basis(frame["time_basis"], "raw transactions (window and lookback)", ClusterInputError)
    return frame


# --- default mode ---------------------------------------------------------------------------


def _default_rows(frame: pd.DataFrame, start: pd.Timestamp, config: ClusterConfig) -> list[dict]:
    basis = frame.attrs.get("time_basis")
    frame = frame[~frame["is_coinbase"].astype(bool)]
    # Sorted by minute (stable), each minute is one slice: per-minute work no longer scans the whole window.
    frame = frame.iloc[np.argsort(frame["minute"].to_numpy(), kind="stable")].reset_index(drop=True)
    if frame.empty:
        return []
    shapes = classify_shapes(frame, config).to_numpy()
    units = build_units(frame, basis)
    lookback_us = int(timedelta(minutes=config.lookback_minutes) / timedelta(microseconds=1))
    minutes_us = frame["minute"].to_numpy().astype("datetime64[us]").astype(np.int64)
    start_us = int(start.asm8.astype("datetime64[us]").astype(np.int64))
    masses = unit_mass(units.row_unit, units.unit_keys.size, frame, shapes, SHAPE_PATTERNS)
    signatures = Signatures(frame, units, config.dust_output_sat)
    weights = frame["weight"].to_numpy(dtype=float)

    rows: list[dict] = []
    for minute_us in np.unique(minutes_us[minutes_us >= start_us]):
        first, last = np.searchsorted(minutes_us, [minute_us, minute_us + 1])
        minute_rows = frame.iloc[first:last]
        minute_shapes = shapes[first:last]
        context = _MinuteContext(
            past=past_units(units, int(minute_us), lookback_us),
            size=int(last - first),
            units=int(np.unique(units.row_unit[first:last]).size),
            weight=float(weights[first:last].sum()),
        )
        for pattern in SHAPE_PATTERNS:
            selected = minute_shapes == pattern
            if not selected.any():
                continue
            members = minute_rows[selected]
            verdict = _shape_verdict(pattern, members, context, units, masses, basis, config)
            if verdict is not None:
                rows.append(_summary_row(config.mode, pattern, members, verdict, basis))
        for members, verdict in similar_verdicts(minute_rows, signatures.codes[first:last], signatures, units, context.past,
                                                 context.size, context.units, basis, config):
            rows.append(_summary_row(config.mode, PATTERN_SIMILAR_BURST, members, verdict, basis))
    return rows


@dataclass(frozen=True)
class _MinuteContext:
    past: np.ndarray  # indices of the past units of the lookback
    size: int  # non-coinbase transactions in the minute
    units: int  # blocks (or 1 minute) in the minute
    weight: float  # their total weight, WU


def _member_prior(config: ClusterConfig, basis: str | None, pattern: str) -> MemberPrior | None:
    if config.priors is None:
        return None
    share = config.priors.pooled_share(basis, pattern)
    level = config.priors.evidence(basis, pattern, EVIDENCE_MEMBERS)
    if share is None or level is None:
        return None
    # The members rule trusts history from burst_warmup_units on (v1's warm-up), so after it the
    # rule is exactly v1; before it, the prior fills in instead of a blind warm-up.
    return MemberPrior(share=share, usual=level.median, full_units=config.burst_warmup_units)


def _shape_verdict(pattern: str, members: pd.DataFrame, context: _MinuteContext, units: Units, masses: UnitMass,
                   basis: str | None, config: ClusterConfig) -> Verdict | None:
    """Members and mass evidence of one shape group; None for a consolidation or batch group too
    small to report (fewer than ``burst_min_members`` and no mass evidence at least low)."""
    count = len(members)
    past = context.past
    history = History(masses.per_pattern[pattern]["members"][past], units.unit_sizes[past])
    burst = member_burst(count, context.size, context.units, history, signature=False,
                         expected_floor=config.burst_expected_floor, config=config,
                         prior=_member_prior(config, basis, pattern))
    evidence = [Evidence(EVIDENCE_MEMBERS, float(count), burst.score, burst.severity, burst.source, burst.note)]
    if config.mass_scoring and config.priors is not None:
        values = minute_mass(members, context.weight, context.units)
        for name in PATTERN_MASS_EVIDENCE[pattern]:
            level = config.priors.evidence(basis, pattern, name)
            reference = reference_high(level, masses.history(pattern, name, past), config.full_units(basis),
                                       config.mass_tail_k)
            scored = score_against(name, values[name], reference, config, "")
            if scored is None:
                continue
            if count < config.mass_min_members and scored.severity != "info":
                scored = replace(scored, severity="info",
                                 note=f"{scored.note} (a mass storm needs {config.mass_min_members} members)")
            evidence.append(scored)
    small = pattern in (PATTERN_FAN_IN, PATTERN_FAN_OUT) and count < config.burst_min_members
    if small and all(e.severity == "info" for e in evidence[1:]):
        return None
    label, label_note = _label(pattern, members, config)
    best = strongest(evidence)
    severity = max_severity(label, best.severity)
    if severity == best.severity and best.severity != "info":
        kind = "burst" if best.name == EVIDENCE_MEMBERS else "mass"
        rule = f"{label_note}; {kind} {best.severity}: {best.note}"
        evidence_name, evidence_score = best.name, best.score
    else:
        rule = f"{label_note}; label severity {label}; burst: {burst.note}"
        evidence_name, evidence_score = EVIDENCE_LABEL, float("nan")
    mass_notes = [e.note for e in evidence[1:] if e is not best]
    if mass_notes:
        rule += "; mass: " + ", ".join(mass_notes)
    source = combine_sources(*(e.source for e in evidence))
    return Verdict(severity, rule, burst.score, burst.baseline, source, evidence_name, evidence_score)


def _label(pattern: str, members: pd.DataFrame, config: ClusterConfig) -> tuple[str, str]:
    """The pattern's label severity and the rule text saying what matched."""
    if pattern == PATTERN_COINJOIN:
        return config.labels.coinjoin, (
            f"coinjoin shape: whirlpool n=n in 5..8 at a pool denomination, or >= {config.coinjoin_min_inputs} inputs and "
            f">= {config.coinjoin_min_outputs} outputs, outputs/inputs in {list(config.coinjoin_output_input_ratio)}, "
            f"mean output >= {config.coinjoin_min_mean_output_sat} sat"
        )
    if pattern == PATTERN_DUST_FANOUT:
        largest = int(members["output_count"].max())
        mass = largest >= config.dust_mass_outputs
        severity = config.labels.dust_fanout if mass else config.labels.dust_small
        size = "mass" if mass else "small"
        return severity, (
            f"dust fan-out ({size}): >= {config.dust_min_outputs} outputs with mean < {config.dust_output_sat} sat; "
            f"largest has {largest} outputs (mass from {config.dust_mass_outputs})"
        )
    if pattern == PATTERN_FAN_IN:
        return config.labels.fan_in_consolidation, f"consolidation: inputs/outputs >= {config.consolidation_ratio:g}"
    if pattern == PATTERN_FAN_OUT:
        return config.labels.fan_out_batch, f"batch payout: inputs/outputs <= {config.batch_ratio:g}"
    raise AssertionError(f"no label rule for pattern {pattern!r}")


def _summary_row(mode: str, pattern: str, members: pd.DataFrame, verdict: Verdict, basis) -> dict:
    minute = pd.Timestamp(members["minute"].iloc[0])
    hashes = sorted(str(h) for h in members["hash"])
    largest = members.sort_values(["output_total", "hash"], ascending=[False, True], kind="stable").iloc[0]
    block_ids = sorted({int(b) for b in members["block_id"] if int(b) >= 0})
    return {
        "cluster_id": cluster_id(mode, pattern, minute, hashes),
        "minute": minute,
        "pattern": pattern,
        "tx_count": len(members),
        "avg_input_count": float(members["input_count"].mean()),
        "avg_output_count": float(members["output_count"].mean()),
        "total_value_btc": float(members["output_total"].sum()) / SATOSHI_PER_BTC,
        "sample_tx_hash": str(largest["hash"]),
        "member_hashes": hashes,
        "score": float(verdict.score),
        "baseline": float(verdict.baseline),
        "severity": verdict.severity,
        "rule": verdict.rule,
        "mode": mode,
        "time_basis": basis,
        "block_ids": block_ids,
        "baseline_source": verdict.source,
        "evidence": verdict.evidence,
        "evidence_score": float(verdict.evidence_score),
    }


# --- seed-parity mode -----------------------------------------------------------------------


def _seed_rows(frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, config: ClusterConfig) -> list[dict]:
    basis = frame.attrs.get("time_basis")
    window = frame[frame["minute"] >= start]
    flagged = window[(window["input_count"] >= config.seed_min_io) | (window["output_count"] >= config.seed_min_io)]
    rows = []
    for _, members in flagged.groupby("minute", sort=True):
        if len(members) < config.seed_min_flagged:
            continue
        rule = (
            f"seed: >= {config.seed_min_flagged} transactions with >= {config.seed_min_io} inputs "
            f"or >= {config.seed_min_io} outputs in the minute"
        )
        rows.append(
            _summary_row(
                config.mode,
                PATTERN_SEED,
                members,
                Verdict(config.seed_flag_severity, rule, float(len(members)), float(config.seed_min_flagged), None, None,
                        float("nan")),
                basis,
            )
        )
    return rows


# --- output ---------------------------------------------------------------------------------


def _to_output_frame(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=CLUSTER_OUTPUT_NAMES)
    out["minute"] = pd.to_datetime(out["minute"]).astype("datetime64[us]")
    out["tx_count"] = out["tx_count"].astype(np.int64)
    for name in ("avg_input_count", "avg_output_count", "total_value_btc", "score", "baseline"):
        out[name] = out[name].astype(float)
    out["evidence_score"] = out["evidence_score"].astype(float)
    for name in ("member_hashes", "block_ids", "time_basis", "baseline_source", "evidence"):
        out[name] = out[name].astype(object)
    return out.sort_values(["minute", "pattern", "cluster_id"], kind="stable").reset_index(drop=True)
