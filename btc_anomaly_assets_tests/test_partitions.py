from datetime import datetime, timezone

import pytest

from btc_anomaly_assets.common.partitions import MAX_MINUTE_PARTITIONS, build_minute_partitions, minute_partitions


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
