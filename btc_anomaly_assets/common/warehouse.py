"""The DuckDB warehouse: one file, schema ``btc``, one table per derived asset.

Why not dagster-duckdb's IO manager: it skips the write of an empty frame (so the table never
exists and downstream fails), inserts positionally, and runs its DELETE and INSERT without a
transaction (a crash between them loses the partition). Here every write of a window is one
transaction — create-if-missing, delete ``[start, end)``, insert by name with the declared types —
so a partition is either fully replaced or untouched, an empty result still creates the table,
and re-running is idempotent. DuckDB allows one writer per file, so every connection is taken
under a file lock (waiting, not failing) and kept short.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator, Sequence

import duckdb
import pandas as pd
import pyarrow as pa
from filelock import FileLock, Timeout

from btc_anomaly_assets.common.schema import Column, arrow_schema, column_names
from btc_anomaly_assets.common.utc import naive_utc

SCHEMA = "btc"
LOCK_TIMEOUT_SECONDS = 600


class WarehouseError(RuntimeError):
    """A warehouse operation that cannot go ahead; the message names the table and window."""


def create_table_sql(table: str, columns: Sequence[Column]) -> str:
    cols = ", ".join(f'"{c.name}" {c.duckdb_type}' for c in columns)
    return f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{table} ({cols})"


class Warehouse:
    def __init__(self, path: str, *, lock_timeout: float = LOCK_TIMEOUT_SECONDS):
        self.path = str(Path(path).expanduser().resolve())
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"Warehouse({self.path!r})"

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection under the file lock (one process at a time touches the file)."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path + ".lock", timeout=self.lock_timeout)
        try:
            lock.acquire()
        except Timeout:
            raise WarehouseError(
                f"waited {self.lock_timeout:.0f} s for the DuckDB writer lock on {self.path}; another run holds it"
            ) from None
        try:
            con = self._open()
            try:
                # A missing table must be an error, not a Python variable of the same name in the caller.
                con.execute("SET python_enable_replacements = false")
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                yield con
            finally:
                con.close()
        finally:
            lock.release()

    def _open(self) -> duckdb.DuckDBPyConnection:
        # A process that does not use our lock (e.g. a DuckDB CLI) may still hold the file: retry briefly.
        delay = 0.2
        for attempt in range(8):
            try:
                return duckdb.connect(self.path)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or attempt == 7:
                    raise WarehouseError(f"cannot open DuckDB file {self.path}: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def ensure_table(self, table: str, columns: Sequence[Column]) -> None:
        with self.connect() as con:
            ensure_table_columns(con, table, columns)

    def replace_window(
        self,
        table: str,
        columns: Sequence[Column],
        frame: pd.DataFrame,
        start: datetime,
        end: datetime,
        *,
        time_column: str = "minute",
    ) -> int:
        """Atomically replace the rows of ``[start, end)`` in ``btc.<table>`` with ``frame``."""
        start, end = naive_utc(start), naive_utc(end)
        arrow = to_arrow(frame, columns, where=f"btc.{table}")
        if arrow.num_rows:
            times = arrow.column(time_column).to_pandas()
            lo, hi = times.min(), times.max()
            if lo < pd.Timestamp(start) or hi >= pd.Timestamp(end):
                raise WarehouseError(f"btc.{table}: rows span {lo}..{hi}, outside the window [{start}, {end})")
        delete = f'DELETE FROM {SCHEMA}.{table} WHERE "{time_column}" >= ? AND "{time_column}" < ?'
        return self._write(table, columns, arrow, delete, [start, end])

    def upsert(self, table: str, columns: Sequence[Column], frame: pd.DataFrame, *, key: str) -> int:
        """Insert rows, replacing any row with the same ``key`` (one transaction)."""
        arrow = to_arrow(frame, columns, where=f"btc.{table}")
        delete = f'DELETE FROM {SCHEMA}.{table} WHERE "{key}" IN (SELECT "{key}" FROM incoming_rows)'
        return self._write(table, columns, arrow, delete, [])

    def replace_all(self, table: str, columns: Sequence[Column], frame: pd.DataFrame) -> int:
        """Replace the whole table's content with ``frame`` (one transaction)."""
        arrow = to_arrow(frame, columns, where=f"btc.{table}")
        return self._write(table, columns, arrow, f"DELETE FROM {SCHEMA}.{table}", [])

    def _write(self, table: str, columns: Sequence[Column], arrow: pa.Table, delete_sql: str, params: list) -> int:
        """Create-if-missing, delete what ``delete_sql`` selects, insert ``arrow`` by name: all or nothing."""
        names = ", ".join(f'"{n}"' for n in column_names(list(columns)))
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                ensure_table_columns(con, table, columns)
                con.register("incoming_rows", arrow)
                con.execute(delete_sql, params)
                con.execute(f"INSERT INTO {SCHEMA}.{table} ({names}) SELECT {names} FROM incoming_rows")
                con.unregister("incoming_rows")
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        return arrow.num_rows

    def read_window(
        self, table: str, columns: Sequence[Column], start: datetime, end: datetime, *, time_column: str = "minute"
    ) -> pd.DataFrame:
        """Rows of ``[start, end)`` ordered by time (an absent table reads as empty)."""
        names = ", ".join(f'"{n}"' for n in column_names(list(columns)))
        with self.connect() as con:
            ensure_table_columns(con, table, columns)
            return con.execute(
                f'SELECT {names} FROM {SCHEMA}.{table} WHERE "{time_column}" >= ? AND "{time_column}" < ? ORDER BY "{time_column}"',
                [naive_utc(start), naive_utc(end)],
            ).df()

    def query(self, sql: str, params: Sequence | None = None) -> pd.DataFrame:
        with self.connect() as con:
            return con.execute(sql, params or []).df()

    def table_exists(self, table: str) -> bool:
        with self.connect() as con:
            return bool(
                con.execute(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [SCHEMA, table]
                ).fetchone()[0]
            )


def ensure_table_columns(con: duckdb.DuckDBPyConnection, table: str, columns: Sequence[Column]) -> None:
    """Create the table if missing, and add columns a newer contract has (an upgrade keeps old rows, NULL there)."""
    con.execute(create_table_sql(table, columns))
    present = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?", [SCHEMA, table]).fetchall()}
    for column in columns:
        if column.name not in present:
            con.execute(f'ALTER TABLE {SCHEMA}.{table} ADD COLUMN "{column.name}" {column.duckdb_type}')


def to_arrow(frame: pd.DataFrame, columns: Sequence[Column], *, where: str) -> pa.Table:
    """The frame as an Arrow table with exactly the declared columns and types (by name, not position)."""
    names = column_names(list(columns))
    missing = [n for n in names if n not in frame.columns]
    extra = [c for c in frame.columns if c not in names]
    if missing or extra:
        raise WarehouseError(f"{where}: frame columns do not match the table (missing {missing}, unexpected {extra})")
    schema = arrow_schema(list(columns))
    if frame.empty:
        return schema.empty_table()  # an empty frame's columns carry no usable dtypes
    try:
        return pa.Table.from_pandas(frame[names], schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise WarehouseError(f"{where}: a column does not match its declared type: {exc}") from exc
