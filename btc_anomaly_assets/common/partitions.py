"""The one minute-partitions definition every asset shares."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timezone

import dagster as dg

from btc_anomaly_assets.common.partition_range import (
    MAX_MINUTE_PARTITIONS,
    configured_end,
    configured_start,
    partition_bounds,
)
from btc_anomaly_assets.common.settings import DATE_FMT

__all__ = ["MAX_MINUTE_PARTITIONS", "MINUTE_CRON", "MinutePartitionsDefinition", "build_minute_partitions", "minute_partitions"]

MINUTE_CRON = "* * * * *"
_MINUTE_SECONDS = 60


class MinutePartitionsDefinition(dg.TimeWindowPartitionsDefinition):
    """Minute partitions (UTC) whose previous window is found by arithmetic, not by croniter.

    Dagster 1.13 maps a lookback dependency (``TimeWindowPartitionMapping(start_offset=-n)``) by
    asking for the previous window ``n`` times, and each answer builds a new croniter iterator:
    ~4 ms a minute, so a 360-minute lookback cost ~1.4 s at the start of every step that has one,
    in a one-minute live run as in a day's backfill. Dagster has arithmetic fast paths only for
    hourly and daily partitions. For ``* * * * *`` in UTC without exclusions the previous window
    of ``t`` is ``[floor_minute(t) - 1 min, floor_minute(t))``; any other definition takes
    Dagster's own path. Everything else (keys, snapshots the UI and daemon see, serialization)
    is the base class's: snapshots are built from the fields, so hosts see a plain
    ``TimeWindowPartitionsDefinition`` with the same cron and bounds.
    ``btc_anomaly_assets_tests/test_partitions.py`` checks the answers against Dagster's own and
    that Dagster's lookback mapping still goes through this method.

    ``get_partition_keys_in_range`` keeps Dagster's own answer for the last few ranges asked:
    ``context.add_asset_metadata(partition_key=k)`` lists the run's whole range (one croniter step
    per key, ~6 ms for a day) on every call, so a day's per-minute metadata cost seconds per asset.
    """

    def _is_fixed_minutes(self) -> bool:
        return self.cron_schedule == MINUTE_CRON and self.timezone == "UTC" and not self.exclusions

    def get_prev_partition_window(self, start_dt: datetime, respect_bounds: bool = True) -> dg.TimeWindow | None:
        if not self._is_fixed_minutes():
            return super().get_prev_partition_window(start_dt, respect_bounds)
        end = int(start_dt.timestamp() // _MINUTE_SECONDS) * _MINUTE_SECONDS
        window = dg.TimeWindow(datetime.fromtimestamp(end - _MINUTE_SECONDS, tz=timezone.utc),
                               datetime.fromtimestamp(end, tz=timezone.utc))
        if respect_bounds:
            first = self.get_first_partition_window()
            if first is None or window.start.timestamp() < first.start.timestamp():
                return None
        return window

    def get_partition_keys_in_range(self, partition_key_range: dg.PartitionKeyRange) -> Sequence[str]:
        # a fresh list each call: the cached tuple is never handed out to be changed
        return list(self._keys_in_range(partition_key_range.start, partition_key_range.end))

    @functools.lru_cache(maxsize=8)  # noqa: B019 - definitions are few, long-lived and hashable (Dagster caches the same way)
    def _keys_in_range(self, start: str, end: str) -> tuple[str, ...]:
        return tuple(super().get_partition_keys_in_range(dg.PartitionKeyRange(start, end)))


def build_minute_partitions(start: str, end: str | None, *, now: datetime | None = None) -> MinutePartitionsDefinition:
    """Minute partitions from ``start`` to ``end`` (exclusive; ``None`` = open-ended), refusing more than ~100k keys."""
    start_dt, end_dt = partition_bounds(start, end, now=now)
    return MinutePartitionsDefinition(
        cron_schedule=MINUTE_CRON,
        start=start_dt.strftime(DATE_FMT),
        end=end_dt.strftime(DATE_FMT) if end_dt else None,
        fmt=DATE_FMT,
        timezone="UTC",
        # open-ended (live): the minute still open is a partition too, so its run can be launched
        # ahead of its close (live/minute_close.py); its raw step waits for the close
        end_offset=0 if end_dt else 1,
    )


minute_partitions = build_minute_partitions(configured_start(), configured_end())
