"""Start a Spark session off the critical path and run the aggregation once on a tiny lake.

A fresh classic session costs ~5 s of JVM start and ~10 s more on its first aggregation (class
loading, JIT, query codegen), while the aggregation itself takes ~1-3 s at a day's size. In a run
that also fetches raw transactions first, both can happen on the other core while the raw step
works: ``SessionWarmer`` builds the session in a thread when the run starts, then (for local
masters only, where this process's temp folder is the executors' filesystem) aggregates one
minute of a two-row lake written to a temporary folder. The real step then waits for the
thread and finds a warm JVM.

A process that knows it is about to run the aggregation (the CLI's in-process run) can start the
warmer before it even loads the definitions (``prestart``): the JVM then starts while Python
imports, loads definitions and creates the run, on the core those leave idle. The run's resource
adopts that warmer (``adopt``, same Spark configuration only) instead of starting a second one.

Nothing of the warm-up reaches the outputs: its lake is a private temp folder, deleted after.
Failures are not hidden: a session that cannot be built raises the same error in the step that
needs it; a failed warm-up query is only logged (the session is still usable).
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

LOCAL_MASTER = re.compile(r"^local(\[[^\]]+\])?$")
# A minute outside any real data's range, so the warm-up's rows can never be mistaken for data.
_WARMUP_MINUTE = datetime(2000, 1, 1, 0, 0)


def is_local_master(master: str | None) -> bool:
    return bool(master) and bool(LOCAL_MASTER.match(master.strip()))


def warm_up_aggregation(spark: Any) -> None:
    """Aggregate one minute of a two-row temporary lake (a coinbase and a spend) with ``spark``."""
    from btc_anomaly_assets.aggregates.spark_aggregates import aggregate_minutes_spark
    from btc_anomaly_assets.common.lake import RAW_SCHEMA, raw_path, write_raw_window

    minute = _WARMUP_MINUTE
    rows = [_warmup_row(minute, i) for i in range(2)]
    table = pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
    with tempfile.TemporaryDirectory(prefix="btc-spark-warmup-") as folder:
        dataset = raw_path(folder)
        write_raw_window(dataset, table.to_pandas(), minute, minute + timedelta(minutes=1))
        frame = aggregate_minutes_spark(spark, dataset, minute, minute + timedelta(minutes=1))
    if int(frame["tx_count"].sum()) != len(rows):
        raise RuntimeError(f"Spark warm-up aggregated {int(frame['tx_count'].sum())} rows, expected {len(rows)}")


def _warmup_row(minute: datetime, index: int) -> dict:
    coinbase = index == 0
    spend = {"input_total": 10_000, "input_total_usd": 10.0, "output_total": 9_000, "output_total_usd": 9.0, "fee": 1_000,
             "fee_usd": 1.0, "fee_per_kb": 4_000.0, "fee_per_kwu": 1_000.0}
    values = {name: 0 if isinstance(value, int) else 0.0 for name, value in spend.items()} if coinbase else spend
    return {"block_id": 1, "hash": f"{index:064x}", "time": minute, "size": 250, "weight": 1000, "version": 2,
            "lock_time": 0, "is_coinbase": coinbase, "has_witness": True, "input_count": 1, "output_count": 2,
            **values, "fee_per_kb_usd": 0.0, "fee_per_kwu_usd": 0.0, "cdd_total": 0.0, "minute": minute,
            "time_basis": "block"}


_prestarted: dict[tuple, "SessionWarmer"] = {}
_prestarted_lock = threading.Lock()
_started: "weakref.WeakSet[SessionWarmer]" = weakref.WeakSet()
# A session still starting when its process exits: the JVM is stopped in the middle of creating
# the SparkContext and prints a Java stack trace. A process about to exit lets it finish first.
SETTLE_TIMEOUT_SECONDS = 120.0


def settle_all(timeout: float = SETTLE_TIMEOUT_SECONDS) -> None:
    """Let every warmer of this process finish building its session, skipping warm-ups not begun.

    For a process about to exit (the CLI after its in-process run, whatever the outcome): a run
    that failed before its aggregation step leaves a session still starting in the background."""
    for warmer in list(_started):
        warmer.settle(timeout)


def prestart(config_key: tuple, make_warmer: Callable[[], "SessionWarmer"]) -> None:
    """Start a warmer for this Spark configuration now, unless one is already waiting to be adopted."""
    with _prestarted_lock:
        if config_key not in _prestarted:
            _prestarted[config_key] = make_warmer().start()


def adopt(config_key: tuple) -> "SessionWarmer | None":
    """The warmer ``prestart`` started for this configuration (each is adopted once), or None."""
    with _prestarted_lock:
        return _prestarted.pop(config_key, None)


class SessionWarmer:
    """Builds a Spark session in a daemon thread; ``result()`` waits for it.

    ``build`` makes the session; ``warm_up`` (optional) runs a first query on it. ``log`` gets one
    line when the thread is done (how long each part took) or a warning if the warm-up failed.
    """

    def __init__(self, build: Callable[[], Any], warm_up: Callable[[Any], None] | None, log: Any):
        self._build = build
        self._warm_up = warm_up
        self._log = log
        self._session: Any = None
        self._error: BaseException | None = None
        self._needed = threading.Event()  # the step is waiting: a warm-up not yet begun is skipped
        self.timings: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="spark-session-warmer", daemon=True)

    def start(self) -> SessionWarmer:
        self._thread.start()
        _started.add(self)
        return self

    def settle(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the session to be built; a warm-up not yet begun is skipped."""
        self._needed.set()
        self._thread.join(timeout)

    def use_log(self, log: Any) -> None:
        """Report to ``log`` from now on (a prestarted warmer adopted by a run: the run's log)."""
        self._log = log

    def _run(self) -> None:
        began = time.monotonic()
        try:
            self._session = self._build()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the step that needs the session
            self._error = exc
            return
        self.timings["session_seconds"] = time.monotonic() - began
        if self._warm_up is None or self._needed.is_set():
            return
        began = time.monotonic()
        try:
            self._warm_up(self._session)
        except Exception as exc:  # noqa: BLE001 - logged; the step then runs on the cold session
            self._log.warning(f"Spark warm-up query failed (the session is still used): {exc!r}")
            return
        self.timings["warm_up_seconds"] = time.monotonic() - began

    def result(self) -> Any:
        """The session (waiting for the thread); raises what building it raised."""
        waited = time.monotonic()
        self._needed.set()
        self._thread.join()
        self.timings["waited_seconds"] = time.monotonic() - waited
        if self._error is not None:
            raise self._error
        self._log.info("Spark session started in the background: " + ", ".join(
            f"{name} {seconds:.1f} s" for name, seconds in self.timings.items()))
        return self._session

