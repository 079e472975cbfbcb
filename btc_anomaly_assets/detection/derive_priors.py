"""Derive the priors table (``btc_anomaly_assets.detection.priors``) from real transactions.

``derive_priors(inputs)`` takes, per time basis, the raw transactions (RAW_TRANSACTION_COLUMNS) and
their minute aggregates (MINUTE_AGGREGATE_COLUMNS), and measures per comparison unit (a block for
``block``, a minute for ``first_seen``) exactly what the detectors compare:

- per shape pattern (``clusters.classify_shapes``): members, weight share, inputs, outputs and
  value per unit, and the pooled share of transactions; for ``similar_burst`` the largest group
  of identical non-dust transactions per unit (``similar.largest_group_per_unit``);
- per EWMA metric (``EwmaConfig.metrics``): the per-unit values in the metric's own units, as the
  EWMA scores them (``ewma.metric_observations``).

Each statistic is summarised as a ``priors.Level`` (median, largest, mean, 1.4826 x MAD, units),
rounded to 6 significant digits so a re-derivation reproduces the file byte for byte. Pure: the
caller (``benchmarks/derive_priors.py``) reads the files and writes the JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from btc_anomaly_assets.common.schema import single_time_basis
from btc_anomaly_assets.detection.clusters import DEFAULT_CLUSTER_CONFIG, SHAPE_PATTERNS, classify_shapes
from btc_anomaly_assets.detection.config import PATTERN_SIMILAR_BURST, ClusterConfig, EwmaConfig
from btc_anomaly_assets.detection.ewma import DEFAULT_EWMA_CONFIG, MAD_TO_SIGMA, metric_observations
from btc_anomaly_assets.detection.mass import EVIDENCE_LARGEST_GROUP, MASS_EVIDENCE, unit_mass
from btc_anomaly_assets.detection.priors import PRIORS_FORMAT
from btc_anomaly_assets.detection.similar import largest_group_per_unit, non_dust, signature_codes
from btc_anomaly_assets.detection.units import build_units

SIGNIFICANT_DIGITS = 6


@dataclass(frozen=True)
class BasisInput:
    """The real data of one time basis: raw transactions and the minute aggregates built from them."""

    raw: pd.DataFrame
    aggregates: pd.DataFrame


def _round(value: float) -> float:
    value = float(value)
    if value == 0 or not np.isfinite(value):
        return 0.0 if not np.isfinite(value) else value
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def level(values) -> dict:
    """Median, largest, mean, robust spread and count of ``values`` (finite ones), rounded."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("a prior level needs at least one finite value")
    median = float(np.median(values))
    return {
        "median": _round(median),
        "high": _round(values.max()),
        "mean": _round(values.mean()),
        "scale": _round(MAD_TO_SIGMA * float(np.median(np.abs(values - median)))),
        "units": int(values.size),
    }


def pattern_priors(raw: pd.DataFrame, config: ClusterConfig = DEFAULT_CLUSTER_CONFIG) -> tuple[int, dict]:
    """(units, per-pattern levels) of one time basis's raw transactions."""
    basis = single_time_basis(raw["time_basis"], "priors input")
    frame = raw[~raw["is_coinbase"].astype(bool)].reset_index(drop=True)
    shapes = classify_shapes(frame, config).to_numpy()
    units = build_units(frame, basis)
    n_units = units.unit_keys.size
    masses = unit_mass(units.row_unit, n_units, frame, shapes, SHAPE_PATTERNS)
    patterns: dict[str, dict] = {}
    for pattern in SHAPE_PATTERNS:
        sums = masses.per_pattern[pattern]
        entry = {
            "pooled_share": _round(sums["members"].sum() / units.unit_sizes.sum()),
            "members": level(sums["members"]),
        }
        for name in MASS_EVIDENCE:
            values = sums["weight"] / masses.unit_weight if name == "weight_share" else sums[name]
            entry[name] = level(values)
        patterns[pattern] = entry
    largest = largest_group_per_unit(units.row_unit, n_units, signature_codes(frame),
                                     non_dust(frame, config.dust_output_sat))
    patterns[PATTERN_SIMILAR_BURST] = {EVIDENCE_LARGEST_GROUP: level(largest)}
    return int(n_units), patterns


def metric_priors(aggregates: pd.DataFrame, config: EwmaConfig = DEFAULT_EWMA_CONFIG) -> dict:
    """Per EWMA metric, the level of its per-unit observations (metric units; the spread floored at
    the metric's ``min_scale`` as the detector floors it)."""
    out = {}
    for spec, values in metric_observations(aggregates, config).items():
        entry = level(values)
        entry["scale"] = _round(max(entry["scale"], spec.min_scale, spec.relative_min_scale * abs(entry["median"])))
        out[spec.name] = entry
    return out


def derive_priors(inputs: dict[str, BasisInput], *, version: str, source: dict) -> dict:
    """The priors table for ``inputs`` (time basis -> its data); ``source`` says where the data came from."""
    bases = {}
    for basis, data in sorted(inputs.items()):
        units, patterns = pattern_priors(data.raw)
        bases[basis] = {"units": units, "patterns": patterns, "metrics": metric_priors(data.aggregates)}
    return {"format": PRIORS_FORMAT, "version": version, "source": source, "bases": bases}


def to_json(table: dict) -> str:
    """The table as the file stores it (sorted keys, 1-space indent, trailing newline)."""
    return json.dumps(table, indent=1, sort_keys=True) + "\n"
