"""Dagster on a real PostgreSQL server (started by the session, see conftest_postgres.py).

With ``BTC_DAGSTER_PG_URL`` set, ``btc-anomaly`` writes a dagster-postgres ``dagster.yaml`` and:
- the demo runs the whole graph, every row once and every alert once, runs recorded in Postgres;
- a backfill of a whole day is ONE run over its 1,440 minute partitions;
- the alert sensor's cursor lives in Postgres and carries across a ``dagster-daemon`` restart.
(The concurrency test, a live minute beside a backfill, runs on Postgres too: test_concurrency.py.)
The runs aggregate on the suite's Spark Connect server, as a production instance's runs share one
(the README's local-Spark demo path is the UI demo test's and the pipeline test's).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from btc_anomaly_assets.alerts.destinations import read_outbox
from btc_anomaly_assets.common.dagster_helpers import EWMA_ANOMALIES, INCIDENTS, RAW_TRANSACTIONS
from btc_anomaly_assets_tests.cli_runs import REPO, SAMPLE_ROWS, check_exactly_once, cli_environment, run_cli, tail

CLI_TIMEOUT_SECONDS = 900
DAEMON_TICK_TIMEOUT_SECONDS = 240
SENSOR = "anomaly_alert_sensor"


@contextmanager
def _instance(env: dict[str, str]) -> Iterator[dg.DagsterInstance]:
    """The instance a CLI process used; the yaml reads the URL from this process's environment meanwhile."""
    previous = os.environ.get("BTC_DAGSTER_PG_URL")
    os.environ["BTC_DAGSTER_PG_URL"] = env["BTC_DAGSTER_PG_URL"]
    try:
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            yield instance
    finally:
        if previous is None:
            os.environ.pop("BTC_DAGSTER_PG_URL", None)
        else:
            os.environ["BTC_DAGSTER_PG_URL"] = previous


pytestmark = pytest.mark.usefixtures("connect_server_launch")  # boots while Postgres starts


@pytest.fixture(scope="module")
def pg_demo(tmp_path_factory, postgres_server, connect_server):
    tmp_path = tmp_path_factory.mktemp("pg_demo")
    env = cli_environment(tmp_path, pg_url=postgres_server.new_database("demo"), spark_remote=connect_server.remote)
    began = time.monotonic()
    code, output = run_cli(["demo"], env, tmp_path / "demo.log", timeout=CLI_TIMEOUT_SECONDS)
    print(f"\nbtc-anomaly demo on PostgreSQL: exit {code} in {time.monotonic() - began:.1f} s")
    assert code == 0, tail(output)
    return {"env": env, "output": output, "tmp_path": tmp_path}


def test_demo_on_postgres_writes_the_postgres_yaml_without_the_secret(pg_demo):
    text = Path(pg_demo["env"]["DAGSTER_HOME"], "dagster.yaml").read_text()
    assert "env: BTC_DAGSTER_PG_URL" in text and pg_demo["env"]["BTC_DAGSTER_PG_URL"] not in text
    assert pg_demo["env"]["BTC_DAGSTER_PG_URL"] not in pg_demo["output"]
    assert not Path(pg_demo["env"]["DAGSTER_HOME"], "history", "runs.db").exists()  # nothing went to SQLite


def test_demo_on_postgres_holds_every_row_and_alert_once(pg_demo):
    counts = check_exactly_once(Path(pg_demo["env"]["BTC_DATA_DIR"]))
    assert counts["raw"] == SAMPLE_ROWS


def test_demo_runs_are_recorded_in_postgres(pg_demo):
    with _instance(pg_demo["env"]) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = instance.get_runs(dg.RunsFilter(job_name="btc_pipeline"))
        assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]
        assert len(instance.get_materialized_partitions(RAW_TRANSACTIONS)) == 180


def test_backfill_of_a_day_on_postgres_is_one_run(tmp_path, postgres_server, connect_server):
    env = cli_environment(tmp_path, pg_url=postgres_server.new_database("day"), spark_remote=connect_server.remote)
    began = time.monotonic()
    code, output = run_cli(["backfill", "2025-08-13-00:00", "2025-08-14-00:00"], env, tmp_path / "day.log",
                           timeout=CLI_TIMEOUT_SECONDS)
    print(f"\nbtc-anomaly backfill of 13 Aug on PostgreSQL: exit {code} in {time.monotonic() - began:.1f} s")
    assert code == 0, tail(output)
    with _instance(env) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="btc_pipeline"))
        assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
        for key in (RAW_TRANSACTIONS, EWMA_ANOMALIES):
            assert len(instance.get_materialized_partitions(key)) == 1440, key
    from btc_anomaly_assets.common.lake import raw_path, read_raw_window
    from btc_anomaly_assets_tests.cli_runs import SAMPLE_END, SAMPLE_START

    raw = read_raw_window(raw_path(str(tmp_path / "data" / "lake")), SAMPLE_START, SAMPLE_END)
    assert len(raw) == SAMPLE_ROWS and raw["hash"].is_unique


def _sensor_state(instance: dg.DagsterInstance):
    states = [s for s in instance.all_instigator_state() if s.name == SENSOR]
    return states[0] if states else None


def _wait_for_tick(env, after: float, process: subprocess.Popen, log: Path):
    """The first sensor tick that started after ``after`` (a timestamp), from the instance in Postgres."""
    deadline = time.monotonic() + DAEMON_TICK_TIMEOUT_SECONDS
    with _instance(env) as instance:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"dagster-daemon exited with {process.returncode}:\n{tail(log.read_text(errors='replace'))}")
            state = _sensor_state(instance)
            if state is not None:
                ticks = [t for t in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=20)
                         if t.timestamp > after and t.status.value in {"SUCCESS", "SKIPPED"}]
                if ticks:
                    return min(ticks, key=lambda t: t.timestamp)
            time.sleep(1)
    pytest.fail(f"no {SENSOR} tick within {DAEMON_TICK_TIMEOUT_SECONDS} s:\n{tail(log.read_text(errors='replace'))}")


def _start_daemon(env, log: Path) -> subprocess.Popen:
    with open(log, "wb") as stream:
        return subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(REPO / "workspace.yaml")],
                                cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_sensor_cursor_carries_across_a_daemon_restart(pg_demo):
    env, tmp_path = pg_demo["env"], pg_demo["tmp_path"]
    outbox = Path(env["BTC_DATA_DIR"]) / "alerts_outbox.jsonl"
    delivered_by_demo = len(read_outbox(outbox))
    first = _start_daemon(env, tmp_path / "daemon1.log")
    try:
        tick = _wait_for_tick(env, time.time(), first, tmp_path / "daemon1.log")
    finally:
        _stop(first)
    first_cursor = json.loads(tick.cursor)
    with _instance(env) as instance:
        persisted = json.loads(_sensor_state(instance).instigator_data.cursor)
        latest_incidents = instance.get_latest_materialization_event(INCIDENTS)
        assert persisted == first_cursor  # the cursor is in Postgres, not in the daemon's memory
        # While the daemon is down, a new materialization of an already-alerted minute arrives.
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=INCIDENTS, partition="2025-08-13-02:19"))
        newest = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=INCIDENTS), limit=1).records[0]
    assert newest.storage_id > 0 and latest_incidents is not None
    restarted_at = time.time()
    second = _start_daemon(env, tmp_path / "daemon2.log")
    try:
        tick = _wait_for_tick(env, restarted_at, second, tmp_path / "daemon2.log")
    finally:
        _stop(second)
    after_restart = json.loads(tick.cursor)
    print(f"\ncursor before restart: {first_cursor}\ncursor after restart:  {after_restart}")
    moved = {asset: sid for asset, sid in after_restart.items() if sid != first_cursor.get(asset)}
    assert moved == {"incidents": newest.storage_id}  # only the event that arrived while it was down was new
    assert not tick.run_ids  # the minute was alerted before: no second alert
    assert len(read_outbox(outbox)) == delivered_by_demo
