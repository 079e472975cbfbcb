"""Benchmark: ``btc-anomaly demo`` wall time on the SQLite instance and on Dagster-on-PostgreSQL.

Each run is a fresh subprocess with its own data dir (``BTC_SOURCE=sample``, ``SPARK_MASTER=local[1]``);
the Postgres runs use a throwaway PostgreSQL server (btc_anomaly_testing.postgres_server), one
new database per run. Runs alternate between the two storages so machine noise hits both alike.

    python benchmarks/bench_demo_storage.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from btc_anomaly_testing.postgres_server import PostgresServer


def _demo(pg_url: str | None) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BTC_", "SLACK_", "SPARK_", "ANTHROPIC_", "DAGSTER_"))}
        env.update(BTC_DATA_DIR=tmp, BTC_SOURCE="sample", SPARK_MASTER="local[1]", PYTHONPATH=str(REPO),
                   BTC_RUN_MODE=os.environ.get("BTC_RUN_MODE", "in-process"))
        if pg_url:
            env["BTC_DAGSTER_PG_URL"] = pg_url
        began = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "btc_anomaly_assets.cli.main", "demo"], env=env, cwd=REPO,
                              capture_output=True, text=True, check=False)
        elapsed = time.monotonic() - began
        if done.returncode != 0:
            raise SystemExit(f"demo failed ({'postgres' if pg_url else 'sqlite'}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    with PostgresServer() as pg:
        for _ in range(args.repeat):
            times["sqlite"].append(_demo(None))
            times["postgres"].append(_demo(pg.new_database("demo")))
            print(f"  sqlite {times['sqlite'][-1]:.1f} s, postgres {times['postgres'][-1]:.1f} s", flush=True)
    base = statistics.median(times["sqlite"])
    for name, values in times.items():
        print(f"{name:9s} median {statistics.median(values):6.1f} s  ({statistics.median(values) / base:.2f}x sqlite)  "
              f"runs: {', '.join(f'{v:.1f}' for v in values)}")


if __name__ == "__main__":
    main()
