"""mempool.space push feed: the ``track-mempool`` WebSocket subscription, with REST gap re-fill.

Protocol (mempool/mempool ``backend/src/api/websocket-handler.ts``): the client sends
``{"track-mempool": true}``; on every mempool update the server pushes one JSON object whose
``mempool-transactions`` member is ``{sequence, added: [full esplora tx], removed: [txid],
mined: [txid], replaced: [{replaced: txid, by: full tx}]}``; ``sequence`` counts updates, so a
jump means updates this client never received. ``{"action": "ping"}`` is answered with
``{"pong": true}``. The server closes a client that sends more than 100 messages in 10 s, and
terminates one that sends a message over 50,000 bytes or one it cannot parse: this client sends
one subscription per connection and an application ping every ``ping_seconds``, through a send
budget that stays far below the limit.

Faults become gaps (``FeedSink.open_gap``): a disconnect or a frame over ``max_message_bytes``
opens one at the last message received and closes it when the subscription is sent again; a
sequence jump is a gap between the last and the current message; an unreadable frame is a
zero-length gap (what it carried is lost). After each gap closes, a REST re-fill runs in a
thread: blocks mined since the last known tip (``/block/:hash/txs``) and mempool transactions
that are neither known nor were already in the mempool at the first subscription, each with
mempool.space's own first-seen time (``/v1/transaction-times``) clamped into the gap (the gap's
start where it has none). Reconnects wait a jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from datetime import UTC, datetime

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from btc_anomaly_assets.common.http_policy import backoff_seconds
from btc_anomaly_assets.common.redaction import redact_secrets
from btc_anomaly_assets.common.utc import utc_now
from btc_anomaly_assets.live.landing import Gap
from btc_anomaly_assets.live.mempool_space_rest import MempoolRest, MempoolRestError
from btc_anomaly_assets.live.raw_mapping import MappingError, esplora_to_raw

SERVER_MSG_LIMIT, SERVER_MSG_WINDOW = 100, 10.0  # the server's limit on messages a client sends
MAX_REFILL_TXS = 5000


class SendBudget:
    """At most ``limit`` sends in any ``window`` seconds (the client's half of the server's rule)."""

    def __init__(self, limit: int = SERVER_MSG_LIMIT // 4, window: float = SERVER_MSG_WINDOW, clock=time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._sent: deque[float] = deque()

    def wait_seconds(self) -> float:
        now = self.clock()
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()
        return 0.0 if len(self._sent) < self.limit else self._sent[0] + self.window - now

    def record(self) -> None:
        self._sent.append(self.clock())


class MempoolSpaceFeed:
    name = "mempool-space"

    def __init__(self, ws_url: str, api_url: str, *, logger=None, clock=utc_now, ping_seconds: float = 25.0,
                 max_message_bytes: int = 64 * 2**20, backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 open_timeout: float = 10.0, rest: MempoolRest | None = None):
        self.ws_url = ws_url
        self.log = logger or logging.getLogger(__name__)
        self.clock = clock
        self.rest = rest or MempoolRest(api_url, logger=self.log)
        self.ping_seconds = ping_seconds
        self.max_message_bytes = max_message_bytes
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.open_timeout = open_timeout
        self.budget = SendBudget()
        self.baseline: set[str] | None = None  # txids already in the mempool at the first subscription
        self.tip: int | None = None
        self.last_sequence: int | None = None
        self.last_message_at: datetime | None = None
        self.figures = {"connections": 0, "messages": 0, "malformed": 0, "sequence_gaps": 0, "refilled": 0, "refill_errors": 0,
                        "already_known": 0}
        self._refills: set[asyncio.Task] = set()
        self._resubscribed_after: Gap | None = None  # the gap a reconnect just closed (its updates were missed)

    async def _send(self, ws, message: dict) -> None:
        wait = self.budget.wait_seconds()
        if wait > 0:
            await asyncio.sleep(wait)
        self.budget.record()
        await ws.send(json.dumps(message))

    async def _pinger(self, ws) -> None:
        while True:
            await asyncio.sleep(self.ping_seconds)
            await self._send(ws, {"action": "ping"})

    async def run(self, sink) -> None:
        attempt, gap = 0, None
        try:
            while True:
                try:
                    async with websockets.connect(self.ws_url, max_size=self.max_message_bytes, open_timeout=self.open_timeout,
                                                  ping_interval=20, ping_timeout=20, close_timeout=2) as ws:
                        self.figures["connections"] += 1
                        if self.baseline is None:
                            await self._take_baseline()
                        await self._send(ws, {"track-mempool": True})
                        subscribed_at = self.clock()
                        if gap is not None:
                            sink.close_gap(gap, subscribed_at)
                            self._start_refill(sink, gap)
                            self._resubscribed_after, gap = gap, None
                        attempt = 0
                        pinger = asyncio.create_task(self._pinger(ws))
                        try:
                            async for frame in ws:
                                self._on_frame(sink, frame)
                        finally:
                            pinger.cancel()
                    reason, detail = "disconnect", "server closed the connection"
                except ConnectionClosed as exc:
                    reason = "oversized" if exc.sent is not None and exc.sent.code == 1009 else "disconnect"
                    detail = redact_secrets(str(exc))
                except (TimeoutError, OSError, InvalidHandshake, MempoolRestError) as exc:
                    reason, detail = "disconnect", redact_secrets(f"{type(exc).__name__}: {exc}")
                except InvalidURI as exc:
                    raise ValueError(f"BTC_MEMPOOL_WS_URL is not a WebSocket URL: {redact_secrets(str(exc))}") from None
                if gap is None:
                    gap = sink.open_gap(self.last_message_at or self.clock(), reason, detail)
                delay = backoff_seconds(attempt, initial=self.backoff_initial, maximum=self.backoff_max, jitter=0.5)
                attempt += 1
                self.log.warning(f"mempool.space WebSocket {reason} ({detail}); reconnecting in {delay:.1f} s")
                await asyncio.sleep(delay)
        finally:
            for task in list(self._refills):
                task.cancel()

    async def wait_for_refills(self) -> None:
        while self._refills:
            await asyncio.gather(*list(self._refills), return_exceptions=True)

    async def _take_baseline(self) -> None:
        txids, tip = await asyncio.to_thread(lambda: (self.rest.mempool_txids(), self.rest.tip_height()))
        self.baseline, self.tip = set(txids), tip
        self.log.info(f"mempool.space: {len(txids):,} transactions already in the mempool at subscription (not landed), tip {tip}")

    # --- one frame
    def _on_frame(self, sink, frame) -> None:
        now = self.clock()
        self.figures["messages"] += 1
        try:
            message = json.loads(frame)
            if not isinstance(message, dict):
                raise TypeError(f"a JSON {type(message).__name__}, not an object")
        except (ValueError, TypeError) as exc:
            self.figures["malformed"] += 1
            sink.close_gap(sink.open_gap(now, "malformed", f"unreadable frame ({exc}): {str(frame)[:80]!r}"), now)
            return
        delta = message.get("mempool-transactions")
        if isinstance(delta, dict):
            self._on_delta(sink, delta, now)
        self.last_message_at = now
        sink.message(now, self.last_sequence)

    def _on_delta(self, sink, delta: dict, now: datetime) -> None:
        sequence = delta.get("sequence")
        if isinstance(sequence, int):
            after, self._resubscribed_after = self._resubscribed_after, None
            if after is not None and self.last_sequence is not None and sequence > self.last_sequence + 1:
                after.detail += f"; updates {self.last_sequence + 1}..{sequence - 1} missed"  # the re-fill covers them
            elif self.last_sequence is not None and sequence > self.last_sequence + 1:
                self.figures["sequence_gaps"] += 1
                gap = sink.open_gap(self.last_message_at or now, "sequence",
                                    f"updates {self.last_sequence + 1}..{sequence - 1} not received")
                sink.close_gap(gap, now)
                self._start_refill(sink, gap)
            self.last_sequence = sequence
        added = list(delta.get("added") or [])
        for item in delta.get("replaced") or []:
            if isinstance(item, dict) and isinstance(item.get("by"), dict):
                added.append(item["by"])
                sink.event(now, "replaced", str(item.get("replaced")), by_txid=item["by"].get("txid"))
        rows, bad = [], []
        for tx in added:
            if isinstance(tx, dict) and sink.known(str(tx.get("txid"))):
                self.figures["already_known"] += 1
                continue
            try:
                rows.append(esplora_to_raw(tx, now, where="mempool-transactions"))
            except MappingError as exc:
                bad.append(str(exc))
        sink.transactions(rows)
        if bad:
            self.figures["malformed"] += len(bad)
            sink.close_gap(sink.open_gap(now, "malformed", f"{len(bad)} unusable tx object(s): {bad[0][:160]}"), now)
        for txid in delta.get("removed") or []:
            sink.event(now, "removed", str(txid))
        for txid in delta.get("mined") or []:
            sink.event(now, "mined", str(txid))

    # --- REST re-fill
    def _start_refill(self, sink, gap: Gap) -> None:
        task = asyncio.create_task(asyncio.to_thread(self._refill, sink, gap))
        self._refills.add(task)
        task.add_done_callback(self._refills.discard)

    def _refill(self, sink, gap: Gap) -> None:
        """Recover what the gap hid: mined blocks since the last tip, then the mempool's unknown txids."""
        try:
            candidates: dict[str, dict | None] = {}
            block_of: dict[str, str] = {}
            tip = self.rest.tip_height()
            for height in range((self.tip if self.tip is not None else tip) + 1, tip + 1):
                block_hash = self.rest.block_hash(height)
                for tx in self.rest.block_transactions(block_hash):
                    block_of[tx["txid"]] = block_hash
                    if not sink.known(tx["txid"]) and not tx["vin"][0].get("is_coinbase"):
                        candidates[tx["txid"]] = tx
            self.tip = tip
            baseline = self.baseline or set()
            for txid in self.rest.mempool_txids():
                if txid not in baseline and txid not in candidates and not sink.known(txid):
                    candidates[txid] = None
            wanted = list(candidates)[:MAX_REFILL_TXS]
            times = self.rest.first_seen_times(wanted) if wanted else {}
            rows, estimated = [], 0
            gap_end = gap.end or self.clock()
            for txid in wanted:
                tx = candidates[txid] or self.rest.transaction(txid)
                seen = times.get(txid, 0)
                if seen:
                    moment = datetime.fromtimestamp(seen, UTC).replace(tzinfo=None)
                    moment = min(max(moment, gap.start), gap_end)
                else:
                    moment, estimated = gap.start, estimated + 1
                rows.append(esplora_to_raw(tx, moment, where="mempool.space REST re-fill"))
            landed = sink.transactions(rows)
            for txid, block_hash in block_of.items():
                sink.event(gap_end, "mined", txid, block_hash=block_hash)
            left = len(candidates) - len(wanted)
            note = f"{estimated} with the gap start as first-seen (mempool.space had no time)" + (f"; {left} left over" if left else "")
            sink.close_gap(gap, gap_end, refilled=landed, note=note)
            self.figures["refilled"] += landed
        except (MempoolRestError, MappingError, KeyError, TypeError, ValueError) as exc:
            self.figures["refill_errors"] += 1
            gap.refill_note = f"re-fill failed: {redact_secrets(str(exc))[:200]}"
            self.log.warning(f"mempool.space re-fill of gap {gap.start:%H:%M:%S} failed: {redact_secrets(str(exc))}")
