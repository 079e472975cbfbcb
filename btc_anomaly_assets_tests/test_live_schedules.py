"""The live schedules ask for the minute that just closed, and the late-data sweep for an older range."""

from datetime import datetime, timezone

import dagster as dg

from btc_anomaly_assets.definitions import defs


def _evaluate(name: str, at: datetime):
    schedule = defs.get_schedule_def(name)
    context = dg.build_schedule_context(scheduled_execution_time=at.replace(tzinfo=timezone.utc),
                                        repository_def=defs.get_repository_def())
    return schedule.evaluate_tick(context)


def test_live_minute_requests_the_closed_minute_once():
    result = _evaluate("live_minute", datetime(2025, 8, 13, 0, 19, 0))
    [request] = result.run_requests
    assert request.partition_key == "2025-08-13-00:18" and request.run_key == "live:2025-08-13-00:18"


def test_late_data_sweep_requests_one_range_run_ten_minutes_behind():
    [request] = _evaluate("late_data_sweep", datetime(2025, 8, 13, 1, 0, 0)).run_requests
    assert request.tags["dagster/asset_partition_range_start"] == "2025-08-13-00:40"
    assert request.tags["dagster/asset_partition_range_end"] == "2025-08-13-00:49"


def test_minutes_outside_the_partitions_are_skipped_with_a_reason():
    result = _evaluate("live_minute", datetime(2026, 11, 26, 6, 0, 0))
    assert not result.run_requests and "outside the minute partitions" in result.skip_message


def test_live_schedules_ship_stopped_unless_configured():
    assert all(s.default_status == dg.DefaultScheduleStatus.STOPPED for s in defs.schedules)
