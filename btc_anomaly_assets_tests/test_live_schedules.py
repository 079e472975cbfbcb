"""The live schedule asks for the minute that just closed; the late-data sweep for an older range, in a gap
between live runs."""

from datetime import datetime, timezone

import dagster as dg
import pytest

from btc_anomaly_assets.definitions import defs
from btc_anomaly_assets.live.schedules import late_data_sweep_request


def _evaluate(name: str, at: datetime):
    schedule = defs.get_schedule_def(name)
    context = dg.build_schedule_context(scheduled_execution_time=at.replace(tzinfo=timezone.utc),
                                        repository_def=defs.get_repository_def())
    return schedule.evaluate_tick(context)


def test_live_minute_requests_the_closed_minute_once():
    result = _evaluate("live_minute", datetime(2025, 8, 13, 0, 19, 0))
    [request] = result.run_requests
    assert request.partition_key == "2025-08-13-00:18" and request.run_key == "live:2025-08-13-00:18"


def test_late_data_sweep_requests_one_range_run_ten_minutes_behind_once_the_live_minute_is_done():
    request = late_data_sweep_request(datetime(2025, 8, 13, 1, 0, 9), live_runs_active=0, last_minute_done=True)
    assert request.tags["dagster/asset_partition_range_start"] == "2025-08-13-00:40"
    assert request.tags["dagster/asset_partition_range_end"] == "2025-08-13-00:49"
    assert request.run_key == "late:2025-08-13-00:40"  # once per window, whenever in its 10 minutes it goes
    later = late_data_sweep_request(datetime(2025, 8, 13, 1, 7, 40), live_runs_active=0, last_minute_done=True)
    assert later.run_key == request.run_key


@pytest.mark.parametrize("active, done, second", [(1, True, 5), (0, False, 2), (1, False, 40)])
def test_late_data_sweep_waits_while_a_live_minute_runs_or_is_about_to(active, done, second):
    result = late_data_sweep_request(datetime(2025, 8, 13, 1, 0, second), live_runs_active=active, last_minute_done=done)
    assert isinstance(result, dg.SkipReason) and "waiting for a gap" in result.skip_message


def test_late_data_sweep_goes_after_thirty_seconds_without_a_live_run_or_five_minutes_in_any_case():
    assert isinstance(late_data_sweep_request(datetime(2025, 8, 13, 1, 0, 31), 0, False), dg.RunRequest)
    assert isinstance(late_data_sweep_request(datetime(2025, 8, 13, 1, 5, 0), 3, False), dg.RunRequest)


def test_late_data_sweep_sensor_reads_live_runs_from_the_instance():
    sensor = defs.get_sensor_def("late_data_sweep")
    with dg.instance_for_test() as instance:
        result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def()))
    # Now (2026) is outside the default partitions: the sensor evaluated and said why it did nothing.
    assert not result.run_requests and result.skip_message


def test_minutes_outside_the_partitions_are_skipped_with_a_reason():
    result = _evaluate("live_minute", datetime(2026, 11, 26, 6, 0, 0))
    assert not result.run_requests and "outside the minute partitions" in result.skip_message


def test_live_schedules_ship_stopped_unless_configured():
    assert all(s.default_status == dg.DefaultScheduleStatus.STOPPED for s in defs.schedules)
    assert defs.get_sensor_def("late_data_sweep").default_status == dg.DefaultSensorStatus.STOPPED
