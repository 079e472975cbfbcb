"""Comparison units of the cluster detector: one per block (time basis ``block``) or per minute
(``first_seen``), with the minute each unit is in and its non-coinbase transaction count."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from btc_anomaly_assets.common.schema import TIME_BASIS_BLOCK


@dataclass(frozen=True)
class Units:
    """Past comparison units (blocks or minutes): the minute each is in and its transaction count."""

    row_unit: np.ndarray  # index into the unit arrays, per transaction row
    unit_keys: np.ndarray  # sorted distinct unit keys
    unit_minutes: np.ndarray  # int64 us, per unit
    unit_sizes: np.ndarray  # non-coinbase transactions per unit


def build_units(frame: pd.DataFrame, basis: str | None) -> Units:
    minutes_us = frame["minute"].to_numpy().astype("datetime64[us]").astype(np.int64)
    if basis == TIME_BASIS_BLOCK:
        keys = frame["block_id"].to_numpy(dtype=np.int64)
    else:
        keys = minutes_us
    table = pd.DataFrame({"key": keys, "minute": minutes_us})
    grouped = table.groupby("key", sort=True)
    unit_keys = grouped.size().index.to_numpy()
    return Units(
        row_unit=np.searchsorted(unit_keys, keys),
        unit_keys=unit_keys,
        unit_minutes=grouped["minute"].min().to_numpy(),
        unit_sizes=grouped.size().to_numpy(),
    )


def past_units(units: Units, minute_us: int, lookback_us: int) -> np.ndarray:
    """Indices of units whose minute is in ``[minute - lookback, minute)``."""
    return np.flatnonzero((units.unit_minutes >= minute_us - lookback_us) & (units.unit_minutes < minute_us))


def unit_counts(units: Units, rows: np.ndarray) -> np.ndarray:
    """Per unit, how many rows are selected by ``rows`` (a boolean mask or row indices)."""
    return np.bincount(units.row_unit[rows], minlength=units.unit_keys.size)
