"""The priors table of the real blocks in ``fixtures/`` (what ``benchmarks/derive_priors.py`` writes).

Time basis ``block`` uses the Blockchair excerpts as they are; ``first_seen`` uses
``real_data.synthetic_first_seen`` (each block's transactions spread evenly over the interval since
the previous block), because no real first-seen feed of those days is stored.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import pandas as pd

from btc_anomaly_assets.common.schema import TIME_BASIS_BLOCK, TIME_BASIS_FIRST_SEEN
from btc_anomaly_assets.detection.derive_priors import BasisInput, derive_priors
from btc_anomaly_assets.detection.priors import Priors, priors_from_dict
from btc_anomaly_testing import real_data
from btc_anomaly_testing.fixture_paths import DUMP_13, DUMP_14

VERSION = "v1-2025-08-13_14"
DAYS = {13: (DUMP_13, real_data.DAY13_WINDOW), 14: (DUMP_14, real_data.DAY14_WINDOW)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
        fs_start = first_seen["minute"].min().to_pydatetime()
        fs_end = (first_seen["minute"].max() + pd.Timedelta(minutes=1)).to_pydatetime()
        fs_parts.append(first_seen)
        fs_aggs.append(real_data.minute_aggregates(first_seen, fs_start, fs_end))
    block_raw = pd.concat(block_parts, ignore_index=True)
    inputs = {
        TIME_BASIS_BLOCK: BasisInput(block_raw, pd.concat(block_aggs, ignore_index=True)),
        TIME_BASIS_FIRST_SEEN: BasisInput(pd.concat(fs_parts, ignore_index=True), pd.concat(fs_aggs, ignore_index=True)),
    }
    source = {
        "derived_by": "benchmarks/derive_priors.py",
        "files": {DAYS[d][0].name: _sha256(DAYS[d][0]) for d in days},
        "blocks": sorted(int(b) for b in block_raw["block_id"].unique()),
        "first_seen": "synthetic: each block's transactions spread evenly since the previous block "
                      "(btc_anomaly_testing.real_data.synthetic_first_seen)",
    }
    return derive_priors(inputs, version=version, source=source)


@lru_cache(maxsize=4)
def held_out_priors(day: int) -> Priors:
    """Priors derived from the *other* day only, for evaluating on ``day`` without its own blocks."""
    other = tuple(d for d in DAYS if d != day)
    return priors_from_dict(build_table(other, version=f"held-out-for-{day}"), where=f"held-out priors (days {other})")
