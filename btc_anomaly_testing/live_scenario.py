"""One live session on loopback, start to finish, and what the instance and the fakes recorded.

``run_live_session`` starts the fake mempool.space (replayed in real time) and a timed fake Slack,
prefills ``history_minutes`` of landing-zone minutes and backfills them (the detector and the
forecast need the history a deployment in steady state has), starts ``btc-anomaly collect`` and
``dagster dev`` with ``BTC_LIVE=on``, lets ``minutes`` measured minutes pass (a whale in every
``whale_every``-th), waits for their runs and alerts, stops every process it started and returns
a ``LiveSession`` with the runs, the Slack arrivals and the push/landing times.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from btc_anomaly_assets.common.utc import utc_now
from btc_anomaly_assets.instance.dagster_yaml import dagster_yaml
from btc_anomaly_testing.fakes.mempool_space_server import FakeMempoolSpace
from btc_anomaly_testing.live_harness import (
    KEY_FORMAT,
    LandingWatcher,
    RealtimeReplay,
    TimedSlack,
    free_port,
    minute_floor,
    prefill_landing,
    process_environment,
    run_history_backfill,
    start_collector,
    start_dagster_dev,
    stop_everything,
    wait_for_webserver,
)

PIPELINE_JOB, ALERT_JOB = "btc_pipeline", "send_anomaly_alert"
DRAIN_SECONDS = 240  # after the last measured minute: time for its run and alerts to finish


@dataclass
class RunTimes:
    run_id: str
    status: str
    created: float
    events: dict[str, float] = field(default_factory=dict)
    materialized: dict[str, float] = field(default_factory=dict)  # asset path -> first materialization time

    @property
    def end(self) -> float | None:
        return self.events.get("RUN_SUCCESS") or self.events.get("RUN_FAILURE")


def read_run(instance, record) -> RunTimes:
    run = record.dagster_run
    times = RunTimes(run.run_id, run.status.value, record.create_timestamp.timestamp())
    for entry in instance.all_logs(run.run_id):
        event = entry.dagster_event
        if event is None:
            continue
        kind = event.event_type.name
        if kind.startswith("RUN_"):
            times.events.setdefault(kind, entry.timestamp)
        elif kind == "ASSET_MATERIALIZATION":
            times.materialized.setdefault("/".join(event.asset_key.path), entry.timestamp)
    return times


@dataclass
class LiveSession:
    measured: list[datetime]
    whales: dict[datetime, str]
    live_runs: dict[datetime, RunTimes | None]
    alert_arrivals: dict[datetime, list[float]]  # minute -> Slack arrival times of its alerts
    first_alerts: dict[datetime, float]  # minute whose close brought an incident's first message -> its Slack arrival
    whale_alerts: dict[datetime, list[int]]  # whale minute -> times each of its value alerts was posted
    pushed_at: dict[str, float]
    landed_at: dict[str, float]
    first_seen_minute: dict[str, datetime]
    slack_posts: int
    setup: dict
    workdir: Path
    collector_log: str = ""


def _wait_until(moment: datetime, *processes) -> None:
    while utc_now() < moment:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[2:4]} exited early ({process.returncode})")
        time.sleep(0.5)


def _drain(home: Path, measured: list[datetime], dev, drain_seconds: float) -> None:
    import dagster as dg

    deadline = time.monotonic() + drain_seconds
    keys = {m.strftime(KEY_FORMAT) for m in measured}
    active = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while time.monotonic() < deadline and dev.poll() is None:
            live = instance.get_runs(dg.RunsFilter(job_name=PIPELINE_JOB, tags={"btc/trigger": "live"}))
            done = {r.tags.get("dagster/partition") for r in live if r.is_finished}
            if keys <= done and not instance.get_runs(dg.RunsFilter(job_name=ALERT_JOB, statuses=active)):
                time.sleep(15)  # one more sensor tick for the last materializations
                if not instance.get_runs(dg.RunsFilter(job_name=ALERT_JOB, statuses=active)):
                    return
            time.sleep(3)


def _whale_posts(warehouse: Path, whale_minutes, arrivals) -> dict[datetime, list[int]]:
    """Per whale minute: for each alert covering that minute's incident, how many times it was posted to
    Slack (1 = delivered once; alerts are per incident)."""
    from btc_anomaly_assets.common.warehouse import Warehouse

    wh = Warehouse(str(warehouse))
    alerts = wh.query("SELECT text, item_ids FROM btc.alerts WHERE status = 'sent'")
    minutes_of = incident_minutes(wh, "severity IN ('medium', 'high')")
    posts = {m: [] for m in whale_minutes}
    for text, item_ids in alerts.itertuples(index=False):
        for minute in {m for i in item_ids for m in minutes_of.get(i, ())} & set(posts):
            posts[minute].append(sum(1 for _, posted in arrivals if posted == text))
    return posts


def incident_minutes(wh, where: str = "TRUE") -> dict[str, list[datetime]]:
    """Incident id -> every minute it covers (an incident spans adjacent minutes of one phenomenon: a
    whale one minute after a smaller transfer extends that incident rather than opening its own)."""
    import pandas as pd

    rows = wh.query(f"SELECT incident_id, minute, end_minute FROM btc.incidents WHERE {where}")
    return {i: list(pd.date_range(start, end, freq="min").to_pydatetime())
            for i, start, end in rows.itertuples(index=False)}


def _read_results(home: Path, warehouse: Path, measured: list[datetime], arrivals) -> tuple[dict, dict, dict]:
    import dagster as dg

    from btc_anomaly_assets.common.warehouse import Warehouse

    wh = Warehouse(str(warehouse))
    alerts = wh.query("SELECT text, item_ids, kind FROM btc.alerts WHERE status = 'sent'")
    minutes_of = incident_minutes(wh)  # alerts are per incident
    first_arrival: dict[str, float] = {}
    for arrived, text in arrivals:
        first_arrival.setdefault(text, arrived)
    by_minute: dict[datetime, list[float]] = {}
    first_alerts: dict[datetime, float] = {}
    for text, item_ids, kind in alerts.itertuples(index=False):
        if text not in first_arrival:
            continue
        for minute in {m for i in item_ids for m in minutes_of.get(i, ())}:
            by_minute.setdefault(minute, []).append(first_arrival[text])
        if kind in ("single", "digest"):  # an incident's first message, keyed by the minute whose close brought it
            arrived = first_arrival[text]
            for i in item_ids:
                closed = [m for m in minutes_of.get(i, ()) if utc_timestamp(m + timedelta(minutes=1)) <= arrived]
                if closed:
                    first_alerts[closed[-1]] = min(first_alerts.get(closed[-1], arrived), arrived)
    live: dict[datetime, RunTimes | None] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = {r.dagster_run.tags.get("dagster/partition"): r
                   for r in instance.get_run_records(dg.RunsFilter(job_name=PIPELINE_JOB, tags={"btc/trigger": "live"}))}
        for minute in measured:
            record = records.get(minute.strftime(KEY_FORMAT))
            live[minute] = read_run(instance, record) if record else None
    return live, by_minute, first_alerts


def run_live_session(workdir: Path, *, minutes: int, whale_every: int, history_minutes: int, spark: str = "connect",
                     drain_seconds: float = DRAIN_SECONDS, spark_remote: str | None = None) -> LiveSession:
    from btc_anomaly_assets.aggregates.spark_session import start_local_connect_server

    home, data = workdir / "dagster_home", workdir / "data"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(dagster_yaml(home))
    lake = str(data / "lake")
    now = utc_now()
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    history_start = max(day_start, minute_floor(now) - timedelta(minutes=history_minutes))
    setup = {"spark": spark, "cpus": os.cpu_count(), "load average at start": os.getloadavg()}
    collector = dev = connect = None
    with FakeMempoolSpace() as fake, TimedSlack() as slack:
        replay = RealtimeReplay(fake)
        watcher = LandingWatcher(lake)
        env_extra = {"DAGSTER_HOME": str(home), "BTC_DATA_DIR": str(data), "BTC_SOURCE": "mempool-space",
                     "BTC_MEMPOOL_WS_URL": fake.ws_url, "BTC_MEMPOOL_API_URL": fake.api_url,
                     "SLACK_WEBHOOK_URL": slack.webhook_url, "BTC_LIVE": "on", "BTC_LOG_LEVEL": "WARNING",
                     "BTC_PARTITIONS_START": day_start.strftime(KEY_FORMAT), "BTC_PARTITIONS_END": "none"}
        try:
            if spark == "connect" and spark_remote:  # a Connect server the caller runs (the test suite's)
                env_extra["SPARK_REMOTE"] = spark_remote
                setup["connect server"] = spark_remote
            elif spark == "connect":
                began = time.monotonic()
                connect = start_local_connect_server(master="local[2]", driver_memory="1g",
                                                     conf={"spark.sql.shuffle.partitions": "4"})
                env_extra["SPARK_REMOTE"] = connect.remote
                setup["connect server start"] = f"{time.monotonic() - began:.1f} s"
            else:
                env_extra["SPARK_MASTER"] = "local[2]"
            env = process_environment(workdir, env_extra)
            history_end = minute_floor(utc_now())
            if history_end > history_start:
                rows = prefill_landing(replay, lake, history_start, history_end)
                seconds = run_history_backfill(env, history_start, history_end, workdir / "history_backfill.log")
                setup["history backfill"] = f"[{history_start:%H:%M}, {history_end:%H:%M}) {rows:,} rows in {seconds:.1f} s"
            replay.start()
            watcher.start()
            collector = start_collector(env, workdir / "collector.log")
            port = free_port()
            dev = start_dagster_dev(env, port, workdir / "dagster_dev.log")
            setup["dagster dev ready"] = f"{wait_for_webserver(port, dev, workdir / 'dagster_dev.log'):.1f} s"
            first = minute_floor(utc_now()) + timedelta(minutes=1)  # the first tick after start-up warms the code server
            measured = [first + timedelta(minutes=i) for i in range(minutes)]
            replay.whale_minutes.update(m for i, m in enumerate(measured, 1) if whale_every and i % whale_every == 0)
            setup["measured minutes"] = (f"{measured[0]:%H:%M} .. {measured[-1]:%H:%M} UTC; whale in "
                                         + ", ".join(f"{m:%H:%M}" for m in sorted(replay.whale_minutes)))
            print(f"[live] measuring {minutes} minute(s) until {measured[-1] + timedelta(minutes=1):%H:%M} UTC "
                  f"(+ up to {drain_seconds:.0f} s to drain) ...", flush=True)
            _wait_until(measured[-1] + timedelta(minutes=1), dev, collector)
            _drain(home, measured, dev, drain_seconds)
        finally:
            replay.stop()
            watcher.stop()
            setup["processes killed after stopping"] = stop_everything(workdir, collector, dev)
            if connect is not None:
                connect.stop()
        setup["load average at end"] = os.getloadavg()
        arrivals = list(slack.arrivals)
    live, by_minute, first_alerts = _read_results(home, data / "warehouse.duckdb", measured, arrivals)
    whale_alerts = _whale_posts(data / "warehouse.duckdb", list(replay.whales), arrivals)
    from btc_anomaly_assets.live.landing import read_landing_window

    window = read_landing_window(lake, "mempool-space", measured[0], measured[-1] + timedelta(minutes=1), utc_now())
    first_seen_minute = {h: m.to_pydatetime() for h, m in zip(window.frame["hash"], window.frame["minute"])}
    return LiveSession(measured, dict(replay.whales), live, by_minute, first_alerts, whale_alerts, dict(replay.pushed_at),
                       dict(watcher.landed_at), first_seen_minute, len(arrivals), setup, workdir,
                       (workdir / "collector.log").read_text()[-3000:])


def utc_timestamp(moment: datetime) -> float:
    return moment.replace(tzinfo=timezone.utc).timestamp()
