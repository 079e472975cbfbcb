"""The raw Parquet lake: exact window replacement, no duplicates, no loss."""

from datetime import datetime, timedelta

import pandas as pd
import pytest

from btc_anomaly_assets.common.lake import LakeError, hour_file, raw_path, read_raw_window, write_raw_window
from btc_anomaly_assets.common.schema import RAW_TRANSACTION_COLUMNS, column_names

T0 = datetime(2025, 8, 13, 0, 0)


def _rows(minutes: list[int], tag: str = "a") -> pd.DataFrame:
    rows = []
    for i, m in enumerate(minutes):
        t = T0 + timedelta(minutes=m, seconds=5)
        rows.append({
            "block_id": 909766 + m, "hash": f"{tag}{m:04d}{i:04d}".ljust(64, "0"), "time": t, "size": 200, "weight": 800,
            "version": 2, "lock_time": 0, "is_coinbase": False, "has_witness": True, "input_count": 1, "output_count": 2,
            "input_total": 10_000, "input_total_usd": 12.0, "output_total": 9_000, "output_total_usd": 10.8, "fee": 1_000,
            "fee_usd": 1.2, "fee_per_kb": 5000.0, "fee_per_kb_usd": 6.0, "fee_per_kwu": 1250.0, "fee_per_kwu_usd": 1.5,
            "cdd_total": 0.1, "minute": t.replace(second=0), "time_basis": "block",
        })
    frame = pd.DataFrame(rows, columns=column_names(RAW_TRANSACTION_COLUMNS))
    frame["time"] = frame["time"].astype("datetime64[us]")
    frame["minute"] = frame["minute"].astype("datetime64[us]")
    return frame


def test_rewriting_a_window_replaces_exactly_that_window(tmp_path):
    path = raw_path(str(tmp_path))
    write_raw_window(path, _rows([0, 1, 2, 59, 60, 61]), T0, T0 + timedelta(hours=2))
    # Re-materialize minutes 1..60 (crossing the hour file boundary) with different content.
    write_raw_window(path, _rows([1, 60, 60], tag="b"), T0 + timedelta(minutes=1), T0 + timedelta(minutes=61))
    stored = read_raw_window(path, T0, T0 + timedelta(hours=2))
    assert sorted(stored["hash"].str[:5]) == ["a0000", "a0061", "b0001", "b0060", "b0060"]
    assert stored["hash"].is_unique


def test_rewriting_is_idempotent(tmp_path):
    path = raw_path(str(tmp_path))
    frame = _rows([3, 4, 4, 90])
    for _ in range(3):
        write_raw_window(path, frame, T0, T0 + timedelta(hours=2))
    stored = read_raw_window(path, T0, T0 + timedelta(hours=2))
    assert len(stored) == 4
    assert stored.dtypes["time"].kind == "M" and stored["time"].dt.tz is None


def test_an_empty_window_removes_its_rows_and_keeps_the_rest(tmp_path):
    path = raw_path(str(tmp_path))
    write_raw_window(path, _rows([5, 6]), T0, T0 + timedelta(hours=1))
    write_raw_window(path, _rows([])[:0], T0 + timedelta(minutes=6), T0 + timedelta(minutes=7))
    assert read_raw_window(path, T0, T0 + timedelta(hours=1))["minute"].dt.minute.tolist() == [5]


def test_hive_layout_by_date_and_hour(tmp_path):
    path = raw_path(str(tmp_path))
    write_raw_window(path, _rows([61]), T0, T0 + timedelta(hours=2))
    assert (tmp_path / "raw_transactions" / "date=2025-08-13" / "hour=01" / "data.parquet").exists()
    assert hour_file(path, T0).endswith("date=2025-08-13/hour=00/data.parquet")


def test_rows_outside_the_window_are_refused_and_nothing_is_written(tmp_path):
    path = raw_path(str(tmp_path))
    with pytest.raises(LakeError, match="outside the window"):
        write_raw_window(path, _rows([10]), T0, T0 + timedelta(minutes=5))
    assert read_raw_window(path, T0, T0 + timedelta(hours=1)).empty


def test_a_frame_with_a_wrong_type_is_refused_with_the_reason(tmp_path):
    frame = _rows([1])
    frame["fee"] = ["lots"]
    with pytest.raises(LakeError, match="raw schema"):
        write_raw_window(raw_path(str(tmp_path)), frame, T0, T0 + timedelta(hours=1))


def test_largest_transactions_per_minute(tmp_path):
    from btc_anomaly_assets.common.lake import largest_transactions

    path = raw_path(str(tmp_path))
    frame = _rows([3, 3, 3, 70])
    frame["output_total"] = [5, 9, 7, 1]
    write_raw_window(path, frame, T0, T0 + timedelta(hours=2))
    top = largest_transactions(path, [T0 + timedelta(minutes=3), T0 + timedelta(minutes=70), T0 + timedelta(minutes=9)], 2)
    assert top == {T0 + timedelta(minutes=3): [frame.loc[1, "hash"], frame.loc[2, "hash"]],
                   T0 + timedelta(minutes=70): [frame.loc[3, "hash"]]}


def _tear(path) -> bytes:
    data = open(path, "rb").read()
    torn = data[: len(data) // 2]
    open(path, "wb").write(torn)
    return torn


def test_a_torn_hour_file_is_quarantined_and_rebuilt_when_the_write_covers_its_hour(tmp_path):
    path = raw_path(str(tmp_path))
    write_raw_window(path, _rows([0, 5, 59]), T0, T0 + timedelta(hours=1))
    torn = _tear(hour_file(path, T0))
    write_raw_window(path, _rows([0, 5, 59], tag="b"), T0, T0 + timedelta(hours=1))
    stored = read_raw_window(path, T0, T0 + timedelta(hours=1))
    assert sorted(stored["hash"].str[:5]) == ["b0000", "b0005", "b0059"]
    kept = list((tmp_path / "quarantine" / "raw_transactions").rglob("*.corrupt"))
    assert len(kept) == 1 and kept[0].read_bytes() == torn  # kept for inspection, out of the readers' way


def test_a_torn_hour_file_with_minutes_outside_the_write_is_refused_naming_the_hour(tmp_path):
    path = raw_path(str(tmp_path))
    write_raw_window(path, _rows([0, 5, 59]), T0, T0 + timedelta(hours=1))
    torn = _tear(hour_file(path, T0))
    with pytest.raises(LakeError, match=r"unreadable .* btc-anomaly backfill 2025-08-13-00:00 2025-08-13-01:00"):
        write_raw_window(path, _rows([5], tag="b"), T0 + timedelta(minutes=5), T0 + timedelta(minutes=6))
    assert open(hour_file(path, T0), "rb").read() == torn  # nothing written, nothing moved
    assert not (tmp_path / "quarantine").exists()
