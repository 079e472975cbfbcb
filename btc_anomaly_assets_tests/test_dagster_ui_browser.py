"""The Dagster UI as the analyst's desk, end to end in a real headless Chromium.

The test starts ``dagster dev -w workspace.yaml`` itself (a fresh ``DAGSTER_HOME`` holding the
``dagster.yaml`` that ``btc-anomaly`` writes, an empty ``BTC_DATA_DIR``, a free loopback port),
then, driving the browser by clicks and keystrokes over the DevTools protocol:

- the global lineage shows every asset of the graph, in its group;
- one minute partition of ``btc/raw_transactions`` is materialized from the asset page's
  "Materialize…" dialog (the partition typed into its selection field, then "Launch 1 run");
- once that run succeeded, the partition page shows the materialization and the Checks tab shows
  every raw-data check with its result.

Screenshots go to ``test-artifacts/dagster_ui_*.png``. Only the raw asset runs (bundled sample,
no Spark). The location name the server loaded from ``workspace.yaml`` is also compared with the
one plain ``dagster`` (no ``-w``, ``[tool.dagster]`` in pyproject.toml) validates.

Skipped when Chromium is not installed (CI installs the Debian package ``chromium``).
"""

from __future__ import annotations

import asyncio
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
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from btc_anomaly_assets.common import settings
from btc_anomaly_assets_tests.browser import (
    ARTIFACTS,
    BODY_TEXT,
    CHROMIUM,
    SKIP_REASON,
    open_page,
    start_chromium,
    stop_chromium,
)

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)

REPO_ROOT = Path(__file__).resolve().parents[1]
PARTITION = "2025-08-13-00:18"  # a minute holding a block in the bundled sample
RAW = "btc/raw_transactions"
GRAPH_ASSETS = {
    "btc/raw_transactions": "ingest",
    "btc/minute_aggregates": "aggregates",
    "btc/ewma_anomalies": "detection",
    "btc/coordinated_clusters": "detection",
    "btc/incidents": "detection",
    "btc/anomaly_explanations": "explain",
    "btc/transaction_forecast": "forecast",
}
SERVER_START_SECONDS = 90
RUN_SECONDS = 120
BROWSER_SECONDS = 60
GRAPH_VIEWPORT = (2000, 1200)  # wide enough that the fitted graph draws full nodes with whole names
PAGE_VIEWPORT = (1600, 1100)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _hermetic_env(data_dir: Path, home: Path) -> dict:
    """This process's environment without any project setting (no key, webhook or live source leaks
    in), plus a fresh data dir and Dagster home, and a one-core Spark."""
    env = {k: v for k, v in os.environ.items() if k not in {s.name for s in settings.SETTINGS} and k != "DAGSTER_HOME"}
    env.update(BTC_DATA_DIR=str(data_dir), DAGSTER_HOME=str(home), SPARK_MASTER="local[1]")
    return env


@dataclass
class DagsterDev:
    base: str
    data_dir: Path
    env: dict
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    """One query against the webserver's own GraphQL endpoint (the one the UI uses)."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{base}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        answer = json.load(reply)
    assert "errors" not in answer, f"GraphQL errors: {answer['errors']}"
    return answer["data"]


LOCATIONS_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def _loaded_locations(base: str) -> list[dict] | None:
    """The workspace's code locations once all have finished loading, else None."""
    entries = graphql(base, LOCATIONS_QUERY)["workspaceOrError"]["locationEntries"]
    if not entries or any(e["loadStatus"] != "LOADED" for e in entries):
        return None
    return entries


def _wait_until_serving(dev: DagsterDev, process: subprocess.Popen) -> None:
    """Until ``/server_info`` answers and the code location is loaded; fails with the process output."""
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dagster dev exited with {process.returncode}:\n{dev.log_tail()}")
        try:
            with urllib.request.urlopen(f"{dev.base}/server_info", timeout=2):
                pass
            entries = _loaded_locations(dev.base)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            entries = None
        if entries:
            errors = [e["locationOrLoadError"] for e in entries
                      if e["locationOrLoadError"]["__typename"] == "PythonError"]
            assert not errors, f"the code location failed to load: {errors}"
            return
        time.sleep(0.5)
    raise AssertionError(f"dagster dev did not serve a loaded code location on {dev.base} "
                         f"within {SERVER_START_SECONDS} s:\n{dev.log_tail()}")


def _stop_process_group(process: subprocess.Popen) -> None:
    """Terminate dagster dev and everything it started (webserver, daemon, code server, run workers)."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # children that outlived the parent still belong to the group
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    """A ``dagster dev -w workspace.yaml`` on a free loopback port over a fresh instance."""
    from btc_anomaly_assets.instance.dagster_yaml import dagster_yaml

    root = tmp_path_factory.mktemp("dagster_dev")
    home, data_dir = root / "dagster_home", root / "btc_data"
    home.mkdir()
    data_dir.mkdir()
    (home / "dagster.yaml").write_text(dagster_yaml(home))
    port = _free_port()
    dev = DagsterDev(f"http://127.0.0.1:{port}", data_dir, _hermetic_env(data_dir, home), root / "dagster_dev.log")
    with open(dev.log_path, "w") as log:  # a file, not a pipe: an unread pipe fills up and stalls the server
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT, env=dev.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_until_serving(dev, process)
        yield dev
    finally:
        _stop_process_group(process)


def run_in_browser(scenario, profile: Path, viewport: tuple[int, int], seconds: float):
    """Run ``scenario(tools)`` against a fresh headless Chromium page, always closing the browser."""
    browser = start_chromium(profile, viewport)

    async def session():
        async with open_page(profile, browser) as tools:
            await tools.set_viewport(*viewport)
            return await scenario(tools)

    try:
        return asyncio.run(asyncio.wait_for(session(), seconds))
    finally:
        stop_chromium(browser)


def _button(text: str, within: str = "document") -> str:
    """JavaScript for the enabled button whose visible text is exactly ``text``."""
    return (f"Array.from({within}.querySelectorAll('button'))"
            f".find(b => b.innerText.trim() === {json.dumps(text)} && !b.disabled)")


async def dismiss_welcome_dialog(tools, base: str) -> None:
    """A fresh instance greets the first visitor with a "Join the Dagster community" dialog; skip it."""
    if graphql(base, "{ shouldShowNux }")["shouldShowNux"]:
        await tools.click_element(_button("Skip"), "the welcome dialog's Skip button")
        await tools.wait_for(f"!{_button('Skip')}", "the welcome dialog to close")


def assert_screenshot(path: Path, png: bytes, viewport: tuple[int, int]) -> None:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(png) > 30_000, f"{path} is only {len(png)} bytes: probably a blank page"
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib (Prophet's plotting)
        return
    with Image.open(path) as image:
        assert image.size[0] == viewport[0] and image.size[1] >= viewport[1], image.size


@needs_chromium
def test_lineage_shows_every_asset_of_the_graph(dagster_dev, tmp_path):
    names = {key.split("/")[-1] for key in GRAPH_ASSETS}

    async def scenario(tools):
        await tools.navigate(f"{dagster_dev.base}/asset-groups")
        await dismiss_welcome_dialog(tools, dagster_dev.base)
        await tools.wait_for(f"{BODY_TEXT}.includes('ingest')", "the group boxes")
        # Several groups draw collapsed; Alt+E is the graph's own "Expand all groups" shortcut.
        await tools.press("e", code="KeyE", key_code=69, modifiers=1)
        nodes = "Array.from(document.querySelectorAll('[class*=AssetNode_assetName]')).map(e => e.innerText.trim())"
        shown = await tools.wait_for(
            f"(n => n.length >= {len(names)} ? n : null)({nodes})", "the expanded graph's asset nodes")
        graph_text = await tools.text()
        png = await tools.screenshot(ARTIFACTS / "dagster_ui_graph.png")
        await tools.navigate(f"{dagster_dev.base}/assets")
        # The catalog names assets by their whole key, "btc / raw_transactions".
        catalog_text = await tools.wait_for(
            f"(t => t.includes('Asset name') && t.includes('btc / ') ? t : '')({BODY_TEXT})", "the asset catalog")
        return shown, graph_text, png, catalog_text

    shown, graph_text, png, catalog_text = run_in_browser(
        scenario, tmp_path / "profile", GRAPH_VIEWPORT, BROWSER_SECONDS)
    assert sorted(shown) == sorted(names), f"graph nodes {shown}, expected {sorted(names)}"
    for group in set(GRAPH_ASSETS.values()):
        assert group in graph_text, f"group {group!r} missing from the lineage"
    for key in GRAPH_ASSETS:  # the graph shows the last path component; the catalog the whole key
        assert key.replace("/", " / ") in catalog_text, f"{key} missing from the asset catalog"
    assert_screenshot(ARTIFACTS / "dagster_ui_graph.png", png, GRAPH_VIEWPORT)


RUNS_QUERY = """query Runs($partition: String!) {
  runsOrError(filter: {tags: [{key: "dagster/partition", value: $partition}]}) {
    ... on Runs { results { runId status tags { key value } } }
    ... on PythonError { message } } }"""

CHECK_EXECUTIONS_QUERY = """query Checks($path: [String!]!, $name: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $name, limit: 10) {
    runId status evaluation { success } } }"""

FINISHED_BADLY = {"FAILURE", "CANCELED", "CANCELING"}


def runs_of_partition(base: str) -> list[dict]:
    answer = graphql(base, RUNS_QUERY, {"partition": PARTITION})["runsOrError"]
    assert "results" in answer, f"runsOrError failed: {answer.get('message')}"
    return answer["results"]


async def wait_for_run(dev: DagsterDev, run_prefix: str) -> dict:
    """Poll the UI's GraphQL until the run the UI reported as launched has succeeded."""
    deadline = time.monotonic() + RUN_SECONDS
    status = "not found"
    while time.monotonic() < deadline:
        runs = runs_of_partition(dev.base)
        mine = [r for r in runs if r["runId"].startswith(run_prefix)]
        if mine:
            status = mine[0]["status"]
            if status == "SUCCESS":
                return mine[0]
            assert status not in FINISHED_BADLY, f"run {mine[0]['runId']} ended {status}:\n{dev.log_tail()}"
        await asyncio.sleep(1)
    raise AssertionError(f"run {run_prefix} did not succeed within {RUN_SECONDS} s (last status: {status}):\n"
                         f"{dev.log_tail()}")


def _partition_window() -> tuple[datetime, datetime]:
    start = datetime.strptime(PARTITION, settings.DATE_FMT)
    return start, start + timedelta(minutes=1)


@needs_chromium
def test_one_partition_materialized_from_the_ui_shows_its_checks(dagster_dev, tmp_path):
    from btc_anomaly_assets.common.lake import raw_path, read_raw_window
    from btc_anomaly_assets.ingest.raw_checks import RAW_CHECK_NAMES

    assert {"hashes_unique", "fee_equals_inputs_minus_outputs", "row_count_matches_source"} <= set(RAW_CHECK_NAMES)
    base = dagster_dev.base
    dialog = "document.querySelector('[role=dialog]')"

    async def scenario(tools):
        await tools.navigate(f"{base}/assets/{RAW}")
        await dismiss_welcome_dialog(tools, base)
        await tools.click_element(_button("Materialize…"), "the asset page's Materialize… button")
        # A partitioned asset opens the partition-selection dialog; type the one minute and commit it.
        await tools.click_element(f"{dialog}?.querySelector('input[type=text]')", "the dialog's partition field")
        await tools.insert_text(PARTITION)
        await tools.press("Enter", key_code=13)
        await tools.wait_for(f"({dialog}?.innerText || '').includes('1 partition')", "the dialog to select 1 partition")
        await tools.click_element(_button("Launch 1 run", within=dialog), "the dialog's Launch 1 run button")
        run_prefix = await tools.wait_for(
            f"(m => m ? m[1] : null)({BODY_TEXT}.match(/Launched run ([0-9a-f]{{8}})/))",
            "the 'Launched run' toast")
        run = await wait_for_run(dagster_dev, run_prefix)

        await tools.navigate(f"{base}/assets/{RAW}?view=partitions&partition={PARTITION}")
        partition_text = await tools.wait_for(
            f"(t => t.includes('dagster/row_count') && t.includes({json.dumps(run_prefix)}) ? t : '')"
            f"({BODY_TEXT})", "the partition's materialization")
        partition_png = await tools.screenshot(ARTIFACTS / "dagster_ui_partition.png")

        await tools.navigate(f"{base}/assets/{RAW}?view=checks&checkDetail=fee_equals_inputs_minus_outputs")
        check_rows = {}
        for name in RAW_CHECK_NAMES:  # the list row of each check: its name and its latest status
            check_rows[name] = await tools.wait_for(
                "Array.from(document.querySelectorAll('a, div, li'))"
                f".map(e => e.innerText || '').filter(t => t.includes({json.dumps(name)}))"
                ".filter(t => /Succeeded|Failed|Skipped|Running|In progress/.test(t))"
                ".sort((a, b) => a.length - b.length)[0] || null",  # the smallest: the row itself
                f"the {name} check in the Checks tab")
        await tools.wait_for(f"{BODY_TEXT}.includes('Evaluation result')", "the check's latest execution")
        checks_text = await tools.text()
        checks_png = await tools.screenshot(ARTIFACTS / "dagster_ui_checks.png")
        return run, partition_text, partition_png, check_rows, checks_text, checks_png

    run, partition_text, partition_png, check_rows, checks_text, checks_png = run_in_browser(
        scenario, tmp_path / "profile", PAGE_VIEWPORT, RUN_SECONDS + BROWSER_SECONDS)

    # The UI launched exactly one run, for exactly that partition.
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags.get("dagster/from_ui") == "true" and tags.get("dagster/partition") == PARTITION, tags
    every_run = graphql(dagster_dev.base, "{ runsOrError { ... on Runs { results { runId } } } }")
    assert [r["runId"] for r in every_run["runsOrError"]["results"]] == [run["runId"]]

    # The lake holds that minute and nothing else of its hour; the partition page reports its row count.
    start, end = _partition_window()
    lake = raw_path(str(dagster_dev.data_dir / "lake"))
    stored = read_raw_window(lake, start, end)
    hour = read_raw_window(lake, start.replace(minute=0), start.replace(minute=0) + timedelta(hours=1))
    assert len(stored) > 0 and len(hour) == len(stored)
    assert re.search(rf"dagster/row_count\s+{len(stored)}\b", partition_text), partition_text[:3000]
    assert "Materialized" in partition_text and PARTITION in partition_text
    assert_screenshot(ARTIFACTS / "dagster_ui_partition.png", partition_png, PAGE_VIEWPORT)

    # Every raw check appears with its result, and the selected one's latest execution passed.
    for name, row in check_rows.items():
        assert "Succeeded" in row, f"check {name} shows {row!r}"
    assert "fee == input_total - output_total" in checks_text and "Passed" in checks_text
    assert "blocking" in checks_text
    assert_screenshot(ARTIFACTS / "dagster_ui_checks.png", checks_png, PAGE_VIEWPORT)
    # ...and those results are the ones that run recorded.
    for name in RAW_CHECK_NAMES:
        executions = graphql(dagster_dev.base, CHECK_EXECUTIONS_QUERY, {"path": RAW.split("/"), "name": name})
        evaluated = [e for e in executions["assetCheckExecutions"] if e["evaluation"]]
        assert [(e["runId"], e["evaluation"]["success"]) for e in evaluated] == [(run["runId"], True)], name


def test_plain_dagster_loads_the_same_code_location(dagster_dev, tmp_path):
    """``dagster dev`` without ``-w`` reads ``[tool.dagster]``; it must name the location the same."""
    served = {e["name"] for e in _loaded_locations(dagster_dev.base)}
    assert served == {"btc_anomaly_assets"}, served
    env = {**dagster_dev.env, "DAGSTER_HOME": str(tmp_path)}  # else it makes a temporary home in the repo
    result = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    validated = set(re.findall(r"Validation successful for code location (\S+?)\.\s", output))
    assert validated == served, f"plain dagster validated {validated}, dagster dev -w serves {served}"
