"""A live minute run and a backfill launched together both succeed, without duplicates or lost alerts.

Two real OS processes share one DAGSTER_HOME (the ``dagster.yaml`` the CLI writes) and one data
dir, as a live deployment's schedule run and an operator's backfill do:

- process A backfills 2025-08-13 00:00-02:59 of the bundled sample as ONE run;
- process B runs the live minute 2025-08-13-02:19, inside A's range, so both rewrite the same
  hour file of the lake and the same DuckDB tables.

Both are launched at once; the live process starts its run as soon as the backfill's run is
executing (the backfill first spends tens of seconds recording its 180 planned partitions), so
their steps overlap: both write the lake's 02:00 hour file and the DuckDB tables. Afterwards the lake
and every table must hold each row once, and one alert tick (the CLI's ``deliver_alerts``, in a
third process, posting to a loopback Slack webhook) must deliver every medium+ item exactly once
even though the sensor sees the minute twice (B's single alerts and A's digest).

Both runs aggregate on the suite's one Spark Connect server (``SPARK_REMOTE``), as a live
deployment does, so neither process starts a JVM of its own. The whole
module runs twice: on the SQLite instance and on Dagster-on-PostgreSQL (``BTC_DAGSTER_PG_URL``, a
real server the session starts), where neither process may log a lock failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from btc_anomaly_assets.common.lake import raw_path, read_raw_window
from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_assets.instance.dagster_yaml import dagster_yaml
from btc_anomaly_assets_tests.cli_runs import REPO, SAMPLE_END, SAMPLE_MINUTES, SAMPLE_ROWS, SAMPLE_START
from btc_anomaly_testing.fakes.slack_server import FakeSlack

pytestmark = pytest.mark.usefixtures("connect_server_launch")  # boots while the instance is prepared

BACKFILL_TAGS = {"dagster/asset_partition_range_start": "2025-08-13-00:00",
                 "dagster/asset_partition_range_end": "2025-08-13-02:59", "btc/test": "backfill"}
LIVE_TAGS = {"dagster/partition": "2025-08-13-02:19", "btc/trigger": "live", "btc/test": "live"}
START_LINE_TIMEOUT_SECONDS = 300
PROCESS_TIMEOUT_SECONDS = 600
FLAGGED = ("medium", "high")

# One pipeline run, as a schedule or backfill launches it: the project's own definitions and
# resources (from the environment), the persistent instance in DAGSTER_HOME. With a second
# argument it first waits until the run tagged btc/test=<that> is executing, so the two runs'
# steps overlap (the backfill spends its first tens of seconds planning 180 partitions).
RUN_PIPELINE = textwrap.dedent("""
    import json, os, sys, time
    import dagster as dg
    from btc_anomaly_assets.definitions import defs, pipeline_job

    tags, wait_for = json.loads(sys.argv[1]), sys.argv[2]
    job = defs.resolve_job_def(pipeline_job.name)
    instance = dg.DagsterInstance.get()
    deadline = time.monotonic() + float(os.environ["START_LINE_TIMEOUT"])
    while wait_for and not instance.get_runs(dg.RunsFilter(tags={"btc/test": wait_for}, statuses=[dg.DagsterRunStatus.STARTED])):
        if time.monotonic() > deadline:
            sys.exit(f"the {wait_for} run never started executing")
        time.sleep(0.1)
    result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    failed = [e.step_key for e in result.all_events if e.is_step_failure]
    print(f"run {result.run_id} success={result.success} failed_steps={failed}", flush=True)
    sys.exit(0 if result.success else 1)
""")

# One tick of the alert sensor and its alert runs, exactly as ``btc-anomaly demo`` does it.
ALERT_TICK = textwrap.dedent("""
    import dagster as dg
    from btc_anomaly_assets.cli.main import deliver_alerts
    from btc_anomaly_assets.definitions import defs
    deliver_alerts(defs, dg.DagsterInstance.get())
""")


def _prepare_dagster_home(home: Path, postgres: bool = False) -> None:
    """The CLI's dagster.yaml, and the instance's SQLite storage created once, up front.

    Two processes creating a fresh SQLite instance at the same moment can both stamp its
    alembic version ("Version table 'alembic_version' has more than one head present",
    dagster-io/dagster#27390); a deployment's DAGSTER_HOME exists before runs are launched.
    """
    import dagster as dg

    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(dagster_yaml(home, postgres=postgres))
    with dg.DagsterInstance.from_config(str(home)):
        pass


def _environment(tmp_path: Path, spark_remote: str, pg_url: str | None = None, **extra: str) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    if pg_url:
        os.environ["BTC_DAGSTER_PG_URL"] = pg_url  # the yaml names the variable; this process reads the instance too
    _prepare_dagster_home(home, postgres=bool(pg_url))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BTC_", "SLACK_", "SPARK_", "BLOCKCHAIR_", "ANTHROPIC_"))}
    if pg_url:
        env["BTC_DAGSTER_PG_URL"] = pg_url
    env.update(
        DAGSTER_HOME=str(home),
        BTC_DATA_DIR=str(tmp_path / "data"),
        BTC_SOURCE="sample",
        SPARK_REMOTE=spark_remote,
        START_LINE_TIMEOUT=str(START_LINE_TIMEOUT_SECONDS),
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        **extra,
    )
    return env


def _start(code: str, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as stream:
        return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env, stdout=stream,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _finish(process: subprocess.Popen, log: Path, what: str) -> None:
    try:
        code = process.wait(timeout=PROCESS_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
        code = "timeout"
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
        pytest.fail(f"{what} exited with {code}; last lines of {log}:\n{tail}")


def _step_timeline(home: str) -> str:
    """Each run's step intervals (seconds after the first step start): how much the two runs overlapped."""
    import dagster as dg

    rows = []
    with dg.DagsterInstance.from_config(home) as instance:
        for run in instance.get_runs(dg.RunsFilter(job_name="btc_pipeline")):
            started = {}
            for entry in instance.all_logs(run.run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS,
                                                                 dg.DagsterEventType.STEP_FAILURE}):
                if entry.dagster_event.event_type == dg.DagsterEventType.STEP_START:
                    started[entry.step_key] = entry.timestamp
                else:
                    rows.append((started.get(entry.step_key, entry.timestamp), entry.timestamp, run.tags.get("btc/test"),
                                 entry.step_key))
    if not rows:
        return "  (no steps recorded)"
    first = min(r[0] for r in rows)
    return "\n".join(f"  {who:9s} {step:32s} {s - first:6.1f} .. {e - first:6.1f} s" for s, e, who, step in sorted(rows))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def concurrent_runs(request, tmp_path_factory, connect_server):
    tmp_path = tmp_path_factory.mktemp(f"concurrency_{request.param}")
    logs = {name: tmp_path / f"{name}.log" for name in ("backfill", "live", "alerts")}
    pg_url = request.getfixturevalue("postgres_server").new_database("concurrency") if request.param == "postgres" else None
    previous_url = os.environ.get("BTC_DAGSTER_PG_URL")
    # Every process posts to the same loopback Slack: the live minute sends its EWMA alerts from
    # inside its run (BTC_ALERT_IN_RUN), the alert tick sends the rest.
    with FakeSlack() as slack:
        env = _environment(tmp_path, connect_server.remote, pg_url=pg_url, SLACK_WEBHOOK_URL=slack.webhook_url)
        began = time.monotonic()
        backfill = _start(RUN_PIPELINE, [json.dumps(BACKFILL_TAGS), ""], env, logs["backfill"])
        live = _start(RUN_PIPELINE, [json.dumps(LIVE_TAGS), "backfill"], env, logs["live"])
        try:
            _finish(backfill, logs["backfill"], "the backfill process (A)")
            _finish(live, logs["live"], "the live-minute process (B)")
        finally:
            for process in (backfill, live):
                if process.poll() is None:
                    os.killpg(process.pid, 9)
                    process.wait()
        runs_done = time.monotonic() - began
        print(f"\nbackfill + live minute finished in {runs_done:.0f} s; step timeline:\n{_step_timeline(env['DAGSTER_HOME'])}")
        _finish(_start(ALERT_TICK, [], env, logs["alerts"]), logs["alerts"], "the alert-tick process")
        received = list(slack.received)
    data_dir = Path(env["BTC_DATA_DIR"])
    yield {"wh": Warehouse(str(data_dir / "warehouse.duckdb")), "lake": raw_path(str(data_dir / "lake")),
           "slack": received, "logs": {name: log.read_text(errors="replace") for name, log in logs.items()},
           "storage": request.param}
    if previous_url is None:
        os.environ.pop("BTC_DAGSTER_PG_URL", None)
    else:
        os.environ["BTC_DAGSTER_PG_URL"] = previous_url


def test_no_process_hit_a_storage_lock_failure(concurrent_runs):
    for name, text in concurrent_runs["logs"].items():
        assert "database is locked" not in text and "deadlock detected" not in text, (concurrent_runs["storage"], name)


def test_the_lake_holds_every_sample_transaction_once(concurrent_runs):
    raw = read_raw_window(concurrent_runs["lake"], SAMPLE_START, SAMPLE_END)
    assert len(raw) == SAMPLE_ROWS
    assert raw["hash"].is_unique


def test_minute_aggregates_have_one_row_per_minute(concurrent_runs):
    counts = concurrent_runs["wh"].query(
        "SELECT count(*) AS n, count(DISTINCT minute) AS minutes, sum(tx_count) AS tx FROM btc.minute_aggregates")
    assert counts["n"].iloc[0] == SAMPLE_MINUTES and counts["minutes"].iloc[0] == SAMPLE_MINUTES
    assert counts["tx"].iloc[0] == SAMPLE_ROWS


def test_ewma_anomalies_have_one_row_per_minute_and_metric(concurrent_runs):
    wh = concurrent_runs["wh"]
    per_key = wh.query("SELECT minute, metric, count(*) AS n FROM btc.ewma_anomalies GROUP BY minute, metric")
    metrics = per_key["metric"].nunique()
    assert metrics >= 1 and per_key["minute"].nunique() == SAMPLE_MINUTES
    assert len(per_key) == SAMPLE_MINUTES * metrics
    assert (per_key["n"] == 1).all(), per_key[per_key["n"] > 1].head()


@pytest.mark.parametrize("table, id_column", [
    ("ewma_anomalies", "anomaly_id"),
    ("coordinated_clusters", "cluster_id"),
    ("incidents", "incident_id"),
    ("anomaly_explanations", "anomaly_id"),
    ("forecast_excursions", "anomaly_id"),
])
def test_no_item_is_stored_twice(concurrent_runs, table, id_column):
    duplicated = concurrent_runs["wh"].query(
        f"SELECT {id_column} AS id, count(*) AS n FROM btc.{table} GROUP BY 1 HAVING count(*) > 1")
    assert duplicated.empty, duplicated.head()


def _flagged_items(wh: Warehouse) -> set[str]:
    severities = list(FLAGGED)
    flagged = wh.query(  # alerts are per incident: EWMA rows, clusters and excursions are its evidence
        "SELECT incident_id AS id FROM btc.incidents WHERE severity IN (SELECT unnest(?))", [severities])
    return set(flagged["id"])


def test_every_flagged_item_is_alerted_exactly_once(concurrent_runs):
    wh = concurrent_runs["wh"]
    flagged = _flagged_items(wh)
    assert flagged, "the sample holds medium+ anomalies (the 00:18 and 02:19 whales); none were flagged"
    # First messages (a follow-up about an incident already alerted is its own, once-only message)
    sent = wh.query("SELECT alert_id, item_ids FROM btc.alerts WHERE status = 'sent' AND kind IN ('single', 'digest')")
    times_sent = Counter(item for items in sent["item_ids"] for item in items)
    assert set(times_sent) == flagged, {"never alerted": flagged - set(times_sent), "not flagged": set(times_sent) - flagged}
    assert all(n == 1 for n in times_sent.values()), {i: n for i, n in times_sent.items() if n > 1}


def test_every_sent_alert_reached_slack_once(concurrent_runs):
    wh = concurrent_runs["wh"]
    statuses = wh.query("SELECT status, count(*) AS n FROM btc.alerts GROUP BY status")
    by_status = dict(zip(statuses["status"], statuses["n"]))
    assert "failed" not in by_status, by_status
    assert len(concurrent_runs["slack"]) == by_status.get("sent", 0) >= 1


def test_the_live_minute_sent_its_own_incident_alert_from_inside_its_run(concurrent_runs):
    wh = concurrent_runs["wh"]
    singles = wh.query(
        "SELECT a.alert_id, i.minute FROM btc.alerts a JOIN btc.incidents i ON i.incident_id = a.item_ids[1] "
        "WHERE a.kind = 'single' AND a.status = 'sent'")
    assert len(singles) >= 1 and {str(m) for m in singles["minute"]} == {"2025-08-13 02:19:00"}
