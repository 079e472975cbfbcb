"""A 30-minute Prophet forecast of the transaction rate, its score, and interval excursions.

The series Prophet sees depends on the time basis of the minute aggregates
(``forecast_series``):

- ``first_seen`` (mempool arrival times): the per-minute arrival count, as it is. Arrivals are
  a smooth-ish Poisson-like process, which Prophet models well.
- ``block`` (block timestamps): per-minute counts are 0 in most minutes and thousands in the
  minute a block lands, so a forecast of them is meaningless (intervals of -1,800..+2,400 around
  ~380 on such a series, BITCOIN_DOMAIN.md 3.7). Instead we forecast the *confirmed rate*:
  transactions per minute over the trailing ``BLOCK_RATE_WINDOW_MINUTES`` (60) minutes, emitted
  only for minutes whose whole trailing window lies inside the aggregates. 60 minutes holds ~6
  blocks on average, enough to smooth single block arrivals while still following the day.

Modelling choices (``fit_and_forecast``):

- Prophet is fitted on ``log1p(y)`` and ``yhat``/``yhat_lower``/``yhat_upper`` are mapped back
  with ``expm1``. Quantiles commute with a monotonic transform, so the 95 % interval in log space
  is exactly a 95 % interval of the count, it can never go below 0, and its width grows with the
  level as count noise does. (Clipping the lower bound at 0 would instead leave a band that is
  too wide and mis-calibrated at low counts.) The price: ``yhat`` is the back-transformed mean
  of ``log1p(y)``, i.e. closer to the median than to the mean of the count.
- Seasonality: daily only with >= 2 days of history, weekly only with >= 14 days (Prophet's own
  auto rules, made explicit), never yearly. No hourly term.
- Only the ``horizon_minutes`` future rows are predicted (``include_history=False``), with
  ``freq="min"``: predicting the history with uncertainty sampling costs far more.
- Determinism: the Stan optimiser gets a fixed ``seed``, and the uncertainty sampling in
  ``predict`` (which draws from NumPy's *global* RNG) runs under a fixed seed whose previous state
  is restored afterwards. Repeated runs on the same input give identical numbers. This touches the
  global RNG, so do not call it concurrently from threads that rely on ``np.random``.

All timestamps are naive UTC minute starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from btc_anomaly_assets.common.schema import TIME_BASIS_FIRST_SEEN, severity_rank, single_time_basis

BLOCK_RATE_WINDOW_MINUTES = 60
SERIES_ARRIVALS = "tx_count_per_minute"
SERIES_BLOCK_RATE = f"tx_per_minute_trailing_{BLOCK_RATE_WINDOW_MINUTES}min"

MIN_HISTORY_POINTS = 30
DEFAULT_HORIZON_MINUTES = 30
DEFAULT_INTERVAL_WIDTH = 0.95
DEFAULT_SEED = 20_250_813
DAILY_SEASONALITY_MIN_DAYS = 2
WEEKLY_SEASONALITY_MIN_DAYS = 14

FORECAST_COLUMNS = [
    "cutoff",
    "ds",
    "step",
    "yhat",
    "yhat_lower",
    "yhat_upper",
    "series",
    "time_basis",
    "model",
]
SERIES_COLUMNS = ["ds", "y", "series", "time_basis"]
EXCURSION_COLUMNS = [
    "cutoff",
    "ds",
    "step",
    "y",
    "yhat",
    "yhat_lower",
    "yhat_upper",
    "direction",
    "excess_half_widths",
    "severity",
    "series",
    "time_basis",
    "model",
]

# Severity of an excursion from its distance beyond the violated bound, in half-widths of the
# interval: just outside is "low", more than one half-width beyond is "medium", more than two
# is "high". Checked from the top down.
EXCURSION_SEVERITY_THRESHOLDS = (("high", 2.0), ("medium", 1.0), ("low", 0.0))

_ONE_MINUTE = pd.Timedelta(minutes=1)


class ForecastError(ValueError):
    """The input cannot be forecast or scored honestly; the message says what and where."""


@dataclass(frozen=True)
class FittedForecastModel:
    """A fitted Prophet model plus what ``forecast_from_model`` needs to label its output."""

    model: object  # prophet.Prophet (kept untyped so importing this module stays cheap)
    series: str
    time_basis: str
    last_ds: pd.Timestamp
    n_points: int
    description: str


# --------------------------------------------------------------------------------------------
# Series selection


def forecast_series(aggregates: pd.DataFrame) -> pd.DataFrame:
    """The series Prophet can model honestly from minute-aggregate rows.

    ``aggregates`` needs ``minute``, ``tx_count`` and ``time_basis`` (one row per minute; empty
    minutes are rows with ``tx_count`` 0 and NULL ``time_basis``). Returns ``ds`` (naive UTC),
    ``y`` (float), ``series`` and ``time_basis``, sorted by ``ds``: per-minute counts for
    ``first_seen`` data, the trailing-60-minute rate for ``block`` data (see the module doc).
    Raises ``ForecastError`` for missing columns, duplicate minutes, negative counts, mixed or
    unknown time bases.
    """
    frame = _checked_aggregates(aggregates)
    basis = _single_time_basis(frame)
    counts = frame.set_index("minute")["tx_count"].astype(float)
    if basis == TIME_BASIS_FIRST_SEEN:
        values, name = counts, SERIES_ARRIVALS
    else:
        values, name = _trailing_rate(counts, BLOCK_RATE_WINDOW_MINUTES), SERIES_BLOCK_RATE
    return pd.DataFrame(
        {
            "ds": values.index.astype("datetime64[us]"),
            "y": values.to_numpy(dtype=float),
            "series": name,
            "time_basis": basis,
        }
    )


def _checked_aggregates(aggregates: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("minute", "tx_count", "time_basis") if c not in aggregates.columns]
    if missing:
        raise ForecastError(f"minute aggregates are missing column(s) {missing}; got {list(aggregates.columns)}")
    frame = aggregates[["minute", "tx_count", "time_basis"]].copy()
    frame["minute"] = _naive_utc(frame["minute"], "aggregates.minute")
    if frame["tx_count"].isna().any():
        raise ForecastError("minute aggregates have NULL tx_count")
    if (frame["tx_count"] < 0).any():
        bad = frame.loc[frame["tx_count"] < 0, "minute"].iloc[0]
        raise ForecastError(f"minute aggregates have a negative tx_count at {bad}")
    duplicated = frame["minute"].duplicated()
    if duplicated.any():
        raise ForecastError(f"minute aggregates repeat minute {frame.loc[duplicated, 'minute'].iloc[0]}")
    not_aligned = frame["minute"] != frame["minute"].dt.floor("min")
    if not_aligned.any():
        raise ForecastError(f"aggregates.minute is not a minute start: {frame.loc[not_aligned, 'minute'].iloc[0]}")
    return frame.sort_values("minute").reset_index(drop=True)


def _single_time_basis(frame: pd.DataFrame) -> str:
    basis = single_time_basis(frame["time_basis"], "minute aggregates", ForecastError)
    if basis is None:
        raise ForecastError("minute aggregates contain no transactions, so their time basis is unknown; nothing to forecast")
    return basis


def _trailing_rate(counts: pd.Series, window_minutes: int) -> pd.Series:
    """Transactions per minute over the trailing window, only where the window is fully covered."""
    window = f"{window_minutes}min"
    totals = counts.rolling(window).sum()
    covered = counts.rolling(window).count()
    return (totals / window_minutes)[covered == window_minutes]


# --------------------------------------------------------------------------------------------
# Fit and forecast


def fit_model(
    series: pd.DataFrame,
    *,
    interval_width: float = DEFAULT_INTERVAL_WIDTH,
    seed: int = DEFAULT_SEED,
    min_points: int = MIN_HISTORY_POINTS,
) -> FittedForecastModel:
    """Fit Prophet on ``log1p(y)`` of a ``forecast_series`` frame (see the module doc)."""
    history, name, basis = _checked_series(series, min_points)
    if not 0.0 < interval_width < 1.0:
        raise ForecastError(f"interval_width must be in (0, 1), got {interval_width}")
    span = history["ds"].iloc[-1] - history["ds"].iloc[0]
    daily = span >= pd.Timedelta(days=DAILY_SEASONALITY_MIN_DAYS)
    weekly = span >= pd.Timedelta(days=WEEKLY_SEASONALITY_MIN_DAYS)

    from prophet import Prophet  # imported lazily: the import alone takes ~0.5-3 s

    # cmdstanpy logs two INFO lines per fit ("Chain [1] start/done processing") to the console;
    # a failed fit still raises, and its warnings still show.
    logging.getLogger("cmdstanpy").setLevel(logging.WARNING)

    model = Prophet(
        interval_width=interval_width,
        daily_seasonality=daily,
        weekly_seasonality=weekly,
        yearly_seasonality=False,
    )
    model.fit(pd.DataFrame({"ds": history["ds"], "y": np.log1p(history["y"])}), seed=seed)
    description = (
        f"prophet {_prophet_version()} linear log1p interval={interval_width:g} "
        f"daily={'on' if daily else 'off'} weekly={'on' if weekly else 'off'} seed={seed}"
    )
    return FittedForecastModel(
        model=model,
        series=name,
        time_basis=basis,
        last_ds=history["ds"].iloc[-1],
        n_points=len(history),
        description=description,
    )


def forecast_from_model(
    fitted: FittedForecastModel,
    *,
    horizon_minutes: int = DEFAULT_HORIZON_MINUTES,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """Predict the ``horizon_minutes`` minutes after the last observed one (``FORECAST_COLUMNS``).

    ``cutoff`` is the forecast origin: the last observed minute + 1 minute. Step ``k`` is the
    minute starting at ``cutoff + (k - 1) min``, so step 1 is the first unobserved minute.
    """
    if horizon_minutes < 1:
        raise ForecastError(f"horizon_minutes must be >= 1, got {horizon_minutes}")
    model = fitted.model
    future = model.make_future_dataframe(periods=horizon_minutes, freq="min", include_history=False)
    with _seeded_global_numpy(seed):
        predicted = model.predict(future)
    cutoff = fitted.last_ds + _ONE_MINUTE
    out = pd.DataFrame(
        {
            "cutoff": cutoff,
            "ds": pd.to_datetime(predicted["ds"]).astype("datetime64[us]"),
            "step": np.arange(1, horizon_minutes + 1, dtype=np.int64),
            # expm1 of log-space quantiles; max(0, .) only removes float noise below zero.
            "yhat": np.maximum(np.expm1(predicted["yhat"].to_numpy()), 0.0),
            "yhat_lower": np.maximum(np.expm1(predicted["yhat_lower"].to_numpy()), 0.0),
            "yhat_upper": np.maximum(np.expm1(predicted["yhat_upper"].to_numpy()), 0.0),
            "series": fitted.series,
            "time_basis": fitted.time_basis,
            "model": fitted.description,
        }
    )
    out["cutoff"] = out["cutoff"].astype("datetime64[us]")
    _enforce_forecast_contract(out, cutoff, horizon_minutes)
    return out[FORECAST_COLUMNS]


def fit_and_forecast(
    series: pd.DataFrame,
    horizon_minutes: int = DEFAULT_HORIZON_MINUTES,
    interval_width: float = DEFAULT_INTERVAL_WIDTH,
    *,
    seed: int = DEFAULT_SEED,
    min_points: int = MIN_HISTORY_POINTS,
) -> pd.DataFrame:
    """Fit Prophet on ``series`` (from ``forecast_series``) and forecast ``horizon_minutes`` ahead.

    Returns ``FORECAST_COLUMNS``: cutoff, ds, step (1..horizon), yhat, yhat_lower, yhat_upper
    (all >= 0, lower <= yhat <= upper), series, time_basis, model. Raises ``ForecastError`` with
    fewer than ``min_points`` points, a bad ``interval_width`` or a malformed series.
    """
    fitted = fit_model(series, interval_width=interval_width, seed=seed, min_points=min_points)
    return forecast_from_model(fitted, horizon_minutes=horizon_minutes, seed=seed)


def _checked_series(series: pd.DataFrame, min_points: int) -> tuple[pd.DataFrame, str, str]:
    missing = [c for c in SERIES_COLUMNS if c not in series.columns]
    if missing:
        raise ForecastError(f"forecast series is missing column(s) {missing}; build it with forecast_series()")
    history = series[SERIES_COLUMNS].copy()
    history["ds"] = _naive_utc(history["ds"], "series.ds")
    history = history.sort_values("ds").reset_index(drop=True)
    names = history["series"].dropna().unique()
    bases = history["time_basis"].dropna().unique()
    if len(names) != 1 or len(bases) != 1:
        raise ForecastError(f"forecast series must hold one series and one time basis, got {list(names)} / {list(bases)}")
    if history["ds"].duplicated().any():
        raise ForecastError(f"forecast series repeats ds {history.loc[history['ds'].duplicated(), 'ds'].iloc[0]}")
    values = history["y"].to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise ForecastError("forecast series has NaN or infinite y values")
    if (values < 0).any():
        raise ForecastError(f"forecast series has negative y at {history.loc[values < 0, 'ds'].iloc[0]}")
    if len(history) < min_points:
        raise ForecastError(
            f"forecast series {names[0]!r} has {len(history)} points; at least {min_points} are needed "
            f"for an honest fit (for block data the first {BLOCK_RATE_WINDOW_MINUTES - 1} minutes of a window "
            "give no point, because the trailing window is incomplete)"
        )
    return history, str(names[0]), str(bases[0])


def _enforce_forecast_contract(out: pd.DataFrame, cutoff: pd.Timestamp, horizon: int) -> None:
    """Check the 30 one-minute steps (a breach is a bug, not bad data) and order the bounds."""
    expected = pd.date_range(cutoff, periods=horizon, freq="min")
    if len(out) != horizon or not (out["ds"].to_numpy() == expected.to_numpy(dtype="datetime64[us]")).all():
        raise ForecastError(f"Prophet returned ds {list(out['ds'][:3])}...; expected {horizon} minutes from {cutoff}")
    # Percentile sampling and the point estimate are computed separately; re-impose the order.
    out["yhat_lower"] = np.minimum(out["yhat_lower"], out["yhat"])
    out["yhat_upper"] = np.maximum(out["yhat_upper"], out["yhat"])


class _seeded_global_numpy:
    """Run a block under a fixed NumPy global seed and restore the previous RNG state after."""

    def __init__(self, seed: int):
        self._seed = seed
        self._saved = None

    def __enter__(self):
        self._saved = np.random.get_state()
        np.random.seed(self._seed)

    def __exit__(self, *exc):
        np.random.set_state(self._saved)


def _prophet_version() -> str:
    import prophet

    return getattr(prophet, "__version__", "unknown")


# --------------------------------------------------------------------------------------------
# Scoring and excursions


def score_forecast(forecast: pd.DataFrame, actuals: pd.DataFrame) -> dict:
    """Accuracy of ``forecast`` against ``actuals`` (a ``forecast_series`` frame) on common ``ds``.

    Returns ``mape`` (percent, over points with a non-zero actual: a zero actual has no defined
    percentage error, so it is left out and counted in ``n_zero_actuals``; ``None`` if no point
    qualifies), ``coverage`` (share of actuals inside the closed interval [lower, upper]; ``None``
    with no points), ``n_points`` (forecast rows with an actual), ``n_outside`` and
    ``n_zero_actuals``.
    """
    joined = _join_actuals(forecast, actuals)
    y = joined["y"].to_numpy(dtype=float)
    yhat = joined["yhat"].to_numpy(dtype=float)
    inside = (y >= joined["yhat_lower"].to_numpy()) & (y <= joined["yhat_upper"].to_numpy())
    nonzero = y != 0
    mape = float(np.mean(np.abs(y[nonzero] - yhat[nonzero]) / np.abs(y[nonzero])) * 100.0) if nonzero.any() else None
    return {
        "mape": mape,
        "coverage": float(inside.mean()) if len(y) else None,
        "n_points": int(len(y)),
        "n_outside": int((~inside).sum()),
        "n_zero_actuals": int((~nonzero).sum()),
    }


def interval_excursions(forecast: pd.DataFrame, actuals: pd.DataFrame) -> pd.DataFrame:
    """Forecast rows whose actual lies outside [yhat_lower, yhat_upper] (``EXCURSION_COLUMNS``).

    ``excess_half_widths`` is the distance beyond the violated bound divided by the interval's
    half-width ``(upper - lower) / 2`` (infinite for a zero-width interval); ``severity`` is
    ``high`` above 2, ``medium`` above 1, else ``low``. ``direction`` is ``above`` or ``below``.
    Sorted by severity (high first), then ``ds``.
    """
    joined = _join_actuals(forecast, actuals)
    below = joined["y"] < joined["yhat_lower"]
    above = joined["y"] > joined["yhat_upper"]
    outside = joined[below | above].copy()
    half_width = (outside["yhat_upper"] - outside["yhat_lower"]) / 2.0
    distance = np.where(
        outside["y"] > outside["yhat_upper"],
        outside["y"] - outside["yhat_upper"],
        outside["yhat_lower"] - outside["y"],
    )
    with np.errstate(divide="ignore"):
        excess = np.where(half_width > 0, distance / half_width.where(half_width > 0, 1.0), np.inf)
    outside["direction"] = np.where(outside["y"] > outside["yhat_upper"], "above", "below")
    outside["excess_half_widths"] = excess.astype(float)
    outside["severity"] = [excursion_severity(value) for value in outside["excess_half_widths"]]
    outside["_rank"] = [-severity_rank(s) for s in outside["severity"]]
    outside = outside.sort_values(["_rank", "ds", "cutoff"]).drop(columns="_rank")
    return outside[EXCURSION_COLUMNS].reset_index(drop=True)


def excursion_severity(excess_half_widths: float) -> str:
    """``low`` / ``medium`` / ``high`` for a distance beyond the interval, in half-widths (> 0)."""
    if not excess_half_widths > 0:
        raise ValueError(f"an excursion lies strictly outside the interval; got excess {excess_half_widths}")
    for severity, threshold in EXCURSION_SEVERITY_THRESHOLDS:
        if excess_half_widths > threshold:
            return severity
    raise AssertionError("unreachable: the last threshold is 0")  # pragma: no cover


def _join_actuals(forecast: pd.DataFrame, actuals: pd.DataFrame) -> pd.DataFrame:
    missing_f = [c for c in FORECAST_COLUMNS if c not in forecast.columns]
    if missing_f:
        raise ForecastError(f"forecast is missing column(s) {missing_f}")
    missing_a = [c for c in ("ds", "y") if c not in actuals.columns]
    if missing_a:
        raise ForecastError(f"actuals are missing column(s) {missing_a}; build them with forecast_series()")
    for column in ("series", "time_basis"):
        if column in actuals.columns:
            wanted = set(forecast[column].dropna().unique())
            got = set(actuals[column].dropna().unique())
            if got and wanted and got != wanted:
                raise ForecastError(f"actuals {column} {sorted(got)} does not match the forecast's {sorted(wanted)}")
    left = forecast.assign(ds=_naive_utc(forecast["ds"], "forecast.ds"))
    right = actuals[["ds", "y"]].assign(ds=_naive_utc(actuals["ds"], "actuals.ds"))
    if right["ds"].duplicated().any():
        raise ForecastError(f"actuals repeat ds {right.loc[right['ds'].duplicated(), 'ds'].iloc[0]}")
    if right["y"].isna().any():
        raise ForecastError("actuals have NaN y values")
    return left.merge(right, on="ds", how="inner", validate="many_to_one")


def _naive_utc(values: pd.Series, what: str) -> pd.Series:
    try:
        stamps = pd.to_datetime(values)
    except (TypeError, ValueError) as err:
        raise ForecastError(f"{what} is not a timestamp column: {err}") from None
    if stamps.dt.tz is not None:
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    return stamps.astype("datetime64[us]")


__all__ = [
    "BLOCK_RATE_WINDOW_MINUTES",
    "EXCURSION_COLUMNS",
    "FORECAST_COLUMNS",
    "FittedForecastModel",
    "ForecastError",
    "MIN_HISTORY_POINTS",
    "SERIES_ARRIVALS",
    "SERIES_BLOCK_RATE",
    "excursion_severity",
    "fit_and_forecast",
    "fit_model",
    "forecast_from_model",
    "forecast_series",
    "interval_excursions",
    "score_forecast",
]
