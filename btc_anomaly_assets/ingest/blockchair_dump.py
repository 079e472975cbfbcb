"""Read one time window of transactions from Blockchair daily dump files (TSV, gzip).

Blockchair publishes one file per UTC day, ``blockchair_bitcoin_transactions_YYYYMMDD.tsv.gz``
(the bundled excerpts carry a suffix, e.g. ``..._20250813_blocks909766-909785.tsv.gz``). A day's
file holds the transactions of the blocks whose block time falls on that day, ordered by block.
``time`` is the block time, so the result has time basis ``block``.

Files are streamed (a real day is ~1-2 GB uncompressed) and only the rows inside the window are
kept in memory; ``dump_file_scan`` reads each file (Arrow's CSV reader, or a line reader that
names the line of any fault) and stops early once the blocks' median time passes the window.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Iterable

import pandas as pd

from btc_anomaly_assets.common.lake import release_arrow_memory
from btc_anomaly_assets.common.utc import naive_utc
from btc_anomaly_assets.ingest.dump_file_scan import DumpFormatError, scan_file
from btc_anomaly_assets.ingest.raw_frames import DUPLICATES_DROPPED_ATTR, concat_raw_frames

__all__ = ["DUMP_FILE_GLOB", "DumpFormatError", "DumpReadResult", "dump_file_date", "read_dump_window"]

DUMP_FILE_PATTERN = re.compile(r"^blockchair_bitcoin_transactions_(?P<day>\d{8})[^/\\]*\.tsv\.gz$")
DUMP_FILE_GLOB = "blockchair_bitcoin_transactions_*.tsv.gz"

_log = logging.getLogger(__name__)


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
    ``files_read_line_by_line``: files Arrow's reader refused that the line reader then read
    without finding a fault (a warning names the reason).
    """

    frame: pd.DataFrame
    files_read: list[str]
    rows_scanned: int
    rows_in_window: int = 0
    duplicates_dropped: int = 0
    files_stopped_early: list[str] = field(default_factory=list)
    missing_dates: list[date] = field(default_factory=list)
    files_read_line_by_line: list[str] = field(default_factory=list)


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
    line_by_line: list[str] = []
    for path in selected:
        scan = scan_file(path, start, end, log)
        rows_scanned += scan.rows_scanned
        rows_in_window += scan.rows_in_window
        if scan.stopped_early:
            stopped_early.append(str(path))
        if scan.read_line_by_line:
            line_by_line.append(str(path))
        frames.extend(scan.frames)
        log.info(
            "read %s: %d rows scanned, %d in window%s",
            path.name,
            scan.rows_scanned,
            scan.rows_in_window,
            " (stopped early: median block time past window end)" if scan.stopped_early else "",
        )
    release_arrow_memory()  # the scan's text columns are gone: their pool memory serves the concat below
    frame = concat_raw_frames(frames)
    return DumpReadResult(
        frame=frame,
        files_read=[str(path) for path in selected],
        rows_scanned=rows_scanned,
        rows_in_window=rows_in_window,
        duplicates_dropped=int(frame.attrs.get(DUPLICATES_DROPPED_ATTR, 0)),
        files_stopped_early=stopped_early,
        missing_dates=missing_dates,
        files_read_line_by_line=line_by_line,
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


