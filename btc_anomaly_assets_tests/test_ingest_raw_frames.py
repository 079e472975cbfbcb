"""to_raw_frame: Blockchair rows (dump text or API JSON) -> the typed, validated raw-lake frame."""

from __future__ import annotations

import csv
import gzip
import itertools
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pytest

from btc_anomaly_assets.common.schema import RAW_TRANSACTION_COLUMNS, arrow_schema, column_names
from btc_anomaly_assets.ingest.raw_frames import (
    DUPLICATES_DROPPED_ATTR,
    RawDataError,
    concat_raw_frames,
    empty_raw_frame,
    to_raw_frame,
)
from btc_anomaly_testing.fixture_paths import DUMP_13 as _DUMP_13

DUMP_13 = _DUMP_13
WHERE = "test-source.tsv.gz"


@pytest.fixture(scope="module")
def text_records() -> list[dict]:
    """The first 40 real dump rows as text, exactly as the TSV holds them."""
    with gzip.open(DUMP_13, "rt", encoding="utf-8", newline="") as stream:
        return list(itertools.islice(csv.DictReader(stream, delimiter="\t"), 40))


def _text_frame(records: list[dict]) -> pd.DataFrame:
    """Dump-shaped input: every value a string, rows labelled by their 1-based file line."""
    return pd.DataFrame(records, index=pd.Index(range(2, 2 + len(records)), name="line"))


def _api_rows(records: list[dict], *, bools_as_ints: bool) -> list[dict]:
    """API-shaped input: JSON types, extra ``id``/``date`` columns, booleans true/false or 0/1."""
    rows = []
    for number, record in enumerate(records):
        row = {"id": 900 + number, "date": record["time"][:10]}
        for name, text in record.items():
            if name in ("hash", "time"):
                row[name] = text
            elif name in ("is_coinbase", "has_witness"):
                row[name] = int(text) if bools_as_ints else text == "1"
            elif "." in text or "e" in text or name.endswith(("_usd", "_kb", "_kwu", "cdd_total")):
                row[name] = float(text)
            else:
                row[name] = int(text)
        rows.append(row)
    return rows


def test_dump_text_rows_become_the_schema_frame(text_records):
    frame = to_raw_frame(_text_frame(text_records), time_basis="block", where=WHERE)

    assert list(frame.columns) == column_names(RAW_TRANSACTION_COLUMNS)
    arrow = pa.Table.from_pandas(frame, preserve_index=False).schema
    assert arrow.equals(arrow_schema(RAW_TRANSACTION_COLUMNS))
    first = text_records[1]  # a normal (non-coinbase) transaction
    row = frame.iloc[1]
    assert row["hash"] == first["hash"]
    assert row["fee"] == int(first["fee"]) and row["output_total"] == int(first["output_total"])
    assert row["fee_per_kwu"] == float(first["fee_per_kwu"])
    assert row["time"] == pd.Timestamp(first["time"])
    assert row["minute"] == pd.Timestamp(first["time"]).floor("min")
    assert frame["is_coinbase"].tolist() == [record["is_coinbase"] == "1" for record in text_records]
    assert set(frame["time_basis"]) == {"block"}
    assert frame.attrs[DUPLICATES_DROPPED_ATTR] == 0


@pytest.mark.parametrize("bools_as_ints", [False, True])
def test_api_json_rows_match_dump_rows_and_drop_extra_columns(text_records, bools_as_ints):
    from_dump = to_raw_frame(_text_frame(text_records), time_basis="block", where=WHERE)
    api_frame = pd.DataFrame(_api_rows(text_records, bools_as_ints=bools_as_ints))
    from_api = to_raw_frame(api_frame, time_basis="block", where="GET /bitcoin/transactions")

    assert "id" not in from_api.columns and "date" not in from_api.columns
    pd.testing.assert_frame_equal(from_api, from_dump)


def test_timezone_aware_times_become_naive_utc(text_records):
    rows = _text_frame(text_records[:3])
    rows["time"] = pd.to_datetime(rows["time"]).dt.tz_localize("UTC").dt.tz_convert("Europe/Berlin")
    frame = to_raw_frame(rows, time_basis="block", where=WHERE)
    assert frame["time"].dt.tz is None
    assert frame["time"].iloc[0] == pd.Timestamp(text_records[0]["time"])
    assert frame["time"].dtype == "datetime64[us]"


@pytest.mark.parametrize(
    ("field", "bad", "problem"),
    [
        ("fee", "12x", "is not a number"),
        ("input_count", "1.5", "is not an exact integer"),
        ("fee_per_kwu", "fast", "is not a number"),
        ("time", "2025-08-13T00:00:57Z", "is not a UTC timestamp"),
        ("time", "2025-13-01 00:00:00", "is not a UTC timestamp"),
        ("is_coinbase", "yes", "is not a boolean"),
        ("output_total", "-5", "is negative"),
        ("fee_usd", "-0.5", "is negative"),
        ("size", "", "is missing"),
        ("hash", "XYZ", "is not a 64-character"),
    ],
)
def test_bad_value_names_source_line_and_field(text_records, field, bad, problem):
    records = [dict(record) for record in text_records[:10]]
    records[6][field] = bad  # file line 8
    with pytest.raises(RawDataError) as caught:
        to_raw_frame(_text_frame(records), time_basis="block", where=WHERE)
    message = str(caught.value)
    assert WHERE in message and "line 8" in message and repr(field) in message and problem in message
    assert caught.value.field == field and caught.value.location == "line 8"


def test_missing_column_is_named(text_records):
    rows = _text_frame(text_records[:5]).drop(columns=["weight"])
    with pytest.raises(RawDataError, match=r"test-source\.tsv\.gz: missing column\(s\) \['weight'\]"):
        to_raw_frame(rows, time_basis="block", where=WHERE)


def test_api_row_labels_name_the_page(text_records):
    rows = pd.DataFrame(_api_rows(text_records[:3], bools_as_ints=False))
    rows.index = pd.Index([f"page offset=200 row {i}" for i in range(3)])
    rows.loc["page offset=200 row 2", "fee"] = None
    with pytest.raises(RawDataError, match=r"GET /x, page offset=200 row 2: field 'fee' is missing"):
        to_raw_frame(rows, time_basis="block", where="GET /x")


def test_missing_usd_is_allowed_but_missing_satoshi_is_not(text_records):
    rows = _text_frame(text_records[:4])
    rows.loc[3, "fee_usd"] = ""
    frame = to_raw_frame(rows, time_basis="block", where=WHERE)
    assert frame["fee_usd"].isna().tolist() == [False, True, False, False]


def test_time_basis_must_agree_with_block_id(text_records):
    confirmed = _text_frame(text_records[:3])
    with pytest.raises(RawDataError, match="block_id.*mempool"):
        to_raw_frame(confirmed, time_basis="first_seen", where=WHERE)
    mempool = confirmed.assign(block_id="-1")
    assert set(to_raw_frame(mempool, time_basis="first_seen", where=WHERE)["time_basis"]) == {"first_seen"}
    with pytest.raises(RawDataError, match="block_id.*confirmed"):
        to_raw_frame(mempool, time_basis="block", where=WHERE)
    with pytest.raises(ValueError, match="time_basis"):
        to_raw_frame(confirmed, time_basis="arrival", where=WHERE)


def test_duplicate_hash_in_a_minute_keeps_the_first(text_records):
    records = [dict(record) for record in text_records[:5]]
    twin = dict(records[2], fee="1")  # same hash, same minute, different content
    other_minute = dict(records[3], time="2025-08-13 00:07:14")  # same hash, another minute
    frame = to_raw_frame(_text_frame([*records, twin, other_minute]), time_basis="block", where=WHERE)

    assert frame.attrs[DUPLICATES_DROPPED_ATTR] == 1
    assert len(frame) == 6
    kept = frame[frame["hash"] == records[2]["hash"]]
    assert kept["fee"].tolist() == [int(records[2]["fee"])]
    assert (frame["hash"] == records[3]["hash"]).sum() == 2


def test_concat_deduplicates_across_frames_and_sums_counts(text_records):
    first = to_raw_frame(_text_frame(text_records[:10]), time_basis="block", where="a")
    second = to_raw_frame(_text_frame(text_records[5:15] + text_records[5:6]), time_basis="block", where="b")
    combined = concat_raw_frames([first, second])
    assert second.attrs[DUPLICATES_DROPPED_ATTR] == 1
    assert combined.attrs[DUPLICATES_DROPPED_ATTR] == 1 + 5
    assert combined["hash"].tolist() == [record["hash"] for record in text_records[:15]]


def test_empty_inputs_give_the_typed_empty_frame(text_records):
    empty = empty_raw_frame()
    assert list(empty.columns) == column_names(RAW_TRANSACTION_COLUMNS) and len(empty) == 0
    typed = to_raw_frame(_text_frame(text_records[:2]), time_basis="block", where=WHERE)
    assert empty.dtypes.equals(typed.dtypes)
    # With an explicit schema (as a lake writer passes it) the empty frame converts losslessly.
    assert pa.Table.from_pandas(empty, schema=arrow_schema(RAW_TRANSACTION_COLUMNS), preserve_index=False).num_rows == 0
    from_nothing = to_raw_frame(pd.DataFrame(), time_basis="first_seen", where=WHERE)
    pd.testing.assert_frame_equal(from_nothing, empty)
    assert concat_raw_frames([]).dtypes.equals(empty.dtypes)


def test_naive_utc_helper_converts_aware_datetimes():
    from btc_anomaly_assets.common.utc import naive_utc

    aware = datetime(2025, 8, 13, 2, 0, tzinfo=timezone.utc).astimezone()
    assert naive_utc(aware) == datetime(2025, 8, 13, 2, 0)
    with pytest.raises(TypeError, match="start must be a datetime"):
        naive_utc("2025-08-13", name="start")
