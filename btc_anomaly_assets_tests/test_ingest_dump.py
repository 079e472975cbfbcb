"""read_dump_window on the real 13/14 Aug 2025 Blockchair dumps and on corrupted copies of them."""

from __future__ import annotations

import gzip
import itertools
import logging
import shutil
import zlib
from datetime import date, datetime, timedelta

import pandas as pd
import pytest

from btc_anomaly_assets.ingest.blockchair_dump import DumpFormatError, read_dump_window
from btc_anomaly_testing.fixture_paths import BLOCKCHAIR_DIR

DUMP_DIR = BLOCKCHAIR_DIR
FILE_13 = DUMP_DIR / "blockchair_bitcoin_transactions_20250813_blocks909766-909785.tsv.gz"
FILE_14 = DUMP_DIR / "blockchair_bitcoin_transactions_20250814_blocks909922-909932.tsv.gz"
# Per-block transaction counts of the 13 Aug excerpt, from the data set's README.
README_BLOCK_COUNTS_13 = [417, 3510, 4611, 261, 4133, 619, 388, 2621, 3252, 3745, 3786, 3176, 5002, 3856, 2549,
                          1614, 2046, 3249, 2383, 3659]


@pytest.fixture(scope="module")
def day13():
    return read_dump_window(DUMP_DIR, datetime(2025, 8, 13), datetime(2025, 8, 14))


def _lines(path, count=None) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as stream:
        return list(itertools.islice(stream, count) if count else stream)


def _write(path, lines: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8", newline="") as stream:
        stream.writelines(lines)


def _with_field(line: str, index: int, value: str) -> str:
    fields = line.rstrip("\n").split("\t")
    fields[index] = value
    return "\t".join(fields) + "\n"


def test_whole_13_aug_file(day13):
    frame = day13.frame
    assert len(frame) == 54_877
    assert frame["block_id"].nunique() == 20
    assert not frame["hash"].duplicated().any()
    assert frame.groupby("block_id").size().tolist() == README_BLOCK_COUNTS_13
    assert set(frame["time_basis"]) == {"block"}
    assert day13.files_read == [str(FILE_13)]
    assert day13.rows_scanned == day13.rows_in_window == 54_877
    assert day13.duplicates_dropped == 0 and day13.files_stopped_early == [] and day13.missing_dates == []
    assert day13.files_read_line_by_line == []  # Arrow's block reader read it


def test_arrow_and_line_readers_give_the_same_frame(day13):
    from btc_anomaly_assets.ingest.dump_file_scan import scan_file_by_line
    from btc_anomaly_assets.ingest.raw_frames import concat_raw_frames

    scan = scan_file_by_line(FILE_13, datetime(2025, 8, 13), datetime(2025, 8, 14), logging.getLogger())
    by_line = concat_raw_frames(scan.frames)
    pd.testing.assert_frame_equal(by_line, day13.frame)
    assert scan.rows_scanned == day13.rows_scanned


def test_typing_in_chunks_gives_the_same_frame_and_names_the_line_of_a_bad_value(day13, monkeypatch, tmp_path):
    from btc_anomaly_assets.ingest import dump_file_scan

    monkeypatch.setattr(dump_file_scan, "TYPE_EVERY_ROWS", 1_000)  # 55 chunks instead of one
    chunked = read_dump_window(DUMP_DIR, datetime(2025, 8, 13), datetime(2025, 8, 14))
    pd.testing.assert_frame_equal(chunked.frame, day13.frame)
    assert chunked.rows_in_window == day13.rows_in_window

    lines = _lines(FILE_13, 5_000)
    lines[2_500] = _with_field(lines[2_500], lines[0].split("\t").index("fee"), "-5")
    _write(tmp_path / FILE_13.name, lines)
    with pytest.raises(DumpFormatError, match="line 2501") as raised:
        read_dump_window(tmp_path, datetime(2025, 8, 13), datetime(2025, 8, 14))
    assert raised.value.line == 2_501 and raised.value.field == "fee"


def test_whole_14_aug_file():
    result = read_dump_window(DUMP_DIR, datetime(2025, 8, 14), datetime(2025, 8, 15))
    assert len(result.frame) == 27_763
    assert result.frame["block_id"].nunique() == 11
    assert result.files_read == [str(FILE_14)]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (datetime(2025, 8, 13, 0, 0), datetime(2025, 8, 13, 1, 0)),
        (datetime(2025, 8, 13, 1, 4, 45), datetime(2025, 8, 13, 1, 20, 7)),  # both bounds on a block time
    ],
)
def test_window_keeps_exactly_start_le_time_lt_end_and_stops_early(day13, start, end):
    result = read_dump_window(DUMP_DIR, start, end)
    full = day13.frame
    expected = full[(full["time"] >= start) & (full["time"] < end)].reset_index(drop=True)
    pd.testing.assert_frame_equal(result.frame, expected)
    # The median time of the last 11 blocks passes `end` well before the file does.
    assert result.files_stopped_early == [str(FILE_13)]
    assert len(expected) < result.rows_scanned < 54_877


def test_bounds_on_block_times_are_inclusive_start_exclusive_end():
    result = read_dump_window(FILE_13, datetime(2025, 8, 13, 1, 4, 45), datetime(2025, 8, 13, 1, 20, 7))
    # 909776 at 01:04:45 is in, 909778 at 01:20:07 is out.
    assert sorted(result.frame["block_id"].unique()) == [909776, 909777]


def _synthetic_blocks(tmp_path, block_minutes: list[int], name: str, heights: list[int] | None = None) -> tuple:
    """A dump of real rows relabelled into blocks (heights 100.. unless given), two rows per block,
    block times ``block_minutes`` after 2025-08-14 00:00."""
    heights = heights or [100 + block for block in range(len(block_minutes))]
    real = _lines(FILE_14, 1 + 2 * len(block_minutes))
    header, rows = real[0], real[1:]
    lines = [header]
    for block, minutes in enumerate(block_minutes):
        moment = (datetime(2025, 8, 14) + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S")
        for row in rows[2 * block : 2 * block + 2]:
            lines.append(_with_field(_with_field(row, 0, str(heights[block])), 2, moment))
    path = tmp_path / name
    _write(path, lines)
    return path, lines


def test_early_stop_is_safe_when_block_times_go_backwards(tmp_path):
    """A miner's clock may put a block before its parent: the reader must not stop at the first
    block past `end`. The block at minute 55 follows one at minute 65 and is still in the window
    (valid: it is later than the median of its 11 predecessors)."""
    minutes = [*range(0, 49, 4), 65, 55, 70, 75, 80, 85, 90, 95, 100, 105, 110]
    path, lines = _synthetic_blocks(tmp_path, minutes, "blockchair_bitcoin_transactions_20250814.tsv.gz")

    result = read_dump_window(path, datetime(2025, 8, 14, 0, 0), datetime(2025, 8, 14, 1, 0))

    expected_heights = [100 + index for index, m in enumerate(minutes) if m < 60]
    assert sorted(result.frame["block_id"].unique()) == expected_heights
    assert 100 + minutes.index(55) in expected_heights
    assert result.files_stopped_early == [str(path)]
    assert result.rows_scanned < len(lines) - 1


def test_no_early_stop_over_a_height_gap(tmp_path):
    """The median-time rule holds for 11 consecutive blocks only. Here the 11 blocks read last
    (with gaps) have a median past `end`, yet the next block may legally be inside the window."""
    heights = [90, 93, 96, 99, 102, 105, 106, 107, 108, 109, 110, 111]
    minutes = [90, 90, 90, 90, 90, 90, 30, 31, 32, 33, 34, 59]
    path, lines = _synthetic_blocks(tmp_path, minutes, "blockchair_bitcoin_transactions_20250814.tsv.gz", heights)

    result = read_dump_window(path, datetime(2025, 8, 14, 0, 0), datetime(2025, 8, 14, 1, 0))

    assert sorted(result.frame["block_id"].unique()) == [106, 107, 108, 109, 110, 111]
    assert result.files_stopped_early == [] and result.rows_scanned == len(lines) - 1


def test_no_early_stop_when_blocks_are_out_of_order(tmp_path, caplog):
    path, lines = _synthetic_blocks(tmp_path, [10 * i for i in range(16)], "blockchair_bitcoin_transactions_20250814.tsv.gz")
    header, body = lines[0], lines[1:]
    newest_first = [row for block in range(15, -1, -1) for row in body[2 * block : 2 * block + 2]]
    _write(path, [header, *newest_first])  # 11 blocks past `end` come first, the window's blocks last

    with caplog.at_level(logging.WARNING):
        result = read_dump_window(path, datetime(2025, 8, 14, 0, 0), datetime(2025, 8, 14, 0, 35))

    assert result.files_stopped_early == []
    assert result.rows_scanned == len(body)
    assert sorted(result.frame["block_id"].unique()) == [100, 101, 102, 103]
    assert any("not ordered by block" in record.getMessage() for record in caplog.records)


def test_files_are_chosen_by_the_date_in_their_name(tmp_path):
    shutil.copy(FILE_14, tmp_path / FILE_14.name)
    # A corrupt file for another day: opening it would fail, so success proves it was skipped.
    (tmp_path / "blockchair_bitcoin_transactions_20250815.tsv.gz").write_bytes(b"not gzip")
    (tmp_path / "blockchair_bitcoin_blocks_20250814.tsv.gz").write_bytes(b"not a transactions dump")

    result = read_dump_window(tmp_path, datetime(2025, 8, 13, 23, 0), datetime(2025, 8, 14, 0, 30))

    assert result.files_read == [str(tmp_path / FILE_14.name)]
    assert result.missing_dates == [date(2025, 8, 13)]
    assert sorted(result.frame["block_id"].unique()) == [909922, 909923]
    with pytest.raises(ValueError, match="not a Blockchair transactions dump name"):
        read_dump_window([tmp_path / "blockchair_bitcoin_blocks_20250814.tsv.gz"], datetime(2025, 8, 14), datetime(2025, 8, 15))


def test_rows_in_two_files_of_one_day_are_deduplicated(tmp_path):
    lines = _lines(FILE_14, 301)
    _write(tmp_path / "blockchair_bitcoin_transactions_20250814_part1.tsv.gz", lines[:201])
    _write(tmp_path / "blockchair_bitcoin_transactions_20250814_part2.tsv.gz", [lines[0], *lines[101:]])

    result = read_dump_window(tmp_path, datetime(2025, 8, 14), datetime(2025, 8, 15))

    assert result.rows_in_window == 400
    assert result.duplicates_dropped == 100
    assert len(result.frame) == 300 and not result.frame["hash"].duplicated().any()


def test_truncated_gzip_names_file_and_line(tmp_path):
    data = FILE_14.read_bytes()
    cut = data[: len(data) // 3]
    path = tmp_path / FILE_14.name
    path.write_bytes(cut)
    complete_lines = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut).count(b"\n")

    with pytest.raises(DumpFormatError) as caught:
        read_dump_window(path, datetime(2025, 8, 14), datetime(2025, 8, 15))

    assert caught.value.line == complete_lines + 1
    assert str(path) in str(caught.value) and f"line {complete_lines + 1}" in str(caught.value)
    assert "truncated" in str(caught.value)


@pytest.mark.parametrize(
    ("line_number", "change", "expected"),
    [
        (57, lambda line: line.rsplit("\t", 1)[0] + "\n", "expected 22 tab-separated fields, found 21"),
        (80, lambda line: _with_field(line, 15, "12x"), "field 'fee' is not a number"),
        (91, lambda line: _with_field(line, 2, "2025-08-14 25:00:00"), "field 'time' is not a UTC timestamp"),
        (95, lambda line: _with_field(line, 0, "90992x"), "field 'block_id' is not an integer"),
        (99, lambda line: _with_field(line, 13, "-1"), "field 'output_total' is negative"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line_number, change, expected):
    lines = _lines(FILE_14, 200)
    lines[line_number - 1] = change(lines[line_number - 1])
    path = tmp_path / FILE_14.name
    _write(path, lines)

    with pytest.raises(DumpFormatError) as caught:
        read_dump_window(path, datetime(2025, 8, 14), datetime(2025, 8, 15))

    assert caught.value.line == line_number
    assert f"{path}, line {line_number}: {expected}" in str(caught.value)


def test_a_file_arrow_refuses_is_read_line_by_line_and_says_so(tmp_path, caplog):
    """A lone carriage return ends a line for Arrow, not for the line reader, which only checks the
    values of rows inside the window: this row is outside it, so the file is valid for the window."""
    path, lines = _synthetic_blocks(tmp_path, [0, 4, 8, 70], "blockchair_bitcoin_transactions_20250814.tsv.gz")
    fee_usd = lines[0].split("\t").index("fee_usd")
    lines[7] = _with_field(lines[7], fee_usd, "1.5\r2")  # block at minute 70
    _write(path, lines)

    with caplog.at_level(logging.WARNING):
        result = read_dump_window(path, datetime(2025, 8, 14, 0, 0), datetime(2025, 8, 14, 1, 0))

    assert result.files_read_line_by_line == [str(path)]
    assert sorted(result.frame["block_id"].unique()) == [100, 101, 102] and result.rows_scanned == 8
    assert any("Arrow's CSV reader refused" in record.getMessage() for record in caplog.records)


def test_bad_header_and_empty_window(tmp_path):
    lines = _lines(FILE_14, 5)
    path = tmp_path / FILE_14.name
    _write(path, [lines[0].replace("fee_per_kwu\t", "fee_rate\t"), *lines[1:]])
    with pytest.raises(DumpFormatError, match=r"line 1: header lacks column\(s\) \['fee_per_kwu'\]"):
        read_dump_window(path, datetime(2025, 8, 14), datetime(2025, 8, 15))
    with pytest.raises(ValueError, match="empty window"):
        read_dump_window(DUMP_DIR, datetime(2025, 8, 14), datetime(2025, 8, 14))
