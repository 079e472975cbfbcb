"""btc/minute_aggregates as Dagster runs it: classic local Spark and Spark Connect give the same table."""

from datetime import datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from btc_anomaly_assets.aggregates.aggregates_sql import aggregate_minutes_duckdb
from btc_anomaly_assets.aggregates.assets import minute_aggregates
from btc_anomaly_assets.aggregates.resources import build_pyspark_resource
from btc_anomaly_assets.common.resources import LakeResource, WarehouseResource
from btc_anomaly_assets.common.schema import MINUTE_AGGREGATE_COLUMNS
from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_assets_tests.test_aggregates_spark import assert_matches_reference
from btc_anomaly_testing.real_data import real_raw

pytestmark = pytest.mark.usefixtures("connect_server_launch")

START, END = datetime(2025, 8, 14, 0, 0), datetime(2025, 8, 14, 1, 40)
TAGS = {"dagster/asset_partition_range_start": "2025-08-14-00:00", "dagster/asset_partition_range_end": "2025-08-14-01:39"}


def _materialize(real_lake: str, db: Path, pyspark):
    resources = {"pyspark": pyspark, "lake": LakeResource(url=str(Path(real_lake).parent)),
                 "warehouse": WarehouseResource(path=str(db))}
    result = dg.materialize([minute_aggregates], resources=resources, tags=TAGS)
    checks = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    return result, checks, Warehouse(str(db)).read_window("minute_aggregates", MINUTE_AGGREGATE_COLUMNS, START, END)


def test_classic_and_connect_runs_of_the_asset_store_identical_tables(real_lake, connect_server, tmp_path):
    classic, classic_checks, classic_rows = _materialize(real_lake, tmp_path / "classic.duckdb",
                                                         build_pyspark_resource("local[2]", None))
    connect, connect_checks, connect_rows = _materialize(real_lake, tmp_path / "connect.duckdb",
                                                         build_pyspark_resource(None, connect_server.remote))
    assert classic.success and connect.success
    assert all(c.passed for c in classic_checks + connect_checks) and len(connect_checks) == 3
    assert len(classic_rows) == 100 and (classic_rows["tx_count"] == 0).sum() > 80  # empty minutes are rows
    pd.testing.assert_frame_equal(classic_rows, connect_rows)
    reference = aggregate_minutes_duckdb(real_raw(), START, END)
    assert_matches_reference(connect_rows, reference)
    connect_metadata = connect.asset_materializations_for_node("btc__minute_aggregates")[0].metadata
    assert connect_metadata["spark"].value.startswith("sc://127.0.0.1:")
    assert connect_metadata["spark_session_after_step"].value == "kept (Spark Connect client)"  # a client: nothing to end
    classic_metadata = classic.asset_materializations_for_node("btc__minute_aggregates")[0].metadata
    assert classic_metadata["spark_session_after_step"].value.startswith("stopped after the step")


def test_an_unreachable_connect_endpoint_fails_the_step_fast_and_clearly(real_lake, tmp_path):
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    resources = {"pyspark": build_pyspark_resource(None, f"sc://127.0.0.1:{port}/;token=s3cr3t"),
                 "lake": LakeResource(url=str(Path(real_lake).parent)), "warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb"))}
    result = dg.materialize([minute_aggregates], resources=resources, tags=TAGS, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data.error
    text = failure.to_string()
    assert f"sc://127.0.0.1:{port}" in text and "not reachable" in text and "s3cr3t" not in text
