import random
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from btc_anomaly_assets.common.partitions import (
    MAX_MINUTE_PARTITIONS,
    MinutePartitionsDefinition,
    build_minute_partitions,
    minute_partitions,
)


def test_default_partitions_cover_the_bundled_data_and_stay_small():
    assert minute_partitions.get_first_partition_key() == "2025-08-13-00:00"
    assert minute_partitions.has_partition_key("2025-08-14-01:34")
    assert minute_partitions.get_num_partitions() <= 10_000
    assert minute_partitions.timezone == "UTC" and minute_partitions.fmt == "%Y-%m-%d-%H:%M"


def test_open_ended_partitions_refuse_a_start_that_gives_too_many_keys():
    now = datetime(2026, 11, 26, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="more recent start"):
        build_minute_partitions("2025-08-13-00:00", None, now=now)
    recent = build_minute_partitions("2026-10-27-00:00", None, now=now)
    assert recent.end is None
    assert (now - datetime(2026, 10, 27, tzinfo=timezone.utc)).total_seconds() / 60 < MAX_MINUTE_PARTITIONS


def test_bad_settings_name_the_variable():
    with pytest.raises(ValueError, match="BTC_PARTITIONS_START='2025-08-13'"):
        build_minute_partitions("2025-08-13", None)
    with pytest.raises(ValueError, match="must be after"):
        build_minute_partitions("2025-08-13-00:00", "2025-08-12-00:00")


# The lookback fast path (MinutePartitionsDefinition): same answers as Dagster's own, and still used.

def _plain(partitions) -> dg.TimeWindowPartitionsDefinition:
    """Dagster's own definition with the same fields (what the UI and the daemon rebuild from snapshots)."""
    return dg.TimeWindowPartitionsDefinition(cron_schedule=partitions.cron_schedule, start=partitions.start, end=partitions.end,
                                            fmt=partitions.fmt, timezone=partitions.timezone, end_offset=partitions.end_offset)


def _moments(first: datetime, count: int, seed: int) -> list[datetime]:
    rng = random.Random(seed)
    on_boundary = [first + timedelta(minutes=m) for m in (-2, -1, 0, 1, 2, 59, 60, 61, 1439, 1440)]
    anywhere = [first + timedelta(seconds=rng.uniform(-600, 3 * 86_400)) for _ in range(count)]
    return on_boundary + anywhere + [m.replace(microsecond=rng.randrange(1, 1_000_000)) for m in on_boundary]


@pytest.mark.parametrize("end", [None, "2026-12-03-00:00"])
def test_the_previous_window_is_dagsters_own_at_and_between_minute_boundaries(end):
    fast = build_minute_partitions("2026-12-01-00:00", end, now=datetime(2026, 12, 7, tzinfo=timezone.utc))
    plain = _plain(fast)
    assert isinstance(fast, MinutePartitionsDefinition) and fast == plain
    for moment in _moments(datetime(2026, 12, 1, tzinfo=timezone.utc), 300, seed=7):
        for respect_bounds in (True, False):
            got = fast.get_prev_partition_window(moment, respect_bounds=respect_bounds)
            want = plain.get_prev_partition_window(moment, respect_bounds=respect_bounds)
            assert (got is None) == (want is None), (moment, respect_bounds)
            if want is not None:
                assert (got.start, got.end) == (want.start, want.end), (moment, respect_bounds)
                assert got.start.tzinfo == want.start.tzinfo and got.end.tzinfo == want.end.tzinfo


@pytest.mark.parametrize("offset", [-1, -59, -360])
def test_lookback_mappings_match_dagsters_own_including_the_clipped_start(offset):
    fast = build_minute_partitions("2026-12-01-00:00", None, now=datetime(2026, 12, 7, tzinfo=timezone.utc))
    plain = _plain(fast)
    mapping = dg.TimeWindowPartitionMapping(start_offset=offset)
    for key_range in [("2026-12-01-00:00", "2026-12-01-00:00"), ("2026-12-01-03:00", "2026-12-01-03:09"),
                      ("2026-12-02-11:59", "2026-12-02-11:59"), ("2026-12-01-00:30", "2026-12-01-06:29")]:
        results = []
        for partitions in (fast, plain):
            downstream = partitions.empty_subset().with_partition_key_range(partitions, dg.PartitionKeyRange(*key_range))
            mapped = mapping.get_upstream_mapped_partitions_result_for_partitions(downstream, partitions, partitions)
            results.append((list(mapped.partitions_subset.get_partition_keys()),
                            list(mapped.required_but_nonexistent_subset.get_partition_keys())))
        assert results[0] == results[1], (offset, key_range)


def test_dagsters_lookback_mapping_still_asks_this_method_for_each_minute_of_offset():
    """The fast path only helps while Dagster maps offsets through ``get_prev_partition_window``:
    after a Dagster upgrade this fails loudly instead of the fast path silently going unused."""
    calls = []

    class Counting(MinutePartitionsDefinition):
        def get_prev_partition_window(self, start_dt, respect_bounds=True):
            calls.append(start_dt)
            return super().get_prev_partition_window(start_dt, respect_bounds)

    partitions = Counting(cron_schedule="* * * * *", start="2026-12-01-00:00", fmt="%Y-%m-%d-%H:%M", timezone="UTC")
    downstream = partitions.empty_subset().with_partition_keys(["2026-12-02-12:00"])
    dg.TimeWindowPartitionMapping(start_offset=-360).get_upstream_mapped_partitions_result_for_partitions(
        downstream, partitions, partitions)
    assert len(calls) >= 360, (f"Dagster {dg.__version__} no longer maps a lookback through get_prev_partition_window "
                               f"({len(calls)} calls for 360 minutes): MinutePartitionsDefinition's fast path is unused")


def test_other_definitions_take_dagsters_own_path():
    hourly_cron = MinutePartitionsDefinition(cron_schedule="0 * * * *", start="2026-12-01-00:00", fmt="%Y-%m-%d-%H:%M", timezone="UTC")
    other_zone = MinutePartitionsDefinition(cron_schedule="* * * * *", start="2026-12-01-00:00", fmt="%Y-%m-%d-%H:%M",
                                            timezone="Asia/Kathmandu")
    moment = datetime(2026, 12, 2, 5, 30, 30, tzinfo=timezone.utc)
    for partitions in (hourly_cron, other_zone):
        got, want = partitions.get_prev_partition_window(moment), _plain(partitions).get_prev_partition_window(moment)
        assert (got.start, got.end) == (want.start, want.end)
    assert hourly_cron.get_prev_partition_window(moment).start == datetime(2026, 12, 2, 4, tzinfo=timezone.utc)


# Keys in a range (add_asset_metadata(partition_key=) asks for the run's whole range on every call)

def test_keys_in_a_range_are_dagsters_own_and_each_call_gets_its_own_list():
    fast = build_minute_partitions("2026-12-01-00:00", "2026-12-03-00:00", now=datetime(2026, 12, 7, tzinfo=timezone.utc))
    plain = _plain(fast)
    for key_range in [("2026-12-01-00:00", "2026-12-01-00:00"), ("2026-12-01-00:00", "2026-12-01-23:59"),
                      ("2026-12-02-11:59", "2026-12-02-12:03"), ("2026-12-02-00:00", "2026-12-02-23:59")]:
        for _ in range(2):  # the second answer comes from the cache
            got = fast.get_partition_keys_in_range(dg.PartitionKeyRange(*key_range))
            assert got == plain.get_partition_keys_in_range(dg.PartitionKeyRange(*key_range)), key_range
            got.clear()  # a caller changing its list changes no later answer
    for outside in [("2026-11-30-23:59", "2026-12-01-00:05"), ("2026-12-02-23:58", "2026-12-03-00:00")]:
        errors = []
        for partitions in (fast, plain):
            with pytest.raises(Exception) as caught:
                partitions.get_partition_keys_in_range(dg.PartitionKeyRange(*outside))
            errors.append(type(caught.value))
        assert errors[0] == errors[1], outside


def test_dagsters_per_partition_metadata_still_asks_this_method():
    """``add_asset_metadata(partition_key=)`` validates the key against the run's range through
    ``get_partition_keys_in_range``; if an upgrade stops asking it, the cache is unused: say so."""
    calls = []

    class Counting(MinutePartitionsDefinition):
        def get_partition_keys_in_range(self, partition_key_range):
            calls.append(partition_key_range)
            return super().get_partition_keys_in_range(partition_key_range)

    partitions = Counting(cron_schedule="* * * * *", start="2026-12-01-00:00", fmt="%Y-%m-%d-%H:%M", timezone="UTC")
    keys = ["2026-12-01-00:00", "2026-12-01-00:01", "2026-12-01-00:02"]

    @dg.asset(partitions_def=partitions)
    def minutes(context: dg.AssetExecutionContext):
        for key in keys:
            context.add_asset_metadata({"n": 1}, partition_key=key)
        return dg.MaterializeResult()  # no IO manager

    result = dg.materialize([minutes], tags={"dagster/asset_partition_range_start": keys[0],
                                             "dagster/asset_partition_range_end": keys[-1]})
    assert result.success
    asked = [c for c in calls if (c.start, c.end) == (keys[0], keys[-1])]
    assert len(asked) >= len(keys), (f"Dagster {dg.__version__} no longer checks add_asset_metadata(partition_key=) through "
                                     f"get_partition_keys_in_range ({len(asked)} calls for {len(keys)}): the cache is unused")
