"""Benchmark: per-minute aggregation in Spark (classic and Connect) against the DuckDB-SQL floor.

Prints, in one run:
- classic session start cost (builder + first trivial query) and Connect server start cost;
- the latency of ONE minute partition (a block minute) on a warm classic session, on an
  already-running Connect server, and as a fresh Python process against that server (what a
  per-minute Dagster run pays), each the median of N;
- one-day single-run throughput (~450k tx over 1,440 minutes) on classic and Connect;
- DuckDB-SQL on the same lake files, and the ratios.

The day is built from the real 13-14 Aug blocks: the 31 blocks are replayed in order with fresh
hashes and heights, their block times spread evenly over one UTC day, until about
``--target-rows`` transactions. Figures are medians of one run on whatever machine this is: read
the ratios, not the absolute seconds.

    python benchmarks/bench_minute_aggregates.py [--repeats 5] [--target-rows 450000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.synthetic import DAY, synthetic_day  # noqa: E402
from btc_anomaly_assets.aggregates.aggregates_sql import TRAILING_MINUTES, aggregate_minutes_duckdb  # noqa: E402
from btc_anomaly_assets.aggregates.spark_aggregates import aggregate_minutes_spark  # noqa: E402
from btc_anomaly_assets.aggregates.spark_session import (  # noqa: E402
    SparkSettings,
    build_spark_session,
    start_local_connect_server,
)
from btc_anomaly_assets.common.lake import raw_path, write_raw_window  # noqa: E402

SPARK_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
}
DRIVER_MEMORY = "2g"


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    """(first-call seconds, [seconds of the following `repeats` calls])."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return first, runs


def fmt(runs: list[float]) -> str:
    return f"{statistics.median(runs):7.3f} s (min {min(runs):.3f}, max {max(runs):.3f})"


FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime
    t0 = time.perf_counter()
    engine, lake, start, end, remote = sys.argv[1:6]
    start, end = datetime.fromisoformat(start), datetime.fromisoformat(end)
    if engine == "connect":
        from btc_anomaly_assets.aggregates.spark_session import SparkSettings, build_spark_session
        from btc_anomaly_assets.aggregates.spark_aggregates import aggregate_minutes_spark
        spark = build_spark_session(SparkSettings(remote=remote))
        frame = aggregate_minutes_spark(spark, lake, start, end)
    else:
        from btc_anomaly_assets.aggregates.aggregates_sql import aggregate_minutes_duckdb
        frame = aggregate_minutes_duckdb(lake, start, end)
    assert len(frame) == 1
    """
)


def fresh_process_seconds(engine: str, source: str, start: datetime, end: datetime, remote: str, repeats: int) -> list[float]:
    runs = []
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", FRESH_PROCESS_SCRIPT, engine, source, start.isoformat(), end.isoformat(), remote],
            check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        runs.append(time.perf_counter() - t0)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after the first (median reported)")
    parser.add_argument("--target-rows", type=int, default=450_000)
    args = parser.parse_args()
    n = args.repeats

    day = synthetic_day(args.target_rows)
    workdir = Path(tempfile.mkdtemp(prefix="bench-minute-aggregates-"))
    lake = raw_path(str(workdir / "lake"))
    write_raw_window(lake, day, DAY, DAY + timedelta(days=1))
    day_window = (DAY, DAY + timedelta(days=1))
    busiest = pd.Timestamp(day["minute"].value_counts().idxmax()).to_pydatetime()
    minute_window = (busiest, busiest + timedelta(minutes=1))
    minute_rows = int((day["minute"] == busiest).sum())
    hour_file = f"{lake}/date={busiest:%Y-%m-%d}/hour={busiest:%H}/data.parquet"
    day_glob = f"{lake}/date={DAY:%Y-%m-%d}/hour=*/data.parquet"
    print(f"one-minute partition: {busiest} with {minute_rows:,} tx (+{TRAILING_MINUTES} lookback minutes); lake {lake}")
    results: dict[str, float] = {}

    print("\n== DuckDB-SQL floor (same lake files) ==")
    _, runs = timed(lambda: aggregate_minutes_duckdb(hour_file, *minute_window), n)
    results["duckdb_minute"] = statistics.median(runs)
    print(f"one minute, parquet hour file         {fmt(runs)}")
    _, runs = timed(lambda: aggregate_minutes_duckdb(day_glob, *day_window), n)
    results["duckdb_day"] = statistics.median(runs)
    print(f"one day, parquet glob (24 files)      {fmt(runs)}")
    _, runs = timed(lambda: aggregate_minutes_duckdb(day, *day_window), n)
    print(f"one day, in-memory pandas frame       {fmt(runs)}")

    print("\n== Spark classic, local[2] ==")
    t0 = time.perf_counter()
    classic = build_spark_session(SparkSettings(master="local[2]", extra_conf={**SPARK_CONF, "spark.driver.memory": DRIVER_MEMORY}))
    build_s = time.perf_counter() - t0
    classic.sparkContext.setLogLevel("ERROR")
    t0 = time.perf_counter()
    classic.range(1).count()
    first_query_s = time.perf_counter() - t0
    print(f"session build (getOrCreate)           {build_s:7.3f} s")
    print(f"first trivial query                   {first_query_s:7.3f} s")
    first, runs = timed(lambda: aggregate_minutes_spark(classic, lake, *minute_window), n)
    results["classic_minute"] = statistics.median(runs)
    print(f"one minute: first call (cold)         {first:7.3f} s")
    print(f"one minute: warm                      {fmt(runs)}")
    first, runs = timed(lambda: aggregate_minutes_spark(classic, lake, *day_window), max(1, n // 2))
    results["classic_day"] = statistics.median(runs)
    print(f"one day: first call                   {first:7.3f} s")
    print(f"one day: warm                         {fmt(runs)}   -> {len(day) / statistics.median(runs):,.0f} tx/s")
    classic.stop()  # free the cores and heap before the Connect server starts

    print("\n== Spark Connect, local server local[2] ==")
    t0 = time.perf_counter()
    server = start_local_connect_server(master="local[2]", driver_memory=DRIVER_MEMORY, conf=SPARK_CONF)
    print(f"server launch -> first query OK       {time.perf_counter() - t0:7.3f} s")
    try:
        t0 = time.perf_counter()
        connect = build_spark_session(SparkSettings(remote=server.remote))
        print(f"client session (incl. endpoint check) {time.perf_counter() - t0:7.3f} s")
        first, runs = timed(lambda: aggregate_minutes_spark(connect, lake, *minute_window), n)
        results["connect_minute"] = statistics.median(runs)
        print(f"one minute: first call (cold server)  {first:7.3f} s")
        print(f"one minute: warm server               {fmt(runs)}")
        first, runs = timed(lambda: aggregate_minutes_spark(connect, lake, *day_window), max(1, n // 2))
        results["connect_day"] = statistics.median(runs)
        print(f"one day: first call                   {first:7.3f} s")
        print(f"one day: warm                         {fmt(runs)}   -> {len(day) / statistics.median(runs):,.0f} tx/s")
        connect.stop()

        print("\n== Fresh Python process per minute (what one per-minute run pays) ==")
        fresh = max(3, n // 2)
        runs = fresh_process_seconds("connect", lake, *minute_window, server.remote, fresh)
        results["fresh_connect_minute"] = statistics.median(runs)
        print(f"Connect client process, warm server   {fmt(runs)}")
        runs = fresh_process_seconds("duckdb", hour_file, *minute_window, "", fresh)
        results["fresh_duckdb_minute"] = statistics.median(runs)
        print(f"DuckDB process                        {fmt(runs)}")
    finally:
        server.stop()

    shutil.rmtree(workdir, ignore_errors=True)

    print("\n== Summary (medians) ==")
    print(f"per-minute Spark latency: Connect {results['connect_minute']:.2f} s, classic warm {results['classic_minute']:.2f} s, "
          f"fresh Connect process {results['fresh_connect_minute']:.2f} s (target <= 3 s)")
    print(f"  vs DuckDB: Connect x{results['connect_minute'] / results['duckdb_minute']:.0f}, "
          f"classic x{results['classic_minute'] / results['duckdb_minute']:.0f}, "
          f"fresh process x{results['fresh_connect_minute'] / results['fresh_duckdb_minute']:.1f}")
    print(f"day backfill ({len(day):,} tx, 1,440 minutes, one call): classic {results['classic_day']:.2f} s, "
          f"Connect {results['connect_day']:.2f} s, DuckDB {results['duckdb_day']:.2f} s (target <= 15 s)")
    print(f"  vs DuckDB: classic x{results['classic_day'] / results['duckdb_day']:.1f}, Connect x{results['connect_day'] / results['duckdb_day']:.1f}")


if __name__ == "__main__":
    main()
