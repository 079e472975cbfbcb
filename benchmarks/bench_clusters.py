"""Benchmark: typed-cluster detection over one mainnet-scale day, block time and first-seen time.

Block time puts each block's transactions in one minute (~169 busy minutes a day); first-seen time
spreads them over every minute (1,440 busy minutes), which is what the live source gives. Prints the
median of ``--repeat`` runs of ``detect_coordinated_clusters`` for each.

    python benchmarks/bench_clusters.py [--target-rows 450000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.synthetic import DAY, synthetic_day  # noqa: E402
from btc_anomaly_assets.common.schema import TIME_BASIS_FIRST_SEEN  # noqa: E402
from btc_anomaly_assets.detection.clusters import detect_coordinated_clusters  # noqa: E402


def first_seen_version(day: pd.DataFrame, seed: int = 3) -> pd.DataFrame:
    """The same transactions with their minute moved 0-8 minutes later, so every minute of the day is busy."""
    rng = np.random.default_rng(seed)
    spread = day.assign(minute=day["minute"] + pd.to_timedelta(rng.integers(0, 9, len(day)), unit="min"),
                        time_basis=TIME_BASIS_FIRST_SEEN)
    return spread[spread["minute"] < DAY + timedelta(days=1)].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-rows", type=int, default=450_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    day = synthetic_day(args.target_rows)
    for label, frame in (("block time", day), ("first-seen time", first_seen_version(day))):
        seconds, clusters = [], 0
        for _ in range(args.repeat):
            began = time.perf_counter()
            clusters = len(detect_coordinated_clusters(frame, DAY, DAY + timedelta(days=1)))
            seconds.append(time.perf_counter() - began)
        print(f"{label:16s}: {len(frame):,} tx in {frame['minute'].nunique():,} busy minutes -> {clusters:,} clusters; "
              f"median {statistics.median(seconds):.2f} s over {args.repeat} runs (min {min(seconds):.2f}, max {max(seconds):.2f})")


if __name__ == "__main__":
    main()
