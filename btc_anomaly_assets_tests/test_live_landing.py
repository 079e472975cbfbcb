"""The landing zone (atomic minute files, state, gaps) and raw_transactions reading it."""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg
import pytest

from btc_anomaly_assets.common.lake import read_raw_window
from btc_anomaly_assets.common.resources import LakeResource
from btc_anomaly_assets.ingest.assets import raw_transactions
from btc_anomaly_assets.ingest.resources import TransactionSource
from btc_anomaly_assets.live.budget import live_budget_error, live_daily_requests
from btc_anomaly_assets.live.landing import (
    LandingError,
    LandingZone,
    minute_problems,
    read_landing_events,
    read_landing_window,
    read_state,
)
from btc_anomaly_assets.live.raw_mapping import esplora_to_raw
from btc_anomaly_testing.fakes.mempool_space_server import esplora_tx, real_rows

T0 = datetime(2025, 8, 14, 12, 0)  # inside the default minute partitions
SOURCE = "mempool-space"


def _rows(count: int, start: datetime, step: timedelta, offset: int = 0) -> list[dict]:
    return [esplora_to_raw(esplora_tx(r), start + i * step) for i, r in enumerate(real_rows(count, offset=offset))]


def test_minutes_are_merged_atomically_and_the_earliest_first_seen_wins(tmp_path):
    lake = str(tmp_path / "lake")
    zone = LandingZone(lake, SOURCE)
    rows = _rows(90, T0 + timedelta(seconds=5), timedelta(seconds=1))  # 12:00:05 .. 12:01:34
    for row in rows[:50]:
        zone.add_transaction(row)
    assert zone.flush(T0 + timedelta(minutes=1)) == 50
    for row in rows[40:]:  # ten already landed, re-seen later in the same minute
        zone.add_transaction({**row, "time": row["time"] + timedelta(seconds=3)} if row in rows[40:50] else row)
    assert zone.flush(T0 + timedelta(minutes=2)) == 40
    files = sorted(p.name for p in zone.root.rglob("*") if p.is_file())
    assert files == ["12-00.parquet", "12-01.parquet", "state.json"]  # no temporary file left behind
    window = read_landing_window(lake, SOURCE, T0, T0 + timedelta(minutes=2), T0 + timedelta(minutes=2))
    assert len(window.frame) == 90 and window.frame["hash"].is_unique
    assert dict(zip(window.frame["hash"], window.frame["time"]))[rows[45]["hash"]] == rows[45]["time"]
    assert set(window.frame["time_basis"]) == {"first_seen"} and (window.frame["block_id"] == -1).all()
    zone.add_event(T0 + timedelta(seconds=70), "replaced", rows[0]["hash"], by_txid=rows[1]["hash"])
    zone.flush(T0 + timedelta(minutes=2))
    events = read_landing_events(lake, SOURCE, T0, T0 + timedelta(minutes=2))
    assert events.to_dict("records")[0]["by_txid"] == rows[1]["hash"]
    with pytest.raises(LandingError, match="unknown landing event"):
        zone.add_event(T0, "evaporated", rows[0]["hash"])
    with pytest.raises(LandingError, match="object store"):
        LandingZone("s3://bucket/lake", SOURCE)


def test_incomplete_minutes_say_why(tmp_path):
    lake = str(tmp_path / "lake")
    zone = LandingZone(lake, SOURCE)
    zone.flush(T0 + timedelta(seconds=30))  # started half-way through 12:00
    zone.record_gap(T0 + timedelta(minutes=2, seconds=50), T0 + timedelta(minutes=3, seconds=5), "disconnect", "test")
    zone.open_gap(T0 + timedelta(minutes=5, seconds=10), "disconnect")
    zone.flush(T0 + timedelta(minutes=5, seconds=40))
    state = read_state(zone.root, SOURCE)
    problems = minute_problems(state, T0 - timedelta(minutes=1), T0 + timedelta(minutes=7), T0 + timedelta(minutes=7))
    assert problems[T0 - timedelta(minutes=1)] == ["collector not yet started"]
    assert problems[T0] == ["collector started during the minute"]
    assert T0 + timedelta(minutes=1) not in problems and T0 + timedelta(minutes=4) not in problems
    assert "gap disconnect 12:02:50-12:03:05" in problems[T0 + timedelta(minutes=2)][0]
    assert problems[T0 + timedelta(minutes=3)] == problems[T0 + timedelta(minutes=2)]
    assert "(open)" in problems[T0 + timedelta(minutes=5)][-1]
    assert problems[T0 + timedelta(minutes=6)][0].startswith("collector not seen after 12:05:40")


def test_raw_transactions_reads_the_landing_zone_and_warns_on_gaps(tmp_path):
    lake = str(tmp_path / "lake")
    zone = LandingZone(lake, SOURCE)
    zone.flush(T0 - timedelta(minutes=5))
    for row in _rows(120, T0 + timedelta(seconds=1), timedelta(seconds=1.5)):  # 12:00:01 .. 12:02:59
        zone.add_transaction(row)
    zone.record_gap(T0 + timedelta(minutes=1, seconds=20), T0 + timedelta(minutes=1, seconds=25), "sequence", "1 update lost")
    zone.flush(T0 + timedelta(minutes=3, seconds=1))
    resources = {"source": TransactionSource(source=SOURCE), "lake": LakeResource(url=lake)}
    result = dg.materialize([raw_transactions], resources=resources,
                            tags={"dagster/asset_partition_range_start": "2025-08-14-12:00",
                                  "dagster/asset_partition_range_end": "2025-08-14-12:02"})
    assert result.success  # the feed check warns; it does not block the graph
    checks = {e.event_specific_data.check_name: e.event_specific_data for e in result.all_events
              if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert not checks["feed_complete"].passed and checks["feed_complete"].severity == dg.AssetCheckSeverity.WARN
    assert all(c.passed for name, c in checks.items() if name != "feed_complete")
    stored = read_raw_window(f"{lake}/raw_transactions", T0, T0 + timedelta(minutes=3))
    assert len(stored) == 120 and set(stored["time_basis"]) == {"first_seen"}
    per_minute = {m.partition: m.metadata for m in result.asset_materializations_for_node("btc__raw_transactions")}
    assert [per_minute[f"2025-08-14-12:0{i}"]["feed_incomplete"].value for i in range(3)] == [0, 1, 0]
    assert per_minute["2025-08-14-12:00"]["source_feed_gap_reasons"].value == "sequence"


def test_blockchair_live_budget_refuses_without_a_key(monkeypatch):
    daily, busiest = live_daily_requests()
    assert daily > 1440 and busiest > 30
    error = live_budget_error(has_key=False)
    assert "\n" not in error and "BLOCKCHAIR_API_KEY" in error and "1,440" in error
    assert live_budget_error(has_key=True) is None
    from btc_anomaly_assets.live.schedules import check_live_source

    monkeypatch.setenv("BTC_LIVE", "on")
    monkeypatch.setenv("BTC_SOURCE", "blockchair")
    monkeypatch.delenv("BLOCKCHAIR_API_KEY", raising=False)
    with pytest.raises(ValueError, match="key-less limit"):
        check_live_source()
    monkeypatch.setenv("BLOCKCHAIR_API_KEY", "paid-plan-key")
    check_live_source()
    monkeypatch.setenv("BTC_SOURCE", "mempool-space")
    monkeypatch.delenv("BLOCKCHAIR_API_KEY")
    check_live_source()


def test_collector_deduplicates_with_bounded_memory(tmp_path):
    from btc_anomaly_assets.live.collector import Collector

    class NoFeed:
        name = "none"

    collector = Collector(NoFeed(), LandingZone(str(tmp_path / "lake"), SOURCE))
    rows = _rows(30, T0, timedelta(seconds=4))  # 12:00:00 .. 12:01:56
    assert collector.transactions(rows) == 30 and collector.transactions(rows[:5]) == 0 and collector.duplicates == 5
    assert collector.forget_before(T0 + timedelta(minutes=1)) == 15
    assert not collector.known(rows[0]["hash"]) and collector.known(rows[-1]["hash"])
