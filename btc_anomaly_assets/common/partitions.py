"""The one minute-partitions definition every asset shares."""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from btc_anomaly_assets.common.partition_range import (
    MAX_MINUTE_PARTITIONS,
    configured_end,
    configured_start,
    partition_bounds,
)
from btc_anomaly_assets.common.settings import DATE_FMT

__all__ = ["MAX_MINUTE_PARTITIONS", "build_minute_partitions", "minute_partitions"]


def build_minute_partitions(start: str, end: str | None, *, now: datetime | None = None) -> dg.TimeWindowPartitionsDefinition:
    """Minute partitions from ``start`` to ``end`` (exclusive; ``None`` = open-ended), refusing more than ~100k keys."""
    start_dt, end_dt = partition_bounds(start, end, now=now)
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule="* * * * *",
        start=start_dt.strftime(DATE_FMT),
        end=end_dt.strftime(DATE_FMT) if end_dt else None,
        fmt=DATE_FMT,
        timezone="UTC",
    )


minute_partitions = build_minute_partitions(configured_start(), configured_end())
