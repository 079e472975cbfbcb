"""After the aggregation step, the run ends the local Spark driver it started, and only that one.

A day's driver JVM holds ~0.5 GB; the steps after the aggregation need no Spark. These tests run
real local JVMs: the driver's process must be gone after the step, a later session in the same
process must work, and a session another caller holds must be left running.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from btc_anomaly_assets.aggregates.assets import minute_aggregates
from btc_anomaly_assets.aggregates.resources import SparkResource, build_pyspark_resource, spark_config
from btc_anomaly_assets.aggregates.spark_driver import end_classic_driver, started_for_one_user
from btc_anomaly_assets.aggregates.spark_session import SparkSettings, build_spark_session
from btc_anomaly_assets.common.resources import LakeResource, WarehouseResource
from btc_anomaly_assets.common.schema import MINUTE_AGGREGATE_COLUMNS
from btc_anomaly_assets.common.warehouse import Warehouse
from btc_anomaly_assets_tests.conftest_spark import SPARK_TEST_CONF

START, END = datetime(2025, 8, 14, 0, 0), datetime(2025, 8, 14, 0, 30)
TAGS = {"dagster/asset_partition_range_start": "2025-08-14-00:00", "dagster/asset_partition_range_end": "2025-08-14-00:29"}


def _driver_processes() -> list[int]:
    """This process's child pyspark driver JVMs (``spark-submit … pyspark-shell``), not the suite's Connect server."""
    found = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as children:
            for pid in children.read().split():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                        if b"pyspark-shell" in cmdline.read():
                            found.append(int(pid))
                except FileNotFoundError:
                    continue
    return found


@pytest.fixture(autouse=True)
def no_driver_left_by_earlier_tests():
    """Each test starts with no classic session in this worker (an earlier test's run may have left one
    up, e.g. one whose aggregation step never ran), so "started by this run" means what it says."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    if SparkContext._active_spark_context is not None:
        end_classic_driver(SparkSession.builder.getOrCreate())
    yield


def _materialize(real_lake: str, db: Path, pyspark: SparkResource):
    resources = {"pyspark": pyspark, "lake": LakeResource(url=str(Path(real_lake).parent)),
                 "warehouse": WarehouseResource(path=str(db))}
    result = dg.materialize([minute_aggregates], resources=resources, tags=TAGS)
    after_step = result.asset_materializations_for_node("btc__minute_aggregates")[0].metadata["spark_session_after_step"].value
    return after_step, Warehouse(str(db)).read_window("minute_aggregates", MINUTE_AGGREGATE_COLUMNS, START, END)


def _test_resource(**fields) -> SparkResource:
    conf = {**spark_config("local[1]", None), **{k: v for k, v in SPARK_TEST_CONF.items() if k != "spark.driver.memory"}}
    return SparkResource(spark_config=conf, **fields)


def test_the_run_ends_the_driver_it_started_and_a_later_run_starts_a_new_one(real_lake, tmp_path):
    first, first_rows = _materialize(real_lake, tmp_path / "a.duckdb", _test_resource())
    assert first.startswith("stopped after the step")
    assert _driver_processes() == []  # the JVM exited, not only the SparkContext

    second, second_rows = _materialize(real_lake, tmp_path / "b.duckdb", _test_resource())
    assert second.startswith("stopped after the step") and _driver_processes() == []
    assert len(first_rows) == 30 and first_rows["tx_count"].sum() > 0
    assert first_rows.equals(second_rows)


def test_a_session_another_caller_holds_is_left_running(real_lake, tmp_path):
    notebook = build_spark_session(SparkSettings(master="local[1]", app_name="btc-tests", extra_conf=SPARK_TEST_CONF))
    try:
        assert started_for_one_user(notebook)
        after_step, rows = _materialize(real_lake, tmp_path / "w.duckdb", _test_resource())
        assert after_step == "kept (another user in this process shares the session)"
        assert len(rows) == 30
        assert not started_for_one_user(notebook)  # the run was handed the same driver: now shared
        assert notebook.range(3).count() == 3  # still usable by its first user
    finally:
        end_classic_driver(notebook)
    assert _driver_processes() == []


def test_stop_when_done_off_keeps_the_session_for_the_next_run(real_lake, tmp_path):
    resource = _test_resource(stop_when_done=False)
    after_step, _ = _materialize(real_lake, tmp_path / "w.duckdb", resource)
    try:
        assert after_step == "kept (stop_when_done is off)"
        assert len(_driver_processes()) == 1
    finally:
        from pyspark.sql import SparkSession

        end_classic_driver(SparkSession.builder.getOrCreate())  # the session the run kept
    assert _driver_processes() == []


class _Log:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, text):
        self.lines.append(text)

    warning = info


@pytest.mark.parametrize("resource, expected", [
    (build_pyspark_resource(None, "sc://127.0.0.1:15002"), "kept (Spark Connect client)"),
    (build_pyspark_resource("local[1]", None), "no session"),
])
def test_without_a_driver_of_its_own_release_does_nothing(resource, expected):
    if expected != "no session":
        resource._spark_session = object()  # a Connect client stand-in: release must not touch it
    assert resource.release(_Log()) == expected
