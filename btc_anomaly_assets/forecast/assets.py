"""btc/transaction_forecast: Prophet forecast of activity 30 one-minute steps ahead."""

import hashlib
from datetime import timedelta

import dagster as dg
import pandas as pd

from btc_anomaly_assets.common.dagster_helpers import (
    DUCKDB_POOL,
    MINUTE_AGGREGATES,
    OWNERS,
    PARTITION_FMT,
    TRANSACTION_FORECAST,
    add_minute_metadata,
    add_partition_metadata,
    column_schema,
    markdown_preview,
    preview_metadata,
    window_of,
)
from btc_anomaly_assets.common.partitions import minute_partitions
from btc_anomaly_assets.common.resources import WarehouseResource
from btc_anomaly_assets.common.schema import (
    FORECAST_EXCURSION_COLUMNS,
    MINUTE_AGGREGATE_COLUMNS,
    TRANSACTION_FORECAST_COLUMNS,
)

TABLE = "transaction_forecast"
EXCURSIONS_TABLE = "forecast_excursions"
FORECAST_QUALITY = "previous_forecast_quality"


QUALITY_DESCRIPTION = (
    "How the previous forecast did against what then happened (MAPE, coverage of its interval); warns below "
    "min_coverage. On block-time data (the bundled sample, dumps) it is expected to warn: the series is then the "
    "trailing 60-minute rate, which steps whenever a block of thousands of transactions enters or leaves the hour, "
    "at random times, and no 30-minute interval follows those steps. On first-seen (mempool) data it is a real signal."
)


class ForecastConfig(dg.Config):
    history_minutes: int = 360
    """Trailing minutes of btc.minute_aggregates the model is fitted on (read straight from DuckDB)."""
    horizon_minutes: int = 30
    min_coverage: float = 0.8
    """The quality check warns when fewer actuals than this fall inside the previous forecast's interval."""


def excursion_id(series: str, cutoff: pd.Timestamp, ds: pd.Timestamp) -> str:
    return hashlib.sha1(f"forecast|{series}|{cutoff:%Y-%m-%d %H:%M}|{ds:%Y-%m-%d %H:%M}".encode()).hexdigest()


@dg.asset(
    key=TRANSACTION_FORECAST,
    group_name="forecast",
    kinds={"prophet", "duckdb"},
    owners=OWNERS,
    partitions_def=minute_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[MINUTE_AGGREGATES],
    pool=DUCKDB_POOL,
    check_specs=[dg.AssetCheckSpec(FORECAST_QUALITY, asset=TRANSACTION_FORECAST,
                                   description=QUALITY_DESCRIPTION)],
    metadata={"dagster/column_schema": column_schema(TRANSACTION_FORECAST_COLUMNS), "partition_expr": "minute",
              "dagster/table_name": "btc.transaction_forecast"},
)
def transaction_forecast(context: dg.AssetExecutionContext, config: ForecastConfig, warehouse: WarehouseResource):
    """30 one-minute steps of forecast activity from the end of the window, with its interval.

    Fitted on what Prophet can model honestly: first-seen arrivals per minute when the source has
    them; with block-time data the trailing 60-minute rate (transactions per minute), never the
    bursty block-minute counts. Fitted on log1p, so counts and bounds are never negative. Reads a
    bounded trailing window of btc.minute_aggregates straight from DuckDB.
    """
    from btc_anomaly_assets.forecast.model import (
        MIN_HISTORY_POINTS,
        ForecastError,
        fit_and_forecast,
        forecast_series,
        interval_excursions,
        score_forecast,
    )

    start, end = window_of(context)
    wh = warehouse.get()
    history = wh.read_window("minute_aggregates", MINUTE_AGGREGATE_COLUMNS, end - timedelta(minutes=config.history_minutes), end)
    series = forecast_series(history) if int(history["tx_count"].sum()) else None
    if series is None or len(series) < MIN_HISTORY_POINTS:
        # Nothing to extrapolate yet: a quiet trailing window, or a deployment's first minutes.
        # Record that plainly (warning + metadata) instead of failing the live run.
        reason = ("no transactions in the trailing window" if series is None
                  else f"only {len(series)} points of history (at least {MIN_HISTORY_POINTS} needed)")
        context.log.warning(f"no forecast at {end}: {reason}")
        wh.replace_window(TABLE, TRANSACTION_FORECAST_COLUMNS, pd.DataFrame(columns=[c.name for c in TRANSACTION_FORECAST_COLUMNS]),
                          start, end)
        add_minute_metadata(context, start, end, pd.DataFrame({"dagster/row_count": pd.Series(dtype="int64")}))
        return dg.MaterializeResult(
            metadata={"note": f"no forecast: {reason}"},
            check_results=[dg.AssetCheckResult(check_name=FORECAST_QUALITY, passed=True, metadata={"note": f"no forecast: {reason}"})],
        )
    try:
        forecast = fit_and_forecast(series, horizon_minutes=config.horizon_minutes)
    except ForecastError as exc:
        raise dg.Failure(f"cannot forecast from [{end - timedelta(minutes=config.history_minutes)}, {end}): {exc}") from exc

    stored = forecast.assign(minute=end - timedelta(minutes=1), history_points=len(series))
    stored = stored[[c.name for c in TRANSACTION_FORECAST_COLUMNS]]
    wh.replace_window(TABLE, TRANSACTION_FORECAST_COLUMNS, stored, start, end)

    # Score the latest forecast whose whole horizon has now happened (made >= horizon minutes
    # ago); without one, back-test a forecast from that cutoff so the figures exist from run one.
    cut = end - timedelta(minutes=config.horizon_minutes)
    previous = wh.query(
        f"SELECT * FROM btc.{TABLE} WHERE cutoff = (SELECT max(cutoff) FROM btc.{TABLE} WHERE cutoff <= ?)", [cut]
    )
    label = "stored"
    if previous.empty:
        past = series[series["ds"] < pd.Timestamp(cut)]
        try:
            previous = fit_and_forecast(past, horizon_minutes=config.horizon_minutes)
            label = "backtest"
        except ForecastError:
            previous = pd.DataFrame()
    quality = score_forecast(previous, series) if not previous.empty else None
    excursions = interval_excursions(previous, series) if not previous.empty else pd.DataFrame()
    _store_excursions(wh, excursions, start, end)

    check = _quality_check(quality, label, previous, config.min_coverage)
    # The forecast belongs to the window's last minute (its cutoff); the other minutes of a range hold none.
    add_minute_metadata(context, start, end, pd.DataFrame({"dagster/row_count": [len(stored)]}, index=[end - timedelta(minutes=1)]))
    add_partition_metadata(context, {(end - timedelta(minutes=1)).strftime(PARTITION_FMT): {
        "history_points": len(series),
        "yhat_first": float(stored["yhat"].iloc[0]),
        "yhat_last": float(stored["yhat"].iloc[-1]),
        "forecast_mape_pct": float(quality["mape"]) if quality and quality["mape"] is not None else float("nan"),
        "forecast_coverage": float(quality["coverage"]) if quality and quality["coverage"] is not None else float("nan"),
        "excursions": len(excursions),
    }})
    return dg.MaterializeResult(
        metadata={
            "cutoff": str(stored["cutoff"].iloc[0]),
            "series": str(stored["series"].iloc[0]),
            **preview_metadata(context, markdown_preview(stored[["ds", "step", "yhat", "yhat_lower", "yhat_upper"]], limit=30)),
        },
        check_results=[check],
    )


def _store_excursions(wh, excursions: pd.DataFrame, start, end) -> None:
    """Excursions whose minute falls in this window become the forecast alert signal."""
    if excursions.empty:
        rows = pd.DataFrame(columns=[c.name for c in FORECAST_EXCURSION_COLUMNS])
    else:
        rows = excursions.assign(
            minute=excursions["ds"],
            anomaly_id=[excursion_id(s, c, d) for s, c, d in zip(excursions["series"], excursions["cutoff"], excursions["ds"])],
        )
        rows = rows[(rows["minute"] >= pd.Timestamp(start)) & (rows["minute"] < pd.Timestamp(end))]
        rows = rows[[c.name for c in FORECAST_EXCURSION_COLUMNS]]
    wh.replace_window(EXCURSIONS_TABLE, FORECAST_EXCURSION_COLUMNS, rows, start, end)


def _quality_check(quality: dict | None, label: str, previous: pd.DataFrame, min_coverage: float) -> dg.AssetCheckResult:
    from btc_anomaly_assets.forecast.model import SERIES_BLOCK_RATE

    if not quality or not quality["n_points"]:
        return dg.AssetCheckResult(check_name=FORECAST_QUALITY, passed=True,
                                   metadata={"note": "no earlier forecast with observed steps yet"})
    coverage = quality["coverage"]
    return dg.AssetCheckResult(
        check_name=FORECAST_QUALITY,
        passed=coverage >= min_coverage,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{label} forecast from {previous['cutoff'].iloc[0]}: coverage {coverage:.0%} (minimum {min_coverage:.0%})"
        + (" - expected on block-time data (trailing-rate series; see the check's description)"
           if coverage < min_coverage and previous["series"].iloc[0] == SERIES_BLOCK_RATE else ""),
        metadata={
            "scored_forecast": label,
            "scored_cutoff": str(previous["cutoff"].iloc[0]),
            "mape_pct": float(quality["mape"]) if quality["mape"] is not None else float("nan"),
            "coverage": float(coverage),
            "points": quality["n_points"],
            "outside_interval": quality["n_outside"],
        },
    )
