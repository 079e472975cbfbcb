"""The CLI's backfill launch, without a webserver: what it requests, which UI it trusts, what it reports."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

from btc_anomaly_assets.cli import launch


def test_the_backfill_covers_every_asset_of_the_graph_over_the_inclusive_range():
    from btc_anomaly_assets.definitions import ALL_ASSETS

    params = launch.backfill_params("2025-08-13-00:00", "2025-08-13-02:59", "btc-anomaly demo", "why")
    requested = {tuple(p["assetKey"]["path"]): p["partitions"]["range"] for p in params["partitionsByAssets"]}
    assert set(requested) == {tuple(a.key.path) for a in ALL_ASSETS}
    assert set(map(json.dumps, requested.values())) == {json.dumps({"start": "2025-08-13-00:00", "end": "2025-08-13-02:59"})}
    assert params["title"] == "btc-anomaly demo"


@pytest.fixture
def fake_webserver():
    """A loopback HTTP server answering the instance-info GraphQL query with a given instance's info."""
    info = {"text": ""}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"data": {"instance": {"info": info["text"]}}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", info
    finally:
        server.shutdown()


def test_a_running_ui_is_used_only_when_it_serves_this_dagster_home(fake_webserver, tmp_path):
    base, info = fake_webserver
    home = tmp_path / "dagster_home"
    info["text"] = f"local_artifact_storage:\n  config:\n    base_dir: {home}\nrun_storage:\n  config:\n    base_dir: {home}/history\n"
    assert launch.serves_instance(base, home)
    assert not launch.serves_instance(base, tmp_path / "another_home")
    assert not launch.serves_instance(base, Path(f"{home}/history"))  # a storage dir is not the home
    info["text"] = ""
    assert not launch.serves_instance(base, home)
    assert not launch.serves_instance("http://127.0.0.1:9", home)  # nothing listening


QUALITY = "previous_forecast_quality"


@dg.asset(check_specs=[dg.AssetCheckSpec(QUALITY, asset="forecastish"), dg.AssetCheckSpec("fine", asset="forecastish")])
def forecastish():
    return dg.MaterializeResult(check_results=[
        dg.AssetCheckResult(check_name=QUALITY, passed=False, severity=dg.AssetCheckSeverity.WARN,
                            description="backtest forecast from 02:30: coverage 53% (minimum 80%)"),
        dg.AssetCheckResult(check_name="fine", passed=True),
    ])


def test_the_summary_names_each_check_that_did_not_pass_and_explains_the_expected_warning():
    with dg.instance_for_test() as instance:
        result = dg.materialize([forecastish], instance=instance)
        notes = launch.check_notes(result.run_id, instance)
    assert notes[0] == f"check forecastish {QUALITY} warning: backtest forecast from 02:30: coverage 53% (minimum 80%)"
    assert notes[1].startswith("  (expected on block-time data")
    assert len(notes) == 2  # the passing check is not mentioned


def test_a_failed_step_is_reported_with_its_error():
    @dg.asset
    def broken():
        raise ValueError("BTC_DUMP_DIR /nowhere has no blocks file")

    with dg.instance_for_test() as instance:
        result = dg.materialize([broken], instance=instance, raise_on_error=False)
        notes = launch.failure_notes(result.run_id, instance)
    assert len(notes) == 1 and notes[0].startswith("step broken failed: ")
    assert "BTC_DUMP_DIR /nowhere has no blocks file" in notes[0]
