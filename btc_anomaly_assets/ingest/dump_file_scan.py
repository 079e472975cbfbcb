"""Scan one Blockchair dump file (gzip TSV) for the rows of a time window.

Two readers give the same result. Arrow's CSV reader parses a file in blocks, as text (a
452,577-row day in ~0.6 s); a Python loop over the lines (~5 s) reads any file Arrow refuses (a
line with the wrong number of fields, bad UTF-8, a truncated gzip stream) and names the file and
the 1-based line of the fault. If the line reader finds nothing wrong where Arrow refused, its
rows are used and the scan says so (``read_line_by_line``, plus a warning naming the reason).

Early stop (both readers): block times are set by miners and are not monotonic, but a block's
time is greater than the median of the 11 blocks before it (median-time-past), and that median
never decreases. So once the median time of the last 11 consecutive blocks read is >= ``end``,
every later block is outside the window and the rest of the file can be skipped; only while rows
are grouped by block in ascending height with one time per block (else the whole file is read,
and the violation logged).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from btc_anomaly_assets.common.schema import BLOCKCHAIR_FIELDS, TIME_BASIS_BLOCK
from btc_anomaly_assets.ingest.raw_frames import BLOCKCHAIR_TIME_FORMAT, RawDataError, to_raw_frame

# Median-time-past window of Bitcoin consensus (BIP 113 / the block-time rule).
MEDIAN_TIME_SPAN = 11


class DumpFormatError(RawDataError):
    """A dump file is corrupt or malformed; the message names the file and the 1-based line."""

    def __init__(self, message: str, *, path: Path, line: int | None, field: str | None = None, value=None):
        super().__init__(
            message,
            where=str(path),
            field=field,
            location=None if line is None else f"line {line}",
            value=value,
        )
        self.path = path
        self.line = line


@dataclass
class FileScan:
    frames: list[pd.DataFrame]  # typed raw frames, one per chunk of in-window rows
    rows_in_window: int
    rows_scanned: int
    stopped_early: bool
    read_line_by_line: bool = False


# In-window rows are typed every this many rows: a day held as text fields took ~1 GB of Python strings.
TYPE_EVERY_ROWS = 50_000


class _MedianTimeStop:
    """Decides when the rest of a block-ordered file cannot hold rows before ``end``.

    Fed the (block_id, time) of each row in file order. ``should_stop`` is asked at the first row
    of each new block: the new block and every later one have a time greater than the median of
    the previous 11 consecutive blocks, so the file can be abandoned once that median is >= end.
    """

    def __init__(self, end: datetime, path: Path, log: logging.Logger):
        self.end = end
        self.path = path
        self.log = log
        self.enabled = True
        self.block_id: int | None = None
        self.block_time_text: str | None = None
        self.recent_times: list[datetime] = []

    def should_stop(self, line_number: int, block_id: int, time_text: str, parse_time) -> bool:
        if block_id == self.block_id:
            if self.enabled and time_text != self.block_time_text:
                self._disable(line_number, f"block {block_id} has two times {self.block_time_text} and {time_text}")
            return False
        if self.block_id is not None and block_id < self.block_id:
            if self.enabled:
                self._disable(line_number, f"block {block_id} follows block {self.block_id}")
            self.block_id, self.block_time_text = block_id, time_text
            return False
        if self.enabled and len(self.recent_times) == MEDIAN_TIME_SPAN:
            if sorted(self.recent_times)[MEDIAN_TIME_SPAN // 2] >= self.end:
                return True
        if self.block_id is None or block_id != self.block_id + 1:
            self.recent_times = []  # a height gap: the median must be over consecutive blocks
        self.recent_times.append(parse_time(time_text))
        del self.recent_times[:-MEDIAN_TIME_SPAN]
        self.block_id, self.block_time_text = block_id, time_text
        return False

    def _disable(self, line_number: int, reason: str) -> None:
        self.enabled = False
        self.log.warning(
            "%s line %d: rows are not ordered by block (%s); scanning the whole file instead of stopping early",
            self.path,
            line_number,
            reason,
        )


# Arrow reads a file in blocks of this many (uncompressed) bytes: ~25k rows of a dump.
ARROW_BLOCK_BYTES = 8 << 20


class _ArrowRefused(Exception):
    """Arrow's reader could not read a file (malformed line, bad UTF-8, truncated gzip)."""


def scan_file(path: Path, start: datetime, end: datetime, log: logging.Logger) -> FileScan:
    """Keep the rows of one gzip TSV inside [start, end): Arrow's reader, or the line reader where it refuses."""
    try:
        return _scan_file_arrow(path, start, end, log)
    except _ArrowRefused as refused:
        scan = scan_file_by_line(path, start, end, log)  # raises the DumpFormatError naming the line
        log.warning("%s: Arrow's CSV reader refused the file (%s) but the line reader found no fault; "
                    "its rows were read line by line", path, refused)
        scan.read_line_by_line = True
        return scan


class _TimeParser:
    """Block-time text to datetime, each distinct text parsed once; a bad one names the file and line."""

    def __init__(self, path: Path):
        self.path = path
        self.parsed: dict[str, datetime] = {}

    def __call__(self, text: str, line_number: int) -> datetime:
        moment = self.parsed.get(text)
        if moment is None:
            try:
                moment = datetime.strptime(text, BLOCKCHAIR_TIME_FORMAT)
            except ValueError:
                raise DumpFormatError(
                    f"{self.path}, line {line_number}: field 'time' is not a UTC timestamp 'YYYY-MM-DD HH:MM:SS': {text!r}",
                    path=self.path,
                    line=line_number,
                    field="time",
                    value=text,
                ) from None
            self.parsed[text] = moment
        return moment


def _scan_file_arrow(path: Path, start: datetime, end: datetime, log: logging.Logger) -> FileScan:
    """``scan_file_by_line``'s result, read by Arrow in blocks of text columns.

    The early-stop rule and the window test look only at the rows where the (block_id, time) text
    changes (a block's rows are consecutive): a few hundred per day instead of every line. Data
    line ``i`` of the file (0-based, after the header) is line ``i + 2``, as Arrow is told to keep
    empty lines and to treat no character as a quote.
    """
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="\n") as stream:
            header = _parse_header(path, stream.readline())
    except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as exc:
        raise _ArrowRefused(f"header: {exc}") from None
    width = len(header)
    block_index, time_index = header.index("block_id"), header.index("time")
    parse_time = _TimeParser(path)
    stopper = _MedianTimeStop(end, path, log)
    kept: list[pa.Table] = []
    kept_lines: list[np.ndarray] = []
    frames: list[pd.DataFrame] = []
    rows_in_window = 0

    def type_kept() -> None:  # typed every TYPE_EVERY_ROWS rows or so: text columns are 3-4x the typed size
        if kept:
            chunk = pa.concat_tables(kept).to_pandas(types_mapper=pd.ArrowDtype)
            chunk.index = pd.Index(np.concatenate(kept_lines), name="line")
            frames.append(_typed(path, chunk))
            kept.clear()
            kept_lines.clear()

    rows_scanned = 0
    stopped_early = False
    last_key: tuple[str, str] | None = None
    last_in_window = False
    try:
        reader = pa_csv.open_csv(
            pa.input_stream(str(path), compression="gzip"),
            read_options=pa_csv.ReadOptions(column_names=header, skip_rows=1, block_size=ARROW_BLOCK_BYTES),
            parse_options=pa_csv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                                              newlines_in_values=False, ignore_empty_lines=False),
            convert_options=pa_csv.ConvertOptions(column_types={name: pa.string() for name in header},
                                                  strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
        for batch in reader:
            rows = batch.num_rows
            if rows == 0:
                continue
            if batch.num_columns != width:
                raise _ArrowRefused(f"{batch.num_columns} columns in a block, header has {width}")
            blocks, times = batch.column(block_index), batch.column(time_index)
            # Rows whose (block, time) text differs from the row before: where a decision can change.
            same = pc.and_(pc.equal(blocks.slice(1), blocks.slice(0, rows - 1)),
                           pc.equal(times.slice(1), times.slice(0, rows - 1)))
            changes = (np.flatnonzero(~np.asarray(same.to_numpy(zero_copy_only=False), dtype=bool)) + 1).tolist()
            if last_key != (blocks[0].as_py(), times[0].as_py()):
                changes.insert(0, 0)
            keep = np.empty(rows, dtype=bool)
            in_window, segment_start, stop_at = last_in_window, 0, None
            for position in changes:
                keep[segment_start:position] = in_window
                block_text, time_text = blocks[position].as_py(), times[position].as_py()
                line_number = rows_scanned + position + 2
                block_id = _parse_block_id(path, line_number, block_text)
                if stopper.should_stop(line_number, block_id, time_text, lambda text: parse_time(text, line_number)):
                    stop_at = position
                    break
                moment = parse_time(time_text, line_number)
                in_window = start <= moment < end
                segment_start = position
                last_key = (block_text, time_text)
            scanned = rows if stop_at is None else stop_at
            keep[segment_start:scanned] = in_window
            last_in_window = in_window
            positions = np.flatnonzero(keep[:scanned])
            for first in range(0, len(positions), TYPE_EVERY_ROWS):
                part = positions[first:first + TYPE_EVERY_ROWS]
                kept.append(pa.Table.from_batches([batch]).take(pa.array(part)))
                kept_lines.append(part + rows_scanned + 2)
                rows_in_window += len(part)
                if sum(len(lines) for lines in kept_lines) >= TYPE_EVERY_ROWS:
                    type_kept()
            rows_scanned += scanned
            if stop_at is not None:
                stopped_early = True
                break
    except (pa.ArrowInvalid, OSError) as exc:
        raise _ArrowRefused(str(exc).splitlines()[0][:200]) from None
    type_kept()
    return FileScan(frames=frames, rows_in_window=rows_in_window, rows_scanned=rows_scanned, stopped_early=stopped_early)


def scan_file_by_line(path: Path, start: datetime, end: datetime, log: logging.Logger) -> FileScan:
    """Stream one gzip TSV line by line, keeping the raw text fields of rows inside [start, end)."""
    times = _TimeParser(path)
    line_number = 0

    def parse_time(text: str) -> datetime:
        return times(text, line_number)

    rows: list[list[str]] = []
    line_numbers: list[int] = []
    frames: list[pd.DataFrame] = []
    rows_in_window = 0
    header: list[str] = []

    def type_rows() -> None:
        nonlocal rows, line_numbers
        if rows:
            frames.append(_to_frame(path, header, rows, line_numbers))
            rows, line_numbers = [], []

    stopper = _MedianTimeStop(end, path, log)
    stopped_early = False
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="\n") as stream:
            header_line = stream.readline()
            line_number = 1
            header = _parse_header(path, header_line)
            width = len(header)
            block_index = header.index("block_id")
            time_index = header.index("time")
            # A block's rows are consecutive and share one time: a line with the previous line's block
            # and time text gets the previous decision (should_stop would return False, unchanged).
            last_block_text, last_time_text, last_in_window = None, None, False
            for line_number, line in enumerate(stream, start=2):
                fields = line.rstrip("\r\n").split("\t")
                if len(fields) != width:
                    raise DumpFormatError(
                        f"{path}, line {line_number}: expected {width} tab-separated fields, found {len(fields)}",
                        path=path,
                        line=line_number,
                    )
                block_text, time_text = fields[block_index], fields[time_index]
                if block_text == last_block_text and time_text == last_time_text:
                    in_window = last_in_window
                else:
                    block_id = _parse_block_id(path, line_number, block_text)
                    if stopper.should_stop(line_number, block_id, time_text, parse_time):
                        stopped_early = True
                        line_number -= 1  # this line was only peeked at, not scanned into the result
                        break
                    moment = parse_time(time_text)
                    in_window = start <= moment < end
                    last_block_text, last_time_text, last_in_window = block_text, time_text, in_window
                if in_window:
                    rows.append(fields)
                    line_numbers.append(line_number)
                    rows_in_window += 1
                    if len(rows) >= TYPE_EVERY_ROWS:
                        type_rows()
    except EOFError:
        raise DumpFormatError(
            f"{path}, line {line_number + 1}: gzip stream is truncated (ended before the end-of-stream marker); "
            f"{max(line_number - 1, 0)} complete data lines were read before it",
            path=path,
            line=line_number + 1,
        ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DumpFormatError(
            f"{path}, line {line_number + 1}: corrupt gzip data ({exc})", path=path, line=line_number + 1
        ) from None
    except UnicodeDecodeError as exc:
        raise DumpFormatError(
            f"{path}, line {line_number + 1}: not valid UTF-8 ({exc.reason})", path=path, line=line_number + 1
        ) from None
    type_rows()
    return FileScan(
        frames=frames,
        rows_in_window=rows_in_window,
        rows_scanned=max(line_number - 1, 0),
        stopped_early=stopped_early,
    )


def _parse_header(path: Path, header_line: str) -> list[str]:
    if not header_line:
        raise DumpFormatError(f"{path}, line 1: file is empty (no header line)", path=path, line=1)
    header = header_line.rstrip("\r\n").split("\t")
    missing = [column.name for column in BLOCKCHAIR_FIELDS if column.name not in header]
    if missing:
        raise DumpFormatError(
            f"{path}, line 1: header lacks column(s) {missing}; got {header}", path=path, line=1, field=missing[0]
        )
    if len(set(header)) != len(header):
        raise DumpFormatError(f"{path}, line 1: header repeats a column name: {header}", path=path, line=1)
    return header


def _parse_block_id(path: Path, line_number: int, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DumpFormatError(
            f"{path}, line {line_number}: field 'block_id' is not an integer: {text!r}",
            path=path,
            line=line_number,
            field="block_id",
            value=text,
        ) from None


def _to_frame(path: Path, header: list[str], rows: list[list[str]], line_numbers: list[int]) -> pd.DataFrame:
    return _typed(path, pd.DataFrame(rows, columns=header, index=pd.Index(line_numbers, name="line")))


def _typed(path: Path, text_rows: pd.DataFrame) -> pd.DataFrame:
    """``to_raw_frame`` of text rows indexed by line number; a bad value names the file and line."""
    try:
        return to_raw_frame(text_rows, time_basis=TIME_BASIS_BLOCK, where=str(path))
    except RawDataError as exc:
        line = int(exc.location.split()[-1]) if exc.location and exc.location.startswith("line ") else None
        raise DumpFormatError(str(exc), path=path, line=line, field=exc.field, value=exc.value) from None
