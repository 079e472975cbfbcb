"""The collector loop: one push feed in, the landing zone out.

A feed (``MempoolSpaceFeed``, ``BitcoinCoreFeed``) runs as a task and reports to the collector
through the ``FeedSink`` methods: transactions it received (already mapped to raw rows stamped
with their first-seen time), replacement/eviction/mining events, every message (for the state's
last-message time and sequence), and gaps it opened and closed. The collector de-duplicates by
hash (in memory, seeded from the last hours of landed minutes after a restart), buffers, and
flushes the landing zone every ``flush_seconds`` and right after each minute boundary, so a
minute's file is complete a fraction of a second after the minute closes.

A restart is a gap too: the time between the previous process's last flush and this start.
``run(seconds)`` stops cleanly after ``seconds`` (or on ``stop()``/SIGTERM): the feed is
cancelled, open gaps are closed at the stop time and the last flush is written.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Protocol

from btc_anomaly_assets.common.utc import utc_now
from btc_anomaly_assets.live.landing import Gap, LandingZone

DEDUP_MEMORY_MINUTES = 360  # a restarted collector remembers the hashes of the last 6 h of landed minutes
log = logging.getLogger(__name__)


class Feed(Protocol):
    name: str

    async def run(self, sink: FeedSink) -> None: ...


class FeedSink:
    """What a feed may tell the collector (the collector implements it)."""

    def known(self, txid: str) -> bool: ...
    def transactions(self, rows: list[dict]) -> int: ...
    def event(self, moment: datetime, kind: str, txid: str, by_txid: str | None = None, block_hash: str | None = None) -> None: ...
    def message(self, moment: datetime, sequence: int | None = None) -> None: ...
    def open_gap(self, start: datetime, reason: str, detail: str = "") -> Gap: ...
    def close_gap(self, gap: Gap, end: datetime, refilled: int = 0, note: str = "") -> None: ...


class Collector(FeedSink):
    def __init__(self, feed: Feed, landing: LandingZone, *, flush_seconds: float = 0.5, clock=utc_now, logger=None):
        self.feed = feed
        self.landing = landing
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.log = logger or log
        self._seen: set[str] = set()
        self._seen_by_minute: dict[datetime, list[str]] = {}  # bounded memory: minutes older than DEDUP_MEMORY_MINUTES are forgotten
        self._seen_lock = threading.Lock()  # a REST re-fill thread reports transactions too
        self._stop = asyncio.Event()
        self.received = 0  # transaction objects the feed delivered (duplicates included)
        self.duplicates = 0
        self.gaps_opened: list[Gap] = []

    # --- FeedSink
    def known(self, txid: str) -> bool:
        return txid in self._seen

    def transactions(self, rows: list[dict]) -> int:
        new = 0
        with self._seen_lock:
            for row in rows:
                self.received += 1
                if row["hash"] in self._seen:
                    self.duplicates += 1
                    continue
                self._seen.add(row["hash"])
                self._seen_by_minute.setdefault(row["time"].replace(second=0, microsecond=0), []).append(row["hash"])
                self.landing.add_transaction(row)
                new += 1
        return new

    def event(self, moment, kind, txid, by_txid=None, block_hash=None) -> None:
        self.landing.add_event(moment, kind, txid, by_txid, block_hash)

    def message(self, moment: datetime, sequence: int | None = None) -> None:
        self.landing.state.last_message_at = moment
        if sequence is not None:
            self.landing.state.last_sequence = sequence

    def open_gap(self, start: datetime, reason: str, detail: str = "") -> Gap:
        gap = self.landing.open_gap(start, reason, detail)
        self.gaps_opened.append(gap)
        self.log.warning(f"feed gap opened at {start:%H:%M:%S.%f} ({reason}: {detail})")
        return gap

    def close_gap(self, gap: Gap, end: datetime, refilled: int = 0, note: str = "") -> None:
        self.landing.close_gap(gap, end)
        gap.refilled += refilled
        gap.refill_note = note or gap.refill_note
        self.log.warning(f"feed gap {gap.reason} closed: {gap.start:%H:%M:%S}-{end:%H:%M:%S}, {gap.refilled} re-filled")

    def forget_before(self, minute: datetime) -> int:
        """Drop the de-duplication memory of minutes before ``minute``; returns the hashes forgotten."""
        forgotten = 0
        with self._seen_lock:
            for old in [m for m in self._seen_by_minute if m < minute]:
                hashes = self._seen_by_minute.pop(old)
                self._seen.difference_update(hashes)
                forgotten += len(hashes)
        return forgotten

    # --- the loop
    def stop(self) -> None:
        self._stop.set()

    def _start(self) -> None:
        now = self.clock()
        previous = self.landing.state.alive_at
        if previous is not None:
            self._seen = self.landing.recent_hashes(now, DEDUP_MEMORY_MINUTES)
            if now > previous:
                self.landing.record_gap(previous, now, "restart", "collector was not running")
                self.log.warning(f"collector restart: gap {previous:%Y-%m-%d %H:%M:%S} - {now:%H:%M:%S} recorded")
        self.landing.flush(now)

    async def _flusher(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            to_boundary = 60.0 - now % 60.0 + 0.05  # just after the minute closes
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=min(self.flush_seconds, to_boundary))
            except TimeoutError:
                pass
            now = self.clock()
            await asyncio.to_thread(self.landing.flush, now)
            self.forget_before(now.replace(second=0, microsecond=0) - timedelta(minutes=DEDUP_MEMORY_MINUTES))

    async def run(self, seconds: float | None = None) -> dict:
        """Collect until ``seconds`` have passed or ``stop()``; returns the figures of the run."""
        self._start()
        began = time.monotonic()
        feed_task = asyncio.create_task(self.feed.run(self), name=f"feed:{self.feed.name}")
        flush_task = asyncio.create_task(self._flusher(), name="landing-flush")
        stopper = asyncio.create_task(self._stop.wait())
        waiters = {feed_task, stopper}
        try:
            done, _ = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            if feed_task in done and feed_task.exception() is not None:
                raise feed_task.exception()
        finally:
            self._stop.set()
            for task in (feed_task, stopper):
                task.cancel()
            await asyncio.gather(feed_task, stopper, return_exceptions=True)
            await flush_task
            now = self.clock()
            for gap in self.landing.state.gaps:
                if gap.end is None:
                    self.landing.close_gap(gap, now)
            self.landing.flush(now)
        return {"seconds": round(time.monotonic() - began, 1), "received": self.received, "duplicates": self.duplicates,
                "landed": self.landing.landed, "gaps": len(self.gaps_opened)}
