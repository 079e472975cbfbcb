"""The configured minute range, checked: pure (no Dagster), so a bad range is reported before any asset is defined."""

from __future__ import annotations

from datetime import datetime, timezone

from btc_anomaly_assets.common.settings import DATE_FMT, env_value

# Dagster advises at most ~100k partitions per asset; its UI slows down well before that.
MAX_MINUTE_PARTITIONS = 100_000


def parse_minute(name: str, value: str) -> datetime:
    try:
        return datetime.strptime(value, DATE_FMT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a minute in the format {DATE_FMT!r} (UTC), e.g. 2025-08-13-00:00") from None


def partition_bounds(start: str, end: str | None, *, now: datetime | None = None) -> tuple[datetime, datetime | None]:
    """(start, end or None) as UTC datetimes; ValueError naming the variable when the range is unusable."""
    start_dt = parse_minute("BTC_PARTITIONS_START", start)
    end_dt = parse_minute("BTC_PARTITIONS_END", end) if end else None
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
    return start_dt, end_dt


def configured_end() -> str | None:
    end = env_value("BTC_PARTITIONS_END")
    return None if end is None or end.lower() in ("none", "open", "") else end


def configured_start() -> str:
    return env_value("BTC_PARTITIONS_START")
