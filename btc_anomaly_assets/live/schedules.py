"""Live operation: every closed minute through the whole graph, and a late-data sweep.

``live_minute`` is a schedule; ``late_data_sweep`` is a sensor that launches each 10-minute sweep
in a gap between live runs, so a sweep never holds the DuckDB pool while a live minute waits for
it. Both ship STOPPED and start RUNNING when ``BTC_LIVE=on`` (or are switched on in the UI).
"""

from datetime import datetime, timedelta, timezone

import dagster as dg

from btc_anomaly_assets.common.partitions import MINUTE_CRON, minute_partitions
from btc_anomaly_assets.common.settings import DATE_FMT, is_on
from btc_anomaly_assets.common.utc import utc_now

LATE_DATA_DELAY_MINUTES = 10
LATE_DATA_SPAN_MINUTES = 10
# A sweep waits for a gap between live runs, but not longer than this into its 10 minutes.
LATE_DATA_MAX_WAIT = timedelta(minutes=5)
ACTIVE_RUN_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                       dg.DagsterRunStatus.STARTED]


def _live_status() -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if is_on("BTC_LIVE") else dg.DefaultScheduleStatus.STOPPED


def _live_sensor_status() -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if is_on("BTC_LIVE") else dg.DefaultSensorStatus.STOPPED


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


def late_data_sweep_request(now: datetime, live_runs_active: int, last_minute_done: bool) -> dg.RunRequest | dg.SkipReason:
    """The sweep due in the current 10 minutes, launched in a gap between live runs.

    A gap is: no live run queued or running, and the run of the minute that closed last is over
    (or, 30 s into the minute, no such run came: live runs are off or were skipped). A live run
    takes seconds, so the gap comes right after the minute's run; if live runs never pause, the sweep
    goes anyway 5 minutes into its 10. The run key (the swept window) makes it once per window.
    """
    boundary = now.replace(second=0, microsecond=0, minute=now.minute - now.minute % LATE_DATA_SPAN_MINUTES)
    in_gap = not live_runs_active and (last_minute_done or now.second >= 30)
    if not in_gap and now - boundary < LATE_DATA_MAX_WAIT:
        return dg.SkipReason(f"waiting for a gap between live runs ({live_runs_active} queued or running, "
                             f"last closed minute's run {'done' if last_minute_done else 'not done'})")
    return late_data_run_request(boundary)


def _tick_time(context: dg.ScheduleEvaluationContext) -> datetime:
    return context.scheduled_execution_time.astimezone(timezone.utc).replace(tzinfo=None)


def check_live_source() -> None:
    """Refuse, at load, a live Blockchair setting the key-less request budget cannot carry (one line)."""
    from btc_anomaly_assets.common.settings import env_value
    from btc_anomaly_assets.live.budget import live_budget_error

    if is_on("BTC_LIVE") and env_value("BTC_SOURCE") == "blockchair" and env_value("BTC_BLOCKCHAIR_MODE") == "mempool":
        error = live_budget_error(has_key=bool(env_value("BLOCKCHAIR_API_KEY")))
        if error:
            raise ValueError(error)


def build_live_automation(job) -> tuple[list[dg.ScheduleDefinition], list[dg.SensorDefinition]]:
    check_live_source()
    @dg.schedule(name="live_minute", cron_schedule=MINUTE_CRON, execution_timezone="UTC", job=job,
                 default_status=_live_status())
    def live_minute(context: dg.ScheduleEvaluationContext):
        """Materializes the minute that just closed through the whole graph."""
        return live_run_request(_tick_time(context))

    @dg.sensor(name="late_data_sweep", job=job, minimum_interval_seconds=5, default_status=_live_sensor_status())
    def late_data_sweep(context: dg.SensorEvaluationContext):
        """Every 10 minutes, re-materializes the minutes 10-20 minutes ago (data that arrived late),
        in a gap between live runs."""
        now = utc_now()
        active = context.instance.get_runs_count(dg.RunsFilter(tags={"btc/trigger": "live"}, statuses=ACTIVE_RUN_STATUSES))
        last_minute = minute_key(now.replace(second=0, microsecond=0) - timedelta(minutes=1))
        done = context.instance.get_runs_count(dg.RunsFilter(
            tags={"btc/trigger": "live", "dagster/partition": last_minute},
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]))
        return late_data_sweep_request(now, active, done > 0)

    return [live_minute], [late_data_sweep]
