"""What the README says the UI shows after ``btc-anomaly demo``, checked on the rendered pages.

One ``dagster dev`` over a fresh instance (the ``dagster.yaml`` btc-anomaly writes, an empty data
dir); ``btc-anomaly demo`` then runs against it (``BTC_DAGSTER_UI_URL`` points at it, so the demo
requests its backfill there instead of starting a second ``dagster dev``; its run aggregates on the
suite's Spark Connect server, the local-Spark path being test_pipeline_e2e's). Headless Chromium then
asserts on each page's DOM:

- no "Join the Dagster community" dialog over the first page;
- Runs → Backfills lists the demo's backfill (180 partitions, succeeded); its page shows the range;
- the Catalog's status column shows partition counts (180 materialized of 2,880);
- ``btc/ewma_anomalies``: each partition's own numbers on its partition page, and the metadata
  plots drawn from them (a series that moves where anomalies were flagged, a flat one where the
  value is constant); the "Partitions" plot is empty because of a Dagster 1.13.27 bug, asserted
  (through GraphQL) so the test says when it is fixed.

Screenshots: ``test-artifacts/dagster_ui_demo_*.png``. Skipped without Chromium.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from btc_anomaly_assets.definitions import ALL_ASSETS
from btc_anomaly_assets_tests.browser import ARTIFACTS, BODY_TEXT, CHROMIUM, SKIP_REASON
from btc_anomaly_assets_tests.test_dagster_ui_browser import (
    PAGE_VIEWPORT,
    REPO_ROOT,
    DagsterDev,
    _button,
    _free_port,
    _hermetic_env,
    _stop_process_group,
    _wait_until_serving,
    assert_screenshot,
    graphql,
    run_in_browser,
)

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON), pytest.mark.usefixtures("connect_server_launch")]

DEMO_SECONDS = 900  # the whole graph over 3 hours through the daemon, on a loaded 2-core machine
BROWSER_SECONDS = 90
PLOTS_VIEW_SECONDS = 240  # see the Plots click in test_ewma_anomalies_numbers_are_per_partition_and_plotted
EWMA = "btc/ewma_anomalies"
FLAGGED_LINE = re.compile(r"^  (\d\d:\d\d) (high|medium)\s+\S+", re.MULTILINE)  # the demo's own list of flagged rows
COMMUNITY_DIALOG = "Join the Dagster community"
METADATA_FOLDED = "collapsible-section-Metadata"  # the Dagster UI's localStorage key for a folded Metadata section


@pytest.fixture(scope="module")
def demo_ui(tmp_path_factory, connect_server):
    """A ``dagster dev`` over a fresh instance on which ``btc-anomaly demo`` has run; yields (dev, demo output)."""
    from btc_anomaly_assets.instance.dagster_yaml import dagster_yaml

    root = tmp_path_factory.mktemp("dagster_demo")
    home, data_dir = root / "dagster_home", root / "btc_data"
    home.mkdir()
    data_dir.mkdir()
    (home / "dagster.yaml").write_text(dagster_yaml(home))
    port = _free_port()
    env = _hermetic_env(data_dir, home)
    del env["SPARK_MASTER"]  # the run aggregates on the suite's Connect server: what is checked here is the UI
    env["SPARK_REMOTE"] = connect_server.remote
    dev = DagsterDev(f"http://127.0.0.1:{port}", data_dir, env, root / "dagster_dev.log")
    with open(dev.log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT, env=dev.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_until_serving(dev, process)
        demo = subprocess.run([sys.executable, "-m", "btc_anomaly_assets.cli.main", "demo"], check=False, cwd=REPO_ROOT,
                              env={**dev.env, "BTC_DAGSTER_UI_URL": dev.base}, capture_output=True, text=True,
                              timeout=DEMO_SECONDS)
        output = demo.stdout + demo.stderr
        assert demo.returncode == 0, f"btc-anomaly demo exited {demo.returncode}:\n{output[-4000:]}\n{dev.log_tail()}"
        yield dev, output
    finally:
        _stop_process_group(process)


def _backfill_id(output: str) -> str:
    found = re.search(r"^Backfill (\w+) requested", output, re.MULTILINE)
    assert found, output[-3000:]
    return found.group(1)


def test_the_demo_is_one_backfill_with_one_run_and_no_second_server(demo_ui):
    dev, output = demo_ui
    assert f"Using the Dagster UI at {dev.base}" in output, output[:2000]
    backfill_id = _backfill_id(output)
    state = graphql(dev.base, """query B($id: String!) { partitionBackfillOrError(backfillId: $id) {
        ... on PartitionBackfill { status numPartitions title runs(limit: 5) { runId status tags { key value } } } } }""",
                    {"id": backfill_id})["partitionBackfillOrError"]
    assert state["status"] == "COMPLETED_SUCCESS" and state["title"] == "btc-anomaly demo", state
    assert len(state["runs"]) == 1 and state["runs"][0]["status"] == "SUCCESS", state["runs"]
    tags = {t["key"]: t["value"] for t in state["runs"][0]["tags"]}
    assert tags["dagster/asset_partition_range_start"] == "2025-08-13-00:00", tags
    assert tags["dagster/asset_partition_range_end"] == "2025-08-13-02:59", tags
    assert f"run {state['runs'][0]['runId']} succeeded" in output
    # The warning the forecast's check gives on block-time data is named and explained.
    assert "previous_forecast_quality warning" in output and "expected on block-time data" in output, output[-3000:]


def test_backfills_page_lists_the_demo_with_its_range_and_status(demo_ui, tmp_path):
    dev, output = demo_ui
    backfill_id = _backfill_id(output)

    async def scenario(tools):
        await tools.navigate(f"{dev.base}/runs?view=backfills")
        row = await tools.wait_for(
            "Array.from(document.querySelectorAll('tr, [role=row], div'))"
            f".map(e => e.innerText || '').filter(t => t.includes({json.dumps(backfill_id)}) && t.includes('partitions'))"
            ".sort((a, b) => a.length - b.length)[0] || null", "the demo's row on the Backfills page", 60)
        first_text = await tools.text()
        list_png = await tools.screenshot(ARTIFACTS / "dagster_ui_demo_backfills.png", whole_page=False)
        await tools.navigate(f"{dev.base}/runs/b/{backfill_id}")
        page = await tools.wait_for(
            f"(t => t.includes('Partition selection') && t.includes('100% completed') ? t : '')({BODY_TEXT})",
            "the backfill's page", 60)
        page_png = await tools.screenshot(ARTIFACTS / "dagster_ui_demo_backfill.png", whole_page=False)
        return row, first_text, list_png, page, page_png

    row, first_text, list_png, page, page_png = run_in_browser(scenario, tmp_path / "profile", PAGE_VIEWPORT,
                                                               BROWSER_SECONDS)
    assert "180 partitions" in row and "Success" in row, row
    assert COMMUNITY_DIALOG not in first_text  # the first page a newcomer opens is not covered
    assert "2025-08-13-00:00...2025-08-13-02:59" in page and "Succeeded" in page, page[:2000]
    assert page.count("100% completed") == len(ALL_ASSETS), page[:3000]  # every asset of the graph, all 180 partitions
    assert_screenshot(ARTIFACTS / "dagster_ui_demo_backfills.png", list_png, PAGE_VIEWPORT)
    assert_screenshot(ARTIFACTS / "dagster_ui_demo_backfill.png", page_png, PAGE_VIEWPORT)


def test_catalog_shows_partition_status_and_no_welcome_dialog(demo_ui, tmp_path):
    dev, _ = demo_ui
    assert graphql(dev.base, "{ shouldShowNux }")["shouldShowNux"] is False

    async def scenario(tools):
        await tools.navigate(f"{dev.base}/assets")
        # The row's status cell: materialized, missing, failed, materializing, then the total.
        row = await tools.wait_for(
            "Array.from(document.querySelectorAll('div'))"
            ".map(e => e.innerText || '').filter(t => t.includes('btc / ewma_anomalies') && /\\d partitions/.test(t))"
            ".filter(t => !t.includes('btc / raw_transactions'))"
            ".sort((a, b) => a.length - b.length)[0] || null", "the ewma_anomalies row with its partition counts", 60)
        text = await tools.text()
        png = await tools.screenshot(ARTIFACTS / "dagster_ui_demo_catalog.png", whole_page=False)
        return row, text, png

    row, text, png = run_in_browser(scenario, tmp_path / "profile", PAGE_VIEWPORT, BROWSER_SECONDS)
    counts = re.search(r"\n(\S+)\n(\S+)\n(\S+)\n(\S+)\n([\d,]+) partitions", row)
    assert counts, row
    assert counts.groups() == ("180", "2,700", "0", "0", "2,880"), row
    assert COMMUNITY_DIALOG not in text
    assert_screenshot(ARTIFACTS / "dagster_ui_demo_catalog.png", png, PAGE_VIEWPORT)


# For every canvas of the metadata plots: its label and the vertical extent of the drawn line.
PLOT_EXTENTS = """(() => Array.from(document.querySelectorAll('canvas')).map(canvas => {
  let box = canvas.parentElement;
  while (box && !(box.innerText || '').trim()) box = box.parentElement;
  const label = box ? box.innerText.trim().split('\\n')[0] : '';
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let top = canvas.height, bottom = -1;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 2] > 150 && data[i] < 140 && data[i + 1] < 140 && data[i + 3] > 200) {  // the blue line
      const y = Math.floor(i / 4 / canvas.width);
      top = Math.min(top, y); bottom = Math.max(bottom, y);
    }
  }
  return {label, height: canvas.height, extent: bottom < 0 ? 0 : bottom - top};
}))()"""


def test_ewma_anomalies_numbers_are_per_partition_and_plotted(demo_ui, tmp_path):
    dev, output = demo_ui
    from btc_anomaly_assets.common.warehouse import Warehouse

    # The demo prints incidents, not metric rows: the expected per-minute count comes from the stored rows.
    rows = Warehouse(str(dev.data_dir / "warehouse.duckdb")).query(
        "SELECT strftime(minute, '%H:%M') AS minute, count(*) AS n FROM btc.ewma_anomalies "
        "WHERE severity IN ('medium', 'high') GROUP BY 1 ORDER BY n DESC, 1")
    flagged = dict(zip(rows["minute"], rows["n"]))
    assert flagged, output[-3000:]
    minute, count = next(iter(flagged.items()))  # 00:18 or 02:19 on the sample: 2 rows
    partition = f"2025-08-13-{minute}"
    quiet = "2025-08-13-02:20"
    assert quiet[-5:] not in flagged

    async def scenario(tools):
        shown = {}
        for key in (partition, quiet):
            await tools.navigate(f"{dev.base}/assets/{EWMA}?view=partitions&partition={key}")
            shown[key] = await tools.wait_for(
                f"(t => t.includes('severity_high') && t.includes({json.dumps(key)}) ? t : '')({BODY_TEXT})",
                f"partition {key}'s metadata", 60)
        partition_png = await tools.screenshot(ARTIFACTS / "dagster_ui_demo_partition.png")
        await tools.navigate(f"{dev.base}/assets/{EWMA}")
        # Under load the page keeps rendering (and moving) for a while, and the Plots view first loads the
        # Partitions plot (empty: the Dagster bug below), during which a click on Plots can go unanswered. So
        # both clicks are retried until the Events plots are drawn (they hold the same numbers); a try whose
        # plots do not appear starts again on a freshly loaded page (a click may have landed elsewhere).
        deadline = time.monotonic() + PLOTS_VIEW_SECONDS
        while True:
            clicked = False
            try:
                await tools.click_element(_button("Plots"), "the Metadata section's Plots button", 30)
                await tools.click_element(_button("Events"), "the plots' Events button", 15)
                clicked = True
                extents = await tools.wait_for(
                    f"(e => e.length >= 5 && e.every(p => p.extent > 0) ? e : null)({PLOT_EXTENTS})", "the drawn plots", 45)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                # A click that met a page still moving may have folded the Metadata section instead (Dagster
                # remembers that in localStorage, so it would stay folded): unfold it and load the page again.
                folded = await tools.evaluate(f"localStorage.getItem({json.dumps(METADATA_FOLDED)}) === 'true'")
                if folded:
                    await tools.evaluate(f"localStorage.removeItem({json.dumps(METADATA_FOLDED)})")
                if folded or clicked:  # clicked but nothing drawn: a click landed elsewhere; start on a fresh page
                    await tools.navigate(f"{dev.base}/assets/{EWMA}")
        plots_png = await tools.screenshot(ARTIFACTS / "dagster_ui_demo_plots.png")
        return shown, extents, partition_png, plots_png

    shown, extents, partition_png, plots_png = run_in_browser(
        scenario, tmp_path / "profile", PAGE_VIEWPORT, BROWSER_SECONDS * 2 + PLOTS_VIEW_SECONDS)

    # Each partition's materialization holds that minute's own numbers (not the run's totals).
    assert re.search(rf"anomaly_count\s+{count}\b", shown[partition]), shown[partition][:3000]
    assert re.search(r"anomaly_count\s+0\b", shown[quiet]) and re.search(r"severity_high\s+0\b", shown[quiet])
    assert re.search(r"window_flagged_minutes\s+\d+", shown[quiet])  # the run's figure, named as such
    # The plots are drawn from those numbers: anomaly_count moves, the per-minute row count (7 metrics) is flat.
    by_label = {p["label"]: p for p in extents}
    assert {"anomaly_count", "dagster/row_count", "severity_high"} <= set(by_label), by_label
    assert by_label["anomaly_count"]["extent"] > 0.3 * by_label["anomaly_count"]["height"], by_label
    assert by_label["dagster/row_count"]["extent"] < 0.1 * by_label["dagster/row_count"]["height"], by_label
    # Dagster 1.13.27 lists a time-partitioned asset's "last" partitions backwards from *now*, past the
    # definition's end (TimeWindowPartitionsDefinition.get_paginated_partition_keys, ascending=False), so the
    # Partitions plot looks at minutes after 15 Aug 2025 that hold nothing (it shows Dagster's empty state).
    # When this fails, Dagster fixed it: assert the Partitions plot as well.
    last = graphql(dev.base, """{ assetNodeOrError(assetKey: {path: ["btc", "ewma_anomalies"]}) {
        ... on AssetNode { partitionKeyConnection(limit: 1, ascending: false) { results } } } }""")
    assert last["assetNodeOrError"]["partitionKeyConnection"]["results"][0] > "2025-08-15-00:00"
    assert_screenshot(ARTIFACTS / "dagster_ui_demo_partition.png", partition_png, PAGE_VIEWPORT)
    assert_screenshot(ARTIFACTS / "dagster_ui_demo_plots.png", plots_png, PAGE_VIEWPORT)
