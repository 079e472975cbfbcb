"""mempool.space REST client (esplora API plus mempool's own ``/v1`` routes), for history and gap re-fill.

Routes used (``<base>`` is ``BTC_MEMPOOL_API_URL``, e.g. ``https://mempool.space/api``):
``/blocks/tip/height``, ``/block-height/:height`` (text hash), ``/block/:hash/txs/:start_index``
(25 transactions a page), ``/mempool/txids``, ``/tx/:txid`` and ``/v1/transaction-times?txId[]=…``
(first-seen unix seconds, 0 when unknown; at most 100 txids a call). A 429 or 5xx is retried
after the server's ``Retry-After`` (or a jittered backoff), through the project's HTTP policy.
"""

from __future__ import annotations

import logging
import time

import requests

from btc_anomaly_assets.common.http_policy import backoff_seconds, is_retryable_status, retry_after_seconds
from btc_anomaly_assets.common.redaction import redact_secrets

BLOCK_PAGE = 25
TIMES_PER_CALL = 100


class MempoolRestError(RuntimeError):
    """A REST call that failed for good; the message names the route (credentials redacted)."""


class MempoolRest:
    def __init__(self, base_url: str, *, logger=None, timeout: float = 15.0, max_attempts: int = 6,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, sleep=time.sleep):
        self.base_url = base_url.rstrip("/")
        self.log = logger or logging.getLogger(__name__)
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.sleep = sleep
        self.session = requests.Session()
        self.requests_made = 0
        self.rate_limited = 0

    def close(self) -> None:
        self.session.close()

    def _get(self, route: str, params=None):
        url = f"{self.base_url}{route}"
        for attempt in range(self.max_attempts):
            self.requests_made += 1
            try:
                reply = self.session.get(url, params=params, timeout=self.timeout)
            except requests.RequestException as exc:
                if attempt + 1 >= self.max_attempts:
                    raise MempoolRestError(f"GET {redact_secrets(url)} failed: {redact_secrets(str(exc))}") from None
                self.sleep(backoff_seconds(attempt, initial=self.backoff_initial, maximum=self.backoff_max, jitter=0.5))
                continue
            if reply.status_code == 200:
                return reply
            if not is_retryable_status(reply.status_code) or attempt + 1 >= self.max_attempts:
                raise MempoolRestError(f"GET {redact_secrets(url)}: HTTP {reply.status_code} {reply.text[:200]!r}")
            if reply.status_code == 429:
                self.rate_limited += 1
            wait = retry_after_seconds(reply.headers)
            if wait is None:
                wait = backoff_seconds(attempt, initial=self.backoff_initial, maximum=self.backoff_max, jitter=0.5)
            self.log.warning(f"mempool.space {route}: HTTP {reply.status_code}, retrying in {wait:.1f} s")
            self.sleep(min(wait, self.backoff_max))
        raise MempoolRestError(f"GET {redact_secrets(url)}: no attempt left")  # pragma: no cover - loop always returns/raises

    def tip_height(self) -> int:
        return int(self._get("/blocks/tip/height").text.strip())

    def block_hash(self, height: int) -> str:
        return self._get(f"/block-height/{height}").text.strip()

    def block_transactions(self, block_hash: str) -> list[dict]:
        """Every transaction of a block, 25 a page, until a short page."""
        found: list[dict] = []
        while True:
            page = self._get(f"/block/{block_hash}/txs/{len(found)}").json()
            found.extend(page)
            if len(page) < BLOCK_PAGE:
                return found

    def mempool_txids(self) -> list[str]:
        return list(self._get("/mempool/txids").json())

    def transaction(self, txid: str) -> dict:
        return self._get(f"/tx/{txid}").json()

    def first_seen_times(self, txids: list[str]) -> dict[str, int]:
        """txid -> first-seen unix seconds as mempool.space recorded them (0: unknown)."""
        times: dict[str, int] = {}
        for start in range(0, len(txids), TIMES_PER_CALL):
            chunk = txids[start:start + TIMES_PER_CALL]
            values = self._get("/v1/transaction-times", params=[("txId[]", t) for t in chunk]).json()
            times.update(zip(chunk, (int(v or 0) for v in values)))
        return times
