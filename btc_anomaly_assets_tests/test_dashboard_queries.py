"""The dashboard's DuckDB queries, on a small warehouse whose rows the tests know."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_assets.dashboard import queries as q
from btc_anomaly_assets.dashboard.app import (
    anomaly_share_figure,
    clusters_figure,
    explanation_detail_view,
    forecast_figure,
    tx_count_figure,
)
from btc_anomaly_assets.forecast.model import forecast_series
from btc_anomaly_assets_tests.small_warehouse import FLAGGED, add_live_explanation, build_small_warehouse

ALL = q.Window()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Warehouse, dict[str, pd.DataFrame]]:
    path = str(tmp_path_factory.mktemp("dash_wh") / "warehouse.duckdb")
    return Warehouse(path), build_small_warehouse(path)


@pytest.fixture()
def empty(tmp_path) -> Warehouse:
    wh = Warehouse(str(tmp_path / "empty.duckdb"))
    wh.query("SELECT 1")  # the file and schema exist, no table does
    return wh


def test_presence_extent_and_basis(built, empty):
    wh, frames = built
    assert all(q.table_presence(wh).values())
    assert not any(q.table_presence(empty).values())
    first, last = q.data_extent(wh)
    assert (first, last) == (frames["minute_aggregates"]["minute"].min(), frames["minute_aggregates"]["minute"].max())
    assert q.data_extent(empty) == (None, None)
    assert q.time_basis(wh) == "block"
    assert q.time_basis(empty) is None


def test_trailing_window_ends_after_the_newest_minute():
    window = q.trailing_window(datetime(2025, 8, 13, 1, 59), 1)
    assert (window.start, window.end) == (datetime(2025, 8, 13, 1, 0), datetime(2025, 8, 13, 2, 0))
    assert q.trailing_window(datetime(2025, 8, 13, 1, 59), None) == q.Window()
    assert q.trailing_window(None, 3) == q.Window()
    short_history = q.trailing_window(datetime(2025, 8, 13, 1, 59), 24, datetime(2025, 8, 13, 0, 0))
    assert short_history == q.Window(datetime(2025, 8, 13, 0, 0), datetime(2025, 8, 13, 2, 0))


def test_ewma_series_is_one_metric_in_the_window_in_time_order(built):
    wh, frames = built
    window = q.Window(datetime(2025, 8, 13, 1, 0), datetime(2025, 8, 13, 1, 30))
    series = q.ewma_series(wh, "tx_count", window)
    expected = frames["ewma_anomalies"]
    expected = expected[(expected["metric"] == "tx_count") & (expected["minute"] >= window.start) & (expected["minute"] < window.end)]
    assert len(series) == len(expected) == 30
    assert series["minute"].is_monotonic_increasing
    np.testing.assert_allclose(series["value"], expected["value"])
    assert q.ewma_series(wh, "tx_count", ALL, mode="seed_parity").empty
    assert q.ewma_metrics(wh) == ["tx_count", "log10_max_value_btc"]
    assert q.preferred_mode(q.detection_modes(wh)) == "default"


def test_flagged_minutes_respect_the_severity_floor(built):
    wh, _ = built
    medium = q.flagged_minutes(wh, ALL, "medium")
    expected = {m: s for (m, _metric), s in FLAGGED.items() if s in ("medium", "high")}
    assert dict(zip(pd.to_datetime(medium["minute"]), medium["severity"])) == expected
    assert medium.loc[medium["severity"] == "high", "metrics"].iloc[0] == "log10_max_value_btc (high)"
    assert len(q.flagged_minutes(wh, ALL, "low")) == len(FLAGGED)
    assert len(q.flagged_minutes(wh, ALL, "high")) == 1
    with pytest.raises(ValueError, match="unknown severity 'severe'"):
        q.flagged_minutes(wh, ALL, "severe")


def test_zscore_heatmap_means_scored_z_per_date_and_hour(built):
    wh, frames = built
    cells = q.zscore_by_date_hour(wh, "tx_count")
    rows = frames["ewma_anomalies"]
    rows = rows[(rows["metric"] == "tx_count") & rows["z_score"].notna()]
    expected = rows.groupby(rows["minute"].dt.hour)["z_score"].agg(["mean", "size"])
    assert list(cells["hour"]) == list(expected.index)
    np.testing.assert_allclose(cells["mean_z"], expected["mean"])
    assert list(cells["minutes"]) == list(expected["size"])


def test_anomalies_by_hour_and_share_count_minutes(built):
    wh, frames = built
    by_hour = q.anomalies_by_hour(wh, ALL, "medium")
    flagged = [m for m, s in {m: s for (m, _), s in FLAGGED.items()}.items() if s in ("medium", "high")]
    assert by_hour["minutes"].sum() == len(flagged)
    assert set(by_hour["hour"]) == {m.hour for m in flagged}
    share = dict(zip(*q.anomaly_share(wh, ALL, "medium").to_dict("list").values()))
    block_minutes = int((frames["minute_aggregates"]["tx_count"] > 0).sum())
    assert share == {
        "anomalous": len(flagged),
        "normal": block_minutes - len(flagged),
        "not scored": len(frames["minute_aggregates"]) - block_minutes,
    }
    low_share = dict(zip(*q.anomaly_share(wh, ALL, "low").to_dict("list").values()))
    assert low_share["anomalous"] == len(FLAGGED)


def test_clusters_over_time_group_by_minute_and_pattern(built):
    wh, frames = built
    everything = q.clusters_over_time(wh, ALL, "info")
    assert len(everything) == len(frames["coordinated_clusters"])
    assert everything["members"].sum() == frames["coordinated_clusters"]["tx_count"].sum()
    low_plus = q.clusters_over_time(wh, ALL, "low")
    assert set(low_plus["pattern"]) == {"similar_burst", "coinjoin"}
    assert set(low_plus["severity"]) == {"medium", "low"}


def test_latest_forecast_takes_the_newest_cutoff_in_the_window(built):
    wh, frames = built
    newest = q.latest_forecast(wh)
    assert len(newest) == 30 and set(newest["cutoff"]) == {pd.Timestamp("2025-08-13 02:00")}
    assert newest["ds"].is_monotonic_increasing
    earlier = q.latest_forecast(wh, q.Window(datetime(2025, 8, 13, 1, 0), datetime(2025, 8, 13, 1, 30)))
    assert set(earlier["cutoff"]) == {pd.Timestamp("2025-08-13 01:30")}
    assert q.latest_forecast(wh, q.Window(datetime(2025, 8, 13, 0, 0), datetime(2025, 8, 13, 0, 30))).empty


def test_forecast_actuals_are_the_forecast_series_of_the_aggregates(built):
    wh, frames = built
    forecast = q.latest_forecast(wh, q.Window(None, datetime(2025, 8, 13, 1, 30)))
    actuals = q.forecast_actuals(wh, forecast, context_minutes=30)
    expected = forecast_series(frames["minute_aggregates"])  # block time: trailing 60-minute rate
    expected = expected[expected["ds"] >= pd.Timestamp("2025-08-13 01:00")]
    assert list(actuals["ds"]) == list(expected["ds"])
    np.testing.assert_allclose(actuals["y"], expected["y"])
    assert set(actuals["series"]) == {"tx_per_minute_trailing_60min"}
    assert q.forecast_actuals(wh, forecast.iloc[0:0]).empty
    excursions = q.forecast_excursions(wh, forecast["cutoff"].iloc[0])
    assert list(excursions["direction"]) == ["above"]
    assert q.forecast_excursions(wh, pd.Timestamp("2025-08-13 02:00")).empty


def test_explanations_are_display_ready_and_searchable(built):
    wh, _ = built
    rows = q.explanations(wh)
    assert list(rows.columns) == q.EXPLANATION_DISPLAY_COLUMNS
    ok = rows[rows["status"] == "ok"].iloc[0]
    assert ok["minute"] == "2025-08-13 00:33"
    assert ok["kind"] == "ewma_metric" and ok["model"] == "claude-haiku-4-5-20251001"
    assert ok["legitimate_causes"] == "exchange cold-wallet rebalancing, OTC settlement"
    assert ok["flag_for_investigation"] == "yes" and ok["insufficient_evidence"] == "no"
    failed = rows[rows["status"] == "failed"].iloc[0]
    assert failed["flag_for_investigation"] == "" and failed["error"] == "answer truncated at max_tokens"
    assert failed["suspected_patterns"] == "" and failed["legitimate_causes"] == ""  # NULL lists, not "<NA>"
    assert failed["summary"] == "explanation failed: answer truncated at max_tokens"
    assert list(q.search_rows(rows, "OTC")["anomaly_id"]) == [ok["anomaly_id"]]
    assert len(q.search_rows(rows, "  ")) == len(rows)
    assert q.search_rows(rows, "no such text").empty


def test_new_rows_are_seen_on_the_next_query(tmp_path):
    path = str(tmp_path / "live.duckdb")
    build_small_warehouse(path)
    wh = Warehouse(path)
    before = q.explanations(wh)
    summary = add_live_explanation(path)
    after = q.explanations(wh)
    assert len(after) == len(before) + 1
    assert summary in set(after["summary"])


def test_missing_tables_read_as_empty_frames(empty):
    assert q.ewma_series(empty, "tx_count").empty
    assert q.flagged_minutes(empty).empty
    assert q.anomalies_by_hour(empty).empty
    assert q.anomaly_share(empty)["minutes"].sum() == 0
    assert q.clusters_over_time(empty).empty
    assert q.latest_forecast(empty).empty
    assert q.explanations(empty).empty
    assert list(q.explanations(empty).columns) == q.EXPLANATION_DISPLAY_COLUMNS
    assert q.ewma_metrics(empty) == [] and q.detection_modes(empty) == []


def test_figures_draw_the_queried_rows(built):
    wh, _ = built
    fig = tx_count_figure(q.ewma_series(wh, "tx_count"), q.flagged_minutes(wh), "block", "medium")
    names = [t.name for t in fig.data]
    assert names == ["transactions in minute", "EWMA baseline (per block)", "flagged: medium", "flagged: high"]
    high = next(t for t in fig.data if t.name == "flagged: high")
    assert list(high.customdata) == ["log10_max_value_btc (high)"]
    share = anomaly_share_figure(q.anomaly_share(wh), "medium")
    assert list(share.data[0].values) == [2, 10]
    clusters = clusters_figure(q.clusters_over_time(wh, ALL, "low"), "low")
    assert sorted(t.name for t in clusters.data) == ["coinjoin", "similar_burst"]
    forecast = q.latest_forecast(wh)
    fig = forecast_figure(forecast, q.forecast_actuals(wh, forecast), q.forecast_excursions(wh, None))
    assert [t.name for t in fig.data][1:] == ["95 % interval", "forecast", "actual"]
    empty_fig = clusters_figure(q.clusters_over_time(wh, q.Window(None, datetime(2025, 8, 13)), "low"), "low")
    assert empty_fig.data == () and "No cluster" in empty_fig.layout.annotations[0].text


def test_detail_view_shows_every_answer_field(built):
    wh, _ = built
    row = q.explanations(wh).query("status == 'ok'").iloc[0].to_dict()
    text = str(explanation_detail_view(row))
    for expected in ("A single 19,609 BTC transfer", "83x the usual largest transaction", "OTC settlement",
                     "above the 1,000 BTC review threshold", "1200 in / 300 out tokens", "$0.0027"):
        assert expected in text


def test_a_shared_connection_reads_missing_tables_as_empty(empty):
    # DuckDB would otherwise resolve a missing table to a same-named Python object (e.g. the
    # function queries.forecast_excursions) instead of reporting it missing.
    with q.reading(empty) as session:
        assert q.forecast_excursions(session, pd.Timestamp("2025-08-13 02:00")).empty
        assert q.explanations(session).empty
        assert q.latest_forecast(session).empty
        assert not any(q.table_presence(session).values())


def test_views_read_everything_through_one_connection(built):
    from btc_anomaly_assets.dashboard import app as dash_app

    wh, _ = built
    with q.reading(wh) as session:
        tx_fig, by_hour, share, note, options = dash_app.overview_view(session, "all", "medium")
        rows, count = dash_app.explanation_rows_view(session, 24, "OTC")
        forecast_fig, forecast_note = dash_app.forecast_view(session, "all")
    assert [o["value"] for o in options] == ["tx_count", "log10_max_value_btc"]
    assert note.startswith("Time basis: block time")
    assert len(rows) == 1 and count.startswith("1 of 2 explanations")
    assert "Forecast made at 2025-08-13 02:00 UTC from 60 points" in forecast_note


def test_forecast_actuals_through_a_stretch_without_blocks_are_zero(tmp_path, built):
    from btc_anomaly_assets.common.schema import MINUTE_AGGREGATE_COLUMNS, column_names

    _, frames = built
    quiet = frames["minute_aggregates"].copy()
    quiet["tx_count"], quiet["time_basis"] = 0, None  # two hours in which no block landed
    wh = Warehouse(str(tmp_path / "quiet.duckdb"))
    wh.replace_window("minute_aggregates", MINUTE_AGGREGATE_COLUMNS, quiet[column_names(MINUTE_AGGREGATE_COLUMNS)],
                      datetime(2025, 8, 13), datetime(2025, 8, 13, 2))
    forecasts = frames["transaction_forecast"]
    forecast = forecasts[forecasts["cutoff"] == pd.Timestamp("2025-08-13 01:30")]
    actuals = q.forecast_actuals(wh, forecast, context_minutes=20)
    assert len(actuals) == 50  # 01:10 (cutoff - 20 min) .. 01:59, the last stored minute
    assert (actuals["y"] == 0).all()


def test_links_choose_the_tab_and_the_window():
    from btc_anomaly_assets.dashboard.app import DEFAULT_WINDOW_HOURS, view_from_query

    assert view_from_query("?tab=audit&window=all") == ("audit", "all")
    assert view_from_query("?window=6&tab=detection") == ("detection", 6)
    assert view_from_query("") == ("overview", DEFAULT_WINDOW_HOURS)
    assert view_from_query("?tab=nope&window=5") == ("overview", DEFAULT_WINDOW_HOURS)
