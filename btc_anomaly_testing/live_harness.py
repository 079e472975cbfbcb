"""Live operation end to end on loopback: the fake mempool.space replayed in real time, the collector
process, ``dagster dev`` with ``BTC_LIVE=on``, and a timed fake Slack. Used by the live end-to-end
test and by ``benchmarks/bench_live_latency.py``.

``RealtimeReplay`` pushes real 14 Aug 2025 transactions (esplora shape) as first-seen arrivals:
300-450 per wall-clock minute at random seconds, one ``mempool-transactions`` update a second; in
each minute of ``whale_minutes`` one arrival becomes a ``WHALE_BTC`` transfer. ``prefill_landing``
writes past minutes straight into the landing zone, so a history backfill has data. Every process
started here carries a marker variable; ``stop_everything`` ends exactly those (by pid).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

from btc_anomaly_assets.common.utc import utc_now
from btc_anomaly_assets.live.landing import LandingZone
from btc_anomaly_assets.live.raw_mapping import esplora_to_raw
from btc_anomaly_testing.fakes.loopback import Reply, Request
from btc_anomaly_testing.fakes.mempool_space_server import FakeMempoolSpace, esplora_tx, real_rows
from btc_anomaly_testing.fakes.slack_server import FakeSlack

REPO = Path(__file__).resolve().parents[1]
SATOSHI = 100_000_000
WHALE_BTC = 19_600
MAX_REAL_BTC = 1_000  # real transactions above this are left out (the alerts come from the injected whales)
ARRIVALS_PER_MINUTE = (300, 450)
KEY_FORMAT = "%Y-%m-%d-%H:%M"


def minute_floor(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


class RealtimeReplay:
    """Real transactions re-timed as arrivals in wall-clock minutes, pushed through the fake server."""

    def __init__(self, fake: FakeMempoolSpace, seed: int = 7):
        self.fake = fake
        self._rng = random.Random(seed)
        self._source = [r for r in real_rows(None) if r["output_total"] < MAX_REAL_BTC * SATOSHI]
        self._rng.shuffle(self._source)
        self._next, self._cycle = 0, 0
        self.whale_minutes: set[datetime] = set()
        self.whales: dict[datetime, str] = {}
        self.pushed_at: dict[str, float] = {}  # txid -> wall clock of its push
        self.per_minute: dict[datetime, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def take(self) -> dict:
        if self._next >= len(self._source):
            self._next, self._cycle = 0, self._cycle + 1
        row = dict(self._source[self._next])
        self._next += 1
        if self._cycle:  # a second pass needs fresh hashes
            row["hash"] = f"{self._cycle:02x}{row['hash'][2:]}"
        return row

    def minute_rows(self, minute: datetime) -> list[tuple[datetime, dict]]:
        count = self._rng.randint(*ARRIVALS_PER_MINUTE)
        timed = [(minute + timedelta(seconds=self._rng.uniform(0, 59.9)), self.take()) for _ in range(count)]
        timed.sort(key=lambda item: item[0])
        if minute in self.whale_minutes:
            whale = timed[len(timed) // 2][1]
            whale["output_total"] = WHALE_BTC * SATOSHI
            whale["input_total"] = whale["output_total"] + whale["fee"]
            self.whales[minute] = whale["hash"]
        self.per_minute[minute] = count
        return timed

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _loop(self) -> None:
        pending: list[tuple[datetime, dict]] = []
        minute = minute_floor(utc_now())
        pending.extend(t for t in self.minute_rows(minute) if t[0] >= utc_now())
        while not self._stop.wait(1.0 - time.time() % 1.0):
            now = utc_now()
            if minute_floor(now) > minute:
                minute = minute_floor(now)
                pending.extend(self.minute_rows(minute))
            due = [row for at, row in pending if at <= now]
            pending = [(at, row) for at, row in pending if at > now]
            if due:
                txs = [esplora_tx(row) for row in due]
                self.fake.push(added=txs)
                pushed = time.time()
                for tx in txs:
                    self.pushed_at[tx["txid"]] = pushed


def prefill_landing(replay: RealtimeReplay, lake: str, start: datetime, end: datetime) -> int:
    """Past minutes ``[start, end)`` written into the landing zone as if a collector had watched them."""
    zone = LandingZone(lake, "mempool-space")
    zone.state.started_at = start
    minute, count = start, 0
    while minute < end:
        for at, row in replay.minute_rows(minute):
            zone.add_transaction(esplora_to_raw(esplora_tx(row), at))
            count += 1
        minute += timedelta(minutes=1)
    zone.flush(utc_now())
    return count


class TimedSlack(FakeSlack):
    """The fake Slack webhook, recording the wall-clock arrival of every post with its text."""

    def __init__(self, **kwargs):
        self.arrivals: list[tuple[float, str]] = []
        super().__init__(clock=time.time, **kwargs)

    def handle(self, request: Request) -> Reply:
        arrived = time.time()
        try:
            text = request.json().get("text") or ""
        except (ValueError, UnicodeDecodeError):
            text = ""
        with self._lock:
            self.arrivals.append((arrived, text))
        return super().handle(request)


# ------------------------------------------------------------------------------------------------
# Processes


def process_environment(marker: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BTC_", "SLACK_", "SPARK_", "BLOCKCHAIR_", "ANTHROPIC_", "DAGSTER_"))}
    env.update(extra)
    env["BTC_BENCH_MARKER"] = str(marker)  # finds every process started here, and only those
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def our_pids(marker: Path) -> list[int]:
    needle = f"BTC_BENCH_MARKER={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def stop_process_group(process: subprocess.Popen | None, sig: int = signal.SIGINT, timeout: float = 40) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def stop_everything(marker: Path, *processes: subprocess.Popen | None) -> int:
    """Ctrl-C each process group started here, wait, then SIGKILL whatever still carries the marker."""
    for process in processes:
        stop_process_group(process)
    deadline = time.monotonic() + 15
    while our_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftovers = our_pids(marker)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(leftovers)


def start_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as stream:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def start_collector(env: dict[str, str], log: Path) -> subprocess.Popen:
    return start_process([sys.executable, "-m", "btc_anomaly_assets.cli.main", "collect"], env, log)


def start_dagster_dev(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    return start_process([sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                         env, log)


def wait_for_webserver(port: int, process: subprocess.Popen, log: Path, timeout: float = 240) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"dagster dev exited ({process.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as reply:
                if reply.status == 200:
                    return time.monotonic() - began
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"dagster dev did not answer on port {port} within {timeout:.0f} s; see {log}")


def run_history_backfill(env: dict[str, str], start: datetime, end: datetime, log: Path) -> float:
    began = time.monotonic()
    with open(log, "wb") as stream:
        done = subprocess.run([sys.executable, "-m", "btc_anomaly_assets.cli.main", "backfill", start.strftime(KEY_FORMAT),
                               end.strftime(KEY_FORMAT)], cwd=REPO, env={**env, "BTC_RUN_MODE": "in-process"},
                              stdout=stream, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"the history backfill failed ({done.returncode}); see {log}")
    return time.monotonic() - began


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LandingWatcher:
    """Polls the landing zone's current minute files and records when each hash first appeared."""

    def __init__(self, lake: str, interval: float = 0.1):
        from btc_anomaly_assets.live.landing import landing_root

        self.folder = landing_root(lake, "mempool-space") / "transactions"
        self.interval = interval
        self.landed_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._mtimes: dict[Path, float] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _loop(self) -> None:
        import pyarrow.parquet as pq

        while not self._stop.wait(self.interval):
            now_seen = time.time()
            minute = minute_floor(utc_now())
            for m in (minute - timedelta(minutes=1), minute):
                path = self.folder / f"date={m:%Y-%m-%d}" / f"{m:%H-%M}.parquet"
                try:
                    mtime = path.stat().st_mtime
                    if self._mtimes.get(path) == mtime:
                        continue
                    hashes = pq.read_table(path, columns=["hash"]).column("hash").to_pylist()
                except (OSError, ValueError):
                    continue
                self._mtimes[path] = mtime
                for tx_hash in hashes:
                    self.landed_at.setdefault(tx_hash, now_seen)
