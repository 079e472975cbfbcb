"""A live run launched ahead of its minute waits for the close (and the collector's flush) before reading it."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from btc_anomaly_assets.common.utc import utc_now
from btc_anomaly_assets.live.landing import LandingZone
from btc_anomaly_assets.live.landing_source import landing_batch
from btc_anomaly_assets.live.minute_close import LANDED_TIMEOUT, PULL_SETTLE, preload_modules, wait_for_close
from btc_anomaly_assets.live.raw_mapping import esplora_to_raw
from btc_anomaly_testing.fakes.mempool_space_server import esplora_tx, real_rows

END = datetime(2026, 12, 7, 18, 1)
LOG = logging.getLogger("test_minute_close")


class Clock:
    def __init__(self, at: datetime):
        self.at, self.sleeps = at, 0

    def now(self) -> datetime:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.at += timedelta(seconds=seconds)


def test_a_push_minute_is_read_once_the_collector_has_flushed_past_its_close():
    clock, preloaded = Clock(END - timedelta(seconds=15)), []
    flushed_at = END + timedelta(seconds=0.3)
    result = wait_for_close(END, lambda: clock.at >= flushed_at, LOG, now=clock.now, sleep=clock.sleep,
                            preload=lambda: preloaded.append("prophet") or ["prophet"])
    assert result.landed is True and preloaded == ["prophet"] and result.preloaded == ["prophet"]
    assert flushed_at <= clock.at < flushed_at + timedelta(seconds=0.1)


def test_a_collector_that_never_lands_the_minute_holds_the_run_only_until_the_timeout(caplog):
    clock = Clock(END - timedelta(seconds=1))
    with caplog.at_level(logging.INFO, logger=LOG.name):
        result = wait_for_close(END, lambda: False, LOG, now=clock.now, sleep=clock.sleep, preload=lambda: [])
    assert result.landed is False and END + LANDED_TIMEOUT <= clock.at < END + LANDED_TIMEOUT + timedelta(seconds=0.1)
    assert any("is `btc-anomaly collect` running" in r.message for r in caplog.records if r.levelno == logging.WARNING)


def test_a_window_that_closed_long_ago_does_not_wait_or_preload():
    clock, preloaded = Clock(END + timedelta(hours=3)), []
    assert wait_for_close(END, lambda: False, LOG, now=clock.now, sleep=clock.sleep,
                          preload=lambda: preloaded.append(1) or []).landed is False
    assert wait_for_close(END, None, LOG, now=clock.now, sleep=clock.sleep, preload=lambda: preloaded.append(1) or []).landed is None
    assert clock.sleeps == 0 and preloaded == []


def test_a_polled_source_waits_for_the_close_and_a_settle_second_only():
    clock = Clock(END - timedelta(seconds=2.5))
    result = wait_for_close(END, None, LOG, now=clock.now, sleep=clock.sleep, preload=lambda: [])
    assert result.landed is None and clock.at == END + PULL_SETTLE and result.preloaded == []  # 2.5 s < preload threshold


def test_a_module_that_cannot_be_preloaded_is_logged_and_left_to_its_step(caplog):
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert preload_modules(("json", "no_such_module_btc"), log=LOG) == ["json"]
    assert "no_such_module_btc" in caplog.text


def test_landing_batch_of_a_minute_still_open_returns_what_the_collector_flushed_after_the_close(tmp_path, monkeypatch):
    from btc_anomaly_assets.live import landing_source, minute_close

    lake, source = str(tmp_path / "lake"), "mempool-space"
    start, end = datetime(2025, 8, 14, 12, 0), datetime(2025, 8, 14, 12, 1)
    shift = [timedelta(0)]

    def clock() -> datetime:
        return utc_now() + shift[0]

    monkeypatch.setattr(minute_close, "utc_now", clock)
    monkeypatch.setattr(landing_source, "utc_now", clock)
    zone = LandingZone(lake, source)
    zone.flush(start - timedelta(minutes=5))
    rows = [esplora_to_raw(esplora_tx(r), start + timedelta(seconds=10 * i)) for i, r in enumerate(real_rows(6))]
    for row in rows[:4]:
        zone.add_transaction(row)
    zone.flush(end - timedelta(seconds=2))  # the minute is still open: four rows so far

    def collector():  # the last rows arrive late in the minute and are flushed right after its close
        while clock() < end:
            time.sleep(0.02)
        for row in rows[4:]:
            zone.add_transaction(row)
        zone.flush(clock())

    shift[0] = (end - timedelta(seconds=1)) - utc_now()  # from here on the clock reads 12:00:59, at real speed
    thread = threading.Thread(target=collector, daemon=True)
    thread.start()
    batch = landing_batch(lake, source, start, end, LOG)
    thread.join(5)
    assert len(batch.frame) == 6 and 0.9 <= batch.figures["close_wait_seconds"] < 3
    assert not batch.incomplete_minutes
