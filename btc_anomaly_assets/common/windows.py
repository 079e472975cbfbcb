"""Partition windows as every library function takes them: whole UTC minutes, naive, end after start."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd


def naive_utc_minute(value: datetime, what: str, error: type[Exception] = ValueError) -> pd.Timestamp:
    """``value`` as a naive-UTC minute; tz-aware values are converted, naive ones taken as UTC.

    A sub-minute bound is refused (``error``): partitions are minutes, and such a bound would
    silently drop or duplicate part of a minute.
    """
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert(timezone.utc).tz_localize(None)
    if ts != ts.floor("min"):
        raise error(f"{what}={value!s} is not a whole minute")
    return ts.as_unit("us")


def minute_window(start: datetime, end: datetime, error: type[Exception] = ValueError) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Normalised ``(start, end)``; ``error`` for a bound that is not a minute or an empty window."""
    start_ts, end_ts = naive_utc_minute(start, "start", error), naive_utc_minute(end, "end", error)
    if end_ts <= start_ts:
        raise error(f"empty window [{start_ts}, {end_ts}): end must be after start")
    return start_ts, end_ts
