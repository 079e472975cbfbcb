"""Live operation: every minute through the whole graph as it closes, and a late-data sweep.

``live_minute`` is a sensor that launches each minute's run ``PRELAUNCH_LEAD`` (20 s) before the
minute closes; the run's raw step waits for the close (``live/minute_close.py``), so the run queue,
the new run process and its imports are paid while the minute is still open. ``late_data_sweep``
launches each 10-minute sweep in a gap between live runs, so a sweep never holds the DuckDB pool
while a live minute waits for it. Both ship STOPPED and start RUNNING when ``BTC_LIVE=on`` (or are
switched on in the UI).
"""

from datetime import datetime, timedelta

import dagster as dg

from btc_anomaly_assets.common.partitions import minute_partitions
from btc_anomaly_assets.common.settings import DATE_FMT, is_on
from btc_anomaly_assets.common.utc import utc_now
from btc_anomaly_assets.live.minute_close import PRELAUNCH_LEAD

LATE_DATA_DELAY_MINUTES = 10
LATE_DATA_SPAN_MINUTES = 10
# A sweep waits for a gap between live runs, but not longer than this into its 10 minutes.
LATE_DATA_MAX_WAIT = timedelta(minutes=5)
ACTIVE_RUN_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                       dg.DagsterRunStatus.STARTED]


def _live_sensor_status() -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if is_on("BTC_LIVE") else dg.DefaultSensorStatus.STOPPED


def minute_key(moment: datetime) -> str:
    return moment.strftime(DATE_FMT)


def live_run_request(minute: datetime) -> dg.RunRequest | dg.SkipReason:
    """The run of ``minute`` (a one-partition run; run key = the minute)."""
    key = minute_key(minute)
    if not minute_partitions.has_partition_key(key):
        return dg.SkipReason(f"{key} is outside the minute partitions (BTC_PARTITIONS_START/END)")
    return dg.RunRequest(run_key=f"live:{key}", partition_key=key, tags={"btc/trigger": "live"})


def due_live_minutes(now: datetime, cursor: str | None, lead: timedelta = PRELAUNCH_LEAD) -> list[datetime]:
    """Minutes whose live run is due at ``now`` and was not requested yet (``cursor``: the last one that was).

    Due: the minute that closed last (a run that could not be launched ahead, e.g. the sensor's
    first tick) and, within ``lead`` of its close, the current minute. Older minutes a stopped
    daemon missed are the late-data sweep's.
    """
    current = now.replace(second=0, microsecond=0)
    due = [current - timedelta(minutes=1)]
    if now >= current + timedelta(minutes=1) - lead:
        due.append(current)
    return [m for m in due if cursor is None or minute_key(m) > cursor]


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


def check_live_source() -> None:
    """Refuse, at load, a live Blockchair setting the key-less request budget cannot carry (one line)."""
    from btc_anomaly_assets.common.settings import env_value
    from btc_anomaly_assets.live.budget import live_budget_error

    if is_on("BTC_LIVE") and env_value("BTC_SOURCE") == "blockchair" and env_value("BTC_BLOCKCHAIR_MODE") == "mempool":
        error = live_budget_error(has_key=bool(env_value("BLOCKCHAIR_API_KEY")))
        if error:
            raise ValueError(error)


def build_live_automation(job) -> list[dg.SensorDefinition]:
    check_live_source()
    # minimum_interval_seconds=1: evaluated on every sensor-daemon wake-up (every few seconds)
    @dg.sensor(name="live_minute", job=job, minimum_interval_seconds=1, default_status=_live_sensor_status())
    def live_minute(context: dg.SensorEvaluationContext):
        """Materializes each minute through the whole graph as it closes: its run is launched 20 s
        ahead and its raw step waits for the close."""
        due = due_live_minutes(utc_now(), context.cursor)
        if not due:
            return dg.SkipReason("the next minute's run is not due yet")
        requests = [live_run_request(m) for m in due]
        context.update_cursor(minute_key(due[-1]))
        runs = [r for r in requests if isinstance(r, dg.RunRequest)]
        return runs or requests[-1]

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

    return [live_minute, late_data_sweep]
