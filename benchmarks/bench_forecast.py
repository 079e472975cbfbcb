"""Fit/predict times and interval coverage of ``btc_anomaly_assets.forecast.model`` (prints figures).

Real data: the 13-14 Aug 2025 Blockchair dumps (block time -> trailing-60-minute rate), scored
with rolling origins every 10 minutes against the next 30 minutes. Synthetic: a first-seen
arrival series (Poisson around 420/min with a daily cycle) of 1 and 7 days.

Run: ``python benchmarks/bench_forecast.py``
"""

from __future__ import annotations

import logging
import statistics
import time
from datetime import datetime

import numpy as np
import pandas as pd

from btc_anomaly_assets.aggregates.aggregates_sql import aggregate_minutes_duckdb
from btc_anomaly_assets.ingest.raw_frames import to_raw_frame
from btc_anomaly_testing.fixture_paths import BLOCKCHAIR_DIR

WINDOWS = [
    ("blockchair_bitcoin_transactions_20250813_blocks909766-909785.tsv.gz", datetime(2025, 8, 13), datetime(2025, 8, 13, 3)),
    ("blockchair_bitcoin_transactions_20250814_blocks909922-909932.tsv.gz", datetime(2025, 8, 14), datetime(2025, 8, 14, 1, 35)),
]


def real_aggregates() -> pd.DataFrame:
    frames = []
    for name, start, end in WINDOWS:
        rows = pd.read_csv(BLOCKCHAIR_DIR / name, sep="\t", dtype=str, keep_default_na=False)
        rows.index.name = "line"
        frames.append(aggregate_minutes_duckdb(to_raw_frame(rows, time_basis="block", where=name), start, end))
    return pd.concat(frames, ignore_index=True)


def timed_fit_predict(series: pd.DataFrame, forecast) -> tuple[float, float, pd.DataFrame]:
    started = time.perf_counter()
    fitted = forecast.fit_model(series)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = forecast.forecast_from_model(fitted)
    return fit_seconds, time.perf_counter() - started, result


def rolling_origin(series: pd.DataFrame, forecast, label: str) -> None:
    coverages, mapes = [], []
    for n in range(forecast.MIN_HISTORY_POINTS, len(series) - 30 + 1, 10):
        result = forecast.fit_and_forecast(series.iloc[:n])
        score = forecast.score_forecast(result, series.iloc[n : n + 30])
        coverages.append(score["coverage"])
        mapes.append(score["mape"])
    print(
        f"{label}: {len(coverages)} origins, 95% interval coverage mean {statistics.mean(coverages):.2f} "
        f"(min {min(coverages):.2f}, max {max(coverages):.2f}), MAPE mean {statistics.mean(mapes):.1f}%"
    )


def main() -> None:
    started = time.perf_counter()
    import cmdstanpy
    import prophet  # noqa: F401 - time the import the first fit pays

    from btc_anomaly_assets.forecast import model as forecast

    # cmdstanpy installs its own INFO handler on first use; create it now, then quiet it.
    cmdstanpy.utils.get_logger().setLevel(logging.WARNING)
    print(f"import prophet: {time.perf_counter() - started:.2f} s")
    series = forecast.forecast_series(real_aggregates())
    aug13 = series[series["ds"] < datetime(2025, 8, 14)].reset_index(drop=True)
    aug14 = series[series["ds"] >= datetime(2025, 8, 14)].reset_index(drop=True)
    print(f"real series: {len(aug13)} points on 13 Aug, {len(aug14)} on 14 Aug ({series['series'].iloc[0]})")

    for label, history in [("real 13 Aug, 91 pts", aug13.iloc[:-30]), ("real 13+14 Aug, 127 pts", series.iloc[:-30])]:
        fit_s, predict_s, result = timed_fit_predict(history, forecast)
        actuals = aug13.iloc[-30:] if "13 Aug," in label else series.iloc[-30:]
        score = forecast.score_forecast(result, actuals)
        print(
            f"{label}: fit {fit_s:.3f} s, predict 30 {predict_s:.3f} s; next 30 min coverage "
            f"{score['coverage']:.2f}, MAPE {score['mape']:.1f}%, outside {score['n_outside']}"
        )
    rolling_origin(aug13, forecast, "real 13 Aug rolling origins")

    rng = np.random.default_rng(0)
    for days in (1, 7):
        minutes = days * 1440
        rate = 420 + 120 * np.sin(2 * np.pi * np.arange(minutes + 30) / 1440)
        counts = rng.poisson(rate)
        frame = pd.DataFrame(
            {
                "minute": pd.date_range("2025-08-01", periods=minutes + 30, freq="min"),
                "tx_count": counts,
                "time_basis": "first_seen",
            }
        )
        synthetic = forecast.forecast_series(frame)
        fit_s, predict_s, result = timed_fit_predict(synthetic.iloc[:-30], forecast)
        score = forecast.score_forecast(result, synthetic.iloc[-30:])
        print(
            f"synthetic first_seen {minutes} pts: fit {fit_s:.3f} s, predict 30 {predict_s:.3f} s, "
            f"coverage {score['coverage']:.2f}, MAPE {score['mape']:.1f}%, model {result['model'].iloc[0]}"
        )


if __name__ == "__main__":
    main()
