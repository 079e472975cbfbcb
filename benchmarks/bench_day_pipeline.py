"""Benchmark: one mainnet-scale day through the whole graph in one command, LLM calls excluded.

Builds ~450k transactions over 1,440 minutes from the real blocks (benchmarks/synthetic.py),
writes them as a Blockchair daily dump, then runs ``btc-anomaly backfill`` over the day (one
single run, persistent SQLite instance, classic local Spark, rule-based explainer) and prints:
- wall time and peak memory of the whole process tree (Python + Spark JVM, sampled from /proc);
- the per-asset breakdown (step start -> success from the run's event log);
- the DuckDB-SQL floor: the same per-minute aggregates computed straight from the lake files.

    python benchmarks/bench_day_pipeline.py [--target-rows 450000] [--keep DIR]

Goals (issue 7): <= 60 s wall, <= 1.5 GB peak on 2 cores. One run on a shared machine: read the
ratios next to the absolute seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.synthetic import DAY, synthetic_day, write_dump  # noqa: E402


def tree_rss_bytes(pid: int) -> dict[str, int]:
    """Resident memory of a process and all its descendants, from /proc, by program (python, java)."""
    totals: dict[str, int] = {}
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/comm") as comm:
                program = "java" if "java" in comm.read() else "python"
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        totals[program] = totals.get(program, 0) + int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    stack.extend(int(c) for c in children.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return totals


def run_with_peak(cmd: list[str], env: dict) -> tuple[float, int, dict[str, int], str]:
    """Wall time, peak tree RSS, each program's own peak, and the output of ``cmd``."""
    began = time.monotonic()
    process = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, peaks = 0, {}
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            totals = tree_rss_bytes(process.pid)
            peak = max(peak, sum(totals.values()))
            for program, rss in totals.items():
                peaks[program] = max(peaks.get(program, 0), rss)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"backfill failed ({process.returncode}):\n{output[-4000:]}")
    return time.monotonic() - began, peak, peaks, output


def step_breakdown(dagster_home: Path) -> tuple[list[tuple[str, float]], int]:
    """Seconds per step of the pipeline run, and how many events the run wrote to the event log."""
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    import dagster as dg

    instance = dg.DagsterInstance.get()
    run = instance.get_run_records(filters=dg.RunsFilter(job_name="btc_pipeline"), limit=1)[0].dagster_run
    started: dict[str, float] = {}
    steps = []
    records = instance.all_logs(run.run_id)
    for record in records:
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_START":
            started[event.step_key] = record.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            steps.append((event.step_key, record.timestamp - started[event.step_key]))
    return steps, len(records)


def duckdb_floor(lake: Path) -> tuple[float, int]:
    from btc_anomaly_assets.aggregates.aggregates_sql import TRAILING_MINUTES, aggregate_minutes_duckdb
    from btc_anomaly_assets.common.lake import raw_path

    glob = f"{raw_path(str(lake))}/*/*/*.parquet"
    began = time.monotonic()
    frame = aggregate_minutes_duckdb(glob, DAY, DAY + timedelta(days=1))
    elapsed = time.monotonic() - began
    assert TRAILING_MINUTES == 4
    return elapsed, int(frame["tx_count"].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-rows", type=int, default=450_000)
    parser.add_argument("--keep", help="keep the data dir here instead of a temp dir")
    args = parser.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="btc-day-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    dumps = work / "dumps"
    dumps.mkdir(exist_ok=True)
    day = synthetic_day(args.target_rows)
    write_dump(day, dumps)
    env = {
        **os.environ,
        "BTC_SOURCE": "blockchair-dump",
        "BTC_DUMP_DIR": str(dumps),
        "BTC_DATA_DIR": str(work / "data"),
        "BTC_PARTITIONS_START": f"{DAY:%Y-%m-%d}-00:00",
        "BTC_PARTITIONS_END": f"{DAY + timedelta(days=1):%Y-%m-%d}-00:00",
        "SPARK_MASTER": "local[2]",
    }
    env.pop("DAGSTER_HOME", None)
    env.pop("ANTHROPIC_API_KEY", None)
    start_key, end_key = f"{DAY:%Y-%m-%d}-00:00", f"{DAY + timedelta(days=1):%Y-%m-%d}-00:00"
    wall, peak, peaks, output = run_with_peak([sys.executable, "-m", "btc_anomaly_assets.cli.main", "backfill", start_key, end_key], env)
    steps, events = step_breakdown(work / "data" / "dagster_home")
    floor, floor_rows = duckdb_floor(work / "data" / "lake")

    spark_step = dict(steps).get("btc__minute_aggregates", float("nan"))
    print(f"\nmachine: {os.cpu_count()} cores; day {DAY:%Y-%m-%d}: {len(day):,} transactions over 1,440 minutes")
    print(f"whole graph, one command (btc-anomaly backfill, one single run): {wall:.1f} s wall, peak {peak / 2**30:.2f} GB "
          f"(process tree: Python + Spark JVM)   goals: <= 60 s, <= 1.5 GB")
    print("peak by program (each at its own peak): " + ", ".join(f"{p} {b / 2**30:.2f} GB" for p, b in sorted(peaks.items())))
    print("per asset (step start -> success):")
    for step, seconds in steps:
        print(f"  {step:<32} {seconds:7.1f} s")
    print(f"  {'(outside steps: start-up, alerts, summary)':<32} {wall - sum(s for _, s in steps):7.1f} s")
    print(f"event-log records written by the run: {events:,} (Dagster records every partition of every asset)")
    print(f"DuckDB-SQL floor for the same per-minute aggregates: {floor:.2f} s ({floor_rows:,} tx)")
    print(f"ratios: minute_aggregates step / DuckDB floor = {spark_step / floor:.1f}x; whole graph / DuckDB floor = {wall / floor:.0f}x")
    print("\n--- command output (tail) ---\n" + "\n".join(output.strip().splitlines()[-14:]))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
