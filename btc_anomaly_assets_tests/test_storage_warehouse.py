"""The DuckDB warehouse: atomic window replacement, empty writes create tables, writes by name."""

import threading
from datetime import datetime, timedelta

import pandas as pd
import pyarrow as pa
import pytest

from btc_anomaly_assets.common.schema import Column
from btc_anomaly_assets.common.warehouse import Warehouse, WarehouseError

COLUMNS = [
    Column("minute", pa.timestamp("us"), "minute"),
    Column("label", pa.string(), "label"),
    Column("count", pa.int64(), "count"),
    Column("ids", pa.list_(pa.int64()), "ids"),
]
T0 = datetime(2025, 8, 13)


def _frame(minutes, label="x"):
    return pd.DataFrame({
        "minute": pd.to_datetime([T0 + timedelta(minutes=m) for m in minutes]),
        "label": [label] * len(minutes),
        "count": list(range(len(minutes))),
        "ids": [[m, m + 1] for m in minutes],
    })


def test_empty_result_still_creates_the_table(tmp_path):
    wh = Warehouse(str(tmp_path / "w.duckdb"))
    assert wh.replace_window("things", COLUMNS, _frame([]), T0, T0 + timedelta(minutes=5)) == 0
    assert wh.table_exists("things")
    assert wh.read_window("things", COLUMNS, T0, T0 + timedelta(hours=1)).empty


def test_replace_window_is_idempotent_and_leaves_neighbours(tmp_path):
    wh = Warehouse(str(tmp_path / "w.duckdb"))
    wh.replace_window("things", COLUMNS, _frame(range(10)), T0, T0 + timedelta(minutes=10))
    for _ in range(2):
        wh.replace_window("things", COLUMNS, _frame([3, 4], "y"), T0 + timedelta(minutes=3), T0 + timedelta(minutes=5))
    got = wh.read_window("things", COLUMNS, T0, T0 + timedelta(hours=1))
    assert len(got) == 10
    assert got.set_index(got["minute"].dt.minute)["label"].to_dict() == {m: ("y" if m in (3, 4) else "x") for m in range(10)}
    assert list(got.loc[got["minute"].dt.minute == 3, "ids"].iloc[0]) == [3, 4]


def test_columns_are_written_by_name_not_position(tmp_path):
    wh = Warehouse(str(tmp_path / "w.duckdb"))
    shuffled = _frame([1])[["ids", "count", "label", "minute"]]
    wh.replace_window("things", COLUMNS, shuffled, T0, T0 + timedelta(minutes=5))
    row = wh.read_window("things", COLUMNS, T0, T0 + timedelta(minutes=5)).iloc[0]
    assert row["label"] == "x" and row["count"] == 0


def test_a_failed_insert_leaves_the_window_untouched(tmp_path):
    wh = Warehouse(str(tmp_path / "w.duckdb"))
    wh.replace_window("things", COLUMNS, _frame([1, 2]), T0, T0 + timedelta(minutes=5))
    bad = _frame([1, 2])
    bad["count"] = ["one", "two"]
    with pytest.raises(WarehouseError, match="declared type"):
        wh.replace_window("things", COLUMNS, bad, T0, T0 + timedelta(minutes=5))
    with pytest.raises(WarehouseError, match="outside the window"):
        wh.replace_window("things", COLUMNS, _frame([9]), T0, T0 + timedelta(minutes=5))
    assert len(wh.read_window("things", COLUMNS, T0, T0 + timedelta(minutes=5))) == 2


def test_mismatched_columns_name_what_is_wrong(tmp_path):
    wh = Warehouse(str(tmp_path / "w.duckdb"))
    with pytest.raises(WarehouseError, match=r"missing \['ids'\].*unexpected \['extra'\]"):
        wh.replace_window("things", COLUMNS, _frame([1]).drop(columns="ids").assign(extra=1), T0, T0 + timedelta(minutes=5))


def test_concurrent_writers_wait_instead_of_failing_on_the_lock(tmp_path):
    path = str(tmp_path / "w.duckdb")
    errors = []

    def write(offset):
        try:
            for i in range(5):
                m = offset + i
                Warehouse(path).replace_window("things", COLUMNS, _frame([m]), T0 + timedelta(minutes=m), T0 + timedelta(minutes=m + 1))
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k * 10,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(Warehouse(path).read_window("things", COLUMNS, T0, T0 + timedelta(hours=1))) == 15


def test_upsert_replaces_by_key(tmp_path):
    wh = Warehouse(str(tmp_path / "w.duckdb"))
    wh.upsert("things", COLUMNS, _frame([1, 2]), key="minute")
    wh.upsert("things", COLUMNS, _frame([2], "z"), key="minute")
    got = wh.read_window("things", COLUMNS, T0, T0 + timedelta(hours=1))
    assert got["label"].tolist() == ["x", "z"]


def test_a_newer_contract_adds_its_columns_to_an_existing_table(tmp_path):
    wh = Warehouse(str(tmp_path / "w.duckdb"))
    wh.replace_window("things", COLUMNS[:3], _frame([1]).drop(columns="ids"), T0, T0 + timedelta(minutes=5))
    wh.replace_window("things", COLUMNS, _frame([2]), T0 + timedelta(minutes=2), T0 + timedelta(minutes=3))
    got = wh.read_window("things", COLUMNS, T0, T0 + timedelta(minutes=5))
    assert got["ids"].isna().tolist()[0] and list(got["ids"].iloc[1]) == [2, 3]


def test_replace_all_swaps_the_whole_table(tmp_path):
    wh = Warehouse(str(tmp_path / "w.duckdb"))
    wh.replace_all("things", COLUMNS, _frame([1, 2]))
    wh.replace_all("things", COLUMNS, _frame([7], "n"))
    assert wh.read_window("things", COLUMNS, T0, T0 + timedelta(hours=1))["label"].tolist() == ["n"]
