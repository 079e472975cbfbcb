"""The one minute-partitions definition every asset shares."""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg

from btc_anomaly_assets.common.settings import DATE_FMT, env_value

# Dagster advises at most ~100k partitions per asset; its UI slows down well before that.
MAX_MINUTE_PARTITIONS = 100_000


def _parse(name: str, value: str) -> datetime:
    try:
        return datetime.strptime(value, DATE_FMT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a minute in the format {DATE_FMT!r} (UTC), e.g. 2025-08-13-00:00") from None


def build_minute_partitions(start: str, end: str | None, *, now: datetime | None = None) -> dg.TimeWindowPartitionsDefinition:
    """Minute partitions from ``start`` to ``end`` (exclusive; ``None`` = open-ended), refusing more than ~100k keys."""
    start_dt = _parse("BTC_PARTITIONS_START", start)
    end_dt = _parse("BTC_PARTITIONS_END", end) if end else None
    if end_dt is not None and end_dt <= start_dt:
        raise ValueError(f"BTC_PARTITIONS_END ({end}) must be after BTC_PARTITIONS_START ({start})")
    last = end_dt or (now or datetime.now(timezone.utc))
    count = int((last - start_dt).total_seconds() // 60)
    if count > MAX_MINUTE_PARTITIONS:
        raise ValueError(
            f"BTC_PARTITIONS_START={start} gives {count:,} minute partitions up to {last:%Y-%m-%d %H:%M} UTC; "
            f"Dagster advises at most {MAX_MINUTE_PARTITIONS:,} per asset. Set a more recent start "
            "(a live deployment keeps about the last 30-60 days)."
        )
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule="* * * * *",
        start=start_dt.strftime(DATE_FMT),
        end=end_dt.strftime(DATE_FMT) if end_dt else None,
        fmt=DATE_FMT,
        timezone="UTC",
    )


def _configured_end() -> str | None:
    end = env_value("BTC_PARTITIONS_END")
    return None if end is None or end.lower() in ("none", "open", "") else end


minute_partitions = build_minute_partitions(env_value("BTC_PARTITIONS_START"), _configured_end())
