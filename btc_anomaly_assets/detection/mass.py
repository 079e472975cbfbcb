"""Evidence for cluster scoring: members (how many) and mass (how much), each against its baseline.

A shape group of a minute (all its fan-out batch payouts, say) is scored on:

- ``members``: the v1 rule. ``score = members / expected`` with ``expected`` = the pattern's pooled
  share of past transactions x the minute's transactions, plus the count rule (``burst_count_ratio``
  times the usual members per unit). With priors, the share and the usual count blend the prior's
  with history's (``priors.blend``), so there is no warm-up; without priors the v1 warm-up of
  ``burst_warmup_units`` past units applies.
- mass (``MASS_EVIDENCE``): ``weight_share`` (members' weight over the minute's weight; for
  first-seen minutes that is the share of the minute's vbytes), ``inputs`` consumed, ``outputs``
  created and ``value_btc`` moved (the last three per unit). Each is divided by a *reference*: the
  upper end of the real range. The prior says what the largest real unit showed (``Level.high``,
  or ``median + mass_tail_k x spread`` when larger: ``prior_top``); history says
  ``median(past units) + (top - median)`` (for a pattern present in fewer than half
  of the real units, the largest past unit); the two are blended with the prior's weight
  ``1 - n / full`` and the reference never drops below the prior's top, so a quiet stretch
  cannot make an ordinary block look like a storm, while a busier market raises the bar.
  ``score = value / reference``: 1 is the largest real unit; graded by ``mass_thresholds``.

The same reference rule scores similar bursts on the largest identical group per unit
(``btc_anomaly_assets.detection.similar``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from btc_anomaly_assets.common.schema import SATOSHI_PER_BTC, severity_rank
from btc_anomaly_assets.detection.config import ClusterConfig
from btc_anomaly_assets.detection.priors import (
    SOURCE_BOTH,
    SOURCE_PRIOR,
    Level,
    blend,
    prior_weight,
    source_of,
)

EVIDENCE_MEMBERS = "members"
EVIDENCE_LABEL = "label"
EVIDENCE_LARGEST_GROUP = "largest_group"
MASS_EVIDENCE = ("weight_share", "inputs", "outputs", "value_btc")
# The mass each shape is judged on: what it creates or consumes. A consolidation's value is whoever
# consolidates (4,244 BTC in one real block; a whale is the EWMA's business), a fan-out's or dust
# spray's inputs say nothing about the storm.
PATTERN_MASS_EVIDENCE = {
    "coinjoin": MASS_EVIDENCE,
    "dust_fanout": ("weight_share", "outputs"),
    "fan_in_consolidation": ("weight_share", "inputs"),
    "fan_out_batch": ("weight_share", "outputs", "value_btc"),
}


@dataclass(frozen=True)
class Evidence:
    """One scored evidence of a cluster."""

    name: str
    value: float
    score: float
    severity: str
    source: str | None
    note: str


@dataclass(frozen=True)
class Reference:
    value: float
    source: str


def prior_top(level: Level, tail_k: float) -> float:
    """The prior's upper end of the real range: the largest real unit, or ``median + tail_k x
    spread`` when that is larger (a heavy tail sampled by a few dozen units: measured on one day,
    the consolidation range ended at 52 % of a block's weight and 5,735 inputs; the other day
    reached 75 % and 10,721)."""
    return max(level.high, level.median + tail_k * level.scale)


def reference_high(level: Level | None, history: np.ndarray, full_units: int, tail_k: float = 4.0) -> Reference | None:
    """The upper end of the usual range for one evidence (see the module docstring); None when the
    priors have no usable level for it."""
    if level is None or level.high <= 0:
        return None
    top = prior_top(level, tail_k)
    history = np.asarray(history, dtype=float)
    if history.size == 0:
        return Reference(top, SOURCE_PRIOR)
    if level.common:
        # Shifted, not scaled: heavy tails (dust outputs: median 37, top 1,017) would turn a busy
        # history median into a bar no storm reaches.
        from_history = float(np.median(history)) + (top - level.median)
    else:
        from_history = float(np.max(history))
    weight = prior_weight(int(history.size), full_units)
    blended = blend(top, from_history, weight)
    source = source_of(weight)
    if blended < top:
        # The prior's upper end is the floor: history did not raise it, so the prior decided.
        return Reference(top, SOURCE_BOTH)
    return Reference(blended, source)


def score_against(name: str, value: float, reference: Reference | None, config: ClusterConfig, unit: str) -> Evidence | None:
    if reference is None:
        return None
    score = value / reference.value
    severity = config.mass_thresholds.grade(score)
    note = f"{name} {_fmt(value)}{unit} = {score:.2f}x the real range's top {_fmt(reference.value)} [{reference.source}]"
    return Evidence(name, float(value), float(score), severity, reference.source, note)


def _fmt(value: float) -> str:
    if abs(value) < 1:
        return f"{value:.3f}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


@dataclass(frozen=True)
class UnitMass:
    """Per comparison unit (block or minute), per shape pattern: members, weight, inputs, outputs, value."""

    unit_weight: np.ndarray
    per_pattern: dict[str, dict[str, np.ndarray]]

    def history(self, pattern: str, evidence: str, past: np.ndarray) -> np.ndarray:
        if evidence == "weight_share":
            weights = self.unit_weight[past]
            with np.errstate(divide="ignore", invalid="ignore"):
                shares = self.per_pattern[pattern]["weight"][past] / weights
            return shares[np.isfinite(shares)]
        return self.per_pattern[pattern][evidence][past]


def unit_mass(row_unit: np.ndarray, n_units: int, frame, shapes: np.ndarray, patterns) -> UnitMass:
    """Sum the mass of every pattern per unit (``row_unit``: each row's unit index)."""
    weight = frame["weight"].to_numpy(dtype=float)
    columns = {
        "members": np.ones(len(frame)),
        "weight": weight,
        "inputs": frame["input_count"].to_numpy(dtype=float),
        "outputs": frame["output_count"].to_numpy(dtype=float),
        "value_btc": frame["output_total"].to_numpy(dtype=float) / SATOSHI_PER_BTC,
    }
    per_pattern = {}
    for pattern in patterns:
        mask = shapes == pattern
        per_pattern[pattern] = {
            name: np.bincount(row_unit[mask], weights=values[mask], minlength=n_units) for name, values in columns.items()
        }
    return UnitMass(np.bincount(row_unit, weights=weight, minlength=n_units), per_pattern)


def minute_mass(members, minute_weight: float, minute_units: int) -> dict[str, float]:
    """The mass evidence of one minute's group (per unit, weight share over the whole minute)."""
    units = max(minute_units, 1)
    return {
        "weight_share": float(members["weight"].sum()) / minute_weight if minute_weight > 0 else 0.0,
        "inputs": float(members["input_count"].sum()) / units,
        "outputs": float(members["output_count"].sum()) / units,
        "value_btc": float(members["output_total"].sum()) / SATOSHI_PER_BTC / units,
    }


# --- members (the v1 burst rule, with priors) -----------------------------------------------


@dataclass(frozen=True)
class Burst:
    score: float
    baseline: float
    severity: str
    note: str
    source: str | None = None


@dataclass(frozen=True)
class History:
    """A pattern's members and the transactions in each past unit of the lookback (aligned arrays)."""

    counts: np.ndarray
    sizes: np.ndarray

    @property
    def units(self) -> int:
        return int(self.counts.size)

    def pooled_share(self) -> float:
        """All past members over all past transactions: big blocks weigh as much as they hold."""
        return float(self.counts.sum() / self.sizes.sum())

    def mean_share(self) -> float:
        return float(np.mean(self.counts / self.sizes))


@dataclass(frozen=True)
class MemberPrior:
    """The prior for the members rule: pooled share and usual (median) members per unit."""

    share: float
    usual: float
    full_units: int


def member_burst(
    members: int,
    minute_size: int,
    minute_units: int,
    history: History,
    *,
    signature: bool,
    expected_floor: float,
    config: ClusterConfig,
    prior: MemberPrior | None = None,
) -> Burst:
    """Grade ``members`` of a minute with ``minute_size`` transactions in ``minute_units`` units
    against the pattern's ``history`` (see ``ClusterConfig``: share score, and for shapes the count
    rule), blended with ``prior`` when given."""
    if prior is None:
        return _history_burst(members, minute_size, minute_units, history, signature=signature,
                              expected_floor=expected_floor, config=config)
    weight = prior_weight(history.units, prior.full_units)
    source = source_of(weight)
    share = blend(prior.share, history.pooled_share() if history.units else None, weight)
    expected = max(share * minute_size, expected_floor)
    score = members / expected
    if members < config.burst_min_members:
        note = f"{score:.1f}x the expected {expected:.1f}, but a burst needs {config.burst_min_members} members"
        return Burst(score, expected, "info", note, source)
    severity = config.burst_thresholds.grade(score)
    note = f"{score:.1f}x the expected {expected:.1f} (share {share:.4f} [{source}], {history.units} past units)"
    usual = max(blend(prior.usual, float(np.median(history.counts)) if history.units else None, weight) * minute_units,
                expected_floor)
    count_ratio = members / usual
    note += f"; {count_ratio:.1f}x the usual {usual:.1f} per {minute_units} unit(s)"
    if count_ratio >= config.burst_count_ratio and severity == "low":
        severity = "medium"
        note += f", >= {config.burst_count_ratio:g}x the usual count with a share score >= {config.burst_thresholds.low:g}"
    return Burst(score, expected, severity, note, source)


def _history_burst(members, minute_size, minute_units, history: History, *, signature, expected_floor, config) -> Burst:
    if history.units == 0:
        return Burst(float("nan"), float("nan"), "info", "no past units to compare with")
    share, statistic = (history.mean_share(), "mean") if signature else (history.pooled_share(), "pooled")
    expected = max(share * minute_size, expected_floor)
    score = members / expected
    if history.units < config.burst_warmup_units:
        return Burst(score, expected, "info", f"warm-up: {history.units}/{config.burst_warmup_units} past units", "history")
    if members < config.burst_min_members:
        note = f"{score:.1f}x the expected {expected:.1f}, but a burst needs {config.burst_min_members} members"
        return Burst(score, expected, "info", note, "history")
    severity = config.burst_thresholds.grade(score)
    note = f"{score:.1f}x the expected {expected:.1f} ({statistic} share {share:.4f} over {history.units} past units)"
    if signature:
        return Burst(score, expected, severity, note, "history")
    usual = max(float(np.median(history.counts)) * minute_units, expected_floor)
    count_ratio = members / usual
    note += f"; {count_ratio:.1f}x the usual {usual:.1f} per {minute_units} unit(s) (median count)"
    if count_ratio >= config.burst_count_ratio and severity == "low":
        # The share is already unusual (low); this many per unit on top makes it a storm.
        severity = "medium"
        note += f", >= {config.burst_count_ratio:g}x the usual count with a share score >= {config.burst_thresholds.low:g}"
    return Burst(score, expected, severity, note, "history")


# --- the verdict of a cluster ---------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Everything a cluster row needs besides its members."""

    severity: str
    rule: str
    score: float
    baseline: float
    source: str | None
    evidence: str | None
    evidence_score: float


def strongest(evidence: list[Evidence]) -> Evidence | None:
    """The evidence with the highest severity (ties: members first, then the higher score)."""
    if not evidence:
        return None
    return max(evidence, key=lambda e: (severity_rank(e.severity), e.name == EVIDENCE_MEMBERS,
                                        0.0 if e.name == EVIDENCE_MEMBERS else e.score))
