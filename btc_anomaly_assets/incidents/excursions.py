"""Which forecast excursions count as evidence: not the ones block arrival explains.

On block time the forecast series is the trailing 60-minute confirmed rate (transactions in the
last 60 minutes / 60). That rate is driven by how many blocks happened to land in those 60
minutes: the block count is Poisson with mean 60 / 10 = 6, so 10 or 12 blocks in an hour are
ordinary bad luck, and each one adds a whole block's transactions to the rate. Prophet's interval
knows nothing of that and is breached whenever blocks bunch up.

The rule (``counted_excursions``):

1. **One excursion per minute**: of the forecasts that covered a minute, only the newest origin
   (latest ``cutoff``) is compared; older origins repeat the same actual.
2. **Block time: beyond the block-arrival band only.** The band is what ``k`` blocks of usual
   size give, for ``k`` from the Poisson(6) quantiles ``1 - BAND_TAIL`` and ``BAND_TAIL``
   (0.999 / 0.001: 14 blocks and 0 blocks an hour), times the median transactions per block of
   the history. An actual inside the band is a block-arrival artefact: set aside (counted in the
   asset's metadata), never an alert.
3. **Severity at most ``low`` unless sustained**: an excursion counts with its own severity only
   when at least ``SUSTAINED_MINUTES`` (3) consecutive minutes of the same series are outside;
   a single minute is ``low``.

On first-seen data the series is the per-minute arrival count, a real signal: rules 1 and 3 apply,
rule 2 does not.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, Iterable, Mapping

import pandas as pd

from btc_anomaly_assets.common.schema import TIME_BASIS_BLOCK
from btc_anomaly_assets.incidents.findings import cap_severity, finding_from_excursion_row

RATE_WINDOW_MINUTES = 60
BLOCK_INTERVAL_MINUTES = 10
BAND_TAIL = 0.001
SUSTAINED_MINUTES = 3
UNSUSTAINED_CEILING = "low"


def poisson_quantile(mean: float, probability: float) -> int:
    """The smallest k with P(N <= k) >= probability for N ~ Poisson(mean)."""
    if mean <= 0:
        return 0
    term = math.exp(-mean)
    total, k = term, 0
    while total < probability and k < 10_000:
        k += 1
        term *= mean / k
        total += term
    return k


def typical_block_tx(aggregates: pd.DataFrame) -> float | None:
    """Median transactions per block over the minutes that hold blocks (None without any)."""
    if aggregates is None or aggregates.empty or "block_count" not in aggregates:
        return None
    blocks = aggregates[aggregates["block_count"].fillna(0) > 0]
    if blocks.empty:
        return None
    return float((blocks["tx_count"] / blocks["block_count"]).median())


def block_arrival_band(tx_per_block: float, *, window_minutes: int = RATE_WINDOW_MINUTES,
                       interval_minutes: int = BLOCK_INTERVAL_MINUTES, tail: float = BAND_TAIL) -> tuple[float, float]:
    """(lower, upper) trailing rate in tx/min that block arrival alone explains."""
    mean_blocks = window_minutes / interval_minutes
    low_k = poisson_quantile(mean_blocks, tail)
    high_k = poisson_quantile(mean_blocks, 1 - tail)
    return low_k * tx_per_block / window_minutes, high_k * tx_per_block / window_minutes


def counted_excursions(rows: Iterable[Mapping[str, Any]], aggregates: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """(counted findings, set-aside findings) for ``btc.forecast_excursions`` rows (see the module doc)."""
    newest: dict[tuple[str, Any], dict] = {}
    for row in rows:
        finding = finding_from_excursion_row(row)
        key = (finding["subject"], finding["minute"])
        if key not in newest or finding["cutoff"] > newest[key]["cutoff"]:
            newest[key] = finding
    per_block = typical_block_tx(aggregates)
    counted, set_aside = [], []
    for finding in sorted(newest.values(), key=lambda f: (f["subject"], f["minute"])):
        if finding["time_basis"] == TIME_BASIS_BLOCK:
            if per_block is None:
                finding["cap"] = "no block history to tell block arrival apart: set aside"
                set_aside.append(finding)
                continue
            lower, upper = block_arrival_band(per_block)
            finding["block_arrival_band"] = [lower, upper]
            y = finding["value"]
            beyond = y is not None and ((finding["direction"] == "above" and y > upper) or
                                        (finding["direction"] == "below" and y < lower))
            if not beyond:
                finding["cap"] = (f"within what block arrival explains ({lower:,.0f}-{upper:,.0f} tx/min for 0-"
                                  f"{round(upper * RATE_WINDOW_MINUTES / per_block)} blocks an hour of "
                                  f"{per_block:,.0f} transactions): set aside")
                set_aside.append(finding)
                continue
        counted.append(finding)
    _cap_unsustained(counted)
    return counted, set_aside


def _cap_unsustained(findings: list[dict]) -> None:
    """Findings not part of a run of ``SUSTAINED_MINUTES`` consecutive minutes count at most ``low``."""
    by_series: dict[str, list[dict]] = {}
    for finding in findings:
        by_series.setdefault(finding["subject"], []).append(finding)
    for series in by_series.values():
        series.sort(key=lambda f: f["minute"])
        run: list[dict] = []
        for finding in series + [None]:
            if finding is not None and run and finding["minute"] - run[-1]["minute"] == timedelta(minutes=1):
                run.append(finding)
                continue
            if run and len(run) < SUSTAINED_MINUTES:
                for item in run:
                    capped = cap_severity(item["severity"], UNSUSTAINED_CEILING)
                    if capped != item["severity"]:
                        item["severity"] = capped
                        item["cap"] = (f"outside the forecast for {len(run)} minute(s), fewer than {SUSTAINED_MINUTES}: "
                                       f"counts at most {UNSUSTAINED_CEILING}")
            run = [finding] if finding is not None else []
