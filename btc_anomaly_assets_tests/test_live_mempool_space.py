"""The mempool.space collector against the loopback mempool.space: every fault, no loss, no duplicate."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from btc_anomaly_assets.common.utc import utc_now
from btc_anomaly_assets.live.collector import Collector
from btc_anomaly_assets.live.landing import LandingZone, landing_root, read_landing_events, read_landing_window, read_state
from btc_anomaly_assets.live.mempool_space import MempoolSpaceFeed, SendBudget
from btc_anomaly_assets.live.mempool_space_rest import MempoolRest
from btc_anomaly_testing.fakes.mempool_space_server import FakeMempoolSpace, esplora_tx, real_rows

SOURCE = "mempool-space"


def wait_for(condition, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    """A collector in its own thread (its own event loop), stopped and joined on exit."""

    def __init__(self, fake: FakeMempoolSpace, lake: str, **feed_options):
        rest = MempoolRest(fake.api_url, backoff_initial=0.05, backoff_max=0.5, sleep=time.sleep)
        self.feed = MempoolSpaceFeed(fake.ws_url, fake.api_url, rest=rest, backoff_initial=0.05, backoff_max=0.3,
                                     **feed_options)
        self.collector = Collector(self.feed, LandingZone(lake, SOURCE), flush_seconds=0.1)
        self.result: dict | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def go():
            self._loop = asyncio.get_running_loop()
            self.result = await self.collector.run(seconds=120)
        try:
            asyncio.run(go())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def __enter__(self) -> Running:
        self._thread.start()
        return self

    def refills_done(self) -> bool:
        return not self.feed._refills

    def stop(self) -> dict:
        wait_for(self.refills_done, what="re-fills to finish")
        self._loop.call_soon_threadsafe(self.collector.stop)
        self._thread.join(20)
        if self.error:
            raise self.error
        return self.result

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.collector.stop)
            self._thread.join(20)


@pytest.fixture(scope="module")
def txs() -> list[dict]:
    return [esplora_tx(r) for r in real_rows(400, offset=2000)]


def landed_hashes(lake: str) -> list[str]:
    from datetime import timedelta

    now = utc_now()
    window = read_landing_window(lake, SOURCE, now - timedelta(minutes=10), now + timedelta(minutes=2), now)
    return list(window.frame["hash"])


def test_every_fault_no_loss_no_duplicate(tmp_path, txs):
    lake = str(tmp_path / "lake")
    pre_existing, batches = txs[:30], [txs[30 + 40 * i: 70 + 40 * i] for i in range(9)]
    with FakeMempoolSpace() as fake:
        fake.push(added=pre_existing)  # in the mempool before we subscribe: never first seen by us
        with Running(fake, lake, max_message_bytes=300_000) as running:
            wait_for(lambda: fake.subscribers() == 1, what="subscription")
            assert json.loads(fake.client_messages[0]) == {"track-mempool": True}
            for i in range(0, 40, 10):
                fake.push(added=batches[0][i:i + 10])
            # 1. a lost update (sequence jump), then the next one
            fake.lose_next_push(added=batches[1])
            fake.push(added=batches[2][:20])
            # 2. malformed frames, a non-object, an oversized frame (> max_message_bytes: the client closes with 1009)
            fake.send_raw("{not json")
            fake.send_raw("[1, 2]")
            fake.push(added=batches[2][20:])
            wait_for(lambda: len(set(landed_hashes(lake))) >= 80, what="first batches landed")
            fake.send_raw(json.dumps({"mempool-transactions": {"sequence": fake.sequence, "added": [],
                                                               "padding": "x" * 400_000}}))
            wait_for(lambda: fake.connections_opened >= 2 and fake.subscribers() == 1, what="reconnect after oversized")
            # 3. a disconnect with the server refusing reconnects for a while; meanwhile the mempool moves on,
            #    and a block mines some of the unseen transactions and some seen ones
            fake.refuse_connections(True)
            fake.drop_connections()
            fake.push(added=batches[3])
            fake.push(added=batches[4], replaced=[(batches[0][0]["txid"], batches[5][0])])
            fake.mine([t["txid"] for t in batches[3][:25] + batches[0][1:6]])
            time.sleep(0.5)
            fake.rate_limit(3, retry_after="0")  # the re-fill's first REST calls get 429s
            fake.refuse_connections(False)
            wait_for(lambda: fake.subscribers() == 1, what="reconnect after outage")
            wait_for(running.refills_done, what="re-fill after outage")
            # 4. replacement, eviction and mining pushed live
            fake.push(added=batches[6], removed=[batches[2][0]["txid"]],
                      replaced=[(batches[1][0]["txid"], batches[5][1])])
            fake.mine([t["txid"] for t in batches[6][:10]])
            fake.push(added=batches[7] + batches[0][:3])  # three already-seen ones again: must not duplicate
            wait_for(lambda: len(set(landed_hashes(lake))) >= 40 * 7 + 2, what="everything landed")
            result = running.stop()
        landed = landed_hashes(lake)
        events = read_landing_events(lake, SOURCE, *_today())
    expected = {t["txid"] for b in batches[:5] + batches[6:8] for t in b} | {batches[5][0]["txid"], batches[5][1]["txid"]}
    assert len(landed) == len(set(landed)), "a transaction landed twice"
    assert set(landed) == expected, f"lost {len(expected - set(landed))}, extra {len(set(landed) - expected)}"
    assert not set(landed) & {t["txid"] for t in pre_existing}
    state = read_state(landing_root(lake, SOURCE), SOURCE)
    reasons = [g.reason for g in state.gaps]
    assert {"sequence", "malformed", "oversized", "disconnect"} <= set(reasons), reasons
    assert all(g.end is not None and g.end >= g.start for g in state.gaps)
    refilled = sum(g.refilled for g in state.gaps)
    assert refilled == len(batches[1]) + len(batches[3]) + len(batches[4]) + 1  # +1: the replacement pushed while away
    assert fake.closed_for_rate == 0 and fake.terminated_for_size == 0
    assert running.feed.figures["already_known"] == 3 and result["landed"] == len(expected)
    kinds = events.groupby("kind")["txid"].apply(set).to_dict()
    assert batches[2][0]["txid"] in kinds["removed"]
    assert kinds["replaced"] == {batches[1][0]["txid"]}  # the one pushed during the outage is lost with its push (a gap)
    assert {t["txid"] for t in batches[6][:10]} <= kinds["mined"]
    assert {t["txid"] for t in batches[3][:25]} <= kinds["mined"]  # learned from the re-filled block


def _today():
    from datetime import timedelta

    now = utc_now()
    return now - timedelta(minutes=10), now + timedelta(minutes=2)


def test_restart_is_a_gap_and_does_not_duplicate(tmp_path, txs):
    lake = str(tmp_path / "lake")
    with FakeMempoolSpace() as fake:
        with Running(fake, lake) as running:
            wait_for(lambda: fake.subscribers() == 1, what="subscription")
            fake.push(added=txs[:20])
            wait_for(lambda: len(landed_hashes(lake)) == 20, what="landed")
            running.stop()
        time.sleep(1.1)
        with Running(fake, lake) as running:
            wait_for(lambda: fake.subscribers() == 1, what="second subscription")
            fake.push(added=txs[10:30])  # half already landed by the first process
            wait_for(lambda: len(set(landed_hashes(lake))) == 30, what="landed after restart")
            running.stop()
    landed = landed_hashes(lake)
    assert sorted(landed) == sorted(t["txid"] for t in txs[:30])
    gaps = read_state(landing_root(lake, SOURCE), SOURCE).gaps
    restart = [g for g in gaps if g.reason == "restart"]
    assert len(restart) == 1 and (restart[0].end - restart[0].start).total_seconds() >= 1.0


def test_fake_server_enforces_the_real_limits():
    with FakeMempoolSpace() as fake:
        with connect(fake.ws_url) as ws:
            ws.send(json.dumps({"action": "ping"}))
            assert json.loads(ws.recv(timeout=5)) == {"pong": True}
            with pytest.raises(ConnectionClosed):
                for _ in range(120):
                    ws.send(json.dumps({"action": "noop"}))
                ws.recv(timeout=30)  # the close handshake ends at the server's close timeout (it stops reading)
        assert fake.closed_for_rate == 1
        with connect(fake.ws_url) as ws, pytest.raises(ConnectionClosed):
            ws.send("x" * 60_000)
            ws.recv(timeout=30)
        assert fake.terminated_for_size == 1


def test_send_budget_stays_under_the_server_limit():
    clock = [0.0]
    budget = SendBudget(clock=lambda: clock[0])
    for _ in range(budget.limit):
        assert budget.wait_seconds() == 0
        budget.record()
    assert 0 < budget.wait_seconds() <= 10.0
    clock[0] = 10.01
    assert budget.wait_seconds() == 0
    assert budget.limit * 2 < 100


def test_rest_client_honours_429_retry_after(txs):
    with FakeMempoolSpace() as fake:
        fake.push(added=txs[:3])
        waits = []
        rest = MempoolRest(fake.api_url, sleep=waits.append)
        fake.rate_limit(2, retry_after="2")
        assert rest.mempool_txids() == [t["txid"] for t in txs[:3]]
        assert waits == [2.0, 2.0] and rest.rate_limited == 2
        assert rest.first_seen_times([txs[0]["txid"], "0" * 64])[txs[0]["txid"]] > 0


def _cli_env(**extra) -> dict:
    import os

    from btc_anomaly_assets.common import settings

    env = {k: v for k, v in os.environ.items() if k not in {s.name for s in settings.SETTINGS}}
    return {**env, **extra}


def test_cli_collect_stops_after_n_seconds_and_refuses_batch_sources(tmp_path, txs):
    import subprocess
    import sys

    with FakeMempoolSpace() as fake:
        env = _cli_env(BTC_SOURCE=SOURCE, BTC_MEMPOOL_WS_URL=fake.ws_url, BTC_MEMPOOL_API_URL=fake.api_url,
                       BTC_DATA_DIR=str(tmp_path))
        process = subprocess.Popen([sys.executable, "-m", "btc_anomaly_assets.cli.main", "collect", "--seconds", "3"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: fake.subscribers() == 1, timeout=60, what="the CLI's subscription")
        fake.push(added=txs[:25])
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["landed"] == 25 and figures["source"] == SOURCE and 2.5 <= figures["seconds"] <= 10
    assert len(landed_hashes(str(tmp_path / "lake"))) == 25
    refused = subprocess.run([sys.executable, "-m", "btc_anomaly_assets.cli.main", "collect"], capture_output=True, text=True,
                             env=_cli_env(BTC_SOURCE="blockchair"), timeout=60)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1 and "1,440" in refused.stderr
