"""The code location loads, and its graph is what the README and the UI promise."""

import subprocess
import sys
import tomllib
from pathlib import Path

import dagster as dg
import yaml

from btc_anomaly_assets.common.partitions import minute_partitions
from btc_anomaly_assets.definitions import defs

REPO = Path(__file__).resolve().parents[1]

EXPECTED_GROUPS = {
    "btc/raw_transactions": "ingest",
    "btc/minute_aggregates": "aggregates",
    "btc/ewma_anomalies": "detection",
    "btc/coordinated_clusters": "detection",
    "btc/incidents": "detection",
    "btc/anomaly_explanations": "explain",
    "btc/transaction_forecast": "forecast",
}


def _graph():
    return defs.resolve_asset_graph()


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_every_asset_is_namespaced_grouped_minute_partitioned_and_single_run():
    graph = _graph()
    keys = {k.to_user_string(): k for k in graph.get_all_asset_keys()}
    assert set(keys) == set(EXPECTED_GROUPS)
    for name, group in EXPECTED_GROUPS.items():
        node = graph.get(keys[name])
        assert node.group_name == group, name
        assert node.partitions_def == minute_partitions, name
        assert node.backfill_policy == dg.BackfillPolicy.single_run(), name
        assert node.description, name
        assert node.owners, name


def test_lineage_matches_the_documented_graph():
    graph = _graph()
    parents = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()}
    assert parents["btc/minute_aggregates"] == {"btc/raw_transactions"}
    assert parents["btc/ewma_anomalies"] == {"btc/minute_aggregates"}
    assert "btc/raw_transactions" in parents["btc/coordinated_clusters"]
    assert parents["btc/incidents"] >= {"btc/ewma_anomalies", "btc/coordinated_clusters", "btc/transaction_forecast"}
    assert parents["btc/anomaly_explanations"] == {"btc/incidents"}
    assert "btc/minute_aggregates" in parents["btc/transaction_forecast"]


def test_raw_checks_are_blocking():
    specs = [s for s in defs.resolve_asset_graph().asset_check_keys if s.asset_key.to_user_string() == "btc/raw_transactions"]
    assert {s.name for s in specs} >= {"hashes_unique", "fee_equals_inputs_minus_outputs", "row_count_matches_source"}


def test_pyproject_and_workspace_name_the_same_code_location():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    assert tool["module_name"] == workspace["module_name"] == "btc_anomaly_assets.definitions"
    assert tool["code_location_name"] == workspace["location_name"]


def test_dagster_cli_validates_the_workspace():
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
