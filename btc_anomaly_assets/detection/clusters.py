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

Seed-parity mode
----------------
The tutorial's ``detect_coordinated_attacks.py``: per minute, the rows with >= 10 inputs or >= 10
outputs (coinbase included, as the tutorial did not filter it), kept when there are >= 2. On real
blocks this flags every minute that holds a block.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from btc_anomaly_assets.common.schema import (
    COORDINATED_CLUSTER_COLUMNS,
    SATOSHI_PER_BTC,
    TIME_BASIS_BLOCK,
    column_names,
    severity_rank,
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

DEFAULT_CLUSTER_CONFIG = ClusterConfig()
# Minutes of raw transactions before a window's start that the default mode reads.
CLUSTER_LOOKBACK_MINUTES = DEFAULT_CLUSTER_CONFIG.lookback_minutes
CLUSTER_OUTPUT_NAMES = column_names(COORDINATED_CLUSTER_COLUMNS)
SHAPE_PATTERNS = (PATTERN_COINJOIN, PATTERN_DUST_FANOUT, PATTERN_FAN_IN, PATTERN_FAN_OUT)
SIGNATURE_COLUMNS = ("input_count", "output_count", "output_total")

CLUSTER_INPUT_COLUMNS = (
    "hash",
    "minute",
    "time_basis",
    "block_id",
    "is_coinbase",
    "input_count",
    "output_count",
    "output_total",
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


@dataclass(frozen=True)
class _Units:
    """Past comparison units (blocks or minutes): the minute each is in and its transaction count."""

    row_unit: np.ndarray  # index into the unit arrays, per transaction row
    unit_keys: np.ndarray  # sorted distinct unit keys
    unit_minutes: np.ndarray  # int64 us, per unit
    unit_sizes: np.ndarray  # non-coinbase transactions per unit


def _units(frame: pd.DataFrame, basis: str | None) -> _Units:
    minutes_us = frame["minute"].to_numpy().astype("datetime64[us]").astype(np.int64)
    if basis == TIME_BASIS_BLOCK:
        keys = frame["block_id"].to_numpy(dtype=np.int64)
    else:
        keys = minutes_us
    table = pd.DataFrame({"key": keys, "minute": minutes_us})
    grouped = table.groupby("key", sort=True)
    unit_keys = grouped.size().index.to_numpy()
    return _Units(
        row_unit=np.searchsorted(unit_keys, keys),
        unit_keys=unit_keys,
        unit_minutes=grouped["minute"].min().to_numpy(),
        unit_sizes=grouped.size().to_numpy(),
    )


def _past_units(units: _Units, minute_us: int, lookback_us: int) -> np.ndarray:
    """Indices of units whose minute is in ``[minute - lookback, minute)``."""
    return np.flatnonzero((units.unit_minutes >= minute_us - lookback_us) & (units.unit_minutes < minute_us))


def _unit_counts(units: _Units, rows: np.ndarray) -> np.ndarray:
    """Per unit, how many rows are selected by ``rows`` (a boolean mask or row indices)."""
    return np.bincount(units.row_unit[rows], minlength=units.unit_keys.size)


@dataclass(frozen=True)
class _Burst:
    score: float
    baseline: float
    severity: str
    note: str


@dataclass(frozen=True)
class _History:
    """A pattern's members and the transactions in each past unit of the lookback (aligned arrays)."""

    counts: np.ndarray
    sizes: np.ndarray

    @property
    def units(self) -> int:
        return int(self.counts.size)

    def pooled_share(self) -> float:
        """All past members over all past transactions: big blocks weigh as much as they hold."""
        return float(self.counts.sum() / self.sizes.sum())

    def mean_share(self) -> float:
        return float(np.mean(self.counts / self.sizes))


def _burst(
    members: int,
    minute_size: int,
    minute_units: int,
    history: _History,
    *,
    signature: bool,
    expected_floor: float,
    config: ClusterConfig,
) -> _Burst:
    """Grade ``members`` of a minute with ``minute_size`` transactions in ``minute_units`` units
    against the pattern's ``history`` (see ``ClusterConfig``: share score, and for shapes the count rule)."""
    if history.units == 0:
        return _Burst(float("nan"), float("nan"), "info", "no past units to compare with")
    share, statistic = (history.mean_share(), "mean") if signature else (history.pooled_share(), "pooled")
    expected = max(share * minute_size, expected_floor)
    score = members / expected
    if history.units < config.burst_warmup_units:
        return _Burst(score, expected, "info", f"warm-up: {history.units}/{config.burst_warmup_units} past units")
    if members < config.burst_min_members:
        note = f"{score:.1f}x the expected {expected:.1f}, but a burst needs {config.burst_min_members} members"
        return _Burst(score, expected, "info", note)
    severity = config.burst_thresholds.grade(score)
    note = f"{score:.1f}x the expected {expected:.1f} ({statistic} share {share:.4f} over {history.units} past units)"
    if signature:
        return _Burst(score, expected, severity, note)
    usual = max(float(np.median(history.counts)) * minute_units, expected_floor)
    count_ratio = members / usual
    note += f"; {count_ratio:.1f}x the usual {usual:.1f} per {minute_units} unit(s) (median count)"
    if count_ratio >= config.burst_count_ratio and severity == "low":
        # The share is already unusual (low); this many per unit on top makes it a storm.
        severity = "medium"
        note += f", >= {config.burst_count_ratio:g}x the usual count with a share score >= {config.burst_thresholds.low:g}"
    return _Burst(score, expected, severity, note)


def _default_rows(frame: pd.DataFrame, start: pd.Timestamp, config: ClusterConfig) -> list[dict]:
    basis = frame.attrs.get("time_basis")
    frame = frame[~frame["is_coinbase"].astype(bool)]
    # Sorted by minute (stable), each minute is one slice: per-minute work no longer scans the whole window.
    frame = frame.iloc[np.argsort(frame["minute"].to_numpy(), kind="stable")].reset_index(drop=True)
    if frame.empty:
        return []
    shapes = classify_shapes(frame, config).to_numpy()
    units = _units(frame, basis)
    lookback_us = int(timedelta(minutes=config.lookback_minutes) / timedelta(microseconds=1))
    minutes_us = frame["minute"].to_numpy().astype("datetime64[us]").astype(np.int64)
    start_us = int(start.asm8.astype("datetime64[us]").astype(np.int64))
    shape_unit_counts = {pattern: _unit_counts(units, shapes == pattern) for pattern in SHAPE_PATTERNS}
    signatures = _Signatures(frame, units)

    rows: list[dict] = []
    for minute_us in np.unique(minutes_us[minutes_us >= start_us]):
        first, last = np.searchsorted(minutes_us, [minute_us, minute_us + 1])
        minute_rows = frame.iloc[first:last]
        minute_shapes = shapes[first:last]
        past = _past_units(units, int(minute_us), lookback_us)
        minute_size = int(last - first)
        minute_units = int(np.unique(units.row_unit[first:last]).size)
        for pattern in SHAPE_PATTERNS:
            selected = minute_shapes == pattern
            count = int(selected.sum())
            if count == 0 or (pattern in (PATTERN_FAN_IN, PATTERN_FAN_OUT) and count < config.burst_min_members):
                continue
            burst = _burst(
                count,
                minute_size,
                minute_units,
                _History(shape_unit_counts[pattern][past], units.unit_sizes[past]),
                signature=False,
                expected_floor=config.burst_expected_floor,
                config=config,
            )
            members = minute_rows[selected]
            label, label_note = _label(pattern, members, config)
            rows.append(_cluster_row(config.mode, pattern, members, burst, label, label_note, basis))
        rows.extend(_similar_bursts(minute_rows, signatures.codes[first:last], signatures, units, past, minute_size, basis,
                                    config))
    return rows


class _Signatures:
    """Each row's exact (inputs, outputs, output_total) signature as a code, and per code the rows holding it."""

    def __init__(self, frame: pd.DataFrame, units: _Units):
        self.codes = frame.groupby(list(SIGNATURE_COLUMNS), sort=False).ngroup().to_numpy()
        self._order = np.argsort(self.codes, kind="stable")
        self._bounds = np.searchsorted(self.codes[self._order], np.arange(self.codes.max() + 2))  # frame is not empty
        self._units = units

    def unit_counts(self, code: int) -> np.ndarray:
        """Per unit, how many rows carry this signature."""
        return _unit_counts(self._units, self._order[self._bounds[code]:self._bounds[code + 1]])


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


def _similar_bursts(
    minute_rows: pd.DataFrame,
    minute_codes: np.ndarray,
    signatures: _Signatures,
    units: _Units,
    past: np.ndarray,
    minute_size: int,
    basis: str | None,
    config: ClusterConfig,
) -> list[dict]:
    """One cluster per exact (inputs, outputs, output_total) signature with enough members in the minute."""
    codes, counts = np.unique(minute_codes, return_counts=True)
    rows = []
    for code, count in zip(codes.tolist(), counts.tolist()):  # output order is set by _to_output_frame
        if count < config.burst_min_members:
            continue
        members = minute_rows[minute_codes == code]
        signature = tuple(int(members[c].iloc[0]) for c in SIGNATURE_COLUMNS)
        history = _History(signatures.unit_counts(code)[past], units.unit_sizes[past])
        burst = _burst(
            count, minute_size, 1, history, signature=True, expected_floor=config.similar_expected_floor, config=config
        )
        inputs, outputs, total = signature
        note = f"identical structure: {inputs} inputs, {outputs} outputs, output_total {total} sat"
        if total < config.dust_output_sat * outputs and severity_rank(burst.severity) > severity_rank(config.dust_valued_burst_cap):
            # Dust-valued look-alikes (inscription and token mints) land in most blocks; see ClusterConfig.
            note += f"; dust-valued (mean output < {config.dust_output_sat} sat), capped at {config.dust_valued_burst_cap}"
            burst = _Burst(burst.score, burst.baseline, config.dust_valued_burst_cap, burst.note)
        rows.append(
            _cluster_row(config.mode, PATTERN_SIMILAR_BURST, members, burst, config.labels.similar_burst, note, basis)
        )
    return rows


def _cluster_row(
    mode: str, pattern: str, members: pd.DataFrame, burst: _Burst, label: str, label_note: str, basis: str | None
) -> dict:
    severity = max_severity(label, burst.severity)
    if severity == burst.severity and burst.severity != "info":
        rule = f"{label_note}; burst {burst.severity}: {burst.note}"
    else:
        rule = f"{label_note}; label severity {label}; burst: {burst.note}"
    return _summary_row(mode, pattern, members, burst.score, burst.baseline, severity, rule, basis)


def _summary_row(
    mode: str, pattern: str, members: pd.DataFrame, score: float, baseline: float, severity: str, rule: str, basis
) -> dict:
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
        "score": float(score),
        "baseline": float(baseline),
        "severity": severity,
        "rule": rule,
        "mode": mode,
        "time_basis": basis,
        "block_ids": block_ids,
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
                float(len(members)),
                float(config.seed_min_flagged),
                config.seed_flag_severity,
                rule,
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
    for name in ("member_hashes", "block_ids", "time_basis"):
        out[name] = out[name].astype(object)
    return out.sort_values(["minute", "pattern", "cluster_id"], kind="stable").reset_index(drop=True)
