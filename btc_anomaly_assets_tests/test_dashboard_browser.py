"""The dashboard in a real headless Chromium: each tab renders its charts from DuckDB.

The server runs in a subprocess on a free loopback port over a small warehouse; Chromium loads
each tab by URL (``?tab=...``), writes a screenshot to ``test-artifacts/`` at the repo root and
dumps the rendered DOM, which must hold the three tab labels, the tab's chart containers drawn by
Plotly, and values that exist only in the warehouse. A row written while the server runs must
appear on the next page load (the data is read live, not loaded once).

Skipped when Chromium is not installed (CI installs the Debian package ``chromium``).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from btc_anomaly_assets_tests.browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_FLAGS,
    SKIP_REASON,
    open_page,
    start_chromium,
    stop_chromium,
)
from btc_anomaly_assets_tests.small_warehouse import add_live_explanation, build_small_warehouse

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)

REPO_ROOT = Path(__file__).resolve().parents[1]
WINDOW = (1400, 1700)
TAB_LABELS = ("Overview", "Detection &amp; Forecasting", "Explanation audit trail")
SERVER_START_SECONDS = 45
BROWSER_SECONDS = 60


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(duckdb_path: str, log_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """The dashboard in a subprocess on a free loopback port; its output goes to ``log_path``
    (a file, not a pipe: an unread pipe fills up with request logs and stalls the server)."""
    port = _free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "btc_anomaly_assets.dashboard.app", "--duckdb", duckdb_path, "--host", "127.0.0.1",
             "--port", str(port), *extra],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(base, server, log_path)
    except BaseException:
        _stop(server)
        raise
    return server, base


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _wait_until_serving(url: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"dashboard exited with {server.returncode}: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    raise AssertionError(f"dashboard did not answer on {url} within {SERVER_START_SECONDS} s")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """(base URL, DuckDB path) of a dashboard server over the small warehouse."""
    folder = tmp_path_factory.mktemp("browser_wh")
    path = str(folder / "warehouse.duckdb")
    build_small_warehouse(path)
    server, base = _start_server(path, folder / "server.log", "--refresh-seconds", "5")
    try:
        yield base, path
    finally:
        _stop(server)


def render(url: str, screenshot: Path, profile: Path) -> str:
    """Load ``url`` in headless Chromium; write a screenshot and return the rendered DOM."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    command = [
        CHROMIUM, *CHROMIUM_FLAGS, "--hide-scrollbars", f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        # Virtual time runs only while no request is pending, so the budget covers loading the
        # scripts and every callback round trip before the DOM is dumped.
        "--virtual-time-budget=20000", f"--screenshot={screenshot}", "--dump-dom", url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_SECONDS)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


def assert_real_screenshot(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > 30_000, f"{path} is only {len(data)} bytes: probably a blank page"
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib (Prophet's plotting)
        return
    with Image.open(path) as image:
        assert image.size == WINDOW
        colours = image.convert("RGB").getcolors(maxcolors=256)
        assert colours is None, f"{path} has only {len(colours)} colours: charts were not drawn"


def _plotly_drawn(dom: str, graph_id: str) -> bool:
    """The graph's container exists and Plotly drew an SVG inside it."""
    start = dom.find(f'id="{graph_id}"')
    return start >= 0 and 'class="main-svg"' in dom[start : start + 20_000]


def test_every_tab_renders_live_warehouse_data(dashboard, tmp_path):
    base, path = dashboard
    expectations = {
        "overview": (["tx-count-chart", "zscore-heatmap", "anomalies-by-hour", "anomaly-share"],
                     ["flagged: high", "flagged: medium", "Mean z-score of tx_count", "scored"]),
        "detection": (["clusters-chart", "forecast-chart"],
                      ["similar_burst", "coinjoin", "forecast from 02:00", "tx_per_minute_trailing_60min"]),
        "audit": ([], ["max_value_btc 19,609 BTC vs baseline 236 BTC", "2 of 2 explanations", "explanations-table"]),
    }
    for tab, (graphs, texts) in expectations.items():
        shot = ARTIFACTS / f"dashboard_{tab}.png"
        dom = render(f"{base}?tab={tab}", shot, tmp_path / f"profile-{tab}")
        for label in TAB_LABELS:
            assert label in dom, f"tab label {label!r} missing on the {tab} tab"
        for graph in graphs:
            assert _plotly_drawn(dom, graph), f"{graph} not drawn on the {tab} tab"
        for text in texts:
            assert text in dom, f"{text!r} missing on the {tab} tab"
        assert "not materialized yet" not in dom and "Warehouse busy" not in dom
        assert_real_screenshot(shot)

    # A run writes a new explanation while the server is up: the next page load shows it.
    summary = add_live_explanation(path)
    dom = render(f"{base}?tab=audit", ARTIFACTS / "dashboard_audit_after_write.png", tmp_path / "profile-live")
    assert summary in dom and "3 of 3 explanations" in dom


def test_clicking_a_row_shows_the_whole_explanation(dashboard, tmp_path):
    base, _ = dashboard
    profile = tmp_path / "profile-click"
    browser = start_chromium(profile, WINDOW)

    async def click_and_read() -> tuple[str, bytes]:
        async with open_page(profile, browser) as tools:
            await tools.call("Page.navigate", url=f"{base}?tab=audit")
            cell = "Array.from(document.querySelectorAll('td[data-dash-column=\"summary\"]'))" \
                   ".find(td => td.innerText.includes('19,609 BTC'))"
            await tools.wait_for(f"!!({cell})", "the explanation row")
            await tools.evaluate(f"({cell}).click()")
            detail = await tools.wait_for(
                "(t => t.includes('Narrative') ? t : '')(document.getElementById('explanation-detail').innerText)",
                "the explanation detail")
            shot = await tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            return detail, base64.b64decode(shot["data"])

    try:
        detail, png = asyncio.run(asyncio.wait_for(click_and_read(), BROWSER_SECONDS))
    finally:
        stop_chromium(browser)
    (ARTIFACTS / "dashboard_audit_detail.png").write_bytes(png)
    for text in ("A single 19,609 BTC transfer landed in block 909769.", "83x the usual largest transaction",
                 "exchange cold-wallet rebalancing, OTC settlement", "above the 1,000 BTC review threshold",
                 "claude-haiku-4-5-20251001"):
        assert text in detail


def test_missing_tables_say_not_materialized_yet(tmp_path):
    """An empty warehouse: the page still renders and names what is missing."""
    from btc_anomaly_assets.common.warehouse import Warehouse

    path = tmp_path / "empty.duckdb"
    Warehouse(str(path)).query("SELECT 1")
    server, base = _start_server(str(path), tmp_path / "server.log")
    try:
        dom = render(f"{base}?tab=overview", ARTIFACTS / "dashboard_empty_overview.png", tmp_path / "profile-empty")
    finally:
        _stop(server)
    assert "btc.ewma_anomalies is not materialized yet" in dom
    assert "btc.minute_aggregates: not materialized yet" in dom
