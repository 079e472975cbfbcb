"""Benchmark: one mainnet-scale day through the whole graph in one command, LLM calls excluded.

Builds ~450k transactions over 1,440 minutes from the real blocks (benchmarks/synthetic.py),
writes them as a Blockchair daily dump, then runs ``btc-anomaly backfill`` over the day (one
single run, persistent SQLite instance, classic local Spark, rule-based explainer) and prints:
- wall time, CPU time and peak memory of the whole process tree (Python + Spark JVM, from /proc);
- the per-asset breakdown (step start -> success from the run's event log);
- what happens outside the steps, piece by piece: process start to run start (imports,
  definitions, instance, run creation with its planned-materialization records), gaps inside the
  run between steps, run end to process end (alert sensor tick and alert runs, summary, exit);
- the run's event-log records by type (where the bookkeeping comes from);
- the DuckDB-SQL floor: the same per-minute aggregates computed straight from the lake files.

    python benchmarks/bench_day_pipeline.py [--target-rows 450000] [--repeat 3] [--compare REV] [--keep DIR]

``--compare REV`` also runs the tree of git revision ``REV`` (extracted with ``git archive`` into a
temp folder, run with its own code on ``PYTHONPATH``) on the same dump, alternating with this
tree (new, old, new, old, ...), so both are measured in one run on a shared machine; it prints
the medians of each and their ratio. Goals (issue 17): <= 30 s wall, <= 1.2 GB peak on 2 cores.
``--postgres`` adds this tree on Dagster-on-PostgreSQL (a server the script starts; goal <= 40 s).
Local Spark drivers start from the class archive when one exists (``btc-anomaly
spark-class-archive``; ``SPARK_CLASS_ARCHIVE=off`` measures without); the first line says which.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.synthetic import DAY, synthetic_day, write_dump

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
START_KEY, END_KEY = f"{DAY:%Y-%m-%d}-00:00", f"{DAY + timedelta(days=1):%Y-%m-%d}-00:00"


def tree_sample(pid: int) -> dict[int, tuple[str, int, float]]:
    """``{pid: (program, rss bytes, cpu seconds)}`` for a process and all its descendants, from /proc."""
    found: dict[int, tuple[str, int, float]] = {}
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/comm") as comm:
                program = "java" if "java" in comm.read() else "python"
            rss = 0
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
            with open(f"/proc/{current}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            found[current] = (program, rss, (int(fields[11]) + int(fields[12])) / CLOCK_TICK)
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    stack.extend(int(c) for c in children.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


@dataclass
class Measurement:
    label: str
    wall: float = 0.0
    cpu: float = 0.0
    peak: int = 0
    peaks: dict[str, int] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)
    step_peaks: dict[str, tuple[int, int]] = field(default_factory=dict)  # step -> (python, java) RSS at the tree's peak in it
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (epoch, python RSS, java RSS)
    outside: dict[str, float] = field(default_factory=dict)
    events: Counter = field(default_factory=Counter)
    other_run_events: int = 0
    floor: float = 0.0
    output: str = ""


def run_with_peak(cmd: list[str], env: dict, cwd: Path, m: Measurement) -> float:
    """Run ``cmd``; fills wall, CPU (last seen per process), peak tree RSS; returns the launch epoch time."""
    launched = time.time()
    began = time.monotonic()
    process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cpu_by_pid: dict[int, float] = {}
    done = threading.Event()

    def sample():
        while not done.is_set():
            found = tree_sample(process.pid)
            m.peak = max(m.peak, sum(rss for _, rss, _ in found.values()))
            totals: dict[str, int] = {}
            for pid, (program, rss, cpu) in found.items():
                totals[program] = totals.get(program, 0) + rss
                cpu_by_pid[pid] = cpu
            for program, rss in totals.items():
                m.peaks[program] = max(m.peaks.get(program, 0), rss)
            m.samples.append((time.time(), totals.get("python", 0), totals.get("java", 0)))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    m.output, _ = process.communicate()
    m.wall = time.monotonic() - began
    done.set()
    sampler.join()
    m.cpu = sum(cpu_by_pid.values())
    if process.returncode != 0:
        raise SystemExit(f"{m.label}: backfill failed ({process.returncode}):\n{m.output[-4000:]}")
    return launched


def read_event_log(dagster_home: Path, launched: float, m: Measurement, pg_url: str | None = None) -> None:
    """Per-step seconds, the pieces outside the steps, and the event records by type."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    if pg_url:  # the dagster.yaml names the database through this variable
        os.environ["BTC_DAGSTER_PG_URL"] = pg_url
    else:
        os.environ.pop("BTC_DAGSTER_PG_URL", None)
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        run = instance.get_run_records(filters=dg.RunsFilter(job_name="btc_pipeline"), limit=1)[0].dagster_run
        started: dict[str, float] = {}
        marks: dict[str, float] = {}
        last_step_end = None
        gaps = 0.0
        run_start, run_success, run_failure = (dg.DagsterEventType.RUN_START.value, dg.DagsterEventType.RUN_SUCCESS.value,
                                               dg.DagsterEventType.RUN_FAILURE.value)
        records = instance.all_logs(run.run_id)
        first_record = min(r.timestamp for r in records)  # the first planned-materialization record
        for record in records:
            event = record.dagster_event
            if event is None:
                m.events["(log message)"] += 1
                continue
            kind = event.event_type_value
            m.events[kind] += 1
            if kind in (run_start, run_success, run_failure):
                marks.setdefault(kind, record.timestamp)
            elif kind == "STEP_START":
                started[event.step_key] = record.timestamp
                gaps += record.timestamp - (last_step_end if last_step_end is not None else marks[run_start])
            elif kind == "STEP_SUCCESS":
                m.steps[event.step_key] = record.timestamp - started[event.step_key]
                inside = [(py, java) for at, py, java in m.samples if started[event.step_key] <= at <= record.timestamp]
                m.step_peaks[event.step_key] = max(inside, key=sum, default=(0, 0))
                last_step_end = record.timestamp
        run_end = marks.get(run_success, marks.get(run_failure))
        first_step = min(started.values())
        for phase, (begin, end) in {"(before the first step)": (0, first_step), "(after the run)": (run_end, float("inf"))}.items():
            m.step_peaks[phase] = max([(py, java) for at, py, java in m.samples if begin <= at <= end], key=sum, default=(0, 0))
        alert_seconds = 0.0
        for other in instance.get_run_records():
            if other.dagster_run.job_name == "send_anomaly_alert":
                other_records = instance.all_logs(other.dagster_run.run_id)
                m.other_run_events += len(other_records)
                alert_seconds += max(r.timestamp for r in other_records) - min(r.timestamp for r in other_records)
        m.outside = {
            "process start -> run creation (imports, definitions, instance)": first_record - launched,
            "run creation (planned materialization + check records)": marks[run_start] - first_record,
            "inside the run, between steps": gaps + (run_end - last_step_end),
            "alert runs (send_anomaly_alert, start -> end)": alert_seconds,
            "rest after the run (alert sensor tick, summary, exit)": launched + m.wall - run_end - alert_seconds,
        }
    finally:
        instance.dispose()


def duckdb_floor(lake: Path) -> tuple[float, int]:
    from btc_anomaly_assets.aggregates.aggregates_sql import TRAILING_MINUTES, aggregate_minutes_duckdb
    from btc_anomaly_assets.common.lake import raw_path

    glob = f"{raw_path(str(lake))}/*/*/*.parquet"
    began = time.monotonic()
    frame = aggregate_minutes_duckdb(glob, DAY, DAY + timedelta(days=1))
    elapsed = time.monotonic() - began
    assert TRAILING_MINUTES == 4
    return elapsed, int(frame["tx_count"].sum())


def one_run(label: str, tree: Path, dumps: Path, work: Path, pg_url: str | None = None) -> Measurement:
    m = Measurement(label)
    data = work / "data"
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "BTC_SOURCE": "blockchair-dump",
        "BTC_DUMP_DIR": str(dumps),
        "BTC_DATA_DIR": str(data),
        "BTC_PARTITIONS_START": START_KEY,
        "BTC_PARTITIONS_END": END_KEY,
        "SPARK_MASTER": "local[2]",
        # The graph's own cost, in one process (what the day's figures have always measured);
        # BTC_RUN_MODE=backfill adds the daemon's fixed ~1 min and `dagster dev` to it.
        "BTC_RUN_MODE": os.environ.get("BTC_RUN_MODE", "in-process"),
    }
    for name in ("DAGSTER_HOME", "ANTHROPIC_API_KEY", "SPARK_REMOTE", "BTC_DAGSTER_PG_URL"):
        env.pop(name, None)
    if pg_url:
        env["BTC_DAGSTER_PG_URL"] = pg_url
    cmd = [sys.executable, "-m", "btc_anomaly_assets.cli.main", "backfill", START_KEY, END_KEY]
    launched = run_with_peak(cmd, env, tree, m)
    read_event_log(data / "dagster_home", launched, m, pg_url)
    m.floor, floor_rows = duckdb_floor(data / "lake")
    print(f"  {label}: {m.wall:.1f} s wall, {m.cpu:.1f} s CPU, peak {m.peak / 2**30:.2f} GB, "
          f"minute_aggregates {m.steps.get('btc__minute_aggregates', float('nan')):.1f} s, floor {m.floor:.2f} s "
          f"({floor_rows:,} tx)", flush=True)
    return m


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def report(runs: list[Measurement], n_tx: int) -> dict[str, float]:
    """Prints the medians over ``runs`` (one configuration); returns the headline figures."""
    last = runs[-1]
    wall, cpu, peak = median(m.wall for m in runs), median(m.cpu for m in runs), median(m.peak for m in runs)
    floor = median(m.floor for m in runs)
    spark_step = median(m.steps.get("btc__minute_aggregates", float("nan")) for m in runs)
    print(f"\n== {last.label}: medians of {len(runs)} run(s); day {DAY:%Y-%m-%d}: {n_tx:,} transactions over 1,440 minutes, "
          f"{os.cpu_count()} cores ==")
    print(f"whole graph, one command (btc-anomaly backfill, one single run): {wall:.1f} s wall, {cpu:.1f} s CPU, "
          f"peak {peak / 2**30:.2f} GB (process tree: Python + Spark JVM)   goals: <= 30 s, <= 1.2 GB")
    programs = sorted({p for m in runs for p in m.peaks})
    print("peak by program (each at its own peak): " + ", ".join(
        f"{p} {median(m.peaks.get(p, 0) for m in runs) / 2**30:.2f} GB" for p in programs))
    print("per asset (step start -> success; the tree's peak RSS while it ran, python + java):")
    for step in ["(before the first step)", *last.steps, "(after the run)"]:
        py, java = (median(m.step_peaks.get(step, (0, 0))[i] for m in runs) / 2**30 for i in (0, 1))
        seconds = f"{median(m.steps[step] for m in runs):7.1f} s" if step in last.steps else ""
        print(f"  {step:<66} {seconds:>9}   {py + java:.2f} GB ({py:.2f} + {java:.2f})")
    print("outside the steps:")
    for piece in last.outside:
        print(f"  {piece:<66} {median(m.outside[piece] for m in runs):7.1f} s")
    total_events = sum(last.events.values())
    top = ", ".join(f"{kind} {n:,}" for kind, n in last.events.most_common(6))
    print(f"event-log records of the pipeline run: {total_events:,} ({top}); alert runs: {last.other_run_events:,}")
    print(f"DuckDB-SQL floor for the same per-minute aggregates: {floor:.2f} s")
    print(f"ratios: minute_aggregates step / DuckDB floor = {spark_step / floor:.1f}x; whole graph / DuckDB floor = {wall / floor:.0f}x")
    return {"wall": wall, "cpu": cpu, "peak": peak, "minute_aggregates": spark_step}


def extract_revision(rev: str, into: Path) -> Path:
    """The files of git revision ``rev`` of this repository, unpacked into ``into`` (no worktree, no checkout)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-rows", type=int, default=450_000)
    parser.add_argument("--repeat", type=int, default=None, help="runs per configuration (default 1, or 3 with --compare)")
    parser.add_argument("--compare", metavar="REV", help="also run git revision REV's tree, alternating, and print the ratio")
    parser.add_argument("--keep", help="keep the data dirs here instead of a temp dir")
    parser.add_argument("--postgres", action="store_true",
                        help="also run this tree with Dagster on a throwaway PostgreSQL server, alternating with SQLite")
    args = parser.parse_args()
    repeat = args.repeat or (3 if args.compare else 1)

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="btc-day-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    dumps = work / "dumps"
    dumps.mkdir(exist_ok=True)
    from btc_anomaly_assets.aggregates.spark_class_archive import java_options

    # Whether this tree's local Spark drivers start from a class archive (made once by
    # `btc-anomaly spark-class-archive`); a baseline tree without the feature ignores it.
    print("Spark class archive: " + (java_options().split("=", 1)[1] if java_options() else
                                     "none (run `btc-anomaly spark-class-archive` once to use one)"))
    day = synthetic_day(args.target_rows)
    write_dump(day, dumps)
    configs = [("this tree", REPO, None)]
    server = None
    if args.postgres:
        from btc_anomaly_testing.postgres_server import PostgresServer

        server = PostgresServer().start()
        configs.append(("this-tree-on-postgres", REPO, "postgres"))
    if args.compare:  # this tree first: a failure shows before the baseline's minutes are spent
        configs.append((f"baseline {args.compare}", extract_revision(args.compare, work / "baseline-tree"), None))
    results: dict[str, list[Measurement]] = {label: [] for label, _, _ in configs}
    for i in range(repeat):
        for label, tree, storage in configs:
            run_dir = work / f"{label.split()[0]}-{i}"
            shutil.rmtree(run_dir, ignore_errors=True)
            pg_url = server.new_database("day") if storage == "postgres" else None
            results[label].append(one_run(label, tree, dumps, run_dir, pg_url))
            with open(work / "measurements.jsonl", "a") as out:  # raw figures, one line per run
                out.write(json.dumps({k: dict(v) if isinstance(v, Counter) else v for k, v in vars(results[label][-1]).items() if k not in ("output", "samples")}) + "\n")
            if not args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
    headline = {label: report(runs, len(day)) for label, runs in results.items()}
    if args.compare:
        new, old = headline[configs[0][0]], headline[configs[-1][0]]
        print(f"\nthis tree / baseline {args.compare} (medians, same machine, alternating runs): "
              + ", ".join(f"{k} {new[k] / old[k]:.2f}x" for k in ("wall", "cpu", "peak", "minute_aggregates")))
    print("\n--- command output of this tree's last run (tail) ---\n" + "\n".join(results[configs[0][0]][-1].output.strip().splitlines()[-8:]))
    if server is not None:
        server.stop()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
