"""The live sensor launches each minute's run ahead of its close, once; the late-data sweep asks for an
older range, in a gap between live runs."""

from datetime import datetime, timedelta

import dagster as dg
import pytest

from btc_anomaly_assets.definitions import defs
from btc_anomaly_assets.live import schedules
from btc_anomaly_assets.live.schedules import due_live_minutes, late_data_sweep_request, minute_key


def _evaluate(name: str, at: datetime, cursor: str | None = None, monkeypatch=None):
    monkeypatch.setattr(schedules, "utc_now", lambda: at)
    sensor = defs.get_sensor_def(name)
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=defs.get_repository_def())
        return sensor.evaluate_tick(context)


def test_a_minutes_run_is_due_twenty_seconds_before_it_closes_and_only_once():
    assert [minute_key(m) for m in due_live_minutes(datetime(2025, 8, 13, 0, 18, 39), None)] == ["2025-08-13-00:17"]
    assert [minute_key(m) for m in due_live_minutes(datetime(2025, 8, 13, 0, 18, 40), None)] == \
        ["2025-08-13-00:17", "2025-08-13-00:18"]
    assert due_live_minutes(datetime(2025, 8, 13, 0, 18, 45), "2025-08-13-00:18") == []
    assert due_live_minutes(datetime(2025, 8, 13, 0, 19, 5), "2025-08-13-00:18") == []  # launched ahead: not again
    # the sensor was late (daemon busy): the minute that closed is still requested
    assert [minute_key(m) for m in due_live_minutes(datetime(2025, 8, 13, 0, 19, 5), "2025-08-13-00:17")] == ["2025-08-13-00:18"]
    assert due_live_minutes(datetime(2025, 8, 13, 0, 18, 59), None, lead=timedelta(0))[-1].minute == 17


def test_live_minute_sensor_requests_the_open_minute_ahead_with_its_run_key_and_moves_its_cursor(monkeypatch):
    result = _evaluate("live_minute", datetime(2025, 8, 13, 0, 18, 50), cursor="2025-08-13-00:17", monkeypatch=monkeypatch)
    [request] = result.run_requests
    assert request.partition_key == "2025-08-13-00:18" and request.run_key == "live:2025-08-13-00:18"
    assert request.tags["btc/trigger"] == "live" and result.cursor == "2025-08-13-00:18"
    again = _evaluate("live_minute", datetime(2025, 8, 13, 0, 18, 55), cursor=result.cursor, monkeypatch=monkeypatch)
    assert not again.run_requests and again.skip_message


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


def test_minutes_outside_the_partitions_are_skipped_with_a_reason(monkeypatch):
    result = _evaluate("live_minute", datetime(2026, 11, 26, 6, 0, 0), monkeypatch=monkeypatch)
    assert not result.run_requests and "outside the minute partitions" in result.skip_message


def test_live_sensors_ship_stopped_unless_configured():
    assert not defs.schedules
    for name in ("live_minute", "late_data_sweep"):
        assert defs.get_sensor_def(name).default_status == dg.DefaultSensorStatus.STOPPED
