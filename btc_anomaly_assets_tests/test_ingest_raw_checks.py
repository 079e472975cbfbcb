"""The raw-layer gates each catch their own kind of bad row and name it."""

from datetime import timedelta

import pandas as pd

from btc_anomaly_assets.ingest.raw_checks import RAW_CHECK_NAMES, evaluate_raw_checks
from btc_anomaly_assets_tests.test_storage_lake import T0, _rows

END = T0 + timedelta(hours=1)


def _verdicts(frame, reported=None):
    return {v.name: v for v in evaluate_raw_checks(frame, T0, END, len(frame) if reported is None else reported)}


def test_clean_rows_pass_every_check():
    verdicts = _verdicts(_rows([1, 2, 3]))
    assert list(verdicts) == RAW_CHECK_NAMES
    assert all(v.passed for v in verdicts.values())


def test_each_defect_fails_its_own_check_and_names_the_rows():
    frame = _rows([1, 2, 3, 4, 5])
    frame.loc[1, "hash"] = frame.loc[0, "hash"]
    frame.loc[2, "fee"] = 999  # no longer input_total - output_total
    frame.loc[3, "output_total"] = -5
    frame.loc[4, "block_id"] = None
    verdicts = _verdicts(frame)
    assert not verdicts["hashes_unique"].passed and len(verdicts["hashes_unique"].offending) == 2
    assert not verdicts["fee_equals_inputs_minus_outputs"].passed
    assert set(verdicts["fee_equals_inputs_minus_outputs"].offending["hash"]) >= {frame.loc[2, "hash"]}
    assert not verdicts["amounts_non_negative"].passed
    assert verdicts["amounts_non_negative"].offending["hash"].tolist() == [frame.loc[3, "hash"]]
    assert not verdicts["no_null_keys"].passed and "block_id" in verdicts["no_null_keys"].figures["null_counts"]
    assert verdicts["times_in_partition_window"].passed


def test_time_outside_window_and_row_count_mismatch():
    frame = _rows([1, 2])
    frame.loc[1, "time"] = pd.Timestamp(END + timedelta(minutes=3))
    verdicts = _verdicts(frame, reported=5)
    assert not verdicts["times_in_partition_window"].passed
    assert verdicts["times_in_partition_window"].offending["hash"].tolist() == [frame.loc[1, "hash"]]
    assert not verdicts["row_count_matches_source"].passed
    assert verdicts["row_count_matches_source"].figures == {"stored_rows": 2, "source_reported_rows": 5}


def test_coinbase_rows_are_exempt_from_the_fee_balance():
    frame = _rows([1])
    frame.loc[0, ["is_coinbase", "input_total", "fee"]] = [True, 0, 0]
    assert _verdicts(frame)["fee_equals_inputs_minus_outputs"].passed
