"""A mainnet-scale day built from the real blocks, shared by the benchmarks.

The 31 real blocks of 13-14 Aug 2025 are replayed in order with fresh hashes and heights, their
block times spread evenly over one UTC day, until about ``target_rows`` transactions.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from btc_anomaly_assets.common.schema import BLOCKCHAIR_FIELDS
from btc_anomaly_testing.real_data import real_raw

DAY = datetime(2025, 8, 20)


def synthetic_day(target_rows: int) -> pd.DataFrame:
    """The real blocks replayed over one day (fresh hashes/heights, evenly spaced block times)."""
    real = real_raw()
    blocks = [rows for _, rows in real.groupby("block_id", sort=True)]
    sizes = [len(b) for b in blocks]
    n_blocks, total = 0, 0
    while total < target_rows:
        total += sizes[n_blocks % len(blocks)]
        n_blocks += 1
    spacing = timedelta(days=1) / n_blocks
    parts = []
    for i in range(n_blocks):
        rows = blocks[i % len(blocks)].copy()
        block_time = DAY + spacing * i + spacing / 2
        rows["block_id"] = 920_000 + i
        rows["hash"] = [hashlib.sha256(f"{h}|{i}".encode()).hexdigest() for h in rows["hash"]]
        rows["time"] = pd.Timestamp(block_time.replace(microsecond=0)).as_unit("us")
        rows["minute"] = rows["time"].dt.floor("min")
        parts.append(rows)
    day = pd.concat(parts, ignore_index=True)
    day = day.astype(real.dtypes.to_dict())
    print(f"synthetic day {DAY:%Y-%m-%d}: {len(day):,} tx in {n_blocks} blocks, one every {spacing.total_seconds() / 60:.1f} min, "
          f"{day['minute'].nunique()} non-empty minutes")
    return day


def write_dump(day: pd.DataFrame, folder: Path) -> Path:
    """The day as a Blockchair daily dump file (the `blockchair-dump` source reads it like a real one)."""
    out = day[[c.name for c in BLOCKCHAIR_FIELDS]].copy()
    out["time"] = out["time"].dt.strftime("%Y-%m-%d %H:%M:%S")
    for flag in ("is_coinbase", "has_witness"):
        out[flag] = out[flag].astype(int)
    path = folder / f"blockchair_bitcoin_transactions_{DAY:%Y%m%d}.tsv.gz"
    out.to_csv(path, sep="\t", index=False, compression="gzip")
    return path
