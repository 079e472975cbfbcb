"""Per-minute EWMA anomaly scores of the minute aggregates (``btc.ewma_anomalies``).

``detect_ewma_anomalies(minute_aggregates, start, end, config)`` returns one row per minute of
``[start, end)`` and scored metric, with the columns of ``EWMA_ANOMALY_COLUMNS``. The caller passes
the aggregates of ``[start - EWMA_LOOKBACK_MINUTES, end)``; rows before ``start`` only inform the
baselines.

Default mode: what is compared with what
----------------------------------------
Each minute's value is compared with an EWMA baseline of *past* observations only, taken from
the ``lookback_minutes`` (6 h) before it. Because nothing older than the lookback is used, a
minute's result is the same whichever run window it falls in, as long as the lookback rows are
provided (causal and window-independent).

What an "observation" is depends on the time basis, so that like is compared with like:

- ``block`` (Blockchair ``time`` = block time): a minute holds either nothing (no block landed)
  or a whole block. Empty minutes are *not* zero traffic, so they are not scored (rule
  ``not_scored:no_block_in_minute``) and do not enter any baseline. A block-minute is compared
  with the previous block-minutes (the EWMA clock ticks per block, not per minute), so a block
  landing is never an anomaly by itself. Additive metrics (transaction count, total value) are
  divided by the minute's block count, so two blocks in one minute are compared per block.
- ``first_seen`` (mempool arrival time): every minute present is an observation, an empty one
  included (zero arrivals is meaningful), and the EWMA ticks per minute. A minute absent from the
  input is missing data, not zero.

The baseline is robust: the past values are first winsorised at median +/- ``winsor_k`` (3)
robust standard deviations (1.4826 x MAD); the exponentially weighted mean of the winsorised values
(span 12 block-minutes, or 10 minutes of arrivals) is the baseline and their weighted standard
deviation is the scale. One past whale therefore cannot hide the next one. The scale has a floor
per metric (``MetricSpec.min_scale``), so z is always finite.

Amounts and fee rates are multiplicative and heavy-tailed, so they are scored on log10 (metrics
``log10_total_value_btc``, ``log10_max_value_btc``, ``log10_*_fee_rate_sat_vb``; all columns of
those rows are in log10 units). The counts are scored linearly: ``tx_count`` and
``fee_outlier_tx_count`` (transactions paying >= 20x the minute's median fee rate; per block under
block time), which finds a few hundred over-paying transactions in a large block where the fee-rate
percentiles cannot.

Severity (the larger of two rules, the ``rule`` column says which fired):

- robust z: 3 / 5 / 8 for low / medium / high, once ``block_warmup`` (6) past block-minutes or
  ``first_seen_warmup`` (30) past minutes exist. Only increases are graded, except the first-seen
  transaction count, where a drop in arrivals is graded too.
- ratio (total value and largest transaction): value / baseline of 5 / 10 / 30 in natural units
  (3 / 4 / 8 for the largest transaction, see ``DEFAULT_METRICS``).
  It needs a single past block for the largest transaction, so a 19,600 BTC transfer among blocks
  whose largest is ~300 BTC is high even during warm-up.

Detection v2: priors
--------------------
With ``EwmaConfig.priors`` (the shipped table, ``detection.priors``), a metric with little or no
history is not left in warm-up: baseline and scale blend the prior's starting level with the
history's fit, the prior weighing ``1 - n / warmup`` for ``n`` past observations, and the row's
``baseline_source`` says ``prior``, ``both`` or ``history``. Fee-rate metrics also grade values
far above the largest real block while the prior weighs in (``MetricSpec.prior_range_margin``).
``EwmaConfig().v1()`` is the same without priors.

Seed-parity mode
----------------
The tutorial's ``track_anomalies.py`` exactly: the non-empty minutes of the input form the series,
``ewma = ewm(alpha=0.3, adjust=True).mean()`` (current point included), ``residual = count - ewma``,
``z = residual / residual.std()`` over the whole series, flag ``|z| > 2``. Not causal by design.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from btc_anomaly_assets.common.schema import (
    EWMA_ANOMALY_COLUMNS,
    TIME_BASIS_BLOCK,
    column_names,
    severity_rank,
    single_time_basis,
)
from btc_anomaly_assets.common.windows import minute_window
from btc_anomaly_assets.detection.config import (
    DIRECTION_UP,
    MODE_SEED_PARITY,
    TRANSFORM_LOG10,
    EwmaConfig,
    MetricSpec,
    max_severity,
)
from btc_anomaly_assets.detection.priors import SOURCE_HISTORY, Level, blend, prior_weight, source_of

DEFAULT_EWMA_CONFIG = EwmaConfig()
# Minutes of minute aggregates before a window's start that the default mode reads.
EWMA_LOOKBACK_MINUTES = DEFAULT_EWMA_CONFIG.lookback_minutes
EWMA_OUTPUT_NAMES = column_names(EWMA_ANOMALY_COLUMNS)
# Scale factor from the median absolute deviation to a normal standard deviation.
MAD_TO_SIGMA = 1.4826
SEED_METRIC = "tx_count"

_REQUIRED_INPUT_COLUMNS = ("minute", "time_basis", "tx_count", "block_count", "block_ids")


class EwmaInputError(ValueError):
    """The minute aggregates or the window cannot be scored; the message says what and where."""


def anomaly_id(mode: str, metric: str, minute: datetime) -> str:
    """Stable id of one output row: sha1 of ``mode|metric|YYYY-MM-DDTHH:MM``."""
    stamp = pd.Timestamp(minute).strftime("%Y-%m-%dT%H:%M")
    return hashlib.sha1(f"{mode}|{metric}|{stamp}".encode()).hexdigest()


def detect_ewma_anomalies(
    minute_aggregates: pd.DataFrame,
    start: datetime,
    end: datetime,
    config: EwmaConfig | None = None,
) -> pd.DataFrame:
    """Score every minute of ``[start, end)``: one row per minute and metric (EWMA_ANOMALY_COLUMNS).

    ``minute_aggregates`` has MINUTE_AGGREGATE_COLUMNS rows for ``[start - lookback, end)``
    (``EWMA_LOOKBACK_MINUTES``; other rows are ignored, missing minutes are treated as missing data).
    Raises ``EwmaInputError`` for a bad window, missing columns, duplicate minutes or a series that
    mixes time bases.
    """
    config = config or DEFAULT_EWMA_CONFIG
    start, end = minute_window(start, end, EwmaInputError)
    frame = _prepare(minute_aggregates, config, end)
    minutes = pd.date_range(start, end, freq="min", inclusive="left").as_unit("us")
    if config.mode == MODE_SEED_PARITY:
        rows = _seed_parity_rows(frame, minutes, config)
    else:
        rows = _default_rows(frame, minutes, config)
    return _to_output_frame(rows)


# --- input handling -------------------------------------------------------------------------


def _prepare(frame: pd.DataFrame, config: EwmaConfig, end: pd.Timestamp) -> pd.DataFrame:
    """Rows before ``end``, sorted by minute, with a naive ``minute``; validates shape and basis."""
    if not isinstance(frame, pd.DataFrame):
        raise EwmaInputError(f"minute_aggregates must be a pandas DataFrame, got {type(frame).__name__}")
    needed = list(_REQUIRED_INPUT_COLUMNS)
    if config.mode != MODE_SEED_PARITY:
        needed += [m.column for m in config.metrics]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise EwmaInputError(f"minute_aggregates is missing columns {missing}")
    minute = pd.to_datetime(frame["minute"])
    if minute.dt.tz is not None:
        minute = minute.dt.tz_convert("UTC").dt.tz_localize(None)
    prepared = frame.assign(minute=minute.astype("datetime64[us]"))
    prepared = prepared[prepared["minute"] < end].sort_values("minute", kind="stable").reset_index(drop=True)
    duplicated = prepared["minute"][prepared["minute"].duplicated()]
    if len(duplicated):
        shown = ", ".join(str(m) for m in duplicated.unique()[:5])
        raise EwmaInputError(f"minute_aggregates has more than one row for minute(s) {shown}")
    prepared.attrs["time_basis"] = single_time_basis(prepared["time_basis"], "minute_aggregates (window and lookback)", EwmaInputError)
    return prepared


# --- default mode ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Series:
    """The observations of one metric: minutes (int64 us) and transformed values (NaN = unusable)."""

    minutes: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class RobustBaseline:
    """EWMA baseline and spread of a history (transformed units) and how many points it used."""

    baseline: float
    scale: float
    count: int


def robust_ewma_baseline(
    history: np.ndarray,
    *,
    alpha: float,
    winsor_k: float,
    min_scale: float,
    relative_min_scale: float = 0.0,
) -> RobustBaseline:
    """Winsorised exponentially weighted mean and standard deviation of ``history`` (oldest first).

    Values are clipped to ``median +/- winsor_k * 1.4826 * MAD`` (the MAD floored like the scale,
    so a constant history still clips outliers), then weighted ``(1 - alpha) ** age`` with age 0
    for the newest. The scale is at least ``min_scale`` and ``relative_min_scale * |baseline|``.
    ``history`` must hold at least one finite value.
    """
    values = np.asarray(history, dtype=float)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("robust_ewma_baseline needs a non-empty, finite history")
    median = float(np.median(values))
    floor = max(min_scale, relative_min_scale * abs(median))
    spread = max(MAD_TO_SIGMA * float(np.median(np.abs(values - median))), floor)
    clipped = np.clip(values, median - winsor_k * spread, median + winsor_k * spread)
    weights = (1.0 - alpha) ** np.arange(values.size - 1, -1, -1, dtype=float)
    baseline = float(np.dot(weights, clipped) / weights.sum())
    variance = float(np.dot(weights, (clipped - baseline) ** 2) / weights.sum())
    scale = max(np.sqrt(variance), min_scale, relative_min_scale * abs(baseline))
    return RobustBaseline(baseline=baseline, scale=float(scale), count=int(values.size))


def _metric_values(frame: pd.DataFrame, spec: MetricSpec, basis: str | None) -> np.ndarray:
    """Observed values of ``spec`` per row in natural units (per block where that applies); NaN in
    a minute without transactions unless the metric ``counts_empty_minutes``."""
    values = pd.to_numeric(frame[spec.column], errors="coerce").to_numpy(dtype=float)
    if not spec.counts_empty_minutes:
        values = np.where(frame["tx_count"].to_numpy() > 0, values, np.nan)
    if spec.per_block and basis == TIME_BASIS_BLOCK:
        blocks = frame["block_count"].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(blocks > 1, values / np.where(blocks > 1, blocks, 1.0), values)
    return values


def _transform(values: np.ndarray, spec: MetricSpec) -> np.ndarray:
    if spec.transform != TRANSFORM_LOG10:
        return values.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)


def _to_natural(value: float, spec: MetricSpec) -> float:
    return float(10.0**value) if spec.transform == TRANSFORM_LOG10 else float(value)


def _observation_mask(frame: pd.DataFrame, basis: str | None) -> np.ndarray:
    """Rows that count as observations: block-minutes for ``block``; every present row otherwise."""
    if basis == TIME_BASIS_BLOCK:
        return frame["tx_count"].to_numpy() > 0
    return np.ones(len(frame), dtype=bool)


def _default_rows(frame: pd.DataFrame, minutes: pd.DatetimeIndex, config: EwmaConfig) -> list[dict]:
    basis = frame.attrs.get("time_basis")
    observed = _observation_mask(frame, basis)
    frame_minutes = frame["minute"].to_numpy().astype("datetime64[us]").astype(np.int64)
    by_minute = {int(m): i for i, m in enumerate(frame_minutes)}
    span = config.block_span if basis == TIME_BASIS_BLOCK else config.first_seen_span
    alpha = 2.0 / (span + 1.0)
    warmup = config.block_warmup if basis == TIME_BASIS_BLOCK else config.first_seen_warmup
    unit = "block-minutes" if basis == TIME_BASIS_BLOCK else "minutes"
    lookback_us = int(timedelta(minutes=config.lookback_minutes) / timedelta(microseconds=1))

    keys = [int(key) for key in minutes.asi8]
    indices = [by_minute.get(key) for key in keys]
    contexts = [_context(frame, index) for index in indices]
    rows: list[dict] = []
    for spec in config.metrics:
        natural = _metric_values(frame, spec, basis)
        transformed = _transform(natural, spec)
        usable = observed & np.isfinite(transformed)
        series = _Series(frame_minutes[usable], transformed[usable])
        for minute, key, index, context in zip(minutes, keys, indices, contexts):
            row = _base_row(config.mode, spec.name, minute, context)
            reason = _not_scored_reason(frame, index, basis, observed, transformed)
            prior = config.priors.metric(basis, spec.name) if config.priors is not None else None
            if reason is None:
                history = _history(series, key, lookback_us)
                if history.size == 0 and prior is None:
                    reason = "no_history"
            if reason is not None:
                row.update(value=_value_for_unscored(natural, transformed, index, spec), rule=f"not_scored:{reason}")
                rows.append(row)
                continue
            fit = None
            if history.size:
                fit = robust_ewma_baseline(
                    history,
                    alpha=alpha,
                    winsor_k=config.winsor_k,
                    min_scale=spec.min_scale,
                    relative_min_scale=spec.relative_min_scale,
                )
            fit, source = _with_prior(fit, prior, spec, warmup)
            row.update(_grade(spec, config, basis, float(natural[index]), float(transformed[index]), fit, warmup, unit,
                              prior is not None))
            if prior is not None and source != SOURCE_HISTORY:
                row.update(_prior_range(spec, float(transformed[index]), prior, row))
            row["baseline_source"] = source
            rows.append(row)
    return rows


def _with_prior(fit: RobustBaseline | None, prior: Level | None, spec: MetricSpec, warmup: int) -> tuple[RobustBaseline, str]:
    """The history's fit blended with the prior's starting level: the prior's weight is
    ``1 - n / warmup`` for ``n`` past observations (so from ``warmup`` on, history alone)."""
    if prior is None:
        return fit, SOURCE_HISTORY
    count = fit.count if fit is not None else 0
    weight = prior_weight(count, warmup)
    baseline = blend(prior.median, fit.baseline if fit is not None else None, weight)
    scale = blend(prior.scale, fit.scale if fit is not None else None, weight)
    scale = max(scale, spec.min_scale, spec.relative_min_scale * abs(baseline))
    return RobustBaseline(baseline=baseline, scale=scale, count=count), source_of(weight)


def _prior_range(spec: MetricSpec, value: float, prior: Level, row: dict) -> dict:
    """The v2 range rule (``MetricSpec.prior_range_margin``): may raise the row's severity."""
    if spec.prior_range_margin is None:
        return {}
    excess = value - prior.high
    severity = "high" if excess >= 2 * spec.prior_range_margin else "medium" if excess >= spec.prior_range_margin else "info"
    if severity_rank(severity) <= severity_rank(row["severity"]):
        return {}
    return {"severity": severity,
            "rule": f"beyond_prior_range:+{excess:.2f}_over_the_largest_real_unit({prior.high:.2f})"}


def metric_observations(minute_aggregates: pd.DataFrame, config: EwmaConfig | None = None) -> dict[MetricSpec, np.ndarray]:
    """Per metric, the values (metric units, oldest first) that count as observations of the
    default mode: what the EWMA's history is made of (used to derive the priors)."""
    config = config or DEFAULT_EWMA_CONFIG
    frame = _prepare(minute_aggregates, config, pd.Timestamp.max.floor("min"))
    basis = frame.attrs.get("time_basis")
    observed = _observation_mask(frame, basis)
    out = {}
    for spec in config.metrics:
        transformed = _transform(_metric_values(frame, spec, basis), spec)
        out[spec] = transformed[observed & np.isfinite(transformed)]
    return out


def _history(series: _Series, minute_key: int, lookback_us: int) -> np.ndarray:
    lo = np.searchsorted(series.minutes, minute_key - lookback_us, side="left")
    hi = np.searchsorted(series.minutes, minute_key, side="left")
    return series.values[lo:hi]


def _not_scored_reason(frame, index, basis, observed, transformed) -> str | None:
    if index is None:
        return "no_data"
    if basis is None:
        return "no_data"
    if not observed[index]:
        return "no_block_in_minute"
    if not np.isfinite(transformed[index]):
        return "no_transactions" if frame["tx_count"].iloc[index] == 0 else "no_value"
    return None


def _value_for_unscored(natural, transformed, index, spec: MetricSpec) -> float:
    if index is None:
        return float("nan")
    return float(transformed[index]) if spec.transform == TRANSFORM_LOG10 else float(natural[index])


def _grade(
    spec: MetricSpec,
    config: EwmaConfig,
    basis: str | None,
    natural_value: float,
    value: float,
    fit: RobustBaseline,
    warmup: int,
    unit: str,
    has_prior: bool = False,
) -> dict:
    deviation = value - fit.baseline
    z = deviation / fit.scale
    direction = spec.direction_for(basis)
    strength = z if direction == DIRECTION_UP else abs(z)
    warm = has_prior or fit.count >= warmup
    z_severity = config.z_thresholds.grade(strength) if warm else "info"
    ratio_severity, ratio = "info", None
    ratio_thresholds = spec.ratio_thresholds or config.ratio_thresholds
    if spec.ratio_rule and (has_prior or fit.count >= spec.ratio_min_history):
        denominator = max(_to_natural(fit.baseline, spec), spec.ratio_denominator_floor)
        ratio = natural_value / denominator
        ratio_severity = ratio_thresholds.grade(ratio)
    severity = max_severity(z_severity, ratio_severity)
    if severity == "info":
        rule = "below_thresholds" if warm else f"warmup:{fit.count}/{warmup}_past_{unit}"
    elif severity_rank(z_severity) >= severity_rank(ratio_severity):
        symbol = "z" if direction == DIRECTION_UP else "|z|"
        rule = f"robust_ewma:{symbol}>={config.z_thresholds.cutoff(z_severity):g}"
    else:
        rule = f"ratio_to_baseline>={ratio_thresholds.cutoff(ratio_severity):g}x({ratio:.1f}x)"
    return {
        "value": value,
        "baseline": fit.baseline,
        "deviation": deviation,
        "scale": fit.scale,
        "z_score": z,
        "severity": severity,
        "rule": rule,
    }


# --- seed-parity mode -----------------------------------------------------------------------


def seed_parity_series(counts: pd.Series, *, alpha: float = 0.3, threshold: float = 2.0) -> pd.DataFrame:
    """The tutorial's EWMA on a series of per-minute counts (index = minute, sorted, empty minutes absent).

    Columns: ``count``, ``ewma`` (``ewm(alpha, adjust=True).mean()``, current point included),
    ``residual``, ``std`` (sample standard deviation of all residuals), ``z_score``
    (``residual / std``; NaN when the series has no spread) and ``is_anomaly`` (``|z| > threshold``).
    """
    counts = counts.astype(float)
    ewma = counts.ewm(alpha=alpha, adjust=True).mean()
    residual = counts - ewma
    std = residual.std()
    z = residual / std if np.isfinite(std) and std > 0 else pd.Series(np.nan, index=counts.index)
    return pd.DataFrame(
        {"count": counts, "ewma": ewma, "residual": residual, "std": std, "z_score": z, "is_anomaly": z.abs() > threshold}
    )


def _seed_parity_rows(frame: pd.DataFrame, minutes: pd.DatetimeIndex, config: EwmaConfig) -> list[dict]:
    non_empty = frame[frame["tx_count"] > 0]
    counts = pd.Series(non_empty["tx_count"].to_numpy(dtype=float), index=non_empty["minute"].to_numpy())
    scored = seed_parity_series(counts, alpha=config.seed_alpha, threshold=config.seed_z_threshold)
    by_minute = {pd.Timestamp(m): i for i, m in enumerate(frame["minute"])}
    rows = []
    for minute in minutes:
        index = by_minute.get(pd.Timestamp(minute))
        row = _base_row(config.mode, SEED_METRIC, minute, _context(frame, index))
        if index is None or frame["tx_count"].iloc[index] == 0:
            row.update(value=0.0 if index is not None else float("nan"), rule="not_scored:empty_minute_not_in_seed_series")
            rows.append(row)
            continue
        point = scored.loc[frame["minute"].iloc[index]]
        row.update(value=float(point["count"]), baseline=float(point["ewma"]), deviation=float(point["residual"]))
        if not np.isfinite(point["z_score"]):
            row.update(rule="not_scored:seed_series_has_no_spread")
        else:
            flagged = bool(point["is_anomaly"])
            row.update(
                scale=float(point["std"]),
                z_score=float(point["z_score"]),
                severity=config.seed_flag_severity if flagged else "info",
                rule=f"seed:|z|{'>' if flagged else '<='}{config.seed_z_threshold:g}",
            )
        rows.append(row)
    return rows


# --- output ---------------------------------------------------------------------------------


def _context(frame: pd.DataFrame, index: int | None) -> dict:
    if index is None:
        return {"time_basis": None, "tx_count": 0, "block_ids": []}
    basis = frame["time_basis"].iloc[index]
    block_ids = frame["block_ids"].iloc[index]
    return {
        "time_basis": basis if isinstance(basis, str) else None,
        "tx_count": int(frame["tx_count"].iloc[index]),
        "block_ids": [] if block_ids is None or (isinstance(block_ids, float)) else [int(b) for b in block_ids],
    }


def _base_row(mode: str, metric: str, minute: pd.Timestamp, context: dict) -> dict:
    context = {**context, "block_ids": list(context["block_ids"])}
    return {
        "anomaly_id": anomaly_id(mode, metric, minute),
        "minute": minute,
        "metric": metric,
        "value": float("nan"),
        "baseline": float("nan"),
        "deviation": float("nan"),
        "scale": float("nan"),
        "z_score": float("nan"),
        "severity": "info",
        "rule": "",
        "mode": mode,
        **context,
        "baseline_source": None,
    }


def _to_output_frame(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=EWMA_OUTPUT_NAMES)
    out["minute"] = pd.to_datetime(out["minute"]).astype("datetime64[us]")
    for name in ("value", "baseline", "deviation", "scale", "z_score"):
        out[name] = out[name].astype(float)
    out["tx_count"] = out["tx_count"].astype(np.int64)
    out["block_ids"] = out["block_ids"].astype(object)
    out["time_basis"] = out["time_basis"].astype(object)
    out["baseline_source"] = out["baseline_source"].astype(object)
    return out.sort_values(["minute", "metric"], kind="stable").reset_index(drop=True)
