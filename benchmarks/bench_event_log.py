"""Benchmark: what Dagster's bookkeeping of one single-run backfill costs on each instance storage.

Materializes trivial minute-partitioned assets (no work in the step, so the time is the event
log's) over N minutes as ONE run, on each ``dagster.yaml`` the CLI can write:

- ``sqlite``: the stock SQLite storage (``storage: sqlite``), with Dagster's event batching on;
- ``sqlite-batched``: the same plus the project's batched SQLite event log
  (``btc_anomaly_assets.instance.sqlite_batched``), if this Dagster version still has it;
- ``postgres``: the CLI's PostgreSQL yaml (dagster-postgres, pooled event log) on a throwaway
  PostgreSQL server (btc_anomaly_testing);
- ``postgres-nullpool``: the same with dagster-postgres' stock event log (a connection per event).

    python benchmarks/bench_event_log.py [--minutes 1440] [--assets 3] [--repeat 3] [--only sqlite-batched,postgres]

Prints each storage's median wall time, events recorded and ms per partition-asset.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dagster as dg

from btc_anomaly_assets.instance import dagster_yaml
from btc_anomaly_testing.postgres_server import PostgresServer


def _assets(minutes: int, count: int) -> list:
    partitions = dg.TimeWindowPartitionsDefinition(cron_schedule="* * * * *", fmt="%Y-%m-%d-%H:%M",
                                                   start=datetime(2025, 8, 13), end=datetime(2025, 8, 13) + timedelta(minutes=minutes))
    made = []
    for i in range(count):
        deps = [made[-1]] if made else []

        @dg.asset(name=f"bench_{i}", partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run(), deps=deps)
        def _step(context):
            return dg.MaterializeResult(metadata={"minutes": len(context.partition_keys)})

        made.append(_step)
    return made, partitions


def _one_run(yaml_text: str, assets: list, partitions, env: dict[str, str]) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(prefix="bench-event-log-") as home:
        Path(home, "dagster.yaml").write_text(yaml_text.replace("{home}", home))
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with dg.DagsterInstance.from_config(home) as instance:
                keys = partitions.get_partition_keys()
                began = time.perf_counter()
                result = dg.materialize(assets, instance=instance, tags={"dagster/asset_partition_range_start": keys[0],
                                                                         "dagster/asset_partition_range_end": keys[-1]})
                elapsed = time.perf_counter() - began
                assert result.success
                events = len(instance.all_logs(result.run_id))
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return elapsed, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=1440)
    parser.add_argument("--assets", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated storages to time (default: all)")
    args = parser.parse_args()
    assets, partitions = _assets(args.minutes, args.assets)
    batching = {"DAGSTER_EVENT_BATCH_SIZE": dagster_yaml.EVENT_BATCH_SIZE}
    with PostgresServer() as pg:
        storages = {"sqlite": (dagster_yaml.dagster_yaml("{home}", sqlite_store="stock"), batching)}
        if dagster_yaml.batched_sqlite_available():
            storages["sqlite-batched"] = (dagster_yaml.dagster_yaml("{home}", sqlite_store="batched"), batching)
        pg_text = dagster_yaml.dagster_yaml("{home}", postgres=True)
        storages["postgres"] = (pg_text, batching)
        storages["postgres-nullpool"] = (pg_text.replace("btc_anomaly_assets.instance.postgres_storage", "dagster_postgres")
                                         .replace("PooledPostgresEventLogStorage", "PostgresEventLogStorage"), batching)
        if args.only:
            storages = {k: v for k, v in storages.items() if k in args.only.split(",")}
        results: dict[str, list[float]] = {name: [] for name in storages}
        events = {}
        for _ in range(args.repeat):  # interleaved, so machine noise hits every storage alike
            for name, (text, env) in storages.items():
                run_env = dict(env)
                if name.startswith("postgres"):
                    run_env["BTC_DAGSTER_PG_URL"] = pg.new_database("bench")
                seconds, events[name] = _one_run(text, assets, partitions, run_env)
                print(f"  ({name}: {seconds:.2f} s)", flush=True)
                results[name].append(seconds)
    cells = args.minutes * args.assets
    print(f"{args.minutes} minutes x {args.assets} assets as one run ({cells:,} partition-assets), median of {args.repeat}:")
    base = statistics.median(next(iter(results.values())))
    for name, times in results.items():
        median = statistics.median(times)
        print(f"  {name:15s} {median:7.2f} s  {events[name]:6,} events  {1000 * median / cells:6.2f} ms/partition-asset"
              f"  {median / base:5.2f}x the first   (runs: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
