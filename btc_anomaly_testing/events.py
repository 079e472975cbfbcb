"""Physically possible events injected into one real block (for the detection evaluation).

Every event edits a copy of one block's rows and keeps the block possible: its weight stays at or
below the 4,000,000 WU consensus limit, because the event's new transactions *displace* ordinary
ones (no shape, not coinbase) from the lowest fee rate up, as a miner filling a full block would.
New rows are copies of real rows of the same day with fresh hashes (``real_data.fake_hash``), and
amounts keep ``input_total = output_total + fee``.

``EVENTS`` lists the library: kind -> (injector, sizes). Each injector takes the block's rows, a
pool of the day's rows (for templates), a size and a ``numpy`` generator and returns the new rows
of the block and the hashes of the transactions that make the event (changed or added).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from btc_anomaly_assets.detection.clusters import classify_shapes
from btc_anomaly_testing.real_data import fake_hash

MAX_BLOCK_WEIGHT = 4_000_000
SAT = 100_000_000


class ImpossibleEvent(ValueError):
    """The block cannot hold this event (not enough ordinary transactions to displace)."""


@dataclass(frozen=True)
class Size:
    label: str
    value: float
    beyond_real_range: bool  # sized clearly beyond anything the 31 real blocks show


def _fee_fields(rows: pd.DataFrame, fee: np.ndarray) -> pd.DataFrame:
    fee = np.maximum(np.round(fee), 0).astype(np.int64)
    return rows.assign(
        fee=fee,
        input_total=rows["output_total"].to_numpy(dtype=np.int64) + fee,
        fee_per_kwu=fee * 1000.0 / rows["weight"].to_numpy(dtype=float),
        fee_per_kb=fee * 1000.0 / rows["size"].to_numpy(dtype=float),
    )


def _copies(template: pd.Series, count: int, tag: str, **columns) -> pd.DataFrame:
    """``count`` copies of ``template`` with fresh hashes; ``columns`` are scalars or per-copy arrays."""
    rows = pd.DataFrame([template.to_dict()] * count).reset_index(drop=True)
    rows["hash"] = [fake_hash(tag, i) for i in range(count)]
    for name, value in columns.items():
        rows[name] = value
    rows["input_total"] = rows["output_total"].astype(np.int64) + rows["fee"].astype(np.int64)
    return rows


def _rate_kwu(block: pd.DataFrame) -> float:
    return float(block.loc[~block["is_coinbase"], "fee_per_kwu"].median())


def _with_fee_rate(rows: pd.DataFrame, rate_kwu: float) -> pd.DataFrame:
    return _fee_fields(rows, rate_kwu * rows["weight"].to_numpy(dtype=float) / 1000.0)


def place(block: pd.DataFrame, added: pd.DataFrame) -> pd.DataFrame:
    """``block`` plus ``added``, displacing ordinary transactions (lowest fee rate first) so the
    block stays within MAX_BLOCK_WEIGHT; ImpossibleEvent when that cannot be done."""
    added = added.copy()
    home = block[~block["is_coinbase"]].iloc[0]
    for column in ("block_id", "time", "minute", "time_basis"):  # templates may come from other blocks
        added[column] = home[column]
    added = added.astype({c: block[c].dtype for c in block.columns if c in added.columns})[block.columns]
    excess = int(block["weight"].sum() + added["weight"].sum()) - MAX_BLOCK_WEIGHT
    if excess > 0:
        shapes = classify_shapes(block).to_numpy()
        ordinary = block[pd.isna(shapes) & ~block["is_coinbase"].to_numpy()]
        ordinary = ordinary.sort_values(["fee_per_kwu", "hash"], kind="stable")
        cumulative = ordinary["weight"].cumsum().to_numpy()
        cut = int(np.searchsorted(cumulative, excess)) + 1
        if cut > len(ordinary):
            raise ImpossibleEvent(f"block needs {excess} WU freed but holds only {int(cumulative[-1])} WU of ordinary txs")
        block = block.drop(index=ordinary.index[:cut])
    return pd.concat([block, added], ignore_index=True)


def _typical(block: pd.DataFrame, inputs: int = 1, outputs: int = 2) -> pd.Series:
    plain = block[(block["input_count"] == inputs) & (block["output_count"] == outputs) & ~block["is_coinbase"]]
    rate = plain["fee_per_kwu"].median()
    return plain.iloc[int(np.argmin(np.abs(plain["fee_per_kwu"].to_numpy() - rate)))]


def whale(block, pool, size: Size, rng, tag):
    template = _typical(block)
    added = _copies(template, 1, tag, output_total=int(size.value * SAT))
    return place(block, added), list(added["hash"])


def fee_spike_block(block, pool, size: Size, rng, tag):
    """Every transaction of the block pays ``size.value`` times its fee (a whole-block fee spike)."""
    paying = ~block["is_coinbase"]
    changed = _fee_fields(block[paying], block.loc[paying, "fee"].to_numpy(dtype=float) * size.value)
    out = block.copy()
    out.loc[paying, changed.columns] = changed
    return out, list(changed["hash"])


def fee_spike_fraction(block, pool, size: Size, rng, tag):
    """A fraction ``size.value`` of the ordinary transactions pays 50x the block's median fee rate."""
    candidates = np.flatnonzero(~block["is_coinbase"].to_numpy())
    chosen = rng.choice(candidates, size=max(1, round(size.value * candidates.size)), replace=False)
    changed = _with_fee_rate(block.iloc[chosen], 50.0 * _rate_kwu(block))
    out = block.copy()
    out.iloc[chosen, [out.columns.get_loc(c) for c in changed.columns]] = changed.to_numpy()
    return out.astype(block.dtypes.to_dict()), list(changed["hash"])


def value_surge(block, pool, size: Size, rng, tag):
    """The block moves ``size.value`` x the day's median block total, in copies of its own largest
    transaction (so the block's largest single value does not change)."""
    totals = pool[~pool["is_coinbase"]].groupby("block_id")["output_total"].sum()
    rows = block[~block["is_coinbase"]]
    template = rows.loc[rows["output_total"].idxmax()]
    missing = size.value * float(totals.median()) - float(rows["output_total"].sum())
    count = max(1, int(np.ceil(missing / float(template["output_total"]))))
    added = _copies(template, count, tag, output_total=int(template["output_total"]) - np.arange(count) - 1)
    return place(block, added), list(added["hash"])


def _share_weight(block: pd.DataFrame, mask: np.ndarray, share: float) -> float:
    """Weight to add so that ``mask`` rows plus the added ones make ``share`` of the block's weight."""
    total, present = float(block["weight"].sum()), float(block.loc[mask, "weight"].sum())
    grow = (share * total - present) / (1.0 - share)
    if total + grow <= MAX_BLOCK_WEIGHT:
        return max(grow, 0.0)
    return max(share * MAX_BLOCK_WEIGHT - present, 0.0)


def _storm(block, templates: pd.DataFrame, pattern: str, share: float, rng, tag):
    shapes = classify_shapes(block).to_numpy()
    need = _share_weight(block, shapes == pattern, share)
    picks, weight = [], 0.0
    while weight < need:
        row = templates.iloc[int(rng.integers(len(templates)))]
        picks.append(row)
        weight += float(row["weight"])
    if not picks:
        raise ImpossibleEvent(f"block already holds {share:.0%} of {pattern}")
    added = pd.DataFrame(picks).reset_index(drop=True)
    added["hash"] = [fake_hash(tag, i) for i in range(len(added))]
    added["output_total"] = added["output_total"].astype(np.int64) + np.arange(len(added)) + 1  # distinct, not identical
    added["input_total"] = added["output_total"] + added["fee"].astype(np.int64)
    added = _with_fee_rate(added, _rate_kwu(block))
    return place(block, added), list(added["hash"])


def _shaped(pool: pd.DataFrame, pattern: str) -> pd.DataFrame:
    rows = pool[~pool["is_coinbase"]]
    return rows[classify_shapes(rows).to_numpy() == pattern]


def fan_out_storm(block, pool, size: Size, rng, tag):
    """Batch payouts (copies of the day's real ones) until they take ``size.value`` of the block's weight."""
    templates = _shaped(pool, "fan_out_batch")
    return _storm(block, templates[templates["output_total"] >= 1_000 * templates["output_count"]], "fan_out_batch",
                  size.value, rng, tag)


def fan_in_storm_small(block, pool, size: Size, rng, tag):
    """5-input, 1-output consolidations (P2WPKH-sized) until they take ``size.value`` of the weight."""
    template = _typical(block).copy()
    template["input_count"], template["output_count"] = 5, 1
    template["weight"], template["size"] = 4 * (5 * 68 + 31 + 11), 5 * 68 + 31 + 11 + 60
    values = rng.integers(1_000_000, 100_000_000, size=4000)
    templates = _copies(template, 4000, tag + "-t", output_total=values)
    return _storm(block, templates, "fan_in_consolidation", size.value, rng, tag)


def fan_in_storm_large(block, pool, size: Size, rng, tag):
    """Copies of the day's real consolidations until they take ``size.value`` of the weight."""
    return _storm(block, _shaped(pool, "fan_in_consolidation"), "fan_in_consolidation", size.value, rng, tag)


def bot_burst(block, pool, size: Size, rng, tag):
    """``size.value`` structurally identical small payments (1 input, 2 outputs, the same total)."""
    template = _typical(block)
    added = _copies(template, int(size.value), tag, output_total=int(rng.integers(5_000, 50_000)))
    return place(block, added), list(added["hash"])


def dust_storm(block, pool, size: Size, rng, tag):
    """``size.value`` dust fan-outs of 500 outputs x 330 sat each (a dusting / poisoning campaign)."""
    template = _typical(block).copy()
    template["input_count"], template["output_count"] = 1, 500
    template["weight"], template["size"] = 4 * (68 + 500 * 31 + 11), 68 + 500 * 31 + 11 + 30
    count = int(size.value)
    added = _with_fee_rate(_copies(template, count, tag, output_total=165_000 + np.arange(count)), _rate_kwu(block))
    return place(block, added), list(added["hash"])


def coinjoin_rounds(block, pool, size: Size, rng, tag):
    """``size.value`` Wasabi-2-sized rounds (copies of the real rounds of both days)."""
    templates = _shaped(pool, "coinjoin")
    count = int(size.value)
    picks = templates.iloc[rng.integers(len(templates), size=count)].reset_index(drop=True)
    picks["hash"] = [fake_hash(tag, i) for i in range(count)]
    picks["output_total"] = picks["output_total"].astype(np.int64) + np.arange(count) + 1
    picks["input_total"] = picks["output_total"] + picks["fee"].astype(np.int64)
    return place(block, picks), list(picks["hash"])


def _sizes(*entries) -> tuple[Size, ...]:
    return tuple(Size(label, value, beyond) for label, value, beyond in entries)


# kind -> (injector, sizes). Sizes marked True are clearly beyond the 31 real blocks' range:
# whales >= 3,000 BTC (the largest non-whale transaction is 1,022 BTC); whole-block fee spikes
# >= 30x (a block's median fee rate moves up to ~16x between real blocks, 0.25-4 sat/vB, so 10x
# is not beyond); >= 10 % of a block paying 50x (real blocks hold 1-102 such payers); value
# surges >= 50x the day's median block total (20x = 29-42k BTC, about the real 22.8k maximum);
# fan-out storms >= 40 % of the weight (real at most 21 %); small-consolidation storms of 60 %
# (beyond by count: ~1,500 consolidations against at most 125; 30 % is within the real weight
# range 1.5-75 %, and large consolidations never leave it); bot bursts >= 100 identical
# (real at most 42); >= 10 mass dust fan-outs (5,000 outputs; real at most 1,017 per block);
# >= 5 CoinJoin rounds (real at most 1 per block).
EVENTS = {
    "whale": (whale, _sizes(("1,000 BTC", 1_000, False), ("3,000 BTC", 3_000, True), ("10,000 BTC", 10_000, True))),
    "fee_spike_block": (fee_spike_block, _sizes(("x3", 3, False), ("x10", 10, False), ("x30", 30, True),
                                                 ("x100", 100, True))),
    "fee_spike_fraction": (fee_spike_fraction, _sizes(("2% at 50x", 0.02, False), ("10% at 50x", 0.10, True),
                                                      ("25% at 50x", 0.25, True))),
    "value_surge": (value_surge, _sizes(("x3 day median", 3, False), ("x20", 20, False), ("x50", 50, True))),
    "fan_out_storm": (fan_out_storm, _sizes(("15% weight", 0.15, False), ("40% weight", 0.40, True),
                                            ("60% weight", 0.60, True))),
    "fan_in_storm_small": (fan_in_storm_small, _sizes(("10% weight", 0.10, False), ("30% weight", 0.30, False),
                                                      ("60% weight", 0.60, True))),
    "fan_in_storm_large": (fan_in_storm_large, _sizes(("40% weight", 0.40, False), ("80% weight", 0.80, False))),
    "bot_burst": (bot_burst, _sizes(("30 identical", 30, False), ("100 identical", 100, True),
                                    ("300 identical", 300, True))),
    "dust_storm": (dust_storm, _sizes(("1 x 500 dust", 1, False), ("10 x 500 dust", 10, True),
                                      ("30 x 500 dust", 30, True))),
    "coinjoin_rounds": (coinjoin_rounds, _sizes(("1 round", 1, False), ("5 rounds", 5, True),
                                                ("10 rounds", 10, True))),
}

VALUE_METRICS = ("log10_max_value_btc", "log10_total_value_btc")
FEE_METRICS = ("log10_median_fee_rate_sat_vb", "log10_p90_fee_rate_sat_vb", "log10_p99_fee_rate_sat_vb",
               "fee_outlier_tx_count")
RELEVANT_METRICS = {"whale": VALUE_METRICS, "value_surge": VALUE_METRICS, "fee_spike_block": FEE_METRICS,
                    "fee_spike_fraction": FEE_METRICS}
