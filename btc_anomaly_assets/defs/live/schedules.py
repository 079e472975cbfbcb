"""Live operation: every closed minute through the whole graph, and a late-data sweep.

Both schedules ship STOPPED and start RUNNING when ``BTC_LIVE=on`` (or are switched on in the UI).
"""

from datetime import datetime, timedelta, timezone

import dagster as dg

from btc_anomaly_assets.partitions import minute_partitions
from btc_anomaly_assets.settings import DATE_FMT, is_on

LATE_DATA_DELAY_MINUTES = 10
LATE_DATA_SPAN_MINUTES = 10


def _live_status() -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if is_on("BTC_LIVE") else dg.DefaultScheduleStatus.STOPPED


def minute_key(moment: datetime) -> str:
    return moment.strftime(DATE_FMT)


def live_run_request(tick: datetime) -> dg.RunRequest | dg.SkipReason:
    """The minute that closed at ``tick`` (a one-partition run; run key = the minute)."""
    minute = tick.replace(second=0, microsecond=0) - timedelta(minutes=1)
    key = minute_key(minute)
    if not minute_partitions.has_partition_key(key):
        return dg.SkipReason(f"{key} is outside the minute partitions (BTC_PARTITIONS_START/END)")
    return dg.RunRequest(run_key=f"live:{key}", partition_key=key, tags={"btc/trigger": "live"})


def late_data_run_request(tick: datetime) -> dg.RunRequest | dg.SkipReason:
    """Re-fetch [tick-20, tick-10) in one run: first-seen rows and API listings that arrived late.

    Every layer replaces exactly its window, and alert ids are stable, so the sweep adds what was
    missing without duplicates and alerts only what is newly flagged.
    """
    end = tick.replace(second=0, microsecond=0) - timedelta(minutes=LATE_DATA_DELAY_MINUTES)
    first, last = end - timedelta(minutes=LATE_DATA_SPAN_MINUTES), end - timedelta(minutes=1)
    if not (minute_partitions.has_partition_key(minute_key(first)) and minute_partitions.has_partition_key(minute_key(last))):
        return dg.SkipReason(f"[{minute_key(first)}, {minute_key(end)}) is outside the minute partitions")
    return dg.RunRequest(
        run_key=f"late:{minute_key(first)}",
        tags={"dagster/asset_partition_range_start": minute_key(first), "dagster/asset_partition_range_end": minute_key(last),
              "btc/trigger": "late_data"},
    )


def _tick_time(context: dg.ScheduleEvaluationContext) -> datetime:
    return context.scheduled_execution_time.astimezone(timezone.utc).replace(tzinfo=None)


def build_live_schedules(job) -> list[dg.ScheduleDefinition]:
    @dg.schedule(name="live_minute", cron_schedule="* * * * *", execution_timezone="UTC", job=job,
                 default_status=_live_status())
    def live_minute(context: dg.ScheduleEvaluationContext):
        """Materializes the minute that just closed through the whole graph."""
        return live_run_request(_tick_time(context))

    @dg.schedule(name="late_data_sweep", cron_schedule=f"*/{LATE_DATA_SPAN_MINUTES} * * * *", execution_timezone="UTC",
                 job=job, default_status=_live_status())
    def late_data_sweep(context: dg.ScheduleEvaluationContext):
        """Re-materializes the minutes 10-20 minutes ago, catching data that arrived late."""
        return late_data_run_request(_tick_time(context))

    return [live_minute, late_data_sweep]
