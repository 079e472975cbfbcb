"""Test helpers for the real Blockchair excerpts (13-14 Aug 2025) kept in ``fixtures/``.

Loads the dumps once per test process as RAW frames, builds minute aggregates with the DuckDB
reference aggregation, derives a synthetic first-seen series, and injects synthetic events.
Every injected row is a copy of a real row with a new, recognisable hash, so tests can tell
injected members from real ones and nothing is invented beyond what the event needs.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from functools import lru_cache

import numpy as np
import pandas as pd

from btc_anomaly_assets.aggregates.aggregates_sql import TRAILING_MINUTES, aggregate_minutes_duckdb
from btc_anomaly_assets.common.schema import TIME_BASIS_BLOCK, TIME_BASIS_FIRST_SEEN
from btc_anomaly_assets.ingest.raw_frames import concat_raw_frames, to_raw_frame
from btc_anomaly_testing.fixture_paths import BLOCKCHAIR_DIR, DUMPLINGS_VALUES, SEED_RUN_DIR

__all__ = ["BLOCKCHAIR_DIR", "SEED_RUN_DIR"]

# The two excerpts as analysis windows: every block of each file falls inside its window.
DAY13_WINDOW = (datetime(2025, 8, 13, 0, 0), datetime(2025, 8, 13, 3, 0))
DAY14_WINDOW = (datetime(2025, 8, 14, 0, 0), datetime(2025, 8, 14, 1, 35))
REAL_WINDOWS = (DAY13_WINDOW, DAY14_WINDOW)
# Without a previous block in the excerpt, a block's first-seen spread assumes the target interval.
DEFAULT_BLOCK_INTERVAL = timedelta(minutes=10)


@lru_cache(maxsize=1)
def _real_raw_cached() -> pd.DataFrame:
    # Each excerpt is read whole (they are small) and typed by the lake's own validator.
    frames = []
    for path in sorted(BLOCKCHAIR_DIR.glob("blockchair_bitcoin_transactions_*.tsv.gz")):
        rows = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        frames.append(to_raw_frame(rows, time_basis=TIME_BASIS_BLOCK, where=str(path)))
    if len(frames) != 2:
        raise FileNotFoundError(f"expected the 2 Blockchair transaction excerpts in {BLOCKCHAIR_DIR}, found {len(frames)}")
    return concat_raw_frames(frames)


def real_raw() -> pd.DataFrame:
    """All 82,640 real transactions (31 blocks) as a RAW frame, time basis ``block`` (a fresh copy)."""
    return _real_raw_cached().copy()


def raw_in(raw: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    """Rows of ``raw`` whose ``minute`` is in ``[start, end)``."""
    return raw[(raw["minute"] >= start) & (raw["minute"] < end)].reset_index(drop=True)


def minute_aggregates(raw: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    """MINUTE_AGGREGATE_COLUMNS rows for ``[start, end)`` built by the DuckDB reference aggregation."""
    covering = raw_in(raw, start - timedelta(minutes=TRAILING_MINUTES), end)
    return aggregate_minutes_duckdb(covering, start, end)


def block_minutes(raw: pd.DataFrame) -> dict[int, datetime]:
    """Block height -> the minute its transactions are counted in."""
    firsts = raw.groupby("block_id")["minute"].first()
    return {int(block): pd.Timestamp(m).to_pydatetime() for block, m in firsts.items()}


def fake_hash(*parts: object) -> str:
    """A deterministic 64-hex transaction id for an injected row, derived from ``parts``."""
    return hashlib.sha256("|".join(str(p) for p in ("injected", *parts)).encode()).hexdigest()


def copies_of(template: pd.Series | dict, count: int, tag: str, **overrides) -> pd.DataFrame:
    """``count`` copies of one raw row with fresh hashes ``fake_hash(tag, i)`` and ``overrides`` applied.

    Overrides that change amounts keep ``input_total = output_total + fee`` consistent.
    """
    rows = []
    for i in range(count):
        row = dict(template)
        row.update(overrides)
        row["hash"] = fake_hash(tag, i)
        row["input_total"] = int(row["output_total"]) + int(row["fee"])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(dict(template).keys()))


def append_rows(raw: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """``raw`` plus ``extra`` with the raw dtypes kept."""
    if extra.empty:
        return raw.copy()
    combined = pd.concat([raw, extra[raw.columns].astype(raw.dtypes.to_dict())], ignore_index=True)
    return combined.astype(raw.dtypes.to_dict())


def block_rows(raw: pd.DataFrame, block_id: int) -> pd.DataFrame:
    rows = raw[(raw["block_id"] == block_id) & ~raw["is_coinbase"]]
    if rows.empty:
        raise KeyError(f"block {block_id} has no non-coinbase rows in the frame")
    return rows


def typical_row(raw: pd.DataFrame, block_id: int) -> pd.Series:
    """The block's median-fee-rate 1-input/2-output transaction: an ordinary row to copy."""
    rows = block_rows(raw, block_id)
    plain = rows[(rows["input_count"] == 1) & (rows["output_count"] == 2)]
    median_rate = plain["fee_per_kwu"].median()
    return plain.iloc[int(np.argmin(np.abs(plain["fee_per_kwu"].to_numpy() - median_rate)))]


@lru_cache(maxsize=1)
def _block_times() -> dict[int, datetime]:
    times: dict[int, datetime] = {}
    for path in sorted(BLOCKCHAIR_DIR.glob("blockchair_bitcoin_blocks_*.tsv.gz")):
        blocks = pd.read_csv(path, sep="\t", usecols=["id", "time"])
        for height, moment in zip(blocks["id"], pd.to_datetime(blocks["time"])):
            times[int(height)] = moment.to_pydatetime()
    return times


def synthetic_first_seen(raw: pd.DataFrame) -> pd.DataFrame:
    """A first-seen (mempool arrival) series built from confirmed rows.

    Each block's non-coinbase transactions are spread evenly over the interval since the previous
    block (from the blocks files; ``DEFAULT_BLOCK_INTERVAL`` when the previous block is unknown),
    in their dump order, and relabelled as mempool rows (block_id -1, time basis first_seen).
    This is what a first-seen feed would look like if arrivals were uniform between blocks.
    """
    block_times = _block_times()
    parts = []
    for block_id, rows in raw[~raw["is_coinbase"]].groupby("block_id", sort=True):
        landed = block_times.get(int(block_id), pd.Timestamp(rows["time"].iloc[0]).to_pydatetime())
        previous = block_times.get(int(block_id) - 1)
        interval = (landed - previous) if previous is not None and previous < landed else DEFAULT_BLOCK_INTERVAL
        offsets = (np.arange(len(rows)) + 0.5) / len(rows) * interval.total_seconds()
        arrival = pd.Timestamp(landed - interval) + pd.to_timedelta(np.round(offsets * 1e6).astype("int64"), unit="us")
        parts.append(rows.assign(time=arrival.astype("datetime64[us]")))
    spread = pd.concat(parts, ignore_index=True)
    spread["minute"] = spread["time"].dt.floor("min").astype("datetime64[us]")
    spread["block_id"] = -1
    spread["time_basis"] = TIME_BASIS_FIRST_SEEN
    return spread.sort_values("time", kind="stable").reset_index(drop=True)[raw.columns]


# --- injected events -------------------------------------------------------------------------


def previous_blocks(raw: pd.DataFrame, block_id: int, count: int) -> list[int]:
    """The ``count`` blocks before ``block_id`` present in ``raw`` (fewer at the start of an excerpt)."""
    earlier = sorted(b for b in raw["block_id"].unique() if block_id - count <= b < block_id)
    return [int(b) for b in earlier]


def inject_fee_spike(raw: pd.DataFrame, block_id: int, *, count: int = 200, multiple: float = 50.0) -> tuple[pd.DataFrame, list[str]]:
    """Add ``count`` ordinary transactions to a block, each paying ``multiple`` x the block's median fee rate."""
    template = typical_row(raw, block_id)
    rate_kwu = multiple * block_rows(raw, block_id)["fee_per_kwu"].median()
    fee = int(round(rate_kwu / 250.0 * template["weight"] / 4.0))
    extra = copies_of(
        template,
        count,
        f"fee-spike-{block_id}",
        fee=fee,
        fee_per_kwu=rate_kwu,
        fee_per_kb=fee * 1000.0 / template["size"],
    )
    return append_rows(raw, extra), list(extra["hash"])


def inject_value_surge(raw: pd.DataFrame, block_id: int, *, multiple: float = 20.0, usual_blocks: int = 6) -> tuple[pd.DataFrame, list[str]]:
    """Make a block move ``multiple`` x the usual total value (median of the previous blocks' totals)
    with ordinary-sized transactions: copies of the block's own largest transaction, so the
    block's largest single value does not change."""
    usual = float(np.median([block_rows(raw, b)["output_total"].sum() for b in previous_blocks(raw, block_id, usual_blocks)]))
    rows = block_rows(raw, block_id)
    template = rows.loc[rows["output_total"].idxmax()]
    missing = multiple * usual - rows["output_total"].sum()
    if missing <= 0:
        raise ValueError(f"block {block_id} already moves {multiple}x the usual total; pick another block")
    extra = copies_of(template, int(np.ceil(missing / template["output_total"])), f"value-surge-{block_id}")
    return append_rows(raw, extra), list(extra["hash"])


def inject_identical_burst(raw: pd.DataFrame, block_id: int, *, count: int = 40) -> tuple[pd.DataFrame, list[str]]:
    """Add ``count`` structurally identical transactions (same inputs, outputs and total) to a block."""
    extra = copies_of(typical_row(raw, block_id), count, f"identical-burst-{block_id}")
    return append_rows(raw, extra), list(extra["hash"])


def is_batch_payout(rows: pd.DataFrame) -> pd.Series:
    """mempool.space's batch-payout shape, inputs / outputs <= 0.2, paying more than dust
    (mean output >= 1,000 sat; a dust spray is not a payout). Coinbase excluded."""
    return (
        ~rows["is_coinbase"]
        & (rows["input_count"] <= 0.2 * rows["output_count"])
        & (rows["output_total"] >= 1_000 * rows["output_count"])
    )


def inject_batch_storm(raw: pd.DataFrame, block_id: int, *, factor: int = 10, usual_blocks: int = 6) -> tuple[pd.DataFrame, list[str]]:
    """Give a block ``factor`` x the usual number of batch payouts (median count of the previous
    blocks), adding fresh copies of the block's own batch payouts in turn, each a few satoshi larger."""
    usual = float(np.median([is_batch_payout(block_rows(raw, b)).sum() for b in previous_blocks(raw, block_id, usual_blocks)]))
    rows = block_rows(raw, block_id)
    batches = rows[is_batch_payout(rows)]
    missing = int(np.ceil(factor * usual)) - len(batches)
    if missing <= 0 or batches.empty:
        raise ValueError(f"block {block_id} has no batch payouts to copy or already has {factor}x the usual number")
    # Each copy pays a few satoshi more, so the storm is many distinct payouts, not one repeated.
    # (Built in one frame: one copies_of() per payout costs a DataFrame each.)
    serial = np.arange(missing)
    extra = batches.iloc[serial % len(batches)].reset_index(drop=True)
    extra["output_total"] = extra["output_total"].to_numpy(dtype="int64") + 1 + serial
    extra["input_total"] = extra["output_total"] + extra["fee"].to_numpy(dtype="int64")
    extra["hash"] = [fake_hash(f"batch-storm-{block_id}-{i}", 0) for i in serial]  # as copies_of(..., 1, tag) names them
    return append_rows(raw, extra), list(extra["hash"])


def surge_first_seen(first_seen: pd.DataFrame, minute: datetime, *, factor: int = 5) -> tuple[pd.DataFrame, list[str]]:
    """Multiply one minute's arrivals by ``factor`` (``factor - 1`` fresh copies of each arrival)."""
    arrivals = first_seen[first_seen["minute"] == pd.Timestamp(minute)]
    if arrivals.empty:
        raise ValueError(f"no first-seen arrivals in minute {minute}")
    extra = pd.concat(
        [copies_of(row, factor - 1, f"surge-{minute}-{row['hash']}") for _, row in arrivals.iterrows()],
        ignore_index=True,
    )
    return append_rows(first_seen, extra), list(extra["hash"])


# --- Dumplings CoinJoin fixture ----------------------------------------------------------------


@lru_cache(maxsize=1)
def dumplings_transactions() -> pd.DataFrame:
    """One row per (source list, transaction) with ``input_values`` / ``output_values`` lists in
    input/output order, plus the labels (family, kind) and the counts/totals of Dumplings' coinjoin_txs.tsv."""
    txs = pd.read_csv(DUMPLINGS_VALUES, sep="\t", dtype={"input_values": str, "output_values": str}, keep_default_na=False)
    for column in ("input_values", "output_values"):
        txs[column] = [[int(v) for v in joined.split(",")] if joined else [] for joined in txs[column]]
    return txs
