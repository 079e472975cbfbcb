"""Bitcoin Core push feed: ZMQ ``rawtx`` + ``sequence`` notifications, JSON-RPC for what they lack.

ZMQ messages are 3 frames: topic, body, and a uint32 little-endian counter per topic that Core
increments for every message it publishes; a counter that skips means messages were lost (ZMQ
drops them silently at its high-water mark or across a reconnect), and becomes a ``sequence`` gap.
``rawtx`` bodies are serialized transactions: ``parse_transaction`` reads them and computes the
txid (double SHA-256 of the serialization without witness). A raw transaction has no input
values, so the feed asks ``getrawtransaction <txid> 2`` (prevouts and fee) and maps that; a
transaction Core no longer has in its mempool (``-5``; a block's transaction we never saw in the
mempool) waits for its block's ``C`` notification and is read from ``getblock <hash> 3``.
``sequence`` bodies are ``<hash><label>`` with an 8-byte mempool sequence for ``A``/``R``:
``R`` is an eviction/replacement (an event), ``C`` a connected block (``mined`` events).

Re-fill after a gap: ``getrawmempool`` minus what is known and what was already in the mempool
when the feed started, each read with ``getrawtransaction 2`` and stamped with the gap's start.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from datetime import datetime

import zmq
import zmq.asyncio

from btc_anomaly_assets.common.http_policy import backoff_seconds
from btc_anomaly_assets.common.utc import utc_now
from btc_anomaly_assets.live.bitcoin_core_rpc import RPC_INVALID_ADDRESS_OR_KEY, CoreRpc, RpcError
from btc_anomaly_assets.live.landing import Gap
from btc_anomaly_assets.live.raw_mapping import MappingError, core_verbose_to_raw

TOPICS = (b"rawtx", b"sequence")
MAX_REFILL_TXS = 5000


class RawTxError(ValueError):
    """A ``rawtx`` body that is not a serialized transaction."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    if first < 0xFD:
        return first, pos + 1
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(data[pos + 1:pos + 1 + size], "little"), pos + 1 + size


def parse_transaction(data: bytes) -> dict:
    """txid, sizes and output values of a serialized transaction (BIP 144 witness encoding aware)."""
    try:
        pos = 4
        witness = data[4] == 0 and data[5] == 1
        if witness:
            pos = 6
        start_io = pos
        n_in, pos = _varint(data, pos)
        coinbase = False
        for i in range(n_in):
            prev, index = data[pos:pos + 32], int.from_bytes(data[pos + 32:pos + 36], "little")
            coinbase = coinbase or (i == 0 and prev == bytes(32) and index == 0xFFFFFFFF)
            length, pos = _varint(data, pos + 36)
            pos += length + 4
        n_out, pos = _varint(data, pos)
        values = []
        for _ in range(n_out):
            values.append(int.from_bytes(data[pos:pos + 8], "little"))
            length, pos = _varint(data, pos + 8)
            pos += length
        end_io = pos
        if witness:
            for _ in range(n_in):
                items, pos = _varint(data, pos)
                for _ in range(items):
                    length, pos = _varint(data, pos)
                    pos += length
        if pos + 4 != len(data) or n_in == 0:
            raise RawTxError(f"{len(data)} bytes do not parse as one transaction (ended at {pos + 4})")
    except (IndexError, KeyError) as exc:
        raise RawTxError(f"truncated transaction ({len(data)} bytes): {exc}") from None
    stripped = data[:4] + data[start_io:end_io] + data[-4:]
    txid = hashlib.sha256(hashlib.sha256(stripped).digest()).digest()[::-1].hex()
    return {"txid": txid, "size": len(data), "weight": len(stripped) * 3 + len(data), "input_count": n_in,
            "output_count": n_out, "output_total": sum(values), "has_witness": witness, "is_coinbase": coinbase}


class CounterTracker:
    """Per-topic ZMQ counters: how many messages were lost before each one (uint32, wraps).

    A counter that goes back (other than the wrap after 2**32 - 1) means the publisher restarted
    (the node restarted): ``RESTARTED`` is returned, as the number lost is unknown."""

    RESTARTED = -1

    def __init__(self):
        self.last: dict[bytes, int] = {}

    def lost_before(self, topic: bytes, counter: int) -> int:
        previous = self.last.get(topic)
        self.last[topic] = counter
        if previous is None:
            return 0
        if counter <= previous and previous != 2**32 - 1:
            return self.RESTARTED
        return (counter - previous - 1) % 2**32


class BitcoinCoreFeed:
    name = "bitcoin-core"

    def __init__(self, zmq_url: str, rpc: CoreRpc, *, logger=None, clock=utc_now):
        self.zmq_url = zmq_url
        self.rpc = rpc
        self.log = logger or logging.getLogger(__name__)
        self.clock = clock
        self.counters = CounterTracker()
        self.mempool_sequence: int | None = None
        self.baseline: set[str] | None = None
        self.pending: dict[str, datetime] = {}  # txid -> first seen, waiting for its block
        self.last_message_at: datetime | None = None
        self._refills: set[asyncio.Task] = set()
        self.figures = {"messages": 0, "lost_messages": 0, "malformed": 0, "rpc_lookups": 0, "from_blocks": 0, "refilled": 0}

    async def _rpc(self, method: str, *params):
        self.figures["rpc_lookups"] += 1
        return await asyncio.to_thread(self.rpc.call, method, *params)

    async def run(self, sink) -> None:
        context = zmq.asyncio.Context()
        socket = context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, 0)  # keep everything Core sends; losses are then Core's side only
        for topic in TOPICS:
            socket.setsockopt(zmq.SUBSCRIBE, topic)
        socket.connect(self.zmq_url)
        try:
            attempt = 0
            while self.baseline is None:
                try:
                    mempool = await self._rpc("getrawmempool", False, True)
                except RpcError as exc:  # node down or warming up: keep trying, jittered
                    delay = backoff_seconds(attempt, initial=1.0, maximum=60.0, jitter=0.5)
                    attempt += 1
                    self.log.warning(f"Bitcoin Core not answering ({exc}); retrying in {delay:.1f} s")
                    await asyncio.sleep(delay)
                    continue
                self.baseline, self.mempool_sequence = set(mempool["txids"]), int(mempool["mempool_sequence"])
                self.log.info(f"Bitcoin Core: {len(self.baseline):,} transactions already in the mempool (not landed)")
            while True:
                frames = await socket.recv_multipart()
                await self._on_message(sink, frames)
        finally:
            for task in list(self._refills):
                task.cancel()
            socket.close()
            context.term()

    async def _on_message(self, sink, frames: list[bytes]) -> None:
        now = self.clock()
        self.figures["messages"] += 1
        if len(frames) != 3 or len(frames[2]) != 4:
            self.figures["malformed"] += 1
            sink.close_gap(sink.open_gap(now, "malformed", f"ZMQ message with {len(frames)} frame(s)"), now)
            return
        topic, body, counter = frames[0], frames[1], struct.unpack("<I", frames[2])[0]
        lost = self.counters.lost_before(topic, counter)
        if lost:
            self.figures["lost_messages"] += max(lost, 0)
            what = (f"ZMQ {topic.decode()} counter went back to {counter}: the node restarted" if lost == CounterTracker.RESTARTED
                    else f"{lost} ZMQ {topic.decode()} message(s) lost before counter {counter}")
            gap = sink.open_gap(self.last_message_at or now, "sequence", what)
            sink.close_gap(gap, now)
            self._start_refill(sink, gap)
        self.last_message_at = now
        if topic == b"rawtx":
            await self._on_rawtx(sink, body, now)
        elif topic == b"sequence":
            await self._on_sequence(sink, body, now)
        sink.message(now, counter)

    async def _on_rawtx(self, sink, body: bytes, now: datetime) -> None:
        try:
            parsed = parse_transaction(body)
        except RawTxError as exc:
            self.figures["malformed"] += 1
            sink.close_gap(sink.open_gap(now, "malformed", str(exc)), now)
            return
        txid = parsed["txid"]
        if sink.known(txid) or txid in self.pending:
            return
        try:
            verbose = await self._rpc("getrawtransaction", txid, 2)
        except RpcError as exc:
            if exc.code == RPC_INVALID_ADDRESS_OR_KEY:
                self.pending[txid] = now  # a block's transaction: read from getblock 3 at its C notification
            else:  # the node is not answering: the transaction was seen but cannot be landed
                sink.close_gap(sink.open_gap(now, "lookup_failed", f"{txid}: {exc}"[:200]), now)
            return
        self._land(sink, verbose, now)

    def _land(self, sink, verbose: dict, moment: datetime) -> int:
        try:
            return sink.transactions([core_verbose_to_raw(verbose, moment, where="bitcoin-core getrawtransaction")])
        except MappingError as exc:
            self.figures["malformed"] += 1
            sink.close_gap(sink.open_gap(moment, "lookup_failed", str(exc)[:200]), moment)
            return 0

    async def _on_sequence(self, sink, body: bytes, now: datetime) -> None:
        if len(body) < 33:
            sink.close_gap(sink.open_gap(now, "malformed", f"sequence body of {len(body)} bytes"), now)
            return
        item, label = body[:32].hex(), body[32:33]
        if label in (b"A", b"R") and len(body) == 41:
            mempool_seq = struct.unpack("<Q", body[33:41])[0]
            if self.mempool_sequence is not None and mempool_seq > self.mempool_sequence + 1:
                gap = sink.open_gap(self.last_message_at or now, "sequence",
                                    f"mempool sequence {self.mempool_sequence + 1}..{mempool_seq - 1} not notified")
                sink.close_gap(gap, now)
                self._start_refill(sink, gap)
            self.mempool_sequence = mempool_seq  # a node restart starts it again from its new value
        if label == b"R":
            sink.event(now, "removed", item)
            seen = self.pending.pop(item, None)
            if seen is not None:  # evicted or replaced before its inputs could be read: seen, but not landable
                sink.close_gap(sink.open_gap(seen, "lookup_failed", f"{item} left the mempool before getrawtransaction"), seen)
        elif label == b"C":
            try:
                block = await self._rpc("getblock", item, 3)
            except RpcError as exc:
                sink.close_gap(sink.open_gap(now, "lookup_failed", f"block {item}: {exc}"[:200]), now)
                return
            for tx in block["tx"]:
                sink.event(now, "mined", tx["txid"], block_hash=item)
                seen = self.pending.pop(tx["txid"], None)
                if seen is not None and not sink.known(tx["txid"]):
                    self.figures["from_blocks"] += self._land(sink, tx, seen)
            for txid, seen in list(self.pending.items()):
                if (now - seen).total_seconds() > 600:  # never in a block nor the mempool: say so
                    del self.pending[txid]
                    sink.close_gap(sink.open_gap(seen, "lookup_failed", f"{txid}: Core had no data for it"), seen)

    def _start_refill(self, sink, gap: Gap) -> None:
        task = asyncio.create_task(self._refill(sink, gap))
        self._refills.add(task)
        task.add_done_callback(self._refills.discard)

    async def _refill(self, sink, gap: Gap, catch_up_seconds: float = 30.0) -> None:
        """List the mempool with its mempool sequence, wait until the notifications up to that sequence
        were processed (those still queued are not missing), then read what is still unknown."""
        try:
            listing = await self._rpc("getrawmempool", False, True)
            deadline = asyncio.get_running_loop().time() + catch_up_seconds
            while (self.mempool_sequence or 0) < int(listing["mempool_sequence"]):
                if asyncio.get_running_loop().time() > deadline:
                    break  # no notification came since: what is unknown now is what was lost
                await asyncio.sleep(0.05)
            wanted = [t for t in listing["txids"] if t not in (self.baseline or set()) and not sink.known(t)
                      and t not in self.pending][:MAX_REFILL_TXS]
            landed = 0
            for txid in wanted:
                try:
                    landed += self._land(sink, await self._rpc("getrawtransaction", txid, 2), gap.start)
                except RpcError as exc:
                    if exc.code != RPC_INVALID_ADDRESS_OR_KEY:  # gone since the listing: nothing to re-fill
                        raise
            sink.close_gap(gap, gap.end or self.clock(), refilled=landed, note="re-filled from getrawmempool, first-seen = gap start")
            self.figures["refilled"] += landed
        except RpcError as exc:
            gap.refill_note = f"re-fill failed: {exc}"
            self.log.warning(f"Bitcoin Core re-fill of gap {gap.start:%H:%M:%S} failed: {exc}")
