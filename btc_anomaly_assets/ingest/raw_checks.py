"""Data-quality gates for a window of raw transactions (pure: frame in, verdicts out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from btc_anomaly_assets.common.utc import naive_utc_timestamp

KEY_FIELDS = ["hash", "block_id", "time", "minute", "time_basis", "input_count", "output_count",
              "input_total", "output_total", "fee", "size", "weight"]
AMOUNT_FIELDS = ["input_total", "output_total", "fee", "size", "weight", "input_count", "output_count"]
SHOWN_COLUMNS = ["hash", "block_id", "time", "input_total", "output_total", "fee"]


@dataclass
class CheckVerdict:
    name: str
    passed: bool
    description: str
    offending: pd.DataFrame = field(default_factory=pd.DataFrame)
    figures: dict = field(default_factory=dict)


def _verdict(name: str, description: str, bad: pd.DataFrame, **figures) -> CheckVerdict:
    shown = bad[[c for c in SHOWN_COLUMNS if c in bad.columns]]
    return CheckVerdict(name, bad.empty, description, shown, {"offending_rows": len(bad), **figures})


def check_hashes_unique(frame: pd.DataFrame) -> CheckVerdict:
    bad = frame[frame["hash"].duplicated(keep=False)]
    return _verdict("hashes_unique", RAW_CHECK_DESCRIPTIONS["hashes_unique"], bad)


def check_no_null_keys(frame: pd.DataFrame) -> CheckVerdict:
    mask = frame[KEY_FIELDS].isna().any(axis=1)
    bad = frame[mask]
    nulls = {c: int(frame[c].isna().sum()) for c in KEY_FIELDS if frame[c].isna().any()}
    return _verdict("no_null_keys", RAW_CHECK_DESCRIPTIONS["no_null_keys"], bad, null_counts=str(nulls))


def check_amounts_non_negative(frame: pd.DataFrame) -> CheckVerdict:
    bad = frame[(frame[AMOUNT_FIELDS] < 0).any(axis=1)]
    return _verdict("amounts_non_negative", RAW_CHECK_DESCRIPTIONS["amounts_non_negative"], bad)


def check_fee_balances(frame: pd.DataFrame) -> CheckVerdict:
    spend = frame[~frame["is_coinbase"].astype(bool)]
    bad = spend[spend["fee"] != spend["input_total"] - spend["output_total"]]
    return _verdict("fee_equals_inputs_minus_outputs", RAW_CHECK_DESCRIPTIONS["fee_equals_inputs_minus_outputs"], bad)


def check_times_in_window(frame: pd.DataFrame, start: datetime, end: datetime) -> CheckVerdict:
    lo, hi = naive_utc_timestamp(start), naive_utc_timestamp(end)
    bad = frame[(frame["time"] < lo) | (frame["time"] >= hi) | (frame["minute"] != frame["time"].dt.floor("min"))]
    return _verdict("times_in_partition_window", RAW_CHECK_DESCRIPTIONS["times_in_partition_window"], bad,
                    window=f"[{lo}, {hi})")


def check_row_count(frame: pd.DataFrame, reported_rows: int) -> CheckVerdict:
    passed = len(frame) == reported_rows
    return CheckVerdict(
        "row_count_matches_source",
        passed,
        RAW_CHECK_DESCRIPTIONS["row_count_matches_source"],
        pd.DataFrame(),
        {"stored_rows": len(frame), "source_reported_rows": int(reported_rows)},
    )


def evaluate_raw_checks(frame: pd.DataFrame, start: datetime, end: datetime, reported_rows: int) -> list[CheckVerdict]:
    return [
        check_hashes_unique(frame),
        check_no_null_keys(frame),
        check_amounts_non_negative(frame),
        check_fee_balances(frame),
        check_times_in_window(frame, start, end),
        check_row_count(frame, reported_rows),
    ]


# name -> what the check guarantees (the Dagster check specs show these texts)
RAW_CHECK_DESCRIPTIONS = {
    "hashes_unique": "Every transaction hash appears once in the window",
    "no_null_keys": f"No NULL in {', '.join(KEY_FIELDS)}",
    "amounts_non_negative": "Amounts, sizes and counts are >= 0",
    "fee_equals_inputs_minus_outputs": "fee == input_total - output_total for every non-coinbase row",
    "times_in_partition_window": "Every time inside the partition window and minute = floor(time)",
    "row_count_matches_source": "Rows stored in the lake equal the rows the source reported for the window",
}
RAW_CHECK_NAMES = list(RAW_CHECK_DESCRIPTIONS)


FEED_COMPLETE = "feed_complete"
FEED_COMPLETE_DESCRIPTION = ("Push sources (mempool-space, bitcoin-core): the collector watched every minute of the window "
                             "without a gap (warn; a gap is re-filled from REST/RPC where possible and swept again later)")


def check_feed_complete(incomplete_minutes: dict | None) -> CheckVerdict:
    """Passes when no minute of the window had a feed gap; a batch source (None) has no feed to judge."""
    if incomplete_minutes is None:
        return CheckVerdict(FEED_COMPLETE, True, FEED_COMPLETE_DESCRIPTION, pd.DataFrame(), {"applies": "no (batch source)"})
    shown = pd.DataFrame({"minute": list(incomplete_minutes), "why": ["; ".join(v) for v in incomplete_minutes.values()]})
    return CheckVerdict(FEED_COMPLETE, not incomplete_minutes, FEED_COMPLETE_DESCRIPTION, shown,
                        {"incomplete_minutes": len(incomplete_minutes)})
