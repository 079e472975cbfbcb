"""Prophet forecast on the real 13-14 Aug 2025 minute aggregates, plus hand-checked scoring."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from btc_anomaly_assets.forecast.model import (
    BLOCK_RATE_WINDOW_MINUTES,
    EXCURSION_COLUMNS,
    FORECAST_COLUMNS,
    SERIES_ARRIVALS,
    SERIES_BLOCK_RATE,
    ForecastError,
    excursion_severity,
    fit_and_forecast,
    fit_model,
    forecast_from_model,
    forecast_series,
    interval_excursions,
    score_forecast,
)
from btc_anomaly_testing.real_data import DAY13_WINDOW, REAL_WINDOWS, minute_aggregates, real_raw, synthetic_first_seen

HOLDOUT = 30


@pytest.fixture(scope="module")
def real_aggregates() -> pd.DataFrame:
    """Minute aggregates of both real dump windows (block time), built by the DuckDB reference."""
    raw = real_raw()
    return pd.concat([minute_aggregates(raw, start, end) for start, end in REAL_WINDOWS], ignore_index=True)


@pytest.fixture(scope="module")
def aug13_series(real_aggregates) -> pd.DataFrame:
    series = forecast_series(real_aggregates)
    return series[series["ds"] < datetime(2025, 8, 14)].reset_index(drop=True)


@pytest.fixture(scope="module")
def aug13_forecast(aug13_series) -> pd.DataFrame:
    return fit_and_forecast(aug13_series.iloc[:-HOLDOUT], horizon_minutes=30)


def first_seen_aggregates(counts, start=datetime(2025, 8, 13)) -> pd.DataFrame:
    minutes = pd.date_range(start, periods=len(counts), freq="min")
    return pd.DataFrame(
        {
            "minute": minutes,
            "tx_count": np.asarray(counts, dtype=np.int64),
            "time_basis": ["first_seen" if c > 0 else None for c in counts],
        }
    )


# ---------------------------------------------------------------------------------------------
# Series selection


def test_block_data_becomes_a_trailing_rate_never_raw_block_minutes(real_aggregates, aug13_series):
    aug13 = real_aggregates[real_aggregates["minute"] < datetime(2025, 8, 14)].set_index("minute")["tx_count"]
    assert len(aug13) == 180
    # Only minutes with a complete trailing window inside the aggregates get a point.
    assert len(aug13_series) == 180 - (BLOCK_RATE_WINDOW_MINUTES - 1)
    assert aug13_series["ds"].iloc[0] == datetime(2025, 8, 13, 0, BLOCK_RATE_WINDOW_MINUTES - 1)
    for position in (0, 37, len(aug13_series) - 1):
        end = aug13_series["ds"].iloc[position]
        window = aug13[(aug13.index > end - pd.Timedelta(minutes=BLOCK_RATE_WINDOW_MINUTES)) & (aug13.index <= end)]
        assert len(window) == BLOCK_RATE_WINDOW_MINUTES
        assert aug13_series["y"].iloc[position] == pytest.approx(window.sum() / BLOCK_RATE_WINDOW_MINUTES)
    assert aug13_series["y"].max() < aug13.max() / 5  # bursts of up to 5,002 in a minute are smoothed away
    assert set(aug13_series["series"]) == {SERIES_BLOCK_RATE} and set(aug13_series["time_basis"]) == {"block"}
    assert str(aug13_series["ds"].dtype) == "datetime64[us]"


def test_the_gap_between_days_leaves_no_point_with_an_incomplete_window(real_aggregates):
    series = forecast_series(real_aggregates)
    aug14 = series[series["ds"] >= datetime(2025, 8, 14)]
    assert aug14["ds"].iloc[0] == datetime(2025, 8, 14, 0, BLOCK_RATE_WINDOW_MINUTES - 1)
    assert len(aug14) == 95 - (BLOCK_RATE_WINDOW_MINUTES - 1)


def test_first_seen_arrivals_from_the_real_rows_are_forecast_as_counts():
    aggregates = minute_aggregates(synthetic_first_seen(real_raw()), *DAY13_WINDOW)
    series = forecast_series(aggregates)
    assert len(series) == len(aggregates) == 180
    assert series["y"].tolist() == aggregates["tx_count"].astype(float).tolist()
    forecast = fit_and_forecast(series.iloc[:-HOLDOUT])
    assert len(forecast) == 30 and set(forecast["series"]) == {SERIES_ARRIVALS}
    assert (forecast["ds"].iloc[0] - series["ds"].iloc[-HOLDOUT - 1]) == pd.Timedelta(minutes=1)
    assert (forecast["yhat_lower"] >= 0).all() and (forecast["yhat_lower"] <= forecast["yhat_upper"]).all()


def test_first_seen_data_keeps_per_minute_counts_including_zero_minutes():
    counts = [400, 0, 420, 380, 0, 415]
    series = forecast_series(first_seen_aggregates(counts).sample(frac=1, random_state=1))
    assert series["y"].tolist() == counts
    assert set(series["series"]) == {SERIES_ARRIVALS} and set(series["time_basis"]) == {"first_seen"}


def test_mixed_or_unknown_time_basis_and_bad_rows_are_refused():
    mixed = first_seen_aggregates([1, 2, 3])
    mixed.loc[1, "time_basis"] = "block"
    with pytest.raises(ForecastError, match="mix time bases"):
        forecast_series(mixed)
    with pytest.raises(ForecastError, match="no transactions"):
        forecast_series(first_seen_aggregates([0, 0]))
    with pytest.raises(ForecastError, match="repeat minute"):
        forecast_series(pd.concat([first_seen_aggregates([1, 2])] * 2))
    with pytest.raises(ForecastError, match="missing column"):
        forecast_series(first_seen_aggregates([1]).drop(columns="time_basis"))


# ---------------------------------------------------------------------------------------------
# Forecast


def test_forecast_has_30_one_minute_steps_from_the_cutoff(aug13_series, aug13_forecast):
    history = aug13_series.iloc[:-HOLDOUT]
    forecast = aug13_forecast
    assert list(forecast.columns) == FORECAST_COLUMNS
    assert len(forecast) == 30 and forecast["step"].tolist() == list(range(1, 31))
    cutoff = history["ds"].iloc[-1] + pd.Timedelta(minutes=1)
    assert (forecast["cutoff"] == cutoff).all()
    assert forecast["ds"].iloc[0] == cutoff
    assert (forecast["ds"].diff().dropna() == pd.Timedelta(minutes=1)).all()
    assert (forecast["ds"] == cutoff + pd.to_timedelta(forecast["step"] - 1, unit="min")).all()
    assert str(forecast["ds"].dtype) == "datetime64[us]" and forecast["ds"].dt.tz is None
    assert (forecast["yhat_lower"] >= 0).all()
    assert (forecast["yhat_lower"] <= forecast["yhat"]).all() and (forecast["yhat"] <= forecast["yhat_upper"]).all()
    assert (forecast["yhat_upper"] > forecast["yhat_lower"]).all()
    assert set(forecast["series"]) == {SERIES_BLOCK_RATE} and set(forecast["time_basis"]) == {"block"}
    assert forecast["model"].iloc[0].startswith("prophet ") and "log1p" in forecast["model"].iloc[0]
    # The forecast is of the same magnitude as the history (the trailing rate, not 5,000-tx minutes).
    assert forecast["yhat"].max() < 3 * history["y"].max()


def test_forecast_is_deterministic(aug13_series, aug13_forecast):
    again = fit_and_forecast(aug13_series.iloc[:-HOLDOUT], horizon_minutes=30)
    pd.testing.assert_frame_equal(again, aug13_forecast)


def test_prediction_leaves_the_global_numpy_rng_as_it_was(aug13_series):
    fitted = fit_model(aug13_series.iloc[:40])
    np.random.seed(7)
    expected = np.random.rand(3)
    np.random.seed(7)
    forecast_from_model(fitted)
    assert np.random.rand(3).tolist() == expected.tolist()


def test_scoring_on_the_real_holdout_is_consistent(aug13_series, aug13_forecast):
    actuals = aug13_series.iloc[-HOLDOUT:]
    score = score_forecast(aug13_forecast, actuals)
    assert score["n_points"] == 30 and score["n_zero_actuals"] == 0
    assert 0.0 <= score["coverage"] <= 1.0 and score["mape"] >= 0
    excursions = interval_excursions(aug13_forecast, actuals)
    assert len(excursions) == score["n_outside"] == round((1 - score["coverage"]) * 30)


def test_daily_seasonality_only_with_two_days_of_history():
    minutes = 2 * 24 * 60 + 60
    rng = np.random.default_rng(3)
    daily_cycle = 400 + 100 * np.sin(2 * np.pi * np.arange(minutes) / 1440)
    long_series = forecast_series(first_seen_aggregates(rng.poisson(daily_cycle)))
    assert "daily" in fit_model(long_series).model.seasonalities
    short_series = long_series.iloc[:1440]
    assert "daily" not in fit_model(short_series).model.seasonalities


def test_low_counts_never_give_negative_bounds():
    rng = np.random.default_rng(11)
    series = forecast_series(first_seen_aggregates(rng.poisson(0.7, size=120) + np.r_[1, np.zeros(119, dtype=int)]))
    forecast = fit_and_forecast(series)
    assert (forecast[["yhat", "yhat_lower", "yhat_upper"]] >= 0).all().all()


def test_too_few_points_is_a_clear_error(aug13_series):
    with pytest.raises(ForecastError, match="has 29 points; at least 30"):
        fit_and_forecast(aug13_series.iloc[:29])
    with pytest.raises(ForecastError, match="interval_width"):
        fit_and_forecast(aug13_series, interval_width=1.5)


# ---------------------------------------------------------------------------------------------
# Scoring and excursions on hand-made numbers


def hand_forecast() -> pd.DataFrame:
    ds = pd.date_range("2025-08-13 01:00", periods=6, freq="min")
    return pd.DataFrame(
        {
            "cutoff": ds[0],
            "ds": ds,
            "step": range(1, 7),
            "yhat": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0],
            "yhat_lower": [5.0, 15.0, 25.0, 35.0, 45.0, 55.0],  # half-width 5 everywhere
            "yhat_upper": [15.0, 25.0, 35.0, 45.0, 55.0, 65.0],
            "series": SERIES_ARRIVALS,
            "time_basis": "first_seen",
            "model": "hand",
        }
    )


def hand_actuals(values, start="2025-08-13 01:00") -> pd.DataFrame:
    return pd.DataFrame({"ds": pd.date_range(start, periods=len(values), freq="min"), "y": values})


def test_score_forecast_by_hand():
    # Actuals: 10 (exact, inside), 25 (on the upper bound: inside), 0 (outside, no MAPE term),
    # 50 (outside by 5), 46 (inside); the 6th forecast minute has no actual.
    score = score_forecast(hand_forecast(), hand_actuals([10.0, 25.0, 0.0, 50.0, 46.0]))
    # MAPE over non-zero actuals: 0/10, 5/25, 10/50, 4/46 -> mean * 100.
    assert score["mape"] == pytest.approx((0 + 0.2 + 0.2 + 4 / 46) / 4 * 100)
    assert score["coverage"] == pytest.approx(3 / 5)
    assert (score["n_points"], score["n_outside"], score["n_zero_actuals"]) == (5, 2, 1)


def test_score_with_only_zero_actuals_has_no_mape():
    score = score_forecast(hand_forecast(), hand_actuals([0.0]))
    assert score["mape"] is None and score["coverage"] == 0.0 and score["n_points"] == 1


def test_excursion_severity_in_half_widths():
    # half-width 5: upper+2 -> 0.4 (low), upper+7 -> 1.4 (medium), lower-12 -> 2.4 (high),
    # upper+5 -> exactly 1.0 (low: the threshold is "more than"), inside -> no row.
    actuals = hand_actuals([17.0, 32.0, 13.0, 40.0, 50.0, 70.0])
    excursions = interval_excursions(hand_forecast(), actuals)
    assert list(excursions.columns) == EXCURSION_COLUMNS
    by_minute = excursions.set_index(excursions["ds"].dt.minute)
    assert by_minute.loc[0, ["direction", "severity"]].tolist() == ["above", "low"]
    assert by_minute.loc[0, "excess_half_widths"] == pytest.approx(0.4)
    assert by_minute.loc[1, ["direction", "severity"]].tolist() == ["above", "medium"]
    assert by_minute.loc[2, ["direction", "severity"]].tolist() == ["below", "high"]
    assert by_minute.loc[2, "excess_half_widths"] == pytest.approx(2.4)
    assert by_minute.loc[5, "severity"] == "low" and by_minute.loc[5, "excess_half_widths"] == pytest.approx(1.0)
    assert set(by_minute.index) == {0, 1, 2, 5}
    assert excursions["severity"].tolist() == ["high", "medium", "low", "low"]


def test_zero_width_interval_makes_any_excursion_high():
    forecast = hand_forecast().assign(yhat_lower=lambda f: f["yhat"], yhat_upper=lambda f: f["yhat"])
    excursions = interval_excursions(forecast, hand_actuals([10.5]))
    assert excursions["severity"].tolist() == ["high"] and np.isinf(excursions["excess_half_widths"].iloc[0])


def test_excursion_severity_rejects_points_inside():
    assert [excursion_severity(x) for x in (0.01, 1.0, 1.01, 2.0, 2.01)] == ["low", "low", "medium", "medium", "high"]
    with pytest.raises(ValueError):
        excursion_severity(0.0)


def test_actuals_of_another_series_are_refused():
    actuals = hand_actuals([10.0]).assign(series=SERIES_BLOCK_RATE)
    with pytest.raises(ForecastError, match="does not match"):
        score_forecast(hand_forecast(), actuals)
