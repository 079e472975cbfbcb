"""Benchmark: "minute close -> Slack alert delivered" latency on the real daemon path.

Prints figures, asserts nothing. What runs:

- a loopback fake Blockchair API serving MEMPOOL rows in real time: real transactions from the
  bundled dump, re-timed as first-seen arrivals (300-450 per wall-clock minute, spread over the
  minute); a row is only visible once its time has passed. In chosen minutes one transaction
  becomes a 19,600 BTC transfer, which the EWMA ratio rule grades ``high``;
- a loopback fake Slack webhook that records when each post arrives;
- optionally a local Spark Connect server (the live path: no JVM start per run);
- a history backfill of the last ``--history-minutes`` minutes (one run, the CLI's
  ``btc-anomaly backfill``), so the detector and the forecast have the history a deployment in
  steady state has (a fresh deployment's first 30 live minutes fail their forecast step);
- ``dagster dev`` (webserver + daemon) with BTC_LIVE=on and open-ended minute partitions from
  today 00:00 UTC: the ``live_minute`` schedule, the queued run coordinator, the run launcher,
  the anomaly alert sensor and its alert runs, exactly as deployed.

After ``--minutes`` measured minutes it stops everything it started and prints, per alerted
minute, the minute close, schedule tick, live run queue/start/steps/end, alert sensor tick, alert
run, Slack arrival, then the distribution of close -> delivered and where the time goes.

    python benchmarks/bench_live_latency.py [--minutes 6] [--spark classic|connect|both]
        [--anomaly-every 2] [--history-minutes 40] [--dagster-yaml-extra 'run_queue: {dequeue_interval_seconds: 5}']

(``--dagster-yaml-extra`` is appended to the CLI's dagster.yaml; a repeated top-level key wins, so the
example above measures the queue's default 5 s dequeue interval instead of the 1 s the CLI writes.)

Figures are from whatever machine this is (and whatever else runs on it): read the breakdown.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from btc_anomaly_assets.ingest.resources import sample_dir  # noqa: E402
from btc_anomaly_assets.instance.dagster_yaml import dagster_yaml  # noqa: E402
from btc_anomaly_testing.fakes.blockchair_server import (  # noqa: E402
    MEMPOOL_PATH,
    FakeBlockchair,
    as_mempool_rows,
    load_dump_rows,
)
from btc_anomaly_testing.fakes.loopback import LoopbackServer, Reply, Request  # noqa: E402
from btc_anomaly_testing.fakes.slack_server import FakeSlack  # noqa: E402

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
KEY_FORMAT = "%Y-%m-%d-%H:%M"
SATOSHI = 100_000_000
WHALE_BTC = 19_600
MAX_REAL_BTC = 1_000  # real transactions above this are not served (the sample's own whales)
ARRIVALS_PER_MINUTE = (300, 450)
DRAIN_SECONDS = 240  # after the last measured minute closes: time for its run and alert to finish
PIPELINE_JOB = "btc_pipeline"
ALERT_JOB = "send_anomaly_alert"


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def minute_floor(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


# ------------------------------------------------------------------------------------------------
# Fake services


class RealtimeMempool:
    """Real dump transactions re-timed as first-seen arrivals in wall-clock minutes.

    Each minute gets 300-450 rows at uniformly random seconds; a minute in ``whale_minutes``
    gets one of its rows turned into a ``WHALE_BTC`` transfer. Rows are generated per minute on
    demand and handed to the wrapped ``FakeBlockchair`` only once their time has passed, so a
    request never sees the future.
    """

    def __init__(self, first_minute: datetime, seed: int = 7):
        dump = sorted(sample_dir().glob("blockchair_bitcoin_transactions_*.tsv.gz"))[0]
        self._rng = random.Random(seed)
        # Shuffled, so every minute is a representative mix (the dump runs block by block, with long
        # stretches of near-identical dust); the dump's own whales are left out so that the alerts
        # come from the injected ones.
        self._source = [row for row in as_mempool_rows(load_dump_rows(dump)) if row["output_total"] < MAX_REAL_BTC * SATOSHI]
        self._rng.shuffle(self._source)
        self._next_source = 0
        self._cycle = 0
        self._next_minute = first_minute
        self._next_id = 2_000_000_000
        self._pending: list[dict] = []  # generated, not yet visible, sorted by time
        self._lock = threading.Lock()
        self.whale_minutes: set[datetime] = set()
        self.whales: dict[datetime, str] = {}  # minute -> hash of its whale
        self.rows_served_by_minute: dict[datetime, int] = {}
        self.fake = FakeBlockchair(mempool_rows=[])

    def handle(self, request: Request) -> Reply:
        self.release_due_rows()
        return self.fake.handle(request)

    def release_due_rows(self) -> None:
        now = utc_now()
        with self._lock:
            while self._next_minute <= minute_floor(now):
                self._pending.extend(self._generate(self._next_minute))
                self._next_minute += timedelta(minutes=1)
            stamp = now.strftime(TIME_FORMAT)
            due = 0
            while due < len(self._pending) and self._pending[due]["time"] < stamp:
                due += 1
            if due:
                rows, self._pending = self._pending[:due], self._pending[due:]
                with self.fake._lock:  # the fake's own lock guards its tables
                    self.fake.tables[MEMPOOL_PATH].add(rows)

    def _generate(self, minute: datetime) -> list[dict]:
        count = self._rng.randint(*ARRIVALS_PER_MINUTE)
        offsets = sorted(self._rng.uniform(0, 59.999) for _ in range(count))
        rows = []
        for offset in offsets:
            row = dict(self._take())
            seen = minute + timedelta(seconds=offset)
            row.update(time=seen.strftime(TIME_FORMAT), date=seen.strftime("%Y-%m-%d"), id=self._next_id)
            self._next_id += 1
            rows.append(row)
        if minute in self.whale_minutes and rows:
            whale = rows[len(rows) // 2]
            scale = WHALE_BTC * SATOSHI / max(whale["output_total"], 1)
            whale["output_total"] = WHALE_BTC * SATOSHI
            whale["input_total"] = whale["output_total"] + whale["fee"]
            for usd in ("input_total_usd", "output_total_usd"):
                whale[usd] = round(whale[usd] * scale, 4)
            self.whales[minute] = whale["hash"]
        self.rows_served_by_minute[minute] = len(rows)
        return rows

    def _take(self) -> dict:
        if self._next_source >= len(self._source):
            self._next_source, self._cycle = 0, self._cycle + 1
        row = self._source[self._next_source]
        self._next_source += 1
        if self._cycle:  # a second pass over the dump needs fresh hashes
            row = {**row, "hash": f"{self._cycle:02x}{row['hash'][2:]}"}
        return row


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


def _process_environment(marker: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BTC_", "SLACK_", "SPARK_", "BLOCKCHAIR_", "ANTHROPIC_", "DAGSTER_"))}
    env.update(extra)
    env["BTC_BENCH_MARKER"] = str(marker)  # finds every process this benchmark started, and only those
    return env


def _our_pids(marker: Path) -> list[int]:
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


def stop_everything(marker: Path, group: subprocess.Popen | None) -> int:
    """SIGTERM dagster dev's process group, wait, then SIGKILL whatever carries our marker."""
    if group is not None and group.poll() is None:
        try:
            os.killpg(group.pid, signal.SIGINT)  # dagster dev shuts its children down on Ctrl-C
            group.wait(timeout=40)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(group.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        group.wait()
    deadline = time.monotonic() + 15
    while _our_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftovers = _our_pids(marker)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(leftovers)


def start_dagster_dev(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    with open(log, "wb") as stream:
        return subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )


def wait_for_webserver(port: int, process: subprocess.Popen, log: Path, timeout: float = 180) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if process.poll() is not None:
            raise SystemExit(f"dagster dev exited ({process.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as reply:
                if reply.status == 200:
                    return time.monotonic() - began
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"dagster dev did not answer on port {port} within {timeout:.0f} s; see {log}")


def run_history_backfill(env: dict[str, str], start: datetime, end: datetime, log: Path) -> float:
    began = time.monotonic()
    with open(log, "wb") as stream:
        done = subprocess.run([sys.executable, "-m", "btc_anomaly_assets.cli.main", "backfill", start.strftime(KEY_FORMAT),
                               end.strftime(KEY_FORMAT)], cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"the history backfill failed ({done.returncode}); see {log}")
    return time.monotonic() - began


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# What the instance recorded


@dataclass
class RunTimes:
    run_id: str
    status: str
    created: float
    events: dict[str, float] = field(default_factory=dict)  # first RUN_* event times
    steps: dict[str, tuple[float, float]] = field(default_factory=dict)  # step -> (start, end)
    materialized: dict[str, float] = field(default_factory=dict)  # asset path -> time
    tick: float | None = None

    def at(self, name: str) -> float | None:
        return self.events.get(name)

    @property
    def end(self) -> float | None:
        return self.at("RUN_SUCCESS") or self.at("RUN_FAILURE")


def read_run(instance, record) -> RunTimes:
    run = record.dagster_run
    times = RunTimes(run.run_id, run.status.value, record.create_timestamp.timestamp())
    for entry in instance.all_logs(run.run_id):
        event = entry.dagster_event
        if event is None:
            continue
        kind = event.event_type.name  # RUN_START etc. (their stored values are the legacy PIPELINE_*)
        if kind.startswith("RUN_"):
            times.events.setdefault(kind, entry.timestamp)
        elif kind == "STEP_START":
            times.steps[entry.step_key] = (entry.timestamp, float("nan"))
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and entry.step_key in times.steps:
            times.steps[entry.step_key] = (times.steps[entry.step_key][0], entry.timestamp)
        elif kind == "ASSET_MATERIALIZATION":
            times.materialized.setdefault("/".join(event.asset_key.path), entry.timestamp)
    tick_id = run.tags.get("dagster/tick")
    if tick_id:
        try:
            times.tick = instance.schedule_storage.get_tick(int(tick_id)).timestamp
        except Exception:  # a tick purged or not stored: the run's creation time still bounds it
            times.tick = None
    return times


@dataclass
class AlertedMinute:
    minute: datetime
    injected: bool
    live: RunTimes
    alert: RunTimes | None  # None: sent from inside the live run
    alert_id: str
    delivered: float
    alerts_in_minute: int
    last_delivered: float

    @property
    def close(self) -> float:
        return (self.minute + timedelta(minutes=1)).replace(tzinfo=timezone.utc).timestamp()

    @property
    def latency(self) -> float:
        return self.delivered - self.close


def collect(home: Path, warehouse_path: Path, measured: list[datetime], whales: dict, arrivals) -> tuple[list, dict]:
    """Per measured minute: its live run, and the first of its alerts to reach Slack, sent either from
    inside the live run (``BTC_ALERT_IN_RUN``) or by an alert run the sensor launched."""
    import dagster as dg

    from btc_anomaly_assets.common.warehouse import Warehouse

    wh = Warehouse(str(warehouse_path))
    alerts = wh.query("SELECT alert_id, text, item_ids FROM btc.alerts WHERE status = 'sent'")
    item_minutes = wh.query(
        "SELECT incident_id AS item, minute FROM btc.incidents")  # alerts are per incident
    minute_of_item = dict(zip(item_minutes["item"], item_minutes["minute"]))
    first_arrival_by_text: dict[str, float] = {}
    for arrived, text in arrivals:
        first_arrival_by_text.setdefault(text, arrived)
    results, notes = [], {"live_runs": {}, "failed_live_runs": [], "undelivered_whale_minutes": []}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        live = {}
        for record in instance.get_run_records(dg.RunsFilter(job_name=PIPELINE_JOB, tags={"btc/trigger": "live"})):
            key = record.dagster_run.tags.get("dagster/partition")
            live[key] = read_run(instance, record)
        alert_runs = {record.dagster_run.tags.get("btc/alert_id"): record
                      for record in instance.get_run_records(dg.RunsFilter(job_name=ALERT_JOB))}
        notes["sweep_runs"] = [
            (r.dagster_run.tags.get("dagster/asset_partition_range_start"), read_run(instance, r))
            for r in instance.get_run_records(dg.RunsFilter(job_name=PIPELINE_JOB, tags={"btc/trigger": "late_data"}))]
        for minute in measured:
            run = live.get(minute.strftime(KEY_FORMAT))
            notes["live_runs"][minute] = run
            if run is None:
                continue
            if run.status != "SUCCESS":
                notes["failed_live_runs"].append((minute, run.status))
            delivered = []
            for alert_id, text, items in alerts.itertuples(index=False):
                minutes = {minute_of_item.get(i) for i in items}
                if pd.Timestamp(minute) not in minutes or text not in first_arrival_by_text:
                    continue
                delivered.append((first_arrival_by_text[text], alert_id, alert_runs.get(alert_id)))
            if not delivered:
                if minute in whales:
                    notes["undelivered_whale_minutes"].append(minute)
                continue
            arrived, alert_id, record = min(delivered, key=lambda d: d[0])
            results.append(AlertedMinute(minute, minute in whales, run, read_run(instance, record) if record else None,
                                         alert_id, arrived, len(delivered), max(d[0] for d in delivered)))
    return results, notes


# ------------------------------------------------------------------------------------------------
# Report


def _fmt(value: float | None) -> str:
    return "   -  " if value is None or value != value else f"{value:6.1f}"


def _since(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _stamp(ts: float | None, ref: float) -> str:
    return "    -   " if ts is None else f"{ts - ref:+7.1f}s"


def breakdown(m: AlertedMinute) -> dict[str, float | None]:
    live, alert = m.live, m.alert
    parts: dict[str, float | None] = {
        "schedule tick (close -> live run created)": live.created - m.close,
        "live run queued (created -> launched: RUN_STARTING)": _since(live.created, live.at("RUN_STARTING")),
        "live run start-up (RUN_STARTING -> RUN_START)": _since(live.at("RUN_STARTING"), live.at("RUN_START")),
    }
    previous_end = live.at("RUN_START")
    steps = ("btc__raw_transactions", "btc__minute_aggregates", "btc__ewma_anomalies", "btc__coordinated_clusters",
             "btc__transaction_forecast", "btc__incidents")
    for step in sorted((s for s in steps if s in live.steps), key=lambda s: live.steps[s][0]):
        start, end = live.steps[step]
        parts[f"  wait before {step.removeprefix('btc__')}"] = _since(previous_end, start)
        parts[f"  step {step.removeprefix('btc__')}"] = end - start
        previous_end = end
    if alert is None:  # sent from the incidents step of the live run
        parts["in-run: incidents step end -> Slack received (negative: sent before the step ended)"] = \
            _since(previous_end, m.delivered)
        return parts
    incidents_done = live.materialized.get("btc/incidents")
    parts["sensor (incidents stored -> alert run created)"] = _since(incidents_done, alert.created)
    parts["alert run queued (created -> RUN_STARTING)"] = _since(alert.created, alert.at("RUN_STARTING"))
    parts["alert run start-up (RUN_STARTING -> RUN_START)"] = _since(alert.at("RUN_STARTING"), alert.at("RUN_START"))
    deliver = alert.steps.get("deliver_alert")
    parts["alert pool wait (RUN_START -> deliver_alert start)"] = _since(alert.at("RUN_START"), deliver[0]) if deliver else None
    parts["deliver_alert start -> Slack received"] = (m.delivered - deliver[0]) if deliver else None
    return parts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def print_report(label: str, results: list[AlertedMinute], notes: dict, mempool: RealtimeMempool, setup: dict) -> dict:
    print(f"\n=== {label} ===")
    for key, value in setup.items():
        print(f"  {key}: {value}")
    print("\nper alerted minute (times relative to the minute close; 'w' = injected whale minute; a schedule tick is "
          "recorded at its nominal time, so 'created' is when the daemon acted)")
    print("  minute  close    sched-tick created  launched RUN_START ewma-stored run-end | sensor-tick alert-created "
          "RUN_START deliver-start slack | total")
    for m in sorted(results, key=lambda r: r.minute):
        live, alert = m.live, m.alert or RunTimes("-", "in-run", float("nan"))
        deliver = alert.steps.get("deliver_alert", (None, None))
        print(f"  {m.minute:%H:%M}{'w' if m.injected else ' '} {datetime.fromtimestamp(m.close, timezone.utc):%H:%M:%S} "
              f"{_stamp(live.tick, m.close)} {_stamp(live.created, m.close)} {_stamp(live.at('RUN_STARTING'), m.close)} "
              f"{_stamp(live.at('RUN_START'), m.close)} {_stamp(live.materialized.get('btc/ewma_anomalies'), m.close)} "
              f"{_stamp(live.end, m.close)} | {_stamp(alert.tick, m.close)} {_stamp(alert.created if m.alert else None, m.close)} "
              f"{_stamp(alert.at('RUN_START'), m.close)} "
              f"{_stamp(deliver[0], m.close)} {_stamp(m.delivered, m.close)} | {m.latency:6.1f} s  "
              f"({m.alerts_in_minute} alert(s), last at {m.last_delivered - m.close:+.1f}s; "
              f"{'in-run' if m.alert is None else 'sensor'})")
    latencies = [m.latency for m in results]
    summary = {}
    if latencies:
        summary = {"n": len(latencies), "median": statistics.median(latencies), "p95": percentile(latencies, 0.95),
                   "max": max(latencies)}
        print(f"\nclose -> Slack delivered over {len(latencies)} alerted minute(s): median {summary['median']:.1f} s, "
              f"p95 {summary['p95']:.1f} s, max {summary['max']:.1f} s   (goal: p95 <= 10 s)")
        rows = [breakdown(m) for m in results]
        print("\nwhere the time goes (median over alerted minutes, seconds):")
        for name in rows[0]:
            values = [r[name] for r in rows if r.get(name) is not None]
            if values:
                print(f"  {name:52s} {statistics.median(values):6.1f}   (min {min(values):5.1f}, max {max(values):5.1f})")
        ewma = [m.live.materialized.get("btc/ewma_anomalies") - m.close for m in results
                if m.live.materialized.get("btc/ewma_anomalies")]
        if ewma:
            print(f"  {'=> close -> ewma stored (an in-run alert could go here)':52s} {statistics.median(ewma):6.1f}")
        summary["close_to_ewma_median"] = statistics.median(ewma) if ewma else float("nan")
    else:
        print("\nno alert from a measured live minute reached Slack")
    live_all = [r for r in notes["live_runs"].values() if r is not None]
    durations = [r.end - r.at("RUN_START") for r in live_all if r.end and r.at("RUN_START")]
    closes = {m: (m + timedelta(minutes=1)).replace(tzinfo=timezone.utc).timestamp() for m in notes["live_runs"]}
    created = [r.created - closes[m] for m, r in notes["live_runs"].items() if r is not None]
    print(f"\nlive runs of measured minutes: {len(live_all)} of {len(notes['live_runs'])}; "
          f"close -> created median {statistics.median(created) if created else float('nan'):.1f} s; "
          f"RUN_START -> end median {statistics.median(durations) if durations else float('nan'):.1f} s")
    if notes["failed_live_runs"]:
        print(f"  NOT successful: {[(f'{m:%H:%M}', s) for m, s in notes['failed_live_runs']]}")
    if notes["undelivered_whale_minutes"]:
        print(f"  whale minutes with no delivered alert: {[f'{m:%H:%M}' for m in notes['undelivered_whale_minutes']]}")
    for start, sweep in notes["sweep_runs"]:
        print(f"  late-data sweep from {start}: created {datetime.fromtimestamp(sweep.created, timezone.utc):%H:%M:%S}, "
              f"ran {_fmt(_since(sweep.at('RUN_START'), sweep.end))} s ({sweep.status})")
    served = [mempool.rows_served_by_minute[m] for m in notes["live_runs"] if m in mempool.rows_served_by_minute]
    print(f"  arrivals served per measured minute: {served}")
    return summary


# ------------------------------------------------------------------------------------------------
# One measurement


def measure(spark: str, args, workdir: Path) -> dict:
    from btc_anomaly_assets.aggregates.spark_session import start_local_connect_server

    home, data = workdir / "dagster_home", workdir / "data"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(dagster_yaml(home) + (args.dagster_yaml_extra + "\n" if args.dagster_yaml_extra else ""))
    now = utc_now()
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    history_start = max(day_start, minute_floor(now) - timedelta(minutes=args.history_minutes))
    mempool = RealtimeMempool(first_minute=history_start)
    connect = None
    dev = None
    setup = {"spark": spark, "load average at start": os.getloadavg(), "cpus": os.cpu_count(),
             "dagster.yaml extra": args.dagster_yaml_extra or "-"}
    with LoopbackServer(mempool.handle) as blockchair, TimedSlack() as slack:
        env_extra = {
            "DAGSTER_HOME": str(home), "BTC_DATA_DIR": str(data), "BTC_SOURCE": "blockchair",
            "BTC_BLOCKCHAIR_MODE": "mempool", "BLOCKCHAIR_API_URL": blockchair.url, "SLACK_WEBHOOK_URL": slack.webhook_url,
            "BTC_LIVE": "on", "BTC_PARTITIONS_START": day_start.strftime(KEY_FORMAT), "BTC_PARTITIONS_END": "none",
            "BTC_LOG_LEVEL": "WARNING",
        }
        try:
            if spark == "connect":
                began = time.monotonic()
                connect = start_local_connect_server(master="local[2]", driver_memory="1g",
                                                     conf={"spark.sql.shuffle.partitions": "4"})
                env_extra["SPARK_REMOTE"] = connect.remote
                setup["connect server start"] = f"{time.monotonic() - began:.1f} s"
            else:
                env_extra["SPARK_MASTER"] = "local[2]"
            env = _process_environment(workdir, env_extra)
            history_end = minute_floor(utc_now())
            if history_end > history_start:
                seconds = run_history_backfill(env, history_start, history_end, workdir / "history_backfill.log")
                setup["history backfill"] = f"[{history_start:%H:%M}, {history_end:%H:%M}) in {seconds:.1f} s"
            port = free_port()
            dev = start_dagster_dev(env, port, workdir / "dagster_dev.log")
            setup["dagster dev ready"] = f"{wait_for_webserver(port, dev, workdir / 'dagster_dev.log'):.1f} s"
            # The first tick after start-up also warms the code server; measure the minutes after it.
            first = minute_floor(utc_now()) + timedelta(minutes=1)
            measured = [first + timedelta(minutes=i) for i in range(args.minutes)]
            for index, minute in enumerate(measured, start=1):
                if args.anomaly_every and index % args.anomaly_every == 0:
                    mempool.whale_minutes.add(minute)
            setup["measured minutes"] = f"{measured[0]:%H:%M} .. {measured[-1]:%H:%M} UTC; whale in " + \
                ", ".join(f"{m:%H:%M}" for m in sorted(mempool.whale_minutes))
            last_close = measured[-1] + timedelta(minutes=1)
            print(f"[{spark}] measuring {args.minutes} minute(s) until {last_close:%H:%M} UTC "
                  f"(+ up to {DRAIN_SECONDS} s to drain) ...", flush=True)
            _wait_until(last_close, dev)
            _drain(home, measured, dev)
        finally:
            leftovers = stop_everything(workdir, dev)
            if connect is not None:
                connect.stop()
            setup["processes killed after dagster dev stopped"] = leftovers
        setup["load average at end"] = os.getloadavg()
        results, notes = collect(home, data / "warehouse.duckdb", measured, mempool.whales, list(slack.arrivals))
        failure_posts = [t for _, t in slack.arrivals if "failed" in t.lower() and "anomaly" not in t.lower()]
        setup["Slack posts (of which run-failure alerts)"] = f"{len(slack.arrivals)} ({len(failure_posts)})"
    return print_report(f"live latency, Spark {spark}", results, notes, mempool, setup)


def _wait_until(moment: datetime, dev: subprocess.Popen) -> None:
    while utc_now() < moment:
        if dev.poll() is not None:
            raise SystemExit(f"dagster dev exited early ({dev.returncode})")
        time.sleep(1)


def _drain(home: Path, measured: list[datetime], dev: subprocess.Popen) -> None:
    """Wait until every measured minute's live run and its alert runs are finished (bounded)."""
    import dagster as dg

    deadline = time.monotonic() + DRAIN_SECONDS
    keys = {m.strftime(KEY_FORMAT) for m in measured}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while time.monotonic() < deadline and dev.poll() is None:
            live = instance.get_runs(dg.RunsFilter(job_name=PIPELINE_JOB, tags={"btc/trigger": "live"}))
            done = {r.tags.get("dagster/partition") for r in live if r.is_finished}
            pending_alerts = instance.get_runs(dg.RunsFilter(job_name=ALERT_JOB, statuses=[
                dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.NOT_STARTED]))
            if keys <= done and not pending_alerts:
                time.sleep(20)  # one more sensor tick for the last materializations
                if not instance.get_runs(dg.RunsFilter(job_name=ALERT_JOB, statuses=[
                        dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])):
                    return
            time.sleep(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=6, help="measured live minutes (after one warm-up minute)")
    parser.add_argument("--spark", choices=("classic", "connect", "both"), default="both")
    parser.add_argument("--anomaly-every", type=int, default=2, help="inject the whale in every k-th measured minute (0: never)")
    parser.add_argument("--history-minutes", type=int, default=40, help="minutes backfilled before dagster dev starts")
    parser.add_argument("--dagster-yaml-extra", default="", help="YAML appended to the CLI's dagster.yaml (experiments)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, instance, warehouse)")
    args = parser.parse_args(argv)
    modes = ["classic", "connect"] if args.spark == "both" else [args.spark]
    summaries = {}
    for spark in modes:
        workdir = Path(tempfile.mkdtemp(prefix=f"btc-live-latency-{spark}-"))
        try:
            summaries[spark] = measure(spark, args, workdir)
        finally:
            if args.keep:
                print(f"  work folder kept: {workdir}")
            else:
                import shutil

                shutil.rmtree(workdir, ignore_errors=True)
    if len(summaries) > 1:
        print("\nsummary (close -> Slack delivered, seconds):")
        for spark, s in summaries.items():
            if s:
                print(f"  {spark:8s} n={s['n']}  median {s['median']:.1f}  p95 {s['p95']:.1f}  max {s['max']:.1f}  "
                      f"(close -> ewma stored, median {s['close_to_ewma_median']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
