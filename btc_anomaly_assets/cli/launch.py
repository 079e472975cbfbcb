"""Launch ``btc-anomaly demo`` / ``backfill`` as a Dagster backfill that runs as one run.

The backfill is requested the way the UI's "Materialize…" dialog requests one: the webserver's
GraphQL mutation ``launchPartitionBackfill`` (public API, no private Dagster module). Dagster's
daemon then turns it into its single run (``BackfillPolicy.single_run()`` on every asset), launches
that run, and marks the backfill completed or failed, so Runs → Backfills lists it with its range
and status exactly like a UI-launched one.

Where the webserver and daemon come from:

- a UI already serving this ``DAGSTER_HOME`` at ``BTC_DAGSTER_UI_URL`` (e.g. the ``dagster dev``
  the demo's last line prints) is used as it is: the run then uses *that* code location's settings;
- otherwise a private ``dagster dev`` on a free loopback port is started for the backfill and
  stopped afterwards (its alert sensor delivers the alerts before it stops).

The price of the public path: the daemon checks backfills every 30 s (fixed in Dagster), so a
backfill waits up to ~30 s for its run and up to ~30 s more to be marked done, plus the start of
``dagster dev`` when none is running. ``execute_in_process`` avoided both but left no backfill.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from btc_anomaly_assets.common import settings

LOCATION = "btc_anomaly_assets"  # as in workspace.yaml and [tool.dagster]
REPOSITORY = "__repository__"  # Dagster's name for the repository of a Definitions object
ALERT_SENSOR, ALERT_JOB = "anomaly_alert_sensor", "send_anomaly_alert"
SERVER_START_SECONDS = 180
BACKFILL_SECONDS = 3600
ALERT_WAIT_SECONDS = 90
TERMINAL_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}

# Block-time data makes the forecast's quality check warn by design; the demo says why.
EXPECTED_WARNINGS = {
    "previous_forecast_quality": (
        "expected on block-time data: the forecast series is the trailing 60-minute rate, which steps "
        "up or down whenever a block (thousands of transactions) enters or leaves the hour, and blocks "
        "arrive at random (about every 10 min); a 30-minute forecast's interval cannot follow those "
        "steps. First-seen (mempool) data gives a smooth series and this check its intended meaning."
    ),
}

WORKSPACE_YAML = f"""# Written by btc-anomaly for the dagster dev it starts to run a backfill (same as workspace.yaml).
load_from:
  - python_module:
      module_name: btc_anomaly_assets.definitions
      location_name: {LOCATION}
"""

LAUNCH_MUTATION = """mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message }
  } }"""

BACKFILL_QUERY = """query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status error { message } runs(limit: 10) { runId status startTime endTime } }
    ... on PythonError { message } } }"""

SENSOR_TICKS_QUERY = """query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 1) { timestamp status } } } } }"""

ACTIVE_ALERT_RUNS_QUERY = """query ActiveAlerts($job: String!) {
  runsOrError(filter: {pipelineName: $job, statuses: [QUEUED, NOT_STARTED, STARTING, STARTED]}) {
    ... on Runs { results { runId } } } }"""


class LaunchError(RuntimeError):
    """The backfill could not be requested or followed (the message says where and why)."""


@dataclass
class Outcome:
    backfill_id: str
    status: str
    run_id: str | None
    run_status: str | None
    ui_url: str
    elapsed: float
    notes: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.run_status == "SUCCESS" and self.status in {"COMPLETED", "COMPLETED_SUCCESS"}


def graphql(base: str, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{base}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        answer = json.load(reply)
    if answer.get("errors"):
        raise LaunchError(f"GraphQL error from {base}: {answer['errors'][0].get('message')}")
    return answer["data"]


def serves_instance(base: str, home: Path) -> bool:
    """Whether the webserver at ``base`` answers and uses this DAGSTER_HOME (its instance info names it)."""
    try:
        info = graphql(base, "{ instance { info } }", timeout=5)["instance"]["info"] or ""
    except (urllib.error.URLError, OSError, LaunchError, ValueError, KeyError):
        return False
    # The instance's home is its local artifact storage's base_dir (the other storages live below it).
    artifacts = info.split("local_artifact_storage:", 1)
    found = re.search(r"base_dir:\s*(\S+)", artifacts[1]) if len(artifacts) == 2 else None
    return bool(found) and Path(found.group(1)).resolve() == Path(home).resolve()


def location_loaded(base: str) -> bool:
    data = graphql(base, "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                         "locationOrLoadError { __typename ... on PythonError { message } } } } } }", timeout=10)
    entries = data["workspaceOrError"]["locationEntries"]
    mine = [e for e in entries if e["name"] == LOCATION]
    if mine and mine[0]["loadStatus"] == "LOADED":
        error = mine[0]["locationOrLoadError"]
        if error and error["__typename"] == "PythonError":
            raise LaunchError(f"code location {LOCATION} failed to load: {error['message']}")
        return True
    return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class OwnedServer:
    process: subprocess.Popen
    base: str
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def start_dagster_dev(home: Path) -> OwnedServer:
    """``dagster dev`` (webserver + daemon) on a free loopback port over this instance, until loaded."""
    workspace = home / "btc_anomaly_workspace.yaml"
    workspace.write_text(WORKSPACE_YAML)
    port = _free_port()
    log_path = home / "btc_anomaly_dagster_dev.log"
    with open(log_path, "w") as log:  # a file, not a pipe: an unread pipe would stall the server
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
            env={**os.environ, "DAGSTER_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = OwnedServer(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(f"dagster dev exited with {process.returncode} (log: {log_path}):\n{server.log_tail()}")
        try:
            if location_loaded(server.base):
                return server
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.5)
    stop_dagster_dev(server)
    raise LaunchError(f"dagster dev did not load {LOCATION} within {SERVER_START_SECONDS} s (log: {log_path})")


def stop_dagster_dev(server: OwnedServer) -> None:
    """SIGTERM to the whole process group (webserver, daemon, code server), then SIGKILL if needed."""
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.process.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def backfill_params(start_key: str, last_key: str, title: str, description: str) -> dict:
    """Every asset of the graph over [start_key, last_key] (inclusive keys), as the UI would send it."""
    from btc_anomaly_assets.definitions import ALL_ASSETS

    return {
        "partitionsByAssets": [
            {"assetKey": {"path": list(asset.key.path)}, "partitions": {"range": {"start": start_key, "end": last_key}}}
            for asset in ALL_ASSETS
        ],
        "title": title,
        "description": description,
        "tags": [{"key": "btc/launched_by", "value": "btc-anomaly"}],
    }


def request_backfill(base: str, params: dict) -> str:
    result = graphql(base, LAUNCH_MUTATION, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise LaunchError(f"the backfill was refused ({result['__typename']}): {result.get('message', '')}")
    return result["backfillId"]


def follow_backfill(base: str, backfill_id: str, say) -> dict:
    """Poll the backfill until Dagster marks it finished; reports its run as it appears and ends."""
    deadline = time.monotonic() + BACKFILL_SECONDS
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        state = graphql(base, BACKFILL_QUERY, {"id": backfill_id})["partitionBackfillOrError"]
        if state["__typename"] != "PartitionBackfill":
            raise LaunchError(f"backfill {backfill_id}: {state.get('message', state['__typename'])}")
        for run in state["runs"]:
            if seen.get(run["runId"]) != run["status"] and (run["status"] in TERMINAL_RUN or run["runId"] not in seen):
                say(f"  run {run['runId']}: {run['status'].lower()}")
            seen[run["runId"]] = run["status"]
        if state["status"] in TERMINAL_BACKFILL:
            return state
        time.sleep(1)
    raise LaunchError(f"backfill {backfill_id} did not finish within {BACKFILL_SECONDS} s; see {base}/runs/b/{backfill_id}")


def wait_for_alerts(base: str, after: float) -> str | None:
    """Until the alert sensor has ticked after the run ended and the alert runs it asked for are done.

    Returns a note when that did not happen in time (e.g. the sensor is stopped in the UI).
    """
    selector = {"repositoryName": REPOSITORY, "repositoryLocationName": LOCATION, "sensorName": ALERT_SENSOR}
    deadline = time.monotonic() + ALERT_WAIT_SECONDS
    while time.monotonic() < deadline:
        sensor = graphql(base, SENSOR_TICKS_QUERY, {"selector": selector})["sensorOrError"]
        if sensor["__typename"] != "Sensor":
            return f"alerts: no {ALERT_SENSOR} in the code location"
        state = sensor["sensorState"]
        if state["status"] != "RUNNING":
            return f"alerts: {ALERT_SENSOR} is {state['status'].lower()} in the UI; start it to deliver this run's alerts"
        ticks = state["ticks"]
        ticked = ticks and ticks[0]["timestamp"] > after and ticks[0]["status"] != "STARTED"
        if ticked:
            active = graphql(base, ACTIVE_ALERT_RUNS_QUERY, {"job": ALERT_JOB})["runsOrError"].get("results", [])
            if not active:
                return None
        time.sleep(1)
    return f"alerts: still pending after {ALERT_WAIT_SECONDS} s; the alert sensor delivers them on a later tick"


def check_notes(run_id: str, instance=None) -> list[str]:
    """Each check of the run that did not pass, with its description, and why when the warning is expected."""
    import dagster as dg

    notes = []
    for record in (instance or dg.DagsterInstance.get()).all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = record.dagster_event.event_specific_data
        if evaluation.passed:
            continue
        level = "warning" if evaluation.severity == dg.AssetCheckSeverity.WARN else "FAILED"
        line = f"check {evaluation.asset_key.to_user_string()} {evaluation.check_name} {level}: {evaluation.description or ''}"
        notes.append(line.rstrip(": "))
        if evaluation.check_name in EXPECTED_WARNINGS and level == "warning":
            notes.append(f"  ({EXPECTED_WARNINGS[evaluation.check_name]})")
    return notes


def failure_notes(run_id: str, instance=None) -> list[str]:
    """The first line of each failed step's error, from the run's own events."""
    import dagster as dg

    notes = []
    for record in (instance or dg.DagsterInstance.get()).all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        error = record.dagster_event.step_failure_data.error
        while error is not None and error.cause is not None:  # Dagster wraps the asset's own error
            error = error.cause
        message = (error.message if error else record.message or "").strip().splitlines()
        notes.append(f"step {record.step_key} failed: {message[0] if message else '(no message)'}")
    return notes


def launch_range(start_key: str, last_key: str, title: str, say=print) -> Outcome:
    """Request the backfill of every asset over [start_key, last_key], wait for it, return its outcome."""
    home = Path(os.environ["DAGSTER_HOME"]).resolve()
    began = time.monotonic()
    configured = (settings.env_value("BTC_DAGSTER_UI_URL") or "").rstrip("/")
    owned = None
    if configured and serves_instance(configured, home):
        base = configured
        say(f"Using the Dagster UI at {base} (it serves this DAGSTER_HOME; the run uses its code location's settings)")
        if not location_loaded(base):
            raise LaunchError(f"the UI at {base} has not loaded code location {LOCATION}")
    else:
        say("Starting dagster dev (webserver + daemon) for the backfill; it stops when the backfill is done")
        owned = start_dagster_dev(home)
        base = owned.base
    try:
        backfill_id = request_backfill(base, backfill_params(
            start_key, last_key, title, f"Every btc/* asset over [{start_key}, {last_key}] as one run"))
        say(f"Backfill {backfill_id} requested (Runs → Backfills); Dagster's daemon launches its single run")
        state = follow_backfill(base, backfill_id, say)
        run = state["runs"][0] if state["runs"] else None
        outcome = Outcome(backfill_id, state["status"], run and run["runId"], run and run["status"], base,
                          time.monotonic() - began)
        if state.get("error"):
            outcome.notes.append(f"backfill error: {state['error']['message'].strip().splitlines()[0]}")
        if run and run["status"] == "SUCCESS":
            note = wait_for_alerts(base, float(run["endTime"] or 0))
            outcome.notes += [note] if note else []
        if run:
            outcome.notes += failure_notes(run["runId"]) + check_notes(run["runId"])
        return outcome
    except LaunchError as exc:
        if owned:
            raise LaunchError(f"{exc}\n(dagster dev log: {owned.log_path})") from None
        raise
    finally:
        if owned:
            stop_dagster_dev(owned)


def ui_command(home: Path) -> str:
    """The command that opens the UI on the same instance, data and partitions."""
    partitions = "".join(f"{name}={os.environ[name]} " for name in ("BTC_PARTITIONS_START", "BTC_PARTITIONS_END")
                         if name in os.environ)
    return f"{partitions}BTC_DATA_DIR={settings.data_dir()} DAGSTER_HOME={home} dagster dev -w workspace.yaml"
