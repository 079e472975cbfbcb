"""A loopback Bitcoin Core: ZMQ notifications (pyzmq PUB) and JSON-RPC over HTTP.

Transactions are real serialized transactions built with python-bitcoinlib from real Blockchair
rows (``build_transaction``): the row's input and output counts, its input values and output
values split evenly, segwit witnesses when the row has them, its version and lock time. Their
txids are bitcoinlib's own (double SHA-256 of the non-witness serialization).

ZMQ (``zmq_url``), as ``bitcoind -zmqpubrawtx -zmqpubhashtx -zmqpubsequence`` sends: 3-part
messages ``[topic, body, uint32 little-endian counter]``, one counter per topic; ``sequence``
bodies are ``<32-byte hash><label>`` plus an 8-byte little-endian mempool sequence for the ``A``
(added) and ``R`` (removed) labels; ``C``/``D`` are block connect/disconnect. ``skip(topic)``
burns a counter value without sending, as a dropped message would.

JSON-RPC (``rpc_url``), legacy 1.0 semantics: HTTP Basic auth (401 with an empty body when wrong),
errors with Core's codes and texts (-5 unknown transaction / not in mempool, -8 bad parameter,
-28 warming up, -32601 method not found with HTTP 404, other errors HTTP 500), 503 when the work
queue is full (``busy(n)``).
"""

from __future__ import annotations

import base64
import hashlib
import struct
import threading

import zmq
from bitcoin.core import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CScript,
    CScriptWitness,
    CTxInWitness,
    CTxWitness,
    b2lx,
    lx,
)

from btc_anomaly_testing.fakes.loopback import LoopbackServer, Reply, Request
from btc_anomaly_testing.fakes.mempool_space_server import split_value

SATOSHI = 100_000_000
NOT_FOUND = "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."


def build_transaction(row: dict) -> CMutableTransaction:
    """A real serialized transaction shaped like the real row ``row`` (bitcoinlib)."""
    n_in, n_out = int(row["input_count"]), int(row["output_count"])
    seed = row["hash"]
    vin = [CMutableTxIn(COutPoint(lx(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()), i % 3), CScript(), 0xFFFFFFFD)
           for i in range(n_in)]
    vout = [CMutableTxOut(value, CScript(bytes([0x00, 0x14]) + hashlib.sha256(f"{seed}/{n}".encode()).digest()[:20]))
            for n, value in enumerate(split_value(row["output_total"], n_out))]
    tx = CMutableTransaction(vin, vout, nLockTime=int(row["lock_time"]), nVersion=int(row["version"]))
    if row["has_witness"]:
        signature = bytes([0x30]) + hashlib.sha256(f"sig {seed}".encode()).digest() * 2
        tx.wit = CTxWitness([CTxInWitness(CScriptWitness([signature, b"\x02" + bytes(32)])) for _ in range(n_in)])
    return tx


def tx_sizes(tx) -> tuple[int, int]:
    """(size, weight) of the serialized transaction, from its bytes (BIP 141)."""
    total = len(tx.serialize())
    return total, _base_size(tx) * 3 + total


def _base_size(tx) -> int:
    import io

    stream = io.BytesIO()
    tx.stream_serialize(stream, include_witness=False)
    return len(stream.getvalue())


def verbose_json(tx, row: dict, *, blockhash: str | None = None) -> dict:
    """``getrawtransaction <txid> 2`` for ``tx``: BTC amounts, prevouts with the row's input values, fee."""
    size, weight = tx_sizes(tx)
    in_values = split_value(row["input_total"], len(tx.vin))
    vin = []
    for i, txin in enumerate(tx.vin):
        entry = {"txid": b2lx(txin.prevout.hash), "vout": txin.prevout.n, "scriptSig": {"asm": "", "hex": ""},
                 "prevout": {"generated": False, "height": 909_900, "value": in_values[i] / SATOSHI,
                             "scriptPubKey": {"hex": "0014" + "ab" * 20, "type": "witness_v0_keyhash"}},
                 "sequence": txin.nSequence}
        if tx.wit and not tx.wit.is_null():
            entry["txinwitness"] = [item.hex() for item in tx.wit.vtxinwit[i].scriptWitness.stack]
        vin.append(entry)
    vout = [{"value": out.nValue / SATOSHI, "n": n, "scriptPubKey": {"hex": out.scriptPubKey.hex(), "type": "witness_v0_keyhash"}}
            for n, out in enumerate(tx.vout)]
    data = {"txid": b2lx(tx.GetTxid()), "hash": b2lx(tx.GetHash()), "version": tx.nVersion, "size": size,
            "vsize": (weight + 3) // 4, "weight": weight, "locktime": tx.nLockTime, "vin": vin, "vout": vout,
            "fee": (row["input_total"] - row["output_total"]) / SATOSHI, "hex": tx.serialize().hex()}
    if blockhash:
        data["blockhash"] = blockhash
    return data


class FakeBitcoinCore:
    """ZMQ publisher + JSON-RPC server over one simulated mempool; use as a context manager."""

    def __init__(self, user: str = "btc-anomaly", password: str = "s3cret-rpc-pass", tip_height: int = 909_932):
        self.user, self.password = user, password
        self.mempool: dict[str, tuple] = {}  # txid -> (tx, row)
        self.blocks: dict[str, list[tuple]] = {}
        self.heights: dict[int, str] = {}
        self.tip_height = tip_height
        self.mempool_sequence = 0
        self.counters: dict[bytes, int] = {}
        self.warming_up = False
        self._busy = 0
        self._lock = threading.Lock()
        self.calls: list[str] = []
        self._context = zmq.Context()
        self._pub = self._context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind("tcp://127.0.0.1:*")
        self.zmq_url = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.rpc = LoopbackServer(self.handle)

    def __enter__(self) -> FakeBitcoinCore:
        self.rpc.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.rpc.__exit__(*exc)
        self._pub.close()
        self._context.term()

    @property
    def rpc_url(self) -> str:
        return self.rpc.url

    # --- ZMQ
    def _publish(self, topic: bytes, body: bytes, *, send: bool = True) -> None:
        with self._lock:
            counter = self.counters.get(topic, 0)
            self.counters[topic] = (counter + 1) % 2**32
            if send:
                self._pub.send_multipart([topic, body, struct.pack("<I", counter)])

    def send_frames(self, frames: list[bytes]) -> None:
        """Any multipart message, as is (a malformed notification)."""
        self._pub.send_multipart(frames)

    def skip(self, topic: bytes) -> None:
        """A message on ``topic`` that is lost on the way (its counter value is used)."""
        self._publish(topic, b"", send=False)

    def add_to_mempool(self, row: dict, *, notify: bool = True) -> str:
        """Accept a transaction built from ``row``: rawtx, hashtx and sequence ``A`` notifications."""
        tx = build_transaction(row)
        txid = b2lx(tx.GetTxid())
        with self._lock:
            self.mempool[txid] = (tx, row)
            self.mempool_sequence += 1
            mempool_seq = self.mempool_sequence
        if notify:
            self._publish(b"rawtx", tx.serialize())
            self._publish(b"hashtx", bytes.fromhex(txid))
            self._publish(b"sequence", bytes.fromhex(txid) + b"A" + struct.pack("<Q", mempool_seq))
        return txid

    def remove_from_mempool(self, txid: str) -> None:
        with self._lock:
            self.mempool.pop(txid)
            self.mempool_sequence += 1
            mempool_seq = self.mempool_sequence
        self._publish(b"sequence", bytes.fromhex(txid) + b"R" + struct.pack("<Q", mempool_seq))

    def mine(self, txids: list[str], extra_rows: list[dict] = ()) -> str:
        """A block with ``txids`` (from the mempool) and ``extra_rows`` (never in our mempool):
        rawtx/hashtx for each, then sequence ``C``."""
        with self._lock:
            entries = [self.mempool.pop(t) for t in txids]
            entries += [(build_transaction(r), r) for r in extra_rows]
            self.tip_height += 1
            block_hash = hashlib.sha256(f"core block {self.tip_height}".encode()).hexdigest()
            self.blocks[block_hash] = entries
            self.heights[self.tip_height] = block_hash
        for tx, _ in entries:
            self._publish(b"rawtx", tx.serialize())
            self._publish(b"hashtx", bytes.fromhex(b2lx(tx.GetTxid())))
        self._publish(b"sequence", bytes.fromhex(block_hash) + b"C")
        return block_hash

    # --- JSON-RPC
    def busy(self, count: int) -> None:
        self._busy = count

    def handle(self, request: Request) -> Reply:
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return Reply(401, b"", headers={"WWW-Authenticate": 'Basic realm="jsonrpc"'})
        if self._busy > 0:
            self._busy -= 1
            return Reply(503, "Work queue depth exceeded")
        try:
            call = request.json()
        except ValueError:
            return Reply(500, {"result": None, "error": {"code": -32700, "message": "Parse error"}, "id": None})
        method, params, call_id = call.get("method"), call.get("params") or [], call.get("id")
        self.calls.append(method)
        if self.warming_up:
            return Reply(500, {"result": None, "error": {"code": -28, "message": "Loading block index…"}, "id": call_id})
        handler = getattr(self, f"_rpc_{method}", None)
        if handler is None:
            return Reply(404, {"result": None, "error": {"code": -32601, "message": "Method not found"}, "id": call_id})
        try:
            with self._lock:
                result = handler(*params)
        except _RpcError as exc:
            return Reply(500, {"result": None, "error": {"code": exc.code, "message": exc.message}, "id": call_id})
        return Reply(200, {"result": result, "error": None, "id": call_id})

    def _rpc_getblockchaininfo(self):
        return {"chain": "main", "blocks": self.tip_height, "initialblockdownload": False}

    def _rpc_getrawmempool(self, verbose=False, mempool_sequence=False):
        if mempool_sequence:
            return {"txids": list(self.mempool), "mempool_sequence": self.mempool_sequence}
        return list(self.mempool)

    def _rpc_getrawtransaction(self, txid, verbosity=0, blockhash=None):
        _check_hex(txid, "parameter 1")
        entry = self.mempool.get(txid)
        if entry is None and blockhash in self.blocks:
            entry = next((e for e in self.blocks[blockhash] if b2lx(e[0].GetTxid()) == txid), None)
        if entry is None:
            raise _RpcError(-5, NOT_FOUND)
        tx, row = entry
        return verbose_json(tx, row, blockhash=blockhash) if verbosity else tx.serialize().hex()

    def _rpc_getmempoolentry(self, txid):
        _check_hex(txid, "parameter 1")
        if txid not in self.mempool:
            raise _RpcError(-5, "Transaction not in mempool")
        tx, row = self.mempool[txid]
        weight = tx_sizes(tx)[1]
        return {"vsize": (weight + 3) // 4, "weight": weight, "fees": {"base": (row["input_total"] - row["output_total"]) / SATOSHI}}

    def _rpc_getblockhash(self, height):
        if height not in self.heights:
            raise _RpcError(-8, "Block height out of range")
        return self.heights[height]

    def _rpc_getblock(self, block_hash, verbosity=1):
        _check_hex(block_hash, "blockhash")
        if block_hash not in self.blocks:
            raise _RpcError(-5, "Block not found")
        entries = self.blocks[block_hash]
        height = next(h for h, b in self.heights.items() if b == block_hash)
        if verbosity >= 2:
            txs = [verbose_json(tx, row) for tx, row in entries]
        else:
            txs = [b2lx(tx.GetTxid()) for tx, _ in entries]
        return {"hash": block_hash, "height": height, "tx": txs}


class _RpcError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _check_hex(value, name: str) -> None:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower()):
        raise _RpcError(-8, f"{name} must be of length 64 (not {len(str(value))}, for '{value}')")
