"""Settings for the detection library: modes, thresholds and severities (plain frozen dataclasses).

Two modes share one output contract:

- ``default``: causal, robust, time-basis aware (see ``btc_anomaly_assets.detection.ewma`` and
  ``btc_anomaly_assets.detection.clusters`` for what is compared with what).
- ``seed_parity``: the original tutorial's algorithms, exactly, for regression comparison.

Everything an operator may want to tune is a field here, so the Dagster layer can expose these
dataclasses as run config without the library knowing about Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from btc_anomaly_assets.common.schema import SEVERITIES, severity_rank
from btc_anomaly_assets.detection.priors import Priors, builtin_priors

MODE_DEFAULT = "default"
MODE_SEED_PARITY = "seed_parity"
MODES = (MODE_DEFAULT, MODE_SEED_PARITY)

TRANSFORM_LINEAR = "linear"
TRANSFORM_LOG10 = "log10"
DIRECTION_UP = "up"
DIRECTION_BOTH = "both"
SIMILAR_BASELINE_PATTERN = "pattern"
SIMILAR_BASELINE_SIGNATURE = "signature"


def _check_severity(value: str, what: str) -> None:
    if value not in SEVERITIES:
        raise ValueError(f"{what}={value!r} is not a severity; expected one of {SEVERITIES}")


def _check_mode(mode: str, what: str) -> None:
    if mode not in MODES:
        raise ValueError(f"{what}={mode!r} is not a detection mode; expected one of {MODES}")


@dataclass(frozen=True)
class SeverityThresholds:
    """Cut-offs for ``low``/``medium``/``high`` on a score that grows with strangeness.

    ``grade(x)`` returns the highest severity whose cut-off ``x`` reaches (``info`` below ``low``).
    """

    low: float
    medium: float
    high: float

    def __post_init__(self) -> None:
        if not (0 < self.low <= self.medium <= self.high):
            raise ValueError(f"thresholds must satisfy 0 < low <= medium <= high, got {self}")

    def grade(self, score: float) -> str:
        if score >= self.high:
            return "high"
        if score >= self.medium:
            return "medium"
        if score >= self.low:
            return "low"
        return "info"

    def cutoff(self, severity: str) -> float:
        """The threshold that ``severity`` needs (for rule texts)."""
        return {"low": self.low, "medium": self.medium, "high": self.high}[severity]


@dataclass(frozen=True)
class MetricSpec:
    """One scored metric of the minute aggregates.

    ``column``: the MINUTE_AGGREGATE_COLUMNS column read.
    ``transform``: ``linear`` or ``log10``. Amounts and fee rates are multiplicative (a block moving
    10x the usual value is as strange whether the usual is 100 or 1,000 BTC), so they are scored on
    log10; the output metric is then named ``log10_<column>`` and value/baseline/deviation/scale are
    in log10 units, which keeps ``z = deviation / scale`` exact.
    ``per_block``: with time basis ``block``, divide by the minute's block count (a minute holding
    two blocks is compared per block, like with like). Only for additive metrics.
    ``direction``: ``up`` grades only increases; ``both`` grades decreases too (``first_seen_direction``
    overrides it for a first-seen series, where an arrival drop is meaningful).
    ``min_scale``: smallest spread used (metric units after transform) so z stays finite and a
    flat history does not turn noise into alarms.
    ``relative_min_scale``: for linear metrics, smallest spread as a fraction of the baseline.
    ``ratio_rule``: also grade ``value / baseline`` (natural units) with ``EwmaConfig.ratio_thresholds``;
    this needs only ``ratio_min_history`` past observations, so a huge outlier is seen during warm-up.
    ``ratio_denominator_floor``: the ratio's baseline is at least this (natural units), so a tiny
    previous block cannot make an ordinary one look like a 30x event.
    ``ratio_thresholds``: per-metric cut-offs of the ratio rule (default ``EwmaConfig.ratio_thresholds``).
    ``prior_range_margin`` (v2, metric units): while the prior still weighs in (short history), a
    value above the largest real unit of the priors (``Level.high``) by this margin is medium, by
    twice it high. The prior's spread across both real days is wide (median fee rates 0.3-4
    sat/vB), so at cold start a z-score alone cannot tell 30 sat/vB from an ordinary day; being
    2x above anything the real blocks showed can.
    ``counts_empty_minutes``: a minute without transactions is an observation of this metric (the
    arrival count: zero arrivals is news). Otherwise such a minute is not scored for it
    (``not_scored:no_transactions``): statistics are NULL there anyway, and a count of fee
    outliers among no transactions says nothing and would only drag the baseline down.
    """

    column: str
    transform: str = TRANSFORM_LINEAR
    per_block: bool = False
    direction: str = DIRECTION_UP
    first_seen_direction: str | None = None
    min_scale: float = 0.0
    relative_min_scale: float = 0.0
    ratio_rule: bool = False
    ratio_min_history: int = 1
    ratio_denominator_floor: float = 0.0
    counts_empty_minutes: bool = False
    ratio_thresholds: SeverityThresholds | None = None
    prior_range_margin: float | None = None

    def __post_init__(self) -> None:
        if self.transform not in (TRANSFORM_LINEAR, TRANSFORM_LOG10):
            raise ValueError(f"metric {self.column}: transform {self.transform!r} is not 'linear' or 'log10'")
        for name in ("direction", "first_seen_direction"):
            value = getattr(self, name)
            if value is not None and value not in (DIRECTION_UP, DIRECTION_BOTH):
                raise ValueError(f"metric {self.column}: {name} {value!r} is not 'up' or 'both'")
        if self.min_scale <= 0 and self.relative_min_scale <= 0:
            raise ValueError(f"metric {self.column}: needs min_scale > 0 or relative_min_scale > 0 (finite z)")
        if self.ratio_min_history < 1:
            raise ValueError(f"metric {self.column}: ratio_min_history must be >= 1")

    @property
    def name(self) -> str:
        """The ``metric`` value written in the output rows."""
        return f"log10_{self.column}" if self.transform == TRANSFORM_LOG10 else self.column

    def direction_for(self, time_basis: str | None) -> str:
        if time_basis == "first_seen" and self.first_seen_direction is not None:
            return self.first_seen_direction
        return self.direction


LOG10_2 = 0.30103

DEFAULT_METRICS: tuple[MetricSpec, ...] = (
    # Counts are bounded by block space, so their spread is additive: linear scale.
    MetricSpec("tx_count", per_block=True, direction=DIRECTION_UP, first_seen_direction=DIRECTION_BOTH,
               min_scale=1.0, relative_min_scale=0.1, counts_empty_minutes=True),
    MetricSpec("total_value_btc", transform=TRANSFORM_LOG10, per_block=True, min_scale=0.1,
               ratio_rule=True, ratio_min_history=3, ratio_denominator_floor=500.0),
    # The largest transaction of a real block is at most 2.6x the usual largest except for the real
    # whales (10-103x: 3,021 / 4,960 / 19,6xx BTC), so its ratio cut-offs are 3 / 4 / 8 (v2); 4,
    # not 5, because a recent whale lifts the (winsorised) baseline: 3,000 BTC two blocks after a
    # 4,960 BTC one is 4.4x.
    MetricSpec("max_value_btc", transform=TRANSFORM_LOG10, min_scale=0.1,
               ratio_rule=True, ratio_min_history=1, ratio_denominator_floor=50.0,
               ratio_thresholds=SeverityThresholds(3.0, 4.0, 8.0)),
    MetricSpec("median_fee_rate_sat_vb", transform=TRANSFORM_LOG10, min_scale=0.1, prior_range_margin=LOG10_2),
    MetricSpec("p90_fee_rate_sat_vb", transform=TRANSFORM_LOG10, min_scale=0.1, prior_range_margin=LOG10_2),
    MetricSpec("p99_fee_rate_sat_vb", transform=TRANSFORM_LOG10, min_scale=0.1, prior_range_margin=LOG10_2),
    # Transactions paying >= 20x the minute's median fee rate, per block (see aggregates_sql). A
    # percentile cannot see 200 such payers in a 5,000-transaction block (they are 4% of it, and
    # p99 naturally ranges 9-91x the median); their count can. Linear: the count is 1-102 per real
    # block and swings by tens between neighbours (blocks whose median sits at the ~0.3 sat/vB
    # floor have 50-100), so the spread is at least 20. Measured on 13-14 Aug 2025: an ordinary
    # block scores at most z 3.9 (low), +200 injected payers at least 5.8 (medium).
    MetricSpec("fee_outlier_tx_count", per_block=True, min_scale=20.0),
)


@dataclass(frozen=True)
class EwmaConfig:
    """Settings of ``detect_ewma_anomalies``.

    Default mode (see ``btc_anomaly_assets.detection.ewma`` for the full rationale):

    - ``block_span`` / ``first_seen_span``: EWMA span (alpha = 2 / (span + 1)) counted in past
      block-minutes (time basis ``block``) or in past minutes (``first_seen``). 12 block-minutes
      is about two hours of blocks. Arrival rates change whenever the fee market or a big sender
      changes, so the first-seen baseline follows the last ~10 minutes; with 30 it still carried
      the previous regime and missed a 5x surge in 12 of 29 tried minutes, with 10 in 7.
    - ``lookback_minutes``: only observations in ``[t - lookback, t)`` inform minute ``t``. This is
      what makes the result independent of where a run's window starts; the Dagster asset must load
      this many minutes before its window (``EWMA_LOOKBACK_MINUTES``).
    - ``block_warmup`` / ``first_seen_warmup``: past observations needed before a z-score may set a
      severity (ratio rules need fewer, see ``MetricSpec``).
    - ``winsor_k``: past values are clipped to median +/- k * 1.4826 * MAD of the history before
      the EW mean/variance, so one past whale or spike cannot inflate the baseline or the spread.
    - ``z_thresholds``: robust z for low/medium/high. 3/5/8 rather than the tutorial's |z| > 2,
      which flags ~4.6% of pure noise by construction.
    - ``ratio_thresholds``: value / baseline for the metrics with ``ratio_rule``; 10x the usual
      total or largest transaction is medium, 30x high.

    Seed-parity mode: ``seed_alpha`` (0.3, pandas ``adjust=True``), ``seed_z_threshold`` (|z| > 2)
    and the severity given to a flagged minute (``seed_flag_severity``; the tutorial alerted on
    every flag, so ``medium``).
    """

    mode: str = MODE_DEFAULT
    metrics: tuple[MetricSpec, ...] = DEFAULT_METRICS
    block_span: float = 12.0
    first_seen_span: float = 10.0
    lookback_minutes: int = 360
    block_warmup: int = 6
    first_seen_warmup: int = 30
    winsor_k: float = 3.0
    z_thresholds: SeverityThresholds = field(default_factory=lambda: SeverityThresholds(3.0, 5.0, 8.0))
    ratio_thresholds: SeverityThresholds = field(default_factory=lambda: SeverityThresholds(5.0, 10.0, 30.0))
    seed_alpha: float = 0.3
    seed_z_threshold: float = 2.0
    seed_flag_severity: str = "medium"
    # Detection v2: starting levels from the shipped priors table, blended with history until
    # the warm-up length is reached (btc_anomaly_assets.detection.priors); None is v1 (warm-up).
    priors: Priors | None = field(default_factory=builtin_priors)

    def __post_init__(self) -> None:
        _check_mode(self.mode, "EwmaConfig.mode")
        _check_severity(self.seed_flag_severity, "EwmaConfig.seed_flag_severity")
        if not self.metrics:
            raise ValueError("EwmaConfig.metrics is empty; at least one metric must be scored")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"EwmaConfig.metrics has duplicate metric names: {names}")
        if self.block_span < 1 or self.first_seen_span < 1:
            raise ValueError("EWMA spans must be >= 1 observation")
        if self.lookback_minutes < 1:
            raise ValueError("EwmaConfig.lookback_minutes must be >= 1")
        if self.block_warmup < 1 or self.first_seen_warmup < 1:
            raise ValueError("warm-up lengths must be >= 1 observation")
        if self.winsor_k <= 0:
            raise ValueError("EwmaConfig.winsor_k must be > 0")
        if not 0 < self.seed_alpha <= 1:
            raise ValueError("EwmaConfig.seed_alpha must be in (0, 1]")

    def v1(self) -> EwmaConfig:
        """The same settings without priors (v1: warm-up before a z-score may grade)."""
        return replace(self, priors=None)


# Cluster patterns (values of the ``pattern`` column).
PATTERN_COINJOIN = "coinjoin"
PATTERN_DUST_FANOUT = "dust_fanout"
PATTERN_FAN_IN = "fan_in_consolidation"
PATTERN_FAN_OUT = "fan_out_batch"
PATTERN_SIMILAR_BURST = "similar_burst"
PATTERN_SEED = "seed_fan_in_out"
DEFAULT_PATTERNS = (PATTERN_COINJOIN, PATTERN_DUST_FANOUT, PATTERN_FAN_IN, PATTERN_FAN_OUT, PATTERN_SIMILAR_BURST)


@dataclass(frozen=True)
class LabelSeverities:
    """Severity a labelled pattern gets just for being present (before any burst escalation).

    Who reads the output decides these, not the detector:

    - A CoinJoin is lawful privacy tooling and, on today's chain, routine: the real 13-14 Aug 2025
      excerpt has a Wasabi-2-sized round in 6 of its 31 blocks. It breaks common-input clustering,
      so it is always labelled. A compliance team treats mixing as a risk signal and wants every
      round alerted (``COMPLIANCE_LABEL_SEVERITIES``: medium); a privacy researcher studies mixing
      and wants no alert at all (``PRIVACY_RESEARCH_LABEL_SEVERITIES``: info).
    - A mass dust fan-out (one transaction with >= ``ClusterConfig.dust_mass_outputs`` outputs at
      the dust limit, e.g. 500 x 330 sat) is the shape of a dusting or address-poisoning campaign,
      or of a token distribution: it costs recipients privacy and fees and bloats the UTXO set. The
      excerpt has one in 7 of 31 blocks. Both presets alert it (medium): compliance for poisoning
      scams, privacy research for deanonymisation by dust. Smaller dust batches (``dust_small``)
      are common inscription change and stay info.
    - The neutral default labels both CoinJoins and mass dust fan-outs ``low``: visible in the
      table, to the explainer and on dashboards, but not alerted (alerts start at medium), because
      at ~1.5 per hour each they would teach analysts to ignore alerts. What the default does alert
      is a *surge* of either against its own baseline (the burst rule, as for every pattern), which
      is the anomaly the domain notes recommend alerting on.
    - Consolidations, batch payouts and similar-transaction groups are everyday exchange and wallet
      housekeeping: ``info`` unless their own burst rule says otherwise.
    """

    coinjoin: str = "low"
    dust_fanout: str = "low"
    dust_small: str = "info"
    fan_in_consolidation: str = "info"
    fan_out_batch: str = "info"
    similar_burst: str = "info"

    def __post_init__(self) -> None:
        for name in ("coinjoin", "dust_fanout", "dust_small", "fan_in_consolidation", "fan_out_batch", "similar_burst"):
            _check_severity(getattr(self, name), f"LabelSeverities.{name}")

    def for_pattern(self, pattern: str) -> str:
        return getattr(self, pattern)


DEFAULT_LABEL_SEVERITIES = LabelSeverities()
COMPLIANCE_LABEL_SEVERITIES = LabelSeverities(coinjoin="medium", dust_fanout="medium", dust_small="low")
PRIVACY_RESEARCH_LABEL_SEVERITIES = LabelSeverities(coinjoin="info", dust_fanout="medium", dust_small="low")
LABEL_SEVERITY_PRESETS = {
    "default": DEFAULT_LABEL_SEVERITIES,
    "compliance": COMPLIANCE_LABEL_SEVERITIES,
    "privacy_research": PRIVACY_RESEARCH_LABEL_SEVERITIES,
}


@dataclass(frozen=True)
class ClusterConfig:
    """Settings of ``detect_coordinated_clusters``.

    Shape rules (per transaction, from counts and totals; published heuristics, BITCOIN_DOMAIN 2.3-2.5):

    - ``consolidation_ratio``: inputs / outputs >= 5 is a fan-in consolidation (mempool.space).
    - ``batch_ratio``: inputs / outputs <= 0.2 is a fan-out batch payout (mempool.space).
    - ``dust_output_sat`` / ``dust_min_outputs``: >= 5 outputs whose mean is below 1,000 sat is a
      dust fan-out (am-i-exposed: >= 5 dust outputs, dust < 1,000 sat); ``dust_mass_outputs`` (100)
      dust outputs make it a *mass* fan-out that gets ``labels.dust_fanout``.
    - ``coinjoin_min_inputs`` / ``coinjoin_min_outputs`` / ``coinjoin_output_input_ratio`` /
      ``coinjoin_min_mean_output_sat``: a many-party CoinJoin shape when counts alone are known
      (see ``coinjoin.large_coinjoin_from_counts``); Whirlpool is recognised exactly from totals.
    - ``burst_min_members``: a consolidation / batch / similar-transaction group needs this many
      members in the minute to be reported at all, and any pattern needs it to be escalated by the
      burst rule (four small dust batches in a block are not a surge).
    - ``similar_expected_floor``: a transaction signature never seen before is still expected up to
      5 times per unit, so 20 identical transactions score 4 (medium) and 40 score 8 (high).
    - ``dust_valued_burst_cap``: a similar-transaction group whose mean output is below the dust
      line (inscription and token mints: the excerpt has groups of 100-200 identical 294/330/546-sat
      transactions in most blocks) is capped at this severity.

    Burst rule: the members in the minute are compared with the pattern's own history in the past
    units (a block for time basis ``block``, a minute for ``first_seen``) of the last
    ``lookback_minutes``, once ``burst_warmup_units`` past units exist.

    - Share (``score``, graded with ``burst_thresholds``): for a shape pattern, the *pooled* share
      of the past units (all their members over all their transactions) times the minute's
      transactions (at least ``burst_expected_floor``) is the expected count, and
      ``score = members / expected``. Pooled, not the median of per-unit shares: small blocks
      mined minutes after their predecessor (260-620 transactions, 14-23 of them batch payouts)
      made the median share 3-4x the share in a full block, which hid a 10-fold batch storm in 4
      of 23 real blocks. For a similar-transaction signature, absent from most units, the mean
      per-unit share. On the 31 real blocks the natural score reaches 3.5 (consolidations 3.0),
      so medium starts at 4.
    - Count (``burst_count_ratio``, shape patterns only): ``members / (median members per past
      unit x units in the minute)``. Full blocks hold a bounded number of transactions, so batch
      payouts per block do not follow the transaction count, and share alone cannot tell a
      10-fold storm right after a busy block (909774: 220 batch payouts, 3.6x the pooled share)
      from the real 225 that followed a 43-minute gap (909779: 3.5x). Their counts can: 10x the
      usual 22 per block, against at most 6.25x in the real blocks (3.8x for consolidations). At
      ``burst_count_ratio`` (8) times the usual count a group is at least medium, provided its
      share score is at least low: when all traffic surges, counts rise but shares do not, and
      that is a transaction-count anomaly, not a storm of one shape.

    Detection v2 (``v1()`` returns the same config with all of it off):

    - ``priors``: the shipped table (``priors.builtin_priors``); the members rule blends its share
      and usual count with history (prior weight ``1 - n / burst_warmup_units``), so there is no
      warm-up and from ``burst_warmup_units`` past units on it is exactly v1. Mass and largest-group
      references trust history from ``prior_full_units_block`` (6 blocks) or
      ``prior_full_units_first_seen`` (30 minutes) on.
    - ``mass_scoring``: weight share, inputs, outputs and value of each shape group against the
      real range's upper end (``mass.reference_high``), graded with ``mass_thresholds`` (1 / 1.5 /
      3: at, 1.5x and 3x the largest real unit); a group needs ``mass_min_members`` (2) members to
      be escalated by mass (one transaction is a label matter, not a storm). The real range's top
      is the largest real unit or ``median + mass_tail_k (4) x spread``, whichever is larger. A consolidation or
      batch group below ``burst_min_members`` is reported only when its mass is at least low.
    - ``similar_baseline``: ``pattern`` scores a group of identical transactions against the
      largest identical (non-dust) group per unit (prior 12 per block, at most 42 in the 31 real
      blocks) with the same reference rule; ``signature`` is v1 (each signature's own history).
      A signature present in at least ``known_service_unit_share`` of the past units is a known
      service: it stays at most low unless it holds ``known_service_ratio`` x its usual count.
    """

    mode: str = MODE_DEFAULT
    labels: LabelSeverities = DEFAULT_LABEL_SEVERITIES
    lookback_minutes: int = 360
    consolidation_ratio: float = 5.0
    batch_ratio: float = 0.2
    dust_output_sat: int = 1_000
    dust_min_outputs: int = 5
    dust_mass_outputs: int = 100
    coinjoin_min_inputs: int = 50
    coinjoin_min_outputs: int = 50
    coinjoin_output_input_ratio: tuple[float, float] = (0.5, 2.0)
    coinjoin_min_mean_output_sat: int = 5_000
    burst_min_members: int = 20
    burst_expected_floor: float = 1.0
    similar_expected_floor: float = 5.0
    dust_valued_burst_cap: str = "low"
    burst_warmup_units: int = 4
    burst_thresholds: SeverityThresholds = field(default_factory=lambda: SeverityThresholds(2.5, 4.0, 8.0))
    burst_count_ratio: float = 8.0
    seed_min_io: int = 10
    seed_min_flagged: int = 2
    seed_flag_severity: str = "medium"
    # Detection v2 (see btc_anomaly_assets.detection.mass / similar / priors; ``v1()`` turns it off).
    priors: Priors | None = field(default_factory=builtin_priors)
    prior_full_units_block: int = 6
    prior_full_units_first_seen: int = 30
    mass_scoring: bool = True
    mass_thresholds: SeverityThresholds = field(default_factory=lambda: SeverityThresholds(1.0, 1.5, 3.0))
    mass_min_members: int = 2
    mass_tail_k: float = 4.0
    similar_baseline: str = SIMILAR_BASELINE_PATTERN
    known_service_unit_share: float = 0.5
    known_service_ratio: float = 2.0

    def __post_init__(self) -> None:
        _check_mode(self.mode, "ClusterConfig.mode")
        if self.similar_baseline not in (SIMILAR_BASELINE_PATTERN, SIMILAR_BASELINE_SIGNATURE):
            raise ValueError(f"ClusterConfig.similar_baseline={self.similar_baseline!r} is not 'pattern' or 'signature'")
        if self.prior_full_units_block < 1 or self.prior_full_units_first_seen < 1 or self.mass_min_members < 1:
            raise ValueError("ClusterConfig: prior_full_units_* and mass_min_members must be >= 1")
        _check_severity(self.seed_flag_severity, "ClusterConfig.seed_flag_severity")
        _check_severity(self.dust_valued_burst_cap, "ClusterConfig.dust_valued_burst_cap")
        if self.similar_expected_floor <= 0:
            raise ValueError("ClusterConfig.similar_expected_floor must be > 0")
        if self.lookback_minutes < 1:
            raise ValueError("ClusterConfig.lookback_minutes must be >= 1")
        if not self.consolidation_ratio > 1 or not 0 < self.batch_ratio < 1:
            raise ValueError("ClusterConfig: consolidation_ratio must be > 1 and batch_ratio in (0, 1)")
        low, high = self.coinjoin_output_input_ratio
        if not 0 < low <= 1 <= high:
            raise ValueError(f"ClusterConfig.coinjoin_output_input_ratio must bracket 1, got {self.coinjoin_output_input_ratio}")
        if self.burst_min_members < 1 or self.burst_expected_floor <= 0 or self.burst_warmup_units < 1:
            raise ValueError("ClusterConfig: burst_min_members >= 1, burst_expected_floor > 0, burst_warmup_units >= 1")
        if self.burst_count_ratio <= 0:
            raise ValueError("ClusterConfig.burst_count_ratio must be > 0")
        if self.dust_min_outputs < 1 or self.dust_mass_outputs < self.dust_min_outputs:
            raise ValueError("ClusterConfig: need 1 <= dust_min_outputs <= dust_mass_outputs")

    def with_labels(self, labels: LabelSeverities) -> ClusterConfig:
        return replace(self, labels=labels)

    def v1(self) -> ClusterConfig:
        """The same settings with detection v2 off: no priors, members only, per-signature bursts."""
        return replace(self, priors=None, mass_scoring=False, similar_baseline=SIMILAR_BASELINE_SIGNATURE)

    def full_units(self, basis: str | None) -> int:
        """Past units after which history alone sets the baselines (the prior's weight is 0)."""
        return self.prior_full_units_first_seen if basis == "first_seen" else self.prior_full_units_block


def max_severity(*severities: str) -> str:
    """The most severe of ``severities`` (``info`` for none)."""
    return max(severities, key=severity_rank, default="info")
