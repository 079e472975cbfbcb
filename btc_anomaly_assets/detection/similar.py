"""Similar bursts: groups of structurally identical transactions (same input count, output count
and exact output total) in one minute, i.e. one sender's bot or script.

What is rare is not a signature seen for the first time (almost every signature is new: its own
history is empty), but a group much larger than the *largest identical group a unit usually holds*.
Real blocks always hold one: 2-42 identical non-dust transactions per block in the 31 real blocks
of 13-14 Aug 2025 (median 12; dust-valued inscription mints reach 200). So with
``similar_baseline="pattern"`` (v2) a group is scored on ``largest_group``: its members per unit
over the reference of ``mass.reference_high`` built from the largest identical non-dust group per
unit (prior and past units). The per-signature view is extra evidence only: a signature present
in at least ``known_service_unit_share`` of the past units is a known service, and stays at most
``low`` unless it holds ``known_service_ratio`` times its usual count. ``score`` / ``baseline``
keep the v1 per-signature numbers (members over the signature's expected count).

``similar_baseline="signature"`` is v1: the per-signature score graded with ``burst_thresholds``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from btc_anomaly_assets.common.schema import severity_rank
from btc_anomaly_assets.detection.config import PATTERN_SIMILAR_BURST, SIMILAR_BASELINE_PATTERN, ClusterConfig, max_severity
from btc_anomaly_assets.detection.mass import (
    EVIDENCE_LARGEST_GROUP,
    EVIDENCE_MEMBERS,
    History,
    Verdict,
    member_burst,
    reference_high,
    score_against,
)
from btc_anomaly_assets.detection.units import Units, unit_counts

SIGNATURE_COLUMNS = ("input_count", "output_count", "output_total")


def non_dust(frame: pd.DataFrame, dust_output_sat: int) -> np.ndarray:
    """Rows whose mean output is at least the dust line (a payment, not an inscription or token mint)."""
    return frame["output_total"].to_numpy(dtype=float) >= dust_output_sat * frame["output_count"].to_numpy(dtype=float)


def largest_group_per_unit(row_unit: np.ndarray, n_units: int, codes: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per unit, the size of its largest group of rows sharing a signature code, among ``keep`` rows."""
    largest = np.zeros(n_units, dtype=float)
    if keep.any():
        sizes = pd.DataFrame({"unit": row_unit[keep], "code": codes[keep]}).value_counts()
        per_unit = sizes.groupby(level="unit").max()
        largest[per_unit.index.to_numpy()] = per_unit.to_numpy()
    return largest


def signature_codes(frame: pd.DataFrame) -> np.ndarray:
    return frame.groupby(list(SIGNATURE_COLUMNS), sort=False).ngroup().to_numpy()


class Signatures:
    """Each row's exact (inputs, outputs, output_total) signature as a code, per code the rows
    holding it, and per unit the largest identical non-dust group."""

    def __init__(self, frame: pd.DataFrame, units: Units, dust_output_sat: int):
        self.codes = signature_codes(frame)
        self._order = np.argsort(self.codes, kind="stable")
        self._bounds = np.searchsorted(self.codes[self._order], np.arange(self.codes.max() + 2))  # frame is not empty
        self._units = units
        self.largest_group = largest_group_per_unit(units.row_unit, units.unit_keys.size, self.codes,
                                                    non_dust(frame, dust_output_sat))

    def unit_counts(self, code: int) -> np.ndarray:
        """Per unit, how many rows carry this signature."""
        return unit_counts(self._units, self._order[self._bounds[code]:self._bounds[code + 1]])


def similar_verdicts(
    minute_rows: pd.DataFrame,
    minute_codes: np.ndarray,
    signatures: Signatures,
    units: Units,
    past: np.ndarray,
    minute_size: int,
    minute_units: int,
    basis: str | None,
    config: ClusterConfig,
) -> list[tuple[pd.DataFrame, Verdict]]:
    """One (members, verdict) per signature with at least ``burst_min_members`` members in the minute."""
    codes, counts = np.unique(minute_codes, return_counts=True)
    found = []
    for code, count in zip(codes.tolist(), counts.tolist()):  # output order is set by the caller
        if count < config.burst_min_members:
            continue
        members = minute_rows[minute_codes == code]
        found.append((members, _verdict(members, code, count, signatures, units, past, minute_size, minute_units, basis,
                                        config)))
    return found


def _verdict(members, code, count, signatures: Signatures, units: Units, past, minute_size, minute_units, basis,
             config: ClusterConfig) -> Verdict:
    inputs, outputs, total = (int(members[c].iloc[0]) for c in SIGNATURE_COLUMNS)
    note = f"identical structure: {inputs} inputs, {outputs} outputs, output_total {total} sat"
    own = signatures.unit_counts(code)[past]
    burst = member_burst(count, minute_size, 1, History(own, units.unit_sizes[past]), signature=True,
                         expected_floor=config.similar_expected_floor, config=config)
    level = None
    if config.similar_baseline == SIMILAR_BASELINE_PATTERN and config.priors is not None:
        level = config.priors.evidence(basis, PATTERN_SIMILAR_BURST, EVIDENCE_LARGEST_GROUP)
    if level is None:
        severity, source, evidence, evidence_score = burst.severity, burst.source, EVIDENCE_MEMBERS, burst.score
        note += f"; burst {burst.severity}: {burst.note}"
    else:
        per_unit = count / max(minute_units, 1)
        reference = reference_high(level, signatures.largest_group[past], config.full_units(basis), config.mass_tail_k)
        scored = score_against(EVIDENCE_LARGEST_GROUP, per_unit, reference, config, " identical per unit")
        severity, source, evidence, evidence_score = scored.severity, scored.source, EVIDENCE_LARGEST_GROUP, scored.score
        note += f"; largest group {severity}: {scored.note}; signature: {burst.note}"
        present = own > 0
        if past.size >= 2 and present.mean() >= config.known_service_unit_share:
            usual = float(np.median(own[present]))
            if per_unit < config.known_service_ratio * usual and severity_rank(severity) > severity_rank("low"):
                severity = "low"
                note += (f"; known service (in {int(present.sum())}/{past.size} past units, usually {usual:.0f}), "
                         f"capped at low below {config.known_service_ratio:g}x its usual count")
    if total < config.dust_output_sat * outputs and severity_rank(severity) > severity_rank(config.dust_valued_burst_cap):
        # Dust-valued look-alikes (inscription and token mints) land in most blocks; see ClusterConfig.
        note += f"; dust-valued (mean output < {config.dust_output_sat} sat), capped at {config.dust_valued_burst_cap}"
        severity = config.dust_valued_burst_cap
    final = max_severity(config.labels.similar_burst, severity)
    return Verdict(final, note, burst.score, burst.baseline, source, evidence, evidence_score)
