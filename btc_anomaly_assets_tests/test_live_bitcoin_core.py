"""The Bitcoin Core collector against the loopback node: real serialized transactions over ZMQ,
JSON-RPC with Core's error codes, lost messages detected from the counters and re-filled."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest
from bitcoin.core import b2lx

from btc_anomaly_assets.common.utc import utc_now
from btc_anomaly_assets.live.bitcoin_core import BitcoinCoreFeed, CounterTracker, RawTxError, parse_transaction
from btc_anomaly_assets.live.bitcoin_core_rpc import CoreRpc, RpcError
from btc_anomaly_assets.live.collector import Collector
from btc_anomaly_assets.live.landing import LandingZone, landing_root, read_landing_events, read_landing_window, read_state
from btc_anomaly_testing.fakes.bitcoin_core import FakeBitcoinCore, build_transaction, tx_sizes
from btc_anomaly_testing.fakes.mempool_space_server import real_rows

SOURCE = "bitcoin-core"


def wait_for(condition, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_parser_txids_match_bitcoinlib():
    rows = real_rows(200, offset=5000)
    assert any(r["has_witness"] for r in rows) and any(not r["has_witness"] for r in rows)
    for row in rows:
        tx = build_transaction(row)
        parsed = parse_transaction(tx.serialize())
        assert parsed["txid"] == b2lx(tx.GetTxid())
        assert (parsed["size"], parsed["weight"]) == tx_sizes(tx)
        assert (parsed["input_count"], parsed["output_count"], parsed["output_total"]) == \
            (row["input_count"], row["output_count"], row["output_total"])
        assert parsed["has_witness"] == bool(row["has_witness"])
    with pytest.raises(RawTxError):
        parse_transaction(build_transaction(rows[0]).serialize()[:-7])


def test_counter_tracker_detects_loss_and_wraps():
    counters = CounterTracker()
    assert counters.lost_before(b"rawtx", 7) == 0
    assert counters.lost_before(b"rawtx", 8) == 0
    assert counters.lost_before(b"rawtx", 11) == 2
    assert counters.lost_before(b"sequence", 0) == 0
    counters.last[b"rawtx"] = 2**32 - 1
    assert counters.lost_before(b"rawtx", 0) == 0
    assert counters.lost_before(b"rawtx", 2) == 1
    assert counters.lost_before(b"rawtx", 0) == CounterTracker.RESTARTED  # the node restarted: counters from 0


def test_rpc_errors_auth_and_retries(tmp_path):
    with FakeBitcoinCore() as node:
        waits = []
        rpc = CoreRpc(node.rpc_url, user=node.user, password=node.password, sleep=waits.append)
        assert rpc.call("getblockchaininfo")["chain"] == "main"
        with pytest.raises(RpcError) as missing:
            rpc.call("getrawtransaction", "ab" * 32, 2)
        assert missing.value.code == -5 and "No such mempool" in str(missing.value)
        with pytest.raises(RpcError) as unknown:
            rpc.call("sendtoaddress", "x", 1)
        assert unknown.value.code == -32601
        with pytest.raises(RpcError) as bad:
            rpc.call("getmempoolentry", "zz")
        assert bad.value.code == -8
        node.busy(2)
        assert rpc.call("getblockchaininfo")["blocks"] == node.tip_height and len(waits) == 2
        node.warming_up = True
        with pytest.raises(RpcError) as warm:
            rpc.call("getblockchaininfo")
        assert warm.value.code == -28 and len(waits) == 2 + rpc.max_attempts - 1
        node.warming_up = False
        wrong = CoreRpc(node.rpc_url.replace("http://", f"http://{node.user}:wrong-password-123@"), sleep=waits.append)
        with pytest.raises(RpcError, match="401") as refused:
            wrong.call("getblockchaininfo")
        assert "wrong-password-123" not in str(refused.value) and "wrong-password-123" not in repr(wrong)
        cookie = tmp_path / ".cookie"
        cookie.write_text(f"{node.user}:{node.password}")
        assert CoreRpc(node.rpc_url, cookie_file=str(cookie)).call("getrawmempool") == []
        with pytest.raises(ValueError, match="BTC_CORE_RPC_COOKIE"):
            CoreRpc(node.rpc_url)


def test_collector_survives_lost_and_malformed_messages(tmp_path):
    lake = str(tmp_path / "lake")
    rows = real_rows(60, offset=8000)
    with FakeBitcoinCore() as node:
        before = node.add_to_mempool(rows[0], notify=False)  # already there when the collector starts
        rpc = CoreRpc(node.rpc_url, user=node.user, password=node.password, sleep=time.sleep, backoff_initial=0.01)
        feed = BitcoinCoreFeed(node.zmq_url, rpc)
        collector = Collector(feed, LandingZone(lake, SOURCE), flush_seconds=0.1)
        loop_box = {}

        def main():
            async def go():
                loop_box["loop"] = asyncio.get_running_loop()
                loop_box["result"] = await collector.run(seconds=60)
            try:
                asyncio.run(go())
            except BaseException as exc:  # noqa: BLE001 - reported below
                loop_box["error"] = exc

        now = utc_now()

        def landed():
            window = read_landing_window(lake, SOURCE, now - timedelta(minutes=5), now + timedelta(minutes=5), utc_now())
            return list(window.frame["hash"])

        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        wait_for(lambda: "getrawmempool" in node.calls, what="baseline")
        time.sleep(0.5)  # ZMQ subscriptions propagate asynchronously ("slow joiner")
        seen = [node.add_to_mempool(r) for r in rows[1:20]]
        # a lost notification: the transaction is accepted, its three messages never arrive
        lost = node.add_to_mempool(rows[20], notify=False)
        for topic in (b"rawtx", b"hashtx", b"sequence"):
            node.skip(topic)
        seen += [node.add_to_mempool(r) for r in rows[21:30]]
        node.send_frames([b"rawtx", b"\x01\x00"])  # two frames: not a notification
        node.busy(1)  # one 503 from the work queue: retried
        seen += [node.add_to_mempool(r) for r in rows[30:40]]
        wait_for(lambda: set(landed()) >= set(seen) | {lost}, what="mempool transactions landed")
        node.remove_from_mempool(seen[3])
        block = node.mine(seen[5:15], extra_rows=rows[40:42])  # two transactions only ever seen in the block
        seen += [node.add_to_mempool(r) for r in rows[42:50]]
        expected = set(seen) | {lost} | {b2lx(build_transaction(r).GetTxid()) for r in rows[40:42]}

        wait_for(lambda: set(landed()) >= expected or "error" in loop_box, what="every transaction landed")
        assert "error" not in loop_box, loop_box.get("error")
        loop_box["loop"].call_soon_threadsafe(collector.stop)
        thread.join(20)
    hashes = landed()
    assert len(hashes) == len(set(hashes)) and set(hashes) == expected and before not in hashes
    gaps = read_state(landing_root(lake, SOURCE), SOURCE).gaps
    reasons = {g.reason for g in gaps}
    assert {"sequence", "malformed"} <= reasons
    assert sum(g.refilled for g in gaps) == 1 and feed.figures["lost_messages"] == 2  # rawtx and sequence (hashtx: not subscribed)
    assert feed.figures["from_blocks"] == 2
    events = read_landing_events(lake, SOURCE, now - timedelta(minutes=5), now + timedelta(minutes=5))
    assert set(events[events["kind"] == "removed"]["txid"]) == {seen[3]}
    mined = events[events["kind"] == "mined"]
    assert set(mined["txid"]) >= set(seen[5:15]) and set(mined["block_hash"]) == {block}
