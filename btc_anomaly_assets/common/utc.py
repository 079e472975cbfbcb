"""The project's one time convention: naive datetimes are UTC.

Every stored timestamp (Parquet lake, DuckDB, alert records) is naive UTC. ``naive_utc`` is the
one way to get there: a timezone-aware value is *converted* to UTC before its zone is dropped
(dropping the zone alone would shift a value given in another zone), a naive value is taken to
be UTC already.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd


def utc_now() -> datetime:
    """Now as a naive UTC datetime."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def naive_utc(moment: datetime, *, name: str = "time") -> datetime:
    """``moment`` as a naive UTC datetime (aware values converted, naive ones taken as UTC)."""
    if isinstance(moment, pd.Timestamp):
        moment = moment.to_pydatetime()
    if not isinstance(moment, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(moment).__name__}: {moment!r}")
    if moment.tzinfo is not None:
        return moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def naive_utc_timestamp(moment: datetime, *, name: str = "time") -> pd.Timestamp:
    """``naive_utc`` as a pandas Timestamp (for comparisons with frame columns)."""
    return pd.Timestamp(naive_utc(moment, name=name))
