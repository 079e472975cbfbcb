"""Priors: per-pattern and per-metric baselines measured on real blocks, shipped with the package.

A detector that starts fresh (a new deployment, or a backfill whose lake holds nothing earlier)
has no past units to compare with. The priors table says what real units looked like, so the first
block is judged as well as the hundredth:

- per time basis (``block``: one unit per block; ``first_seen``: one unit per minute of arrivals),
  per cluster pattern and evidence (``members``, ``weight_share``, ``inputs``, ``outputs``,
  ``value_btc``; for ``similar_burst`` the ``largest_group`` of identical non-dust transactions per
  unit), the median, the largest value any real unit showed (``high``), the mean, a robust spread
  and the number of units measured; plus each shape's pooled share of transactions;
- per EWMA metric (the names of ``EwmaConfig.metrics``), the centre (median) and robust spread of
  the per-unit values in the metric's own units (log10 for amounts and fee rates), i.e. the EWMA's
  starting level.

The table is JSON (``priors/priors_v1.json``), derived from the real excerpts by
``btc_anomaly_assets.detection.derive_priors`` (script: ``benchmarks/derive_priors.py``).

How detectors blend it with history (``blend``): the prior's weight is ``1 - n / full`` for ``n``
past units of history (``full`` = the configured number of units after which history alone is
trusted), so ``baseline_source`` is ``prior`` with no history, ``both`` while history is short and
``history`` once it is long enough.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PRIORS_DIR = Path(__file__).resolve().parent / "priors"
BUILTIN_PRIORS_FILE = PRIORS_DIR / "priors_v1.json"
PRIORS_FORMAT = 1

SOURCE_PRIOR = "prior"
SOURCE_HISTORY = "history"
SOURCE_BOTH = "both"
SOURCES = (SOURCE_PRIOR, SOURCE_HISTORY, SOURCE_BOTH)

LEVEL_FIELDS = ("median", "high", "mean", "scale", "units")


class PriorsError(ValueError):
    """The priors table cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Level:
    """How one statistic was distributed over the real units: median, largest (``high``), mean,
    robust spread (1.4826 x MAD) and the number of units measured."""

    median: float
    high: float
    mean: float
    scale: float
    units: int

    @property
    def common(self) -> bool:
        """Present in at least half of the real units (a median above zero)."""
        return self.median > 0


@dataclass(frozen=True, eq=False)
class Priors:
    """A loaded priors table (see the module docstring for its content)."""

    version: str
    table: dict
    where: str = "<memory>"

    def _basis(self, basis: str | None) -> dict:
        return self.table["bases"].get(basis or "", {})

    def metric(self, basis: str | None, metric: str) -> Level | None:
        """The EWMA starting level of ``metric`` under ``basis`` (None when the table has none)."""
        entry = self._basis(basis).get("metrics", {}).get(metric)
        return _level(entry, f"{self.where}: bases.{basis}.metrics.{metric}") if entry else None

    def evidence(self, basis: str | None, pattern: str, evidence: str) -> Level | None:
        """The per-unit distribution of one evidence of one pattern (None when absent)."""
        entry = self._basis(basis).get("patterns", {}).get(pattern, {}).get(evidence)
        return _level(entry, f"{self.where}: bases.{basis}.patterns.{pattern}.{evidence}") if entry else None

    def pooled_share(self, basis: str | None, pattern: str) -> float | None:
        """All members over all transactions of the real units, for a shape pattern."""
        value = self._basis(basis).get("patterns", {}).get(pattern, {}).get("pooled_share")
        return None if value is None else float(value)

    def units(self, basis: str | None) -> int:
        return int(self._basis(basis).get("units", 0))


def _level(entry: dict, where: str) -> Level:
    missing = [f for f in LEVEL_FIELDS if f not in entry]
    if missing:
        raise PriorsError(f"{where} lacks {missing}")
    values = {f: float(entry[f]) for f in LEVEL_FIELDS}
    if not all(math.isfinite(v) for v in values.values()):
        raise PriorsError(f"{where} has a non-finite value: {entry}")
    return Level(median=values["median"], high=values["high"], mean=values["mean"], scale=values["scale"],
                 units=int(values["units"]))


def priors_from_dict(table: dict, where: str = "<memory>") -> Priors:
    """Validate the top level of a priors table and wrap it."""
    if not isinstance(table, dict):
        raise PriorsError(f"{where}: a priors table is a JSON object, got {type(table).__name__}")
    if table.get("format") != PRIORS_FORMAT:
        raise PriorsError(f"{where}: format {table.get('format')!r} is not the supported {PRIORS_FORMAT}")
    if not isinstance(table.get("version"), str) or not isinstance(table.get("bases"), dict):
        raise PriorsError(f"{where}: needs a string 'version' and an object 'bases'")
    return Priors(version=table["version"], table=table, where=where)


def load_priors(path: str | Path) -> Priors:
    """Read and validate a priors JSON file (PriorsError naming the file when it is unusable)."""
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise PriorsError(f"priors file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise PriorsError(f"priors file {path} is not valid JSON: {exc}") from None
    return priors_from_dict(table, where=str(path))


@lru_cache(maxsize=1)
def builtin_priors() -> Priors:
    """The table shipped in the package (``priors/priors_v1.json``), read once per process."""
    return load_priors(BUILTIN_PRIORS_FILE)


def prior_weight(history_units: int, full_units: int) -> float:
    """Weight of the prior for ``history_units`` past units: 1 with none, 0 from ``full_units`` on."""
    if full_units <= 0:
        return 0.0
    return max(0.0, 1.0 - history_units / full_units)


def source_of(weight: float) -> str:
    """``prior`` / ``both`` / ``history`` for a prior weight of 1 / in between / 0."""
    if weight >= 1.0:
        return SOURCE_PRIOR
    return SOURCE_BOTH if weight > 0.0 else SOURCE_HISTORY


def combine_sources(*sources: str | None) -> str | None:
    """One label for baselines of several sources (``both`` when prior and history are mixed)."""
    present = {s for s in sources if s}
    if not present:
        return None
    if present == {SOURCE_PRIOR}:
        return SOURCE_PRIOR
    if present == {SOURCE_HISTORY}:
        return SOURCE_HISTORY
    return SOURCE_BOTH


def blend(prior: float, history: float | None, weight: float) -> float:
    """``weight * prior + (1 - weight) * history`` (the prior alone without history)."""
    if history is None or not math.isfinite(history):
        return prior
    return weight * prior + (1.0 - weight) * history
