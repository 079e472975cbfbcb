"""Crash recovery: a `btc-anomaly demo` killed with SIGKILL mid-step, then run again, completes.

The killed run stays STARTED and keeps its ``duckdb`` pool slot (that wedged the next run for 27
minutes in issue 18). The second ``btc-anomaly demo`` must say it failed that run and freed the
slot, finish within 5 minutes, and leave every row once and every alert delivered exactly once.
Both demos aggregate on the suite's Spark Connect server (no JVM start per run).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import dagster as dg
import pytest

from btc_anomaly_assets.instance import recovery
from btc_anomaly_assets.instance.dagster_yaml import dagster_yaml
from btc_anomaly_assets_tests.cli_runs import check_exactly_once, cli_environment, run_cli, start_cli, tail

RERUN_TIMEOUT_SECONDS = 300
KILL_WAIT_SECONDS = 300


def test_own_process_is_alive_and_a_finished_one_is_not():
    me = recovery.Launcher.parse(recovery.launch_tags()[recovery.LAUNCHER_TAG])
    assert me.pid == os.getpid() and me.alive() is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert recovery.Launcher(socket.gethostname(), child.pid, "1").alive() is False


def test_a_reused_pid_or_another_host_is_not_taken_for_the_launcher():
    me = recovery.Launcher.parse(recovery.launch_tags()[recovery.LAUNCHER_TAG])
    assert recovery.Launcher(me.host, me.pid, str(int(me.start_ticks) + 1)).alive() is False  # same pid, other process
    assert recovery.Launcher("some-other-host", me.pid, me.start_ticks).alive() is None
    assert recovery.Launcher.parse("garbage") is None and recovery.Launcher.parse(None) is None


def _claimed_duckdb_slots(home: str) -> list:
    with dg.DagsterInstance.from_config(home) as instance:
        return list(instance.event_log_storage.get_concurrency_info("duckdb").claimed_slots)


pytestmark = pytest.mark.usefixtures("connect_server_launch")


@pytest.fixture(scope="module")
def killed_then_rerun(tmp_path_factory, connect_server):
    tmp_path = tmp_path_factory.mktemp("recovery")
    env = cli_environment(tmp_path, spark_remote=connect_server.remote)  # recovery is the instance's; Spark is shared
    home = env["DAGSTER_HOME"]
    os.makedirs(home)
    with open(os.path.join(home, "dagster.yaml"), "w") as f:  # what the CLI writes; created up front so this
        f.write(dagster_yaml(home, postgres=False))            # process can watch the instance from the start
    with dg.DagsterInstance.from_config(home):
        pass
    first = start_cli(["demo"], env, tmp_path / "first.log")
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    held = []
    try:
        while not held:
            if first.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the first demo never held a duckdb slot (exit {first.poll()}):\n"
                            f"{tail((tmp_path / 'first.log').read_text(errors='replace'))}")
            time.sleep(0.5)
            held = _claimed_duckdb_slots(home)
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    with dg.DagsterInstance.from_config(home) as instance:
        killed_run = instance.get_run_by_id(held[0].run_id)
    still_held = _claimed_duckdb_slots(home)
    began = time.monotonic()
    code, output = run_cli(["demo"], env, tmp_path / "second.log", timeout=RERUN_TIMEOUT_SECONDS)
    elapsed = time.monotonic() - began
    with dg.DagsterInstance.from_config(home) as instance:
        after = instance.get_run_by_id(killed_run.run_id)
    print(f"\nkilled during step {held[0].step_key}; re-run took {elapsed:.0f} s:\n{tail(output, 12)}")
    return {"killed_run": killed_run, "held_step": held[0].step_key, "still_held": still_held, "code": code,
            "output": output, "elapsed": elapsed, "after": after, "data_dir": tmp_path / "data", "home": home}


def test_the_kill_left_the_run_started_and_its_slot_claimed(killed_then_rerun):
    assert killed_then_rerun["killed_run"].status == dg.DagsterRunStatus.STARTED
    assert [s.run_id for s in killed_then_rerun["still_held"]] == [killed_then_rerun["killed_run"].run_id]


def test_the_rerun_reports_the_recovery_in_one_line_and_finishes_in_time(killed_then_rerun):
    r = killed_then_rerun
    assert r["code"] == 0, tail(r["output"])
    assert r["elapsed"] < RERUN_TIMEOUT_SECONDS
    lines = [line for line in r["output"].splitlines() if line.startswith("recovered:")]
    assert len(lines) == 1, r["output"]
    assert r["killed_run"].run_id[:8] in lines[0] and "freed 1 duckdb pool slot" in lines[0]


def test_the_dead_run_is_failed_and_no_slot_stays_claimed(killed_then_rerun):
    assert killed_then_rerun["after"].status == dg.DagsterRunStatus.FAILURE
    assert _claimed_duckdb_slots(killed_then_rerun["home"]) == []


def test_nothing_lost_nothing_duplicated_every_alert_once(killed_then_rerun):
    counts = check_exactly_once(killed_then_rerun["data_dir"])
    assert counts["raw"] == 54_877


def test_a_step_waiting_for_a_pool_slot_says_what_holds_it(tmp_path, monkeypatch):
    """A slot held by another (here: a crashed) run; our step waits, and the watcher names the holder."""
    import threading

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setattr(recovery, "WAIT_POLL_SECONDS", 0.2)
    (tmp_path / "dagster.yaml").write_text(dagster_yaml(tmp_path, postgres=False))

    @dg.op(pool="duckdb")
    def write_duckdb() -> None:
        pass

    @dg.job
    def waits() -> None:
        write_duckdb()

    lines: list[str] = []
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default("duckdb")
        storage.claim_concurrency_slot("duckdb", "deadbeef-0000-run", "btc__minute_aggregates")
        results = []
        with recovery.report_pool_waits(print_fn=lines.append):
            worker = threading.Thread(target=lambda: results.append(
                waits.execute_in_process(instance=instance, tags=recovery.launch_tags())))
            worker.start()
            deadline = time.monotonic() + 60
            while not lines and time.monotonic() < deadline:
                time.sleep(0.1)
            storage.free_concurrency_slots_for_run("deadbeef-0000-run")  # the holder goes away: our step proceeds
            worker.join(timeout=120)
        assert results and results[0].success
    assert lines, "no line while the step waited for the duckdb slot"
    assert "step write_duckdb" in lines[0] and "waits for a slot in the duckdb pool (limit 1)" in lines[0]
    assert "held by run deadbeef step btc__minute_aggregates" in lines[0]
