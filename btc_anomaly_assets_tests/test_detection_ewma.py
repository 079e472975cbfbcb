"""EWMA anomaly scoring: seed parity with the tutorial, and the default mode on the real 13-14 Aug 2025 blocks.

Real-data targets (issue "Detection that analysts can trust"): no flag comes from the block-time
basis itself, the three ~19,600 BTC transfers are medium or above in their minutes, at most 6
minutes are medium or above over the ~4.5 hours, and injected events are caught in their minute.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from btc_anomaly_assets.common.schema import EWMA_ANOMALY_COLUMNS, MINUTE_AGGREGATE_COLUMNS, column_names, severity_rank
from btc_anomaly_assets.detection.config import (
    MODE_SEED_PARITY,
    EwmaConfig,
    MetricSpec,
    SeverityThresholds,
)
from btc_anomaly_assets.detection.ewma import (
    EWMA_LOOKBACK_MINUTES,
    EwmaInputError,
    anomaly_id,
    detect_ewma_anomalies,
    robust_ewma_baseline,
)
from btc_anomaly_testing import real_data as rd

MEDIUM_PLUS = ("medium", "high")
FEE_METRICS = ("log10_median_fee_rate_sat_vb", "log10_p90_fee_rate_sat_vb", "log10_p99_fee_rate_sat_vb", "fee_outlier_tx_count")
# The three ~19,600 BTC single transactions named in the issue, with their blocks.
WHALES = {
    "2d9ab70a": (909770, datetime(2025, 8, 13, 0, 18)),
    "216b27ff": (909782, datetime(2025, 8, 13, 2, 19)),
    "00c540dd": (909923, datetime(2025, 8, 14, 0, 20)),
}


def minute_frame(rows: list[dict]) -> pd.DataFrame:
    """A MINUTE_AGGREGATE_COLUMNS frame from partial rows (missing statistics NaN, counts 0)."""
    names = column_names(MINUTE_AGGREGATE_COLUMNS)
    frame = pd.DataFrame(rows)
    for column in MINUTE_AGGREGATE_COLUMNS:
        if column.name not in frame.columns:
            if column.name == "block_ids":
                frame[column.name] = [[] for _ in range(len(frame))]
            elif column.name == "time_basis":
                frame[column.name] = None
            elif column.dagster_type in ("bigint", "integer"):
                frame[column.name] = 0
            else:
                frame[column.name] = np.nan
    return frame[names]


def score_window(raw: pd.DataFrame, start: datetime, end: datetime, config: EwmaConfig | None = None) -> pd.DataFrame:
    aggregates = rd.minute_aggregates(raw, start - timedelta(minutes=EWMA_LOOKBACK_MINUTES), end)
    return detect_ewma_anomalies(aggregates, start, end, config)


@pytest.fixture(scope="module")
def real_raw() -> pd.DataFrame:
    return rd.real_raw()


@pytest.fixture(scope="module")
def real_scores(real_raw) -> pd.DataFrame:
    return pd.concat([score_window(real_raw, start, end) for start, end in rd.REAL_WINDOWS], ignore_index=True)


# --- seed parity ---------------------------------------------------------------------------------


def test_seed_parity_reproduces_the_tutorial_ewma_csv():
    counts = pd.read_csv(rd.SEED_RUN_DIR / "tx_count_1min.csv", parse_dates=["window_start"])
    oracle = pd.read_csv(rd.SEED_RUN_DIR / "ewma_anomalies.csv", parse_dates=["window_start"])
    start = counts["window_start"].min().to_pydatetime()
    end = counts["window_start"].max().to_pydatetime() + timedelta(minutes=1)
    # The tutorial only had its 31 non-empty minutes; the aggregates fill every minute with zeros.
    filled = pd.DataFrame({"minute": pd.date_range(start, end, freq="min", inclusive="left")})
    filled = filled.merge(counts.rename(columns={"window_start": "minute", "tx_count_1min": "tx_count"}), how="left")
    filled["tx_count"] = filled["tx_count"].fillna(0).astype("int64")
    filled["time_basis"] = np.where(filled["tx_count"] > 0, "block", None)
    filled["block_count"] = (filled["tx_count"] > 0).astype("int64")
    aggregates = minute_frame(filled.to_dict("records"))

    out = detect_ewma_anomalies(aggregates, start, end, EwmaConfig(mode=MODE_SEED_PARITY))

    assert len(out) == len(filled)  # one row per minute of the window, empty minutes included
    scored = out[out["z_score"].notna()].set_index("minute")
    expected = oracle.set_index("window_start")
    assert list(scored.index) == list(expected.index)
    np.testing.assert_allclose(scored["value"], expected["tx_count_1min"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(scored["baseline"], expected["ewma"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(scored["deviation"], expected["residual"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(scored["z_score"], expected["z_score"], rtol=0, atol=1e-9)
    flagged = scored["severity"] != "info"
    assert list(flagged.astype(int)) == list(expected["is_anomaly"])
    assert (scored.loc[flagged, "severity"] == "medium").all()
    assert set(out.loc[out["z_score"].isna(), "rule"]) == {"not_scored:empty_minute_not_in_seed_series"}
    assert (out["mode"] == MODE_SEED_PARITY).all()


# --- default mode on the real blocks ----------------------------------------------------------------


def test_every_minute_gets_one_row_per_metric(real_scores):
    metrics = [spec.name for spec in EwmaConfig().metrics]
    minutes = sum(int((end - start) / timedelta(minutes=1)) for start, end in rd.REAL_WINDOWS)
    assert list(real_scores.columns) == column_names(EWMA_ANOMALY_COLUMNS)
    assert len(real_scores) == minutes * len(metrics)
    assert not real_scores.duplicated(["minute", "metric"]).any()
    assert set(real_scores["metric"]) == set(metrics)
    assert {"tx_count", "log10_total_value_btc", "log10_max_value_btc", *FEE_METRICS} <= set(metrics)
    assert real_scores["anomaly_id"].is_unique
    first = real_scores.iloc[0]
    assert first["anomaly_id"] == anomaly_id("default", first["metric"], first["minute"])


def test_scored_rows_have_finite_z_and_unscored_rows_say_why(real_scores):
    scored = real_scores["z_score"].notna()
    assert np.isfinite(real_scores.loc[scored, ["value", "baseline", "deviation", "scale", "z_score"]].to_numpy()).all()
    np.testing.assert_allclose(
        real_scores.loc[scored, "z_score"],
        real_scores.loc[scored, "deviation"] / real_scores.loc[scored, "scale"],
    )
    unscored = real_scores[~scored]
    assert unscored["rule"].str.startswith("not_scored:").all()
    assert (unscored["severity"] == "info").all()


def test_the_block_time_basis_creates_no_flags(real_scores):
    empty = real_scores[real_scores["tx_count"] == 0]
    assert len(empty) > 0.8 * len(real_scores)  # most block-time minutes are empty
    assert (empty["rule"] == "not_scored:no_block_in_minute").all()
    # A block landing shows up as a transaction-count spike if it is mistaken for traffic.
    counts = real_scores[real_scores["metric"] == "tx_count"]
    assert not counts["severity"].isin(MEDIUM_PLUS).any()


def test_the_three_19600_btc_transfers_are_flagged_and_little_else(real_raw, real_scores):
    for prefix, (block_id, minute) in WHALES.items():
        whale = real_raw[real_raw["hash"].str.startswith(prefix)]
        assert len(whale) == 1 and whale["block_id"].iloc[0] == block_id
        assert whale["minute"].iloc[0] == minute and 19_500 < whale["output_total"].iloc[0] / 1e8 < 19_700
        in_minute = real_scores[real_scores["minute"] == minute]
        largest = in_minute[in_minute["metric"] == "log10_max_value_btc"].iloc[0]
        assert largest["severity"] in MEDIUM_PLUS, largest.to_dict()
    flagged_minutes = set(real_scores.loc[real_scores["severity"].isin(MEDIUM_PLUS), "minute"])
    assert {minute for _, minute in WHALES.values()} <= flagged_minutes
    assert len(flagged_minutes) <= 6, sorted(flagged_minutes)
    # Every real block has fee outliers (1-102 of them); none is unusual enough to alert.
    outliers = real_scores[(real_scores["metric"] == "fee_outlier_tx_count") & real_scores["z_score"].notna()]
    # v2: the first block of each excerpt has no history but is scored against the priors.
    assert len(outliers) == 31 and (outliers["value"] > 0).all()
    assert outliers["baseline_source"].value_counts().to_dict() == {"prior": 2, "both": 10, "history": 19}
    assert not outliers["severity"].isin(MEDIUM_PLUS).any(), outliers[outliers["severity"] != "info"].to_dict("records")


def test_a_huge_transfer_needs_no_warm_up():
    """Two blocks are enough: the ratio rule grades a 60x largest transaction as high."""
    t0 = datetime(2025, 8, 20, 12, 0)
    rows = [
        {"minute": t0, "time_basis": "block", "tx_count": 3000, "block_count": 1, "block_ids": [1],
         "total_value_btc": 2000.0, "max_value_btc": 300.0},
        {"minute": t0 + timedelta(minutes=9), "time_basis": "block", "tx_count": 3100, "block_count": 1,
         "block_ids": [2], "total_value_btc": 20_000.0, "max_value_btc": 18_000.0},
    ]
    out = detect_ewma_anomalies(minute_frame(rows), t0 + timedelta(minutes=9), t0 + timedelta(minutes=10))
    largest = out[out["metric"] == "log10_max_value_btc"].iloc[0]
    assert largest["severity"] == "high"
    assert largest["rule"].startswith("ratio_to_baseline>=8x")  # the largest transaction's high cut-off (v2)
    # v1: the z-scored metrics are still warming up after one past block; v2 blends in the priors.
    v1 = detect_ewma_anomalies(minute_frame(rows), t0 + timedelta(minutes=9), t0 + timedelta(minutes=10), EwmaConfig().v1())
    assert v1.loc[v1["metric"] == "tx_count", "rule"].iloc[0].startswith("warmup:1/")
    assert v1.loc[v1["metric"] == "log10_max_value_btc", "severity"].iloc[0] == "high"
    assert out.loc[out["metric"] == "tx_count", "baseline_source"].iloc[0] == "both"


# --- causality and window independence ---------------------------------------------------------------


def test_results_do_not_depend_on_the_window_start(real_raw):
    start, end = rd.DAY13_WINDOW
    whole = score_window(real_raw, start, end)
    pieces = pd.concat(
        [score_window(real_raw, start + timedelta(hours=h), start + timedelta(hours=h + 1)) for h in range(3)],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(whole, pieces)


def test_a_minute_is_scored_from_the_past_only(real_raw):
    start, end = rd.DAY13_WINDOW
    aggregates = rd.minute_aggregates(real_raw, start - timedelta(minutes=EWMA_LOOKBACK_MINUTES), end)
    cut = datetime(2025, 8, 13, 1, 30)
    full = detect_ewma_anomalies(aggregates, start, end)
    # Dropping everything after the cut, or making the future absurd, changes nothing up to the cut.
    future = aggregates["minute"] >= cut
    tampered = aggregates.copy()
    tampered.loc[future, ["max_value_btc", "total_value_btc"]] = 1e9
    truncated = detect_ewma_anomalies(aggregates[~future], start, cut)
    pd.testing.assert_frame_equal(full[full["minute"] < cut].reset_index(drop=True), truncated)
    pd.testing.assert_frame_equal(full[full["minute"] < cut].reset_index(drop=True),
                                  detect_ewma_anomalies(tampered, start, end).query("minute < @cut").reset_index(drop=True))


# --- injected events ---------------------------------------------------------------------------------


def _row(scores: pd.DataFrame, minute: datetime, metric: str) -> pd.Series:
    match = scores[(scores["minute"] == minute) & (scores["metric"] == metric)]
    assert len(match) == 1
    return match.iloc[0]


def _window_of(minute: datetime) -> tuple[datetime, datetime]:
    return next((start, end) for start, end in rd.REAL_WINDOWS if start <= minute < end)


LARGE_BLOCK = 2_000  # transactions; from here 200 payers are too few to move a fee-rate percentile


def post_warmup_blocks(raw: pd.DataFrame) -> list[int]:
    """Blocks with at least ``block_warmup`` earlier block-minutes in their excerpt (z rules grade them)."""
    warmup = EwmaConfig().block_warmup
    minutes = rd.block_minutes(raw)
    blocks = []
    for start, end in rd.REAL_WINDOWS:
        block_minutes = sorted({m for m in minutes.values() if start <= m < end})
        graded = set(block_minutes[warmup:])
        blocks += sorted(b for b, m in minutes.items() if m in graded)
    return blocks


@pytest.fixture(scope="module")
def real_aggregates(real_raw) -> dict[tuple[datetime, datetime], pd.DataFrame]:
    """Minute aggregates of each real window and its lookback, built once."""
    return {
        (start, end): rd.minute_aggregates(real_raw, start - timedelta(minutes=EWMA_LOOKBACK_MINUTES), end)
        for start, end in rd.REAL_WINDOWS
    }


def score_injected_minute(real_aggregates, injected: pd.DataFrame, minute: datetime) -> pd.DataFrame:
    """Scores of ``minute`` after an injection into it, with every earlier minute's aggregates reused.

    An injection only adds rows to its own minute, and a minute is scored from the rows up to and
    including it, so re-aggregating that one minute is exactly the full recomputation
    (``test_injected_minute_scoring_equals_the_full_pipeline`` checks this).
    """
    aggregates = real_aggregates[_window_of(minute)]
    row = rd.minute_aggregates(injected, minute, minute + timedelta(minutes=1))
    spliced = pd.concat([aggregates[aggregates["minute"] < minute], row], ignore_index=True)
    return detect_ewma_anomalies(spliced, minute, minute + timedelta(minutes=1))


def _flagged_fee_metrics(scores: pd.DataFrame, minute: datetime) -> list[str]:
    rows = scores[(scores["minute"] == minute) & scores["metric"].isin(FEE_METRICS) & scores["severity"].isin(MEDIUM_PLUS)]
    return sorted(rows["metric"])


def test_injected_minute_scoring_equals_the_full_pipeline(real_raw, real_aggregates):
    block_id = 909778  # the largest block, 5,001 transactions
    minute = rd.block_minutes(real_raw)[block_id]
    injected, _ = rd.inject_fee_spike(real_raw, block_id)
    full = score_window(injected, *_window_of(minute))
    pd.testing.assert_frame_equal(
        score_injected_minute(real_aggregates, injected, minute),
        full[full["minute"] == minute].reset_index(drop=True),
    )


def test_fee_spike_is_flagged_in_its_minute_in_every_block_after_warm_up(real_raw, real_scores, real_aggregates):
    """200 transactions at 50x the block's median fee rate, injected into each block after warm-up
    (one block at a time; 19 blocks of 387-5,001 transactions, 13 of them >= 2,000) are caught by a
    fee metric at medium+ in that block's minute, while the same minute without them has no fee
    flag. In blocks of >= 2,000 transactions 200 payers are at most 10% of the block, too few to
    move a fee-rate percentile reliably, so there it must be the fee-outlier count."""
    minutes = rd.block_minutes(real_raw)
    blocks = post_warmup_blocks(real_raw)
    sizes = {b: len(rd.block_rows(real_raw, b)) for b in blocks}
    assert len(blocks) == 19 and sum(size >= LARGE_BLOCK for size in sizes.values()) >= 13
    results, misses = [], []
    for block_id in blocks:
        minute = minutes[block_id]
        injected, hashes = rd.inject_fee_spike(real_raw, block_id)
        assert len(hashes) == 200
        caught = _flagged_fee_metrics(score_injected_minute(real_aggregates, injected, minute), minute)
        before = _flagged_fee_metrics(real_scores, minute)
        results.append((block_id, sizes[block_id], caught, before))
        needed = "fee_outlier_tx_count" in caught if sizes[block_id] >= LARGE_BLOCK else bool(caught)
        if not needed or before:
            misses.append(results[-1])
    assert not misses, f"missed or flagged without injection (block, size, caught, before): {misses}; all: {results}"


@pytest.mark.parametrize("block_id", [909775, 909929])
def test_twenty_fold_value_in_ordinary_transactions_is_flagged(real_raw, block_id):
    minute = rd.block_minutes(real_raw)[block_id]
    injected, _ = rd.inject_value_surge(real_raw, block_id)
    before = score_window(real_raw, *_window_of(minute))
    after = score_window(injected, *_window_of(minute))
    total = _row(after, minute, "log10_total_value_btc")
    assert total["severity"] in MEDIUM_PLUS, total.to_dict()
    # The largest single transaction did not change, so that metric must not move.
    assert _row(after, minute, "log10_max_value_btc")["value"] == _row(before, minute, "log10_max_value_btc")["value"]
    assert _row(before, minute, "log10_total_value_btc")["severity"] == "info"


def test_first_seen_arrival_surge_is_flagged_in_its_minute(real_raw):
    first_seen = rd.synthetic_first_seen(real_raw[real_raw["minute"] < datetime(2025, 8, 14)])
    data_start = first_seen["minute"].min().to_pydatetime()
    surge_minute = datetime(2025, 8, 13, 1, 48)  # inside the 43-minute gap before block 909779
    start, end = surge_minute - timedelta(minutes=20), surge_minute + timedelta(minutes=10)
    surged, _ = rd.surge_first_seen(first_seen, surge_minute)

    def score(series: pd.DataFrame) -> pd.DataFrame:
        # Arrivals only exist from data_start: earlier minutes are missing data, not zero traffic.
        aggregates = rd.minute_aggregates(series, max(data_start, start - timedelta(minutes=EWMA_LOOKBACK_MINUTES)), end)
        return detect_ewma_anomalies(aggregates, start, end)

    before, after = score(first_seen), score(surged)
    assert (after["time_basis"] == "first_seen").all()
    arrivals = _row(after, surge_minute, "tx_count")
    assert arrivals["severity"] in MEDIUM_PLUS, arrivals.to_dict()
    assert _row(before, surge_minute, "tx_count")["severity"] == "info"
    earlier = after["minute"] < surge_minute
    pd.testing.assert_frame_equal(after[earlier], before[earlier])


def test_first_seen_counts_empty_minutes_as_zero_arrivals():
    t0 = datetime(2025, 8, 20, 12, 0)
    rows = [
        {"minute": t0 + timedelta(minutes=i), "time_basis": "first_seen", "tx_count": 400 + (i % 3) * 10}
        for i in range(40)
    ]
    rows.append({"minute": t0 + timedelta(minutes=40), "time_basis": None, "tx_count": 0})
    out = detect_ewma_anomalies(minute_frame(rows), t0 + timedelta(minutes=40), t0 + timedelta(minutes=41))
    arrivals = out[out["metric"] == "tx_count"].iloc[0]
    assert arrivals["value"] == 0 and arrivals["severity"] == "high" and arrivals["z_score"] < -8
    assert out.loc[out["metric"] != "tx_count", "rule"].eq("not_scored:no_transactions").all()


# --- building blocks and errors ------------------------------------------------------------------------


def test_robust_baseline_ignores_a_past_outlier_and_keeps_a_finite_scale():
    history = np.array([100.0, 102.0, 98.0, 101.0, 5_000.0, 99.0, 100.0])
    fit = robust_ewma_baseline(history, alpha=0.2, winsor_k=3.0, min_scale=1.0)
    assert 95 < fit.baseline < 110 and fit.scale < 20
    flat = robust_ewma_baseline(np.full(10, 7.0), alpha=0.2, winsor_k=3.0, min_scale=0.5)
    assert flat.baseline == pytest.approx(7.0, rel=1e-12) and flat.scale == 0.5  # weighted mean: last-bit rounding
    naive_mean = history.mean()
    assert naive_mean > 700  # what an unwinsorised mean would have said


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="mode"):
        EwmaConfig(mode="fast")
    with pytest.raises(ValueError, match="low <= medium <= high"):
        SeverityThresholds(5.0, 3.0, 8.0)
    with pytest.raises(ValueError, match="finite z"):
        MetricSpec("tx_count", min_scale=0.0)
    with pytest.raises(ValueError, match="duplicate"):
        EwmaConfig(metrics=(MetricSpec("tx_count", min_scale=1.0), MetricSpec("tx_count", min_scale=2.0)))


def test_input_errors_name_what_is_wrong():
    t0 = datetime(2025, 8, 20, 12, 0)
    good = minute_frame([{"minute": t0, "time_basis": "block", "tx_count": 5, "block_count": 1}])
    with pytest.raises(EwmaInputError, match="missing columns"):
        detect_ewma_anomalies(good.drop(columns=["max_value_btc"]), t0, t0 + timedelta(minutes=1))
    with pytest.raises(EwmaInputError, match="not a whole minute"):
        detect_ewma_anomalies(good, t0 + timedelta(seconds=5), t0 + timedelta(minutes=1))
    with pytest.raises(EwmaInputError, match="empty window"):
        detect_ewma_anomalies(good, t0, t0)
    mixed = minute_frame(
        [
            {"minute": t0, "time_basis": "block", "tx_count": 5},
            {"minute": t0 + timedelta(minutes=1), "time_basis": "first_seen", "tx_count": 5},
        ]
    )
    with pytest.raises(EwmaInputError, match="mix time bases"):
        detect_ewma_anomalies(mixed, t0, t0 + timedelta(minutes=2))
    doubled = pd.concat([good, good], ignore_index=True)
    with pytest.raises(EwmaInputError, match="more than one row"):
        detect_ewma_anomalies(doubled, t0, t0 + timedelta(minutes=1))


def test_a_window_without_data_still_gets_its_rows():
    t0 = datetime(2025, 8, 20, 12, 0)
    out = detect_ewma_anomalies(minute_frame([]).astype({"minute": "datetime64[us]"}), t0, t0 + timedelta(minutes=3))
    assert len(out) == 3 * len(EwmaConfig().metrics)
    assert (out["rule"] == "not_scored:no_data").all() and (out["tx_count"] == 0).all()
    assert all(severity_rank(s) == 0 for s in out["severity"])
