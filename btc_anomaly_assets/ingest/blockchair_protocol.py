"""What Blockchair's answers mean (its ``context.code`` values), the errors the client raises, and what a fetch returns.

Blockchair puts the authoritative status in the JSON body (``context.code``): 402/429/435-437 are
rate limits (back off, honour Retry-After), 430/434/503 an IP block or outage (stop: a cool-off),
500/502/504 server errors (retry a bounded number of times).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

RATE_LIMIT_CODES = frozenset({402, 429, 435, 436, 437})
COOL_OFF_CODES = frozenset({430, 434, 503})
SERVER_ERROR_CODES = frozenset({500, 502, 504})


class BlockchairError(RuntimeError):
    """A Blockchair request failed; ``code`` is ``context.code`` (or the HTTP status), if any."""

    def __init__(self, message: str, *, code: int | None = None, endpoint: str | None = None):
        super().__init__(message)
        self.code = code
        self.endpoint = endpoint


class BlockchairRateLimitError(BlockchairError):
    """402/429/435/436/437 persisted through every retry, or Retry-After exceeded the wait cap."""

    def __init__(self, message: str, *, code: int | None, endpoint: str, retry_after_seconds: float | None):
        super().__init__(message, code=code, endpoint=endpoint)
        self.retry_after_seconds = retry_after_seconds


class BlockchairCoolOffError(BlockchairError):
    """430/434/503: the IP is (temporarily) blocked or the service is down; stop and retry later."""

    def __init__(self, message: str, *, code: int, endpoint: str, retry_after_seconds: float | None):
        super().__init__(message, code=code, endpoint=endpoint)
        self.retry_after_seconds = retry_after_seconds


class BlockchairTransportError(BlockchairError):
    """Timeouts or connection failures persisted through every retry."""


def effective_code(http_status: int, context: dict) -> int:
    """Blockchair's ``context.code`` when present (it is authoritative), else the HTTP status.

    A 200 in the body of a non-200 HTTP reply (e.g. a proxy error around a cached body) counts as
    the HTTP status.
    """
    code = context.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        return http_status
    return http_status if code == 200 and http_status != 200 else code


def cool_off_message(described: str, code: int, error_text: str, retry_after: float | None) -> str:
    what = "IP address temporarily blocked" if code in (430, 434) else "service unavailable or IP blocked"
    when = (
        f"retry after {retry_after:.0f} s (Retry-After)"
        if retry_after is not None
        else "blocks lift automatically after a while: retry no sooner than in an hour, or use an API key"
    )
    return f"{described}: Blockchair code {code}, {what}: {error_text}. Not retrying now; {when}"


@dataclass(frozen=True)
class FetchResult:
    """One window's rows plus the accounting a run should record.

    ``frame``: RAW_TRANSACTION_COLUMNS (time basis ``block`` or ``first_seen``), sorted by time.
    ``reported_total_rows``: sum of ``context.total_rows`` over the (leaf) windows actually paged;
    for confirmed data ``len(frame) + duplicates_dropped`` must equal it.
    ``requests_made``: HTTP requests sent, retries included.
    ``request_cost_total``: sum of ``context.request_cost`` (Blockchair request points).
    ``state``: tip height from the first response (the pin for confirmed data).
    ``rows_received``: rows in all pages, before de-duplication.
    ``windows_split``: how many times a window was halved to stay under the offset cap.
    ``api_version`` / ``next_major_update``: from the last response's ``context.api``.
    """

    frame: pd.DataFrame
    reported_total_rows: int
    requests_made: int
    request_cost_total: float
    state: int | None
    rows_received: int = 0
    duplicates_dropped: int = 0
    windows_split: int = 0
    api_version: str | None = None
    next_major_update: str | None = None
