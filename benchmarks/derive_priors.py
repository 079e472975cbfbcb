"""Re-derive the shipped priors table from the real blocks in the repository.

    PYTHONPATH=$PWD python -m benchmarks.derive_priors            # rewrite the shipped file
    PYTHONPATH=$PWD python -m benchmarks.derive_priors --check    # exit 1 if it would change
    PYTHONPATH=$PWD python -m benchmarks.derive_priors --days 13 --out /tmp/p13.json   # one day only

Inputs (``btc_anomaly_testing.fixture_paths``): the Blockchair dump excerpts of 13 and 14 Aug 2025,
31 complete blocks. Time basis ``block`` uses them as they are; ``first_seen`` uses the synthetic
arrival series of ``real_data.synthetic_first_seen`` (each block's transactions spread evenly over
the interval since the previous block), because no real first-seen feed of those days is stored.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd

from btc_anomaly_assets.common.schema import TIME_BASIS_BLOCK, TIME_BASIS_FIRST_SEEN
from btc_anomaly_assets.detection.derive_priors import BasisInput, derive_priors, to_json
from btc_anomaly_assets.detection.priors import BUILTIN_PRIORS_FILE
from btc_anomaly_testing import real_data
from btc_anomaly_testing.fixture_paths import DUMP_13, DUMP_14

VERSION = "v1-2025-08-13_14"
DAYS = {13: (DUMP_13, real_data.DAY13_WINDOW), 14: (DUMP_14, real_data.DAY14_WINDOW)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _first_seen_window(first_seen: pd.DataFrame) -> tuple:
    lo, hi = first_seen["minute"].min(), first_seen["minute"].max()
    return lo.to_pydatetime(), (hi + pd.Timedelta(minutes=1)).to_pydatetime()


def build_table(days=(13, 14), version: str = VERSION) -> dict:
    """The priors table of the real blocks of ``days`` (13 and/or 14 Aug 2025)."""
    raw = real_data.real_raw()
    block_parts, block_aggs, fs_parts, fs_aggs = [], [], [], []
    for day in days:
        _, (start, end) = DAYS[day]
        part = real_data.raw_in(raw, start, end)
        block_parts.append(part)
        block_aggs.append(real_data.minute_aggregates(part, start, end))
        first_seen = real_data.synthetic_first_seen(part)
        fs_start, fs_end = _first_seen_window(first_seen)
        fs_parts.append(first_seen)
        fs_aggs.append(real_data.minute_aggregates(first_seen, fs_start - timedelta(0), fs_end))
    block_raw = pd.concat(block_parts, ignore_index=True)
    inputs = {
        TIME_BASIS_BLOCK: BasisInput(block_raw, pd.concat(block_aggs, ignore_index=True)),
        TIME_BASIS_FIRST_SEEN: BasisInput(pd.concat(fs_parts, ignore_index=True), pd.concat(fs_aggs, ignore_index=True)),
    }
    blocks = sorted(int(b) for b in block_raw["block_id"].unique())
    source = {
        "derived_by": "benchmarks/derive_priors.py",
        "files": {DAYS[d][0].name: _sha256(DAYS[d][0]) for d in days},
        "blocks": blocks,
        "first_seen": "synthetic: each block's transactions spread evenly since the previous block "
                      "(btc_anomaly_testing.real_data.synthetic_first_seen)",
    }
    return derive_priors(inputs, version=version, source=source)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, nargs="+", default=[13, 14], choices=sorted(DAYS))
    parser.add_argument("--out", type=Path, default=BUILTIN_PRIORS_FILE)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    text = to_json(build_table(tuple(args.days)))
    if args.check:
        same = args.out.exists() and args.out.read_text() == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from a fresh derivation'}")
        return 0 if same else 1
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text):,} bytes, days {args.days})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
