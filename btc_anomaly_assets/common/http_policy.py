"""How every HTTP client of the project waits and retries: one reading of Retry-After, one backoff.

Used by the Blockchair and mempool.space clients, the Slack delivery, the Claude client and the
Bitcoin Core RPC client, so a server's ``Retry-After`` means the same to all of them:

- ``retry_after_seconds`` reads ``retry-after-ms`` (Anthropic's), then ``Retry-After`` as delta
  seconds or as an HTTP date (RFC 9110 section 10.2.3 allows both); names are matched without
  regard to case, list values (some clients keep repeated headers as lists) use their first item.
  A date in the past, or a negative number, is 0; an unreadable value is ``None`` (no hint).
- ``backoff_seconds`` is exponential (``initial * 2**attempt``, capped) with optional jitter.
- ``is_retryable_status`` is the common rule: 408, 409, 425, 429 and 5xx are worth retrying; a
  4xx otherwise is the request's fault and retrying cannot help.
"""

from __future__ import annotations

import email.utils
import random
import time
from datetime import timezone
from typing import Any, Callable, Mapping

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if str(key).lower() == name:
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            return None if value is None else str(value).strip()
    return None


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """One ``Retry-After`` value as seconds to wait: delta seconds or an HTTP date; None if unreadable."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now())


def retry_after_seconds(headers: Mapping[str, Any] | str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, then ``Retry-After``); None without a hint.

    ``headers`` is a header mapping (any case) or a single ``Retry-After`` value.
    """
    if headers is None:
        return None
    if isinstance(headers, str):
        return parse_retry_after(headers, now=now)
    milliseconds = _header(headers, "retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000.0)
        except ValueError:
            pass
    return parse_retry_after(_header(headers, "retry-after"), now=now)


def backoff_seconds(attempt: int, *, initial: float, maximum: float, jitter: float = 0.0,
                    rng: Callable[[], float] = random.random) -> float:
    """Wait before retry number ``attempt`` (0 for the first retry): ``initial * 2**attempt`` capped at
    ``maximum``, then scaled down by up to ``jitter`` (0.25 = 75-100 %), so many clients do not retry in step."""
    if attempt < 0 or initial < 0 or maximum < 0 or not 0 <= jitter < 1:
        raise ValueError(f"backoff_seconds: attempt={attempt}, initial={initial}, maximum={maximum}, jitter={jitter}")
    delay = min(initial * (2.0**attempt), maximum)
    return delay * (1.0 - jitter * rng()) if jitter else delay


def is_retryable_status(status: int) -> bool:
    """408, 409, 425, 429 and every 5xx (529 "overloaded" included)."""
    return status in RETRYABLE_STATUSES or 500 <= status <= 599
