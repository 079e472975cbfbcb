"""How values read in an alert: counts, amounts with units, minutes in UTC, hashes, escaping."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from btc_anomaly_assets.alerts import block_kit as bk


def as_naive_utc(value: Any) -> datetime | None:
    """``value`` (datetime, pandas Timestamp or ISO string) as a naive UTC datetime; None if missing."""
    if bk.missing(value):
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp, got {type(value).__name__} {value!r}")
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def minute_label(minute: datetime | None, *, with_zone: bool = True) -> str:
    if minute is None:
        return "n/a"
    return minute.strftime("%Y-%m-%d %H:%M") + (" UTC" if with_zone else "")


def seed_time(value: Any) -> str:
    """The tutorial showed the CSV's ``window_start`` text (``2025-05-14 18:14:00``)."""
    minute = as_naive_utc(value)
    return "n/a" if minute is None else minute.strftime("%Y-%m-%d %H:%M:%S")


def seed_value(value: Any) -> str:
    if bk.missing(value):
        return "n/a"
    number = float(value)
    return str(int(number)) if number.is_integer() else str(value)


def count(value: Any) -> str:
    if bk.missing(value):
        return "n/a"
    number = float(value)
    return f"{int(number):,}" if number.is_integer() else f"{number:,.1f}"


def fixed(value: Any, places: int) -> str:
    if bk.missing(value):
        return "n/a"
    number = float(value)
    if math.isinf(number):
        return "∞" if number > 0 else "-∞"
    return f"{number:.{places}f}"


def quantity(value: Any, unit: str) -> str:
    if bk.missing(value):
        return "n/a"
    number = float(value)
    if unit == "BTC":
        text = f"{number:,.8f}".rstrip("0").rstrip(".")
    elif number.is_integer():
        text = f"{int(number):,}"
    else:
        text = f"{number:,.2f}"
    return f"{text} {unit}" if unit else text


def short_hash(value: Any) -> str:
    return "n/a" if bk.missing(value) else f"{str(value)[:16]}..."


def block_list(value: Any) -> list[str]:
    if value is None or isinstance(value, (str, bytes)):
        return []
    try:
        return [str(int(v)) for v in value]
    except TypeError:
        return []


def text(value: Any) -> str:
    return "n/a" if bk.missing(value) else str(value)


def escape(text: str) -> str:
    """Escape Slack mrkdwn control characters in data-derived text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


