"""The raw Parquet lake: hive-style ``date=YYYY-MM-DD/hour=HH/data.parquet`` files.

One file per UTC hour keeps a minute's rewrite small (an hour is ~20k transactions) while a day
is only 24 files, so Spark and DuckDB prune a time range to a handful of files. The location is a
local path or any URL pyarrow understands (``s3://``, ``gs://``, ``hdfs://``), so a cluster reads
the same lake. Re-writing a window replaces exactly the rows of that window: each affected hour
file is rebuilt (kept rows + new rows) into a temporary file and moved over the old one.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from filelock import FileLock

from btc_anomaly_assets.common.schema import RAW_TRANSACTION_COLUMNS, arrow_schema, column_names
from btc_anomaly_assets.common.utc import naive_utc

logger = logging.getLogger(__name__)

RAW_DATASET = "raw_transactions"
RAW_SCHEMA = arrow_schema(RAW_TRANSACTION_COLUMNS)
RAW_NAMES = column_names(RAW_TRANSACTION_COLUMNS)
FILE_NAME = "data.parquet"


class LakeError(RuntimeError):
    """A lake write or read that cannot go ahead; the message names the window and file."""


def raw_path(lake_root: str) -> str:
    return f"{lake_root.rstrip('/')}/{RAW_DATASET}"


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def hour_starts(start: datetime, end: datetime) -> list[datetime]:
    """UTC hours that overlap ``[start, end)``."""
    hour = start.replace(minute=0, second=0, microsecond=0)
    hours = []
    while hour < end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def hour_file(dataset_path: str, hour: datetime) -> str:
    return f"{dataset_path}/date={hour:%Y-%m-%d}/hour={hour:%H}/{FILE_NAME}"


def _to_table(frame: pd.DataFrame) -> pa.Table:
    missing = [c for c in RAW_NAMES if c not in frame.columns]
    if missing:
        raise LakeError(f"raw frame is missing columns {missing}")
    if frame.empty:
        return RAW_SCHEMA.empty_table()
    try:
        return pa.Table.from_pandas(frame[RAW_NAMES], schema=RAW_SCHEMA, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise LakeError(f"raw frame does not match the raw schema: {exc}") from exc


@contextmanager
def lake_lock(dataset_path: str):
    """Serialise writers of a local lake (a live run and a backfill may overlap an hour file), and
    readers that list files before scanning them: Spark keeps the length it listed, so an hour file
    replaced in between reads as zero rows without an error."""
    if "://" in dataset_path:
        yield  # object stores: one writer per window is guaranteed by the Dagster pool instead
        return
    Path(dataset_path).mkdir(parents=True, exist_ok=True)
    with FileLock(str(Path(dataset_path) / ".write.lock"), timeout=300):
        yield


def write_raw_window(dataset_path: str, frame: pd.DataFrame, start: datetime, end: datetime) -> int:
    """Replace the lake's rows for ``[start, end)`` with ``frame``; returns the rows written.

    Rows of the same hour files outside the window are kept. Refuses a frame with rows outside
    the window, so a partition can never write into its neighbours.
    """
    start, end = naive_utc(start), naive_utc(end)
    table = _to_table(frame)
    if table.num_rows:
        minutes = table.column("minute")
        lo, hi = pc.min(minutes).as_py(), pc.max(minutes).as_py()
        if lo < start or hi >= end:
            raise LakeError(f"raw rows span {lo}..{hi}, outside the window [{start}, {end})")
    fs, root = _filesystem(dataset_path)
    with lake_lock(root if "://" not in dataset_path else dataset_path):
        for hour in hour_starts(start, end):
            path = hour_file(root, hour)
            hour_end = hour + timedelta(hours=1)
            new_rows = table.filter(
                (pc.field("minute") >= pa.scalar(hour, pa.timestamp("us")))
                & (pc.field("minute") < pa.scalar(hour_end, pa.timestamp("us")))
            ) if table.num_rows else table
            kept = _read_file_outside(fs, path, start, end, hour, hour_end)
            merged = pa.concat_tables([kept, new_rows]) if kept is not None else new_rows
            _replace_file(fs, path, merged)
    return table.num_rows


def _read_file_outside(fs: pafs.FileSystem, path: str, start: datetime, end: datetime, hour: datetime,
                       hour_end: datetime) -> pa.Table | None:
    """The rows of an hour file outside ``[start, end)``, to keep.

    An unreadable file (a torn write, a bad disk) is never silently dropped: when the window
    covers its whole hour it is moved to ``<lake>/quarantine/`` and rebuilt from the source;
    otherwise it also holds minutes this write does not cover, and the error says which hour to
    re-materialize to rebuild it.
    """
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    try:
        existing = pq.read_table(path, filesystem=fs, schema=RAW_SCHEMA)
    except (pa.ArrowInvalid, OSError) as exc:
        if start <= hour and hour_end <= end:
            moved = quarantine(fs, path)
            logger.warning("lake file %s is unreadable (%s): moved to %s; this write rebuilds its whole hour", path, exc, moved)
            return None
        raise LakeError(
            f"lake file {path} is unreadable ({exc}) and also holds minutes outside [{start:%Y-%m-%d %H:%M}, "
            f"{end:%H:%M}): materialize its whole hour, e.g. btc-anomaly backfill {hour:%Y-%m-%d-%H:%M} "
            f"{hour_end:%Y-%m-%d-%H:%M}, to rebuild it from the source (nothing was written)"
        ) from exc
    minutes = existing.column("minute")
    keep = pc.or_(
        pc.less(minutes, pa.scalar(start, pa.timestamp("us"))),
        pc.greater_equal(minutes, pa.scalar(end, pa.timestamp("us"))),
    )
    return existing.filter(keep)


def quarantine(fs: pafs.FileSystem, path: str) -> str:
    """Move an unreadable lake file aside (kept for inspection, out of every reader's way)."""
    dataset_marker = f"/{RAW_DATASET}/"
    root, _, relative = path.rpartition(dataset_marker)
    target = f"{root}/quarantine/{RAW_DATASET}/{relative}.{uuid.uuid4().hex[:8]}.corrupt"
    fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    fs.move(path, target)
    return target


def _replace_file(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    if table.num_rows == 0:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_file(path)
        return
    table = table.sort_by([("minute", "ascending"), ("block_id", "ascending"), ("hash", "ascending")])
    folder = path.rsplit("/", 1)[0]
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp, filesystem=fs, compression="zstd")
    fs.move(tmp, path)  # atomic on a local filesystem: readers see the old or the new file


def read_raw_window(dataset_path: str, start: datetime, end: datetime, columns: list[str] | None = None) -> pd.DataFrame:
    """Rows of ``[start, end)`` (only ``columns`` if given), reading only the hour files that overlap it."""
    start, end = naive_utc(start), naive_utc(end)
    fs, root = _filesystem(dataset_path)
    paths = [p for p in (hour_file(root, h) for h in hour_starts(start, end)) if fs.get_file_info(p).type != pafs.FileType.NotFound]
    if not paths:
        empty = RAW_SCHEMA.empty_table()
        return (empty.select(columns) if columns else empty).to_pandas()
    dataset = ds.dataset(paths, schema=RAW_SCHEMA, format="parquet", filesystem=fs)
    table = dataset.to_table(
        columns=columns,
        filter=(pc.field("minute") >= pa.scalar(start, pa.timestamp("us"))) & (pc.field("minute") < pa.scalar(end, pa.timestamp("us")))
    )
    frame = table.to_pandas()
    del table
    release_arrow_memory()
    return frame


def release_arrow_memory() -> None:
    """Hand back to the OS the memory Arrow's pool keeps for reuse after large tables are gone.

    pyarrow's default pool (mimalloc) holds freed blocks: after a day's dump text columns or a
    day's Parquet read that is ~250 MB of resident memory the pandas steps after it cannot use."""
    pa.default_memory_pool().release_unused()


def largest_transactions(dataset_path: str, minutes: list[datetime], per_minute: int) -> dict[datetime, list[str]]:
    """The ``per_minute`` largest transactions (by output_total) of each given minute: one DuckDB query
    over just the hour files those minutes fall in."""
    minutes = sorted({naive_utc(m) for m in minutes})
    if not minutes:
        return {}
    fs, root = _filesystem(dataset_path)
    hours = sorted({m.replace(minute=0, second=0, microsecond=0) for m in minutes})
    files = [p for p in (hour_file(root, h) for h in hours) if "://" in p or fs.get_file_info(p).type != pafs.FileType.NotFound]
    if not files:
        return {}
    import duckdb

    con = duckdb.connect()
    try:
        rows = con.execute(
            "SELECT minute, hash FROM (SELECT minute, hash, row_number() OVER (PARTITION BY minute ORDER BY output_total DESC, hash) AS rank "
            "FROM read_parquet(?) WHERE list_contains(?::TIMESTAMP[], minute)) WHERE rank <= ? ORDER BY minute, rank",
            [files, minutes, per_minute],
        ).fetchall()
    finally:
        con.close()
    found: dict[datetime, list[str]] = {}
    for minute, tx_hash in rows:
        found.setdefault(minute, []).append(tx_hash)
    return found
