"""Blockchair's request budget for live operation: does the configured cadence fit the plan?

Live operation on Blockchair polls the mempool listing at each minute close (``live_minute``) and
re-fetches the 10 minutes 10-20 minutes back every 10 minutes (``late_data_sweep``). A minute of
arrivals is ~300-600 transactions and a page holds 100 rows, so each poll costs several requests.
Without an API key Blockchair allows about 1,440 requests a day and 30 a minute; the plans with a
key start at 25,000 a day. ``live_budget_error`` returns the one-line refusal, or None if it fits.
"""

from __future__ import annotations

import math

from btc_anomaly_assets.live.schedules import LATE_DATA_SPAN_MINUTES

FREE_DAILY_REQUESTS = 1_440
FREE_REQUESTS_PER_MINUTE = 30
PAGE_ROWS = 100
TYPICAL_ARRIVALS_PER_MINUTE = 450  # the middle of 300-600 mempool arrivals a minute


def live_daily_requests(arrivals_per_minute: int = TYPICAL_ARRIVALS_PER_MINUTE) -> tuple[int, int]:
    """(requests a day, requests in the busiest minute) of live_minute + late_data_sweep."""
    per_minute = math.ceil(arrivals_per_minute / PAGE_ROWS)
    per_sweep = math.ceil(arrivals_per_minute * LATE_DATA_SPAN_MINUTES / PAGE_ROWS)
    sweeps_a_day = 24 * 60 // LATE_DATA_SPAN_MINUTES
    return 24 * 60 * per_minute + sweeps_a_day * per_sweep, per_minute + per_sweep


def live_budget_error(has_key: bool, arrivals_per_minute: int = TYPICAL_ARRIVALS_PER_MINUTE) -> str | None:
    if has_key:
        return None
    daily, busiest = live_daily_requests(arrivals_per_minute)
    if daily <= FREE_DAILY_REQUESTS and busiest <= FREE_REQUESTS_PER_MINUTE:
        return None
    return (f"BTC_SOURCE=blockchair with BTC_LIVE=on needs ~{daily:,} requests a day (up to {busiest} in a minute) at "
            f"~{arrivals_per_minute} arrivals a minute, over the key-less limit of {FREE_DAILY_REQUESTS:,} a day / "
            f"{FREE_REQUESTS_PER_MINUTE} a minute: set BLOCKCHAIR_API_KEY, or run live from a push source "
            "(BTC_SOURCE=mempool-space or bitcoin-core with `btc-anomaly collect`)")
