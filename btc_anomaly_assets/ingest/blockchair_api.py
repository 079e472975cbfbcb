"""Blockchair API v2 client: all transactions of one time window, confirmed or mempool.

Endpoints (``bitcoin/transactions`` and ``bitcoin/mempool/transactions``) are "infinitables":
``q=`` filters, ``s=`` sort, ``limit`` <= 100 rows per page and ``offset`` <= 10,000. To get a
whole window this client

* filters ``q=time(A...B)`` (exclusive upper bound, UTC ``YYYY-MM-DD HH:MM:SS``, space encoded
  as ``%20``) and sorts ``s=time(asc),id(asc)`` so page boundaries are deterministic;
* pages with ``offset``; when a window reports more rows than offset paging can reach
  (``max_offset + limit``) it is split in halves, recursively, down to one second;
* for confirmed data pins every request after the first to ``block_id(..{state})``, the tip height
  reported by the first response, so a block mined during paging cannot shift the pages;
* reads ``context.code`` (Blockchair mirrors it in the HTTP status, but the body is authoritative),
  retries 402/429/435/436/437 (limits) and 500/502/504/timeouts/connection errors with bounded
  backoff, honouring ``Retry-After``; raises ``BlockchairCoolOffError`` at once on 430/434/503
  (IP blocked / service unavailable: retrying makes the block longer);
* logs every request's ``request_cost`` and ``context.api`` version / ``next_major_update``.

The API key travels in the query string (``key=``), as Blockchair requires. It is never logged
and never appears in exception messages or reprs: every URL or message that leaves this module
is redacted, transport exceptions are not chained (their text contains the URL), and a filter on
urllib3's logger redacts the DEBUG request line urllib3 itself writes.

Mempool caveat: a mempool window cannot be pinned (rows have no block yet) and transactions leave
the mempool when mined, so paging a busy window can miss rows that were confirmed mid-fetch. The
result reports ``reported_total_rows`` and ``rows_received`` so a row-count check can see it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable
from urllib.parse import quote, urlencode

import pandas as pd
import requests

from btc_anomaly_assets.common.http_policy import retry_after_seconds
from btc_anomaly_assets.common.redaction import REDACTED, Redactor, install_redaction
from btc_anomaly_assets.common.schema import TIME_BASIS_BLOCK, TIME_BASIS_FIRST_SEEN
from btc_anomaly_assets.common.utc import naive_utc
from btc_anomaly_assets.ingest.blockchair_protocol import (
    COOL_OFF_CODES,
    RATE_LIMIT_CODES,
    SERVER_ERROR_CODES,
    BlockchairCoolOffError,
    BlockchairError,
    BlockchairRateLimitError,
    BlockchairTransportError,
    FetchResult,
    cool_off_message,
    effective_code,
)
from btc_anomaly_assets.ingest.raw_frames import (
    BLOCKCHAIR_TIME_FORMAT,
    DUPLICATES_DROPPED_ATTR,
    empty_raw_frame,
    to_raw_frame,
)

DEFAULT_BASE_URL = "https://api.blockchair.com"
CONFIRMED_PATH = "/bitcoin/transactions"
MEMPOOL_PATH = "/bitcoin/mempool/transactions"
MAX_PAGE_LIMIT = 100
MAX_OFFSET = 10_000
SORT_ORDER = "time(asc),id(asc)"




_log = logging.getLogger(__name__)


@dataclass
class _Page:
    rows: list[dict]
    total_rows: int
    state: int | None
    request_cost: float
    label: str


@dataclass
class _FetchRun:
    """Mutable accounting for one ``fetch_window`` call."""

    path: str
    mempool: bool
    pin_state: int | None = None
    first_state: int | None = None
    rows: list[dict] = field(default_factory=list)
    row_labels: list[str] = field(default_factory=list)
    reported_total_rows: int = 0
    requests_made: int = 0
    request_cost_total: float = 0.0
    windows_split: int = 0
    api_version: str | None = None
    next_major_update: str | None = None


# urllib3 modules whose log lines can carry a request URL with ``key=``.
_URL_LOGGING_MODULES = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.poolmanager")


class BlockchairClient:
    """Fetches windows of Bitcoin transactions from Blockchair API v2 (see the module docstring).

    ``timeout`` is requests' (connect, read) seconds. ``max_retries`` bounds the retries of one
    request (so at most ``max_retries + 1`` attempts). Without Retry-After, the n-th retry waits
    ``backoff_seconds * 2**(n-1)``. A Retry-After above ``max_retry_after_seconds`` is not slept
    through: ``BlockchairRateLimitError`` is raised with the server's figure. ``page_limit`` and
    ``max_offset`` are Blockchair's (100 and 10,000); they are parameters so a fake can shrink them.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: tuple[float, float] = (5, 30),
        max_retries: int = 4,
        backoff_seconds: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        logger: logging.Logger | None = None,
        *,
        page_limit: int = MAX_PAGE_LIMIT,
        max_offset: int = MAX_OFFSET,
        max_retry_after_seconds: float = 300.0,
        session: requests.Session | None = None,
    ):
        if not 1 <= page_limit <= MAX_PAGE_LIMIT:
            raise ValueError(f"page_limit must be 1..{MAX_PAGE_LIMIT}, got {page_limit}")
        if max_offset < 0 or max_retries < 0 or backoff_seconds < 0:
            raise ValueError("max_offset, max_retries and backoff_seconds must be >= 0")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self._redactor = Redactor(self._api_key)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.sleep = sleep
        self.log = logger or _log
        self.page_limit = page_limit
        self.max_offset = max_offset
        self.max_retry_after_seconds = max_retry_after_seconds
        self._session = session or requests.Session()
        self._seen_api_version: str | None = None
        self._warned_major_update: str | None = None
        install_redaction(_URL_LOGGING_MODULES)

    def __repr__(self) -> str:
        key = REDACTED if self._api_key else None
        return f"BlockchairClient(base_url={self.base_url!r}, api_key={key!r}, timeout={self.timeout!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "BlockchairClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def reachable_rows(self) -> int:
        """Rows one window can deliver through offset paging: last offset ``max_offset`` + a page."""
        return self.max_offset + self.page_limit

    def fetch_window(self, start: datetime, end: datetime, *, mempool: bool) -> FetchResult:
        """All transactions with ``start <= time < end`` (naive UTC, whole seconds).

        ``mempool=False``: confirmed transactions, ``time`` = block time, time basis ``block``.
        ``mempool=True``: unconfirmed transactions, ``time`` = mempool entry time, ``first_seen``.
        """
        start = _whole_seconds(naive_utc(start, name="start"), "start")
        end = _whole_seconds(naive_utc(end, name="end"), "end")
        if not start < end:
            raise ValueError(f"empty window: start {start} must be before end {end}")
        run = _FetchRun(path=MEMPOOL_PATH if mempool else CONFIRMED_PATH, mempool=mempool)
        first = self._get_page(run, start, end, offset=0)
        run.first_state = first.state
        if not mempool:
            if first.state is None:
                raise BlockchairError(
                    f"GET {self.base_url}{run.path}: response has no context.state; cannot pin pagination "
                    "to a block height, refusing to page a moving result",
                    endpoint=run.path,
                )
            run.pin_state = first.state
        self._collect_window(run, start, end, first)
        frame = self._rows_to_frame(run)
        return FetchResult(
            frame=frame,
            reported_total_rows=run.reported_total_rows,
            requests_made=run.requests_made,
            request_cost_total=round(run.request_cost_total, 6),
            state=run.first_state,
            rows_received=len(run.rows),
            duplicates_dropped=int(frame.attrs.get(DUPLICATES_DROPPED_ATTR, 0)),
            windows_split=run.windows_split,
            api_version=run.api_version,
            next_major_update=run.next_major_update,
        )

    # -- paging -------------------------------------------------------------------------------

    def _collect_window(self, run: _FetchRun, start: datetime, end: datetime, first: _Page) -> None:
        """Page through [start, end) given its first page, or split it if paging cannot reach all."""
        if first.total_rows > self.reachable_rows:
            self._split_window(run, start, end, first.total_rows)
            return
        run.reported_total_rows += first.total_rows
        self._keep(run, first)
        offset = self.page_limit
        while offset < first.total_rows:
            page = self._get_page(run, start, end, offset=offset)
            if page.total_rows != first.total_rows:
                self.log.warning(
                    "Blockchair %s window %s..%s: total_rows changed from %d to %d while paging (%s)",
                    run.path,
                    start,
                    end,
                    first.total_rows,
                    page.total_rows,
                    "mempool churn" if run.mempool else "unexpected with a pinned block_id",
                )
            if not page.rows:
                self.log.warning(
                    "Blockchair %s window %s..%s: empty page at offset %d of %d rows; stopping this window",
                    run.path,
                    start,
                    end,
                    offset,
                    first.total_rows,
                )
                break
            self._keep(run, page)
            offset += self.page_limit

    def _split_window(self, run: _FetchRun, start: datetime, end: datetime, total_rows: int) -> None:
        half_seconds = int((end - start).total_seconds()) // 2
        if half_seconds < 1:
            raise BlockchairError(
                f"GET {self.base_url}{run.path}: window {_fmt(start)}...{_fmt(end)} reports {total_rows} rows, more "
                f"than offset paging reaches ({self.reachable_rows}), and a one-second window cannot be split",
                endpoint=run.path,
            )
        middle = start + timedelta(seconds=half_seconds)
        run.windows_split += 1
        self.log.info(
            "Blockchair %s window %s..%s reports %d rows > %d reachable by offset paging; splitting at %s",
            run.path,
            _fmt(start),
            _fmt(end),
            total_rows,
            self.reachable_rows,
            _fmt(middle),
        )
        for part_start, part_end in ((start, middle), (middle, end)):
            first = self._get_page(run, part_start, part_end, offset=0)
            self._collect_window(run, part_start, part_end, first)

    def _keep(self, run: _FetchRun, page: _Page) -> None:
        run.rows.extend(page.rows)
        run.row_labels.extend(f"{page.label} row {index}" for index in range(len(page.rows)))

    def _rows_to_frame(self, run: _FetchRun) -> pd.DataFrame:
        if not run.rows:
            return empty_raw_frame()
        rows = pd.DataFrame.from_records(run.rows, index=pd.Index(run.row_labels))
        frame = to_raw_frame(
            rows,
            time_basis=TIME_BASIS_FIRST_SEEN if run.mempool else TIME_BASIS_BLOCK,
            where=f"Blockchair GET {self.base_url}{run.path}",
        )
        dropped = frame.attrs.get(DUPLICATES_DROPPED_ATTR, 0)
        # Pages arrive sorted by (time, id) per window and windows in time order; keep that order.
        frame = frame.sort_values("time", kind="stable").reset_index(drop=True)
        frame.attrs[DUPLICATES_DROPPED_ATTR] = dropped
        return frame

    def _get_page(self, run: _FetchRun, start: datetime, end: datetime, *, offset: int) -> _Page:
        filters = [f"time({_fmt(start)}...{_fmt(end)})"]
        if run.pin_state is not None:
            filters.append(f"block_id(..{run.pin_state})")
        params = {"q": ",".join(filters), "s": SORT_ORDER, "limit": str(self.page_limit), "offset": str(offset)}
        label = f"page q={params['q']} offset={offset}"
        context, data = self._request(run, params)
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise BlockchairError(
                f"GET {self.base_url}{run.path} ({label}): 'data' is not a list of rows: {type(data).__name__}",
                endpoint=run.path,
            )
        total_rows = context.get("total_rows")
        if not isinstance(total_rows, int) or isinstance(total_rows, bool) or total_rows < 0:
            raise BlockchairError(
                f"GET {self.base_url}{run.path} ({label}): context.total_rows missing or invalid: {total_rows!r}",
                endpoint=run.path,
            )
        state = context.get("state")
        return _Page(
            rows=data,
            total_rows=total_rows,
            state=state if isinstance(state, int) and not isinstance(state, bool) else None,
            request_cost=_number_or_zero(context.get("request_cost")),
            label=label,
        )

    # -- one request with retries -------------------------------------------------------------

    def _request(self, run: _FetchRun, params: dict[str, str]) -> tuple[dict, object]:
        """GET with bounded retries; returns (context, data) of a code-200 response."""
        address = f"{self.base_url}{run.path}?{_encode(params)}"
        described = f"GET {address}"  # no key: safe to log and to raise
        url = address if not self._api_key else f"{address}&key={quote(self._api_key, safe='')}"
        attempt = 0
        while True:
            attempt += 1
            run.requests_made += 1
            outcome = self._attempt(url)
            if isinstance(outcome, str):  # a transport failure, already redacted
                if attempt > self.max_retries:
                    raise BlockchairTransportError(
                        f"{described}: {outcome}; gave up after {attempt} attempts", endpoint=run.path
                    )
                self._wait(described, attempt, None, outcome)
                continue
            response, body = outcome
            context = body.get("context") if isinstance(body, dict) else None
            context = context if isinstance(context, dict) else {}
            run.request_cost_total += _number_or_zero(context.get("request_cost"))
            code = effective_code(response.status_code, context)
            if code == 200:
                if not isinstance(body, dict) or "context" not in body or "data" not in body:
                    raise BlockchairError(
                        f"{described}: malformed response (HTTP 200, body is not Blockchair JSON with 'data' and "
                        f"'context'): {self._redact(_preview(response.text))}",
                        code=200,
                        endpoint=run.path,
                    )
                self._log_success(run, described, context, body["data"])
                return context, body["data"]
            error_text = self._redact(str(context.get("error") or _preview(response.text) or response.reason or ""))
            retry_after = retry_after_seconds(response.headers)
            self._raise_unless_retryable(run, described, code, error_text, retry_after, attempt)
            self._wait(described, attempt, retry_after, f"code {code} ({error_text})")

    def _raise_unless_retryable(
        self, run: _FetchRun, described: str, code: int, error_text: str, retry_after: float | None, attempt: int
    ) -> None:
        """Raise the right error for a non-200 ``code``; return only if another attempt is due."""
        if code in COOL_OFF_CODES:
            raise BlockchairCoolOffError(
                cool_off_message(described, code, error_text, retry_after),
                code=code,
                endpoint=run.path,
                retry_after_seconds=retry_after,
            )
        if code in RATE_LIMIT_CODES:
            if retry_after is not None and retry_after > self.max_retry_after_seconds:
                raise BlockchairRateLimitError(
                    f"{described}: limit exceeded (code {code}: {error_text}); server asks to wait "
                    f"{retry_after:.0f} s, more than max_retry_after_seconds={self.max_retry_after_seconds:.0f}",
                    code=code,
                    endpoint=run.path,
                    retry_after_seconds=retry_after,
                )
            if attempt > self.max_retries:
                raise BlockchairRateLimitError(
                    f"{described}: limit exceeded (code {code}: {error_text}); gave up after {attempt} attempts",
                    code=code,
                    endpoint=run.path,
                    retry_after_seconds=retry_after,
                )
            return
        if code in SERVER_ERROR_CODES:
            if attempt > self.max_retries:
                raise BlockchairError(
                    f"{described}: server error (code {code}: {error_text}); gave up after {attempt} attempts",
                    code=code,
                    endpoint=run.path,
                )
            return
        raise BlockchairError(f"{described}: Blockchair error code {code}: {error_text}", code=code, endpoint=run.path)

    def _attempt(self, url: str):
        """One HTTP GET. Returns (response, parsed body or None) or a redacted failure text.

        The failure is returned, not raised from inside ``except``, so no exception carrying the
        keyed URL is chained onto the error the caller raises.
        """
        try:
            response = self._session.get(url, timeout=self.timeout)
        except requests.Timeout as exc:
            return f"timed out after {self.timeout} s ({type(exc).__name__})"
        except requests.ConnectionError as exc:
            return f"connection failed: {self._redact(str(exc))}"
        except requests.RequestException as exc:
            return f"request failed: {self._redact(str(exc))}"
        try:
            body = response.json()
        except ValueError:
            body = None
        return response, body

    def _wait(self, described: str, attempt: int, retry_after: float | None, reason: str) -> None:
        delay = retry_after if retry_after is not None else self.backoff_seconds * 2 ** (attempt - 1)
        self.log.warning(
            "%s: %s; retry %d of %d in %.1f s%s",
            described,
            reason,
            attempt,
            self.max_retries,
            delay,
            " (Retry-After)" if retry_after is not None else "",
        )
        self.sleep(delay)

    def _log_success(self, run: _FetchRun, described: str, context: dict, data) -> None:
        api = context.get("api") if isinstance(context.get("api"), dict) else {}
        version = api.get("version")
        next_major = api.get("next_major_update")
        run.api_version, run.next_major_update = version, next_major
        self.log.info(
            "%s: code %s, %s rows of total_rows %s, state %s, request_cost %s, api version %s, next_major_update %s",
            described,
            context.get("code"),
            len(data) if isinstance(data, list) else "?",
            context.get("total_rows"),
            context.get("state"),
            context.get("request_cost"),
            version,
            next_major,
        )
        if version and self._seen_api_version and version != self._seen_api_version:
            self.log.warning("Blockchair API version changed from %s to %s", self._seen_api_version, version)
        self._seen_api_version = version or self._seen_api_version
        if next_major and next_major != self._warned_major_update:
            self._warned_major_update = next_major
            self.log.warning(
                "Blockchair announces a breaking API update (next_major_update %s); check %s",
                next_major,
                api.get("documentation"),
            )

    def _redact(self, text: str) -> str:
        return self._redactor(text)


def _fmt(moment: datetime) -> str:
    return moment.strftime(BLOCKCHAIR_TIME_FORMAT)  # the API's query syntax is the dump's time format


def _whole_seconds(moment: datetime, name: str) -> datetime:
    if moment.microsecond:
        raise ValueError(f"{name} {moment} has a fraction of a second; Blockchair time filters are whole seconds")
    return moment


def _encode(params: dict[str, str]) -> str:
    # quote (not quote_plus): the space in time(...) must be %20; keep Blockchair's grammar readable.
    return urlencode(params, quote_via=quote, safe="(),.:")


def _number_or_zero(value) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return 0.0


def _preview(text: str, limit: int = 200) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[:limit] + "..."
