"""A push source's window for ``raw_transactions``: the landing zone's minutes, with their gaps."""

from __future__ import annotations

from datetime import datetime

from btc_anomaly_assets.common.utc import naive_utc, utc_now
from btc_anomaly_assets.ingest.resources import SourceBatch
from btc_anomaly_assets.live.landing import landing_root, read_landing_window, read_state
from btc_anomaly_assets.live.minute_close import wait_for_close


def landing_batch(lake_url: str, source: str, start: datetime, end: datetime, log) -> SourceBatch:
    """What the collector landed for ``[start, end)``; every minute with a gap (or not watched) is listed
    in ``incomplete_minutes``, so the asset reports it in metadata and in its ``feed_complete`` check.

    A window that has not closed yet (a live run launched ahead of its minute's close) is read once
    the collector has watched the feed up to its end (``minute_close.wait_for_close``)."""
    root, end_utc = landing_root(lake_url, source), naive_utc(end)

    def landed() -> bool:
        alive_at = read_state(root, source).alive_at
        return alive_at is not None and alive_at >= end_utc

    waited = wait_for_close(end_utc, landed, log)
    window = read_landing_window(lake_url, source, start, end, utc_now())
    state = window.state
    if state.started_at is None:
        log.warning(f"BTC_SOURCE={source}: the landing zone has never been written; is `btc-anomaly collect` running?")
    refilled = sum(g.refilled for g in window.gaps)
    detail = (f"landing zone, {window.files_read} minute file(s), collector alive at "
              f"{state.alive_at:%Y-%m-%d %H:%M:%S}" if state.alive_at else "landing zone, collector never ran")
    return SourceBatch(
        frame=window.frame,
        reported_rows=len(window.frame),
        source=source,
        detail=detail,
        figures={"landing_files": window.files_read, "feed_gaps": len(window.gaps), "feed_gap_refilled": refilled,
                 "feed_incomplete_minutes": len(window.incomplete),
                 "feed_gap_reasons": ", ".join(sorted({g.reason for g in window.gaps})) or "none",
                 "close_wait_seconds": waited.waited_seconds},
        incomplete_minutes=window.incomplete,
    )
