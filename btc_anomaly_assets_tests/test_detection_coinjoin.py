"""Per-output CoinJoin and dust heuristics, checked by hand-made cases and on the labelled Dumplings set.

Dumplings (``btc_anomaly_testing/fixtures/dumplings``) gives every input and output value of
7,625 real transactions. Labels used here:

- positives: the CoinJoin lists of each family (Whirlpool, Wasabi 2, Wasabi 1) and, in the "other"
  (JoinMarket-style) list, the transactions whose equal outputs are >= 3 and not dust;
- hard negatives: the "other" list's dust lookalikes (equal outputs of <= 2,730 sat: 546/555/330);
- other negatives: Tx0 and post-mix lists. These lists also hold real remixes (a mix spending a
  mix output is a post-mix transaction too), so precision against them is a lower bound.
"""

from __future__ import annotations

import pandas as pd
import pytest

from btc_anomaly_assets.detection import coinjoin as cj
from btc_anomaly_testing import real_data as rd


@pytest.fixture(scope="module")
def dumplings() -> pd.DataFrame:
    txs = rd.dumplings_transactions().copy()
    verdicts = [cj.classify_coinjoin(i, o) for i, o in zip(txs["input_values"], txs["output_values"])]
    txs["predicted"] = [v.family if v else None for v in verdicts]
    txs["dust_batch"] = [cj.match_dust_batch(o) is not None for o in txs["output_values"]]
    return txs


def _subset(txs: pd.DataFrame, family: str, kind: str = "coinjoin") -> pd.DataFrame:
    return txs[(txs["family"] == family) & (txs["kind"] == kind)]


# --- hand-made cases -------------------------------------------------------------------------------


def test_whirlpool_needs_equal_pool_outputs_and_matching_inputs():
    pool = 1_000_000
    inputs = [pool, pool, pool + 5_000, pool + 100_000, pool]
    assert cj.match_whirlpool(inputs, [pool] * 5).family == cj.FAMILY_WHIRLPOOL
    assert cj.match_whirlpool(inputs, [pool] * 4 + [pool - 1]) is None  # one output off
    assert cj.match_whirlpool(inputs[:4] + [pool - 10], [pool] * 5) is None  # input below the pool
    assert cj.match_whirlpool([1_234_567] * 5, [1_234_567] * 5) is None  # not a pool denomination
    assert cj.match_whirlpool([pool] * 9, [pool] * 9) is None  # more than 8 participants
    assert cj.whirlpool_from_totals(5, 5, 5 * pool) and not cj.whirlpool_from_totals(5, 6, 5 * pool)


def test_wasabi2_denominations_and_round_shape():
    denominations = cj.WASABI2_DENOMINATIONS
    for value in (5_000, 6_561, 10_000, 20_000, 50_000, 65_536, 1_594_323, 2_097_152, 100_000_000):
        assert value in denominations
    for value in (4_096, 7_000, 12_345):
        assert value not in denominations
    outputs = [2_097_152] * 6 + [1_000_000] * 5 + [531_441] * 4 + [123_456]
    assert cj.match_wasabi2([3_000_000] * 25, outputs).family == cj.FAMILY_WASABI2
    assert cj.match_wasabi2([3_000_000] * 10, outputs) is None  # too few inputs
    assert cj.match_wasabi2([3_000_000] * 25, outputs + [4_000]) is None  # output below 5,000 sat


def test_equal_output_rejects_dust_lookalikes_and_tx0():
    assert cj.match_equal_output([10_000, 20_000], [546, 546, 30_000]) is None
    assert cj.classify_coinjoin([10_000, 20_000, 7_000, 9_000], [330, 330, 330, 12_000]) is None
    joinmarket = cj.classify_coinjoin([900_000, 2_000_000, 1_500_000, 800_000], [700_000] * 4 + [150_000, 1_250_000])
    assert joinmarket.family == cj.FAMILY_EQUAL_OUTPUT and joinmarket.equal_count == 4
    # A Tx0: premix outputs of pool + fee share, from one wallet's inputs.
    tx0 = cj.classify_coinjoin([3_000_000, 2_500_000, 400_000], [1_000_170] * 5 + [880_000])
    assert tx0 is None and cj.match_whirlpool_tx0([], [1_000_170] * 5 + [880_000]) is not None


def test_wasabi1_allows_mixing_levels():
    base = 10_989_722
    outputs = [base] * 50 + [2 * base - 2_000] * 7 + [4 * base - 9_000] * 5 + list(range(300_000, 300_000 + 39))
    assert len(outputs) > 2 * 50  # more than one change per equal output: levels explain the rest
    found = cj.classify_coinjoin([20_000_000] * 74, outputs)
    assert found.family == cj.FAMILY_WASABI1 and found.equal_value_sat == base


def test_dust_rules():
    assert cj.match_dust_batch([330] * 500).dust_outputs == 500
    assert cj.match_dust_batch([330] * 4 + [50_000]) is None  # fewer than 5 dust outputs
    assert cj.match_dust_batch([330] * 5 + [50_000] * 5) is None  # not more than half
    assert cj.dust_fanout_from_totals(500, 165_000) and cj.dust_fanout_from_totals(873, 288_090)
    assert not cj.dust_fanout_from_totals(4, 1_000) and not cj.dust_fanout_from_totals(10, 10_000)
    with pytest.raises(ValueError, match="negative"):
        cj.match_dust_batch([330, -1])


def test_count_only_coinjoin_shape():
    assert cj.large_coinjoin_from_counts(411, 488, 2_851_420_449)
    assert not cj.large_coinjoin_from_counts(501, 500, 165_000)  # dust spray
    assert not cj.large_coinjoin_from_counts(400, 60, 5_000_000_000)  # consolidation-like ratio
    assert not cj.large_coinjoin_from_counts(30, 35, 500_000_000)  # small round: needs per-output values


# --- the labelled Dumplings set --------------------------------------------------------------------


def test_recall_per_family(dumplings):
    whirlpool = _subset(dumplings, "whirlpool")
    assert (whirlpool["predicted"] == cj.FAMILY_WHIRLPOOL).all() and len(whirlpool) == 1403
    wasabi2 = _subset(dumplings, "wasabi2")
    assert wasabi2["predicted"].notna().all()
    assert (wasabi2["predicted"] == cj.FAMILY_WASABI2).mean() >= 0.9
    wasabi1 = _subset(dumplings, "wasabi1")
    assert wasabi1["predicted"].notna().mean() >= 0.99
    assert (wasabi1["predicted"] == cj.FAMILY_WASABI1).mean() >= 0.95
    other = _subset(dumplings, "other")
    equal_nondust = other[(other["max_equal_output_count"] >= 3) & (other["max_equal_output_value"] > 2_730)]
    assert len(equal_nondust) >= 90 and equal_nondust["predicted"].notna().mean() >= 0.9


def test_hard_negatives_are_not_coinjoins(dumplings):
    other = _subset(dumplings, "other")
    lookalikes = other[other["max_equal_output_value"] <= 2_730]
    assert len(lookalikes) >= 270
    assert lookalikes["predicted"].isna().all()


def test_precision_against_tx0_and_postmix_lists(dumplings):
    positives = dumplings[dumplings["kind"] == "coinjoin"]
    negatives = dumplings[dumplings["kind"] != "coinjoin"]
    true_positive = positives["predicted"].notna().sum()
    false_positive = negatives["predicted"].notna().sum()
    assert true_positive / (true_positive + false_positive) >= 0.7  # lower bound: the lists hold remixes
    # Most "false positives" are exact Whirlpool mixes (remixes filed as post-mix / Tx0 entries).
    exact_whirlpool = negatives["predicted"] == cj.FAMILY_WHIRLPOOL
    assert exact_whirlpool.sum() >= 0.6 * false_positive
    assert negatives.loc[~exact_whirlpool, "predicted"].notna().mean() < 0.06


def test_count_only_rules_on_dumplings(dumplings):
    whirlpool = _subset(dumplings, "whirlpool")
    by_totals = [cj.whirlpool_from_totals(i, o, t) for i, o, t in whirlpool[["input_count", "output_count", "output_total"]].itertuples(index=False)]
    assert all(by_totals)
    wasabi2 = _subset(dumplings, "wasabi2")
    shape = [cj.large_coinjoin_from_counts(i, o, t) for i, o, t in wasabi2[["input_count", "output_count", "output_total"]].itertuples(index=False)]
    assert 0.7 <= sum(shape) / len(shape) < 1.0  # small rounds need per-output values
    dust = [cj.dust_fanout_from_totals(o, t) for o, t in dumplings[["output_count", "output_total"]].itertuples(index=False)]
    assert not any(dust)  # no CoinJoin or post-mix is a dust spray by totals


def test_dust_batches_only_outside_coinjoins(dumplings):
    assert not dumplings.loc[dumplings["kind"] == "coinjoin", "dust_batch"].any()
    assert dumplings.loc[dumplings["kind"] == "postmix", "dust_batch"].sum() >= 50
