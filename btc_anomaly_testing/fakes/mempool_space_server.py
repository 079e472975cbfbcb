"""A loopback mempool.space: its WebSocket push protocol and the REST routes the collector uses.

WebSocket (``ws_url`` = ``ws://127.0.0.1:<port>/api/v1/ws``), as mempool/mempool's
``websocket-handler.ts`` behaves: a client that sends ``{"track-mempool": true}`` gets one JSON
object per mempool update with ``mempool-transactions: {sequence, added, removed, mined,
replaced}``; ``{"action": "ping"}`` is answered ``{"pong": true}``; a client sending more than
100 messages in 10 s is closed, one sending a message over 50,000 bytes is terminated, one
sending something that is not JSON is closed. Fault controls: ``drop_connections`` (abrupt TCP
close), ``refuse_connections`` (handshakes answered 503), ``lose_next_push`` (an update whose
sequence number is used but never sent), ``send_raw`` (a malformed or oversized frame).

REST (``api_url`` = ``http://127.0.0.1:<port>/api``, on ``LoopbackServer``):
``/blocks/tip/height``, ``/block-height/:h``, ``/block/:hash/txs/:start`` (25 a page),
``/mempool/txids``, ``/tx/:txid``, ``/v1/transaction-times`` (≤ 100 txids), and ``rate_limit(n)``
answers the next ``n`` requests ``429`` with ``Retry-After``.

Transactions are esplora objects built from real Blockchair rows (``esplora_tx``): the counts,
totals, fee, size, weight, version and lock time of the row, its input/output values split evenly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import deque

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from btc_anomaly_testing.fakes.loopback import LoopbackServer, Reply, Request

MAX_MESSAGE_SIZE, MSG_RATE_LIMIT, MSG_RATE_WINDOW = 50_000, 100, 10.0
BLOCK_PAGE = 25


def split_value(total: int, parts: int) -> list[int]:
    base, extra = divmod(int(total), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def esplora_tx(row: dict) -> dict:
    """A real raw row (Blockchair fields) as the esplora transaction mempool.space would serve."""
    txid = row["hash"]
    coinbase = bool(row["is_coinbase"])
    n_in, n_out = int(row["input_count"]), int(row["output_count"])
    witness = ["30" * 36, "02" + "11" * 32] if row["has_witness"] else []
    if coinbase:
        vin = [{"txid": "0" * 64, "vout": 4294967295, "prevout": None, "scriptsig": "03" + "00" * 3, "witness": witness,
                "is_coinbase": True, "sequence": 4294967295}]
    else:
        vin = [{"txid": hashlib.sha256(f"{txid}:{i}".encode()).hexdigest(), "vout": i % 4,
                "prevout": {"scriptpubkey": "0014" + "ab" * 20, "scriptpubkey_type": "v0_p2wpkh", "value": value},
                "scriptsig": "", "witness": witness, "is_coinbase": False, "sequence": 4294967293}
               for i, value in enumerate(split_value(row["input_total"], n_in))]
    vout = [{"scriptpubkey": "0014" + "cd" * 20, "scriptpubkey_type": "v0_p2wpkh", "value": value}
            for value in split_value(row["output_total"], n_out)]
    return {"txid": txid, "version": int(row["version"]), "locktime": int(row["lock_time"]), "vin": vin, "vout": vout,
            "size": int(row["size"]), "weight": int(row["weight"]), "fee": 0 if coinbase else int(row["fee"]),
            "status": {"confirmed": False}}


class FakeMempoolSpace:
    """Both halves of the fake; use as a context manager. Thread-safe controls for the test thread."""

    def __init__(self, tip_height: int = 909_932):
        self.mempool: dict[str, dict] = {}
        self.first_seen: dict[str, int] = {}
        self.blocks: list[tuple[int, str, list[dict]]] = []
        self.tip_height = tip_height
        self.sequence = 0
        self.pushes_sent = 0
        self.client_messages: list[str] = []
        self.connections_opened = 0
        self.closed_for_rate = 0
        self.terminated_for_size = 0
        self.refusing = False
        self._rate_limit_left = 0
        self._retry_after = "1"
        self._lock = threading.Lock()
        self._subscribers: set = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        self._thread = threading.Thread(target=self._serve_forever, daemon=True)
        self.rest = LoopbackServer(self.handle)
        self.ws_port = 0

    # --- lifecycle
    def __enter__(self) -> FakeMempoolSpace:
        self.rest.__enter__()
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake mempool.space WebSocket server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)
        self.rest.__exit__(*exc)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/api/v1/ws"

    @property
    def api_url(self) -> str:
        return f"{self.rest.url}/api"

    def _serve_forever(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._client, "127.0.0.1", 0, max_size=2**22, process_request=self._admit, ping_interval=None) as server:
            self.ws_port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def _admit(self, connection, request):
        if self.refusing:
            return connection.respond(503, "Service Unavailable\n")
        return None

    async def _client(self, connection) -> None:
        self.connections_opened += 1
        stamps: deque[float] = deque()
        try:
            async for message in connection:
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                self.client_messages.append(text[:200])
                if len(message) > MAX_MESSAGE_SIZE:
                    self.terminated_for_size += 1
                    connection.transport.abort()
                    return
                now = time.monotonic()
                stamps.append(now)
                while stamps and stamps[0] <= now - MSG_RATE_WINDOW:
                    stamps.popleft()
                if len(stamps) > MSG_RATE_LIMIT:
                    self.closed_for_rate += 1
                    await connection.close()  # ws's client.close(): a close frame, then the closing handshake
                    return
                try:
                    parsed = json.loads(text)
                except ValueError:
                    await connection.close()
                    return
                if not isinstance(parsed, dict):
                    continue
                if parsed.get("action") == "ping":
                    await connection.send(json.dumps({"pong": True}))
                if parsed.get("track-mempool") is True:
                    self._subscribers.add(connection)
                elif parsed.get("track-mempool") is False:
                    self._subscribers.discard(connection)
        except ConnectionClosed:
            pass
        finally:
            self._subscribers.discard(connection)

    def _run(self, coroutine, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _broadcast(self, text: str) -> int:
        sent = 0
        for connection in list(self._subscribers):
            try:
                await connection.send(text)
                sent += 1
            except ConnectionClosed:
                self._subscribers.discard(connection)
        return sent

    # --- the mempool (test-thread controls)
    def push(self, added: list[dict] = (), removed: list[str] = (), mined: list[str] = (), replaced: list[tuple[str, dict]] = (),
             *, deliver: bool = True) -> int:
        """One mempool update; returns how many subscribers it was sent to (0 if ``deliver`` is False)."""
        with self._lock:
            now = int(time.time())
            for tx in [*added, *(by for _, by in replaced)]:
                self.mempool[tx["txid"]] = tx
                self.first_seen.setdefault(tx["txid"], now)
            for txid in [*removed, *(old for old, _ in replaced)]:
                self.mempool.pop(txid, None)
            self.sequence += 1
            delta = {"sequence": self.sequence, "added": list(added), "removed": list(removed), "mined": list(mined),
                     "replaced": [{"replaced": old, "by": by} for old, by in replaced]}
        if not deliver:
            return 0
        sent = self._run(self._broadcast(json.dumps({"mempool-transactions": delta})))
        self.pushes_sent += 1
        return sent

    def mine(self, txids: list[str], *, deliver: bool = True) -> str:
        """A new block holding ``txids`` (taken out of the mempool); pushes their ``mined`` update."""
        with self._lock:
            txs = [self.mempool.pop(t) for t in txids if t in self.mempool]
            self.tip_height += 1
            block_hash = hashlib.sha256(f"block {self.tip_height}".encode()).hexdigest()
            self.blocks.append((self.tip_height, block_hash, [{**t, "status": {"confirmed": True, "block_height": self.tip_height,
                                                                                 "block_hash": block_hash}} for t in txs]))
        self.push(mined=[t["txid"] for t in txs], deliver=deliver)
        return block_hash

    def lose_next_push(self, added: list[dict] = ()) -> None:
        self.push(added=added, deliver=False)

    def drop_connections(self) -> None:
        async def drop():
            for connection in list(self._subscribers):
                connection.transport.abort()
            self._subscribers.clear()
        self._run(drop())

    def refuse_connections(self, refusing: bool) -> None:
        self.refusing = refusing

    def send_raw(self, text: str) -> int:
        return self._run(self._broadcast(text))

    def subscribers(self) -> int:
        return len(self._subscribers)

    def rate_limit(self, count: int, retry_after: str = "1") -> None:
        with self._lock:
            self._rate_limit_left, self._retry_after = count, retry_after

    # --- REST
    def handle(self, request: Request) -> Reply:
        with self._lock:
            if self._rate_limit_left > 0:
                self._rate_limit_left -= 1
                return Reply(429, "Too Many Requests", headers={"Retry-After": self._retry_after})
            return self._route(request)

    def _route(self, request: Request) -> Reply:
        parts = request.path.removeprefix("/api").strip("/").split("/")
        if parts == ["blocks", "tip", "height"]:
            return Reply(200, str(self.tip_height))
        if len(parts) == 2 and parts[0] == "block-height":
            for height, block_hash, _ in self.blocks:
                if height == int(parts[1]):
                    return Reply(200, block_hash)
            return Reply(404, "Block not found")
        if len(parts) == 4 and parts[0] == "block" and parts[2] == "txs":
            for _, block_hash, txs in self.blocks:
                if block_hash == parts[1]:
                    start = int(parts[3])
                    if start % BLOCK_PAGE:
                        return Reply(400, "start index must be a multiple of 25")
                    return Reply(200, txs[start:start + BLOCK_PAGE])
            return Reply(404, "Block not found")
        if parts == ["mempool", "txids"]:
            return Reply(200, list(self.mempool))
        if len(parts) == 2 and parts[0] == "tx":
            tx = self.mempool.get(parts[1]) or next((t for _, _, txs in self.blocks for t in txs if t["txid"] == parts[1]), None)
            return Reply(200, tx) if tx else Reply(404, "Transaction not found")
        if parts == ["v1", "transaction-times"]:
            txids = request.query.get("txId[]", [])
            if not txids:
                return Reply(400, {"error": "invalid txId format"})
            if len(txids) > 100:
                return Reply(400, {"error": "Too many txids requested"})
            # mempool.space answers from its mempool cache: 0 for a transaction no longer in it (mined)
            return Reply(200, [self.first_seen.get(t, 0) if t in self.mempool else 0 for t in txids])
        return Reply(404, f"no route {request.path}")


def real_rows(count: int | None = None, *, offset: int = 0, coinbase: bool = False) -> list[dict]:
    """Real 14 Aug 2025 transactions (Blockchair excerpt) as raw-row dicts, in dump order."""
    from btc_anomaly_testing.real_data import DAY14_WINDOW, raw_in, real_raw

    day = raw_in(real_raw(), *DAY14_WINDOW)
    if not coinbase:
        day = day[~day["is_coinbase"]]
    day = day.iloc[offset:] if count is None else day.iloc[offset:offset + count]
    return day.to_dict("records")
