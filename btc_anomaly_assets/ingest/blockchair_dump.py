"""Read one time window of transactions from Blockchair daily dump files (TSV, gzip).

Blockchair publishes one file per UTC day, ``blockchair_bitcoin_transactions_YYYYMMDD.tsv.gz``
(the bundled excerpts carry a suffix, e.g. ``..._20250813_blocks909766-909785.tsv.gz``). A day's
file holds the transactions of the blocks whose block time falls on that day, ordered by block.
``time`` is the block time, so the result has time basis ``block``.

Files are streamed line by line (a real day is ~1-2 GB uncompressed); only the rows inside the
window are kept in memory.

Early stop. Block times are set by miners and are not monotonic, so "the current row is past
``end``" does not mean later rows are too. Bitcoin consensus does guarantee that a block's time is
greater than the median of the 11 blocks before it (median-time-past), and that median never
decreases. So once the median time of the last 11 consecutive blocks read is >= ``end``, every later
block is outside the window and the rest of the file can be skipped. This is only used while the
rows read so far are grouped by block in ascending height with one time per block; if that is ever
violated in a file, the whole file is scanned (and the violation is logged).
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Iterable

import pandas as pd

from btc_anomaly_assets.common.schema import BLOCKCHAIR_FIELDS, TIME_BASIS_BLOCK
from btc_anomaly_assets.common.utc import naive_utc
from btc_anomaly_assets.ingest.raw_frames import (
    DUPLICATES_DROPPED_ATTR,
    RawDataError,
    concat_raw_frames,
    to_raw_frame,
)

DUMP_FILE_PATTERN = re.compile(r"^blockchair_bitcoin_transactions_(?P<day>\d{8})[^/\\]*\.tsv\.gz$")
DUMP_FILE_GLOB = "blockchair_bitcoin_transactions_*.tsv.gz"
# Median-time-past window of Bitcoin consensus (BIP 113 / the block-time rule).
MEDIAN_TIME_SPAN = 11
_DUMP_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

_log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class DumpReadResult:
    """Rows of one window plus what was read to get them (for run metadata and checks).

    ``frame``: RAW_TRANSACTION_COLUMNS, time basis ``block``, rows with start <= time < end.
    ``files_read``: paths of the dump files opened (in date order).
    ``rows_scanned``: data lines read from those files (header excluded; less than the files'
    row count when a file was stopped early).
    ``rows_in_window``: rows found with start <= time < end, before de-duplication
    (so ``len(frame) == rows_in_window - duplicates_dropped``).
    ``duplicates_dropped``: rows dropped as (minute, hash) duplicates.
    ``files_stopped_early``: files whose tail was skipped by the median-time-past rule.
    ``missing_dates``: UTC dates the window touches for which no dump file was found.
    """

    frame: pd.DataFrame
    files_read: list[str]
    rows_scanned: int
    rows_in_window: int = 0
    duplicates_dropped: int = 0
    files_stopped_early: list[str] = field(default_factory=list)
    missing_dates: list[date] = field(default_factory=list)


def dump_file_date(path: Path) -> date | None:
    """The UTC day a dump file covers, from its name; None if the name is not a transactions dump."""
    match = DUMP_FILE_PATTERN.match(path.name)
    if not match:
        return None
    try:
        return datetime.strptime(match.group("day"), "%Y%m%d").date()
    except ValueError:
        return None


def read_dump_window(
    dump_dir_or_files: Path | str | Iterable[Path | str],
    start: datetime,
    end: datetime,
    *,
    logger: logging.Logger | None = None,
) -> DumpReadResult:
    """Read the transactions with ``start <= time < end`` (naive UTC) from Blockchair dump files.

    ``dump_dir_or_files`` is a directory (every ``blockchair_bitcoin_transactions_YYYYMMDD*.tsv.gz``
    in it is a candidate) or an explicit list of such files. Only files whose day can overlap the
    window (by name) are opened. Raises ``DumpFormatError`` (file + line) for a truncated gzip, a
    bad header, a line with the wrong number of fields or a value that does not parse. Every line
    read is checked for its field count, ``block_id`` and ``time``; the other fields are validated
    (by ``to_raw_frame``) only on the rows kept, so a bad number outside the window goes unnoticed.
    A truncation after the early-stop point is not seen either (nothing after it was needed).
    """
    log = logger or _log
    start = naive_utc(start, name="start")
    end = naive_utc(end, name="end")
    if not start < end:
        raise ValueError(f"empty window: start {start} must be before end {end}")
    candidates = _candidate_files(dump_dir_or_files)
    window_days = _days_touched(start, end)
    selected = sorted(
        (path for path in candidates if candidates[path] in window_days),
        key=lambda path: (candidates[path], path.name),
    )
    covered = {candidates[path] for path in selected}
    missing_dates = [day for day in window_days if day not in covered]
    if missing_dates:
        log.warning(
            "no Blockchair dump file for %s (window %s .. %s); those days contribute no rows",
            ", ".join(day.isoformat() for day in missing_dates),
            start,
            end,
        )

    frames: list[pd.DataFrame] = []
    rows_scanned = 0
    rows_in_window = 0
    stopped_early: list[str] = []
    for path in selected:
        scan = _scan_file(path, start, end, log)
        rows_scanned += scan.rows_scanned
        rows_in_window += scan.rows_in_window
        if scan.stopped_early:
            stopped_early.append(str(path))
        frames.extend(scan.frames)
        log.info(
            "read %s: %d rows scanned, %d in window%s",
            path.name,
            scan.rows_scanned,
            scan.rows_in_window,
            " (stopped early: median block time past window end)" if scan.stopped_early else "",
        )
    frame = concat_raw_frames(frames)
    return DumpReadResult(
        frame=frame,
        files_read=[str(path) for path in selected],
        rows_scanned=rows_scanned,
        rows_in_window=rows_in_window,
        duplicates_dropped=int(frame.attrs.get(DUPLICATES_DROPPED_ATTR, 0)),
        files_stopped_early=stopped_early,
        missing_dates=missing_dates,
    )


def _candidate_files(dump_dir_or_files) -> dict[Path, date]:
    if isinstance(dump_dir_or_files, (str, Path)):
        root = Path(dump_dir_or_files)
        if root.is_dir():
            found = {path: dump_file_date(path) for path in root.glob(DUMP_FILE_GLOB)}
            return {path: day for path, day in found.items() if day is not None}
        paths = [root]
    else:
        paths = [Path(item) for item in dump_dir_or_files]
    result: dict[Path, date] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"Blockchair dump file or directory not found: {path}")
        day = dump_file_date(path)
        if day is None:
            raise ValueError(
                f"{path}: not a Blockchair transactions dump name "
                "(expected blockchair_bitcoin_transactions_YYYYMMDD*.tsv.gz)"
            )
        result[path] = day
    return result


def _days_touched(start: datetime, end: datetime) -> list[date]:
    """UTC days that intersect [start, end)."""
    last = (end - timedelta(microseconds=1)).date()
    days = []
    day = start.date()
    while day <= last:
        days.append(day)
        day += timedelta(days=1)
    return days


@dataclass
class _FileScan:
    frames: list[pd.DataFrame]  # typed raw frames, one per chunk of in-window rows
    rows_in_window: int
    rows_scanned: int
    stopped_early: bool


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


def _scan_file(path: Path, start: datetime, end: datetime, log: logging.Logger) -> _FileScan:
    """Stream one gzip TSV, keeping the raw text fields of rows inside [start, end)."""
    times: dict[str, datetime] = {}
    line_number = 0

    def parse_time(text: str) -> datetime:
        parsed = times.get(text)
        if parsed is None:
            try:
                parsed = datetime.strptime(text, _DUMP_TIME_FORMAT)
            except ValueError:
                raise DumpFormatError(
                    f"{path}, line {line_number}: field 'time' is not a UTC timestamp 'YYYY-MM-DD HH:MM:SS': {text!r}",
                    path=path,
                    line=line_number,
                    field="time",
                    value=text,
                ) from None
            times[text] = parsed
        return parsed

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
    return _FileScan(
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
    text_rows = pd.DataFrame(rows, columns=header, index=pd.Index(line_numbers, name="line"))
    try:
        return to_raw_frame(text_rows, time_basis=TIME_BASIS_BLOCK, where=str(path))
    except RawDataError as exc:
        line = int(exc.location.split()[-1]) if exc.location and exc.location.startswith("line ") else None
        raise DumpFormatError(str(exc), path=path, line=line, field=exc.field, value=exc.value) from None
