"""CoinJoin and dust heuristics: exact ones on per-output values, coarse ones on counts and totals.

Which patterns need per-output values
-------------------------------------
The raw layer (Blockchair ``transactions`` rows) carries only ``input_count``, ``output_count``,
``input_total`` and ``output_total``. That is enough for:

- **Whirlpool**, exactly: every output equals the pool denomination and the output count is 5-8,
  so ``output_total == output_count * denomination`` with ``input_count == output_count``
  (``whirlpool_from_totals``). A non-Whirlpool transaction matching that by accident is very unlikely.
- **Many-party CoinJoins** (Wasabi 2, Wasabi 1), approximately: many inputs and many outputs in a
  balanced ratio with non-dust outputs (``large_coinjoin_from_counts``). It cannot tell Wasabi 2
  from Wasabi 1 or from an exchange's many-to-many batch, and it misses small rounds.
- **Dust fan-outs**, approximately: many outputs whose *mean* is below the dust line
  (``dust_fanout_from_totals``); with per-output values it becomes exact (``match_dust_batch``).

Per-output values (and for the strict published rules, input values) are needed for:

- **Wasabi 2** denominations (``match_wasabi2``): which outputs are standard denominations.
- **Generic equal-output / JoinMarket** (``match_equal_output``) and **Wasabi 1** (``match_wasabi1``):
  the most frequent output value and how often it occurs.
- Telling a CoinJoin from a **dust lookalike** (2-5 equal outputs of 330/546/555 sat).
- Whirlpool's input check (each input is the denomination plus at most the pool fee).

Sources: BITCOIN_DOMAIN.md section 2.3 and 2.5 (BlockSci ``isCoinjoin``, mempool.space, GraphSense
``_wasabi_20_heuristic`` / ``_joinmarket_heuristic``, WalletWasabi ``DenominationBuilder``,
am-i-exposed ``dust-output.ts``, Samourai/Ashigaru pool tables). All values are integer satoshi.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

# Whirlpool pools: Samourai era 0.001 / 0.01 / 0.05 / 0.5 BTC, Ashigaru era (2025-06-23) 0.025 / 0.25 BTC.
WHIRLPOOL_DENOMINATIONS_SAT = (100_000, 1_000_000, 2_500_000, 5_000_000, 25_000_000, 50_000_000)
WHIRLPOOL_MIN_PARTICIPANTS = 5
WHIRLPOOL_MAX_PARTICIPANTS = 8
# A new entrant's input is the denomination plus its share of the pool fee and miner fee.
WHIRLPOOL_MAX_INPUT_EXCESS_SAT = 110_000

# Wasabi 2 (WabiSabi): coordinator minimum registrable amount; standard denominations start there.
WASABI2_MIN_OUTPUT_SAT = 5_000
WASABI2_MAX_DENOMINATION_SAT = 1_374_389_534_720  # 2**40 sat, above any real round's maximum output
WASABI2_MIN_INPUTS = 20
WASABI2_MIN_DENOMINATION_TIERS = 3

# Wasabi 1.x: a coordinator round with a large equal tier (base denomination, ~0.1 BTC in 2021,
# drifting per round) and mixing levels at 2x, 4x, ... the base (fees make them inexact).
WASABI1_MIN_INPUTS = 10
WASABI1_MIN_EQUAL_OUTPUTS = 10
WASABI1_MAX_MIXING_LEVEL = 6
WASABI1_LEVEL_TOLERANCE = 0.01

# BlockSci rejects these "equal outputs" as dust (546 P2PKH dust limit, 2,730 old dust limit).
EQUAL_OUTPUT_MIN_VALUE_SAT = 2_731
EQUAL_OUTPUT_MIN_COUNT = 3

# am-i-exposed dust rule: outputs below 1,000 sat are dust; a batch is >= 5 of them and > 50 %.
DUST_OUTPUT_SAT = 1_000
DUST_BATCH_MIN_OUTPUTS = 5

# Count-only CoinJoin shape (what the raw layer allows).
LARGE_COINJOIN_MIN_INPUTS = 50
LARGE_COINJOIN_MIN_OUTPUTS = 50
LARGE_COINJOIN_OUTPUT_INPUT_RATIO = (0.5, 2.0)

FAMILY_WHIRLPOOL = "whirlpool"
FAMILY_WASABI2 = "wasabi2"
FAMILY_WASABI1 = "wasabi1"
FAMILY_EQUAL_OUTPUT = "equal_output"  # JoinMarket and other generic equal-output CoinJoins
COINJOIN_FAMILIES = (FAMILY_WHIRLPOOL, FAMILY_WASABI2, FAMILY_WASABI1, FAMILY_EQUAL_OUTPUT)

# What each detector needs, for documentation and the README.
NEEDS_PER_OUTPUT_VALUES = {
    "whirlpool (exact shape)": False,
    "whirlpool (input check)": True,
    "many-party coinjoin shape": False,
    "wasabi2 denominations": True,
    "wasabi1 equal tier and mixing levels": True,
    "equal_output / joinmarket": True,
    "dust fan-out (mean below dust)": False,
    "dust batch (>= 5 dust outputs, > 50 %)": True,
}


@dataclass(frozen=True)
class CoinJoinMatch:
    """A transaction recognised as a CoinJoin: the family, the equal value it is built on, and why."""

    family: str
    equal_value_sat: int | None
    equal_count: int
    reason: str


@dataclass(frozen=True)
class DustMatch:
    """A dust batch: how many outputs are dust, out of how many."""

    dust_outputs: int
    outputs: int
    reason: str


def _values(values: Iterable[int], what: str) -> list[int]:
    result = [int(v) for v in values]
    if any(v < 0 for v in result):
        raise ValueError(f"{what} contains a negative satoshi value")
    return result


def _most_common(values: Sequence[int]) -> tuple[int | None, int]:
    """The most frequent value and its count; ties go to the larger value (deterministic)."""
    if not values:
        return None, 0
    counts = Counter(values)
    value, count = max(counts.items(), key=lambda item: (item[1], item[0]))
    return value, count


def wasabi2_denominations(
    min_sat: int = WASABI2_MIN_OUTPUT_SAT, max_sat: int = WASABI2_MAX_DENOMINATION_SAT
) -> frozenset[int]:
    """WabiSabi standard denominations in ``[min_sat, max_sat]``: 2^n, 3^n, 2*3^n, 10^n, 2*10^n, 5*10^n."""
    found: set[int] = set()
    for base, multipliers in ((2, (1,)), (3, (1, 2)), (10, (1, 2, 5))):
        power = 1
        while power <= max_sat:
            for multiplier in multipliers:
                value = multiplier * power
                if min_sat <= value <= max_sat:
                    found.add(value)
            power *= base
    return frozenset(found)


WASABI2_DENOMINATIONS = wasabi2_denominations()


def match_whirlpool(input_values: Iterable[int], output_values: Iterable[int]) -> CoinJoinMatch | None:
    """Whirlpool mix: 5-8 inputs and as many outputs, every output exactly one pool denomination,
    every input between the denomination and the denomination plus ``WHIRLPOOL_MAX_INPUT_EXCESS_SAT``."""
    inputs, outputs = _values(input_values, "input_values"), _values(output_values, "output_values")
    n = len(outputs)
    if not WHIRLPOOL_MIN_PARTICIPANTS <= n <= WHIRLPOOL_MAX_PARTICIPANTS or len(inputs) != n:
        return None
    denomination = outputs[0]
    if denomination not in WHIRLPOOL_DENOMINATIONS_SAT or any(v != denomination for v in outputs):
        return None
    if any(not denomination <= v <= denomination + WHIRLPOOL_MAX_INPUT_EXCESS_SAT for v in inputs):
        return None
    return CoinJoinMatch(FAMILY_WHIRLPOOL, denomination, n, f"whirlpool: {n}x{n} at pool {denomination} sat")


def match_wasabi2(input_values: Iterable[int], output_values: Iterable[int]) -> CoinJoinMatch | None:
    """Wasabi 2 round (GraphSense-style, values only): >= 20 inputs, no output below 5,000 sat, at
    least 3 standard denominations that each occur >= 2 times, and standard-denomination outputs
    making up at least (outputs - 1) / 2. Address checks of the published rule need scripts and are
    not applied."""
    inputs, outputs = _values(input_values, "input_values"), _values(output_values, "output_values")
    if len(inputs) < WASABI2_MIN_INPUTS or not outputs or min(outputs) < WASABI2_MIN_OUTPUT_SAT:
        return None
    denominated = [v for v in outputs if v in WASABI2_DENOMINATIONS]
    tiers = [value for value, count in Counter(denominated).items() if count >= 2]
    if len(tiers) < WASABI2_MIN_DENOMINATION_TIERS or len(denominated) < (len(outputs) - 1) / 2:
        return None
    value, count = _most_common(denominated)
    return CoinJoinMatch(
        FAMILY_WASABI2,
        value,
        count,
        f"wasabi2: {len(denominated)}/{len(outputs)} outputs are standard denominations, {len(tiers)} repeated tiers",
    )


def match_equal_output(input_values: Iterable[int], output_values: Iterable[int]) -> CoinJoinMatch | None:
    """Generic equal-output CoinJoin (BlockSci / JoinMarket style): the most frequent output value
    d is not dust (> 2,730 sat) and occurs n >= 3 times, with n <= inputs (each participant brings
    an input) and outputs <= 2n (at most one change output per participant)."""
    inputs, outputs = _values(input_values, "input_values"), _values(output_values, "output_values")
    if len(inputs) < 2 or len(outputs) < EQUAL_OUTPUT_MIN_COUNT:
        return None
    non_dust = [v for v in outputs if v >= EQUAL_OUTPUT_MIN_VALUE_SAT]
    value, count = _most_common(non_dust)
    if value is None or count < EQUAL_OUTPUT_MIN_COUNT or count > len(inputs) or len(outputs) > 2 * count:
        return None
    return CoinJoinMatch(
        FAMILY_EQUAL_OUTPUT, value, count, f"equal_output: {count} of {len(outputs)} outputs at {value} sat"
    )


def match_wasabi1(input_values: Iterable[int], output_values: Iterable[int]) -> CoinJoinMatch | None:
    """Wasabi 1.x coordinator round: >= 10 inputs and >= 10 outputs at one non-dust value d (the
    round's base denomination, ~0.1 BTC in 2021, drifting per round), where outputs on the mixing
    levels d * 2^k (within 1 %) plus at most one change each explain all outputs
    (outputs <= 2 x level outputs). Many-maker JoinMarket rounds of the same shape are labelled
    Wasabi 1 too; the family is a best guess, the CoinJoin verdict is what matters."""
    inputs, outputs = _values(input_values, "input_values"), _values(output_values, "output_values")
    if len(inputs) < WASABI1_MIN_INPUTS:
        return None
    value, count = _most_common([v for v in outputs if v >= EQUAL_OUTPUT_MIN_VALUE_SAT])
    if value is None or count < WASABI1_MIN_EQUAL_OUTPUTS or count > len(inputs):
        return None
    levels = [value * 2**k for k in range(WASABI1_MAX_MIXING_LEVEL + 1)]
    on_levels = sum(1 for v in outputs if any(abs(v - level) <= WASABI1_LEVEL_TOLERANCE * level for level in levels))
    if len(outputs) > 2 * on_levels:
        return None
    return CoinJoinMatch(
        FAMILY_WASABI1,
        value,
        count,
        f"wasabi1: {count} outputs at base {value} sat, {on_levels}/{len(outputs)} on mixing levels",
    )


def whirlpool_premix_pool(value_sat: int) -> int | None:
    """The Whirlpool pool a premix output of ``value_sat`` would enter (value in (d, d + max excess]), or None."""
    for denomination in WHIRLPOOL_DENOMINATIONS_SAT:
        if denomination < value_sat <= denomination + WHIRLPOOL_MAX_INPUT_EXCESS_SAT:
            return denomination
    return None


def match_whirlpool_tx0(input_values: Iterable[int], output_values: Iterable[int]) -> CoinJoinMatch | None:
    """Whirlpool Tx0 (premix), *not* a CoinJoin: the most frequent output value occurs >= 2 times and
    sits just above a pool denomination (pool + fee share). Its equal outputs would otherwise fool the
    equal-output rule; the family is ``whirlpool_tx0``."""
    outputs = _values(output_values, "output_values")
    value, count = _most_common(outputs)
    if value is None or count < 2:
        return None
    pool = whirlpool_premix_pool(value)
    if pool is None:
        return None
    return CoinJoinMatch("whirlpool_tx0", value, count, f"whirlpool_tx0: {count} premix outputs of {value} sat for pool {pool}")


def classify_coinjoin(input_values: Iterable[int], output_values: Iterable[int]) -> CoinJoinMatch | None:
    """The first CoinJoin family that matches, most specific first: Whirlpool, Wasabi 2, Wasabi 1,
    equal-output. A Whirlpool Tx0 (premix outputs at pool + fee) is vetoed before the generic
    equal-output rule: it has equal outputs but a single owner. (Wasabi 1 is checked before the veto
    because 2018 rounds used a ~0.05 BTC base that sits in the 0.05 BTC pool's premix range.)"""
    inputs, outputs = list(input_values), list(output_values)
    for matcher in (match_whirlpool, match_wasabi2, match_wasabi1):
        found = matcher(inputs, outputs)
        if found is not None:
            return found
    if match_whirlpool_tx0(inputs, outputs) is not None:
        return None
    return match_equal_output(inputs, outputs)


def match_dust_batch(output_values: Iterable[int], *, dust_sat: int = DUST_OUTPUT_SAT) -> DustMatch | None:
    """Dust batch (am-i-exposed): at least 5 outputs below ``dust_sat`` making up more than half the outputs."""
    outputs = _values(output_values, "output_values")
    dust = sum(1 for v in outputs if v < dust_sat)
    if dust < DUST_BATCH_MIN_OUTPUTS or dust * 2 <= len(outputs):
        return None
    return DustMatch(dust, len(outputs), f"dust_batch: {dust}/{len(outputs)} outputs below {dust_sat} sat")


# --- counts and totals only -------------------------------------------------------------------


def whirlpool_from_totals(input_count: int, output_count: int, output_total: int) -> bool:
    """Whirlpool shape from counts and totals: n inputs = n outputs in 5..8 and output_total = n x pool."""
    if input_count != output_count or not WHIRLPOOL_MIN_PARTICIPANTS <= output_count <= WHIRLPOOL_MAX_PARTICIPANTS:
        return False
    return any(output_total == output_count * d for d in WHIRLPOOL_DENOMINATIONS_SAT)


def large_coinjoin_from_counts(
    input_count: int,
    output_count: int,
    output_total: int,
    *,
    min_inputs: int = LARGE_COINJOIN_MIN_INPUTS,
    min_outputs: int = LARGE_COINJOIN_MIN_OUTPUTS,
    output_input_ratio: tuple[float, float] = LARGE_COINJOIN_OUTPUT_INPUT_RATIO,
    min_mean_output_sat: int = WASABI2_MIN_OUTPUT_SAT,
) -> bool:
    """Many-party CoinJoin shape from counts: many inputs and outputs, outputs/inputs in a balanced
    range (a consolidation or a payout batch is far outside it), and a mean output of at least the
    Wasabi 2 minimum (a dust spray is not a CoinJoin)."""
    if input_count < min_inputs or output_count < min_outputs:
        return False
    low, high = output_input_ratio
    if not low <= output_count / input_count <= high:
        return False
    return output_total >= min_mean_output_sat * output_count


def dust_fanout_from_totals(
    output_count: int, output_total: int, *, dust_sat: int = DUST_OUTPUT_SAT, min_outputs: int = DUST_BATCH_MIN_OUTPUTS
) -> bool:
    """Dust fan-out from totals: at least ``min_outputs`` outputs with a mean below ``dust_sat``.

    Exact for the sprays seen on chain (e.g. 500 outputs x 330 sat = 165,000); a transaction with
    one large and many zero-value outputs would need per-output values to be told apart."""
    return output_count >= min_outputs and output_total < dust_sat * output_count
