"""``write_report``: the tutorial's report files from a small DuckDB warehouse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_assets.dashboard.report import REPORT_FILES, ReportError, explanation_text, write_report
from btc_anomaly_assets_tests.small_warehouse import FLAGGED, build_small_warehouse

# The tutorial's headers (btc_anomaly_testing/fixtures/seed_run), which must lead every file in this order.
TUTORIAL_HEADERS = {
    "tx_count_1min.csv": ["tx_count_1min", "window_start"],
    "tx_agg_1min.csv": ["avg_value", "avg_fee", "avg_fee_to_value_ratio", "avg_input_count", "avg_output_count",
                        "avg_tx_size", "window_start", "window_end"],
    "tx_agg_5min.csv": ["avg_value", "avg_fee", "avg_fee_to_value_ratio", "avg_input_count", "avg_output_count",
                        "avg_tx_size", "window_start", "window_end"],
    "ewma_anomalies.csv": ["tx_count_1min", "window_start", "ewma", "residual", "z_score", "is_anomaly"],
    "coordinated_attacks.csv": ["minute", "total_flagged", "avg_input_count", "avg_output_count", "sample_tx_hash"],
    "anomaly_explanations_full.csv": ["tx_index", "window_start", "window_end", "tx_count_1min", "explanation"],
    "prophet_forecast.csv": ["ds", "yhat", "yhat_lower", "yhat_upper"],
}


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> tuple[str, dict[str, pd.DataFrame]]:
    path = str(tmp_path_factory.mktemp("report_wh") / "warehouse.duckdb")
    return path, build_small_warehouse(path)


@pytest.fixture(scope="module")
def report(warehouse, tmp_path_factory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("report_out")
    return out, write_report(warehouse[0], out)


def _csv(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name, keep_default_na=True)


def test_every_file_is_written_with_the_tutorial_columns_first(report):
    out, written = report
    assert sorted(written) == sorted(REPORT_FILES) == sorted(TUTORIAL_HEADERS)
    for name, header in TUTORIAL_HEADERS.items():
        columns = list(pd.read_csv(out / name, nrows=0).columns)
        assert columns[: len(header)] == header, name
        assert written[name] == len(_csv(out, name)), name


def test_tx_count_1min_lists_every_minute_zero_filled(report, warehouse):
    out, _ = report
    aggregates = warehouse[1]["minute_aggregates"]
    frame = _csv(out, "tx_count_1min.csv")
    assert len(frame) == len(aggregates)
    assert frame["tx_count_1min"].sum() == aggregates["tx_count"].sum()
    assert (frame["tx_count_1min"] == 0).sum() == (aggregates["tx_count"] == 0).sum()
    assert frame["window_start"].iloc[0] == "2025-08-13 00:00:00"
    assert frame["window_start"].is_monotonic_increasing


def test_tx_agg_1min_maps_our_averages_for_minutes_with_transactions(report, warehouse):
    out, _ = report
    aggregates = warehouse[1]["minute_aggregates"]
    busy = aggregates[aggregates["tx_count"] > 0].reset_index(drop=True)
    frame = _csv(out, "tx_agg_1min.csv")
    assert len(frame) == len(busy)
    np.testing.assert_allclose(frame["avg_value"], busy["avg_value_sat"])
    np.testing.assert_allclose(frame["avg_tx_size"], busy["avg_tx_size_bytes"])
    np.testing.assert_allclose(frame["avg_fee_to_value_ratio"], busy["avg_fee_to_value_ratio"])
    starts, ends = pd.to_datetime(frame["window_start"]), pd.to_datetime(frame["window_end"])
    assert list(starts) == list(busy["minute"])
    assert ((ends - starts) == pd.Timedelta(minutes=1)).all()


def test_tx_agg_5min_takes_the_trailing_columns_at_five_minute_boundaries(report, warehouse):
    out, _ = report
    aggregates = warehouse[1]["minute_aggregates"].set_index("minute")
    frame = _csv(out, "tx_agg_5min.csv")
    starts, ends = pd.to_datetime(frame["window_start"]), pd.to_datetime(frame["window_end"])
    assert len(frame) > 0
    assert (starts.dt.minute % 5 == 0).all()
    assert ((ends - starts) == pd.Timedelta(minutes=5)).all()
    last_minutes = ends - pd.Timedelta(minutes=1)
    np.testing.assert_allclose(frame["avg_value"], aggregates.loc[last_minutes, "avg_value_sat_5min"])
    np.testing.assert_allclose(frame["avg_input_count"], aggregates.loc[last_minutes, "avg_input_count_5min"])
    # Every 5-minute window that holds a block is there (one block every 10 minutes).
    busy = aggregates[aggregates["tx_count"] > 0].index
    assert set(starts) == {m.floor("5min") for m in busy}


def test_ewma_anomalies_maps_baseline_deviation_and_medium_plus_flags(report, warehouse):
    out, _ = report
    rows = warehouse[1]["ewma_anomalies"]
    tx_rows = rows[rows["metric"] == "tx_count"].reset_index(drop=True)
    frame = _csv(out, "ewma_anomalies.csv")
    assert len(frame) == len(tx_rows)
    assert list(frame["tx_count_1min"]) == list(tx_rows["tx_count"])
    np.testing.assert_allclose(frame["ewma"], tx_rows["baseline"])
    np.testing.assert_allclose(frame["residual"], tx_rows["deviation"])
    np.testing.assert_allclose(frame["z_score"], tx_rows["z_score"])
    flagged = {m.strftime("%Y-%m-%d %H:%M:%S") for (m, metric), s in FLAGGED.items() if metric == "tx_count" and s in ("medium", "high")}
    assert set(frame.loc[frame["is_anomaly"] == 1, "window_start"]) == flagged
    assert set(frame["is_anomaly"]) <= {0, 1}


def test_coordinated_attacks_keeps_low_plus_clusters_per_minute(report):
    out, _ = report
    frame = _csv(out, "coordinated_attacks.csv")
    # The info fan_out_batch at 00:33 is left out at the default floor (low).
    assert list(frame["minute"]) == ["2025-08-13 00:33:00", "2025-08-13 01:13:00"]
    first = frame.iloc[0]
    assert first["total_flagged"] == 10 and first["patterns"] == "similar_burst" and first["severity"] == "medium"
    assert frame.iloc[1]["avg_input_count"] == 60.0


def test_coordinated_attacks_counts_shared_members_once_and_weights_means(warehouse, tmp_path):
    write_report(warehouse[0], tmp_path, cluster_min_severity="info")
    frame = _csv(tmp_path, "coordinated_attacks.csv")
    clusters = warehouse[1]["coordinated_clusters"]
    at = clusters[clusters["minute"] == pd.Timestamp("2025-08-13 00:33")]
    distinct = {h for hashes in at["member_hashes"] for h in hashes}
    row = frame[frame["minute"] == "2025-08-13 00:33:00"].iloc[0]
    assert row["total_flagged"] == len(distinct) < at["tx_count"].sum()
    expected_inputs = (at["avg_input_count"] * at["tx_count"]).sum() / at["tx_count"].sum()
    assert row["avg_input_count"] == pytest.approx(expected_inputs)
    # The sample comes from the most severe cluster (the medium burst), not the larger info batch.
    burst = at[at["severity"] == "medium"].iloc[0]
    assert row["sample_tx_hash"] == burst["sample_tx_hash"]
    assert row["patterns"] == "fan_out_batch;similar_burst"


def test_explanations_file_has_counts_and_the_structured_answer_as_text(report, warehouse):
    out, _ = report
    frame = _csv(out, "anomaly_explanations_full.csv")
    aggregates = warehouse[1]["minute_aggregates"].set_index("minute")
    assert list(frame["tx_index"]) == list(range(len(frame)))
    assert len(frame) == len(warehouse[1]["anomaly_explanations"])
    for _, row in frame.iterrows():
        minute = pd.Timestamp(row["window_start"])
        assert row["tx_count_1min"] == aggregates.loc[minute, "tx_count"]
        assert pd.Timestamp(row["window_end"]) - minute == pd.Timedelta(minutes=1)
    ok = frame[frame["status"] == "ok"].iloc[0]["explanation"]
    assert "A single 19,609 BTC transfer landed in block 909769." in ok
    assert "2. Suspected patterns: large_transfer" in ok
    assert "3. Legitimate causes: exchange cold-wallet rebalancing, OTC settlement" in ok
    assert "4. Flag for investigation: yes - above the 1,000 BTC review threshold" in ok
    failed = frame[frame["status"] == "failed"].iloc[0]["explanation"]
    assert "Explanation failed: answer truncated at max_tokens" in failed


def test_prophet_forecast_is_the_newest_forecast(report, warehouse):
    out, _ = report
    frame = _csv(out, "prophet_forecast.csv")
    forecasts = warehouse[1]["transaction_forecast"]
    newest = forecasts[forecasts["cutoff"] == forecasts["cutoff"].max()]
    assert len(frame) == len(newest) == 30
    assert set(frame["cutoff"]) == {f"{forecasts['cutoff'].max():%Y-%m-%d %H:%M:%S}"}
    np.testing.assert_allclose(frame["yhat"], newest["yhat"])
    assert "trend" not in frame.columns  # not stored by our forecast asset


def test_start_and_end_restrict_every_file(warehouse, tmp_path):
    written = write_report(warehouse[0], tmp_path, start="2025-08-13 01:00", end="2025-08-13 01:30")
    assert written["tx_count_1min.csv"] == 30
    starts = pd.to_datetime(_csv(tmp_path, "tx_count_1min.csv")["window_start"])
    assert starts.min() == pd.Timestamp("2025-08-13 01:00") and starts.max() == pd.Timestamp("2025-08-13 01:29")
    assert written["anomaly_explanations_full.csv"] == 0  # both explanations are at 00:33
    assert list(_csv(tmp_path, "coordinated_attacks.csv")["minute"]) == ["2025-08-13 01:13:00"]
    # The forecast made at 01:30 is the newest whose origin lies in (01:00, 01:30].
    assert set(_csv(tmp_path, "prophet_forecast.csv")["cutoff"]) == {"2025-08-13 01:30:00"}


def test_an_empty_warehouse_gives_header_only_files(tmp_path):
    path = tmp_path / "empty.duckdb"
    Warehouse(str(path)).query("SELECT 1")  # creates the file and the schema, no table
    written = write_report(path, tmp_path / "out")
    assert set(written.values()) == {0}
    for name, header in TUTORIAL_HEADERS.items():
        text = (tmp_path / "out" / name).read_text()
        assert text.splitlines()[0].split(",")[: len(header)] == header
        assert len(text.splitlines()) == 1


def test_a_missing_warehouse_is_an_error_and_is_not_created(tmp_path):
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(ReportError, match="no DuckDB warehouse at .*nope.duckdb"):
        write_report(missing, tmp_path / "out")
    assert not missing.exists()


def test_bad_range_and_severity_are_rejected(warehouse, tmp_path):
    with pytest.raises(ReportError, match="end must be after start"):
        write_report(warehouse[0], tmp_path, start="2025-08-13 02:00", end="2025-08-13 01:00")
    with pytest.raises(ReportError, match="cluster_min_severity='severe'"):
        write_report(warehouse[0], tmp_path, cluster_min_severity="severe")


def test_explanation_text_renders_the_four_answers():
    text = explanation_text({
        "kind": "coordinated_cluster", "subject": "coinjoin", "severity": "low", "status": "ok",
        "narrative": "Whirlpool round.", "summary": "a coinjoin", "statistically_unusual": False,
        "unusual_reason": "expected share", "suspected_patterns": np.array(["mixing_coinjoin"]),
        "legitimate_causes": ["privacy"], "flag_for_investigation": False, "flag_rationale": "routine",
        "confidence": "medium", "insufficient_evidence": True, "source": "rules", "model": "rules-v1",
    })
    lines = text.splitlines()
    assert lines[0] == "[coordinated_cluster coinjoin, severity low]"
    assert lines[1] == "Whirlpool round."
    assert "1. Statistically unusual: no - expected share" in lines
    assert "2. Suspected patterns: mixing_coinjoin" in lines
    assert "Confidence: medium; insufficient evidence: yes" in lines
    assert lines[-1] == "Source: rules (rules-v1), status ok"


def test_mode_selects_the_detection_rows(warehouse, tmp_path):
    written = write_report(warehouse[0], tmp_path, mode="seed_parity")  # the fixture holds default rows only
    assert written["ewma_anomalies.csv"] == 0 and written["coordinated_attacks.csv"] == 0
    assert written["tx_count_1min.csv"] == 120
    with pytest.raises(ReportError, match="mode='fast' is not a detection mode"):
        write_report(warehouse[0], tmp_path, mode="fast")


def test_command_line_options_write_the_report(warehouse, tmp_path, capsys):
    import argparse

    from btc_anomaly_assets.dashboard.report import add_report_arguments, run_report

    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--duckdb", warehouse[0],
                              "--start", "2025-08-13-01:00", "--end", "2025-08-13-01:10"])
    assert run_report(args) == 0
    assert "tx_count_1min.csv" in capsys.readouterr().out
    assert len(_csv(tmp_path, "tx_count_1min.csv")) == 10
    missing = parser.parse_args(["--out", str(tmp_path), "--duckdb", str(tmp_path / "none.duckdb")])
    assert run_report(missing) == 2
    assert "no DuckDB warehouse" in capsys.readouterr().err
